//! Why a NodeEngine request was refused, with the HTTP status it gets.
//! Every refusal changes nothing and its message says what to fix.

/// A refused NodeEngine request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeEngineError {
    /// The body is not the JSON the route takes, a name or port mapping is
    /// malformed, or the node is not registered yet (400, as Oakestra).
    #[error("{0}")]
    BadRequest(String),
    /// No such route (404).
    #[error("{0}")]
    NotFound(String),
    /// Not a POST (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is larger than [`super::BODY_LIMIT`] (413).
    #[error("{0}")]
    TooLarge(String),
    /// A route Oakestra has that proxytun does not implement: unikernels (501).
    #[error("{0}")]
    NotImplemented(String),
    /// Registered, but the node's manager is not open yet (still joining
    /// the cluster); retry (503).
    #[error("{0}")]
    NotReady(String),
    /// The manager refused the change, with its own status and message.
    #[error("{message}")]
    Manager {
        /// The manager error's HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Saving the registration failed (500).
    #[error("{0}")]
    Internal(String),
}

impl NodeEngineError {
    /// The HTTP status the error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::TooLarge(_) => 413,
            Self::NotImplemented(_) => 501,
            Self::NotReady(_) => 503,
            Self::Manager { status, .. } => *status,
            Self::Internal(_) => 500,
        }
    }
}

impl From<crate::Error> for NodeEngineError {
    fn from(e: crate::Error) -> Self {
        Self::Manager {
            status: e.status(),
            message: e.to_string(),
        }
    }
}
