//! The kernel modes: plain routing (`direct`), a VXLAN overlay and
//! OpenVPN peer-to-peer, each on its own container subnets between the two
//! hosts.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use testbed::cmd;

use super::env::{ModeEnv, STOP_GRACE};
use crate::topo::{self, Hosts, HOST_A, HOST_B, UNDERLAY_IF};

/// Plugs the mode's client container into host A and its server container
/// into host B, on the kernel modes' addressing (client subnet
/// `10.<n>.1.0/24`, server subnet `10.<n>.2.0/24`, hosts at `.1`, containers
/// at `.2`) with `mtu`; returns the server container's address.
fn plug_pair(env: &ModeEnv, hosts: &Hosts, n: u8, mtu: u32) -> Result<Ipv4Addr> {
    let tag = env.kind.tag();
    let (gw_c, ip_c) = (Ipv4Addr::new(10, n, 1, 1), Ipv4Addr::new(10, n, 1, 2));
    let (gw_s, ip_s) = (Ipv4Addr::new(10, n, 2, 1), Ipv4Addr::new(10, n, 2, 2));
    topo::plug_container(&hosts.a, &format!("{tag}-c"), &env.client, gw_c, ip_c, mtu)?;
    topo::plug_container(&hosts.b, &format!("{tag}-s"), &env.server, gw_s, ip_s, mtu)?;
    Ok(ip_s)
}

pub(super) fn setup_direct(env: &mut ModeEnv, hosts: &Hosts) -> Result<()> {
    let ip_s = plug_pair(env, hosts, 101, 1500)?;
    hosts.a.ip(&[
        "route",
        "add",
        "10.101.2.0/24",
        "via",
        &HOST_B.to_string(),
        "dev",
        UNDERLAY_IF,
    ])?;
    hosts.b.ip(&[
        "route",
        "add",
        "10.101.1.0/24",
        "via",
        &HOST_A.to_string(),
        "dev",
        UNDERLAY_IF,
    ])?;
    env.target = ip_s;
    Ok(())
}

/// The overlay MTU of VXLAN over IPv4 on a 1500-byte underlay; the
/// containers get the same, as a VXLAN user would configure.
const VXLAN_MTU: u32 = 1450;

pub(super) fn setup_vxlan(env: &mut ModeEnv, hosts: &Hosts) -> Result<()> {
    let ip_s = plug_pair(env, hosts, 102, VXLAN_MTU)?;
    let vx = "vx0";
    for (host, local, remote, addr, peer, far) in [
        (
            &hosts.a,
            HOST_A,
            HOST_B,
            "10.102.0.1/24",
            "10.102.0.2",
            "10.102.2.0/24",
        ),
        (
            &hosts.b,
            HOST_B,
            HOST_A,
            "10.102.0.2/24",
            "10.102.0.1",
            "10.102.1.0/24",
        ),
    ] {
        host.ip(&[
            "link",
            "add",
            vx,
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &local.to_string(),
            "remote",
            &remote.to_string(),
            "dstport",
            "4789",
            "dev",
            UNDERLAY_IF,
        ])?;
        host.ip(&["link", "set", vx, "mtu", &VXLAN_MTU.to_string()])?;
        host.ip(&["addr", "add", addr, "dev", vx])?;
        host.ip(&["link", "set", vx, "up"])?;
        host.ip(&["route", "add", far, "via", peer, "dev", vx])?;
    }
    env.target = ip_s;
    Ok(())
}

/// OpenVPN's TUN MTU: the same overlay MTU as VXLAN, so its UDP datagrams
/// are not fragmented on the underlay.
const OPENVPN_MTU: u32 = 1450;

/// Whether `openvpn` is on the PATH.
pub fn openvpn_installed() -> bool {
    Command::new("openvpn")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

pub(super) fn setup_openvpn(env: &mut ModeEnv, hosts: &Hosts) -> Result<()> {
    if !openvpn_installed() {
        bail!("openvpn is not installed (run with --install to apt-get it)");
    }
    let ip_s = plug_pair(env, hosts, 103, OPENVPN_MTU)?;
    for (host, local, remote, me, peer, far) in [
        (
            &hosts.a,
            HOST_A,
            HOST_B,
            "10.103.0.1",
            "10.103.0.2",
            "10.103.2.0",
        ),
        (
            &hosts.b,
            HOST_B,
            HOST_A,
            "10.103.0.2",
            "10.103.0.1",
            "10.103.1.0",
        ),
    ] {
        let mtu = OPENVPN_MTU.to_string();
        let (local, remote) = (local.to_string(), remote.to_string());
        let args = [
            "--dev",
            "tun",
            "--proto",
            "udp",
            "--local",
            &local,
            "--lport",
            "1194",
            "--remote",
            &remote,
            "--rport",
            "1194",
            "--ifconfig",
            me,
            peer,
            "--route",
            far,
            "255.255.255.0",
            "--cipher",
            "none",
            "--data-ciphers",
            "none",
            "--auth",
            "none",
            "--tun-mtu",
            &mtu,
            "--verb",
            "3",
        ];
        let p = host.spawn("openvpn", &args)?.with_grace(STOP_GRACE);
        env.forwarders.push(p);
        let far_net = format!("{far}/24");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            env.check_alive()?;
            let out = host.ip(&["route", "show", &far_net])?;
            if !out.stdout.trim().is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "openvpn in {} did not install its route within 15 s; output:\n{}",
                    host.name(),
                    env.forwarders
                        .last()
                        .map(|p| cmd::tail(&p.output(), 30))
                        .unwrap_or_default()
                );
            }
            cmd::sleep(Duration::from_millis(100))?;
        }
    }
    env.target = ip_s;
    Ok(())
}
