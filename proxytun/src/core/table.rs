//! The dataplane's immutable view of services, instances and peers.
//!
//! The control plane builds a new [`Table`] on every change (never per
//! packet) and swaps it in; the packet path only does O(1) hash lookups.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::flow::FastMap;

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

/// Index of a service in its [`Table`] (only meaningful for that table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId(usize);

/// Index of an instance in its [`Table`] (only meaningful for that table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(usize);

/// A service: its name, ServiceIPs and instances in table order.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// `app/service`.
    pub name: Arc<str>,
    /// Round-robin ServiceIP, IPv4.
    pub rr4: Ipv4Addr,
    /// Round-robin ServiceIP, IPv6.
    pub rr6: Ipv6Addr,
    /// Closest ServiceIPs (IPv4, IPv6), if the service has them.
    pub closest: Option<(Ipv4Addr, Ipv6Addr)>,
    /// Its instances, in the order they were added.
    pub instances: Vec<InstanceId>,
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

/// Why a table could not be built; the control plane should never produce
/// these, so they point at a bug or a corrupt store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Two VIPs (ServiceIPs or instance IPs) share an address.
    #[error("address {addr} is used by both {first} and {second}")]
    DuplicateVip {
        /// The address.
        addr: IpAddr,
        /// Who had it first.
        first: String,
        /// Who wanted it again.
        second: String,
    },
    /// A VIP outside the ServiceIP range would never reach the TUN.
    #[error("{owner}: address {addr} is outside the ServiceIP range")]
    OutsideServiceRange {
        /// The service or instance.
        owner: String,
        /// The address.
        addr: IpAddr,
    },
    /// Two local instances claim the same namespace address.
    #[error("namespace address {addr} is used by both {first} and {second}")]
    DuplicateNsAddr {
        /// The address.
        addr: IpAddr,
        /// Who had it first.
        first: String,
        /// Who wanted it again.
        second: String,
    },
    /// Two instances share a name.
    #[error("instance {0} is listed twice")]
    DuplicateInstance(String),
    /// A [`ServiceId`] that this builder did not hand out.
    #[error("instance {0} refers to an unknown service id")]
    UnknownService(String),
}

/// The dataplane's view of the cluster; see the module docs.
#[derive(Debug, Clone)]
pub struct Table {
    services4: Ipv4Net,
    services6: Ipv6Net,
    services: Vec<ServiceEntry>,
    instances: Vec<InstanceEntry>,
    vips: FastMap<IpAddr, Vip>,
    local_ns: FastMap<IpAddr, InstanceId>,
    local_iip: FastMap<IpAddr, InstanceId>,
    by_name: FastMap<Arc<str>, InstanceId>,
    peers: HashSet<IpAddr, foldhash::fast::RandomState>,
    endpoints: Vec<SocketAddr>,
}

impl Table {
    /// A table with nothing in it (the ranges still classify addresses).
    pub fn empty(services4: Ipv4Net, services6: Ipv6Net) -> Table {
        Table {
            services4,
            services6,
            services: Vec::new(),
            instances: Vec::new(),
            vips: FastMap::default(),
            local_ns: FastMap::default(),
            local_iip: FastMap::default(),
            by_name: FastMap::default(),
            peers: HashSet::default(),
            endpoints: Vec::new(),
        }
    }

    /// True when `addr` lies in the ServiceIP range of its family.
    pub fn in_service_range(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.services4.contains(&a),
            IpAddr::V6(a) => self.services6.contains(&a),
        }
    }

    /// What a destination address selects, if it is a VIP.
    pub fn vip(&self, addr: IpAddr) -> Option<Vip> {
        self.vips.get(&addr).copied()
    }

    /// The local instance whose namespace address is `addr`.
    pub fn local_by_ns(&self, addr: IpAddr) -> Option<(InstanceId, &InstanceEntry)> {
        let id = *self.local_ns.get(&addr)?;
        Some((id, self.instance(id)?))
    }

    /// The local instance whose instance IP is `addr`.
    pub fn local_by_iip(&self, addr: IpAddr) -> Option<(InstanceId, &InstanceEntry)> {
        let id = *self.local_iip.get(&addr)?;
        Some((id, self.instance(id)?))
    }

    /// An instance by name (`app/service/n`).
    pub fn instance_by_name(&self, name: &str) -> Option<&InstanceEntry> {
        self.instance(*self.by_name.get(name)?)
    }

    /// An instance by id.
    pub fn instance(&self, id: InstanceId) -> Option<&InstanceEntry> {
        self.instances.get(id.0)
    }

    /// A service by id.
    pub fn service(&self, id: ServiceId) -> Option<&ServiceEntry> {
        self.services.get(id.0)
    }

    /// All services, in table order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.iter()
    }

    /// True when tunnel datagrams from `addr` are accepted.
    pub fn is_peer(&self, addr: IpAddr) -> bool {
        self.peers.contains(&addr)
    }

    /// The peers' tunnel endpoints, in the order they were added: the
    /// nodes keepalives go to.
    pub fn peer_endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

/// Builds a [`Table`], checking that addresses do not collide.
#[derive(Debug)]
pub struct TableBuilder {
    table: Table,
    error: Option<TableError>,
}

impl TableBuilder {
    /// Starts a table for the given ServiceIP ranges.
    pub fn new(services4: Ipv4Net, services6: Ipv6Net) -> Self {
        TableBuilder {
            table: Table::empty(services4, services6),
            error: None,
        }
    }

    fn fail(&mut self, e: TableError) {
        self.error.get_or_insert(e);
    }

    fn add_vip(&mut self, addr: IpAddr, vip: Vip, owner: &str) {
        if !self.table.in_service_range(addr) {
            self.fail(TableError::OutsideServiceRange {
                owner: owner.to_owned(),
                addr,
            });
            return;
        }
        if let Some(prev) = self.table.vips.insert(addr, vip) {
            let first = match prev {
                Vip::RoundRobin(s) | Vip::Closest(s) => self.table.services[s.0].name.to_string(),
                Vip::Instance(i) => self.table.instances[i.0].name.to_string(),
            };
            self.fail(TableError::DuplicateVip {
                addr,
                first,
                second: owner.to_owned(),
            });
        }
    }

    /// Adds a service (`app/service`) with its round-robin ServiceIPs.
    pub fn service(&mut self, name: &str, rr4: Ipv4Addr, rr6: Ipv6Addr) -> ServiceId {
        let id = ServiceId(self.table.services.len());
        self.table.services.push(ServiceEntry {
            name: name.into(),
            rr4,
            rr6,
            closest: None,
            instances: Vec::new(),
        });
        self.add_vip(IpAddr::V4(rr4), Vip::RoundRobin(id), name);
        self.add_vip(IpAddr::V6(rr6), Vip::RoundRobin(id), name);
        id
    }

    /// Gives `service` its closest ServiceIPs (see [`Vip::Closest`]).
    pub fn closest(&mut self, service: ServiceId, v4: Ipv4Addr, v6: Ipv6Addr) -> &mut Self {
        let Some(svc) = self.table.services.get_mut(service.0) else {
            self.fail(TableError::UnknownService(format!("closest {v4}")));
            return self;
        };
        svc.closest = Some((v4, v6));
        let name = svc.name.clone();
        self.add_vip(IpAddr::V4(v4), Vip::Closest(service), &name);
        self.add_vip(IpAddr::V6(v6), Vip::Closest(service), &name);
        self
    }

    /// Adds an instance (`app/service/n`) of `service`; it joins the service's
    /// rotation after the instances added before it.
    #[allow(clippy::too_many_arguments)]
    pub fn instance(
        &mut self,
        service: ServiceId,
        name: &str,
        ns4: Ipv4Addr,
        ns6: Ipv6Addr,
        iip4: Ipv4Addr,
        iip6: Ipv6Addr,
        location: Location,
    ) -> InstanceId {
        let id = InstanceId(self.table.instances.len());
        let entry = InstanceEntry {
            name: name.into(),
            service,
            ns4,
            ns6,
            iip4,
            iip6,
            location,
        };
        let Some(svc) = self.table.services.get_mut(service.0) else {
            self.fail(TableError::UnknownService(name.to_owned()));
            return id;
        };
        svc.instances.push(id);
        if self.table.by_name.insert(entry.name.clone(), id).is_some() {
            self.fail(TableError::DuplicateInstance(name.to_owned()));
        }
        self.table.instances.push(entry);
        self.add_vip(IpAddr::V4(iip4), Vip::Instance(id), name);
        self.add_vip(IpAddr::V6(iip6), Vip::Instance(id), name);
        if location == Location::Local {
            for (ns, iip) in [
                (IpAddr::V4(ns4), IpAddr::V4(iip4)),
                (IpAddr::V6(ns6), IpAddr::V6(iip6)),
            ] {
                if let Some(prev) = self.table.local_ns.insert(ns, id) {
                    let first = self.table.instances[prev.0].name.to_string();
                    self.fail(TableError::DuplicateNsAddr {
                        addr: ns,
                        first,
                        second: name.to_owned(),
                    });
                }
                self.table.local_iip.insert(iip, id);
            }
        }
        id
    }

    /// Adds a peer node by its tunnel endpoint: datagrams from its address
    /// are accepted, and it is sent keepalives. Adding an endpoint twice
    /// is harmless.
    pub fn peer(&mut self, endpoint: SocketAddr) -> &mut Self {
        self.table.peers.insert(endpoint.ip());
        if !self.table.endpoints.contains(&endpoint) {
            self.table.endpoints.push(endpoint);
        }
        self
    }

    /// Finishes the table, or reports the first inconsistency found.
    pub fn build(self) -> Result<Table, TableError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.table),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nets() -> (Ipv4Net, Ipv6Net) {
        (
            "10.30.0.0/16".parse().unwrap(),
            "fdff:30::/112".parse().unwrap(),
        )
    }

    #[test]
    fn lookups_and_errors() {
        let (n4, n6) = nets();
        let mut b = TableBuilder::new(n4, n6);
        let s = b.service(
            "a/web",
            "10.30.0.1".parse().unwrap(),
            "fdff:30::1".parse().unwrap(),
        );
        b.instance(
            s,
            "a/web/1",
            "10.18.1.5".parse().unwrap(),
            "fdff:18::105".parse().unwrap(),
            "10.30.1.3".parse().unwrap(),
            "fdff:30::103".parse().unwrap(),
            Location::Local,
        );
        b.closest(
            s,
            "10.30.0.2".parse().unwrap(),
            "fdff:30::2".parse().unwrap(),
        );
        b.peer("192.168.0.2:50103".parse().unwrap());
        b.peer("192.168.0.2:50103".parse().unwrap());
        let t = b.build().unwrap();
        assert_eq!(
            t.vip("10.30.0.1".parse().unwrap()),
            Some(Vip::RoundRobin(s))
        );
        assert!(matches!(
            t.vip("fdff:30::103".parse().unwrap()),
            Some(Vip::Instance(_))
        ));
        assert_eq!(
            t.local_by_ns("fdff:18::105".parse().unwrap())
                .unwrap()
                .1
                .name
                .as_ref(),
            "a/web/1"
        );
        assert!(t.local_by_iip("10.30.1.3".parse().unwrap()).is_some());
        assert!(t.is_peer("192.168.0.2".parse().unwrap()));
        assert!(!t.is_peer("192.168.0.3".parse().unwrap()));
        assert_eq!(
            t.peer_endpoints(),
            &["192.168.0.2:50103".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(t.vip("10.30.0.2".parse().unwrap()), Some(Vip::Closest(s)));
        assert_eq!(t.vip("fdff:30::2".parse().unwrap()), Some(Vip::Closest(s)));
        assert_eq!(
            t.service(s).unwrap().closest,
            Some(("10.30.0.2".parse().unwrap(), "fdff:30::2".parse().unwrap()))
        );
        assert!(t.in_service_range("10.30.9.9".parse().unwrap()));
        assert!(!t.in_service_range("10.18.1.5".parse().unwrap()));

        let mut b = TableBuilder::new(n4, n6);
        b.service(
            "a/x",
            "10.30.0.1".parse().unwrap(),
            "fdff:30::1".parse().unwrap(),
        );
        b.service(
            "a/y",
            "10.30.0.1".parse().unwrap(),
            "fdff:30::2".parse().unwrap(),
        );
        assert!(matches!(b.build(), Err(TableError::DuplicateVip { .. })));

        let mut b = TableBuilder::new(n4, n6);
        b.service(
            "a/x",
            "10.31.0.1".parse().unwrap(),
            "fdff:30::1".parse().unwrap(),
        );
        assert!(matches!(
            b.build(),
            Err(TableError::OutsideServiceRange { .. })
        ));
    }
}
