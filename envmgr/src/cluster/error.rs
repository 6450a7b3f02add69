//! What goes wrong talking to etcd, and how it maps onto the manager's
//! errors (an outage is [`crate::Error::Unavailable`]: 503).

/// What went wrong talking to etcd; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The settings cannot work (`store.*`).
    #[error("{0}")]
    Config(String),
    /// etcd did not answer in time; nothing was changed.
    #[error("etcd unavailable: {0}; check store.endpoints and that etcd is running")]
    Unavailable(String),
    /// etcd refused this node's TLS (its certificate, the CA, the scheme):
    /// waiting will not help; the message names the `store.*` key to fix.
    #[error("etcd refused the TLS connection: {0}")]
    Refused(String),
    /// No node index is free in these ranges.
    #[error("{0}")]
    Exhausted(String),
    /// The store holds something that contradicts this node.
    #[error("{0}")]
    Conflict(String),
    /// A record in the store is not what the schema says.
    #[error("{0}; fix or delete the key with etcdctl")]
    Corrupt(String),
}

impl From<ClusterError> for crate::Error {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Config(m) => crate::Error::Invalid(m),
            ClusterError::Unavailable(_) | ClusterError::Refused(_) => {
                crate::Error::Unavailable(e.to_string())
            }
            ClusterError::Exhausted(m) => crate::Error::Exhausted(m),
            ClusterError::Conflict(m) => crate::Error::Conflict(m),
            ClusterError::Corrupt(_) => crate::Error::Store(e.to_string()),
        }
    }
}

/// An etcd client error as an outage: nothing was changed.
pub(super) fn unavailable(e: etcd_client::Error) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}
