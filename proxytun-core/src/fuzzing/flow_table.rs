//! Target `flow_table`: the flow table against a plain `HashMap` model.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::fixture::fixture_now;
use crate::flow::{Activity, Dir, Flow, FlowKey, FlowTable};
use crate::packet::Proto;
use crate::table::Location;

/// One operation of the `flow_table` target.
#[derive(Debug, Clone, Copy)]
enum Op {
    Insert(Flow4),
    Lookup(FlowKey),
    Remove(usize),
    Retain(u8),
}

/// A flow drawn from a deliberately tiny space, so keys collide often.
#[derive(Debug, Clone, Copy)]
struct Flow4 {
    key: FlowKey,
    client_iip: IpAddr,
    instance_ns: IpAddr,
}

fn small_addr(b: u8) -> IpAddr {
    if b & 0x80 == 0 {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, b & 3))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(b & 3)))
    }
}

fn small_key(b: &[u8; 4]) -> FlowKey {
    let fam = b[0] & 0x80;
    FlowKey {
        proto: match b[0] & 3 {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            _ => Proto::Icmp,
        },
        src: small_addr(fam | b[1]),
        dst: small_addr(fam | (b[1] >> 2)),
        sport: u16::from(b[2] & 3),
        dport: u16::from(b[3] & 3),
    }
}

fn ops(data: &[u8]) -> Vec<Op> {
    let mut out = Vec::new();
    for c in data.chunks_exact(6) {
        let k = small_key(&[c[1], c[2], c[3], c[4]]);
        let fam = c[1] & 0x80;
        out.push(match c[0] & 3 {
            0 | 1 => Op::Insert(Flow4 {
                key: k,
                client_iip: small_addr(fam | c[5]),
                instance_ns: small_addr(fam | (c[5] >> 2)),
            }),
            2 if c[0] & 4 == 0 => Op::Lookup(k),
            2 => Op::Remove(usize::from(c[5] & 15)),
            _ => Op::Retain(c[5]),
        });
    }
    out
}

/// Target `flow_table`: a sequence of insert, lookup, remove and retain on
/// [`FlowTable`], replayed on a model (a `HashMap` from key to flow id and
/// a map of live flows); after every operation both agree on the length,
/// on what every key of every flow ever inserted resolves to, and every
/// slot holds the flow the model says.
pub fn flow_table(data: &[u8]) {
    let now = fixture_now();
    let mut table = FlowTable::default();
    // Model: id -> (fwd, rev, slot); key -> (id, dir).
    let mut live: HashMap<u64, (FlowKey, FlowKey, usize)> = HashMap::new();
    let mut keys: HashMap<FlowKey, (u64, Dir)> = HashMap::new();
    let mut seen: Vec<FlowKey> = Vec::new();
    let mut next_id = 0u64;
    for op in ops(data) {
        match op {
            Op::Insert(f) => {
                let flow = Flow {
                    key: f.key,
                    client_iip: f.client_iip,
                    instance: Arc::from(format!("app/svc/{next_id}")),
                    instance_ns: f.instance_ns,
                    location: Location::Local,
                    activity: Activity::new(f.key.proto, now),
                };
                let (fwd, rev) = (flow.key, flow.reverse_key());
                let slot = table.insert(flow);
                for k in [fwd, rev] {
                    if let Some((old, _)) = keys.get(&k).copied() {
                        model_remove(&mut live, &mut keys, old);
                    }
                }
                let id = next_id;
                next_id += 1;
                live.insert(id, (fwd, rev, slot));
                keys.insert(fwd, (id, Dir::Forward));
                keys.insert(rev, (id, Dir::Reverse));
                seen.extend([fwd, rev]);
            }
            Op::Lookup(k) => {
                let got = table.lookup(&k);
                let want = keys.get(&k).map(|(id, d)| (live[id].2, *d));
                assert_eq!(got, want, "lookup {k:?}");
            }
            Op::Remove(slot) => {
                let got = table.remove(slot).map(|f| f.key);
                let id = live.iter().find(|(_, v)| v.2 == slot).map(|(id, _)| *id);
                let want = id.map(|id| live[&id].0);
                if let Some(id) = id {
                    model_remove(&mut live, &mut keys, id);
                }
                assert_eq!(got, want, "remove slot {slot}");
            }
            Op::Retain(mask) => {
                let drop_of = |k: &FlowKey| (k.sport ^ k.dport) as u8 & mask != 0;
                table.retain(|f| !drop_of(&f.key));
                let gone: Vec<u64> = live
                    .iter()
                    .filter(|(_, v)| drop_of(&v.0))
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    model_remove(&mut live, &mut keys, id);
                }
            }
        }
        assert_eq!(table.len(), live.len());
        assert_eq!(table.is_empty(), live.is_empty());
    }
    // The whole table against the model once, at the end: every key ever
    // used, every live slot. (After each step it made the target quadratic
    // in the sequence length for no more coverage: each step's own result
    // is checked where it happens.)
    assert_eq!(table.iter().count(), live.len());
    for (fwd, rev, slot) in live.values() {
        let f = table.get(*slot).map(|f| (f.key, f.reverse_key()));
        assert_eq!(f, Some((*fwd, *rev)), "slot {slot}");
    }
    for k in &seen {
        let want = keys.get(k).map(|(id, d)| (live[id].2, *d));
        assert_eq!(table.lookup(k), want, "key {k:?}");
    }
}

fn model_remove(
    live: &mut HashMap<u64, (FlowKey, FlowKey, usize)>,
    keys: &mut HashMap<FlowKey, (u64, Dir)>,
    id: u64,
) {
    if let Some((fwd, rev, _)) = live.remove(&id) {
        for k in [fwd, rev] {
            if keys.get(&k).is_some_and(|(i, _)| *i == id) {
                keys.remove(&k);
            }
        }
    }
}
