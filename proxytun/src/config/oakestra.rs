//! `[oakestra]`: the NetManager API Oakestra's NodeEngine calls
//! (docs/oakestra.md).

use std::path::PathBuf;

use serde::Deserialize;

use super::store::Backend;

/// Where the NodeEngine looks for its NetManager.
pub const DEFAULT_NODEENGINE_SOCKET: &str = "/etc/netmanager/netmanager.sock";

/// `[oakestra]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OakestraSection {
    /// The NodeEngine API's unix socket.
    pub socket: PathBuf,
    /// Serve the NodeEngine API; unset: on with `store.backend =
    /// "oakestra"`, off otherwise (see [`Self::enabled`]).
    pub enable: Option<bool>,
}

impl Default for OakestraSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_NODEENGINE_SOCKET),
            enable: None,
        }
    }
}

impl OakestraSection {
    /// Whether the NodeEngine API runs with store backend `backend`.
    pub fn enabled(&self, backend: Backend) -> bool {
        self.enable.unwrap_or(backend == Backend::Oakestra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_by_default_only_with_the_oakestra_backend() {
        let mut s = OakestraSection::default();
        assert_eq!(s.socket, PathBuf::from(DEFAULT_NODEENGINE_SOCKET));
        assert!(s.enabled(Backend::Oakestra));
        assert!(!s.enabled(Backend::Local) && !s.enabled(Backend::Etcd));
        s.enable = Some(true);
        assert!(s.enabled(Backend::Local));
        s.enable = Some(false);
        assert!(!s.enabled(Backend::Oakestra));
    }

    #[test]
    fn the_socket_is_checked_when_enabled() {
        let base = "[node]\nname = \"a\"\nindex = 1\n[oakestra]\n";
        let parse = |extra: &str| {
            crate::config::Config::parse(&format!("{base}{extra}"), std::path::Path::new("t.toml"))
        };
        let c = parse("").expect("defaults");
        assert!(!c.oakestra.enabled(c.store.backend));
        // Off: the socket is not looked at.
        parse("socket = \"rel.sock\"\n").expect("off");
        for bad in [
            "enable = true\nsocket = \"rel.sock\"\n",
            "enable = true\nsocket = \"/run/proxytun/api.sock\"\n",
            "enable = true\nsocked = \"/x.sock\"\n",
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("oakestra.sock"), "{e}");
        }
        let c = parse("enable = true\nsocket = \"/run/nm.sock\"\n").expect("ok");
        assert_eq!(c.oakestra.socket, PathBuf::from("/run/nm.sock"));
    }
}
