//! Where the UDP load's datagrams were dropped, read as counters before and
//! after the load: the sending node's TUN queue, the socket buffers of both
//! hosts, the daemons' own drop counters (the receiver's loss comes from
//! iperf3).
//!
//! Every counter here is per network namespace (or per device in one), and
//! the two hosts are shared by all modes, so only a delta around one load
//! means anything; the modes are measured one after the other, so a delta
//! is that load's.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use testbed::netns::Netns;

use crate::modes::{self, ModeEnv, Tools};
use crate::topo::Hosts;

/// How long reading one counter file inside a namespace may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The two socket-buffer counters of `/proc/net/snmp`'s `Udp:` lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SockbufErrors {
    /// Datagrams dropped because a receive buffer was full.
    pub rcvbuf: u64,
    /// Datagrams dropped because a send buffer was full.
    pub sndbuf: u64,
}

impl SockbufErrors {
    fn until(self, later: SockbufErrors) -> SockbufErrors {
        SockbufErrors {
            rcvbuf: later.rcvbuf.saturating_sub(self.rcvbuf),
            sndbuf: later.sndbuf.saturating_sub(self.sndbuf),
        }
    }

    /// Both counters together.
    pub fn total(self) -> u64 {
        self.rcvbuf + self.sndbuf
    }
}

/// Reads `RcvbufErrors` and `SndbufErrors` from the text of
/// `/proc/net/snmp` (a `Udp:` header line, then a `Udp:` value line).
pub fn parse_snmp_udp(text: &str) -> Result<SockbufErrors> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp: lines in /proc/net/snmp");
    };
    let field = |name: &str| -> Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .ok_or_else(|| anyhow!("no {name} in /proc/net/snmp's Udp: line"))?;
        values
            .split_whitespace()
            .nth(i)
            .ok_or_else(|| anyhow!("short Udp: value line in /proc/net/snmp"))?
            .parse()
            .with_context(|| format!("bad {name} in /proc/net/snmp"))
    };
    Ok(SockbufErrors {
        rcvbuf: field("RcvbufErrors")?,
        sndbuf: field("SndbufErrors")?,
    })
}

/// The counters at one instant; `None` where they do not apply to the mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// The sending host's TUN: `tx_dropped` (its queue to the daemon full).
    tun_tx_a: Option<u64>,
    /// The receiving host's TUN: `rx_dropped` (the daemon's writes lost).
    tun_rx_b: Option<u64>,
    /// Host a's and host b's UDP socket-buffer errors (modes with
    /// forwarder processes, whose sockets live there).
    hosts: Option<[SockbufErrors; 2]>,
    /// The server container's: the receiving iperf3's socket.
    receiver: SockbufErrors,
    /// Both daemons' drops.
    daemons: Option<u64>,
}

/// What one load dropped where (deltas of [`Sample`]s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UdpDrops {
    /// The sending node's TUN queue (`tx_dropped` on host a).
    pub tun_pkts: Option<u64>,
    /// The receiving node's TUN (`rx_dropped` on host b).
    pub tun_rx_b_pkts: Option<u64>,
    /// Both hosts' socket buffers, receive and send.
    pub sockbuf_pkts: Option<u64>,
    /// Host a's socket-buffer errors.
    pub sockbuf_a: Option<SockbufErrors>,
    /// Host b's socket-buffer errors.
    pub sockbuf_b: Option<SockbufErrors>,
    /// The receiving iperf3's socket buffer (inside the receiver's loss).
    pub receiver_sockbuf: SockbufErrors,
    /// Both daemons' drop counters.
    pub daemon_pkts: Option<u64>,
}

/// One counter file of a device, read inside its namespace (`ip netns
/// exec` mounts that namespace's sysfs).
fn device_stat(ns: &Netns, dev: &str, stat: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/{stat}");
    let out = ns.exec_ok("cat", &[&path], READ_TIMEOUT)?;
    out.stdout
        .trim()
        .parse()
        .with_context(|| format!("{path} in {} is {:?}", ns.name(), out.stdout))
}

/// `/proc/net/snmp` as seen inside `ns`.
fn sockbuf(ns: &Netns) -> Result<SockbufErrors> {
    let out = ns.exec_ok("cat", &["/proc/net/snmp"], READ_TIMEOUT)?;
    parse_snmp_udp(&out.stdout).with_context(|| format!("in {}", ns.name()))
}

impl Sample {
    /// Reads every counter that applies to `env`'s mode.
    pub fn take(env: &ModeEnv, hosts: &Hosts, tools: &Tools) -> Result<Sample> {
        let mut s = Sample {
            receiver: sockbuf(&env.server)?,
            ..Sample::default()
        };
        if !env.forwarder_pids().is_empty() {
            s.hosts = Some([sockbuf(&hosts.a)?, sockbuf(&hosts.b)?]);
        }
        if let Some(pt) = &env.pt {
            s.tun_tx_a = Some(device_stat(&hosts.a, pt.tun, "tx_dropped")?);
            s.tun_rx_b = Some(device_stat(&hosts.b, pt.tun, "rx_dropped")?);
            let mut d = 0;
            for sock in &pt.sockets {
                d += modes::daemon_drops(tools, sock)
                    .with_context(|| format!("counters of {}", sock.display()))?;
            }
            s.daemons = Some(d);
        }
        Ok(s)
    }

    /// What was dropped between `self` (before the load) and `later`.
    pub fn until(&self, later: &Sample) -> UdpDrops {
        let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        let hosts = match (self.hosts, later.hosts) {
            (Some([a0, b0]), Some([a1, b1])) => Some((a0.until(a1), b0.until(b1))),
            _ => None,
        };
        UdpDrops {
            tun_pkts: delta(self.tun_tx_a, later.tun_tx_a),
            tun_rx_b_pkts: delta(self.tun_rx_b, later.tun_rx_b),
            sockbuf_pkts: hosts.map(|(a, b)| a.total() + b.total()),
            sockbuf_a: hosts.map(|(a, _)| a),
            sockbuf_b: hosts.map(|(_, b)| b),
            receiver_sockbuf: self.receiver.until(later.receiver),
            daemon_pkts: delta(self.daemons, later.daemons),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    const SNMP: &str = "\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 932379 10684 8334 957026 8334 12 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 5 6 0 0 0
";

    #[test]
    fn snmp_takes_the_udp_socket_buffer_errors_by_name() {
        let e = parse_snmp_udp(SNMP).unwrap();
        assert_eq!(
            e,
            SockbufErrors {
                rcvbuf: 8334,
                sndbuf: 12
            }
        );
        assert!(parse_snmp_udp("Ip: 1 2\nIp: 3 4\n").is_err());
        assert!(parse_snmp_udp("Udp: InDatagrams\nUdp: 7\n").is_err());
        assert!(parse_snmp_udp("Udp: RcvbufErrors SndbufErrors\nUdp: x 1\n").is_err());
    }

    #[test]
    fn deltas_per_place_and_none_where_not_read() {
        let errs = |rcvbuf, sndbuf| SockbufErrors { rcvbuf, sndbuf };
        let before = Sample {
            tun_tx_a: Some(100),
            tun_rx_b: Some(0),
            hosts: Some([errs(1, 2), errs(10, 0)]),
            receiver: errs(5, 0),
            daemons: Some(3),
        };
        let after = Sample {
            tun_tx_a: Some(1100),
            tun_rx_b: Some(0),
            hosts: Some([errs(1, 7), errs(30, 0)]),
            receiver: errs(9, 0),
            daemons: Some(4),
        };
        let d = before.until(&after);
        assert_eq!(d.tun_pkts, Some(1000));
        assert_eq!(d.tun_rx_b_pkts, Some(0));
        assert_eq!(d.sockbuf_pkts, Some(5 + 20));
        assert_eq!(d.sockbuf_a, Some(errs(0, 5)));
        assert_eq!(d.receiver_sockbuf, errs(4, 0));
        assert_eq!(d.daemon_pkts, Some(1));
        // A kernel mode: only the receiver is read.
        let k = Sample::default().until(&Sample {
            receiver: errs(2, 0),
            ..Sample::default()
        });
        assert_eq!(k.tun_pkts, None);
        assert_eq!(k.sockbuf_pkts, None);
        assert_eq!(k.daemon_pkts, None);
        assert_eq!(k.receiver_sockbuf, errs(2, 0));
    }
}
