//! What to answer, decided without I/O: a request and a zone in, a
//! [`Decision`] out.
//!
//! This is the resolver's rule book (RFC 1035/2308 behaviour for our zone),
//! unit-tested without sockets; the server only carries the decision out.
//! Answers borrow the zone's pre-built records, so a query for a known name
//! allocates nothing here.

use std::borrow::Cow;

use envmgr::model::ServiceName;
use hickory_proto::op::{LowerQuery, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};

use crate::names::{DomainName, Family, NameClass, ReverseName};
use crate::zone::{Node, NodeKind, Zone};

/// A response from the zone (or an error response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'z> {
    /// The response code.
    pub rcode: ResponseCode,
    /// AA: set on answers from our zone, never on errors about the request.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Cow<'z, [Record]>,
    /// The zone's SOA, in the authority section of negative answers.
    pub soa: Option<&'z Record>,
    /// The additional section (the addresses of SRV targets).
    pub additionals: &'z [Record],
}

impl Reply<'_> {
    /// A response with only a code: errors about the request itself.
    pub fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Cow::Borrowed(&[]),
            soa: None,
            additionals: &[],
        }
    }
}

/// What the server should do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'z> {
    /// Send this.
    Reply(Reply<'z>),
    /// The name is outside our zones: ask the upstream resolvers.
    Forward,
    /// A service this node does not know: ask the cluster store, wait for a
    /// snapshot that has it, then decide again.
    Miss(ServiceName),
}

/// Checks the request as a whole: returns its one question, or the error
/// code to answer with (NOTIMP for opcodes other than QUERY, FORMERR when
/// there is not exactly one question).
pub fn check_request<'r>(
    metadata: &Metadata,
    queries: &'r [LowerQuery],
) -> Result<&'r LowerQuery, ResponseCode> {
    if metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    match queries {
        [query] => Ok(query),
        _ => Err(ResponseCode::FormErr),
    }
}

fn positive<'z>(answers: Cow<'z, [Record]>, additionals: &'z [Record]) -> Decision<'z> {
    Decision::Reply(Reply {
        rcode: ResponseCode::NoError,
        authoritative: true,
        answers,
        soa: None,
        additionals,
    })
}

fn negative(zone: &Zone, rcode: ResponseCode, family: Option<Family>) -> Decision<'_> {
    Decision::Reply(Reply {
        rcode,
        authoritative: true,
        answers: Cow::Borrowed(&[]),
        soa: Some(zone.soa(family)),
        additionals: &[],
    })
}

/// The reverse zone a name's negative answer belongs to (`None`: the
/// cluster domain).
fn family_of(zone: &Zone, name: &LowerName) -> Option<Family> {
    match zone.rules().classify(name) {
        NameClass::Reverse(
            ReverseName::Addr(f) | ReverseName::Partial(f) | ReverseName::Unknown(f),
        ) => Some(f),
        _ => None,
    }
}

/// Answers a query for a name the zone holds.
fn from_node<'z>(
    zone: &'z Zone,
    name: &LowerName,
    node: &'z Node,
    qtype: RecordType,
) -> Decision<'z> {
    let records = node.records_of(qtype);
    if records.is_empty() {
        // The name exists but not with this type: NODATA.
        return negative(zone, ResponseCode::NoError, family_of(zone, name));
    }
    let additionals = match (node.kind == NodeKind::Service, qtype) {
        (true, RecordType::SRV | RecordType::ANY) => node.additionals.as_slice(),
        _ => &[],
    };
    positive(Cow::Borrowed(records), additionals)
}

/// SRV at `_<port>._<proto>.<service>...`: the service's SRV records, owned
/// by the query name and carrying the port the client named.
fn srv_with_port(node: &Node, owner: &LowerName, port: u16) -> Vec<Record> {
    node.records_of(RecordType::SRV)
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => {
                let data = SRV::new(srv.priority, srv.weight, port, srv.target.clone());
                Some(Record::from_rdata(
                    (**owner).clone(),
                    r.ttl,
                    RData::SRV(data),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Decides the answer to `query` from `zone`. `ask_store` is true when an
/// unknown service may be asked of the cluster store (etcd mode, and not
/// after the wait for it).
pub fn decide<'z>(zone: &'z Zone, query: &LowerQuery, ask_store: bool) -> Decision<'z> {
    let name = query.name();
    let qtype = query.query_type();
    let class_ok = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
    let transfer = matches!(qtype, RecordType::AXFR | RecordType::IXFR);

    if let Some(node) = zone.get(name) {
        if !class_ok || transfer {
            return Decision::Reply(Reply::error(ResponseCode::Refused));
        }
        return from_node(zone, name, node, qtype);
    }

    let domain = match zone.rules().classify(name) {
        NameClass::Outside => {
            // The upstream resolvers speak IN only, and zone transfers are
            // not ours to proxy.
            if query.query_class() != DNSClass::IN || transfer {
                return Decision::Reply(Reply::error(ResponseCode::Refused));
            }
            return Decision::Forward;
        }
        _ if !class_ok || transfer => return Decision::Reply(Reply::error(ResponseCode::Refused)),
        NameClass::Reverse(ReverseName::Partial(f)) => {
            return negative(zone, ResponseCode::NoError, Some(f));
        }
        NameClass::Reverse(ReverseName::Addr(f) | ReverseName::Unknown(f)) => {
            return negative(zone, ResponseCode::NXDomain, Some(f));
        }
        NameClass::Domain(d) => d,
    };

    let Some(service) = domain.service() else {
        return negative(zone, ResponseCode::NXDomain, None);
    };
    // The service's own name: the domain plus `<service>.<app>.svc`.
    let service_name = LowerName::from(name.trim_to(zone.rules().domain_labels() + 3));
    match zone.get(&service_name) {
        Some(node) if node.kind == NodeKind::Service => match domain {
            DomainName::Srv(_, port) => match qtype {
                RecordType::SRV | RecordType::ANY => positive(
                    Cow::Owned(srv_with_port(node, name, port)),
                    node.additionals.as_slice(),
                ),
                _ => negative(zone, ResponseCode::NoError, None),
            },
            // The service exists, this instance (or closest) does not.
            _ => negative(zone, ResponseCode::NXDomain, None),
        },
        _ => match service.service_name() {
            Some(missing) if ask_store => Decision::Miss(missing),
            _ => negative(zone, ResponseCode::NXDomain, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::{A, AAAA, PTR};
    use hickory_proto::rr::Name;

    use super::*;
    use crate::names::reverse_v6;
    use crate::zone::tests::{domain, snapshot};

    fn zone() -> Zone {
        Zone::build(
            &snapshot(3, &[("shop", "web", 2), ("shop", "db", 1)]),
            &domain(),
            5,
        )
    }

    fn query(name: &str, qtype: RecordType) -> LowerQuery {
        LowerQuery::query(Query::query(Name::from_ascii(name).expect("name"), qtype))
    }

    fn query_class(name: &str, qtype: RecordType, class: DNSClass) -> LowerQuery {
        let mut q = Query::query(Name::from_ascii(name).expect("name"), qtype);
        q.set_query_class(class);
        LowerQuery::query(q)
    }

    fn reply(d: Decision<'_>) -> Reply<'_> {
        match d {
            Decision::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn datas(r: &Reply<'_>) -> Vec<RData> {
        r.answers.iter().map(|r| r.data.clone()).collect()
    }

    #[test]
    fn a_aaaa_any_for_a_service() {
        let z = zone();
        let r = reply(decide(
            &z,
            &query("web.shop.svc.cluster.internal.", RecordType::A),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert!(r.authoritative);
        assert_eq!(datas(&r), vec![RData::A(A(Ipv4Addr::new(10, 30, 1, 1)))]);
        assert!(r.soa.is_none() && r.additionals.is_empty());
        assert!(
            matches!(r.answers, Cow::Borrowed(_)),
            "zone answers copy nothing"
        );

        let r = reply(decide(
            &z,
            &query("Web.SHOP.svc.cluster.internal.", RecordType::AAAA),
            true,
        ));
        assert_eq!(
            datas(&r),
            vec![RData::AAAA(AAAA(Ipv6Addr::new(
                0xfdff, 0x30, 0, 0, 0, 0, 0, 0x101
            )))]
        );

        let r = reply(decide(
            &z,
            &query("web.shop.svc.cluster.internal.", RecordType::ANY),
            true,
        ));
        assert_eq!(r.answers.len(), 4, "A, AAAA and two SRV");
        assert_eq!(r.additionals.len(), 4);
    }

    #[test]
    fn closest_and_instances() {
        let z = zone();
        let r = reply(decide(
            &z,
            &query("closest.web.shop.svc.cluster.internal.", RecordType::A),
            true,
        ));
        assert_eq!(datas(&r), vec![RData::A(A(Ipv4Addr::new(10, 30, 1, 2)))]);
        let r = reply(decide(
            &z,
            &query("1.web.shop.svc.cluster.internal.", RecordType::A),
            true,
        ));
        assert_eq!(datas(&r), vec![RData::A(A(Ipv4Addr::new(10, 30, 1, 11)))]);
        // The service exists, instance 7 does not: NXDOMAIN even in etcd mode.
        let r = reply(decide(
            &z,
            &query("7.web.shop.svc.cluster.internal.", RecordType::A),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::NXDomain);
        assert_eq!(
            r.soa.map(|s| s.name.to_ascii()),
            Some("cluster.internal.".into())
        );
    }

    #[test]
    fn srv_lists_instances_with_addresses() {
        let z = zone();
        let r = reply(decide(
            &z,
            &query("web.shop.svc.cluster.internal.", RecordType::SRV),
            true,
        ));
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.additionals.len(), 4);
        let r = reply(decide(
            &z,
            &query("_8080._tcp.web.shop.svc.cluster.internal.", RecordType::SRV),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert!(r.authoritative);
        let ports: Vec<_> = r
            .answers
            .iter()
            .map(|rec| match &rec.data {
                RData::SRV(s) => (rec.name.to_ascii(), s.port, s.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                (
                    "_8080._tcp.web.shop.svc.cluster.internal.".to_string(),
                    8080,
                    "0.web.shop.svc.cluster.internal.".to_string()
                ),
                (
                    "_8080._tcp.web.shop.svc.cluster.internal.".to_string(),
                    8080,
                    "1.web.shop.svc.cluster.internal.".to_string()
                ),
            ]
        );
        assert_eq!(r.additionals.len(), 4);
        // The same name exists for A, with no A records: NODATA.
        let r = reply(decide(
            &z,
            &query("_8080._tcp.web.shop.svc.cluster.internal.", RecordType::A),
            true,
        ));
        assert_eq!((r.rcode, r.answers.len()), (ResponseCode::NoError, 0));
        assert!(r.soa.is_some());
        // A symbolic service label gets port 0.
        let r = reply(decide(
            &z,
            &query("_http._tcp.db.shop.svc.cluster.internal.", RecordType::SRV),
            true,
        ));
        match &r.answers[0].data {
            RData::SRV(s) => assert_eq!(s.port, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nodata_and_nxdomain_carry_the_soa() {
        let z = zone();
        for (name, qtype) in [
            ("web.shop.svc.cluster.internal.", RecordType::MX),
            ("web.shop.svc.cluster.internal.", RecordType::TXT),
            ("svc.cluster.internal.", RecordType::A),
            ("shop.svc.cluster.internal.", RecordType::A),
            ("_tcp.web.shop.svc.cluster.internal.", RecordType::SRV),
            ("cluster.internal.", RecordType::A),
            ("1.1.30.10.in-addr.arpa.", RecordType::A),
        ] {
            let r = reply(decide(&z, &query(name, qtype), true));
            assert_eq!(r.rcode, ResponseCode::NoError, "{name} {qtype}");
            assert!(r.answers.is_empty() && r.authoritative, "{name} {qtype}");
            let soa = r.soa.expect("SOA in NODATA");
            assert_eq!(soa.ttl, 5);
            match &soa.data {
                RData::SOA(s) => assert_eq!(s.minimum, 5),
                other => panic!("{other:?}"),
            }
        }
        for name in [
            "nope.shop.svc.cluster.internal.",
            "www.cluster.internal.",
            "other.svc.cluster.internal.",
            "a.b.web.shop.svc.cluster.internal.",
        ] {
            let r = reply(decide(&z, &query(name, RecordType::A), false));
            assert_eq!(r.rcode, ResponseCode::NXDomain, "{name}");
            assert!(r.authoritative && r.soa.is_some(), "{name}");
        }
    }

    #[test]
    fn soa_at_the_apex() {
        let z = zone();
        let r = reply(decide(
            &z,
            &query("cluster.internal.", RecordType::SOA),
            true,
        ));
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].record_type(), RecordType::SOA);
        assert!(r.authoritative);
    }

    #[test]
    fn ptr_v4_and_v6() {
        let z = zone();
        let r = reply(decide(
            &z,
            &query("1.1.30.10.in-addr.arpa.", RecordType::PTR),
            true,
        ));
        assert_eq!(
            datas(&r),
            vec![RData::PTR(PTR(Name::from_ascii(
                "web.shop.svc.cluster.internal."
            )
            .expect("n")))]
        );
        let v6 = reverse_v6(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x10b)).to_ascii();
        let r = reply(decide(&z, &query(&v6, RecordType::PTR), true));
        assert_eq!(
            datas(&r),
            vec![RData::PTR(PTR(Name::from_ascii(
                "1.web.shop.svc.cluster.internal."
            )
            .expect("n")))]
        );
        // Unknown address inside the range: NXDOMAIN with the reverse SOA.
        let r = reply(decide(
            &z,
            &query("99.9.30.10.in-addr.arpa.", RecordType::PTR),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::NXDomain);
        assert_eq!(
            r.soa.map(|s| s.name.to_ascii()),
            Some("30.10.in-addr.arpa.".into())
        );
        // A partial name inside the range: NODATA.
        let r = reply(decide(
            &z,
            &query("9.30.10.in-addr.arpa.", RecordType::PTR),
            true,
        ));
        assert_eq!((r.rcode, r.answers.len()), (ResponseCode::NoError, 0));
        // Outside the range: forwarded.
        assert_eq!(
            decide(
                &z,
                &query("1.1.168.192.in-addr.arpa.", RecordType::PTR),
                true
            ),
            Decision::Forward
        );
    }

    #[test]
    fn outside_names_are_forwarded() {
        let z = zone();
        assert_eq!(
            decide(&z, &query("example.com.", RecordType::A), true),
            Decision::Forward
        );
        assert_eq!(
            decide(&z, &query("example.com.", RecordType::AXFR), true),
            Decision::Reply(Reply::error(ResponseCode::Refused))
        );
        assert_eq!(
            decide(
                &z,
                &query_class("version.bind.", RecordType::TXT, DNSClass::CH),
                true
            ),
            Decision::Reply(Reply::error(ResponseCode::Refused))
        );
    }

    #[test]
    fn other_classes_are_refused_in_the_domain() {
        let z = zone();
        for name in [
            "web.shop.svc.cluster.internal.",
            "nope.shop.svc.cluster.internal.",
        ] {
            let r = reply(decide(
                &z,
                &query_class(name, RecordType::A, DNSClass::CH),
                true,
            ));
            assert_eq!(r.rcode, ResponseCode::Refused);
            assert!(!r.authoritative);
        }
        let r = reply(decide(
            &z,
            &query_class(
                "web.shop.svc.cluster.internal.",
                RecordType::A,
                DNSClass::ANY,
            ),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::NoError);
        let r = reply(decide(
            &z,
            &query("cluster.internal.", RecordType::AXFR),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::Refused);
    }

    #[test]
    fn unknown_services_are_misses_only_when_the_store_may_be_asked() {
        let z = zone();
        let want = ServiceName::new("shop", "cart").expect("valid");
        for name in [
            "cart.shop.svc.cluster.internal.",
            "closest.cart.shop.svc.cluster.internal.",
            "0.cart.shop.svc.cluster.internal.",
            "_80._tcp.cart.shop.svc.cluster.internal.",
        ] {
            assert_eq!(
                decide(&z, &query(name, RecordType::A), true),
                Decision::Miss(want.clone()),
                "{name}"
            );
            let r = reply(decide(&z, &query(name, RecordType::A), false));
            assert_eq!(r.rcode, ResponseCode::NXDomain, "{name}");
        }
        // Not a valid service name: never asked.
        let r = reply(decide(
            &z,
            &query("c_rt.shop.svc.cluster.internal.", RecordType::A),
            true,
        ));
        assert_eq!(r.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn request_checks() {
        let one = [query("web.shop.svc.cluster.internal.", RecordType::A)];
        let mut meta = Metadata::new(1, MessageType::Query, OpCode::Query);
        assert!(check_request(&meta, &one).is_ok());
        assert_eq!(check_request(&meta, &[]), Err(ResponseCode::FormErr));
        let two = [one[0].clone(), one[0].clone()];
        assert_eq!(check_request(&meta, &two), Err(ResponseCode::FormErr));
        meta.op_code = OpCode::Notify;
        assert_eq!(check_request(&meta, &one), Err(ResponseCode::NotImp));
        meta.op_code = OpCode::Update;
        assert_eq!(check_request(&meta, &one), Err(ResponseCode::NotImp));
    }
}
