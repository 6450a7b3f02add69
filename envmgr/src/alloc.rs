//! Address, number and interface-name allocation: pure functions, no state.
//!
//! The manager owns the table; these functions only answer "what is the
//! lowest free X given what is used", so every rule about which addresses are
//! never handed out lives here and is unit-tested on its own. Allocation is
//! deterministic (lowest free first) so a node that replays the same requests
//! hands out the same addresses, and an operator can predict them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::InstanceKey;

/// The lowest address of `net` that is not in `used`, skipping the network
/// and broadcast addresses and every address in `reserved`.
///
/// Returns `None` when the range is used up.
pub fn lowest_free_addr(
    net: Ipv4Net,
    reserved: &[Ipv4Addr],
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    if last - first < 2 {
        // A /31 or /32 has no host between network and broadcast.
        return None;
    }
    (first + 1..last)
        .map(Ipv4Addr::from)
        .find(|a| !reserved.contains(a) && !used.contains(a))
}

/// The lowest free namespace address on the node subnet: never the network
/// address, the gateway (the first host, the bridge's address) or the
/// broadcast address.
pub fn lowest_free_ns_addr(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    lowest_free_addr(subnet, &[gateway], used)
}

/// The lowest free ServiceIP or instance IP in this node's block of the
/// ServiceIP range (or an external client's address in its range): never
/// the block's network or broadcast address.
pub fn lowest_free_service_addr(block: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    lowest_free_addr(block, &[], used)
}

/// The lowest instance number not in `used`; `None` only if all 2^32 are taken.
pub fn lowest_free_number(used: &BTreeSet<u32>) -> Option<u32> {
    // `used` is sorted: the first gap is the answer.
    let mut want = 0u32;
    for &n in used {
        if n != want {
            return Some(want);
        }
        want = want.checked_add(1)?;
    }
    Some(want)
}

/// FNV-1a (32 bit): a tiny, stable hash, so veth names do not change between
/// releases or platforms the way `std`'s randomly keyed hasher would.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The host end's veth name for an instance: `pt` + 8 hex digits (10 bytes,
/// under the kernel's 15-byte limit), stable for a given key so a restart
/// finds the same interface.
///
/// On a clash with a name in `taken`, the key is salted with `#1`, `#2`, ...
/// until the name is free, so the result depends only on the key and the set
/// of names already in use.
pub fn host_veth_name(key: &InstanceKey, taken: &BTreeSet<String>) -> String {
    let base = key.to_string();
    let mut salt = 0u32;
    loop {
        let input = if salt == 0 {
            base.clone()
        } else {
            format!("{base}#{salt}")
        };
        let name = format!("pt{:08x}", fnv1a32(input.as_bytes()));
        if !taken.contains(&name) {
            return name;
        }
        salt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceName;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn ns_addr_skips_network_gateway_and_broadcast() {
        let subnet = net("10.18.3.0/24");
        let mut used = BTreeSet::new();
        assert_eq!(lowest_free_ns_addr(subnet, &used), Some(ip("10.18.3.2")));
        used.insert(ip("10.18.3.2"));
        used.insert(ip("10.18.3.4"));
        assert_eq!(lowest_free_ns_addr(subnet, &used), Some(ip("10.18.3.3")));
        used.insert(ip("10.18.3.3"));
        assert_eq!(lowest_free_ns_addr(subnet, &used), Some(ip("10.18.3.5")));
        // Fill everything up to .253: .254 is the last host, .255 is broadcast.
        for i in 5..=253 {
            used.insert(Ipv4Addr::new(10, 18, 3, i));
        }
        assert_eq!(lowest_free_ns_addr(subnet, &used), Some(ip("10.18.3.254")));
        used.insert(ip("10.18.3.254"));
        assert_eq!(lowest_free_ns_addr(subnet, &used), None);
    }

    #[test]
    fn tiny_subnets() {
        // /30: network .0, gateway .1, host .2, broadcast .3.
        let s = net("10.18.0.4/30");
        assert_eq!(
            lowest_free_ns_addr(s, &BTreeSet::new()),
            Some(ip("10.18.0.6"))
        );
        assert_eq!(
            lowest_free_ns_addr(s, &BTreeSet::from([ip("10.18.0.6")])),
            None
        );
        assert_eq!(
            lowest_free_service_addr(net("10.30.0.0/31"), &BTreeSet::new()),
            None
        );
        assert_eq!(
            lowest_free_service_addr(net("10.30.0.0/32"), &BTreeSet::new()),
            None
        );
    }

    #[test]
    fn service_addr_skips_network_and_broadcast_only() {
        let block = net("10.30.1.0/24");
        let mut used = BTreeSet::new();
        assert_eq!(
            lowest_free_service_addr(block, &used),
            Some(ip("10.30.1.1"))
        );
        used.insert(ip("10.30.1.1"));
        // Addresses outside the block do not matter.
        used.insert(ip("10.30.0.2"));
        assert_eq!(
            lowest_free_service_addr(block, &used),
            Some(ip("10.30.1.2"))
        );
        for i in 2..=254 {
            used.insert(Ipv4Addr::new(10, 30, 1, i));
        }
        assert_eq!(lowest_free_service_addr(block, &used), None);
    }

    #[test]
    fn client_addr_stays_in_its_range() {
        let range = net("10.30.255.252/30");
        let mut used = BTreeSet::from([ip("10.30.255.251"), ip("10.30.0.1")]);
        assert_eq!(
            lowest_free_service_addr(range, &used),
            Some(ip("10.30.255.253"))
        );
        used.insert(ip("10.30.255.253"));
        assert_eq!(
            lowest_free_service_addr(range, &used),
            Some(ip("10.30.255.254"))
        );
        used.insert(ip("10.30.255.254"));
        assert_eq!(lowest_free_service_addr(range, &used), None, "no broadcast");
    }

    #[test]
    fn numbers_fill_gaps_first() {
        assert_eq!(lowest_free_number(&BTreeSet::new()), Some(0));
        assert_eq!(lowest_free_number(&BTreeSet::from([0, 1, 2])), Some(3));
        assert_eq!(lowest_free_number(&BTreeSet::from([0, 2, 3])), Some(1));
        assert_eq!(lowest_free_number(&BTreeSet::from([1, 2])), Some(0));
        assert_eq!(
            lowest_free_number(&BTreeSet::from([0, 7, u32::MAX])),
            Some(1)
        );
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn veth_names_are_stable_short_and_avoid_clashes() {
        let key = InstanceKey {
            name: ServiceName::new("shop", "web").expect("name"),
            number: 0,
        };
        let a = host_veth_name(&key, &BTreeSet::new());
        assert_eq!(a, format!("pt{:08x}", fnv1a32(b"shop/web/0")));
        assert_eq!(a.len(), 10);
        assert_eq!(a, host_veth_name(&key, &BTreeSet::new()));
        let other = InstanceKey {
            number: 1,
            ..key.clone()
        };
        assert_ne!(a, host_veth_name(&other, &BTreeSet::new()));
        // Clash: a different but deterministic name.
        let taken = BTreeSet::from([a.clone()]);
        let b = host_veth_name(&key, &taken);
        assert_ne!(a, b);
        assert_eq!(b, format!("pt{:08x}", fnv1a32(b"shop/web/0#1")));
        assert_eq!(b, host_veth_name(&key, &taken));
        let taken2 = BTreeSet::from([a, b.clone()]);
        let c = host_veth_name(&key, &taken2);
        assert!(c != b && c.starts_with("pt") && c.len() == 10);
    }
}
