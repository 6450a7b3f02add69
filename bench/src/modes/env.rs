//! What a mode is and what a set-up mode holds: the [`ModeKind`]s under
//! comparison, the [`Tools`] they need, and the [`ModeEnv`] whose Drop stops
//! the mode's processes by pid, servers first, then forwarders, and then
//! deletes its containers. The mode set-ups (`kernel`, `proxytun`) fill it.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use tempfile::TempDir;
use testbed::cmd::{self, Bg};
use testbed::netns::Netns;

/// How long a server or forwarder may take to end on SIGTERM before
/// SIGKILL, when its mode is torn down.
pub(super) const STOP_GRACE: Duration = Duration::from_millis(500);

/// One dataplane under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModeKind {
    /// Plain kernel routing between the container subnets: the limit.
    Direct,
    /// A kernel VXLAN overlay between the hosts: what users pick today.
    Vxlan,
    /// OpenVPN 2.6 peer-to-peer without crypto: the nearest userspace
    /// TUN<->UDP peer.
    Openvpn,
    /// Both proxytun daemons in the default configuration (`security =
    /// "auth"`, offloads on), the server reached through its ServiceIP:
    /// the figure of what users run.
    Proxytun,
    /// The same with `tunnel.security = "plain"`: no tag, the baseline
    /// the security modes are compared with.
    Plain,
    /// The same with `tunnel.security = "encrypt"`.
    Encrypt,
    /// The default configuration with `[tun] offload = false`: the path
    /// without TUN offloads and UDP GSO/GRO.
    ProxytunNooffload,
    /// The default configuration with `tunnel.busy_poll_us = 50`: the
    /// latency figures with busy-polling beside those without.
    ProxytunBusypoll,
    /// The default configuration with `[tun] threads = 2`: one packet
    /// thread per direction, whatever the CPU count.
    Proxytun2threads,
    /// The default configuration with `tunnel.keys = "node"`: per-node
    /// keys, sessions from handshakes (the cost of the handshake mode).
    ProxytunNodekeys,
}

impl ModeKind {
    /// Every mode, in the order they are measured and printed (the
    /// security modes beside the default one).
    pub const ALL: [ModeKind; 10] = [
        ModeKind::Direct,
        ModeKind::Vxlan,
        ModeKind::Openvpn,
        ModeKind::Proxytun,
        ModeKind::Plain,
        ModeKind::Encrypt,
        ModeKind::ProxytunNooffload,
        ModeKind::ProxytunBusypoll,
        ModeKind::Proxytun2threads,
        ModeKind::ProxytunNodekeys,
    ];

    /// The name used on the command line, in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ModeKind::Direct => "direct",
            ModeKind::Vxlan => "vxlan",
            ModeKind::Openvpn => "openvpn",
            ModeKind::Proxytun => "proxytun",
            ModeKind::Plain => "plain",
            ModeKind::Encrypt => "encrypt",
            ModeKind::ProxytunNooffload => "proxytun-nooffload",
            ModeKind::ProxytunBusypoll => "proxytun-busypoll",
            ModeKind::Proxytun2threads => "proxytun-2threads",
            ModeKind::ProxytunNodekeys => "proxytun-nodekeys",
        }
    }

    /// Names earlier versions of the bench used, still accepted on the
    /// command line so old scripts and notes keep working (never printed).
    /// `proxytun-plain` was the offloads-off mode, not `plain` security.
    const ALIASES: [(&'static str, ModeKind); 3] = [
        ("proxytun-plain", ModeKind::ProxytunNooffload),
        ("proxytun-noauth", ModeKind::Plain),
        ("proxytun-encrypt", ModeKind::Encrypt),
    ];

    /// Whether this is one of the proxytun daemon modes.
    pub fn is_proxytun(self) -> bool {
        matches!(
            self,
            ModeKind::Proxytun
                | ModeKind::Plain
                | ModeKind::Encrypt
                | ModeKind::ProxytunNooffload
                | ModeKind::ProxytunBusypoll
                | ModeKind::Proxytun2threads
                | ModeKind::ProxytunNodekeys
        )
    }

    /// A short tag for namespace and interface names (which are short).
    pub(super) fn tag(self) -> &'static str {
        match self {
            ModeKind::Direct => "dir",
            ModeKind::Vxlan => "vxl",
            ModeKind::Openvpn => "ovpn",
            ModeKind::Proxytun => "pt",
            ModeKind::Plain => "ptpl",
            ModeKind::Encrypt => "ptenc",
            ModeKind::ProxytunNooffload => "ptnoo",
            ModeKind::ProxytunBusypoll => "ptbp",
            ModeKind::Proxytun2threads => "pt2t",
            ModeKind::ProxytunNodekeys => "ptnk",
        }
    }
}

impl fmt::Display for ModeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ModeKind::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .or_else(|| {
                ModeKind::ALIASES
                    .into_iter()
                    .find_map(|(alias, m)| (alias == s).then_some(m))
            })
            .ok_or_else(|| {
                let all: Vec<&str> = ModeKind::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode {s:?}; known: {}", all.join(", "))
            })
    }
}

/// What the modes need from outside: binaries and the run's prefix.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `proxytun` binary (release build).
    pub proxytun: PathBuf,
    /// This binary, for `rr-server`/`rr-client` inside the containers.
    pub bench: PathBuf,
}

/// A mode, set up and ready to measure.
#[derive(Debug)]
pub struct ModeEnv {
    /// Which mode.
    pub kind: ModeKind,
    /// The address the client dials: the server container's address, or
    /// for proxytun the server's ServiceIP.
    pub target: Ipv4Addr,
    /// The servers in the server container (stopped first).
    pub(super) servers: Vec<Bg>,
    /// The forwarder processes (daemons), stopped after the servers.
    pub(super) forwarders: Vec<Bg>,
    /// The client container.
    pub client: Netns,
    /// The server container.
    pub server: Netns,
    /// Config files, state and logs of the forwarders.
    pub(super) dir: Option<TempDir>,
    /// Log files of the forwarders, shown when something fails.
    pub(super) logs: Vec<PathBuf>,
    /// For the proxytun modes: what the drop figures read besides pids.
    pub pt: Option<PtHandles>,
}

/// What the harness reads of a proxytun mode's daemons to say where
/// packets were dropped: the TUN's name (the same in both host
/// namespaces) and the daemons' API sockets, node a's first.
#[derive(Debug, Clone)]
pub struct PtHandles {
    /// The TUN device of both daemons.
    pub tun: &'static str,
    /// The API sockets of the daemons on host a and host b.
    pub sockets: [PathBuf; 2],
}

impl ModeEnv {
    /// The pids of the forwarder processes (empty for the kernel modes).
    pub fn forwarder_pids(&self) -> Vec<u32> {
        self.forwarders.iter().filter_map(Bg::pid).collect()
    }

    /// Fails if a forwarder died (a crashed daemon makes later figures
    /// meaningless), with the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for (i, f) in self.forwarders.iter_mut().enumerate() {
            if let Some(st) = f.exited()? {
                let log = self
                    .logs
                    .get(i)
                    .and_then(|p| fs::read_to_string(p).ok())
                    .unwrap_or_else(|| f.output());
                bail!(
                    "{}: forwarder `{}` exited ({st}); log:\n{}",
                    self.kind,
                    f.cmdline(),
                    cmd::tail(&log, 30)
                );
            }
        }
        Ok(())
    }

    /// Where the forwarders' configs and logs are.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }
}

impl Drop for ModeEnv {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        for f in &mut self.forwarders {
            f.stop();
        }
        // The namespaces and the temporary directory go with the fields.
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn new_names_and_old_aliases_parse() {
        for m in ModeKind::ALL {
            assert_eq!(m.name().parse::<ModeKind>().unwrap(), m);
        }
        assert_eq!(
            "proxytun-noauth".parse::<ModeKind>().unwrap(),
            ModeKind::Plain
        );
        assert_eq!(
            "proxytun-encrypt".parse::<ModeKind>().unwrap(),
            ModeKind::Encrypt
        );
        assert_eq!(
            "proxytun-plain".parse::<ModeKind>().unwrap(),
            ModeKind::ProxytunNooffload
        );
        // Aliases are accepted, never printed.
        assert_eq!(ModeKind::Plain.to_string(), "plain");
        let e = "nosuch".parse::<ModeKind>().unwrap_err();
        assert!(
            e.contains("proxytun-nooffload") && !e.contains("noauth"),
            "{e}"
        );
    }

    #[test]
    fn tags_are_unique() {
        let mut tags: Vec<&str> = ModeKind::ALL.iter().map(|m| m.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ModeKind::ALL.len());
    }
}
