//! The API server: axum routes over a `tokio::net::UnixListener`.
//!
//! Every response that is not a success is
//! `{"error":{"code":"…","message":"…"}}` with the status of
//! [`crate::Error::status`]. That holds for axum's own rejections as well:
//! request bodies go through [`ApiJson`] (which names the offending field),
//! path parameters through [`ServicePath`]/[`InstancePath`]/[`NamePath`]
//! (which validate names), unknown routes through a JSON fallback, and a
//! last middleware turns any remaining plain-text error (405, …) into JSON.

//!
//! One file per side: `extract.rs` (bodies and path parameters),
//! `error.rs` (the error answer), `handlers.rs` (what each route does),
//! `policy.rs` (the policy's routes, with its version and `If-Match`),
//! `dataplane.rs` (the dataplane's view) and `socket.rs` (the socket file).
//! This file puts them together: the routes, the last-resort JSON errors,
//! and serving.

mod clients;
mod dataplane;
mod error;
mod extract;
mod handlers;
mod nodes;
mod policy;
mod socket;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;

use super::listen::{serve_http, HeadLimits};
use crate::kernel::Kernel;
use crate::manager::Manager;
use handlers::*;
use policy::{get_policy, put_policy};

pub use dataplane::DataplaneView;
pub use error::ApiError;
pub use extract::{ApiJson, InstancePath, NamePath, ServicePath, BODY_LIMIT, BODY_TIMEOUT};
pub use socket::bind;
pub(crate) use socket::{prepare_socket_path, remove_socket, restrict_socket};

/// The API's routes, with JSON errors everywhere. Public so the daemon (or
/// a test) can serve it on a listener of its own; [`serve`] is the usual way.
pub fn router<K: Kernel>(mgr: Arc<Manager<K>>, dp: Arc<dyn DataplaneView>) -> Router {
    let state = AppState { mgr, dp };
    let routes = Router::new()
        .route("/v1/status", get(status::<K>))
        .route("/v1/services", get(list_services::<K>))
        .route("/v1/services/{app}/{service}", get(get_service::<K>))
        .route(
            "/v1/services/{app}/{service}/affinity",
            axum::routing::put(put_affinity::<K>),
        )
        .route("/v1/instances", get(list_instances::<K>))
        .route("/v1/instances/{app}/{service}/{n}", get(get_instance::<K>))
        .route(
            "/v1/attachments",
            axum::routing::post(attach::<K>).delete(detach_container::<K>),
        )
        .route("/v1/log", get(log_level).put(set_log_level))
        .route("/v1/attachments/{app}/{service}/{n}", delete(detach::<K>))
        .route("/v1/remote-instances", axum::routing::post(add_remote::<K>))
        .route(
            "/v1/remote-instances/{app}/{service}/{n}",
            delete(remove_remote::<K>),
        )
        .route("/v1/peers", get(list_peers::<K>).post(put_peer::<K>))
        .route("/v1/peers/{name}", delete(remove_peer::<K>))
        .route("/v1/nodes/{name}", delete(nodes::remove_node::<K>))
        .route(
            "/v1/clients",
            get(clients::list_clients::<K>).post(clients::add_client::<K>),
        )
        .route("/v1/clients/{name}", delete(clients::remove_client::<K>))
        .route("/v1/flows", get(flows::<K>))
        .route("/v1/policy", get(get_policy::<K>).put(put_policy::<K>))
        .route("/v1/counters", get(counters::<K>))
        .fallback(unknown_route)
        .with_state(state);
    // The error mapping wraps the whole router (not each route) so it sees
    // the `Allow` header axum adds to 405 answers.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Serves the API on the unix socket `socket` until `shutdown` resolves.
///
/// A stale socket file (left by a crashed daemon) is removed; a live one
/// (another daemon answers) or a non-socket file at that path is an error.
/// The socket is made `0600` so only root can change the node (see
/// [`bind`] for a group), and is removed again on shutdown.
pub async fn serve<K: Kernel>(
    socket: &Path,
    mgr: Arc<Manager<K>>,
    dp: Arc<dyn DataplaneView>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(socket, None)?;
    serve_on(listener, socket, mgr, dp, HeadLimits::default(), shutdown).await
}

/// Serves the API on a listener from [`bind`] until `shutdown` resolves,
/// then removes the socket file. A connection that does not send a whole
/// request head within `limits.timeout` is closed, a head over
/// `limits.max_size` gets 431 ([`serve_http`]).
pub async fn serve_on<K: Kernel>(
    listener: tokio::net::UnixListener,
    socket: &Path,
    mgr: Arc<Manager<K>>,
    dp: Arc<dyn DataplaneView>,
    limits: HeadLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_http(listener, router(mgr, dp), limits, "api", shutdown).await;
    remove_socket(socket, "API");
    Ok(())
}

/// Turns every error response that is not JSON yet (axum's 405, a 404 from
/// somewhere, …) into the API's JSON error shape.
async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let allow = resp.headers().get(ALLOW).cloned();
    let (_, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let err = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = allow
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            ApiError::new(
                status,
                "method_not_allowed",
                format!("method {method} is not allowed on {path}; use {allowed}"),
            )
        }
        StatusCode::NOT_FOUND => no_such_route(&method, &path),
        StatusCode::PAYLOAD_TOO_LARGE => extract::too_large(),
        _ => {
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            };
            let code = if status.is_server_error() {
                "internal"
            } else {
                "invalid"
            };
            ApiError::new(status, code, message)
        }
    };
    let mut out = err.into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(ALLOW, allow);
    }
    out
}

/// The 404 of an endpoint that does not exist.
fn no_such_route(method: &Method, path: &str) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {method} {path} (the endpoints are listed in docs/api.md)"
    ))
}

/// The router's fallback: every unknown path is a JSON 404.
async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    no_such_route(&method, uri.path())
}

#[cfg(test)]
mod policy_tests;
