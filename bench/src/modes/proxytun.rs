//! The proxytun modes: two real daemons, one per host, in each of the
//! flavours under comparison (the default auth, plain and encrypt
//! security, and the default without offloads), configured through their
//! CLI as an operator would; and the daemons' drop counters.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use testbed::cmd::{self, Bg};

use super::env::{ModeEnv, PtHandles, Tools};
use crate::topo::{Hosts, HOST_A, HOST_B};

/// How one proxytun mode configures its daemons. The proxytun modes
/// share the host namespaces, so each gets its own ranges, device names,
/// port and app names.
#[derive(Debug)]
pub(super) struct PtFlavour {
    /// Extra lines of the `[tun]` section.
    tun_extra: &'static str,
    tun_name: &'static str,
    bridge: &'static str,
    port: u16,
    cluster: &'static str,
    cluster6: &'static str,
    services: &'static str,
    services6: &'static str,
    /// The app the bench's instances belong to (also keeps the daemons'
    /// veth names, which derive from the instance key, apart).
    app: &'static str,
    /// `tunnel.security`; a key made by `proxytun keygen` unless plain.
    security: &'static str,
    /// Extra lines of the `[tunnel]` section.
    tunnel_extra: &'static str,
    /// `tunnel.keys = "node"`: a key pair per daemon (`proxytun keygen
    /// --node`), each listing the other's public key.
    node_keys: bool,
}

/// The TUN MTU of the proxytun modes: the largest that fits a 1500-byte
/// IPv4 underlay with the sealed tunnel's overhead (20 IP + 8 UDP + 20
/// header + 16 tag), the same for every security mode so their figures
/// compare; VXLAN's 1450 would not fit an authenticated datagram.
const PT_MTU: u32 = 1500 - 20 - 8 - 20 - 16;

/// The default configuration: `security = "auth"`, offloads on.
pub(super) const PROXYTUN: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun0",
    bridge: "ptbr0",
    port: 50103,
    cluster: "10.18.0.0/16",
    cluster6: "fdff:18::/112",
    services: "10.30.0.0/16",
    services6: "fdff:30::/112",
    app: "ptbench",
    security: "auth",
    tunnel_extra: "",
    node_keys: false,
};

/// `proxytun-nooffload`: the default with `[tun] offload = false`.
pub(super) const NOOFFLOAD: PtFlavour = PtFlavour {
    tun_extra: "offload = false\n",
    tun_name: "ptun1",
    bridge: "ptbr1",
    port: 50104,
    cluster: "10.19.0.0/16",
    cluster6: "fdff:19::/112",
    services: "10.31.0.0/16",
    services6: "fdff:31::/112",
    app: "ptnooff",
    security: "auth",
    tunnel_extra: "",
    node_keys: false,
};

/// `plain`: `security = "plain"` (no tag), offloads on.
pub(super) const PLAIN: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun2",
    bridge: "ptbr2",
    port: 50105,
    cluster: "10.20.0.0/16",
    cluster6: "fdff:20::/112",
    services: "10.32.0.0/16",
    services6: "fdff:32::/112",
    app: "ptplain",
    security: "plain",
    tunnel_extra: "",
    node_keys: false,
};

/// `encrypt`: `security = "encrypt"`, offloads on.
pub(super) const ENCRYPT: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun3",
    bridge: "ptbr3",
    port: 50106,
    cluster: "10.21.0.0/16",
    cluster6: "fdff:21::/112",
    services: "10.33.0.0/16",
    services6: "fdff:33::/112",
    app: "ptenc",
    security: "encrypt",
    tunnel_extra: "",
    node_keys: false,
};

/// `proxytun-2threads`: the default with `[tun] threads = 2` (one packet
/// thread per direction), beside the `auto` choice of the default mode.
pub(super) const TWOTHREADS: PtFlavour = PtFlavour {
    tun_extra: "threads = 2\n",
    tun_name: "ptun5",
    bridge: "ptbr5",
    port: 50108,
    cluster: "10.23.0.0/16",
    cluster6: "fdff:23::/112",
    services: "10.35.0.0/16",
    services6: "fdff:35::/112",
    app: "pt2thr",
    security: "auth",
    tunnel_extra: "",
    node_keys: false,
};

/// `proxytun-busypoll`: the default with `tunnel.busy_poll_us = 50`, the
/// request/response figure with and without busy-polling.
pub(super) const BUSYPOLL: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun4",
    bridge: "ptbr4",
    port: 50107,
    cluster: "10.22.0.0/16",
    cluster6: "fdff:22::/112",
    services: "10.34.0.0/16",
    services6: "fdff:34::/112",
    app: "ptbusy",
    security: "auth",
    tunnel_extra: "busy_poll_us = 50\n",
    node_keys: false,
};

/// `proxytun-nodekeys`: the default with `tunnel.keys = "node"`: sessions
/// set up by Noise IK handshakes instead of derived from the cluster key.
pub(super) const NODEKEYS: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun6",
    bridge: "ptbr6",
    port: 50109,
    cluster: "10.24.0.0/16",
    cluster6: "fdff:24::/112",
    services: "10.36.0.0/16",
    services6: "fdff:36::/112",
    app: "ptnode",
    security: "auth",
    tunnel_extra: "",
    node_keys: true,
};

/// How long a daemon may take to answer on its socket after start.
const DAEMON_START: Duration = Duration::from_secs(20);
/// How long one CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);

fn render_config(
    fl: &PtFlavour,
    name: &str,
    index: u32,
    bind: Ipv4Addr,
    peer: (&str, Ipv4Addr),
    dir: &Path,
    peer_key: Option<&str>,
) -> String {
    let keys = match peer_key {
        Some(_) => format!(
            "keys = \"node\"\nnode_key_file = \"{}\"\n",
            dir.join(format!("{name}.node.key")).display()
        ),
        None => String::new(),
    };
    let peer_key = peer_key.map_or(String::new(), |k| format!("public_key = \"{k}\"\n"));
    format!(
        "[node]\nname = \"{name}\"\nindex = {index}\n\n\
         [network]\ncluster = \"{}\"\ncluster6 = \"{}\"\nservices = \"{}\"\nservices6 = \"{}\"\n\n\
         [tunnel]\nbind = \"{bind}\"\nport = {}\nsecurity = \"{}\"\nkey_file = \"{}\"\n{keys}{}\n\
         [tun]\nname = \"{}\"\nmtu = {PT_MTU}\n{}\n\
         [bridge]\nname = \"{}\"\n\n\
         [admin]\nenable = false\n\n\
         [api]\nsocket = \"{}\"\n\n\
         [state]\ndir = \"{}\"\n\n\
         [[peer]]\nname = \"{}\"\nendpoint = \"{}:{}\"\n{peer_key}",
        fl.cluster,
        fl.cluster6,
        fl.services,
        fl.services6,
        fl.port,
        fl.security,
        dir.join("cluster.key").display(),
        fl.tunnel_extra,
        fl.tun_name,
        fl.tun_extra,
        fl.bridge,
        dir.join(format!("{name}.sock")).display(),
        dir.join(format!("{name}-state")).display(),
        peer.0,
        peer.1,
        fl.port,
    )
}

/// Runs `proxytun --socket SOCK args..` (the CLI, as an operator would),
/// requiring success.
fn cli(tools: &Tools, sock: &Path, args: &[&str]) -> Result<String> {
    let mut c = Command::new(&tools.proxytun);
    c.arg("--socket").arg(sock).args(args);
    Ok(cmd::run(&mut c, CLI_TIMEOUT)?.ok()?.stdout)
}

fn cli_json(tools: &Tools, sock: &Path, args: &[&str]) -> Result<Value> {
    let mut a = args.to_vec();
    a.push("--json");
    let out = cli(tools, sock, &a)?;
    serde_json::from_str(&out)
        .with_context(|| format!("proxytun {} printed no JSON: {out:?}", a.join(" ")))
}

fn v4_of(v: &Value, what: &str) -> Result<Ipv4Addr> {
    v["v4"]
        .as_str()
        .ok_or_else(|| anyhow!("no {what}.v4 in {v}"))?
        .parse()
        .with_context(|| format!("{what}.v4"))
}

/// The round-robin ServiceIP of `app/service` in `proxytun services --json`.
pub fn rr_ip_of(services: &Value, app: &str, service: &str) -> Result<Ipv4Addr> {
    let list = services
        .as_array()
        .ok_or_else(|| anyhow!("services are not a list: {services}"))?;
    for s in list {
        let a = s["app"].as_str().or_else(|| s["name"]["app"].as_str());
        let n = s["service"]
            .as_str()
            .or_else(|| s["name"]["service"].as_str());
        if a == Some(app) && n == Some(service) {
            return v4_of(&s["rr_ip"], "rr_ip");
        }
    }
    bail!("no service {app}/{service} in {services}")
}

fn wait_daemon(env: &mut ModeEnv, tools: &Tools, sock: &Path) -> Result<()> {
    let deadline = Instant::now() + DAEMON_START;
    loop {
        env.check_alive()?;
        if sock.exists() && cli(tools, sock, &["status"]).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon did not answer on {} within {DAEMON_START:?}",
                sock.display()
            );
        }
        cmd::sleep(Duration::from_millis(100))?;
    }
}

pub(super) fn setup_proxytun(
    env: &mut ModeEnv,
    hosts: &Hosts,
    tools: &Tools,
    fl: &PtFlavour,
) -> Result<()> {
    if !tools.proxytun.exists() {
        bail!("no proxytun binary at {}", tools.proxytun.display());
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}{}-", hosts.prefix, env.kind.tag()))
        .tempdir()
        .context("creating the daemons' directory")?;
    let d = dir.path().to_owned();
    env.dir = Some(dir);
    // One cluster key for both daemons, made the way an operator would.
    let mut k = Command::new(&tools.proxytun);
    k.arg("keygen").arg("--out").arg(d.join("cluster.key"));
    cmd::run(&mut k, CLI_TIMEOUT)?.ok()?;
    // With per-node keys, each daemon's key pair, made the same way.
    let mut public = std::collections::BTreeMap::new();
    if fl.node_keys {
        for name in ["a", "b"] {
            let key = d.join(format!("{name}.node.key"));
            let mut k = Command::new(&tools.proxytun);
            k.arg("keygen").arg("--node").arg("--out").arg(&key);
            cmd::run(&mut k, CLI_TIMEOUT)?.ok()?;
            let mut p = Command::new(&tools.proxytun);
            p.arg("pubkey").arg("--key-file").arg(&key);
            let out = cmd::run(&mut p, CLI_TIMEOUT)?.ok()?.stdout;
            public.insert(name, out.trim().to_owned());
        }
    }
    let nodes = [
        ("a", 1, HOST_A, ("b", HOST_B), &hosts.a),
        ("b", 2, HOST_B, ("a", HOST_A), &hosts.b),
    ];
    for (name, index, bind, peer, host) in nodes {
        let cfg = d.join(format!("{name}.toml"));
        let peer_key = public.get(peer.0).map(String::as_str);
        fs::write(
            &cfg,
            render_config(fl, name, index, bind, peer, &d, peer_key),
        )
        .with_context(|| format!("writing {}", cfg.display()))?;
        let log = d.join(format!("{name}.log"));
        let mut c = host.command(&tools.proxytun.to_string_lossy(), &["run", "--config"]);
        c.arg(&cfg);
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "warn");
        }
        let p = Bg::spawn_logged(&mut c, &log, Duration::from_secs(5))?;
        env.forwarders.push(p);
        env.logs.push(log);
    }
    let (sa, sb) = (d.join("a.sock"), d.join("b.sock"));
    wait_daemon(env, tools, &sa)?;
    wait_daemon(env, tools, &sb)?;

    let server_svc = format!("{}/server", fl.app);
    let srv = cli_json(
        tools,
        &sb,
        &[
            "attach",
            &server_svc,
            "--instance",
            "1",
            "--netns",
            &env.server.path().to_string_lossy(),
        ],
    )
    .context("attaching the server container on node b")?;
    let rr = rr_ip_of(&cli_json(tools, &sb, &["services"])?, fl.app, "server")?;
    let ns_addr = v4_of(&srv["ns_addr"], "ns_addr")?;
    let iip = v4_of(&srv["instance_ip"], "instance_ip")?;
    cli(
        tools,
        &sa,
        &[
            "remote",
            "add",
            &format!("{server_svc}/1"),
            "--node",
            "b",
            "--ns-addr",
            &ns_addr.to_string(),
            "--instance-ip",
            &iip.to_string(),
            "--service-ip",
            &rr.to_string(),
        ],
    )
    .context("registering the server on node a")?;
    cli_json(
        tools,
        &sa,
        &[
            "attach",
            &format!("{}/client", fl.app),
            "--instance",
            "1",
            "--netns",
            &env.client.path().to_string_lossy(),
        ],
    )
    .context("attaching the client container on node a")?;
    env.target = rr;
    env.pt = Some(PtHandles {
        tun: fl.tun_name,
        sockets: [sa, sb],
    });
    Ok(())
}

/// The packets one daemon dropped, as `proxytun counters --json` says:
/// every drop reason plus the failed TUN writes and refused tunnel sends
/// (a packet lost to the daemon either way).
pub fn daemon_drops(tools: &Tools, sock: &Path) -> Result<u64> {
    Ok(drops_in_counters(&cli_json(tools, sock, &["counters"])?))
}

/// The sum [`daemon_drops`] takes of a counters object; a key the daemon
/// does not have counts zero, so a newer or older daemon still reads.
fn drops_in_counters(v: &Value) -> u64 {
    let reasons: u64 = v["drops"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let errors: u64 = ["tun_write_errors", "tunnel_send_errors"]
        .iter()
        .filter_map(|k| v[*k].as_u64())
        .sum();
    reasons + errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn drops_sum_reasons_and_lost_io() {
        let v: Value = serde_json::from_str(
            r#"{"tun_rx": 900, "drops": {"no_flow": 4, "replay": 1, "malformed": 0},
                "tun_write_errors": 2, "tunnel_send_errors": 3, "tun_read_errors": 7}"#,
        )
        .unwrap();
        assert_eq!(drops_in_counters(&v), 10);
        assert_eq!(drops_in_counters(&serde_json::json!({})), 0);
    }
}
