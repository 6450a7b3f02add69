//! `[state]` and `[store]`: where this node keeps its files, and which
//! store holds the cluster's view (the local file or etcd).

use std::path::PathBuf;

use serde::Deserialize;

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// The local store's directory.
    pub dir: PathBuf,
}

impl Default for StateSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/proxytun"),
        }
    }
}

/// `store.backend`: where the cluster's view lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded file store in `state.dir`: a single node or a static
    /// cluster whose peers and remote instances are registered by API.
    #[default]
    Local,
    /// etcd: subnets, ServiceIPs and instances are agreed cluster-wide.
    Etcd,
    /// Oakestra's cluster manager (MQTT), as its NetManager.
    Oakestra,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `local` (default) or `etcd`.
    pub backend: Backend,
    /// etcd client URLs, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix all of this cluster's keys live under.
    pub prefix: String,
    /// TTL of the node's lease, in seconds: how long a dead node's
    /// instances stay registered.
    pub lease_ttl_secs: u64,
    /// How long one etcd request may take before the node treats etcd as
    /// unreachable, in milliseconds.
    pub request_timeout_ms: u64,
    /// CA certificate (PEM) to verify etcd's server certificate (TLS).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate auth.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<PathBuf>,
    /// How long a service with no instance on any node keeps its record
    /// and ServiceIPs, in seconds; 0 keeps them for ever.
    pub empty_service_grace_secs: u64,
    /// A service this node uses but does not serve leaves its view when
    /// none of its flows or name lookups used it for this many seconds;
    /// 0 keeps interests for ever.
    pub interest_idle_secs: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            endpoints: Vec::new(),
            prefix: "/proxytun".into(),
            lease_ttl_secs: 10,
            request_timeout_ms: 3000,
            ca_file: None,
            cert_file: None,
            key_file: None,
            empty_service_grace_secs: 600,
            interest_idle_secs: 600,
        }
    }
}

impl StoreSection {
    /// The `[store]` values of an etcd store serde cannot check: the
    /// endpoints, the prefix, the lease and request times, the TLS files.
    pub(super) fn check_etcd(&self) -> Result<(), (&'static str, String)> {
        let st = self;
        if st.endpoints.is_empty() {
            return Err((
                "store.endpoints",
                "needs at least one etcd URL with store.backend = \"etcd\", e.g. [\"http://10.0.0.5:2379\"]".into(),
            ));
        }
        for e in &st.endpoints {
            let ok = (e.starts_with("http://") || e.starts_with("https://"))
                && e.split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty());
            if !ok {
                return Err((
                    "store.endpoints",
                    format!("{e:?} must be a URL such as http://10.0.0.5:2379"),
                ));
            }
        }
        if !st.prefix.starts_with('/') || st.prefix.len() < 2 || st.prefix.ends_with('/') {
            return Err((
                "store.prefix",
                format!(
                    "{:?} must start with '/', not end with '/', and not be just \"/\"",
                    st.prefix
                ),
            ));
        }
        if !(2..=3600).contains(&st.lease_ttl_secs) {
            return Err((
                "store.lease_ttl_secs",
                format!(
                    "must be between 2 and 3600 seconds, got {}",
                    st.lease_ttl_secs
                ),
            ));
        }
        if !(100..=60_000).contains(&st.request_timeout_ms) {
            return Err((
                "store.request_timeout_ms",
                format!(
                    "must be between 100 and 60000 milliseconds, got {}",
                    st.request_timeout_ms
                ),
            ));
        }
        if st.empty_service_grace_secs > 30 * 86_400 {
            return Err((
                "store.empty_service_grace_secs",
                format!(
                    "must be at most 2592000 (30 days), or 0 to keep empty services, got {}",
                    st.empty_service_grace_secs
                ),
            ));
        }
        if st.interest_idle_secs > 30 * 86_400 || (1..5).contains(&st.interest_idle_secs) {
            return Err((
                "store.interest_idle_secs",
                format!(
                    "must be between 5 and 2592000 (30 days), or 0 to keep interests, got {}",
                    st.interest_idle_secs
                ),
            ));
        }
        if st.cert_file.is_some() != st.key_file.is_some() {
            return Err((
                "store.key_file",
                "store.cert_file and store.key_file go together: give both or neither".into(),
            ));
        }
        if st.ca_file.is_none() && st.cert_file.is_some() {
            return Err((
                "store.ca_file",
                "store.cert_file is set, so TLS is on: give the CA that signed etcd's server certificate too".into(),
            ));
        }
        if st.ca_file.is_none() && st.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err((
                "store.ca_file",
                "the endpoints are https://: give the CA that signed etcd's server certificate (PEM)".into(),
            ));
        }
        if (st.cert_file.is_some() || st.ca_file.is_some())
            && st.endpoints.iter().any(|e| e.starts_with("http://"))
        {
            return Err((
                "store.endpoints",
                "TLS files are set, so the endpoints must be https:// URLs".into(),
            ));
        }
        Ok(())
    }
}
