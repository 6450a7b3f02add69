//! The one error type of the control plane, with the HTTP status it maps to.

/// What went wrong with a control-plane request. The message always says
/// what to fix; a request that fails changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or a value is out of range (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The named object does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with existing state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but refers to something unusable, e.g. a netns path that
    /// is not a network namespace or an unknown peer (HTTP 422).
    #[error("{0}")]
    Unprocessable(String),
    /// An address pool is used up (HTTP 507).
    #[error("{0}")]
    Exhausted(String),
    /// The kernel refused a change (HTTP 500); any partial change was undone.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The state could not be written (HTTP 500); the change was undone.
    #[error("store: {0}")]
    Store(String),
    /// The cluster store (etcd) cannot be reached right now (HTTP 503);
    /// nothing was changed and the request may be retried.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// The HTTP status this error is reported with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::Unprocessable(_) => 422,
            Error::Exhausted(_) => 507,
            Error::Kernel(_) | Error::Store(_) => 500,
            Error::Unavailable(_) => 503,
        }
    }

    /// A short machine-readable code for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Unprocessable(_) => "unprocessable",
            Error::Exhausted(_) => "exhausted",
            Error::Kernel(_) => "kernel",
            Error::Store(_) => "store",
            Error::Unavailable(_) => "unavailable",
        }
    }
}

/// A stale policy version is a clash with the state in force.
impl From<crate::model::StaleVersion> for Error {
    fn from(e: crate::model::StaleVersion) -> Self {
        Error::Conflict(e.to_string())
    }
}

/// Results of control-plane operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
