//! Oakestra's NodeEngine, as far as a worker's NetManager sees it: the
//! HTTP calls it makes on the NetManager's unix socket (`/register`,
//! `/container/deploy`, `/container/undeploy`), with the bodies of
//! Oakestra's Go code.
//!
//! Each call returns the raw [`Response`], so tests can check refusals
//! (4xx with a message) as well as successes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::api::{self, Response};
use crate::node::{Node, NODEENGINE_SOCKET};

/// A test node's NodeEngine API socket (`oakestra.socket`; Oakestra's
/// default is `/etc/netmanager/netmanager.sock`).
pub fn socket_of(node: &Node) -> PathBuf {
    node.dir().join(NODEENGINE_SOCKET)
}

/// `POST /register {"client_id", "cluster_address"}`.
pub fn register(socket: &Path, client_id: &str, cluster_address: &str) -> Result<Response> {
    let body = json!({"client_id": client_id, "cluster_address": cluster_address});
    post(socket, "/register", &body)
}

/// `POST /container/deploy {"pid", "serviceName", "instanceNumber",
/// "portMappings"}`.
pub fn deploy(socket: &Path, pid: u32, job: &str, number: u32) -> Result<Response> {
    let body =
        json!({"pid": pid, "serviceName": job, "instanceNumber": number, "portMappings": ""});
    post(socket, "/container/deploy", &body)
}

/// `POST /container/undeploy {"serviceName", "instanceNumber"}`.
pub fn undeploy(socket: &Path, job: &str, number: u32) -> Result<Response> {
    let body = json!({"serviceName": job, "instanceNumber": number});
    post(socket, "/container/undeploy", &body)
}

/// One POST with a JSON body.
pub fn post(socket: &Path, path: &str, body: &Value) -> Result<Response> {
    api::request(socket, "POST", path, Some(&body.to_string())).with_context(|| {
        format!(
            "POST {path} {body} on the NodeEngine socket {}",
            socket.display()
        )
    })
}

/// What a successful `/container/deploy` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployReply {
    /// `serviceName`, echoed.
    pub service_name: String,
    /// `nsAddress`: the container's address in the worker's subnet.
    pub ns_address: Ipv4Addr,
    /// `nsAddressv6`, as sent.
    pub ns_address_v6: String,
}

/// [`deploy`], required to answer 200 with Oakestra's reply body.
pub fn deploy_ok(socket: &Path, pid: u32, job: &str, number: u32) -> Result<DeployReply> {
    let r = deploy(socket, pid, job, number)?;
    if r.status != 200 {
        bail!(
            "/container/deploy {job} {number}: HTTP {} {}",
            r.status,
            r.body.trim()
        );
    }
    let v = r.json()?;
    let ns = v["nsAddress"]
        .as_str()
        .ok_or_else(|| anyhow!("no nsAddress in the deploy reply {v}"))?;
    Ok(DeployReply {
        service_name: v["serviceName"].as_str().unwrap_or_default().to_owned(),
        ns_address: ns
            .parse()
            .with_context(|| format!("nsAddress {ns:?} in {v}"))?,
        ns_address_v6: v["nsAddressv6"].as_str().unwrap_or_default().to_owned(),
    })
}
