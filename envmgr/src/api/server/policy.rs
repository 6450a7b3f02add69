//! `GET` and `PUT /v1/policy`: the policy with its version, as a `version`
//! field and an `ETag` header; a `PUT` based on a stale version (`If-Match`
//! or the body's `version`) is refused with 409 and changes nothing.

use axum::extract::State;
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::handlers::AppState;
use crate::kernel::Kernel;
use crate::model::Policy;
use crate::requests::PolicyRequest;

/// The policy as an answer: the JSON (with `version`) and its `ETag`.
fn answer(policy: Policy) -> Response {
    let tag = HeaderValue::from_str(&format!("\"{}\"", policy.version))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    ([(ETAG, tag)], Json(policy)).into_response()
}

/// The version an `If-Match` header names: `"N"` (the `ETag` of a `GET`)
/// or `N`; `*` (or no header) asks for no check. A weak tag, a list or
/// anything else is a 400 naming the header.
pub(super) fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::invalid(format!(
            "If-Match: {why}; send the ETag of GET /v1/policy, e.g. If-Match: \"3\" (or no If-Match for no check)"
        ))
    };
    let text = v.to_str().map_err(|_| bad("not ASCII text"))?.trim();
    if text == "*" {
        return Ok(None);
    }
    if text.starts_with("W/") {
        return Err(bad("a weak entity tag never matches"));
    }
    if text.contains(',') {
        return Err(bad("give one entity tag, not a list"));
    }
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    inner
        .parse::<u64>()
        .map(Some)
        .map_err(|_| bad(&format!("{text:?} is not a policy version")))
}

/// The isolation policy in force, with its version (`ETag` too).
pub(super) async fn get_policy<K: Kernel>(State(s): State<AppState<K>>) -> Response {
    answer(s.mgr.policy())
}

/// Replaces the whole policy. A refused one (400 naming the field) or one
/// based on a stale version (409, the message gives the current version)
/// changes nothing. The version the change is based on comes from
/// `If-Match` or the body's `version` (both: they must agree); with
/// neither, the write is accepted whatever changed since (last writer wins).
pub(super) async fn put_policy<K: Kernel>(
    State(s): State<AppState<K>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PolicyRequest>,
) -> ApiResult<Response> {
    let header = if_match(&headers)?;
    let (policy, body) = req.into_parts();
    let read = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid(format!(
                "If-Match says version {h} but the body's version is {b}; send one of them"
            )))
        }
        (h, b) => h.or(b),
    };
    Ok(answer(s.mgr.put_policy(policy, read).await?))
}
