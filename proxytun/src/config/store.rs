//! `[state]` and `[store]`: where this node keeps its files, and which
//! store holds the cluster's view (the local file, etcd, or an Oakestra
//! cluster over MQTT).

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
    /// An Oakestra cluster: the subnet, ServiceIPs and instances come from
    /// its cluster manager over MQTT (docs/oakestra.md).
    Oakestra,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `local` (default), `etcd` or `oakestra`.
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
    /// Oakestra: the cluster's MQTT broker, `HOST:PORT`; absent: the
    /// NodeEngine's `cluster_address` on [`Self::broker_port`].
    pub broker: Option<String>,
    /// Oakestra: the broker's port when only its host is known (10003).
    pub broker_port: u16,
    /// Oakestra: this worker's id (the MQTT client id); absent: the
    /// NodeEngine's `/register` (kept in `oakestra.json`).
    pub client_id: Option<String>,
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
            broker: None,
            broker_port: 10003,
            client_id: None,
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
        st.check_interest_idle()?;
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

impl StoreSection {
    /// `store.interest_idle_secs`: 0, or 5 s to 30 days.
    fn check_interest_idle(&self) -> Result<(), (&'static str, String)> {
        let v = self.interest_idle_secs;
        if v > 30 * 86_400 || (1..5).contains(&v) {
            return Err((
                "store.interest_idle_secs",
                format!("must be between 5 and 2592000 (30 days), or 0 to keep interests, got {v}"),
            ));
        }
        Ok(())
    }

    /// The `[store]` values of an Oakestra store serde cannot check.
    pub(super) fn check_oakestra(&self) -> Result<(), (&'static str, String)> {
        if let Some(b) = &self.broker {
            parse_broker(b).map_err(|e| ("store.broker", e))?;
        }
        if self.broker_port == 0 {
            return Err(("store.broker_port", "must be a port, 1 to 65535".into()));
        }
        if let Some(id) = &self.client_id {
            check_client_id(id).map_err(|e| ("store.client_id", e))?;
        }
        self.check_interest_idle()
    }

    /// The broker, `(host, port)`: `store.broker`, else the NodeEngine's
    /// `cluster_address` on `store.broker_port`. `None` when neither is
    /// known.
    pub fn oakestra_broker(&self, cluster_address: Option<&str>) -> Option<(String, u16)> {
        if let Some(b) = &self.broker {
            return parse_broker(b).ok();
        }
        let host = cluster_address?.trim();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        (!host.is_empty()).then(|| (host.to_owned(), self.broker_port))
    }
}

/// `HOST:PORT` or `[V6]:PORT`.
pub fn parse_broker(b: &str) -> Result<(String, u16), String> {
    let bad = || format!("{b:?} must be HOST:PORT, e.g. \"10.0.0.1:10003\"");
    let (host, port) = b.trim().rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', ' ']) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

pub use envmgr::oakestra::check_client_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_and_client_id() {
        assert_eq!(
            parse_broker("10.0.0.1:10003"),
            Ok(("10.0.0.1".into(), 10003))
        );
        assert_eq!(parse_broker("[fd00::1]:1883"), Ok(("fd00::1".into(), 1883)));
        assert_eq!(parse_broker("cm.local:1"), Ok(("cm.local".into(), 1)));
        for bad in ["10.0.0.1", ":10003", "h:0", "h:x", "tcp://h:1"] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
        assert!(check_client_id("6617a1b2c3").is_ok());
        for bad in ["", "a/b", "a+", "#", "a b"] {
            assert!(check_client_id(bad).is_err(), "{bad:?}");
        }
        let mut st = StoreSection {
            backend: Backend::Oakestra,
            ..StoreSection::default()
        };
        assert_eq!(st.oakestra_broker(None), None);
        assert_eq!(
            st.oakestra_broker(Some("10.0.0.9")),
            Some(("10.0.0.9".into(), 10003))
        );
        st.broker = Some("10.0.0.1:1883".into());
        assert_eq!(
            st.oakestra_broker(Some("10.0.0.9")),
            Some(("10.0.0.1".into(), 1883))
        );
        assert!(st.check_oakestra().is_ok());
        st.client_id = Some("a/b".into());
        assert_eq!(st.check_oakestra().map_err(|e| e.0), Err("store.client_id"));
        st.client_id = None;
        st.broker = Some("nope".into());
        assert_eq!(st.check_oakestra().map_err(|e| e.0), Err("store.broker"));
        st.broker = None;
        st.broker_port = 0;
        assert_eq!(
            st.check_oakestra().map_err(|e| e.0),
            Err("store.broker_port")
        );
    }
}
