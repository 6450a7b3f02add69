//! `/v1/clients`: external clients this node is the gateway of
//! (docs/join.md). `POST` registers one and answers with what its
//! `proxytun join` needs; `DELETE /v1/clients/{name}` removes it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiResult;
use super::extract::{ApiJson, NamePath};
use super::handlers::AppState;
use crate::kernel::Kernel;
use crate::model::Client;
use crate::requests::ClientRequest;

/// A client with what `proxytun join` needs to reach this node.
fn client_json<K: Kernel>(s: &AppState<K>, c: &Client) -> Value {
    let settings = s.mgr.settings();
    let mut v = json!(c);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "join".into(),
            json!({
                "resolver": settings.plan.gateway().v4,
                "services": settings.plan.services,
                "services6": settings.plan.services6,
                "tunnel_port": settings.tunnel_port,
            }),
        );
    }
    v
}

/// Every client, by name.
pub(super) async fn list_clients<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    let snap = s.mgr.snapshot();
    let all: Vec<Value> = snap.clients.values().map(|c| client_json(&s, c)).collect();
    Json(Value::Array(all))
}

/// Registers a client (201 with its address and join parameters).
pub(super) async fn add_client<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<ClientRequest>,
) -> ApiResult<Response> {
    let c = s.mgr.add_client(req).await?;
    Ok((StatusCode::CREATED, Json(client_json(&s, &c))).into_response())
}

/// Removes a client (404 when there is none of that name).
pub(super) async fn remove_client<K: Kernel>(
    State(s): State<AppState<K>>,
    NamePath(name): NamePath,
) -> ApiResult<Json<Client>> {
    Ok(Json(s.mgr.remove_client(&name).await?))
}
