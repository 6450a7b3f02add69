//! The config of a node that joins an Oakestra cluster: `[store] backend =
//! "oakestra"` with its optional broker and client id, and the `[oakestra]`
//! section with the NodeEngine API socket in the node's directory.

use std::fmt::Write as _;
use std::path::Path;

/// The NodeEngine socket's file name in the node's directory.
pub const NODEENGINE_SOCKET: &str = "netmanager.sock";

/// What an Oakestra-mode node's config says; every key but the backend is
/// optional in the product, and `None` leaves it out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OakestraStore {
    /// `store.broker` (`HOST:PORT`); `None`: `/register`'s
    /// `cluster_address` with `store.broker_port`.
    pub broker: Option<String>,
    /// `store.broker_port` (the product's default is 10003).
    pub broker_port: Option<u16>,
    /// `store.client_id`; `None`: learnt from `/register`.
    pub client_id: Option<String>,
    /// `oakestra.enable`; `None` keeps the default (on with this backend).
    pub enable: Option<bool>,
}

impl OakestraStore {
    /// The `[store]` and `[oakestra]` sections, the socket under `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let mut s = String::from("\n[store]\nbackend = \"oakestra\"\n");
        if let Some(b) = &self.broker {
            let _ = writeln!(s, "broker = {b:?}");
        }
        if let Some(p) = self.broker_port {
            let _ = writeln!(s, "broker_port = {p}");
        }
        if let Some(c) = &self.client_id {
            let _ = writeln!(s, "client_id = {c:?}");
        }
        s.push_str("\n[oakestra]\n");
        if let Some(e) = self.enable {
            let _ = writeln!(s, "enable = {e}");
        }
        let _ = writeln!(
            s,
            "socket = {:?}",
            dir.join(NODEENGINE_SOCKET).display().to_string()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_backend_and_socket_only_what_is_set() {
        let text = OakestraStore::default().render(Path::new("/d"));
        assert_eq!(
            text,
            "\n[store]\nbackend = \"oakestra\"\n\n[oakestra]\nsocket = \"/d/netmanager.sock\"\n"
        );
        let text = OakestraStore {
            broker: Some("192.0.2.254:10003".into()),
            broker_port: Some(1883),
            client_id: Some("w1".into()),
            enable: Some(true),
        }
        .render(Path::new("/d"));
        assert!(
            text.contains(
                "broker = \"192.0.2.254:10003\"\nbroker_port = 1883\nclient_id = \"w1\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("[oakestra]\nenable = true\n"), "{text}");
    }
}
