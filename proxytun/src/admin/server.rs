//! The admin HTTP server: three read-only routes over TCP.
//!
//! - `GET /metrics`: OpenMetrics text, read from the sources at each scrape;
//! - `GET /live`: `200 ok` while the process serves HTTP;
//! - `GET /ready`: `200 ready` while [`Readiness`] is set, `503` with the
//!   reason otherwise.
//!
//! Any other path is 404, any other method 405 (`HEAD` is allowed where
//! `GET` is). No request changes any state, and no request body is read.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections at once (more wait in
//! the kernel's accept queue), and each connection lives at most
//! [`CONNECTION_LIFETIME`], so a client that holds a keep-alive connection
//! forever cannot keep a slot; a client that trickles its request head is
//! closed sooner, after `admin.header_timeout_ms`, and a head over
//! [`envmgr::api::MAX_HEAD`] gets 431 (`envmgr::api::serve_http`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::metrics::{self, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use super::sources::Readiness;
use crate::shell::io_loop::ControlSender;

/// Connections served at once; a scraper and a probe or two need far fewer.
pub const MAX_CONNECTIONS: usize = 32;

/// The longest one connection is kept, idle or not: a scrape takes
/// milliseconds, and a scraper reconnects when its keep-alive connection
/// is closed.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Debug, Clone)]
pub(super) struct AppState {
    pub(super) registry: Arc<Registry>,
    pub(super) ready: Readiness,
    /// Whether the packet threads run, for `/live`.
    pub(super) ctrl: ControlSender,
}

/// The routes; see the module docs.
pub(super) fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics_handler(State(st): State<AppState>) -> Response {
    match metrics::render(&st.registry) {
        Ok(text) => ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

async fn live(State(st): State<AppState>) -> Response {
    if st.ctrl.threads_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "dataplane thread stopped: restart the daemon (see its log)\n",
        )
            .into_response()
    }
}

async fn ready(State(st): State<AppState>) -> Response {
    if st.ready.get() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the node is starting or shutting down\n",
        )
            .into_response()
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: the admin listener serves /metrics, /live and /ready\n",
    )
}

/// A TCP listener that hands out at most [`MAX_CONNECTIONS`] connections at
/// once, each ending after [`CONNECTION_LIFETIME`].
#[derive(Debug)]
pub(super) struct Bounded {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl Bounded {
    /// Wraps a bound listener.
    pub(super) fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Limited;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Limited, SocketAddr) {
        // The semaphore is never closed, so this waits for a free slot.
        let permit = loop {
            if let Ok(p) = self.slots.clone().acquire_owned().await {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    return (
                        Limited {
                            io,
                            _permit: permit,
                            deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        },
                        addr,
                    )
                }
                // Out of file descriptors and the like: wait a little
                // rather than spin.
                Err(e) => {
                    tracing::debug!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One admin connection: holds its slot, and fails its reads and writes
/// once its lifetime is over, which makes the HTTP server close it.
#[derive(Debug)]
pub(super) struct Limited {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
}

impl Limited {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "admin connection lifetime is over")
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
