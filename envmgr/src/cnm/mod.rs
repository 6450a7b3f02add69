//! Docker's network plugin protocol (libnetwork's CNM remote driver), so
//! that `docker network create -d proxytun` attaches containers through
//! the same manager as the API and CNI.
//!
//! A Docker network is one service (`-o app= -o service=`); `Join` attaches
//! the container's sandbox (its netns) as an instance of it with the
//! endpoint id as the container id, `Leave` detaches it. The protocol is
//! HTTP/1.1 POSTs with JSON bodies on a unix socket; see `docs/cnm.md`.
//!
//! - [`protocol`]: the wire types, with Docker's field names.
//! - [`networks`]: the networks Docker created, persisted.
//! - [`handlers`]: what each method does ([`Driver::handle`]);
//!   `options`: the rules for a network's `-o` options.
//! - [`ports`]: `docker run -p` bindings as published ports.
//! - [`ifname`]: the interface name of a Join, when a container joins
//!   several proxytun networks.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::kernel::Kernel;
use crate::manager::Manager;

pub mod handlers;
pub mod ifname;
pub mod networks;
mod options;
pub mod ports;
pub mod protocol;

pub use handlers::{CnmError, Driver, Reply};

/// The largest request body accepted; larger ones get 413 and `{"Err"}`.
/// Docker's requests are a few hundred bytes to a few KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Serves the driver protocol on the unix socket `socket` until `shutdown`
/// resolves. Networks Docker created are kept in
/// `<state dir>/cnm-networks.json`, so they survive a restart.
///
/// The socket is prepared like the API's (a stale file is replaced, a live
/// one refused), made `0660`, and removed on shutdown.
pub async fn serve<K: Kernel>(
    socket: PathBuf,
    mgr: Arc<Manager<K>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (listener, driver) = match bind(&socket, mgr) {
        Ok(bound) => bound,
        Err(e) => {
            // The daemon learns of this only when it stops; say it now.
            tracing::error!("the Docker network driver (CNM) cannot start: {e:#}");
            return Err(e);
        }
    };
    serve_on(listener, &socket, driver, shutdown).await
}

/// Opens the networks file and binds the plugin socket: everything that
/// can fail at start, so a caller can fail before it reports ready.
pub fn bind<K: Kernel>(
    socket: &Path,
    mgr: Arc<Manager<K>>,
) -> anyhow::Result<(tokio::net::UnixListener, Arc<Driver<K>>)> {
    let driver = Driver::open(mgr).context("loading the CNM networks")?;
    crate::api::server::prepare_socket_path(socket)?;
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding the CNM plugin socket {}", socket.display()))?;
    // Only dockerd (root) talks to a network plugin.
    crate::api::server::restrict_socket(socket, None)?;
    tracing::info!(
        socket = %socket.display(),
        networks = driver.networks().all().len(),
        "Docker network driver (CNM) bound"
    );
    Ok((listener, Arc::new(driver)))
}

/// Serves on a listener from [`bind`] until `shutdown` resolves, then
/// removes the socket file.
pub async fn serve_on<K: Kernel>(
    listener: tokio::net::UnixListener,
    socket: &Path,
    driver: Arc<Driver<K>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new().fallback(dispatch::<K>).with_state(driver);
    // The same head limits as the API socket (the defaults).
    crate::api::listen::serve_http(listener, app, Default::default(), "cnm", shutdown).await;
    crate::api::server::remove_socket(socket, "CNM");
    Ok(())
}

/// Every request comes here: the path names the method.
async fn dispatch<K: Kernel>(State(driver): State<Arc<Driver<K>>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let reply = if req.method() != Method::POST {
        Reply::from(CnmError::MethodNotAllowed(format!(
            "{} {path}: the plugin protocol uses POST only",
            req.method()
        )))
    } else {
        match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
            Ok(body) => driver.handle(&path, &body).await,
            Err(_) => Reply::from(CnmError::TooLarge(format!(
                "the request body is larger than {BODY_LIMIT} bytes (or could not be read)"
            ))),
        }
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(CONTENT_TYPE, protocol::CONTENT_TYPE)],
        Body::from(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
