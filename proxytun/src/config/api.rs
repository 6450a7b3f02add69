//! `[api]` and `[cnm]`: the management socket and Docker's network plugin
//! socket, the two unix sockets the daemon serves.

use std::path::PathBuf;

use serde::Deserialize;

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// The unix socket the management API listens on.
    pub socket: PathBuf,
    /// A group (name or numeric id) whose members may use the API: the
    /// socket is then `0660` with that group; without it `0600`, root only.
    /// Anyone who can connect controls the node's networking.
    pub group: Option<String>,
    /// How long a client may take to send a whole request head before
    /// the connection is closed (a slowloris cannot hold it), in ms.
    pub header_timeout_ms: u64,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            group: None,
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
        }
    }
}

/// `api.header_timeout_ms` and `admin.header_timeout_ms` by default.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;

/// The range of the header timeouts: long enough for any real client,
/// short enough that a held connection is freed.
pub const HEADER_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

/// Checks a header timeout key; the error is the message for `key`.
pub fn check_header_timeout(ms: u64) -> Result<(), String> {
    if HEADER_TIMEOUT_MS.contains(&ms) {
        return Ok(());
    }
    Err(format!(
        "must be between {} and {} milliseconds, got {ms}",
        HEADER_TIMEOUT_MS.start(),
        HEADER_TIMEOUT_MS.end()
    ))
}

/// The request head bounds of a listener with header timeout `ms`.
pub fn head_limits(ms: u64) -> envmgr::api::HeadLimits {
    envmgr::api::HeadLimits::with_timeout(std::time::Duration::from_millis(ms))
}

impl ApiSection {
    /// The numeric id of [`Self::group`], looked up in the system's group
    /// database; an unknown name is an error, so a typo never leaves the
    /// socket root-only in silence (or open to the wrong group).
    pub fn group_id(&self) -> Result<Option<u32>, String> {
        let Some(g) = self.group.as_deref() else {
            return Ok(None);
        };
        if let Ok(gid) = g.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(g) {
            Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
            Ok(None) => Err(format!(
                "no group named {g:?} on this system (create it with `groupadd {g}`, or give a numeric gid)"
            )),
            Err(e) => Err(format!("cannot look up group {g:?}: {e}")),
        }
    }
}

/// Where the CLI looks for the API when not told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/proxytun/api.sock";

/// `[cnm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnmSection {
    /// Speak Docker's remote network driver protocol. Off by default:
    /// only nodes that run Docker need it.
    pub enable: bool,
    /// The plugin socket; Docker discovers `proxytun` by this file name.
    pub socket: PathBuf,
}

/// Where Docker looks for the `proxytun` network plugin.
pub const DEFAULT_CNM_SOCKET: &str = "/run/docker/plugins/proxytun.sock";

impl Default for CnmSection {
    fn default() -> Self {
        Self {
            enable: false,
            socket: PathBuf::from(DEFAULT_CNM_SOCKET),
        }
    }
}
