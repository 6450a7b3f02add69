//! Serving HTTP/1 with bounds on the request head, for every listener of
//! the daemon (the API and CNM sockets, the admin port).
//!
//! axum's own `serve` leaves hyper's head limits off (no timer, so no
//! header read timeout, and a ~400 KiB buffer), so a client could hold a
//! connection forever by trickling a request head (a slowloris) or make
//! the server buffer a huge one. Here each connection gets hyper's
//! `header_read_timeout` (the connection is closed when a full head has
//! not arrived in time, also between keep-alive requests) and a head
//! size cap (a larger head is answered `431 Request Header Fields Too
//! Large` by hyper, and the connection is closed). Body limits stay
//! where they are (the routes' own). The read buffer keeps hyper's
//! default size (~400 KiB, which also ends a head that never completes
//! with a 431): a smaller one would make the server close with a refused
//! body's bytes still unread, and the client see a reset instead of the
//! 413.

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// How long a client may take to send a whole request head, by default.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers) accepted. Every
/// request of ours has a head of a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// The bounds on a request head that a listener enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// A connection that has not sent a full head within this is closed.
    pub timeout: Duration,
    /// A head larger than this gets 431 and the connection is closed.
    pub max_size: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            timeout: HEADER_TIMEOUT,
            max_size: MAX_HEAD,
        }
    }
}

impl HeadLimits {
    /// The default size cap with the header read timeout `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::default()
        }
    }
}

/// Serves `app` on `listener` over HTTP/1 with `limits` until `shutdown`
/// resolves; then stops accepting and waits for the open connections to
/// finish their requests (an idle or half-sent one ends at once or within
/// the header timeout). `what` names the listener in the logs.
pub async fn serve_http<L>(
    mut listener: L,
    app: Router,
    limits: HeadLimits,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    L::Addr: Debug,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_header_size(limits.max_size);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let conn =
            builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A header timeout, a 431 or a client gone: the connection
            // ends, which is all there is to do about it.
            if let Err(e) = conn.await {
                tracing::debug!(listener = what, peer = ?addr, "connection ended: {e}");
            }
        });
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Everything the server sends until it closes (bounded by 10 s).
    async fn read_all(s: &mut UnixStream) -> String {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn half_heads_are_closed_and_huge_heads_get_431() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let app = Router::new().route("/", get(|| async { "hi" }));
        let limits = HeadLimits::with_timeout(Duration::from_millis(300));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, app, limits, "test", async {
            let _ = stopped.await;
        }));

        // Half a head, then nothing: closed without an answer.
        let mut slow = UnixStream::connect(&path).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        assert_eq!(read_all(&mut slow).await, "", "closed, no answer");

        // A 64 KiB header: 431 and closed.
        let mut big = UnixStream::connect(&path).await.expect("connect");
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        // The server may close before it has read everything: a failed
        // write is fine, the answer is what counts.
        let _ = big.write_all(head.as_bytes()).await;
        let answer = read_all(&mut big).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

        // A head just under the cap, and a normal request, still work.
        for pad in [0, MAX_HEAD - 200] {
            let mut ok = UnixStream::connect(&path).await.expect("connect");
            let head = format!(
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(pad)
            );
            ok.write_all(head.as_bytes()).await.expect("write");
            let answer = read_all(&mut ok).await;
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("hi"),
                "{answer:?}"
            );
        }
        let _ = stop.send(());
        server.await.expect("join");
    }
}
