//! Building a [`Table`]: the control plane adds services, instances and
//! peers, and [`TableBuilder::build`] checks that no address collides and
//! lays out the indexes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::index::{encode, range_size, VipIndex, ID_MASK};
use super::{
    InstanceEntry, InstanceId, Location, Member, ServiceEntry, ServiceHot, ServiceId, Table, Vip,
    INLINE_MEMBERS,
};
use crate::access::{Access, AppId, Rule};
use crate::map::FastMap;

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
    /// A client's address is a VIP or another client's, or its endpoint
    /// is another client's.
    #[error("client address {0} (or its endpoint) is already in use")]
    DuplicateClient(IpAddr),
    /// Two instances share a name.
    #[error("instance {0} is listed twice")]
    DuplicateInstance(String),
    /// A [`ServiceId`] that this builder did not hand out.
    #[error("instance {0} refers to an unknown service id")]
    UnknownService(String),
    /// More services or instances than the table can index (2^30).
    #[error("too many services or instances for one table")]
    TooLarge,
}

/// Builds a [`Table`], checking that addresses do not collide.
#[derive(Debug)]
pub struct TableBuilder {
    table: Table,
    /// Every VIP so far; turned into the table's indexes by `build`.
    vips: FastMap<IpAddr, Vip>,
    error: Option<TableError>,
    /// Apps interned so far.
    app_ids: FastMap<Arc<str>, AppId>,
    isolate: bool,
    rules: Vec<Rule>,
}

impl TableBuilder {
    /// Starts a table for the given ServiceIP ranges.
    pub fn new(services4: Ipv4Net, services6: Ipv6Net) -> Self {
        TableBuilder {
            table: Table::empty(services4, services6),
            vips: FastMap::default(),
            error: None,
            app_ids: FastMap::default(),
            isolate: false,
            rules: Vec::new(),
        }
    }

    /// Sets the isolation policy: `isolate`, and the allow rules (see
    /// [`Rule`]); compiled by [`TableBuilder::build`] once every service is
    /// known. Without a call, nothing is isolated.
    pub fn policy(&mut self, isolate: bool, rules: Vec<Rule>) -> &mut Self {
        self.isolate = isolate;
        self.rules = rules;
        self
    }

    /// The id of app `name`, interned on first use.
    fn intern_app(&mut self, name: &str) -> AppId {
        if let Some(&id) = self.app_ids.get(name) {
            return id;
        }
        let id = AppId(self.table.apps.len() as u32);
        let name: Arc<str> = name.into();
        self.table.apps.push(Arc::clone(&name));
        self.app_ids.insert(name, id);
        id
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
        if let Some(prev) = self.vips.insert(addr, vip) {
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
        let app = self.intern_app(name.split_once('/').map_or(name, |(a, _)| a));
        self.table.service_app.push(app);
        self.table.services.push(ServiceEntry {
            index: u32::try_from(id.0).unwrap_or(u32::MAX),
            name: name.into(),
            rr4,
            rr6,
            closest: None,
            affinity: None,
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

    /// Gives `service` client affinity with timeout `ttl` (see
    /// [`crate::affinity`]).
    pub fn affinity(&mut self, service: ServiceId, ttl: std::time::Duration) -> &mut Self {
        match self.table.services.get_mut(service.0) {
            Some(svc) => svc.affinity = Some(ttl),
            None => self.fail(TableError::UnknownService(format!("affinity {ttl:?}"))),
        }
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

    /// Adds a peer with its public key (per-node keys): as [`Self::peer`],
    /// and its handshakes must prove `key`.
    pub fn peer_with_key(
        &mut self,
        endpoint: SocketAddr,
        key: crate::handshake::PublicKey,
    ) -> &mut Self {
        self.table.peer_keys.insert(endpoint.ip(), key);
        self.peer(endpoint)
    }

    /// Adds an external client (docs/join.md): its address (inside the
    /// ServiceIP range, no VIP: add it after the services and instances,
    /// whose addresses it must not take) and tunnel endpoint, whose datagrams the
    /// member check then accepts. It is sent no keepalives: it pings us.
    pub fn client(&mut self, addr: IpAddr, endpoint: SocketAddr) -> &mut Self {
        if self.vips.contains_key(&addr) || !self.table.clients.insert(addr, endpoint) {
            self.fail(TableError::DuplicateClient(addr));
            return self;
        }
        self.table.peers.insert(endpoint.ip());
        self
    }

    /// Per-node keys: an external client (added by [`Self::client`]) with
    /// the public key its handshakes must prove.
    pub fn client_key(
        &mut self,
        endpoint: SocketAddr,
        key: crate::handshake::PublicKey,
    ) -> &mut Self {
        self.table.clients.set_key(endpoint, key);
        self
    }

    /// The resolver address external clients may query (port 53).
    pub fn client_resolver(&mut self, addr: IpAddr) -> &mut Self {
        self.table.clients.set_resolver(addr);
        self
    }

    /// Finishes the table, or reports the first inconsistency found.
    pub fn build(self) -> Result<Table, TableError> {
        let TableBuilder {
            mut table,
            vips,
            error,
            app_ids,
            isolate,
            rules,
        } = self;
        if let Some(e) = error {
            return Err(e);
        }
        let by_service: FastMap<&str, u32> = table
            .services
            .iter()
            .map(|s| (s.name.as_ref(), s.index))
            .collect();
        table.access = Access::compile(
            isolate,
            &rules,
            |a| app_ids.get(a).copied(),
            |s| by_service.get(s).copied(),
        );
        drop(by_service);
        let max = ID_MASK as usize;
        if table.services.len() > max || table.instances.len() > max {
            return Err(TableError::TooLarge);
        }
        // Remote locations: the peers first (in order), then any other
        // endpoint an instance names.
        let mut location_of: FastMap<SocketAddr, u32> = FastMap::default();
        for &ep in &table.endpoints {
            let next = table.locations.len() as u32;
            location_of.entry(ep).or_insert_with(|| {
                table.locations.push(ep);
                next
            });
        }
        let Table {
            services,
            hot,
            instances,
            spill,
            locations,
            ..
        } = &mut table;
        hot.reserve_exact(services.len());
        for svc in services.iter() {
            let members = svc.instances.iter().filter_map(|&id| {
                let inst = instances.get(id.0)?;
                let location = match inst.location {
                    Location::Local => Member::LOCAL,
                    Location::Remote(ep) => *location_of.entry(ep).or_insert_with(|| {
                        locations.push(ep);
                        locations.len() as u32 - 1
                    }),
                };
                Some(Member {
                    instance: id.0 as u32,
                    location,
                })
            });
            let mut h = ServiceHot {
                len: u32::try_from(svc.instances.len()).map_err(|_| TableError::TooLarge)?,
                ..ServiceHot::default()
            };
            if svc.instances.len() <= INLINE_MEMBERS {
                for (slot, m) in h.inline.iter_mut().zip(members) {
                    *slot = m;
                }
            } else {
                h.spill = u32::try_from(spill.len()).map_err(|_| TableError::TooLarge)?;
                spill.extend(members);
            }
            hot.push(h);
        }
        // The VIP indexes, by offset in the range of each family.
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let (net4, net6) = (
            u32::from(table.services4.network()),
            u128::from(table.services6.network()),
        );
        for (addr, vip) in vips {
            let slot = encode(vip).ok_or(TableError::TooLarge)?;
            match addr {
                IpAddr::V4(a) => v4.push((u128::from(u32::from(a).wrapping_sub(net4)), slot)),
                IpAddr::V6(a) => v6.push((u128::from(a).wrapping_sub(net6), slot)),
            }
        }
        table.vips4 = VipIndex::new(range_size(32, table.services4.prefix_len()), &v4);
        table.vips6 = VipIndex::new(range_size(128, table.services6.prefix_len()), &v6);
        Ok(table)
    }
}
