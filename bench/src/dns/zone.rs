//! The synthetic cluster the resolver serves, and the queries the load
//! tool asks with the answer each one must get.
//!
//! Service `s` is `svc<s>` of app `app<s / 10>`; its round-robin ServiceIP
//! is the `1 + s`-th address of the ServiceIP range, its closest ServiceIP
//! the `1 + N + s`-th, and its instances follow after all of those, so every
//! expected answer is computed from the numbering alone, independently of
//! the resolver.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use envmgr::plan::AddressPlan;

use crate::control::tables::SplitMix;
use crate::synth::Synthetic;
use testbed::dnswire::{self as wire, Query, TYPE_A, TYPE_AAAA};

/// Instances per service (spread over [`PEERS`] peers): enough for SRV and
/// instance names to exist, the resolver's hot path does not read them.
pub const PER_SERVICE: u32 = 3;
/// Peer nodes the instances run on.
const PEERS: u32 = 2;

/// Which names the queries ask, and how often: mostly the round-robin name,
/// as `curl http://web.shop` does, with AAAA and `closest.` mixed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `A` of `<service>.<app>.svc.<domain>`.
    RrA,
    /// `AAAA` of `<service>.<app>.svc.<domain>`.
    RrAaaa,
    /// `A` of `closest.<service>.<app>.svc.<domain>`.
    ClosestA,
    /// `AAAA` of `closest.<service>.<app>.svc.<domain>`.
    ClosestAaaa,
}

impl Kind {
    /// All kinds, in template order (template `4 * s + k` is service `s`,
    /// kind `k`).
    pub const ALL: [Kind; 4] = [Kind::RrA, Kind::RrAaaa, Kind::ClosestA, Kind::ClosestAaaa];

    /// The query mix in percent, in [`Kind::ALL`] order.
    pub const MIX_PERCENT: [u64; 4] = [60, 20, 10, 10];

    /// The record type as dnsperf writes it.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::RrA | Kind::ClosestA => "A",
            Kind::RrAaaa | Kind::ClosestAaaa => "AAAA",
        }
    }
}

/// The synthetic cluster: `services` services in an address plan that
/// holds them.
#[derive(Debug, Clone)]
pub struct Zone {
    synth: Synthetic,
    domain: String,
}

/// A zone is its synthetic cluster, with DNS names and queries on top.
impl std::ops::Deref for Zone {
    type Target = Synthetic;

    fn deref(&self) -> &Synthetic {
        &self.synth
    }
}

impl Zone {
    /// A zone of `services` services under `domain`; the default ServiceIP
    /// range (`10.30.0.0/16`) when they fit, else a `/10`.
    pub fn new(services: u32, domain: &str) -> Result<Zone> {
        if services == 0 {
            bail!("--services must be at least 1");
        }
        let mut plan = AddressPlan::with_default_ranges(0);
        let need = u64::from(services) * u64::from(2 + PER_SERVICE) + 2;
        if need >= 1 << (32 - plan.services.prefix_len()) {
            plan.services = "10.64.0.0/10".parse().context("services")?;
            plan.services6 = "fdff:64::/106".parse().context("services6")?;
        }
        if need >= 1 << (32 - plan.services.prefix_len()) {
            bail!(
                "{services} services do not fit the ServiceIP range {}",
                plan.services
            );
        }
        plan.validate().context("the bench's address plan")?;
        Ok(Zone {
            synth: Synthetic {
                plan,
                services,
                per_service: PER_SERVICE,
                peers: PEERS,
                node: "bench",
                peer_name: |p| format!("peer{p}"),
                peer_endpoint: |p| SocketAddr::from((Ipv4Addr::new(192, 0, 2, p as u8), 50103)),
            },
            domain: domain.trim_end_matches('.').to_owned(),
        })
    }

    /// The DNS name a query of `kind` asks for service `s` (no final dot).
    pub fn qname(&self, s: u32, kind: Kind) -> String {
        let n = self.name(s);
        let base = format!("{}.{}.svc.{}", n.service, n.app, self.domain);
        match kind {
            Kind::RrA | Kind::RrAaaa => base,
            Kind::ClosestA | Kind::ClosestAaaa => format!("closest.{base}"),
        }
    }

    /// The address a query of `kind` for service `s` must be answered with.
    pub fn expected(&self, s: u32, kind: Kind) -> IpAddr {
        match kind {
            Kind::RrA => self.rr(s).v4.into(),
            Kind::RrAaaa => self.rr(s).v6.into(),
            Kind::ClosestA => self.closest(s).v4.into(),
            Kind::ClosestAaaa => self.closest(s).v6.into(),
        }
    }

    /// Every query template: `4 * services`, template `4 * s + k` asks
    /// service `s` with kind `Kind::ALL[k]`.
    pub fn templates(&self) -> Result<Vec<Query>> {
        let mut out = Vec::with_capacity(self.services as usize * 4);
        for s in 0..self.services {
            for kind in Kind::ALL {
                let qtype = match kind.type_name() {
                    "A" => TYPE_A,
                    _ => TYPE_AAAA,
                };
                out.push(wire::Query::new(
                    &self.qname(s, kind),
                    qtype,
                    self.expected(s, kind),
                )?);
            }
        }
        Ok(out)
    }
}

/// A reproducible random sequence of `len` template indices: a uniformly
/// random service, the kind drawn with [`Kind::MIX_PERCENT`].
pub fn order(services: u32, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix(seed);
    (0..len)
        .map(|_| {
            let s = rng.below(u64::from(services)) as u32;
            let mut roll = rng.below(100);
            let mut k = 0;
            for (i, p) in Kind::MIX_PERCENT.iter().enumerate() {
                if roll < *p {
                    k = i;
                    break;
                }
                roll -= p;
            }
            4 * s + k as u32
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn expected_answers_match_the_snapshot() {
        let z = Zone::new(25, "cluster.internal").unwrap();
        let snap = z.snapshot();
        assert_eq!(snap.services.len(), 25);
        assert_eq!(snap.instances.len(), 25 * PER_SERVICE as usize);
        for s in [0, 7, 24] {
            let svc = &snap.services[&z.name(s)];
            assert_eq!(z.expected(s, Kind::RrA), IpAddr::from(svc.rr_ip.v4));
            assert_eq!(z.expected(s, Kind::RrAaaa), IpAddr::from(svc.rr_ip.v6));
            let c = svc.closest_ip.unwrap();
            assert_eq!(z.expected(s, Kind::ClosestA), IpAddr::from(c.v4));
            assert_eq!(z.expected(s, Kind::ClosestAaaa), IpAddr::from(c.v6));
        }
        assert_eq!(z.qname(12, Kind::RrA), "svc12.app1.svc.cluster.internal");
        assert_eq!(
            z.qname(3, Kind::ClosestAaaa),
            "closest.svc3.app0.svc.cluster.internal"
        );
        // Every address is distinct: a wrong answer cannot look right.
        let mut all: Vec<IpAddr> = (0..25)
            .flat_map(|s| Kind::ALL.map(|k| z.expected(s, k)))
            .collect();
        all.extend(
            snap.instances
                .values()
                .map(|i| IpAddr::from(i.instance_ip.v4)),
        );
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn big_zones_move_to_a_bigger_range() {
        let z = Zone::new(100_000, "cluster.internal").unwrap();
        assert!(z.snapshot().node.service_range.prefix_len() < 16);
        assert!(Zone::new(0, "x").is_err());
    }

    #[test]
    fn order_follows_the_mix() {
        let o = order(50, 100_000, 7);
        assert_eq!(o, order(50, 100_000, 7));
        let mut kinds = [0usize; 4];
        for t in &o {
            assert!(*t < 200);
            kinds[(*t % 4) as usize] += 1;
        }
        for (k, p) in Kind::MIX_PERCENT.iter().enumerate() {
            let share = kinds[k] as f64 / o.len() as f64 * 100.0;
            assert!((share - *p as f64).abs() < 1.5, "kind {k}: {share}%");
        }
    }
}
