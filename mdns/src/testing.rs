//! Test support shared by the crate's unit tests and its socket tests
//! (feature `testing`): a snapshot with numbered, predictable addresses.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use envmgr::model::{
    DualAddr, Instance, InstanceKey, NodeInfo, Placement, Service, ServiceName, Snapshot,
};

/// ServiceIP `k` of the default range: `10.30.<k/256>.<k%256>` and its v6 twin.
pub fn dual(k: u16) -> DualAddr {
    DualAddr {
        v4: Ipv4Addr::new(10, 30, (k >> 8) as u8, k as u8),
        v6: Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, k),
    }
}

/// A snapshot with services `(app, service, instance count)`; service
/// `i` has rr `10.30.<i>.1`, closest `.2`, instance n `.10+n`.
pub fn snapshot(version: u64, services: &[(&str, &str, u32)]) -> Snapshot {
    let mut snap = Snapshot {
        version,
        node: NodeInfo {
            name: "n1".into(),
            subnet: "10.18.1.0/24".parse().expect("net"),
            subnet6: "fdff:18::100/120".parse().expect("net"),
            service_range: "10.30.0.0/16".parse().expect("net"),
            service_range6: "fdff:30::/112".parse().expect("net"),
        },
        services: BTreeMap::new(),
        instances: BTreeMap::new(),
        peers: BTreeMap::new(),
        policy: Default::default(),
        clients: Default::default(),
    };
    for (i, (app, service, count)) in services.iter().enumerate() {
        let name = ServiceName::new(app, service).expect("valid");
        let base = ((i as u16) + 1) << 8;
        snap.services.insert(
            name.clone(),
            Service {
                name: name.clone(),
                rr_ip: dual(base + 1),
                closest_ip: Some(dual(base + 2)),
                affinity: Default::default(),
            },
        );
        for n in 0..*count {
            let key = InstanceKey {
                name: name.clone(),
                number: n,
            };
            snap.instances.insert(
                key.clone(),
                Instance {
                    key,
                    ns_addr: DualAddr {
                        v4: Ipv4Addr::new(10, 18, 1, 2),
                        v6: "fdff:18::102".parse().expect("addr"),
                    },
                    instance_ip: dual(base + 10 + n as u16),
                    placement: Placement::Remote { node: "n2".into() },
                },
            );
        }
    }
    snap
}
