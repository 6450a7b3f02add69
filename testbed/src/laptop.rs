//! An external client for `proxytun join` tests (docs/join.md): a "laptop"
//! namespace outside the cluster's underlay, cabled only to its gateway
//! node, and the `proxytun join` it runs there.
//!
//! ```text
//!   laptop (198.51.100.2) ── lp0/eth0 ── gateway (its underlay address, also 198.51.100.1)
//! ```
//!
//! Shared by the tests with a static cluster and with Oakestra workers, so
//! both cable and start the client the same way.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cluster::Container;
use crate::cmd::Bg;
use crate::node::Node;

/// The laptop's address (and `proxytun join --bind`'s).
pub const LAPTOP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The gateway's address on the laptop's cable.
pub const LAPTOP_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The UDP port the laptop's tunnel datagrams come from.
pub const LAPTOP_PORT: u16 = 50103;

/// The endpoint to register with `proxytun client add --endpoint`.
pub fn endpoint() -> String {
    format!("{LAPTOP}:{LAPTOP_PORT}")
}

/// Cables `lap` to `gateway`: one veth, a route to the gateway's tunnel
/// address only, and a ptprobe server listening (so a connection towards
/// the laptop would succeed if one got through).
pub fn cable(mut lap: Container, gateway: &Node) -> Result<Container> {
    let host = gateway.host();
    host.add_veth("lp0", lap.ns(), "eth0", None)?;
    host.ip(&["addr", "add", &format!("{LAPTOP_GW}/24"), "dev", "lp0"])?;
    host.ip(&["link", "set", "lp0", "up"])?;
    let ns = lap.ns();
    ns.ip(&["addr", "add", &format!("{LAPTOP}/24"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let gw_ip = gateway.endpoint().ip().to_string();
    ns.ip(&[
        "route",
        "add",
        &format!("{gw_ip}/32"),
        "via",
        &LAPTOP_GW.to_string(),
    ])?;
    lap.serve("laptop")?;
    Ok(lap)
}

/// The laptop's key arguments: the cluster key's file, or (per-node keys)
/// its node key file and the gateway's public key.
pub fn key_args(file: &str, gateway_key: Option<&str>) -> Vec<String> {
    match gateway_key {
        None => vec!["--key-file".into(), file.into()],
        Some(gw) => vec![
            "--node-key".into(),
            file.into(),
            "--gateway-key".into(),
            gw.into(),
        ],
    }
}

/// A new node key for the laptop in `dir`: (file, public key).
pub fn node_key(dir: &Path, name: &str) -> Result<(String, String)> {
    let path = dir.join(name);
    let path = path.to_string_lossy().into_owned();
    let mut cmd = std::process::Command::new(crate::proxytun_bin()?);
    cmd.args(["keygen", "--node", "--out", &path]);
    let out = crate::cmd::run(&mut cmd, Duration::from_secs(10))?.ok()?;
    // The public key is the output's last word.
    let public = out.stdout.split_whitespace().last().unwrap_or_default();
    Ok((path, public.to_owned()))
}

/// `proxytun join` in the laptop through `gateway` with `keys`, from the
/// API's client `v` (`address`, `join.resolver`, ...); waits until it says
/// it joined.
pub fn join(gateway: &Node, lap: &Container, v: &Value, keys: &[String]) -> Result<Bg> {
    let bin = crate::proxytun_bin()?;
    let j = &v["join"];
    let s = |x: &Value| x.as_str().map(str::to_owned).unwrap_or_default();
    let args = [
        "join".to_owned(),
        "--gateway".into(),
        gateway.endpoint().to_string(),
        "--address".into(),
        s(&v["address"]),
        "--resolver".into(),
        s(&j["resolver"]),
        "--services".into(),
        s(&j["services"]),
        "--services6".into(),
        s(&j["services6"]),
        "--security".into(),
        crate::node::test_security_mode()?,
        "--bind".into(),
        endpoint(),
        "--keepalive-secs".into(),
        "1".into(),
    ];
    let args: Vec<&str> = args.iter().chain(keys).map(String::as_str).collect();
    let mut bg = lap
        .ns()
        .spawn(&bin.to_string_lossy(), &args)?
        .with_grace(Duration::from_secs(5));
    bg.wait_for("joined through", Duration::from_secs(10))
        .with_context(|| format!("join did not start: {}", bg.output()))?;
    Ok(bg)
}
