//! Oakestra's NodeEngine, as its NetManager sees it: the three calls it
//! makes (`/register`, `/container/deploy`, `/container/undeploy`) as raw
//! HTTP/1.1 over the NetManager's unix socket, each returning the status
//! and body as they came, so a test can check refusals as well as answers
//! (and send broken bodies through [`NodeEngine::post`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use crate::api::{request, Response};

/// A NodeEngine client of the NetManager socket at one path.
#[derive(Debug, Clone)]
pub struct NodeEngine {
    socket: PathBuf,
}

impl NodeEngine {
    /// A client of the NetManager socket `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `POST path` with `body` sent as it is (it may be broken on purpose).
    pub fn post(&self, path: &str, body: &str) -> Result<Response> {
        request(&self.socket, "POST", path, Some(body))
    }

    /// `POST /register {"client_id", "cluster_address"}`, as the NodeEngine
    /// sends it at start (older NodeEngines send no `cluster_address`).
    pub fn register(&self, client_id: &str, cluster_address: Option<&str>) -> Result<Response> {
        let mut body = json!({ "client_id": client_id });
        if let Some(a) = cluster_address {
            body["cluster_address"] = json!(a);
        }
        self.post("/register", &body.to_string())
    }

    /// `POST /container/deploy`: attach the netns of task `pid` as instance
    /// `instance` of job `service_name` (`app.appns.service.servicens`);
    /// `port_mappings` is Oakestra's string (`"8080:80;53/udp"`, `""` none).
    pub fn deploy(
        &self,
        pid: u32,
        service_name: &str,
        instance: u32,
        port_mappings: &str,
    ) -> Result<Response> {
        let body = json!({
            "pid": pid,
            "serviceName": service_name,
            "instanceNumber": instance,
            "portMappings": port_mappings,
        });
        self.post("/container/deploy", &body.to_string())
    }

    /// `POST /container/undeploy {"serviceName", "instanceNumber"}`.
    pub fn undeploy(&self, service_name: &str, instance: u32) -> Result<Response> {
        let body = json!({ "serviceName": service_name, "instanceNumber": instance });
        self.post("/container/undeploy", &body.to_string())
    }
}
