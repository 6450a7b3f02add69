//! The wire types of Docker's remote network driver protocol, with exactly
//! the JSON field names libnetwork uses (`drivers/remote/api/api.go`).
//!
//! Requests are read leniently (unknown fields are ignored, `null` maps are
//! empty) because they come from whatever Docker version runs on the node;
//! what we answer is exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The media type of every plugin answer (Docker's plugin API, v1).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The key under which Docker passes the `-o key=value` driver options of
/// `docker network create` in `CreateNetwork`'s `Options`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// The key of the port mappings (`docker run -p`) in
/// `ProgramExternalConnectivity`'s `Options`.
pub const PORT_MAP_OPTION: &str = "com.docker.network.portmap";

/// `/Plugin.Activate`'s answer: which plugin interfaces we implement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    /// `["NetworkDriver"]`.
    pub implements: Vec<String>,
}

/// `GetCapabilities`' answer: where the driver's state and connectivity live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesResponse {
    /// `local`: each Docker engine keeps its own networks.
    pub scope: String,
    /// `local` as well: Docker must not treat the network as a swarm one.
    pub connectivity_scope: String,
}

/// One address pool Docker's IPAM driver handed out for a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    /// The IPAM address space (`null` for the null IPAM driver).
    pub address_space: Option<String>,
    /// The pool in CIDR notation; `0.0.0.0/0` / `::/0` from the null driver.
    pub pool: Option<String>,
    /// The gateway Docker reserved, in CIDR notation; absent from the null driver.
    pub gateway: Option<String>,
    /// Addresses the user reserved (`--aux-address`).
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

/// `CreateNetwork`: a `docker network create -d proxytun ...`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CreateNetworkRequest {
    /// Docker's id of the network (64 hex digits).
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Free-form options; the user's `-o` are under [`GENERIC_OPTIONS`].
    #[serde(rename = "Options")]
    pub options: Option<Map<String, Value>>,
    /// The IPv4 pools of Docker's IPAM.
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    /// The IPv6 pools of Docker's IPAM.
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// `AllocateNetwork` (swarm managers only): options are plain strings here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AllocateNetworkRequest {
    /// Docker's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The driver options (`-o`), flat.
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
    /// The IPv4 pools of Docker's IPAM.
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    /// The IPv6 pools of Docker's IPAM.
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// `AllocateNetwork`'s answer: options to pass on to every node's `CreateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocateNetworkResponse {
    /// Extra options for the nodes; we need none.
    pub options: BTreeMap<String, String>,
}

/// `DeleteNetwork` and `FreeNetwork`: just the network's id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct NetworkRequest {
    /// Docker's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// The interface addresses Docker's IPAM chose for an endpoint, or that the
/// driver chose (answer). Empty strings mean "none".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    /// IPv4 address in CIDR notation.
    pub address: String,
    /// IPv6 address in CIDR notation.
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    /// MAC address, e.g. `6e:75:32:60:44:c9`.
    pub mac_address: String,
}

/// `CreateEndpoint`: an endpoint of a network, before any container joins.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CreateEndpointRequest {
    /// The network the endpoint belongs to.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's id of the endpoint (64 hex digits).
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// What Docker's IPAM chose; empty with `--ipam-driver null`.
    #[serde(rename = "Interface")]
    pub interface: Option<EndpointInterface>,
    /// Endpoint options (exposed ports, `--network-opt`s).
    #[serde(rename = "Options")]
    pub options: Option<Map<String, Value>>,
}

/// `CreateEndpoint`'s answer. `Interface` stays absent: our addresses are
/// allocated at `Join`, and libnetwork refuses an answer that sets one when
/// its IPAM already did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateEndpointResponse {
    /// Addresses the driver chose; always `None` here.
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// `DeleteEndpoint`, `EndpointOperInfo`, `Leave` and
/// `RevokeExternalConnectivity`: a network and an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct EndpointRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `EndpointOperInfo`'s answer: free-form facts `docker inspect` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoResponse {
    /// What we know of the endpoint: its instance and addresses.
    pub value: Map<String, Value>,
}

/// `Join`: a container's sandbox (network namespace) takes the endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct JoinRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The sandbox's network namespace file, e.g. `/var/run/docker/netns/1a2b3c4d5e6f`.
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    /// Join options.
    #[serde(rename = "Options")]
    pub options: Option<Map<String, Value>>,
}

/// An interface the driver created for libnetwork to move into the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// Its name in the host namespace.
    pub src_name: String,
    /// The prefix of its name inside the sandbox.
    pub dst_prefix: String,
}

/// A route libnetwork adds inside the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    /// Destination in CIDR notation.
    pub destination: String,
    /// 0: via `NextHop`; 1: connected.
    pub route_type: i32,
    /// The next hop, for `RouteType` 0.
    pub next_hop: String,
}

/// `Join`'s answer. We send only `DisableGatewayService: true`: the daemon
/// has already created and configured the interface (addresses, default
/// routes) inside the sandbox, so libnetwork has nothing to move
/// (`InterfaceName` absent), no gateway to program, and must not add a
/// `docker_gwbridge` interface either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    /// Always `None`: nothing for libnetwork to move.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    /// Always empty: the default route is already in place.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Always empty, as `Gateway`.
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    /// Always empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
    /// True: the container reaches the outside through proxytun's routes,
    /// not through Docker's gateway bridge.
    pub disable_gateway_service: bool,
}

/// `ProgramExternalConnectivity`: publish ports (`docker run -p`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ProgramExternalConnectivityRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Port mappings under [`PORT_MAP_OPTION`], exposed ports, ….
    #[serde(rename = "Options")]
    pub options: Option<Map<String, Value>>,
}

/// `DiscoverNew` / `DiscoverDelete`: swarm node discovery notifications.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DiscoveryNotification {
    /// 1 = node discovery.
    #[serde(rename = "DiscoveryType")]
    pub discovery_type: i64,
    /// Type-specific data, e.g. `{"Address": "...", "self": true}`.
    #[serde(rename = "DiscoveryData")]
    pub discovery_data: Value,
}

/// Every failure answer: `{"Err": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    /// What went wrong and what to do about it; Docker shows it to the user.
    pub err: String,
}
