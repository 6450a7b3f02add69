//! The request side: JSON bodies and path parameters whose every failure
//! is an [`ApiError`] naming what to fix, so axum's own rejections never
//! reach a client as plain text.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use crate::model::{check_label, InstanceKey, ServiceName};

/// The largest request body accepted; larger ones get 413. Every request
/// body of this API is a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a request body may take to arrive once its headers have.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// The answer to a body over [`BODY_LIMIT`] (413).
pub(super) fn too_large() -> ApiError {
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

/// Accepts `application/json` and `application/*+json`; anything else is 415.
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

/// The path parameters as `T`, or a 400 naming the bad one.
async fn raw_params<S: Send + Sync, T: DeserializeOwned + Send>(
    parts: &mut Parts,
    state: &S,
) -> ApiResult<T> {
    axum::extract::Path::<T>::from_request_parts(parts, state)
        .await
        .map(|p| p.0)
        .map_err(|r| ApiError::invalid(format!("bad path parameter: {}", r.body_text())))
}

/// A path's `app`/`service`, or a 400 saying what a valid name is.
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
