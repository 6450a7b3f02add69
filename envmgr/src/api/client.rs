//! A tiny HTTP/1 client for the API socket, used by the CLI and the tests.
//!
//! One connection per request: the CLI makes one or two calls per run, and a
//! fresh connection keeps the client free of pooling state.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::UnixStream;

/// How long one request may take before the client gives up. Attaching
/// touches the kernel, so this is generous.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request could not be made or answered. An API error (a 4xx/5xx
/// with a JSON body) is *not* a `ClientError`: it is returned as
/// `Ok((status, body))` so the caller can show the server's message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("cannot connect to {}: {source}; is the daemon running? socket {}", socket.display(), socket.display())]
    NotRunning {
        /// The socket path tried.
        socket: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The socket exists but this user may not use it.
    #[error("permission denied on {}: run as root or as a member of the socket's group", socket.display())]
    PermissionDenied {
        /// The socket path tried.
        socket: PathBuf,
    },
    /// Any other connect failure.
    #[error("connecting to {}: {source}", socket.display())]
    Connect {
        /// The socket path tried.
        socket: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The HTTP exchange failed (the daemon closed the connection, …).
    #[error("talking to the daemon: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a bad path).
    #[error("building the request for {path}: {source}")]
    Request {
        /// The request path.
        path: String,
        /// Why.
        source: hyper::http::Error,
    },
    /// The request body could not be encoded.
    #[error("encoding the request body: {0}")]
    Encode(serde_json::Error),
    /// The daemon answered with something that is not JSON.
    #[error("the daemon answered {status} with a body that is not JSON: {body:?}")]
    NotJson {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The daemon did not answer in time.
    #[error("the daemon did not answer within {}s", TIMEOUT.as_secs())]
    Timeout,
}

/// A client for the API on one unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the socket at `socket`; connects on each request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`; returns the status and the JSON body (`null` if empty).
    pub async fn get(&self, path: &str) -> Result<(u16, Value), ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<(u16, Value), ClientError> {
        let bytes = serde_json::to_vec(body).map_err(ClientError::Encode)?;
        self.request(Method::POST, path, Some(("application/json", bytes)))
            .await
    }

    /// `PUT path` with `body` as JSON.
    pub async fn put(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<(u16, Value), ClientError> {
        let bytes = serde_json::to_vec(body).map_err(ClientError::Encode)?;
        self.request(Method::PUT, path, Some(("application/json", bytes)))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(u16, Value), ClientError> {
        self.request(Method::DELETE, path, None).await
    }

    /// Any request with a raw body and content type (an empty content type
    /// sends none): lets tests send what a well-behaved client never would
    /// (malformed JSON, wrong types, no Content-Type…).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Value), ClientError> {
        self.request(method, path, body).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Value), ClientError> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Value), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning {
                            socket: self.socket.clone(),
                            source,
                        }
                    }
                    io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                        socket: self.socket.clone(),
                    },
                    _ => ClientError::Connect {
                        socket: self.socket.clone(),
                        source,
                    },
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);

        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        let payload = match body {
            Some((content_type, bytes)) => {
                if !content_type.is_empty() {
                    builder = builder.header(CONTENT_TYPE, content_type);
                }
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = builder
            .body(Full::new(payload))
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        drop(sender);
        // The connection ends once the sender is gone; its result adds nothing.
        let _ = conn.await;

        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((status, Value::Null));
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok((status, v)),
            Err(_) => Err(ClientError::NotJson {
                status,
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            }),
        }
    }
}
