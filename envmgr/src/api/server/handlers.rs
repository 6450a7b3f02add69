//! The handlers behind the routes: reads come from the manager's snapshot
//! (lock-free), writes go through the manager, and the dataplane answers
//! for itself through [`DataplaneView`].

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::dataplane::DataplaneView;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, InstancePath, NamePath, ServicePath};
use crate::kernel::Kernel;
use crate::manager::Manager;
use crate::model::{Affinity, Instance, Service};
use crate::requests::{AttachRequest, PeerRequest, RemoteInstanceRequest};

/// What every handler can reach.
pub(super) struct AppState<K: Kernel> {
    pub(super) mgr: Arc<Manager<K>>,
    pub(super) dp: Arc<dyn DataplaneView>,
}

impl<K: Kernel> Clone for AppState<K> {
    fn clone(&self) -> Self {
        Self {
            mgr: Arc::clone(&self.mgr),
            dp: Arc::clone(&self.dp),
        }
    }
}

/// A 201 with `v` as its body.
fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// A service as the API shows it, with `instances` (numbers or records).
fn service_json(svc: &Service, instances: Value) -> Value {
    json!({
        "app": svc.name.app,
        "service": svc.name.service,
        "rr_ip": svc.rr_ip,
        "closest_ip": svc.closest_ip,
        "affinity": svc.affinity,
        "instances": instances,
    })
}

/// The node, its table, store and dataplane at a glance.
pub(super) async fn status<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    let snap = s.mgr.snapshot();
    Json(json!({
        "node": snap.node,
        "table_version": snap.version,
        "services": snap.services.len(),
        "instances": snap.instances.len(),
        "local_instances": snap.instances.values().filter(|i| i.is_local()).count(),
        "peers": snap.peers.len(),
        "policy": {
            "isolate": snap.policy.isolate,
            "rules": snap.policy.allow.len(),
            "version": snap.policy.version,
        },
        "store": s.mgr.store_status(),
        "dataplane": s.dp.status(),
        "dns": s.dp.dns(),
    }))
}

/// Every service, with its instance numbers.
pub(super) async fn list_services<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
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

/// One service, with its instances.
pub(super) async fn get_service<K: Kernel>(
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

/// Every instance the node knows, local and remote.
pub(super) async fn list_instances<K: Kernel>(State(s): State<AppState<K>>) -> Json<Vec<Instance>> {
    Json(s.mgr.snapshot().instances.values().cloned().collect())
}

/// One instance.
pub(super) async fn get_instance<K: Kernel>(
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

/// Attaches a container (201).
pub(super) async fn attach<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<AttachRequest>,
) -> ApiResult<Response> {
    Ok(created(s.mgr.attach(req).await?))
}

/// Detaches a local instance by key.
pub(super) async fn detach<K: Kernel>(
    State(s): State<AppState<K>>,
    InstancePath(key): InstancePath,
) -> ApiResult<Json<Instance>> {
    Ok(Json(s.mgr.detach(&key).await?))
}

/// Which runtime-attached container `DELETE /v1/attachments` removes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContainerQuery {
    container_id: String,
    #[serde(default)]
    ifname: Option<String>,
}

/// Detaches what a runtime attached as `container_id` (and `ifname`,
/// `eth0` by default): CNI's DEL and CNM's Leave do not know the instance
/// number. 404 when there is none, which a runtime treats as done.
pub(super) async fn detach_container<K: Kernel>(
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
pub(super) async fn log_level<K: Kernel>(State(s): State<AppState<K>>) -> ApiResult<Json<Value>> {
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
pub(super) struct LogLevelRequest {
    level: String,
}

/// Replaces the log filter without a restart, e.g. `{"level":"debug"}`
/// or `{"level":"info,proxytun=trace"}`.
pub(super) async fn set_log_level<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<LogLevelRequest>,
) -> ApiResult<Json<Value>> {
    s.dp.set_log_level(&req.level).map_err(ApiError::invalid)?;
    let level = s.dp.log_level().unwrap_or(req.level);
    Ok(Json(json!({ "level": level })))
}

/// Registers a remote instance (201).
pub(super) async fn add_remote<K: Kernel>(
    State(s): State<AppState<K>>,
    ApiJson(req): ApiJson<RemoteInstanceRequest>,
) -> ApiResult<Response> {
    Ok(created(s.mgr.add_remote(req).await?))
}

/// Unregisters a remote instance.
pub(super) async fn remove_remote<K: Kernel>(
    State(s): State<AppState<K>>,
    InstancePath(key): InstancePath,
) -> ApiResult<Json<Instance>> {
    Ok(Json(s.mgr.remove_remote(&key).await?))
}

/// The registered peers, each with the liveness and round-trip time the
/// dataplane's keepalives measured for its endpoint (`alive` is null and
/// `rtt_us` absent until the dataplane has an opinion).
pub(super) async fn list_peers<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
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

/// Creates (201) or moves (200) a peer.
pub(super) async fn put_peer<K: Kernel>(
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

/// Removes a peer no remote instance runs on.
pub(super) async fn remove_peer<K: Kernel>(
    State(s): State<AppState<K>>,
    NamePath(name): NamePath,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.mgr.remove_peer(&name).await?)))
}

/// The dataplane's flow table and reply-address cache.
pub(super) async fn flows<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    Json(s.dp.flows().await)
}

/// Sets a service's client affinity (`{"mode": "client", "timeout_s":
/// 600}` or `{"mode": "none"}`); answers with the service. A bad body or
/// timeout is a 400, an unknown service a 404; neither changes anything.
pub(super) async fn put_affinity<K: Kernel>(
    State(s): State<AppState<K>>,
    ServicePath(name): ServicePath,
    ApiJson(affinity): ApiJson<Affinity>,
) -> ApiResult<Json<Value>> {
    let svc = s.mgr.set_affinity(&name, affinity).await?;
    let snap = s.mgr.snapshot();
    let instances: Vec<u32> = snap.instances_of(&name).map(|i| i.key.number).collect();
    Ok(Json(service_json(&svc, json!(instances))))
}

/// The dataplane's packet counters.
pub(super) async fn counters<K: Kernel>(State(s): State<AppState<K>>) -> Json<Value> {
    Json(s.dp.counters())
}
