//! What goes into a node's config file: the `proxytun.toml` a test node
//! runs with (node, store, tunnel, security, DNS and static peers), the
//! test cluster key, and the environment switches (offload, security mode)
//! that let the whole suite run on each packet path and in each mode.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::oakestra::OakestraStore;
use crate::tls::CertFiles;

/// The tunnel port every test node uses (the product's default).
pub const TUNNEL_PORT: u16 = 50103;

/// Whether the daemons run with the offload fast path: yes, unless
/// `PROXYTUN_TEST_OFFLOAD=off`, which `scripts/test.sh` sets for its second
/// pass so every behaviour is checked on both packet paths.
pub fn offload_wanted() -> bool {
    std::env::var("PROXYTUN_TEST_OFFLOAD").map_or(true, |v| v != "off")
}

/// What goes into a node's config file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `node.name`.
    pub name: String,
    /// `node.index`.
    pub index: u32,
    /// `tunnel.bind`: the node's underlay address.
    pub underlay: Ipv4Addr,
    /// Static `[[peer]]` entries: (name, endpoint).
    pub peers: Vec<(String, SocketAddr)>,
    /// `[store]`: `None` is the local store (the default, `index` is
    /// written); `Some` selects etcd, and `index` is then left out because
    /// the node leases it from the cluster.
    pub store: Option<EtcdStore>,
    /// `store.backend = "oakestra"` and the `[oakestra]` section; when set
    /// it replaces `store` and `index` (the node's subnet, hence its index,
    /// comes from the Oakestra cluster).
    pub oakestra: Option<OakestraStore>,
    /// `tunnel.keepalive_ms` and `tunnel.peer_timeout_ms`; `None` keeps the
    /// daemon's defaults. Tests shorten them so liveness changes show fast.
    pub keepalive: Option<Keepalive>,
    /// The `[dns]` section; `None` writes none (the daemon's defaults).
    pub dns: Option<DnsConfig>,
    /// Raw TOML appended after the other sections (whole `[section]`s,
    /// e.g. `"\n[admin]\nlisten = \"127.0.0.1:9110\"\n"`), for the keys a
    /// test needs that have no field here.
    pub extra: String,
    /// `tunnel.security` and `tunnel.key_file`; `None` writes neither (the
    /// daemon's defaults: auth with `/etc/proxytun/cluster.key`). Test
    /// clusters set it from their [`TestKey`].
    pub security: Option<TunnelSecurity>,
    /// `[tun] offload`; `None` follows [`offload_wanted`] (the suite's
    /// switch). Set for a test of nodes that differ.
    pub offload: Option<bool>,
    /// `tunnel.busy_poll_us`; `None` keeps the daemon's default (off).
    pub busy_poll_us: Option<u32>,
    /// `tun.threads`; `None` keeps the daemon's default (`auto`).
    pub threads: Option<u8>,
    /// `tunnel.keys = "node"` with the node's own key pair in its
    /// directory (`node.key`, made by `proxytun keygen --node` when the
    /// node is created); `None` keeps the cluster key. [`test_node_keys`]
    /// turns it on for every test cluster.
    pub node_keys: Option<NodeKeys>,
    /// `public_key` of the static `[[peer]]` entries, by peer name.
    pub peer_keys: Vec<(String, String)>,
}

/// Per-node tunnel keys of a test node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeKeys {
    /// `tunnel.rekey_after_s`; `None` keeps the daemon's default (120 s).
    pub rekey_after_s: Option<u64>,
}

/// The environment variable that switches every test cluster to per-node
/// tunnel keys (`node`; `cluster`, the default, keeps the cluster key).
pub const KEYS_ENV: &str = "PROXYTUN_TEST_KEYS";

/// Whether test clusters use per-node keys ([`KEYS_ENV`] = `node`).
pub fn test_node_keys() -> Result<bool> {
    match std::env::var(KEYS_ENV).as_deref() {
        Err(_) | Ok("cluster") => Ok(false),
        Ok("node") => Ok(true),
        Ok(m) => bail!("{KEYS_ENV}={m:?}: expected cluster or node"),
    }
}

/// `tunnel.security` and `tunnel.key_file` of a test node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSecurity {
    /// `plain`, `auth` or `encrypt`.
    pub mode: String,
    /// The cluster key file.
    pub key_file: PathBuf,
}

/// The environment variable that sets every test cluster's
/// `tunnel.security` (`plain`, `auth` or `encrypt`; `auth` when unset), so
/// the whole suite can run in each mode.
pub const SECURITY_ENV: &str = "PROXYTUN_TEST_SECURITY";

/// The tunnel security mode test clusters use: [`SECURITY_ENV`] or `auth`.
pub fn test_security_mode() -> Result<String> {
    match std::env::var(SECURITY_ENV) {
        Err(_) => Ok("auth".into()),
        Ok(m) if ["plain", "auth", "encrypt"].contains(&m.as_str()) => Ok(m),
        Ok(m) => bail!("{SECURITY_ENV}={m:?}: expected plain, auth or encrypt"),
    }
}

/// A random cluster key made by the real `proxytun keygen --out` (mode
/// 0600) in its own temporary directory, removed on drop.
#[derive(Debug)]
pub struct TestKey {
    _dir: TempDir,
    path: PathBuf,
}

impl TestKey {
    /// Runs `proxytun keygen --out DIR/cluster.key`.
    pub fn generate() -> Result<TestKey> {
        let dir = tempfile::Builder::new()
            .prefix("proxytun-key-")
            .tempdir()
            .context("creating the key's temporary directory")?;
        let path = dir.path().join("cluster.key");
        let out = std::process::Command::new(crate::support::proxytun_bin()?)
            .arg("keygen")
            .arg("--out")
            .arg(&path)
            .output()
            .context("running proxytun keygen")?;
        if !out.status.success() {
            bail!(
                "proxytun keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(TestKey { _dir: dir, path })
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key's 64 hex characters.
    pub fn hex(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.path)
            .context("reading the cluster key")?
            .trim()
            .to_owned())
    }

    /// The security of a test node using this key, in the mode
    /// [`test_security_mode`] says.
    pub fn security(&self) -> Result<TunnelSecurity> {
        Ok(TunnelSecurity {
            mode: test_security_mode()?,
            key_file: self.path.clone(),
        })
    }
}

/// The `[dns]` section of a node: every key is optional in the product, so
/// `None` leaves a key out and the daemon's default applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// `dns.enable`.
    pub enable: bool,
    /// `dns.domain`.
    pub domain: Option<String>,
    /// `dns.ttl_secs`.
    pub ttl_secs: Option<u32>,
    /// `dns.upstream`: `Some(vec![])` turns forwarding off; `None` uses the
    /// host's resolv.conf (tests set it, so nothing is ever sent towards
    /// the machine's real nameservers).
    pub upstream: Option<Vec<String>>,
    /// `dns.upstream_timeout_ms`.
    pub upstream_timeout_ms: Option<u32>,
    /// `dns.max_forwards`.
    pub max_forwards: Option<u32>,
    /// `dns.resolv_conf`.
    pub resolv_conf: Option<bool>,
}

impl Default for DnsConfig {
    /// Enabled, no forwarding, everything else the daemon's default.
    fn default() -> Self {
        Self {
            enable: true,
            domain: None,
            ttl_secs: None,
            upstream: Some(Vec::new()),
            upstream_timeout_ms: None,
            max_forwards: None,
            resolv_conf: None,
        }
    }
}

impl DnsConfig {
    /// The `[dns]` TOML section.
    pub fn render(&self) -> String {
        let mut s = format!("\n[dns]\nenable = {}\n", self.enable);
        if let Some(d) = &self.domain {
            let _ = writeln!(s, "domain = {d:?}");
        }
        if let Some(t) = self.ttl_secs {
            let _ = writeln!(s, "ttl_secs = {t}");
        }
        if let Some(u) = &self.upstream {
            let list: Vec<String> = u.iter().map(|e| format!("{e:?}")).collect();
            let _ = writeln!(s, "upstream = [{}]", list.join(", "));
        }
        if let Some(t) = self.upstream_timeout_ms {
            let _ = writeln!(s, "upstream_timeout_ms = {t}");
        }
        if let Some(m) = self.max_forwards {
            let _ = writeln!(s, "max_forwards = {m}");
        }
        if let Some(r) = self.resolv_conf {
            let _ = writeln!(s, "resolv_conf = {r}");
        }
        s
    }
}

/// The `[store]` section of an etcd-mode node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStore {
    /// `store.endpoints`: client URLs like `http://192.0.2.254:2379`.
    pub endpoints: Vec<String>,
    /// `store.prefix`; `None` keeps the default (`/proxytun`).
    pub prefix: Option<String>,
    /// `store.lease_ttl_secs`: short in tests so a dead node's instances
    /// expire within the test's time budget.
    pub lease_ttl_secs: u32,
    /// `store.ca_file`: the CA of etcd's server certificate (TLS).
    pub ca_file: Option<PathBuf>,
    /// `store.cert_file` and `store.key_file`: the node's client
    /// certificate, for an etcd that asks for one.
    pub client: Option<CertFiles>,
    /// `store.empty_service_grace_secs`; `None` keeps the default.
    pub empty_service_grace_secs: Option<u32>,
    /// `store.interest_idle_secs`; `None` keeps the daemon's default.
    pub interest_idle_secs: Option<u32>,
}

/// Tunnel keepalive timing (`[tunnel]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// `tunnel.keepalive_ms`: interval of keepalives to each peer.
    pub interval_ms: u32,
    /// `tunnel.peer_timeout_ms`: silence after which a peer is down.
    pub peer_timeout_ms: u32,
}

impl NodeConfig {
    /// The TOML text, with the socket and state dir under `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let mut s = String::new();
        let _ = write!(s, "[node]\nname = \"{}\"\n", self.name);
        match &self.store {
            _ if self.oakestra.is_some() => {
                if let Some(o) = &self.oakestra {
                    s.push_str(&o.render(dir));
                }
            }
            None => {
                let _ = writeln!(s, "index = {}", self.index);
            }
            Some(etcd) => {
                let endpoints: Vec<String> =
                    etcd.endpoints.iter().map(|e| format!("{e:?}")).collect();
                let _ = write!(
                    s,
                    "\n[store]\nbackend = \"etcd\"\nendpoints = [{}]\nlease_ttl_secs = {}\n",
                    endpoints.join(", "),
                    etcd.lease_ttl_secs
                );
                if let Some(prefix) = &etcd.prefix {
                    let _ = writeln!(s, "prefix = {prefix:?}");
                }
                if let Some(g) = etcd.empty_service_grace_secs {
                    let _ = writeln!(s, "empty_service_grace_secs = {g}");
                }
                if let Some(i) = etcd.interest_idle_secs {
                    let _ = writeln!(s, "interest_idle_secs = {i}");
                }
                if let Some(ca) = &etcd.ca_file {
                    let _ = writeln!(s, "ca_file = {:?}", ca.display().to_string());
                }
                if let Some(c) = &etcd.client {
                    let _ = writeln!(s, "cert_file = {:?}", c.cert.display().to_string());
                    let _ = writeln!(s, "key_file = {:?}", c.key.display().to_string());
                }
            }
        }
        let _ = write!(
            s,
            "\n[tunnel]\nbind = \"{}\"\nport = {TUNNEL_PORT}\n",
            self.underlay
        );
        if let Some(k) = &self.keepalive {
            let _ = write!(
                s,
                "keepalive_ms = {}\npeer_timeout_ms = {}\n",
                k.interval_ms, k.peer_timeout_ms
            );
        }
        if let Some(us) = self.busy_poll_us {
            let _ = writeln!(s, "busy_poll_us = {us}");
        }
        if let Some(sec) = &self.security {
            let _ = write!(
                s,
                "security = {:?}\nkey_file = {:?}\n",
                sec.mode,
                sec.key_file.display().to_string()
            );
        }
        if let Some(k) = &self.node_keys {
            let _ = write!(
                s,
                "keys = \"node\"\nnode_key_file = {:?}\n",
                dir.join("node.key").display().to_string()
            );
            if let Some(r) = k.rekey_after_s {
                let _ = writeln!(s, "rekey_after_s = {r}");
            }
        }
        let _ = write!(
            s,
            "\n[tun]\noffload = {}\n{}\n[api]\nsocket = \"{}\"\n\n[state]\ndir = \"{}\"\n",
            self.offload.unwrap_or_else(offload_wanted),
            self.threads
                .map(|n| format!("threads = {n}\n"))
                .unwrap_or_default(),
            dir.join("api.sock").display(),
            dir.join("state").display(),
        );
        if let Some(dns) = &self.dns {
            s.push_str(&dns.render());
        }
        s.push_str(&self.extra);
        for (name, ep) in &self.peers {
            let _ = write!(s, "\n[[peer]]\nname = \"{name}\"\nendpoint = \"{ep}\"\n");
            if let Some((_, k)) = self.peer_keys.iter().find(|(n, _)| n == name) {
                let _ = writeln!(s, "public_key = \"{k}\"");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(store: Option<EtcdStore>, keepalive: Option<Keepalive>) -> NodeConfig {
        NodeConfig {
            name: "a".into(),
            index: 1,
            underlay: Ipv4Addr::new(192, 0, 2, 1),
            peers: vec![("b".into(), "192.0.2.2:50103".parse().expect("test input"))],
            store,
            oakestra: None,
            keepalive,
            dns: None,
            extra: String::new(),
            security: None,
            offload: None,
            busy_poll_us: None,
            threads: None,
            node_keys: None,
            peer_keys: Vec::new(),
        }
    }

    #[test]
    fn security_renders_in_the_tunnel_section() {
        let mut c = cfg(None, None);
        c.security = Some(TunnelSecurity {
            mode: "encrypt".into(),
            key_file: "/k/cluster.key".into(),
        });
        let text = c.render(Path::new("/d"));
        let want = "[tunnel]\nbind = \"192.0.2.1\"\nport = 50103\nsecurity = \"encrypt\"\nkey_file = \"/k/cluster.key\"\n";
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    #[test]
    fn static_config_is_unchanged() {
        let text = cfg(None, None).render(Path::new("/d"));
        let want = format!(
            "[node]\nname = \"a\"\nindex = 1\n\n[tunnel]\nbind = \"192.0.2.1\"\nport = 50103\n\n\
             [tun]\noffload = {}\n\n[api]\nsocket = \"/d/api.sock\"\n\n[state]\ndir = \"/d/state\"\n\
             \n[[peer]]\nname = \"b\"\nendpoint = \"192.0.2.2:50103\"\n",
            offload_wanted()
        );
        assert_eq!(text, want);
    }

    #[test]
    fn etcd_config_has_store_and_no_index() {
        let text = cfg(
            Some(EtcdStore {
                endpoints: vec!["http://192.0.2.254:2379".into()],
                prefix: Some("/pt".into()),
                lease_ttl_secs: 3,
                ca_file: Some("/c/ca.pem".into()),
                client: Some(CertFiles {
                    cert: "/c/client.pem".into(),
                    key: "/c/client-key.pem".into(),
                }),
                empty_service_grace_secs: None,
                interest_idle_secs: None,
            }),
            Some(Keepalive {
                interval_ms: 300,
                peer_timeout_ms: 1200,
            }),
        )
        .render(Path::new("/d"));
        assert!(!text.contains("index"), "{text}");
        for want in [
            "[store]\nbackend = \"etcd\"\nendpoints = [\"http://192.0.2.254:2379\"]\nlease_ttl_secs = 3\nprefix = \"/pt\"\n\
             ca_file = \"/c/ca.pem\"\ncert_file = \"/c/client.pem\"\nkey_file = \"/c/client-key.pem\"\n",
            "[tunnel]\nbind = \"192.0.2.1\"\nport = 50103\nkeepalive_ms = 300\npeer_timeout_ms = 1200\n",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
    }

    #[test]
    fn oakestra_config_replaces_store_and_index() {
        let mut c = cfg(None, None);
        c.oakestra = Some(super::OakestraStore::default());
        let text = c.render(Path::new("/d"));
        assert!(!text.contains("index"), "{text}");
        assert!(
            text.starts_with("[node]\nname = \"a\"\n\n[store]\nbackend = \"oakestra\"\n"),
            "{text}"
        );
        assert!(
            text.contains("[oakestra]\nsocket = \"/d/netmanager.sock\"\n"),
            "{text}"
        );
    }

    #[test]
    fn dns_section_renders_only_what_is_set() {
        let mut c = cfg(None, None);
        c.dns = Some(DnsConfig {
            upstream: Some(vec!["192.0.2.53".into(), "192.0.2.54:5353".into()]),
            upstream_timeout_ms: Some(500),
            ttl_secs: Some(5),
            ..DnsConfig::default()
        });
        let text = c.render(Path::new("/d"));
        let want = "\n[dns]\nenable = true\nttl_secs = 5\n\
                    upstream = [\"192.0.2.53\", \"192.0.2.54:5353\"]\nupstream_timeout_ms = 500\n";
        assert!(text.contains(want), "{want:?} not in:\n{text}");
        assert!(!text.contains("domain"), "{text}");
        let off = DnsConfig {
            enable: false,
            upstream: None,
            ..DnsConfig::default()
        };
        assert_eq!(off.render(), "\n[dns]\nenable = false\n");
    }
}
