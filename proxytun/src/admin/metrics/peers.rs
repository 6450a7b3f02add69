//! The peer families: each peer's liveness, RTT, pings and pongs, and the
//! keepalives of all peers together.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::encode::{counter, counter_labelled, gauge_labelled};
use crate::shell::shared::IoReadings;
use proxytun_core::{CountersSnapshot, PeerHealthView};

/// One peer endpoint's health with the node name the snapshot gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReading {
    /// The peer's node name; empty when no peer of the snapshot has this endpoint.
    pub name: String,
    /// Its health as the keepalives measured it.
    pub health: PeerHealthView,
}

/// Writes the peer and keepalive families.
pub(super) fn encode(
    enc: &mut DescriptorEncoder<'_>,
    peers: &[PeerReading],
    c: &CountersSnapshot,
    io: &IoReadings,
) -> Result<(), std::fmt::Error> {
    let labels = |p: &PeerReading| {
        vec![
            ("peer", p.name.clone()),
            ("endpoint", p.health.endpoint.to_string()),
        ]
    };
    let up: Vec<_> = peers
        .iter()
        .map(|p| (labels(p), u64::from(p.health.alive)))
        .collect();
    gauge_labelled(
        enc,
        "proxytun_peer_up",
        "1 while the peer answers keepalives within the peer timeout (or was never pinged yet), else 0",
        &up,
    )?;
    let rtt: Vec<_> = peers
        .iter()
        .filter_map(|p| {
            p.health
                .rtt_us
                .map(|us| (labels(p), us as f64 / 1_000_000.0))
        })
        .collect();
    {
        let mut m = enc.encode_descriptor(
            "proxytun_peer_rtt",
            "Smoothed keepalive round-trip time to the peer (absent until measured)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (l, v) in &rtt {
            ConstGauge::new(*v).encode(m.encode_family(l)?)?;
        }
    }
    let pings: Vec<_> = peers
        .iter()
        .map(|p| (labels(p), p.health.pings_sent))
        .collect();
    counter_labelled(
        enc,
        "proxytun_peer_pings_sent",
        "Keepalive pings sent to the peer",
        &pings,
    )?;
    let pongs: Vec<_> = peers
        .iter()
        .map(|p| (labels(p), p.health.pongs_received))
        .collect();
    counter_labelled(
        enc,
        "proxytun_peer_pongs_received",
        "Keepalive pongs received from the peer",
        &pongs,
    )?;
    counter_labelled(
        enc,
        "proxytun_keepalives",
        "Keepalive messages by kind and direction, all peers together (ping tx: written for a peer; ping rx: answered; pong rx: accepted as an RTT sample)",
        &[
            (ka("ping", "tx"), c.keepalive_pings_tx),
            (ka("ping", "rx"), c.keepalive_pings_rx),
            (ka("pong", "rx"), c.keepalive_pongs_rx),
        ],
    )?;
    counter(
        enc,
        "proxytun_keepalive_datagrams_sent",
        "Keepalive pings and pongs the socket accepted",
        io.keepalive_tx,
    )?;
    Ok(())
}

/// The labels of a keepalive sample.
fn ka(kind: &str, direction: &str) -> Vec<(&'static str, String)> {
    vec![
        ("kind", kind.to_owned()),
        ("direction", direction.to_owned()),
    ]
}
