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
    /// Packet threads: `"auto"` (the default: one for both directions on a
    /// machine with one or two CPUs, else one per direction), `1` or `2`.
    pub threads: Threads,
}

impl Default for TunSection {
    fn default() -> Self {
        Self {
            name: "ptun0".into(),
            mtu: 1400,
            offload: true,
            threads: Threads::default(),
        }
    }
}

/// `tun.threads` as written: a name or a number, checked by
/// [`Threads::resolve`] so that a bad value is reported with its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Threads {
    /// `"auto"` (or a wrong word, refused by `resolve`).
    Name(String),
    /// `1` or `2` (or a wrong number, refused by `resolve`).
    Count(i64),
}

impl Default for Threads {
    fn default() -> Self {
        Threads::Name("auto".into())
    }
}

impl Threads {
    /// The thread count for a machine with `cpus` CPUs, or what is wrong.
    ///
    /// Why `auto` goes by CPUs: two direction threads run both directions
    /// at once where there are cores for them, but on one or two CPUs they
    /// only add wake-ups and context switches next to the containers.
    pub fn resolve(&self, cpus: usize) -> Result<usize, String> {
        match self {
            Threads::Name(n) if n == "auto" => Ok(if cpus <= 2 { 1 } else { 2 }),
            Threads::Count(n @ (1 | 2)) => Ok(*n as usize),
            Threads::Name(n) => Err(format!("must be \"auto\", 1 or 2, got {n:?}")),
            Threads::Count(n) => Err(format!("must be \"auto\", 1 or 2, got {n}")),
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
