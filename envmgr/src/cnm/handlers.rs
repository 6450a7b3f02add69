//! What each protocol method does, independent of HTTP: [`Driver::handle`]
//! takes the method name and the request body and returns the status and
//! JSON to answer, so every rule is unit-tested without a socket.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::networks::{Network, Networks, NetworksError};
use super::options::{check_null_ipam, network_from_options, OPTIONS_HELP};
use super::protocol::{
    ActivateResponse, AllocateNetworkRequest, AllocateNetworkResponse, CapabilitiesResponse,
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, DiscoveryNotification,
    EndpointInfoResponse, EndpointRequest, ErrorResponse, JoinRequest, JoinResponse,
    NetworkRequest, ProgramExternalConnectivityRequest, GENERIC_OPTIONS,
};
use crate::kernel::Kernel;
use crate::manager::Manager;
use crate::model::{Instance, Placement};
use crate::requests::AttachRequest;

pub use super::options::DEFAULT_IFNAME;

/// A failed call, with the HTTP status it is answered with. The body is
/// always `{"Err": message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CnmError {
    /// The body is not the JSON this method takes, or an id is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such protocol method (404: libnetwork then treats an optional
    /// method as not implemented).
    #[error("{0}")]
    UnknownMethod(String),
    /// Not a POST (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is larger than [`super::BODY_LIMIT`] (413).
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed, but cannot be done; the message says why and what to
    /// change (500, as libnetwork's own plugins answer).
    #[error("{0}")]
    Failed(String),
}

impl CnmError {
    /// The HTTP status the error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            CnmError::BadRequest(_) => 400,
            CnmError::UnknownMethod(_) => 404,
            CnmError::MethodNotAllowed(_) => 405,
            CnmError::TooLarge(_) => 413,
            CnmError::Failed(_) => 500,
        }
    }

    /// The `{"Err": ...}` body.
    pub fn body(&self) -> Value {
        serde_json::to_value(ErrorResponse {
            err: self.to_string(),
        })
        .unwrap_or_else(|_| json!({"Err": "internal: cannot encode the error"}))
    }
}

impl From<crate::Error> for CnmError {
    fn from(e: crate::Error) -> Self {
        CnmError::Failed(e.to_string())
    }
}

impl From<super::ports::BindingError> for CnmError {
    fn from(e: super::ports::BindingError) -> Self {
        match e {
            super::ports::BindingError::Malformed(m) => CnmError::BadRequest(m),
            super::ports::BindingError::Unsupported(m) => CnmError::Failed(m),
        }
    }
}

impl From<NetworksError> for CnmError {
    fn from(e: NetworksError) -> Self {
        CnmError::Failed(e.to_string())
    }
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Reply {
    fn ok(body: impl Serialize) -> Result<Self, CnmError> {
        let body = serde_json::to_value(body)
            .map_err(|e| CnmError::Failed(format!("internal: encoding the answer: {e}")))?;
        Ok(Reply { status: 200, body })
    }

    fn empty() -> Result<Self, CnmError> {
        Ok(Reply {
            status: 200,
            body: json!({}),
        })
    }
}

impl From<CnmError> for Reply {
    fn from(e: CnmError) -> Self {
        Reply {
            status: e.status(),
            body: e.body(),
        }
    }
}

/// The driver: Docker's networks (persisted) over the node's manager.
#[derive(Debug)]
pub struct Driver<K: Kernel> {
    mgr: Arc<Manager<K>>,
    networks: Networks,
}

impl<K: Kernel> Driver<K> {
    /// Opens the networks file in the manager's state directory.
    pub fn open(mgr: Arc<Manager<K>>) -> Result<Self, NetworksError> {
        let networks = Networks::open(&mgr.settings().state_dir)?;
        Ok(Self { mgr, networks })
    }

    /// The persisted networks.
    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    /// Answers one call: `method` is the URL path (`/NetworkDriver.Join`),
    /// `body` the raw request body. Never panics on any input.
    pub async fn handle(&self, method: &str, body: &[u8]) -> Reply {
        let result = match method {
            "/Plugin.Activate" => Reply::ok(ActivateResponse {
                implements: vec!["NetworkDriver".to_owned()],
            }),
            "/NetworkDriver.GetCapabilities" => Reply::ok(CapabilitiesResponse {
                scope: "local".to_owned(),
                connectivity_scope: "local".to_owned(),
            }),
            "/NetworkDriver.CreateNetwork" => match parse(body) {
                Ok(req) => self.create_network(req),
                Err(e) => Err(e),
            },
            "/NetworkDriver.DeleteNetwork" => match parse(body) {
                Ok(req) => self.delete_network(req),
                Err(e) => Err(e),
            },
            "/NetworkDriver.AllocateNetwork" => match parse(body) {
                Ok(req) => allocate_network(req),
                Err(e) => Err(e),
            },
            "/NetworkDriver.FreeNetwork" => match parse::<NetworkRequest>(body) {
                Ok(req) => check_id("NetworkID", &req.network_id).and_then(|()| Reply::empty()),
                Err(e) => Err(e),
            },
            "/NetworkDriver.CreateEndpoint" => match parse(body) {
                Ok(req) => self.create_endpoint(req),
                Err(e) => Err(e),
            },
            "/NetworkDriver.EndpointOperInfo" => match parse(body) {
                Ok(req) => self.endpoint_info(req).await,
                Err(e) => Err(e),
            },
            "/NetworkDriver.DeleteEndpoint" => match parse(body) {
                Ok(req) => self.release("DeleteEndpoint", req).await,
                Err(e) => Err(e),
            },
            "/NetworkDriver.Join" => match parse(body) {
                Ok(req) => self.join(req).await,
                Err(e) => Err(e),
            },
            "/NetworkDriver.Leave" => match parse(body) {
                Ok(req) => self.release("Leave", req).await,
                Err(e) => Err(e),
            },
            "/NetworkDriver.ProgramExternalConnectivity" => match parse(body) {
                Ok(req) => self.program_external(req).await,
                Err(e) => Err(e),
            },
            "/NetworkDriver.RevokeExternalConnectivity" => match parse::<EndpointRequest>(body) {
                Ok(req) => self.revoke_external(req).await,
                Err(e) => Err(e),
            },
            "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => {
                match parse::<DiscoveryNotification>(body) {
                    Ok(n) => {
                        // Peers come from proxytun's own config and store,
                        // not from Docker's node discovery.
                        tracing::debug!(method, kind = n.discovery_type, "cnm: discovery notification ignored");
                        Reply::empty()
                    }
                    Err(e) => Err(e),
                }
            }
            other => Err(CnmError::UnknownMethod(format!(
                "unknown method {other:?}: this plugin implements Plugin.Activate and the NetworkDriver methods"
            ))),
        };
        match result {
            Ok(reply) => {
                tracing::debug!(method, "cnm: ok");
                reply
            }
            Err(e) => {
                tracing::warn!(method, status = e.status(), "cnm: {e}");
                e.into()
            }
        }
    }

    fn create_network(&self, req: CreateNetworkRequest) -> Result<Reply, CnmError> {
        check_id("NetworkID", &req.network_id)?;
        check_null_ipam(req.ipv4_data.as_deref(), req.ipv6_data.as_deref())
            .map_err(CnmError::Failed)?;
        let generic = req
            .options
            .as_ref()
            .and_then(|o| o.get(GENERIC_OPTIONS))
            .cloned()
            .unwrap_or(Value::Null);
        let opts = match generic {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            other => {
                return Err(CnmError::BadRequest(format!(
                    "Options[{GENERIC_OPTIONS:?}] must be an object of strings, got {other}"
                )))
            }
        };
        let mut flat = std::collections::BTreeMap::new();
        for (k, v) in opts {
            match v {
                Value::String(s) => {
                    flat.insert(k, s);
                }
                other => {
                    return Err(CnmError::BadRequest(format!(
                        "option -o {k} must be a string, got {other}"
                    )))
                }
            }
        }
        let net = self.network_from_options(&flat)?;
        if let Some(old) = self.networks.get(&req.network_id) {
            if old == net {
                return Reply::empty();
            }
            return Err(CnmError::Failed(format!(
                "network {} already exists as {}/{}; delete it first",
                req.network_id, old.app, old.service
            )));
        }
        self.networks.insert(&req.network_id, net.clone())?;
        tracing::info!(network = %req.network_id, app = %net.app, service = %net.service, "cnm: network created");
        Reply::empty()
    }

    /// Turns the `-o` options into a [`Network`], refusing anything that is
    /// missing, malformed or unknown with the option to fix.
    fn network_from_options(
        &self,
        opts: &std::collections::BTreeMap<String, String>,
    ) -> Result<Network, CnmError> {
        network_from_options(opts, |ip| {
            let range = self.mgr.snapshot().node.service_range;
            if range.contains(&ip) {
                Ok(())
            } else {
                Err(format!("must be in the ServiceIP range {range}"))
            }
        })
        .map_err(CnmError::Failed)
    }

    fn delete_network(&self, req: NetworkRequest) -> Result<Reply, CnmError> {
        check_id("NetworkID", &req.network_id)?;
        match self.networks.remove(&req.network_id)? {
            Some(net) => {
                tracing::info!(network = %req.network_id, app = %net.app, service = %net.service, "cnm: network deleted")
            }
            None => tracing::debug!(network = %req.network_id, "cnm: delete of an unknown network"),
        }
        Reply::empty()
    }

    fn network(&self, id: &str) -> Result<Network, CnmError> {
        self.networks.get(id).ok_or_else(|| {
            CnmError::Failed(format!(
                "unknown network {id}: it was not created through the proxytun driver on this node, \
                 or {} lost it; recreate it with docker network create -d proxytun {OPTIONS_HELP} --ipam-driver null NAME",
                self.networks.path().display()
            ))
        })
    }

    fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<Reply, CnmError> {
        check_ids(&req.network_id, &req.endpoint_id)?;
        let net = self.network(&req.network_id)?;
        if let Some(iface) = &req.interface {
            let given: Vec<&str> = [iface.address.as_str(), iface.address_ipv6.as_str()]
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect();
            if !given.is_empty() {
                return Err(CnmError::Failed(format!(
                    "Docker's IPAM gave this endpoint {}, but proxytun allocates container addresses itself; \
                     recreate the network with --ipam-driver null and do not pass --ip/--ip6",
                    given.join(" and ")
                )));
            }
            if !iface.mac_address.is_empty() {
                tracing::warn!(endpoint = %req.endpoint_id, mac = %iface.mac_address,
                    "cnm: the requested MAC address is ignored; the kernel picks the interface's MAC");
            }
        }
        tracing::debug!(endpoint = %req.endpoint_id, app = %net.app, service = %net.service, "cnm: endpoint created");
        Reply::ok(CreateEndpointResponse::default())
    }

    async fn join(&self, req: JoinRequest) -> Result<Reply, CnmError> {
        check_ids(&req.network_id, &req.endpoint_id)?;
        let net = self.network(&req.network_id)?;
        if req.sandbox_key.is_empty() {
            return Err(CnmError::BadRequest(
                "SandboxKey is empty: Join needs the container's network namespace path".to_owned(),
            ));
        }
        let sandbox = PathBuf::from(&req.sandbox_key);
        let ifname = self.join_ifname(&req.endpoint_id, &sandbox, &net.ifname);
        let inst = self
            .mgr
            .attach(AttachRequest {
                app: net.app.clone(),
                service: net.service.clone(),
                instance: None,
                netns: Some(sandbox),
                pid: None,
                ifname: Some(ifname),
                service_ip: net.service_ip,
                instance_ip: None,
                container_id: Some(req.endpoint_id.clone()),
                ports: Vec::new(),
            })
            .await?;
        tracing::info!(endpoint = %req.endpoint_id, instance = %inst.key, sandbox = %req.sandbox_key, "cnm: joined");
        Reply::ok(JoinResponse {
            disable_gateway_service: true,
            ..JoinResponse::default()
        })
    }

    /// The interface name for a Join of `eid` into `sandbox`: the one a
    /// repeated Join already has, else the network's, counted on when
    /// another proxytun network of the container has it
    /// ([`super::ifname`]).
    fn join_ifname(&self, eid: &str, sandbox: &Path, wanted: &str) -> String {
        let snap = self.mgr.snapshot();
        let mut taken = BTreeSet::new();
        for inst in snap.instances.values() {
            if let Placement::Local {
                netns,
                ifname,
                container_id,
                ..
            } = &inst.placement
            {
                if container_id.as_deref() == Some(eid) {
                    return ifname.clone();
                }
                if netns == sandbox {
                    taken.insert(ifname.clone());
                }
            }
        }
        super::ifname::free_ifname(wanted, &taken)
    }

    /// The local instances endpoint `eid` is attached as (one, normally).
    fn instances_of_endpoint(&self, eid: &str) -> Vec<Instance> {
        self.mgr
            .snapshot()
            .instances
            .values()
            .filter(|i| i.placement.runtime_attachment().map(|(c, _)| c) == Some(eid))
            .cloned()
            .collect()
    }

    async fn endpoint_info(&self, req: EndpointRequest) -> Result<Reply, CnmError> {
        check_ids(&req.network_id, &req.endpoint_id)?;
        let net = self.networks.get(&req.network_id);
        // By endpoint id alone: its interface may not be the network's
        // (a container on several proxytun networks).
        let inst = self
            .instances_of_endpoint(&req.endpoint_id)
            .into_iter()
            .next();
        let mut value = Map::new();
        match (inst, net) {
            (Some(inst), _) => {
                let snap = self.mgr.snapshot();
                value.insert("joined".into(), json!(true));
                value.insert("app".into(), json!(inst.key.name.app));
                value.insert("service".into(), json!(inst.key.name.service));
                value.insert("instance".into(), json!(inst.key.to_string()));
                value.insert("ns_addr".into(), json!(inst.ns_addr.v4.to_string()));
                value.insert("ns_addr6".into(), json!(inst.ns_addr.v6.to_string()));
                value.insert("instance_ip".into(), json!(inst.instance_ip.v4.to_string()));
                value.insert(
                    "instance_ip6".into(),
                    json!(inst.instance_ip.v6.to_string()),
                );
                if let Some(svc) = snap.services.get(&inst.key.name) {
                    value.insert("service_ip".into(), json!(svc.rr_ip.v4.to_string()));
                    value.insert("service_ip6".into(), json!(svc.rr_ip.v6.to_string()));
                }
                if let Placement::Local {
                    ifname, host_veth, ..
                } = &inst.placement
                {
                    value.insert("ifname".into(), json!(ifname));
                    value.insert("host_veth".into(), json!(host_veth));
                }
            }
            (None, Some(net)) => {
                value.insert("joined".into(), json!(false));
                value.insert("app".into(), json!(net.app));
                value.insert("service".into(), json!(net.service));
            }
            (None, None) => {
                self.network(&req.network_id)?;
            }
        }
        Reply::ok(EndpointInfoResponse { value })
    }

    /// `docker run -p`: publishes the bindings to the joined endpoint's
    /// instance (Docker calls this after `Join`).
    async fn program_external(
        &self,
        req: ProgramExternalConnectivityRequest,
    ) -> Result<Reply, CnmError> {
        check_ids(&req.network_id, &req.endpoint_id)?;
        let ports = super::ports::port_map(req.options.as_ref())?;
        let joined = self.instances_of_endpoint(&req.endpoint_id);
        if joined.is_empty() && !ports.is_empty() {
            return Err(CnmError::Failed(format!(
                "endpoint {} has not joined: ports are published after Join",
                req.endpoint_id
            )));
        }
        for inst in joined {
            self.mgr.set_ports(&inst.key, ports.clone()).await?;
        }
        Reply::empty()
    }

    /// Takes the endpoint's published ports back (before `Leave`).
    async fn revoke_external(&self, req: EndpointRequest) -> Result<Reply, CnmError> {
        check_ids(&req.network_id, &req.endpoint_id)?;
        for inst in self.instances_of_endpoint(&req.endpoint_id) {
            match self.mgr.set_ports(&inst.key, Vec::new()).await {
                Ok(_) | Err(crate::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Reply::empty()
    }

    /// `Leave` and `DeleteEndpoint`: detaches whatever the endpoint is
    /// attached as. Nothing attached is success (a repeated Leave, or a
    /// DeleteEndpoint after its Leave).
    async fn release(&self, method: &str, req: EndpointRequest) -> Result<Reply, CnmError> {
        check_ids(&req.network_id, &req.endpoint_id)?;
        for inst in self.instances_of_endpoint(&req.endpoint_id) {
            match self.mgr.detach(&inst.key).await {
                Ok(_) => {
                    tracing::info!(method, endpoint = %req.endpoint_id, instance = %inst.key, "cnm: detached")
                }
                Err(crate::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Reply::empty()
    }
}

/// `AllocateNetwork` happens on a swarm manager only. The driver is
/// local-scope, so Docker does not send it; if a swarm does, the options
/// are checked like `CreateNetwork`'s so a mistake shows up at once.
fn allocate_network(req: AllocateNetworkRequest) -> Result<Reply, CnmError> {
    check_id("NetworkID", &req.network_id)?;
    check_null_ipam(req.ipv4_data.as_deref(), req.ipv6_data.as_deref())
        .map_err(CnmError::Failed)?;
    network_from_options(&req.options.unwrap_or_default(), |_| Ok(())).map_err(CnmError::Failed)?;
    Reply::ok(AllocateNetworkResponse::default())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CnmError> {
    serde_json::from_slice(body).map_err(|e| {
        CnmError::BadRequest(format!(
            "the body is not the JSON this method takes: {e} (body of {} bytes)",
            body.len()
        ))
    })
}

fn check_id(what: &'static str, id: &str) -> Result<(), CnmError> {
    crate::model::check_runtime_id(what, id).map_err(|e| CnmError::BadRequest(e.to_string()))
}

fn check_ids(network_id: &str, endpoint_id: &str) -> Result<(), CnmError> {
    check_id("NetworkID", network_id)?;
    check_id("EndpointID", endpoint_id)
}
