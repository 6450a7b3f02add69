//! `[tun]` and `[bridge]`: the two devices the node creates, the TUN the
//! dataplane reads and the bridge containers attach to.

use serde::Deserialize;

/// `[tun]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunSection {
    /// The TUN device's name.
    pub name: String,
    /// Its MTU; also the containers' MTU, so TCP never needs to fragment.
    pub mtu: u32,
    /// Use the offload fast path (TUN vnet header with TSO/CSUM, UDP GSO/GRO on
    /// the tunnel) when the kernel has it. `false` forces the plain path, to
    /// compare the two or to work around a kernel bug; either way the
    /// behaviour is the same, only the cost per byte differs.
    pub offload: bool,
}

impl Default for TunSection {
    fn default() -> Self {
        Self {
            name: "ptun0".into(),
            mtu: 1400,
            offload: true,
        }
    }
}

/// `[bridge]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// The bridge's name.
    pub name: String,
}

impl Default for BridgeSection {
    fn default() -> Self {
        Self {
            name: "ptbr0".into(),
        }
    }
}
