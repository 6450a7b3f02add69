//! Tenant isolation compiled for the packet path.
//!
//! The control plane hands the policy over as names (`isolate` and allow
//! rules `from app -> app or app/service, ports`); [`Access::compile`]
//! turns it into two small hash maps keyed by interned ids, so a new flow
//! asks [`Access::allows`] with a few integer compares and at most two
//! lookups: no string compare, no allocation, no lock. Same-app traffic
//! and everything while isolation is off is allowed before any lookup.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::map::FastMap;
use super::packet::{PacketInfo, Proto, L4};
use super::time::serialize_ms;

/// An app (tenant) interned by its table: services of the same app share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub(crate) u32);

/// One allow rule as the table builder receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The client app.
    pub from: String,
    /// `app` (all its services) or `app/service`.
    pub to: String,
    /// Inclusive destination port ranges; empty: every port and ICMP echo.
    pub ports: Vec<(u16, u16)>,
}

/// Where in [`Access::ports`] a grant's ranges are; `len == 0`: any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    start: u32,
    len: u32,
}

/// The compiled policy; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Access {
    isolate: bool,
    /// Rules given (for status), whether or not they matched this table.
    rules: usize,
    /// (client app, destination app) -> ports.
    apps: FastMap<(u32, u32), Grant>,
    /// (client app, destination service index) -> ports.
    services: FastMap<(u32, u32), Grant>,
    /// The port ranges of all grants, back to back.
    ports: Vec<(u16, u16)>,
}

impl Access {
    /// Compiles `rules`. `app_of` and `service_of` resolve names to this
    /// table's ids; a rule naming an app or service the table does not
    /// know cannot match any flow here and is left out (it still counts
    /// in [`Access::rules`]).
    pub(crate) fn compile(
        isolate: bool,
        rules: &[Rule],
        app_of: impl Fn(&str) -> Option<AppId>,
        service_of: impl Fn(&str) -> Option<u32>,
    ) -> Access {
        let mut a = Access {
            isolate,
            rules: rules.len(),
            ..Access::default()
        };
        for r in rules {
            let Some(from) = app_of(&r.from) else {
                continue;
            };
            let key = match r.to.split_once('/') {
                Some(_) => service_of(&r.to).map(|s| (true, s)),
                None => app_of(&r.to).map(|app| (false, app.0)),
            };
            let Some((is_service, to)) = key else {
                continue;
            };
            let map = if is_service {
                &mut a.services
            } else {
                &mut a.apps
            };
            // A duplicate rule (refused by the API, possible in a corrupt
            // store) widens the grant: any-port wins, else the ranges add.
            let start = a.ports.len() as u32;
            let grant = match map.get(&(from.0, to)).copied() {
                Some(g) if g.len == 0 => continue,
                _ if r.ports.is_empty() => Grant { start: 0, len: 0 },
                Some(g) => {
                    let old: Vec<(u16, u16)> =
                        a.ports[g.start as usize..(g.start + g.len) as usize].to_vec();
                    a.ports.extend(old);
                    a.ports.extend(r.ports.iter().copied());
                    Grant {
                        start,
                        len: a.ports.len() as u32 - start,
                    }
                }
                None => {
                    a.ports.extend(r.ports.iter().copied());
                    Grant {
                        start,
                        len: r.ports.len() as u32,
                    }
                }
            };
            map.insert((from.0, to), grant);
        }
        a
    }

    /// True when isolation is on.
    pub fn isolate(&self) -> bool {
        self.isolate
    }

    /// The number of allow rules given.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// May a client of app `from` open a flow to service `to_service` of
    /// app `to_app` on `port` (`None`: ICMP echo, which only a rule without
    /// ports allows)?
    #[inline]
    pub fn allows(&self, from: AppId, to_app: AppId, to_service: u32, port: Option<u16>) -> bool {
        if !self.isolate || from == to_app {
            return true;
        }
        let ok = |g: Option<&Grant>| {
            g.is_some_and(|g| {
                g.len == 0
                    || port.is_some_and(|p| {
                        self.ports
                            .get(g.start as usize..(g.start + g.len) as usize)
                            .is_some_and(|rs| rs.iter().any(|&(lo, hi)| lo <= p && p <= hi))
                    })
            })
        };
        (!self.apps.is_empty() && ok(self.apps.get(&(from.0, to_app.0))))
            || (!self.services.is_empty() && ok(self.services.get(&(from.0, to_service))))
    }
}

/// The port a policy rule matches a packet on: the destination port of
/// TCP and UDP; `None` for ICMP echo, which only rules without ports allow.
#[inline]
pub(crate) fn policy_port(info: &PacketInfo) -> Option<u16> {
    match info.l4 {
        L4::Tcp { .. } | L4::Udp { .. } => Some(info.dport),
        L4::Icmp { .. } => None,
    }
}

/// How many distinct denials [`Denials`] remembers.
pub const DENIAL_RECORD: usize = 64;

/// Which node's check refused a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The client's node, on the flow's first packet from the TUN.
    Client,
    /// The receiving (server) node, on the first packet from the tunnel.
    Server,
}

/// One recent denial as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DenialView {
    /// Which node refused: `client` or `server`.
    pub side: Side,
    /// The client's address as the node saw it: its namespace address
    /// (client side) or its instance IP (server side).
    pub client: IpAddr,
    /// The client instance (`app/service/n`), when known.
    pub client_instance: Option<String>,
    /// The destination service (`app/service`).
    pub service: String,
    /// `tcp`, `udp` or `icmp`.
    pub proto: &'static str,
    /// The destination port (`None` for ICMP).
    pub port: Option<u16>,
    /// Packets refused with this key.
    pub count: u64,
    /// Time since the last one, serialised as milliseconds.
    #[serde(rename = "last_ms", serialize_with = "serialize_ms")]
    pub last: Duration,
}

#[derive(Debug, Clone)]
struct Denial {
    side: Side,
    client: IpAddr,
    client_instance: Option<Arc<str>>,
    service: Arc<str>,
    proto: Proto,
    port: Option<u16>,
    count: u64,
    last: Instant,
}

/// The [`DENIAL_RECORD`] most recently denied (client, service, proto,
/// port) keys with a count each. A repeated denial only bumps its entry
/// (no allocation); a new key overwrites the least recently seen one.
#[derive(Debug, Clone, Default)]
pub struct Denials {
    entries: Vec<Denial>,
}

impl Denials {
    /// Records one denied packet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        side: Side,
        client: IpAddr,
        client_instance: Option<&Arc<str>>,
        service: &Arc<str>,
        proto: Proto,
        port: Option<u16>,
        now: Instant,
    ) {
        if let Some(d) = self.entries.iter_mut().find(|d| {
            d.client == client
                && d.proto == proto
                && d.port == port
                && d.side == side
                && *d.service == **service
        }) {
            d.count += 1;
            d.last = now;
            return;
        }
        let d = Denial {
            side,
            client,
            client_instance: client_instance.cloned(),
            service: Arc::clone(service),
            proto,
            port,
            count: 1,
            last: now,
        };
        if self.entries.len() < DENIAL_RECORD {
            self.entries.push(d);
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|d| d.last) {
            *oldest = d;
        }
    }

    /// Number of distinct keys held (at most [`DENIAL_RECORD`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was denied yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The record, most recent first.
    pub fn views(&self, now: Instant) -> Vec<DenialView> {
        let mut v: Vec<&Denial> = self.entries.iter().collect();
        v.sort_by_key(|d| std::cmp::Reverse(d.last));
        v.into_iter()
            .map(|d| DenialView {
                side: d.side,
                client: d.client,
                client_instance: d.client_instance.as_ref().map(|s| s.to_string()),
                service: d.service.to_string(),
                proto: d.proto.name(),
                port: d.port,
                count: d.count,
                last: now.saturating_duration_since(d.last),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(from: &str, to: &str, ports: &[(u16, u16)]) -> Rule {
        Rule {
            from: from.into(),
            to: to.into(),
            ports: ports.to_vec(),
        }
    }

    /// Apps: shop 0, bank 1, auth 2. Services: shop/web 0, bank/api 1,
    /// bank/db 2, auth/login 3.
    fn compile(isolate: bool, rules: &[Rule]) -> Access {
        Access::compile(
            isolate,
            rules,
            |a| match a {
                "shop" => Some(AppId(0)),
                "bank" => Some(AppId(1)),
                "auth" => Some(AppId(2)),
                _ => None,
            },
            |s| match s {
                "shop/web" => Some(0),
                "bank/api" => Some(1),
                "bank/db" => Some(2),
                "auth/login" => Some(3),
                _ => None,
            },
        )
    }

    const SHOP: AppId = AppId(0);
    const BANK: AppId = AppId(1);
    const AUTH: AppId = AppId(2);

    #[test]
    fn isolate_off_allows_everything() {
        let a = compile(false, &[]);
        assert!(a.allows(SHOP, BANK, 1, Some(80)));
        assert!(a.allows(SHOP, BANK, 1, None));
        assert!(!a.isolate());
    }

    #[test]
    fn same_app_always_and_other_apps_never_without_a_rule() {
        let a = compile(true, &[]);
        assert!(a.allows(SHOP, SHOP, 0, Some(80)));
        assert!(a.allows(BANK, BANK, 2, None));
        assert!(!a.allows(SHOP, BANK, 1, Some(80)));
        assert!(!a.allows(BANK, SHOP, 0, Some(80)));
        assert!(!a.allows(SHOP, BANK, 1, None));
    }

    #[test]
    fn rule_to_an_app_covers_all_its_services_one_way() {
        let a = compile(true, &[rule("shop", "bank", &[])]);
        assert!(a.allows(SHOP, BANK, 1, Some(80)));
        assert!(a.allows(SHOP, BANK, 2, Some(5432)));
        assert!(a.allows(SHOP, BANK, 2, None), "no ports: ICMP echo too");
        assert!(!a.allows(BANK, SHOP, 0, Some(80)), "rules are one-way");
        assert!(!a.allows(SHOP, AUTH, 3, Some(80)));
        assert_eq!(a.rules(), 1);
    }

    #[test]
    fn rule_to_a_service_and_port_ranges() {
        let a = compile(
            true,
            &[rule("shop", "bank/api", &[(8080, 8080), (9000, 9100)])],
        );
        assert!(a.allows(SHOP, BANK, 1, Some(8080)));
        assert!(a.allows(SHOP, BANK, 1, Some(9000)));
        assert!(a.allows(SHOP, BANK, 1, Some(9100)));
        assert!(!a.allows(SHOP, BANK, 1, Some(9101)));
        assert!(!a.allows(SHOP, BANK, 1, Some(8081)));
        assert!(!a.allows(SHOP, BANK, 1, None), "ICMP has no port");
        assert!(!a.allows(SHOP, BANK, 2, Some(8080)), "only bank/api");
        assert!(!a.allows(AUTH, BANK, 1, Some(8080)), "only from shop");
    }

    #[test]
    fn unknown_names_are_left_out_and_duplicates_widen() {
        let a = compile(
            true,
            &[
                rule("ghost", "bank", &[]),
                rule("shop", "ghost/x", &[]),
                rule("shop", "auth", &[(1, 1)]),
                rule("shop", "auth", &[(2, 2)]),
                rule("bank", "auth", &[]),
                rule("bank", "auth", &[(2, 2)]),
            ],
        );
        assert_eq!(a.rules(), 6);
        assert!(a.allows(SHOP, AUTH, 3, Some(1)));
        assert!(a.allows(SHOP, AUTH, 3, Some(2)));
        assert!(!a.allows(SHOP, AUTH, 3, Some(3)));
        assert!(a.allows(BANK, AUTH, 3, Some(3)), "any-port wins");
    }

    #[test]
    fn denial_record_counts_repeats_and_stays_bounded() {
        let mut d = Denials::default();
        let t0 = Instant::now();
        let svc: Arc<str> = "bank/api".into();
        let c = IpAddr::from([10, 18, 1, 2]);
        for i in 0..3 {
            d.record(
                Side::Client,
                c,
                None,
                &svc,
                Proto::Tcp,
                Some(80),
                t0 + Duration::from_millis(i),
            );
        }
        assert_eq!(d.len(), 1);
        assert_eq!(d.views(t0)[0].count, 3);
        // Distinct ports: the record keeps the most recent DENIAL_RECORD.
        for p in 0..(DENIAL_RECORD as u16 * 2) {
            d.record(
                Side::Server,
                c,
                None,
                &svc,
                Proto::Udp,
                Some(1000 + p),
                t0 + Duration::from_secs(1 + u64::from(p)),
            );
        }
        assert_eq!(d.len(), DENIAL_RECORD);
        let views = d.views(t0 + Duration::from_secs(1000));
        assert_eq!(
            views[0].port,
            Some(1000 + DENIAL_RECORD as u16 * 2 - 1),
            "most recent first"
        );
        assert!(
            views
                .iter()
                .all(|v| v.port >= Some(1000 + DENIAL_RECORD as u16)),
            "the oldest were overwritten"
        );
        assert!(views.iter().all(|v| v.side == Side::Server));
    }
}
