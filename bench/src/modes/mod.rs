//! The dataplanes under comparison, each with its own pair of containers.
//!
//! A mode sets itself up once (containers, routes, forwarder processes,
//! servers) and hands back a [`ModeEnv`]: where the client lives, what
//! address it dials, and which processes forward its packets (for the CPU
//! figures). Dropping the `ModeEnv` stops its processes by pid, servers
//! first, then forwarders, and then deletes its containers.
//!
//! This module sets a mode up and starts the servers it measures against;
//! `env` holds the types, `kernel` and `proxytun` the per-mode set-ups.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use testbed::cmd;
use testbed::netns::Netns;

use crate::topo::Hosts;

mod env;
mod kernel;
mod proxytun;

use env::STOP_GRACE;
pub use env::{ModeEnv, ModeKind, Tools};
pub use kernel::openvpn_installed;
use kernel::{setup_direct, setup_openvpn, setup_vxlan};
pub use proxytun::daemon_drops;
use proxytun::{
    setup_proxytun, BUSYPOLL, ENCRYPT, NODEKEYS, NOOFFLOAD, PLAIN, PROXYTUN, TWOTHREADS,
};

/// The port iperf3 listens on in every server container.
pub const IPERF_PORT: u16 = 5201;
/// The port `bench rr-server` listens on in every server container.
pub const RR_PORT: u16 = 7100;

/// Sets up `kind` on `hosts`.
pub fn setup(kind: ModeKind, hosts: &Hosts, tools: &Tools) -> Result<ModeEnv> {
    let client = Netns::create(&format!("{}{}-c", hosts.prefix, kind.tag()))?;
    let server = Netns::create(&format!("{}{}-s", hosts.prefix, kind.tag()))?;
    let mut env = ModeEnv {
        kind,
        target: Ipv4Addr::UNSPECIFIED,
        servers: Vec::new(),
        forwarders: Vec::new(),
        client,
        server,
        dir: None,
        logs: Vec::new(),
        pt: None,
    };
    match kind {
        ModeKind::Direct => setup_direct(&mut env, hosts)?,
        ModeKind::Vxlan => setup_vxlan(&mut env, hosts)?,
        ModeKind::Openvpn => setup_openvpn(&mut env, hosts)?,
        ModeKind::Proxytun => setup_proxytun(&mut env, hosts, tools, &PROXYTUN)?,
        ModeKind::Plain => setup_proxytun(&mut env, hosts, tools, &PLAIN)?,
        ModeKind::Encrypt => setup_proxytun(&mut env, hosts, tools, &ENCRYPT)?,
        ModeKind::ProxytunNooffload => setup_proxytun(&mut env, hosts, tools, &NOOFFLOAD)?,
        ModeKind::ProxytunBusypoll => setup_proxytun(&mut env, hosts, tools, &BUSYPOLL)?,
        ModeKind::Proxytun2threads => setup_proxytun(&mut env, hosts, tools, &TWOTHREADS)?,
        ModeKind::ProxytunNodekeys => setup_proxytun(&mut env, hosts, tools, &NODEKEYS)?,
    }
    // Client-side tuning for the connection-rate test: many short
    // connections from one address must not run out of ports.
    env.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    env.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    start_servers(&mut env, tools)?;
    wait_reachable(&env, tools)?;
    Ok(env)
}

fn start_servers(env: &mut ModeEnv, tools: &Tools) -> Result<()> {
    let port = IPERF_PORT.to_string();
    let iperf = env
        .server
        .spawn("iperf3", &["-s", "-p", &port])?
        .with_grace(STOP_GRACE);
    env.servers.push(iperf);
    let rr_port = RR_PORT.to_string();
    let mut rr = env
        .server
        .spawn(
            &tools.bench.to_string_lossy(),
            &["rr-server", "--port", &rr_port],
        )?
        .with_grace(STOP_GRACE);
    rr.wait_for("ready", Duration::from_secs(10))?;
    env.servers.push(rr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.server.listens_tcp(IPERF_PORT)? {
        if let Some(s) = env.servers.first_mut() {
            if let Some(st) = s.exited()? {
                bail!("iperf3 -s exited ({st}):\n{}", s.output());
            }
        }
        if Instant::now() >= deadline {
            bail!("iperf3 -s does not listen on {IPERF_PORT} after 10 s");
        }
        cmd::sleep(Duration::from_millis(50))?;
    }
    Ok(())
}

/// Waits until the client reaches the rr server through the mode's path
/// (routes, ARP, daemons' tables all settled), trying for up to 15 s.
fn wait_reachable(env: &ModeEnv, tools: &Tools) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let target = format!("{}:{RR_PORT}", env.target);
    loop {
        let out = env.client.exec(
            &tools.bench.to_string_lossy(),
            &["rr-client", "--addr", &target, "--secs", "0.2"],
            Duration::from_secs(10),
        )?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: the client cannot reach {target} after 15 s: {}",
                env.kind,
                out.describe("failed")
            );
        }
        cmd::sleep(Duration::from_millis(200))?;
    }
}
