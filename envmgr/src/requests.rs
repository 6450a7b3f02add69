//! The bodies of the management API's write requests.
//!
//! Shared by the API server, its client (the CLI) and the manager, so the
//! JSON contract is defined once. Unknown fields are errors, so a typo in a
//! field name is reported rather than silently ignored.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{AllowRule, Policy, PortMapping};

/// Attach a container (by netns path or pid) as an instance of `app/service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The application.
    pub app: String,
    /// The service within the application.
    pub service: String,
    /// The instance number; the lowest free one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
    /// A network namespace file, e.g. `/run/netns/c1`. Exactly one of
    /// `netns` and `pid` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// A process whose network namespace is used (`/proc/<pid>/ns/net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The interface name inside the container; `eth0` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// Pins the service's round-robin ServiceIP (v4; the v6 mirror follows)
    /// when the service is new on this node; must match when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ip: Option<Ipv4Addr>,
    /// Pins the instance IP (v4; the v6 mirror follows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<Ipv4Addr>,
    /// The runtime's id for the container (CNI's `CNI_CONTAINERID`, CNM's
    /// endpoint id). With it, a repeated attach of the same container and
    /// `ifname` to the same service returns the existing instance, and the
    /// runtime can detach by this id alone (`DELETE /v1/attachments?container_id=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Node ports published to the container (`proxytun attach --publish
    /// 8080:80/tcp`, CNI's `portMappings`): traffic to the node's addresses
    /// on `host_port` reaches the container's `container_port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

/// Register an instance that runs on a peer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteInstanceRequest {
    /// The application.
    pub app: String,
    /// The service within the application.
    pub service: String,
    /// The instance number.
    pub instance: u32,
    /// The peer node it runs on; must be a registered peer.
    pub node: String,
    /// Its namespace address on that node's subnet (v4; the v6 mirror follows).
    pub ns_addr: Ipv4Addr,
    /// Its instance IP (v4; the v6 mirror follows).
    pub instance_ip: Ipv4Addr,
    /// The service's round-robin ServiceIP, when the service is new here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ip: Option<Ipv4Addr>,
}

/// Register (or move) a peer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    /// The node's name.
    pub name: String,
    /// `ip:port` or `ip` (the default tunnel port is then assumed); IPv6 as `[ip]:port`.
    pub endpoint: String,
    /// Its public key with per-node tunnel keys (64 hex characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Register an external client (`POST /v1/clients`, docs/join.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRequest {
    /// Its name (a label).
    pub name: String,
    /// `ip:port` its datagrams come from (`ip` alone: the tunnel port).
    pub endpoint: String,
    /// Its public key with per-node tunnel keys (64 hex characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// The body of `PUT /v1/policy`: the whole new policy and, optionally, the
/// version it was based on (what `GET /v1/policy` gave). A stale version
/// is refused with 409; without one the write is accepted whatever
/// changed in between (last writer wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Isolation on or off ([`Policy::isolate`]).
    #[serde(default)]
    pub isolate: bool,
    /// The allow rules ([`Policy::allow`]).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// The version the change is based on; no check when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl PolicyRequest {
    /// The policy asked for (its version left at 0: the manager sets it)
    /// and the version the change is based on.
    pub fn into_parts(self) -> (Policy, Option<u64>) {
        let policy = Policy {
            isolate: self.isolate,
            allow: self.allow,
            version: 0,
        };
        (policy, self.version)
    }
}
