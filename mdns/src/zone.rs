//! The answer index: every record the resolver can give from one snapshot,
//! built once per snapshot and then only read.
//!
//! Queries look their name up in one hash map keyed by the lowercased name
//! (hickory hands the handler a [`LowerName`] already) and answer with
//! slices of records built here, so a query for a known name copies nothing.
//! Only services with at least one instance have names: a service vanishes
//! from DNS with its last instance, whichever store feeds the snapshot.

use std::collections::HashMap;
use std::net::IpAddr;

use envmgr::model::{Instance, Service, Snapshot};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use tracing::warn;

use crate::names::{reverse_v4, reverse_v6, Family, NameRules};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// SOA timers. Nothing transfers this zone, so only `minimum` (the negative
/// TTL) matters; the others are the usual values so tools do not complain.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// What exists at one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A zone apex (the cluster domain or a reverse zone): its SOA.
    Apex,
    /// An empty non-terminal (`svc.<domain>`, `<app>.svc.<domain>`,
    /// `_tcp.<service>...`): exists, holds nothing (NODATA).
    Empty,
    /// A service name: A, AAAA, then one SRV per instance.
    Service,
    /// A name with address or PTR records only.
    Leaf,
}

/// One name's records, in type order so each type is one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What the name is.
    pub kind: NodeKind,
    /// Its records: `[A, AAAA, SRV...]`, `[SOA]` or `[PTR...]`.
    pub records: Vec<Record>,
    /// For services: the A and AAAA of every SRV target, for the additional
    /// section.
    pub additionals: Vec<Record>,
}

impl Node {
    fn new(kind: NodeKind, records: Vec<Record>) -> Self {
        Self {
            kind,
            records,
            additionals: Vec::new(),
        }
    }

    /// The records of one type (all of them for ANY).
    pub fn records_of(&self, rtype: RecordType) -> &[Record] {
        if rtype == RecordType::ANY {
            return &self.records;
        }
        let Some(start) = self.records.iter().position(|r| r.record_type() == rtype) else {
            return &[];
        };
        let len = self.records[start..]
            .iter()
            .take_while(|r| r.record_type() == rtype)
            .count();
        &self.records[start..start + len]
    }
}

/// The immutable index of everything the resolver answers from one snapshot.
#[derive(Debug)]
pub struct Zone {
    rules: NameRules,
    names: Map<LowerName, Node>,
    soa: Record,
    soa4: Record,
    soa6: Record,
    ttl: u32,
    version: u64,
}

fn fqdn(s: &str) -> Option<Name> {
    let mut name = Name::from_ascii(s).ok()?;
    name.set_fqdn(true);
    Some(name.to_lowercase())
}

fn soa(apex: &Name, domain: &Name, serial: u32, ttl: u32) -> Record {
    let hostmaster = domain
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| domain.clone());
    let data = SOA::new(
        domain.clone(),
        hostmaster,
        serial,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        ttl,
    );
    Record::from_rdata(apex.clone(), ttl, RData::SOA(data))
}

fn addr_records(
    name: &Name,
    v4: std::net::Ipv4Addr,
    v6: std::net::Ipv6Addr,
    ttl: u32,
) -> [Record; 2] {
    [
        Record::from_rdata(name.clone(), ttl, RData::A(A(v4))),
        Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))),
    ]
}

/// Builds the zone step by step; keeps `build` readable.
struct Builder<'a> {
    domain: &'a Name,
    ttl: u32,
    names: Map<LowerName, Node>,
}

impl Builder<'_> {
    fn insert(&mut self, name: &Name, node: Node) {
        self.names.insert(LowerName::new(name), node);
    }

    fn empty(&mut self, name: &Name) {
        self.names
            .entry(LowerName::new(name))
            .or_insert_with(|| Node::new(NodeKind::Empty, Vec::new()));
    }

    /// PTR records: one name may have several if an operator gave two
    /// services the same address; every one is answered.
    fn ptr(&mut self, addr: IpAddr, target: &Name) {
        let owner = match addr {
            IpAddr::V4(a) => reverse_v4(a),
            IpAddr::V6(a) => reverse_v6(a),
        };
        let record = Record::from_rdata(owner.clone(), self.ttl, RData::PTR(PTR(target.clone())));
        self.names
            .entry(LowerName::new(&owner))
            .or_insert_with(|| Node::new(NodeKind::Leaf, Vec::new()))
            .records
            .push(record);
    }

    fn service<'s>(&mut self, service: &Service, instances: impl Iterator<Item = &'s Instance>) {
        let base = format!(
            "{}.{}.svc.{}",
            service.name.service,
            service.name.app,
            self.domain.to_ascii()
        );
        let (Some(name), Some(app)) = (
            fqdn(&base),
            fqdn(&format!(
                "{}.svc.{}",
                service.name.app,
                self.domain.to_ascii()
            )),
        ) else {
            warn!(service = %service.name, "service name is not a valid DNS name; not served");
            return;
        };
        let ttl = self.ttl;
        let mut records = addr_records(&name, service.rr_ip.v4, service.rr_ip.v6, ttl).to_vec();
        let mut additionals = Vec::new();
        for instance in instances {
            let Some(target) = fqdn(&format!("{}.{base}", instance.key.number)) else {
                continue;
            };
            let srv = SRV::new(0, 1, 0, target.clone());
            records.push(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
            let addrs = addr_records(
                &target,
                instance.instance_ip.v4,
                instance.instance_ip.v6,
                ttl,
            );
            additionals.extend(addrs.iter().cloned());
            self.insert(&target, Node::new(NodeKind::Leaf, addrs.to_vec()));
            self.ptr(IpAddr::V4(instance.instance_ip.v4), &target);
            self.ptr(IpAddr::V6(instance.instance_ip.v6), &target);
        }
        if let (Some(closest), Some(ip)) = (fqdn(&format!("closest.{base}")), service.closest_ip) {
            self.insert(
                &closest,
                Node::new(
                    NodeKind::Leaf,
                    addr_records(&closest, ip.v4, ip.v6, ttl).to_vec(),
                ),
            );
            self.ptr(IpAddr::V4(ip.v4), &closest);
            self.ptr(IpAddr::V6(ip.v6), &closest);
        }
        for proto in ["_tcp", "_udp"] {
            if let Some(ent) = fqdn(&format!("{proto}.{base}")) {
                self.empty(&ent);
            }
        }
        self.ptr(IpAddr::V4(service.rr_ip.v4), &name);
        self.ptr(IpAddr::V6(service.rr_ip.v6), &name);
        self.empty(&app);
        self.insert(
            &name,
            Node {
                kind: NodeKind::Service,
                records,
                additionals,
            },
        );
    }
}

impl Zone {
    /// Indexes `snapshot` under `domain` (an FQDN, lowercased here), every
    /// record with `ttl`. Runs on the resolver thread once per snapshot.
    pub fn build(snapshot: &Snapshot, domain: &Name, ttl: u32) -> Zone {
        let mut domain = domain.to_lowercase();
        domain.set_fqdn(true);
        let rules = NameRules::new(
            &domain,
            snapshot.node.service_range,
            snapshot.node.service_range6,
        );
        // The SOA serial only has to change when the data does.
        let serial = snapshot.version as u32;
        let mut b = Builder {
            domain: &domain,
            ttl,
            names: Map::default(),
        };
        for (name, service) in &snapshot.services {
            let mut instances = snapshot.instances_of(name).peekable();
            if instances.peek().is_some() {
                b.service(service, instances);
            }
        }
        if !b.names.is_empty() {
            if let Some(svc) = fqdn(&format!("svc.{}", domain.to_ascii())) {
                b.empty(&svc);
            }
        }
        let soa_main = soa(&domain, &domain, serial, ttl);
        let apex4 = rules.reverse_apex(Family::V4);
        let apex6 = rules.reverse_apex(Family::V6);
        let soa4 = soa(&apex4, &domain, serial, ttl);
        let soa6 = soa(&apex6, &domain, serial, ttl);
        b.insert(&domain, Node::new(NodeKind::Apex, vec![soa_main.clone()]));
        b.insert(&apex4, Node::new(NodeKind::Apex, vec![soa4.clone()]));
        b.insert(&apex6, Node::new(NodeKind::Apex, vec![soa6.clone()]));
        let names = b.names;
        Zone {
            rules,
            names,
            soa: soa_main,
            soa4,
            soa6,
            ttl,
            version: snapshot.version,
        }
    }

    /// The records at exactly `name`, if it exists.
    pub fn get(&self, name: &LowerName) -> Option<&Node> {
        self.names.get(name)
    }

    /// How names are classified when they are not in the index.
    pub fn rules(&self) -> &NameRules {
        &self.rules
    }

    /// The SOA for negative answers about names in `family`'s reverse zone,
    /// or the cluster domain's (`None`).
    pub fn soa(&self, family: Option<Family>) -> &Record {
        match family {
            None => &self.soa,
            Some(Family::V4) => &self.soa4,
            Some(Family::V6) => &self.soa6,
        }
    }

    /// The TTL of every record in the zone.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The version of the snapshot this zone was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many names the zone holds (apexes and empty non-terminals count).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when the zone holds no names at all (it always has its apexes).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    pub(crate) use crate::testing::snapshot;

    pub(crate) fn domain() -> Name {
        Name::from_ascii("cluster.internal.").expect("name")
    }

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).expect("name"))
    }

    #[test]
    fn service_records_in_type_order() {
        let zone = Zone::build(&snapshot(7, &[("shop", "web", 2)]), &domain(), 5);
        let node = zone
            .get(&lower("web.shop.svc.cluster.internal."))
            .expect("service");
        assert_eq!(node.kind, NodeKind::Service);
        let a = node.records_of(RecordType::A);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].data, RData::A(A(Ipv4Addr::new(10, 30, 1, 1))));
        assert_eq!(a[0].ttl, 5);
        let aaaa = node.records_of(RecordType::AAAA);
        assert_eq!(
            aaaa[0].data,
            RData::AAAA(AAAA("fdff:30::101".parse().expect("a")))
        );
        let srv = node.records_of(RecordType::SRV);
        assert_eq!(srv.len(), 2);
        let RData::SRV(first) = &srv[0].data else {
            panic!("not SRV")
        };
        assert_eq!(first.target.to_ascii(), "0.web.shop.svc.cluster.internal.");
        assert_eq!((first.priority, first.weight, first.port), (0, 1, 0));
        assert_eq!(node.additionals.len(), 4);
        assert_eq!(node.records_of(RecordType::ANY).len(), 4);
        assert!(node.records_of(RecordType::MX).is_empty());
    }

    #[test]
    fn closest_instances_ents_and_apex() {
        let zone = Zone::build(&snapshot(7, &[("shop", "web", 2)]), &domain(), 5);
        let closest = zone
            .get(&lower("closest.web.shop.svc.cluster.internal."))
            .expect("closest");
        assert_eq!(
            closest.records_of(RecordType::A)[0].data,
            RData::A(A(Ipv4Addr::new(10, 30, 1, 2)))
        );
        let one = zone
            .get(&lower("1.web.shop.svc.cluster.internal."))
            .expect("instance");
        assert_eq!(
            one.records_of(RecordType::A)[0].data,
            RData::A(A(Ipv4Addr::new(10, 30, 1, 11)))
        );
        assert!(zone
            .get(&lower("2.web.shop.svc.cluster.internal."))
            .is_none());
        for ent in [
            "svc.cluster.internal.",
            "shop.svc.cluster.internal.",
            "_tcp.web.shop.svc.cluster.internal.",
            "_udp.web.shop.svc.cluster.internal.",
        ] {
            assert_eq!(
                zone.get(&lower(ent)).expect(ent).kind,
                NodeKind::Empty,
                "{ent}"
            );
        }
        let apex = zone.get(&lower("cluster.internal.")).expect("apex");
        assert_eq!(apex.kind, NodeKind::Apex);
        let RData::SOA(soa) = &apex.records[0].data else {
            panic!("not SOA")
        };
        assert_eq!(soa.serial, 7);
        assert_eq!(soa.minimum, 5);
        assert_eq!(
            zone.soa(Some(Family::V4)).name.to_ascii(),
            "30.10.in-addr.arpa."
        );
    }

    #[test]
    fn ptr_for_every_service_ip_and_instance_ip() {
        let zone = Zone::build(&snapshot(1, &[("shop", "web", 1)]), &domain(), 5);
        let ptr = |s: &str| -> String {
            let node = zone.get(&lower(s)).expect(s);
            let RData::PTR(p) = &node.records_of(RecordType::PTR)[0].data else {
                panic!("not PTR")
            };
            p.0.to_ascii()
        };
        assert_eq!(
            ptr("1.1.30.10.in-addr.arpa."),
            "web.shop.svc.cluster.internal."
        );
        assert_eq!(
            ptr("2.1.30.10.in-addr.arpa."),
            "closest.web.shop.svc.cluster.internal."
        );
        assert_eq!(
            ptr("10.1.30.10.in-addr.arpa."),
            "0.web.shop.svc.cluster.internal."
        );
        let v6 = |k: u16| reverse_v6(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, k)).to_ascii();
        assert_eq!(ptr(&v6(0x101)), "web.shop.svc.cluster.internal.");
        assert_eq!(ptr(&v6(0x10a)), "0.web.shop.svc.cluster.internal.");
    }

    #[test]
    fn a_service_without_instances_has_no_names() {
        let zone = Zone::build(&snapshot(1, &[("shop", "web", 0)]), &domain(), 5);
        assert!(zone.get(&lower("web.shop.svc.cluster.internal.")).is_none());
        assert!(zone.get(&lower("shop.svc.cluster.internal.")).is_none());
        assert!(zone.get(&lower("svc.cluster.internal.")).is_none());
        assert!(zone.get(&lower("1.1.30.10.in-addr.arpa.")).is_none());
        // Only the three apexes.
        assert_eq!(zone.len(), 3);
    }

    #[test]
    fn lookups_ignore_case() {
        let zone = Zone::build(&snapshot(1, &[("shop", "web", 1)]), &domain(), 5);
        assert!(zone.get(&lower("WEB.Shop.Svc.CLUSTER.internal.")).is_some());
        let upper = Zone::build(
            &snapshot(1, &[("shop", "web", 1)]),
            &Name::from_ascii("Cluster.Internal.").expect("name"),
            5,
        );
        assert!(upper
            .get(&lower("web.shop.svc.cluster.internal."))
            .is_some());
    }
}
