//! iperf3 runs and the parsing of its JSON report (`-J`).
//!
//! TCP figures are the receiver's (`end.sum_received`), so data the
//! sender queued but the receiver never got does not count. UDP figures are
//! the receiver's rate and loss as the server reported them back.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::modes::IPERF_PORT;
use testbed::netns::Netns;

/// Which iperf3 test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// TCP with `streams` parallel connections.
    Tcp {
        /// `-P`.
        streams: u32,
    },
    /// UDP at the sender's maximum rate with `len`-byte datagrams.
    Udp {
        /// `-l`.
        len: u32,
    },
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfReport {
    /// Bits per second at the receiver.
    pub bps: f64,
    /// Bytes the receiver got.
    pub bytes: u64,
    /// Seconds the receiver measured over.
    pub secs: f64,
    /// UDP only: lost datagrams in percent.
    pub lost_percent: Option<f64>,
    /// UDP only: datagrams the receiver counted as lost (all sent ones
    /// when none arrived).
    #[serde(default)]
    pub lost_packets: Option<u64>,
    /// TCP only: the sender's retransmissions.
    pub retransmits: Option<u64>,
}

impl IperfReport {
    /// Gigabits received.
    pub fn gbits(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e9
    }
}

/// Parses the JSON iperf3 `-J` prints, for either load.
pub fn parse(json: &str, load: Load) -> Result<IperfReport> {
    let v: Value = serde_json::from_str(json).context("iperf3 printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let recv = &end["sum_received"];
    let num = |o: &Value, k: &str| {
        o[k].as_f64()
            .ok_or_else(|| anyhow!("iperf3 JSON has no number {k} in {o}"))
    };
    match load {
        Load::Tcp { .. } => Ok(IperfReport {
            bps: num(recv, "bits_per_second")?,
            bytes: num(recv, "bytes")? as u64,
            secs: num(recv, "seconds")?,
            lost_percent: None,
            lost_packets: None,
            retransmits: end["sum_sent"]["retransmits"].as_u64(),
        }),
        Load::Udp { .. } => {
            // iperf3 >= 3.11 has sum_received for UDP; older ones only `sum`.
            let r = if recv.is_object() { recv } else { &end["sum"] };
            // iperf3 computes loss from the sequence numbers that arrived,
            // so when none did it says 0 %: count that as all lost.
            let sent = end["sum_sent"]["packets"].as_u64().unwrap_or(0);
            let got = r["packets"].as_u64().unwrap_or(0);
            let (lost, lost_packets) = if got == 0 && sent > 0 {
                (100.0, Some(sent))
            } else {
                (num(r, "lost_percent")?, r["lost_packets"].as_u64())
            };
            Ok(IperfReport {
                bps: num(r, "bits_per_second")?,
                bytes: num(r, "bytes")? as u64,
                secs: num(r, "seconds")?,
                lost_percent: Some(lost),
                lost_packets,
                retransmits: None,
            })
        }
    }
}

/// Runs the iperf3 client in `ns` against `target` for `secs` seconds.
pub fn run(ns: &Netns, target: Ipv4Addr, load: Load, secs: u64) -> Result<IperfReport> {
    let t = secs.to_string();
    let port = IPERF_PORT.to_string();
    let ip = target.to_string();
    let mut args = vec!["-c", &ip, "-p", &port, "-t", &t, "-J"];
    let (p, l);
    match load {
        Load::Tcp { streams } => {
            p = streams.to_string();
            args.extend(["-P", &p]);
        }
        Load::Udp { len } => {
            l = len.to_string();
            args.extend(["-u", "-b", "0", "-l", &l]);
        }
    }
    let out = ns.exec("iperf3", &args, Duration::from_secs(secs + 20))?;
    parse(&out.stdout, load).with_context(|| out.describe("gave no report"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    const TCP: &str = include_str!("../../fixtures/iperf3-tcp.json");
    const UDP: &str = include_str!("../../fixtures/iperf3-udp.json");

    #[test]
    fn tcp_takes_the_receiver_side() {
        let r = parse(TCP, Load::Tcp { streams: 1 }).unwrap();
        assert_eq!(r.bytes, 2_204_631_040);
        assert!((r.bps - 17_619_904_153.258_88).abs() < 1.0);
        assert!((r.secs - 1.000973).abs() < 1e-9);
        assert_eq!(r.retransmits, Some(2));
        assert_eq!(r.lost_percent, None);
        assert!((r.gbits() - 17.637_048_32).abs() < 1e-6);
    }

    #[test]
    fn udp_takes_the_receiver_rate_and_loss() {
        let r = parse(UDP, Load::Udp { len: 1400 }).unwrap();
        assert_eq!(r.bytes, 356_193_600);
        assert!((r.bps - 2_849_104_339.723).abs() < 1.0);
        let lost = r.lost_percent.unwrap();
        assert!((lost - 3.177_562_98).abs() < 1e-6);
        assert_eq!(r.lost_packets, Some(8350));
    }

    #[test]
    fn udp_falls_back_to_sum_on_old_iperf3() {
        let j = r#"{"end":{"sum":{"bits_per_second":1e9,"bytes":125000000,"seconds":1.0,"lost_percent":0.5}}}"#;
        let r = parse(j, Load::Udp { len: 1400 }).unwrap();
        assert_eq!(r.bytes, 125_000_000);
        assert_eq!(r.lost_percent, Some(0.5));
    }

    #[test]
    fn udp_with_nothing_received_is_all_lost() {
        let j = r#"{"end":{"sum_sent":{"packets":5000,"bytes":7000000},
            "sum_received":{"bits_per_second":0,"bytes":0,"seconds":2.0,"packets":0,"lost_packets":0,"lost_percent":0}}}"#;
        let r = parse(j, Load::Udp { len: 1400 }).unwrap();
        assert_eq!(r.lost_percent, Some(100.0));
        assert_eq!(r.lost_packets, Some(5000));
        assert_eq!(r.bps, 0.0);
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let e = parse(
            r#"{"start":{},"error":"unable to connect to server"}"#,
            Load::Tcp { streams: 1 },
        )
        .unwrap_err();
        assert!(format!("{e}").contains("unable to connect"), "{e}");
        assert!(parse("iperf3: error", Load::Tcp { streams: 1 }).is_err());
        assert!(parse(r#"{"end":{}}"#, Load::Tcp { streams: 4 }).is_err());
    }
}
