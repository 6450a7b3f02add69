//! The dataplane's immutable view of services, instances and peers.
//!
//! The control plane builds a new [`Table`] on every change (never per
//! packet) and swaps it in; the packet path only does O(1) lookups.
//!
//! Layout is tuned for the new-flow path at 100k services, where every
//! step is a cache miss: a ServiceIP is found by its offset in the range
//! (a direct index when the range is small or densely used, a compact hash
//! otherwise), and a service's first instances, with where they run, sit
//! in the same cache line as the service, so a pick touches the VIP slot,
//! the service line and the chosen instance.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::access::{Access, AppId, Rule};
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

/// A service's instance as the policies see it: the instance and where it
/// runs, without reading the instance entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Member {
    /// Index of the instance in the table.
    instance: u32,
    /// [`Member::LOCAL`], or an index into the table's remote locations.
    location: u32,
}

impl Member {
    /// `location` of an instance on this node.
    const LOCAL: u32 = u32::MAX;
}

/// Members kept inline in a [`ServiceHot`]; more spill into the table.
const INLINE_MEMBERS: usize = 3;

/// What a new flow needs of a service, 32 bytes (half a cache line) in an
/// array parallel to the services: a pick never reads the (bigger)
/// [`ServiceEntry`], and the array stays small enough to be cached.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
struct ServiceHot {
    /// Number of instances (length of the member list).
    len: u32,
    /// Where the members start in the table's spill list, when there are
    /// more than [`INLINE_MEMBERS`].
    spill: u32,
    /// The members, when there are at most [`INLINE_MEMBERS`].
    inline: [Member; INLINE_MEMBERS],
}

/// A service: its name, ServiceIPs and instances in table order.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// Index of this service in its table.
    index: u32,
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
    /// More services or instances than the table can index (2^30).
    #[error("too many services or instances for one table")]
    TooLarge,
}

/// Tag of a round-robin ServiceIP in a [`VipIndex`] slot.
const TAG_RR: u32 = 1 << 30;
/// Tag of a closest ServiceIP.
const TAG_CLOSEST: u32 = 2 << 30;
/// Tag of an instance IP.
const TAG_INSTANCE: u32 = 3 << 30;
/// The id bits of a slot.
const ID_MASK: u32 = (1 << 30) - 1;

/// A [`Vip`] packed in a `u32` (0: none): two tag bits and a 30-bit id.
fn encode(vip: Vip) -> Option<u32> {
    let (tag, id) = match vip {
        Vip::RoundRobin(s) => (TAG_RR, s.0),
        Vip::Closest(s) => (TAG_CLOSEST, s.0),
        Vip::Instance(i) => (TAG_INSTANCE, i.0),
    };
    let id = u32::try_from(id).ok().filter(|&id| id <= ID_MASK)?;
    Some(tag | id)
}

/// The inverse of [`encode`].
fn decode(slot: u32) -> Option<Vip> {
    let id = (slot & ID_MASK) as usize;
    match slot & !ID_MASK {
        TAG_RR => Some(Vip::RoundRobin(ServiceId(id))),
        TAG_CLOSEST => Some(Vip::Closest(ServiceId(id))),
        TAG_INSTANCE => Some(Vip::Instance(InstanceId(id))),
        _ => None,
    }
}

/// A range always gets a direct index when it has at most this many
/// addresses (a /16 of IPv4: 256 KiB).
const DIRECT_ALWAYS: u128 = 1 << 16;
/// Above that, a direct index when at least one address in this many is a
/// VIP (so it costs at most 4 bytes x this per VIP)...
const DIRECT_DENSITY: u128 = 16;
/// ...and the range has at most this many addresses (64 MiB).
const DIRECT_MAX: u128 = 1 << 24;

/// The VIPs of one family, keyed by their offset in the ServiceIP range.
#[derive(Debug, Clone)]
enum VipIndex {
    /// One packed slot per address of the range: a single memory access.
    Direct(Box<[u32]>),
    /// A sparse range: offset to packed slot.
    Hashed(FastMap<u128, u32>),
}

impl VipIndex {
    /// An index over a range of `size` addresses holding `vips`
    /// (offset, packed slot) pairs.
    fn new(size: u128, vips: &[(u128, u32)]) -> VipIndex {
        let count = vips.len() as u128;
        let direct = size <= DIRECT_ALWAYS
            || (size <= DIRECT_MAX && size <= count.saturating_mul(DIRECT_DENSITY));
        match usize::try_from(size) {
            Ok(n) if direct => {
                let mut slots = vec![0u32; n].into_boxed_slice();
                for &(off, slot) in vips {
                    if let Some(s) = usize::try_from(off).ok().and_then(|o| slots.get_mut(o)) {
                        *s = slot;
                    }
                }
                VipIndex::Direct(slots)
            }
            _ => VipIndex::Hashed(vips.iter().copied().collect()),
        }
    }

    #[inline]
    fn get(&self, offset: u128) -> Option<Vip> {
        let slot = match self {
            VipIndex::Direct(slots) => *slots.get(usize::try_from(offset).ok()?)?,
            VipIndex::Hashed(map) => *map.get(&offset)?,
        };
        decode(slot)
    }
}

/// Number of addresses in a range of prefix length `len` out of `bits`
/// (saturating at `u128::MAX` for a whole IPv6 space).
fn range_size(bits: u8, len: u8) -> u128 {
    1u128
        .checked_shl(u32::from(bits - len.min(bits)))
        .unwrap_or(u128::MAX)
}

/// Source of [`Table`] generations.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The dataplane's view of the cluster; see the module docs.
#[derive(Debug, Clone)]
pub struct Table {
    /// Unique per built table (copies share it): lets per-service state
    /// kept outside, indexed by [`ServiceId`], notice a new table.
    generation: u64,
    services4: Ipv4Net,
    services6: Ipv6Net,
    services: Vec<ServiceEntry>,
    /// The new-flow part of each service, by index.
    hot: Vec<ServiceHot>,
    instances: Vec<InstanceEntry>,
    /// Members of services too big to keep them inline.
    spill: Vec<Member>,
    /// Remote instance locations, by [`Member::location`]: the peer
    /// endpoints in order, then any other endpoint an instance names.
    locations: Vec<SocketAddr>,
    vips4: VipIndex,
    vips6: VipIndex,
    local_ns: FastMap<IpAddr, InstanceId>,
    local_iip: FastMap<IpAddr, InstanceId>,
    by_name: FastMap<Arc<str>, InstanceId>,
    peers: HashSet<IpAddr, foldhash::fast::RandomState>,
    endpoints: Vec<SocketAddr>,
    /// The app of each service, by index: 4 bytes per service, so the
    /// policy check of a new flow stays in cache.
    service_app: Vec<AppId>,
    /// App names, by [`AppId`].
    apps: Vec<Arc<str>>,
    /// The compiled isolation policy.
    access: Access,
}

impl Table {
    /// A table with nothing in it (the ranges still classify addresses).
    pub fn empty(services4: Ipv4Net, services6: Ipv6Net) -> Table {
        Table {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            services4,
            services6,
            services: Vec::new(),
            hot: Vec::new(),
            instances: Vec::new(),
            spill: Vec::new(),
            locations: Vec::new(),
            vips4: VipIndex::Hashed(FastMap::default()),
            vips6: VipIndex::Hashed(FastMap::default()),
            local_ns: FastMap::default(),
            local_iip: FastMap::default(),
            by_name: FastMap::default(),
            peers: HashSet::default(),
            endpoints: Vec::new(),
            service_app: Vec::new(),
            apps: Vec::new(),
            access: Access::default(),
        }
    }

    /// Unique per built table; see the field.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// True when `addr` lies in the ServiceIP range of its family.
    pub fn in_service_range(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.services4.contains(&a),
            IpAddr::V6(a) => self.services6.contains(&a),
        }
    }

    /// What a destination address selects, if it is a VIP.
    #[inline]
    pub fn vip(&self, addr: IpAddr) -> Option<Vip> {
        match addr {
            IpAddr::V4(a) => {
                let (a, net) = (u32::from(a), u32::from(self.services4.network()));
                if a & u32::from(self.services4.netmask()) != net {
                    return None;
                }
                self.vips4.get(u128::from(a - net))
            }
            IpAddr::V6(a) => {
                let (a, net) = (u128::from(a), u128::from(self.services6.network()));
                if a & u128::from(self.services6.netmask()) != net {
                    return None;
                }
                self.vips6.get(a - net)
            }
        }
    }

    /// The index of `service` in this table. An entry of this table is
    /// recognised by its address, so the entry itself is not read (a
    /// cache miss saved per new flow at 100k services); an entry of
    /// another table falls back to its recorded index.
    #[inline]
    pub(crate) fn service_index(&self, service: &ServiceEntry) -> usize {
        let size = std::mem::size_of::<ServiceEntry>().max(1);
        let at = (service as *const ServiceEntry as usize)
            .wrapping_sub(self.services.as_ptr() as usize)
            / size;
        match self.services.get(at) {
            Some(e) if std::ptr::eq(e, service) => at,
            _ => service.index as usize,
        }
    }

    /// The members of `service`; empty when `service` is not from this
    /// table.
    #[inline]
    pub(crate) fn members(&self, service: &ServiceEntry) -> &[Member] {
        let Some(hot) = self.hot.get(self.service_index(service)) else {
            return &[];
        };
        let len = hot.len as usize;
        if len <= INLINE_MEMBERS {
            hot.inline.get(..len).unwrap_or(&[])
        } else {
            let start = hot.spill as usize;
            self.spill.get(start..start + len).unwrap_or(&[])
        }
    }

    /// The instance id of a member.
    #[inline]
    pub(crate) fn member_id(member: Member) -> InstanceId {
        InstanceId(member.instance as usize)
    }

    /// Where a member runs, from a small array instead of its entry.
    #[inline]
    pub(crate) fn member_location(&self, member: Member) -> Location {
        match self.locations.get(member.location as usize) {
            Some(&ep) => Location::Remote(ep),
            None => Location::Local,
        }
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

    /// The app (tenant) a service belongs to.
    #[inline]
    pub fn app_of(&self, service: ServiceId) -> Option<AppId> {
        self.service_app.get(service.0).copied()
    }

    /// An app's name.
    pub fn app_name(&self, app: AppId) -> Option<&Arc<str>> {
        self.apps.get(app.0 as usize)
    }

    /// The compiled isolation policy.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// May a client instance of service `client` open a flow to service
    /// `dst` on `port` (`None`: ICMP echo)? Answered from the compiled
    /// policy: no allocation, no string compare. An id not of this table
    /// is allowed only while isolation is off.
    #[inline]
    pub fn allows(&self, client: ServiceId, dst: ServiceId, port: Option<u16>) -> bool {
        if !self.access.isolate() {
            return true;
        }
        match (self.app_of(client), self.app_of(dst)) {
            (Some(from), Some(to)) => self.access.allows(from, to, dst.0 as u32, port),
            _ => false,
        }
    }

    /// The service a VIP belongs to (an instance IP: its instance's service).
    #[inline]
    pub fn service_of_vip(&self, vip: Vip) -> Option<ServiceId> {
        match vip {
            Vip::RoundRobin(s) | Vip::Closest(s) => Some(s),
            Vip::Instance(i) => self.instance(i).map(|e| e.service),
        }
    }
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

    /// A table of `n` services with `k` instances each in `range`, the
    /// instances spread over peers and this node, one on an endpoint that
    /// is not a listed peer.
    fn spread(range4: &str, range6: &str, n: u32, k: u32) -> (Table, Vec<(IpAddr, Vip)>) {
        let (n4, n6): (Ipv4Net, Ipv6Net) = (range4.parse().unwrap(), range6.parse().unwrap());
        let (b4, b6) = (u32::from(n4.network()), u128::from(n6.network()));
        let mut b = TableBuilder::new(n4, n6);
        let peers: Vec<SocketAddr> = (1..=3)
            .map(|p| SocketAddr::from(([192, 168, 0, p], 50103)))
            .collect();
        let mut want = Vec::new();
        let mut next = 1u32;
        let addr = |next: &mut u32| {
            *next += 1;
            (
                Ipv4Addr::from(b4 + *next),
                Ipv6Addr::from(b6 + u128::from(*next)),
            )
        };
        for s in 0..n {
            let (r4, r6) = addr(&mut next);
            let id = b.service(&format!("a/s{s}"), r4, r6);
            want.push((IpAddr::V4(r4), Vip::RoundRobin(id)));
            want.push((IpAddr::V6(r6), Vip::RoundRobin(id)));
            for j in 0..k {
                let (i4, i6) = addr(&mut next);
                let location = match (s + j) % 5 {
                    0 => Location::Local,
                    4 => Location::Remote("192.168.9.9:50103".parse().unwrap()),
                    p => Location::Remote(peers[p as usize - 1]),
                };
                let ns4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 18, 0, 0)) + next);
                let ns6 = Ipv6Addr::from(0xfdff_0018_u128 << 96 | u128::from(next));
                let iid = b.instance(id, &format!("a/s{s}/{j}"), ns4, ns6, i4, i6, location);
                want.push((IpAddr::V4(i4), Vip::Instance(iid)));
                want.push((IpAddr::V6(i6), Vip::Instance(iid)));
            }
        }
        for p in &peers {
            b.peer(*p);
        }
        (b.build().unwrap(), want)
    }

    fn check_table(t: &Table, want: &[(IpAddr, Vip)]) {
        for &(addr, vip) in want {
            assert_eq!(t.vip(addr), Some(vip), "{addr}");
        }
        for s in t.services() {
            let members = t.members(s);
            assert_eq!(members.len(), s.instances.len(), "{}", s.name);
            for (m, &id) in members.iter().zip(&s.instances) {
                assert_eq!(Table::member_id(*m), id);
                assert_eq!(t.member_location(*m), t.instance(id).unwrap().location);
            }
        }
    }

    #[test]
    fn direct_and_hashed_vip_indexes_agree() {
        // A /16 and a /112 are always indexed directly; a sparse /8 and
        // /96 are hashed.
        for (r4, r6, direct) in [
            ("10.30.0.0/16", "fdff:30::/112", true),
            ("10.0.0.0/8", "fdff:30::/96", false),
        ] {
            // 1, 3 (inline) and 7 (spilled) instances per service.
            for k in [0, 1, 3, 7] {
                let (t, want) = spread(r4, r6, 20, k);
                assert_eq!(matches!(t.vips4, VipIndex::Direct(_)), direct);
                assert_eq!(matches!(t.vips6, VipIndex::Direct(_)), direct);
                check_table(&t, &want);
                let (n4, n6) = (t.services4, t.services6);
                // Free addresses, the network address and addresses
                // outside the range select nothing.
                for a in [
                    IpAddr::V4(Ipv4Addr::from(u32::from(n4.broadcast()))),
                    IpAddr::V4(n4.network()),
                    IpAddr::V6(Ipv6Addr::from(u128::from(n6.broadcast()))),
                    "10.200.0.1".parse().unwrap(),
                    "192.168.0.1".parse().unwrap(),
                    "fdff:31::2".parse().unwrap(),
                    "::".parse().unwrap(),
                ] {
                    assert_eq!(t.vip(a), None, "{a}");
                }
            }
        }
        // A /10 used densely enough is indexed directly.
        let (t, want) = spread("10.64.0.0/10", "fdff:64::/106", 90_000, 2);
        assert!(matches!(t.vips4, VipIndex::Direct(_)));
        check_table(&t, &want);
    }

    #[test]
    fn vip_slots_round_trip() {
        for vip in [
            Vip::RoundRobin(ServiceId(0)),
            Vip::Closest(ServiceId(ID_MASK as usize)),
            Vip::Instance(InstanceId(12345)),
        ] {
            assert_eq!(encode(vip).and_then(decode), Some(vip));
        }
        assert_eq!(
            encode(Vip::Instance(InstanceId(ID_MASK as usize + 1))),
            None
        );
        assert_eq!(decode(0), None);
    }

    #[test]
    fn service_index_of_a_foreign_entry_uses_its_index() {
        let (t, _) = spread("10.30.0.0/16", "fdff:30::/112", 5, 2);
        let copy = t.clone();
        for (i, s) in copy.services().enumerate() {
            assert_eq!(t.service_index(s), i);
            assert_eq!(copy.service_index(s), i);
            assert_eq!(s.id(), ServiceId(i));
        }
    }
}
