//! Oakestra's NodeEngine, as its NetManager sees it: the three calls it
//! makes (`/register`, `/container/deploy`, `/container/undeploy`) as raw
//! HTTP/1.1 over the NetManager's unix socket, each returning the status
//! and body as they came, so a test can check refusals as well as answers
//! (and send broken bodies through [`NodeEngine::post`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::api::{request, Response};
use crate::node::{Node, NODEENGINE_SOCKET};

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

    /// The NodeEngine socket of a test node (`oakestra.socket` in its
    /// directory; Oakestra's default is `/etc/netmanager/netmanager.sock`).
    pub fn of(node: &Node) -> Self {
        Self::new(node.dir().join(NODEENGINE_SOCKET))
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `POST path` with `body` sent as it is (it may be broken on purpose).
    pub fn post(&self, path: &str, body: &str) -> Result<Response> {
        request(&self.socket, "POST", path, Some(body)).with_context(|| {
            format!(
                "POST {path} {body} on the NodeEngine socket {}",
                self.socket.display()
            )
        })
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

    /// [`Self::deploy`] with no port mappings, required to answer 200 with
    /// Oakestra's reply body.
    pub fn deploy_ok(&self, pid: u32, job: &str, instance: u32) -> Result<DeployReply> {
        let r = self.deploy(pid, job, instance, "")?;
        if r.status != 200 {
            bail!(
                "/container/deploy {job} {instance}: HTTP {} {}",
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

    /// `POST /container/undeploy` with the body the NodeEngine sends
    /// (`DetachNetworkFromTask`: its deploy struct with `pid` -1).
    pub fn undeploy(&self, service_name: &str, instance: u32) -> Result<Response> {
        let body = json!({
            "pid": -1,
            "serviceName": service_name,
            "instanceNumber": instance,
            "portMappings": "",
        });
        self.post("/container/undeploy", &body.to_string())
    }
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
