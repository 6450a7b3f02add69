//! What a [`Table`](super::Table) holds: services and instances with where
//! they run, their ids, and what a VIP selects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Where an instance runs, as far as forwarding is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// On this node: packets go back into the TUN.
    Local,
    /// On a peer node: packets go to its tunnel endpoint.
    Remote(SocketAddr),
}

impl Location {
    /// The peer endpoint, if remote.
    pub fn peer(self) -> Option<SocketAddr> {
        match self {
            Location::Local => None,
            Location::Remote(p) => Some(p),
        }
    }
}

/// Index of a service in its [`Table`](super::Table) (only meaningful for that table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId(pub(super) usize);

/// Index of an instance in its [`Table`](super::Table) (only meaningful for that table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub(super) usize);

/// A service's instance as the policies see it: the instance and where it
/// runs, without reading the instance entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Member {
    /// Index of the instance in the table.
    pub(super) instance: u32,
    /// [`Member::LOCAL`], or an index into the table's remote locations.
    pub(super) location: u32,
}

impl Member {
    /// `location` of an instance on this node.
    pub(super) const LOCAL: u32 = u32::MAX;
}

/// Members kept inline in a [`ServiceHot`]; more spill into the table.
pub(super) const INLINE_MEMBERS: usize = 3;

/// What a new flow needs of a service, 32 bytes (half a cache line) in an
/// array parallel to the services: a pick never reads the (bigger)
/// [`ServiceEntry`], and the array stays small enough to be cached.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(super) struct ServiceHot {
    /// Number of instances (length of the member list).
    pub(super) len: u32,
    /// Where the members start in the table's spill list, when there are
    /// more than [`INLINE_MEMBERS`].
    pub(super) spill: u32,
    /// The members, when there are at most [`INLINE_MEMBERS`].
    pub(super) inline: [Member; INLINE_MEMBERS],
}

/// A service: its name, ServiceIPs and instances in table order.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// Index of this service in its table.
    pub(super) index: u32,
    /// `app/service`.
    pub name: Arc<str>,
    /// Round-robin ServiceIP, IPv4.
    pub rr4: Ipv4Addr,
    /// Round-robin ServiceIP, IPv6.
    pub rr6: Ipv6Addr,
    /// Closest ServiceIPs (IPv4, IPv6), if the service has them.
    pub closest: Option<(Ipv4Addr, Ipv6Addr)>,
    /// Client affinity's timeout, when the service has `affinity = client`
    /// (see [`crate::affinity`]); `None`: every new flow is balanced.
    pub affinity: Option<std::time::Duration>,
    /// Its instances, in the order they were added.
    pub instances: Vec<InstanceId>,
}

impl ServiceEntry {
    /// This service's id in its table.
    pub fn id(&self) -> ServiceId {
        ServiceId(self.index as usize)
    }

    /// Number of instances.
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }
}

/// An instance: its addresses and where it runs.
#[derive(Debug, Clone)]
pub struct InstanceEntry {
    /// `app/service/n`.
    pub name: Arc<str>,
    /// The service it belongs to.
    pub service: ServiceId,
    /// Namespace address, IPv4.
    pub ns4: Ipv4Addr,
    /// Namespace address, IPv6.
    pub ns6: Ipv6Addr,
    /// Instance IP, IPv4.
    pub iip4: Ipv4Addr,
    /// Instance IP, IPv6.
    pub iip6: Ipv6Addr,
    /// Local or on a peer.
    pub location: Location,
}

impl InstanceEntry {
    /// The namespace address of the family of `like`.
    pub fn ns_for(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => IpAddr::V4(self.ns4),
            IpAddr::V6(_) => IpAddr::V6(self.ns6),
        }
    }

    /// The instance IP of the family of `like`.
    pub fn iip_for(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => IpAddr::V4(self.iip4),
            IpAddr::V6(_) => IpAddr::V6(self.iip6),
        }
    }
}

/// What a ServiceIP (VIP) selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vip {
    /// A round-robin ServiceIP: rotate over the service's instances.
    RoundRobin(ServiceId),
    /// A closest ServiceIP: the instances on the node with the lowest
    /// measured round-trip time (this node counts as zero).
    Closest(ServiceId),
    /// An instance IP: always that instance.
    Instance(InstanceId),
}
