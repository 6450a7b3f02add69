//! The API Oakestra's NodeEngine calls on its NetManager, so an unmodified
//! NodeEngine drives proxytun (docs/oakestra.md).
//!
//! HTTP/1 POSTs with JSON bodies on a unix socket
//! (`/etc/netmanager/netmanager.sock` by default): `/register` records the
//! worker's identity, `/container/deploy` attaches a task's network
//! namespace as an instance of the job's service, `/container/undeploy`
//! (and `/docker/undeploy`) detaches it. The listener starts before the
//! node's manager exists (with the oakestra backend the manager opens only
//! after `/register`); the daemon hands it over with
//! [`NodeEngine::set_manager`].
//!
//! - [`wire`]: the bodies, with the Go structs' field names; `portMappings`.
//! - [`handlers`]: what each route does ([`NodeEngine::handle`]).
//! - [`error`]: refusals and their statuses.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::api::HeadLimits;
use crate::kernel::Kernel;

pub mod error;
pub mod handlers;
pub mod wire;

pub use error::NodeEngineError;
pub use handlers::{NodeEngine, Reply, NOT_REGISTERED};

/// Where the NodeEngine looks for its NetManager.
pub const DEFAULT_SOCKET: &str = "/etc/netmanager/netmanager.sock";

/// The largest request body accepted (413 beyond). The NodeEngine's
/// bodies are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Binds the NodeEngine socket as the API's is bound: creates its
/// directory when missing, replaces a stale socket file, refuses a live one, and makes it
/// `0600` (the NodeEngine runs as root; whoever can connect can attach any
/// process's namespace).
pub fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    crate::api::server::prepare_socket_path(socket)?;
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding the NodeEngine socket {}", socket.display()))?;
    crate::api::server::restrict_socket(socket, None)?;
    tracing::info!(socket = %socket.display(), "NetManager API for the Oakestra NodeEngine listening");
    Ok(listener)
}

/// Serves `engine` on a listener from [`bind`] with `limits` until
/// `shutdown` resolves, then removes the socket file.
pub async fn serve_on<K: Kernel>(
    listener: tokio::net::UnixListener,
    socket: &Path,
    engine: Arc<NodeEngine<K>>,
    limits: HeadLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new().fallback(dispatch::<K>).with_state(engine);
    crate::api::listen::serve_http(listener, app, limits, "nodeengine", shutdown).await;
    crate::api::server::remove_socket(socket, "NodeEngine");
}

/// Every request comes here; [`NodeEngine::handle`] routes it.
async fn dispatch<K: Kernel>(State(engine): State<Arc<NodeEngine<K>>>, req: Request) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let reply = match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
        Ok(body) => engine.handle(&method, &path, &body).await,
        Err(_) => Reply::from(NodeEngineError::TooLarge(format!(
            "the request body is larger than {BODY_LIMIT} bytes (or could not be read)"
        ))),
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply.content_type {
        Some(ct) => (status, [(CONTENT_TYPE, ct)], Body::from(reply.body)).into_response(),
        None => (status, Body::from(reply.body)).into_response(),
    }
}

#[cfg(test)]
mod tests;
