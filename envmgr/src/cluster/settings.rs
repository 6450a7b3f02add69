//! How a node reaches etcd (`[store]`): endpoints, prefix, lease TTL,
//! request timeout and TLS files, and the client options built from them.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::error::ClusterError;
use super::keys;

/// How to reach etcd and how long the node's lease lives (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port` URLs (`store.endpoints`).
    pub endpoints: Vec<String>,
    /// The key prefix (`store.prefix`, default `/proxytun`).
    pub prefix: String,
    /// The node lease's TTL (`store.lease_ttl_secs`): how long a dead
    /// node's instances stay registered.
    pub lease_ttl: Duration,
    /// TLS files, for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    /// The longest a single store request may take before the caller gets
    /// [`crate::Error::Unavailable`].
    pub request_timeout: Duration,
    /// This node's public tunnel key (per-node keys), published in its
    /// node record so other nodes can check its handshakes.
    pub public_key: Option<String>,
    /// How long a service with no instance on any node keeps its record
    /// and ServiceIPs (`store.empty_service_grace_secs`); `None`: for ever.
    pub empty_service_grace: Option<Duration>,
    /// An interest (a service this node uses but does not serve) that no
    /// flow or name lookup used for this long leaves the node's view
    /// (`store.interest_idle_secs`); `None`: never.
    pub interest_idle: Option<Duration>,
}

impl EtcdSettings {
    /// The documented defaults for these endpoints: prefix `/proxytun`,
    /// lease TTL 10 s, request timeout 3 s, no TLS, empty services removed
    /// after 10 minutes.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: keys::DEFAULT_PREFIX.to_owned(),
            lease_ttl: Duration::from_secs(10),
            tls: None,
            request_timeout: Duration::from_secs(3),
            public_key: None,
            empty_service_grace: Some(Duration::from_secs(600)),
            interest_idle: Some(Duration::from_secs(600)),
        }
    }
}

/// TLS files for etcd (`store.ca_file`, `store.cert_file`, `store.key_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed etcd's server certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM), when etcd asks for one.
    pub cert: Option<PathBuf>,
    /// The client key (PEM), together with `cert`.
    pub key: Option<PathBuf>,
}

/// The client's connect options: the request timeout as connect timeout,
/// and TLS when files are given (then every endpoint must be `https://`).
pub(super) fn connect_options(settings: &EtcdSettings) -> Result<ConnectOptions, ClusterError> {
    let mut options = ConnectOptions::new().with_connect_timeout(settings.request_timeout);
    if let Some(tls) = &settings.tls {
        let read = |key: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                ClusterError::Config(format!("{key}: cannot read {}: {e}", p.display()))
            })
        };
        let mut t = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("store.ca_file", &tls.ca)?));
        match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => {
                t = t.identity(Identity::from_pem(
                    read("store.cert_file", c)?,
                    read("store.key_file", k)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ClusterError::Config(
                    "store.cert_file and store.key_file: give both or neither".to_owned(),
                ))
            }
        }
        if settings
            .endpoints
            .iter()
            .any(|e| !e.starts_with("https://"))
        {
            return Err(ClusterError::Config(
                "store.endpoints: TLS files are set, so every endpoint must be https://".to_owned(),
            ));
        }
        options = options.with_tls(t);
    }
    Ok(options)
}
