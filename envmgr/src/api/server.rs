//! The API server: axum routes over a `tokio::net::UnixListener`.
//!
//! Every response that is not a success is
//! `{"error":{"code":"…","message":"…"}}` with the status of
//! [`crate::Error::status`]. That holds for axum's own rejections as well:
//! request bodies go through [`ApiJson`] (which names the offending field),
//! path parameters through [`ServicePath`]/[`InstancePath`]/[`NamePath`]
//! (which validate names), unknown routes through a JSON fallback, and a
//! last middleware turns any remaining plain-text error (405, …) into JSON.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::kernel::Kernel;
use crate::manager::Manager;
use crate::model::{check_label, Instance, InstanceKey, Policy, Service, ServiceName};
use crate::requests::{AttachRequest, PeerRequest, RemoteInstanceRequest};
use crate::Error;

/// The largest request body accepted; larger ones get 413. Every request
/// body of this API is a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a request body may take to arrive once its headers have.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the API needs from the dataplane (implemented in the proxytun
/// crate). A trait so envmgr does not depend on the dataplane and the API
/// can be tested with a fake.
pub trait DataplaneView: Send + Sync + 'static {
    /// Device and path facts: tun name, mtu, tunnel address, flows active…
    fn status(&self) -> Value;
    /// Packet counters, e.g. `{"tun_rx":..,"drops":{"reason":n,..},..}`.
    fn counters(&self) -> Value;
    /// The flow table and the reply-address cache:
    /// `{"flows":[..],"replies":[..]}`. Async because the dataplane may
    /// have to ask its packet threads.
    fn flows(&self) -> BoxFuture<'static, Value>;
    /// Liveness and round-trip time of each peer endpoint, as measured by
    /// the tunnel keepalives: `[{"endpoint":"ip:port","alive":true,
    /// "rtt_us":123,"last_heard_ms":456,...}]`. Empty when not measured.
    fn peers(&self) -> Value {
        Value::Array(Vec::new())
    }
    /// The node's resolver: listen addresses, domain, upstreams and its
    /// counters; `null` when it does not run.
    fn dns(&self) -> Value {
        Value::Null
    }
    /// The log filter in force; `None` when it cannot change at runtime.
    fn log_level(&self) -> Option<String> {
        None
    }
    /// Replaces the log filter (a `tracing` filter such as `debug` or
    /// `info,proxytun=trace`); the error says what is wrong with it.
    fn set_log_level(&self, filter: &str) -> Result<(), String> {
        let _ = filter;
        Err("this daemon cannot change its log level at runtime".to_owned())
    }
}

/// An API error response: the status, a machine-readable code and a
/// message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short code for scripts, e.g. `invalid`, `not_found`.
    pub code: &'static str,
    /// What went wrong and what to fix.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, "api: {}", self.message);
        } else {
            tracing::debug!(status = %self.status, code = self.code, "api: {}", self.message);
        }
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body whose every failure is an [`ApiError`] naming what
/// to fix: missing or wrong `Content-Type` (415), body over
/// [`BODY_LIMIT`] (413), malformed JSON, unknown, missing or mistyped
/// fields (400, with the field's path).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        // A body announced larger than the limit is refused before a byte
        // of it is read, and one that never completes does not hold the
        // handler forever.
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
            return Err(too_large());
        }
        let read = Bytes::from_request(req, state);
        let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within {} s (is Content-Length right?)",
                        BODY_TIMEOUT.as_secs()
                    ),
                ))
            }
            Ok(read) => read.map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::invalid(format!("could not read the request body: {r}"))
                }
            })?,
        };
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                return Err(ApiError::invalid(
                    "the request body is empty: send a JSON object (see docs/api.md)",
                ))
            }
            Some(b'{') => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    "the request body must be a JSON object ({\"field\": value, ...})",
                ))
            }
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(format!(
                "invalid request body: {}",
                inner_message(&e)
            ))),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::invalid(format!(
                "malformed JSON in the request body: {}",
                inner_message(&e)
            ))),
            Err(other) => Err(ApiError::invalid(other.body_text())),
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body is larger than the limit of {BODY_LIMIT} bytes"),
    )
}

/// The serde message under axum's generic prefix, without the `.` that
/// serde_path_to_error writes for the top level.
fn inner_message(e: &dyn std::error::Error) -> String {
    let text = match e.source() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    };
    match text.strip_prefix(".: ") {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

fn check_json_content_type(headers: &HeaderMap) -> ApiResult<()> {
    let unsupported = |m: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            m,
        )
    };
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(unsupported(
            "missing Content-Type: send the body as JSON with `Content-Type: application/json`"
                .into(),
        ));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if ok {
        Ok(())
    } else {
        Err(unsupported(format!(
            "unsupported Content-Type {text:?}: send the body as JSON with `Content-Type: application/json`"
        )))
    }
}

/// Path parameters `{app}/{service}`, validated as DNS labels.
#[derive(Debug)]
pub struct ServicePath(pub ServiceName);

/// Path parameters `{app}/{service}/{n}`: names validated, `n` a number.
#[derive(Debug)]
pub struct InstancePath(pub InstanceKey);

/// Path parameter `{name}` of a peer node, validated as a DNS label.
#[derive(Debug)]
pub struct NamePath(pub String);

async fn raw_params<S: Send + Sync, T: DeserializeOwned + Send>(
    parts: &mut Parts,
    state: &S,
) -> ApiResult<T> {
    axum::extract::Path::<T>::from_request_parts(parts, state)
        .await
        .map(|p| p.0)
        .map_err(|r| ApiError::invalid(format!("bad path parameter: {}", r.body_text())))
}

fn service_name(app: &str, service: &str) -> ApiResult<ServiceName> {
    ServiceName::new(app, service).map_err(|e| ApiError::invalid(e.to_string()))
}

impl<S: Send + Sync> FromRequestParts<S> for ServicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (app, service): (String, String) = raw_params(parts, state).await?;
        Ok(Self(service_name(&app, &service)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for InstancePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (app, service, n): (String, String, String) = raw_params(parts, state).await?;
        let name = service_name(&app, &service)?;
        let number = n.parse::<u32>().map_err(|_| {
            ApiError::invalid(format!(
                "invalid instance number {n:?}: must be a whole number from 0 to {}",
                u32::MAX
            ))
        })?;
        Ok(Self(InstanceKey { name, number }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for NamePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let name: String = raw_params(parts, state).await?;
        check_label("node", &name).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(Self(name))
    }
}

/// What every handler can reach.
struct AppState<K: Kernel> {
    mgr: Arc<Manager<K>>,
    dp: Arc<dyn DataplaneView>,
}

impl<K: Kernel> Clone for AppState<K> {
    fn clone(&self) -> Self {
        Self {
            mgr: Arc::clone(&self.mgr),
            dp: Arc::clone(&self.dp),
        }
    }
}

/// The API's routes, with JSON errors everywhere. Public so the daemon (or
/// a test) can serve it on a listener of its own; [`serve`] is the usual way.
pub fn router<K: Kernel>(mgr: Arc<Manager<K>>, dp: Arc<dyn DataplaneView>) -> Router {
    let state = AppState { mgr, dp };
    let routes = Router::new()
        .route("/v1/status", get(status::<K>))
        .route("/v1/services", get(list_services::<K>))
        .route("/v1/services/{app}/{service}", get(get_service::<K>))
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
    serve_on(listener, socket, mgr, dp, shutdown).await
}

/// Binds the API socket (see [`serve`] for the rules), so the caller knows
/// the API accepts connections before it tells a supervisor it is ready.
///
/// The socket is the node's control: whoever can connect can attach
/// containers into any namespace. So it is `0600` (root only), or `0660`
/// owned by `group` when one is configured for operators.
pub fn bind(socket: &Path, group: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    prepare_socket_path(socket)?;
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    restrict_socket(socket, group)?;
    tracing::info!(socket = %socket.display(), ?group, "management API listening");
    Ok(listener)
}

/// Gives a freshly bound control socket its access rule: `0600` for the
/// owner alone, or `0660` with group `group`. Connecting needs write
/// permission, so nobody else can talk to it.
pub(crate) fn restrict_socket(socket: &Path, group: Option<u32>) -> anyhow::Result<()> {
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(socket, None, Some(gid))
                .with_context(|| format!("chgrp {gid} {}", socket.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", socket.display()))
}

/// Serves the API on a listener from [`bind`] until `shutdown` resolves,
/// then removes the socket file.
pub async fn serve_on<K: Kernel>(
    listener: tokio::net::UnixListener,
    socket: &Path,
    mgr: Arc<Manager<K>>,
    dp: Arc<dyn DataplaneView>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let result = axum::serve(listener, router(mgr, dp))
        .with_graceful_shutdown(shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(socket) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(socket = %socket.display(), "removing the API socket: {e}");
        }
    }
    result.with_context(|| format!("serving the API on {}", socket.display()))
}

/// Makes `socket` bindable: creates its directory, removes a stale socket
/// file, refuses a live one or a non-socket file.
pub(crate) fn prepare_socket_path(socket: &Path) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                anyhow::bail!(
                    "another process is serving on {}; stop it or pick another socket path",
                    socket.display()
                );
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale socket {}", socket.display()))
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", socket.display())),
    }
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
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
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

fn no_such_route(method: &Method, path: &str) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {method} {path} (the endpoints are listed in docs/api.md)"
    ))
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    no_such_route(&method, uri.path())
}

fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

fn service_json(svc: &Service, instances: Value) -> Value {
    json!({
        "app": svc.name.app,
        "service": svc.name.service,
        "rr_ip": svc.rr_ip,
        "closest_ip": svc.closest_ip,
        "instances": instances,
    })
}

async fn status<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    let snap = s.mgr.snapshot();
    Json(json!({
        "node": snap.node,
        "table_version": snap.version,
        "services": snap.services.len(),
        "instances": snap.instances.len(),
        "local_instances": snap.instances.values().filter(|i| i.is_local()).count(),
        "peers": snap.peers.len(),
        "policy": {"isolate": snap.policy.isolate, "rules": snap.policy.allow.len()},
        "store": s.mgr.store_status(),
        "dataplane": s.dp.status(),
        "dns": s.dp.dns(),
    }))
}

async fn list_services<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    let snap = s.mgr.snapshot();
    let list: Vec<Value> = snap
        .services
        .values()
        .map(|svc| {
            let numbers: Vec<u32> = snap.instances_of(&svc.name).map(|i| i.key.number).collect();
            service_json(svc, json!(numbers))
        })
        .collect();
    Json(Value::Array(list))
}

async fn get_service<K: Kernel>(
    State(s): State<AppState<K>>,
    ServicePath(name): ServicePath,
) -> ApiResult<Json<Value>> {
    let snap = s.mgr.snapshot();
    let svc = snap
        .services
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no service {name}")))?;
    let instances: Vec<&Instance> = snap.instances_of(&name).collect();
    Ok(Json(service_json(svc, json!(instances))))
}

async fn list_instances<K: Kernel>(State(s): State<AppState<K>>) -> Json<Vec<Instance>> {
    Json(s.mgr.snapshot().instances.values().cloned().collect())
}

async fn get_instance<K: Kernel>(
    State(s): State<AppState<K>>,
    InstancePath(key): InstancePath,
) -> ApiResult<Json<Instance>> {
    s.mgr
        .snapshot()
        .instances
        .get(&key)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no instance {key}")))
}

async fn attach<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<AttachRequest>,
) -> ApiResult<Response> {
    Ok(created(s.mgr.attach(req).await?))
}

async fn detach<K: Kernel>(
    State(s): State<AppState<K>>,
    InstancePath(key): InstancePath,
) -> ApiResult<Json<Instance>> {
    Ok(Json(s.mgr.detach(&key).await?))
}

/// Which runtime-attached container `DELETE /v1/attachments` removes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerQuery {
    container_id: String,
    #[serde(default)]
    ifname: Option<String>,
}

/// Detaches what a runtime attached as `container_id` (and `ifname`,
/// `eth0` by default): CNI's DEL and CNM's Leave do not know the instance
/// number. 404 when there is none, which a runtime treats as done.
async fn detach_container<K: Kernel>(
    State(s): State<AppState<K>>,
    query: Result<Query<ContainerQuery>, QueryRejection>,
) -> ApiResult<Json<Instance>> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(format!(
            "{}; write DELETE /v1/attachments?container_id=ID[&ifname=NAME]",
            e.body_text()
        ))
    })?;
    let ifname = q.ifname.as_deref().unwrap_or("eth0");
    let inst = s
        .mgr
        .find_container(&q.container_id, ifname)
        .await
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no container {} with interface {ifname} is attached here",
                q.container_id
            ))
        })?;
    Ok(Json(s.mgr.detach(&inst.key).await?))
}

/// The log filter in force.
async fn log_level<K: Kernel>(State(s): State<AppState<K>>) -> ApiResult<Json<Value>> {
    match s.dp.log_level() {
        Some(level) => Ok(Json(json!({ "level": level }))),
        None => Err(ApiError::not_found(
            "this daemon cannot change its log level at runtime".to_owned(),
        )),
    }
}

/// The body of `PUT /v1/log`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelRequest {
    level: String,
}

/// Replaces the log filter without a restart, e.g. `{"level":"debug"}`
/// or `{"level":"info,proxytun=trace"}`.
async fn set_log_level<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<LogLevelRequest>,
) -> ApiResult<Json<Value>> {
    s.dp.set_log_level(&req.level).map_err(ApiError::invalid)?;
    let level = s.dp.log_level().unwrap_or(req.level);
    Ok(Json(json!({ "level": level })))
}

async fn add_remote<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<RemoteInstanceRequest>,
) -> ApiResult<Response> {
    Ok(created(s.mgr.add_remote(req).await?))
}

async fn remove_remote<K: Kernel>(
    State(s): State<AppState<K>>,
    InstancePath(key): InstancePath,
) -> ApiResult<Json<Instance>> {
    Ok(Json(s.mgr.remove_remote(&key).await?))
}

/// The registered peers, each with the liveness and round-trip time the
/// dataplane's keepalives measured for its endpoint (`alive` is null and
/// `rtt_us` absent until the dataplane has an opinion).
async fn list_peers<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    let snap = s.mgr.snapshot();
    let health = s.dp.peers();
    let by_endpoint: std::collections::HashMap<String, &Value> = health
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| Some((h.get("endpoint")?.as_str()?.to_owned(), h)))
                .collect()
        })
        .unwrap_or_default();
    let peers: Vec<Value> = snap
        .peers
        .values()
        .map(|p| {
            let mut v = json!(p);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("alive".into(), Value::Null);
                if let Some(Value::Object(h)) = by_endpoint.get(&p.endpoint.to_string()).copied() {
                    for (k, val) in h {
                        if k != "endpoint" {
                            obj.insert(k.clone(), val.clone());
                        }
                    }
                }
            }
            v
        })
        .collect();
    Json(Value::Array(peers))
}

async fn put_peer<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<PeerRequest>,
) -> ApiResult<Response> {
    let (peer, was_created) = s.mgr.put_peer(req).await?;
    if was_created {
        Ok(created(peer))
    } else {
        Ok(Json(peer).into_response())
    }
}

async fn remove_peer<K: Kernel>(
    State(s): State<AppState<K>>,
    NamePath(name): NamePath,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.mgr.remove_peer(&name).await?)))
}

async fn flows<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    Json(s.dp.flows().await)
}

async fn get_policy<K: Kernel>(State(s): State<AppState<K>>) -> Json<Policy> {
    Json(s.mgr.policy())
}

/// Replaces the whole policy; a refused one (400 naming the field) changes
/// nothing.
async fn put_policy<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(policy): ApiJson<Policy>,
) -> ApiResult<Json<Policy>> {
    Ok(Json(s.mgr.put_policy(policy).await?))
}

async fn counters<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    Json(s.dp.counters())
}

#[cfg(test)]
mod policy_tests;
