//! `[flows]`: how long idle flows live, and how many there may be.

use serde::Deserialize;

/// `[flows]`: how long idle flows live, and how many there may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsSection {
    /// The most flows the table holds; new flows beyond it are dropped and counted.
    pub max: usize,
    /// Idle timeout of an established TCP flow, in seconds.
    pub tcp_idle_secs: u64,
    /// Idle timeout of a TCP flow whose SYN got no answer yet, in seconds.
    pub tcp_syn_secs: u64,
    /// How long a TCP flow lingers after FIN in both directions, in seconds.
    pub tcp_fin_secs: u64,
    /// How long a TCP flow lingers after RST, in seconds.
    pub tcp_rst_secs: u64,
    /// Idle timeout of a UDP flow, in seconds.
    pub udp_idle_secs: u64,
    /// Idle timeout of an ICMP echo flow, in seconds.
    pub icmp_idle_secs: u64,
}

impl Default for FlowsSection {
    fn default() -> Self {
        Self {
            max: 1 << 20,
            tcp_idle_secs: 7200,
            tcp_syn_secs: 60,
            tcp_fin_secs: 10,
            tcp_rst_secs: 2,
            udp_idle_secs: 60,
            icmp_idle_secs: 30,
        }
    }
}
