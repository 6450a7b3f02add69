//! Turning envmgr's model snapshot into the packet core's lookup table.
//!
//! Runs on the control path, once per published change, never per packet.

use std::collections::BTreeMap;

use envmgr::model::{Placement, Snapshot};

use proxytun_core::access::Rule;
use proxytun_core::handshake::PublicKey;
use proxytun_core::{Location, Table, TableBuilder, TableError};

/// Builds the dataplane's table from a snapshot of the node's view.
///
/// Instances are added in key order, so the round-robin rotation is the same
/// on every node that knows the same instances.
pub fn build(snapshot: &Snapshot) -> Result<Table, TableError> {
    let node = &snapshot.node;
    let mut b = TableBuilder::new(node.service_range, node.service_range6);
    let mut ids = BTreeMap::new();
    for (name, svc) in &snapshot.services {
        let id = b.service(&name.to_string(), svc.rr_ip.v4, svc.rr_ip.v6);
        if let Some(closest) = &svc.closest_ip {
            b.closest(id, closest.v4, closest.v6);
        }
        if let Some(ttl) = svc.affinity.client_timeout() {
            b.affinity(id, ttl);
        }
        ids.insert(name, id);
    }
    for peer in snapshot.peers.values() {
        // A key that does not parse was refused at the API, the config or
        // the store's decode; one that slipped through makes no session.
        match peer.public_key.as_deref().map(PublicKey::parse_hex) {
            Some(Ok(k)) => b.peer_with_key(peer.endpoint, k),
            Some(Err(e)) => {
                tracing::warn!(peer = %peer.name, error = %e, "peer public key ignored");
                b.peer(peer.endpoint)
            }
            None => b.peer(peer.endpoint),
        };
    }
    let policy = &snapshot.policy;
    let rules = policy
        .allow
        .iter()
        .map(|r| Rule {
            from: r.from.clone(),
            to: r.to.clone(),
            ports: r.ports.iter().map(|p| (p.lo, p.hi)).collect(),
        })
        .collect();
    b.policy(policy.isolate, rules);
    for inst in snapshot.instances.values() {
        let Some(&svc) = ids.get(&inst.key.name) else {
            tracing::warn!(instance = %inst.key, "instance of an unknown service left out of the table");
            continue;
        };
        let location = match &inst.placement {
            Placement::Local { .. } => Location::Local,
            Placement::Remote { node } => match snapshot.peers.get(node) {
                Some(peer) => Location::Remote(peer.endpoint),
                None => {
                    tracing::warn!(instance = %inst.key, node, "instance on an unknown peer left out of the table");
                    continue;
                }
            },
        };
        b.instance(
            svc,
            &inst.key.to_string(),
            inst.ns_addr.v4,
            inst.ns_addr.v6,
            inst.instance_ip.v4,
            inst.instance_ip.v6,
            location,
        );
    }
    // External clients (docs/join.md), after every VIP so none is taken;
    // they may query the resolver on the bridge's address.
    for c in snapshot.clients.values() {
        b.client(std::net::IpAddr::V4(c.address), c.endpoint);
        match c.public_key.as_deref().map(PublicKey::parse_hex) {
            Some(Ok(k)) => {
                b.client_key(c.endpoint, k);
            }
            Some(Err(e)) => {
                tracing::warn!(client = %c.name, error = %e, "client public key ignored")
            }
            None => {}
        }
    }
    if !snapshot.clients.is_empty() {
        let resolver = envmgr::plan::gateway_of(node.subnet, node.subnet6).v4;
        b.client_resolver(std::net::IpAddr::V4(resolver));
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use envmgr::model::{
        DualAddr, Instance, InstanceKey, NodeInfo, Peer, Placement, Service, ServiceName, Snapshot,
    };
    use envmgr::plan::AddressPlan;

    use super::build;
    use proxytun_core::table::Vip;
    use proxytun_core::Location;

    fn plan() -> AddressPlan {
        AddressPlan::with_default_ranges(1)
    }

    fn instance(
        plan: &AddressPlan,
        n: u32,
        ns: [u8; 4],
        iip: [u8; 4],
        placement: Placement,
    ) -> Instance {
        Instance {
            key: InstanceKey {
                name: ServiceName::new("shop", "web").expect("name"),
                number: n,
            },
            ns_addr: plan.cluster_pair(Ipv4Addr::from(ns)),
            instance_ip: plan.service_pair(Ipv4Addr::from(iip)),
            placement,
        }
    }

    fn snapshot(with_peer: bool, with_closest: bool) -> Snapshot {
        let p = plan();
        let name = ServiceName::new("shop", "web").expect("name");
        let peer_ep: SocketAddr = "192.0.2.2:50103".parse().expect("addr");
        let local = Placement::Local {
            netns: "/run/netns/c1".into(),
            pid: None,
            host_veth: "pt00000001".into(),
            ifname: "eth0".into(),
            container_id: None,
            ports: Vec::new(),
            default_route: true,
        };
        let remote = Placement::Remote { node: "b".into() };
        let insts = [
            instance(&p, 1, [10, 18, 1, 2], [10, 30, 1, 2], local),
            instance(&p, 2, [10, 18, 2, 2], [10, 30, 2, 1], remote),
        ];
        let mut peers = BTreeMap::new();
        if with_peer {
            peers.insert(
                "b".to_string(),
                Peer {
                    name: "b".into(),
                    endpoint: peer_ep,
                    public_key: None,
                },
            );
        }
        Snapshot {
            version: 3,
            node: NodeInfo {
                name: "a".into(),
                subnet: p.node_subnet(),
                subnet6: p.node_subnet6(),
                service_range: p.services,
                service_range6: p.services6,
            },
            services: BTreeMap::from([(
                name.clone(),
                Service {
                    name,
                    rr_ip: DualAddr {
                        v4: Ipv4Addr::new(10, 30, 1, 1),
                        v6: p.service_pair(Ipv4Addr::new(10, 30, 1, 1)).v6,
                    },
                    closest_ip: with_closest.then(|| p.service_pair(Ipv4Addr::new(10, 30, 1, 9))),
                    affinity: Default::default(),
                },
            )]),
            instances: insts.into_iter().map(|i| (i.key.clone(), i)).collect(),
            peers,
            policy: Default::default(),
            clients: Default::default(),
        }
    }

    #[test]
    fn snapshot_becomes_table_with_both_families_and_locations() {
        let t = build(&snapshot(true, false)).expect("valid table");
        let rr4 = IpAddr::from([10, 30, 1, 1]);
        let rr6: IpAddr = "fdff:30::101".parse().expect("v6");
        assert!(matches!(t.vip(rr4), Some(Vip::RoundRobin(_))));
        assert!(matches!(t.vip(rr6), Some(Vip::RoundRobin(_))));
        // Instance IPs pin their instance, local or remote.
        assert!(matches!(
            t.vip(IpAddr::from([10, 30, 2, 1])),
            Some(Vip::Instance(_))
        ));
        let local = t.instance_by_name("shop/web/1").expect("local instance");
        assert_eq!(local.location, Location::Local);
        let remote = t.instance_by_name("shop/web/2").expect("remote instance");
        assert_eq!(
            remote.location,
            Location::Remote("192.0.2.2:50103".parse().expect("addr"))
        );
        assert!(t.is_peer(IpAddr::from([192, 0, 2, 2])));
        assert_eq!(
            t.peer_endpoints(),
            &["192.0.2.2:50103".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(t.services().next().expect("service").closest, None);
        assert!(t.local_by_ns(IpAddr::from([10, 18, 1, 2])).is_some());
        assert!(
            t.local_by_ns(IpAddr::from([10, 18, 2, 2])).is_none(),
            "remote is not local"
        );
    }

    #[test]
    fn clients_become_members_with_the_bridge_as_their_resolver() {
        let mut snap = snapshot(true, false);
        let endpoint: SocketAddr = "198.51.100.2:50103".parse().expect("addr");
        snap.clients.insert(
            "lap".into(),
            envmgr::model::Client {
                name: "lap".into(),
                endpoint,
                address: Ipv4Addr::new(10, 30, 1, 50),
                public_key: None,
            },
        );
        let t = build(&snap).expect("valid table");
        let addr = IpAddr::from([10, 30, 1, 50]);
        assert_eq!(t.clients().endpoint(addr), Some(endpoint));
        assert!(
            t.is_peer(endpoint.ip()),
            "its datagrams pass the member check"
        );
        assert!(
            !t.peer_endpoints().contains(&endpoint),
            "but it is pinged by nobody"
        );
        assert_eq!(t.clients().resolver(), Some(IpAddr::from([10, 18, 1, 1])));
        // An address that is a VIP already is refused.
        snap.clients.get_mut("lap").expect("lap").address = Ipv4Addr::new(10, 30, 1, 1);
        assert!(build(&snap).is_err());
    }

    #[test]
    fn instance_on_an_unknown_peer_is_left_out() {
        let t = build(&snapshot(false, false)).expect("valid table");
        assert!(t.instance_by_name("shop/web/1").is_some());
        assert!(t.instance_by_name("shop/web/2").is_none());
        assert!(!t.is_peer(IpAddr::from([192, 0, 2, 2])));
    }

    #[test]
    fn closest_ip_becomes_a_closest_vip_of_both_families() {
        let t = build(&snapshot(true, true)).expect("valid table");
        let v4 = IpAddr::from([10, 30, 1, 9]);
        let v6 = IpAddr::V6(plan().service_pair(Ipv4Addr::new(10, 30, 1, 9)).v6);
        let Some(Vip::Closest(id)) = t.vip(v4) else {
            panic!("no closest VIP for {v4}");
        };
        assert_eq!(t.vip(v6), Some(Vip::Closest(id)));
        let svc = t.service(id).expect("service");
        assert_eq!(svc.name.as_ref(), "shop/web");
        assert_eq!(svc.instances.len(), 2);
        assert!(matches!(t.vip(IpAddr::from([10, 30, 1, 1])), Some(Vip::RoundRobin(s)) if s == id));
    }

    #[test]
    fn policy_is_compiled_with_interned_apps() {
        use envmgr::model::{AllowRule, Policy};
        let mut snap = snapshot(true, false);
        let p = plan();
        let bank = ServiceName::new("bank", "api").expect("name");
        snap.services.insert(
            bank.clone(),
            Service {
                name: bank,
                rr_ip: p.service_pair(Ipv4Addr::new(10, 30, 1, 20)),
                closest_ip: None,
                affinity: Default::default(),
            },
        );
        snap.policy = Policy {
            isolate: true,
            allow: vec![AllowRule {
                from: "shop".into(),
                to: "bank/api".into(),
                ports: vec!["8080".parse().expect("port")],
            }],
            ..Policy::default()
        };
        let t = build(&snap).expect("valid table");
        let id = |a: [u8; 4]| match t.vip(IpAddr::from(a)) {
            Some(Vip::RoundRobin(s)) => s,
            other => panic!("{other:?}"),
        };
        let (shop, bank) = (id([10, 30, 1, 1]), id([10, 30, 1, 20]));
        assert_ne!(t.app_of(shop), t.app_of(bank));
        assert_eq!(
            t.app_name(t.app_of(bank).expect("app")).map(|a| a.as_ref()),
            Some("bank")
        );
        assert!(t.allows(shop, shop, Some(1)));
        assert!(t.allows(shop, bank, Some(8080)));
        assert!(!t.allows(shop, bank, Some(8081)));
        assert!(!t.allows(bank, shop, Some(8080)));
        assert!(t.access().isolate());
        assert_eq!(t.access().rules(), 1);
    }
}
