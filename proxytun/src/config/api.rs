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
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            group: None,
        }
    }
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
