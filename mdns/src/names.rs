//! Classifying a query name relative to the cluster domain (pure, no I/O).
//!
//! The zone answers exact names with one hash lookup; this module is what
//! runs when that lookup misses, to tell "unknown name inside the domain"
//! (NXDOMAIN, or ask the cluster store) from "SRV with a port label" (built
//! on the fly), "reverse name inside a ServiceIP range" (NXDOMAIN or NODATA
//! from the zone) and "everything else" (forwarded upstream). It works on the
//! query's lowercased labels in place: nothing is allocated.

use std::net::{Ipv4Addr, Ipv6Addr};

use envmgr::model::ServiceName;
use hickory_proto::rr::{LowerName, Name};
use ipnet::{Ipv4Net, Ipv6Net};

/// The labels under `svc.<domain>` that name one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLabels<'a> {
    /// The application label.
    pub app: &'a [u8],
    /// The service label.
    pub service: &'a [u8],
}

impl ServiceLabels<'_> {
    /// The `app/service` these labels name, if both are valid labels
    /// (the cluster store is only asked about names that could exist).
    pub fn service_name(&self) -> Option<ServiceName> {
        let app = std::str::from_utf8(self.app).ok()?;
        let service = std::str::from_utf8(self.service).ok()?;
        ServiceName::new(app, service).ok()
    }
}

/// What a name inside the cluster domain refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainName<'a> {
    /// `<domain>` itself: the SOA.
    Apex,
    /// `svc.<domain>`: an empty non-terminal.
    SvcRoot,
    /// `<app>.svc.<domain>`: an empty non-terminal when the app has services.
    App(&'a [u8]),
    /// `<service>.<app>.svc.<domain>`: the round-robin ServiceIP and SRV.
    Service(ServiceLabels<'a>),
    /// `closest.<service>.<app>.svc.<domain>`: the closest ServiceIP.
    Closest(ServiceLabels<'a>),
    /// `<n>.<service>.<app>.svc.<domain>`: instance n's instance IP.
    Instance(ServiceLabels<'a>, u32),
    /// `_tcp.<service>...` or `_udp.<service>...`: an empty non-terminal.
    SrvProto(ServiceLabels<'a>),
    /// `_<port>._<tcp|udp>.<service>...`: SRV; `port` is the numeric label,
    /// or 0 for a symbolic one (`_http`).
    Srv(ServiceLabels<'a>, u16),
    /// Anything else inside the domain: it does not exist.
    Unknown,
}

impl<'a> DomainName<'a> {
    /// The service a service-form name refers to.
    pub fn service(&self) -> Option<ServiceLabels<'a>> {
        match *self {
            Self::Service(s)
            | Self::Closest(s)
            | Self::Instance(s, _)
            | Self::SrvProto(s)
            | Self::Srv(s, _) => Some(s),
            _ => None,
        }
    }
}

/// Which reverse tree a reverse name is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `in-addr.arpa`.
    V4,
    /// `ip6.arpa`.
    V6,
}

/// A reverse name under one of our ServiceIP reverse zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReverseName {
    /// A full address (4 octets, 32 nibbles): PTR or NXDOMAIN.
    Addr(Family),
    /// A shorter, well-formed name at or below the reverse apex: NODATA.
    Partial(Family),
    /// Malformed or too long: NXDOMAIN.
    Unknown(Family),
}

/// Where a query name belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass<'a> {
    /// Inside the cluster domain: answered from the zone.
    Domain(DomainName<'a>),
    /// Inside a ServiceIP reverse zone: answered from the zone.
    Reverse(ReverseName),
    /// Everything else: forwarded upstream.
    Outside,
}

/// The reverse zone that covers a v4 range: the octets of its prefix,
/// rounded down to a whole octet (a /16 gives `30.10.in-addr.arpa`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReverseZone {
    /// The apex's address labels, most significant first (`[b"10", b"30"]`).
    labels: Vec<Vec<u8>>,
    /// How many address labels a full name has (4 or 32).
    full: usize,
}

impl ReverseZone {
    fn v4(net: Ipv4Net) -> Self {
        let octets = net.network().octets();
        let n = usize::from(net.prefix_len() / 8);
        Self {
            labels: octets[..n]
                .iter()
                .map(|o| o.to_string().into_bytes())
                .collect(),
            full: 4,
        }
    }

    fn v6(net: Ipv6Net) -> Self {
        let bits = u128::from(net.network());
        let n = usize::from(net.prefix_len() / 4);
        Self {
            labels: (0..n)
                .map(|i| {
                    let nibble = (bits >> (124 - 4 * i)) & 0xf;
                    format!("{nibble:x}").into_bytes()
                })
                .collect(),
            full: 32,
        }
    }

    /// The apex as a DNS name (`30.10.in-addr.arpa.`).
    fn apex(&self, family: Family) -> Name {
        let tail: &[&[u8]] = match family {
            Family::V4 => &[b"in-addr", b"arpa"],
            Family::V6 => &[b"ip6", b"arpa"],
        };
        let labels = self
            .labels
            .iter()
            .rev()
            .map(Vec::as_slice)
            .chain(tail.iter().copied());
        let mut name = Name::from_labels(labels).unwrap_or_else(|_| Name::root());
        name.set_fqdn(true);
        name
    }
}

/// The domain and ranges a name is classified against; built once per zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRules {
    /// The domain's labels, lowercased, leftmost first.
    domain: Vec<Vec<u8>>,
    rev4: ReverseZone,
    rev6: ReverseZone,
}

/// True when `label` is a canonical decimal number (no sign, no leading
/// zero), so every number has exactly one name.
fn decimal(label: &[u8]) -> Option<u32> {
    if label.is_empty() || label.len() > 10 || (label.len() > 1 && label[0] == b'0') {
        return None;
    }
    let mut n: u64 = 0;
    for &b in label {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).ok()
}

fn is_hex_nibble(label: &[u8]) -> bool {
    matches!(label, [b'0'..=b'9' | b'a'..=b'f'])
}

impl NameRules {
    /// Rules for `domain` (lowercased here) and the ServiceIP ranges.
    pub fn new(domain: &Name, range4: Ipv4Net, range6: Ipv6Net) -> Self {
        Self {
            domain: domain.iter().map(|l| l.to_ascii_lowercase()).collect(),
            rev4: ReverseZone::v4(range4),
            rev6: ReverseZone::v6(range6),
        }
    }

    /// How many labels the domain has.
    pub fn domain_labels(&self) -> usize {
        self.domain.len()
    }

    /// The apex of the v4 or v6 reverse zone.
    pub fn reverse_apex(&self, family: Family) -> Name {
        match family {
            Family::V4 => self.rev4.apex(family),
            Family::V6 => self.rev6.apex(family),
        }
    }

    /// Where `name` (lowercased, as hickory hands it over) belongs.
    pub fn classify<'a>(&self, name: &'a LowerName) -> NameClass<'a> {
        let labels: &Name = name;
        let n = labels.num_labels() as usize;
        let d = self.domain.len();
        if n >= d
            && labels
                .iter()
                .skip(n - d)
                .eq(self.domain.iter().map(Vec::as_slice))
        {
            return NameClass::Domain(Self::domain_name(labels, n - d));
        }
        if n >= 2 {
            let mut tail = labels.iter().skip(n - 2);
            let (second, last) = (tail.next(), tail.next());
            if last == Some(b"arpa".as_slice()) {
                let rev = match second {
                    Some(b"in-addr") => Some((Family::V4, &self.rev4)),
                    Some(b"ip6") => Some((Family::V6, &self.rev6)),
                    _ => None,
                };
                if let Some((family, zone)) = rev {
                    if let Some(r) = Self::reverse_name(labels, n - 2, family, zone) {
                        return NameClass::Reverse(r);
                    }
                }
            }
        }
        NameClass::Outside
    }

    /// The meaning of the `p` labels left of the domain.
    fn domain_name(labels: &Name, p: usize) -> DomainName<'_> {
        if p == 0 {
            return DomainName::Apex;
        }
        // Labels left of the domain, rightmost (next to the domain) first.
        let mut rev = labels.iter().take(p).rev();
        if rev.next() != Some(b"svc".as_slice()) {
            return DomainName::Unknown;
        }
        let app = rev.next();
        let service = rev.next();
        let first = rev.next();
        let second = rev.next();
        let svc = |app, service| ServiceLabels { app, service };
        match (p, app, service, first, second) {
            (1, ..) => DomainName::SvcRoot,
            (2, Some(app), ..) => DomainName::App(app),
            (3, Some(app), Some(service), ..) => DomainName::Service(svc(app, service)),
            (4, Some(app), Some(service), Some(first), _) => {
                let s = svc(app, service);
                match first {
                    b"closest" => DomainName::Closest(s),
                    b"_tcp" | b"_udp" => DomainName::SrvProto(s),
                    _ => match decimal(first) {
                        Some(n) => DomainName::Instance(s, n),
                        None => DomainName::Unknown,
                    },
                }
            }
            (5, Some(app), Some(service), Some(proto), Some(port)) => {
                if !matches!(proto, b"_tcp" | b"_udp") {
                    return DomainName::Unknown;
                }
                match port.split_first() {
                    Some((b'_', digits)) => {
                        let port = decimal(digits)
                            .and_then(|p| u16::try_from(p).ok())
                            .unwrap_or(0);
                        DomainName::Srv(svc(app, service), port)
                    }
                    _ => DomainName::Unknown,
                }
            }
            _ => DomainName::Unknown,
        }
    }

    /// A reverse name with `k` address labels, if it is under our zone.
    fn reverse_name(
        labels: &Name,
        k: usize,
        family: Family,
        zone: &ReverseZone,
    ) -> Option<ReverseName> {
        let z = zone.labels.len();
        if k < z {
            return None;
        }
        // Address labels, most significant first.
        let mut addr = labels.iter().take(k).rev();
        if !addr
            .by_ref()
            .take(z)
            .eq(zone.labels.iter().map(Vec::as_slice))
        {
            return None;
        }
        if k > zone.full {
            return Some(ReverseName::Unknown(family));
        }
        let well_formed = addr.all(|l| match family {
            Family::V4 => decimal(l).is_some_and(|o| o <= 255),
            Family::V6 => is_hex_nibble(l),
        });
        Some(match (well_formed, k == zone.full) {
            (false, _) => ReverseName::Unknown(family),
            (true, true) => ReverseName::Addr(family),
            (true, false) => ReverseName::Partial(family),
        })
    }
}

/// The reverse name of a v4 address (`7.1.30.10.in-addr.arpa.`).
pub fn reverse_v4(addr: Ipv4Addr) -> Name {
    let mut name = Name::from(addr);
    name.set_fqdn(true);
    name
}

/// The reverse name of a v6 address (32 nibbles under `ip6.arpa.`).
pub fn reverse_v6(addr: Ipv6Addr) -> Name {
    let mut name = Name::from(addr);
    name.set_fqdn(true);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> NameRules {
        NameRules::new(
            &Name::from_ascii("cluster.internal.").expect("name"),
            "10.30.0.0/16".parse().expect("net"),
            "fdff:30::/112".parse().expect("net"),
        )
    }

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).expect("name"))
    }

    fn class(s: &str) -> String {
        let name = lower(s);
        format!("{:?}", rules().classify(&name))
    }

    fn svc<'a>(app: &'a str, service: &'a str) -> ServiceLabels<'a> {
        ServiceLabels {
            app: app.as_bytes(),
            service: service.as_bytes(),
        }
    }

    #[test]
    fn domain_forms() {
        let r = rules();
        let check = |s: &str, want: DomainName<'_>| {
            let name = lower(s);
            assert_eq!(r.classify(&name), NameClass::Domain(want), "{s}");
        };
        check("cluster.internal.", DomainName::Apex);
        check("svc.cluster.internal.", DomainName::SvcRoot);
        check("shop.svc.cluster.internal.", DomainName::App(b"shop"));
        check(
            "web.shop.svc.cluster.internal.",
            DomainName::Service(svc("shop", "web")),
        );
        check(
            "closest.web.shop.svc.cluster.internal.",
            DomainName::Closest(svc("shop", "web")),
        );
        check(
            "3.web.shop.svc.cluster.internal.",
            DomainName::Instance(svc("shop", "web"), 3),
        );
        check(
            "0.web.shop.svc.cluster.internal.",
            DomainName::Instance(svc("shop", "web"), 0),
        );
        check(
            "_tcp.web.shop.svc.cluster.internal.",
            DomainName::SrvProto(svc("shop", "web")),
        );
        check(
            "_8080._tcp.web.shop.svc.cluster.internal.",
            DomainName::Srv(svc("shop", "web"), 8080),
        );
        check(
            "_53._udp.web.shop.svc.cluster.internal.",
            DomainName::Srv(svc("shop", "web"), 53),
        );
        check(
            "_http._tcp.web.shop.svc.cluster.internal.",
            DomainName::Srv(svc("shop", "web"), 0),
        );
        check(
            "_99999._tcp.web.shop.svc.cluster.internal.",
            DomainName::Srv(svc("shop", "web"), 0),
        );
        for unknown in [
            "www.cluster.internal.",
            "web.shop.cluster.internal.",
            "03.web.shop.svc.cluster.internal.",
            "x.web.shop.svc.cluster.internal.",
            "_8080._sctp.web.shop.svc.cluster.internal.",
            "8080._tcp.web.shop.svc.cluster.internal.",
            "a.b.c.d.e.svc.cluster.internal.",
            "99999999999.web.shop.svc.cluster.internal.",
        ] {
            check(unknown, DomainName::Unknown);
        }
    }

    #[test]
    fn case_insensitive_through_lower_name() {
        assert_eq!(
            class("WEB.Shop.SVC.Cluster.Internal."),
            class("web.shop.svc.cluster.internal.")
        );
    }

    #[test]
    fn service_name_validates_labels() {
        assert_eq!(
            svc("shop", "web").service_name(),
            Some(ServiceName::new("shop", "web").expect("valid"))
        );
        assert_eq!(svc("shop", "_web").service_name(), None);
    }

    #[test]
    fn outside_names_are_forwarded() {
        for s in [
            "example.com.",
            "internal.",
            "cluster.internal.example.",
            "xcluster.internal.",
            ".",
            "1.1.168.192.in-addr.arpa.",
            "10.in-addr.arpa.",
            "in-addr.arpa.",
            "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        ] {
            assert_eq!(class(s), "Outside", "{s}");
        }
    }

    #[test]
    fn reverse_names_in_the_service_ranges() {
        let r = rules();
        let check = |s: &str, want: ReverseName| {
            let name = lower(s);
            assert_eq!(r.classify(&name), NameClass::Reverse(want), "{s}");
        };
        check("7.1.30.10.in-addr.arpa.", ReverseName::Addr(Family::V4));
        check("1.30.10.in-addr.arpa.", ReverseName::Partial(Family::V4));
        check("30.10.in-addr.arpa.", ReverseName::Partial(Family::V4));
        check("x.1.30.10.in-addr.arpa.", ReverseName::Unknown(Family::V4));
        check(
            "256.1.30.10.in-addr.arpa.",
            ReverseName::Unknown(Family::V4),
        );
        check(
            "1.7.1.30.10.in-addr.arpa.",
            ReverseName::Unknown(Family::V4),
        );
        let v6 = reverse_v6("fdff:30::107".parse().expect("addr"));
        let name = LowerName::from(v6);
        assert_eq!(
            r.classify(&name),
            NameClass::Reverse(ReverseName::Addr(Family::V6))
        );
        check(
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.f.f.d.f.ip6.arpa.",
            ReverseName::Partial(Family::V6),
        );
        check(
            "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.f.f.d.f.ip6.arpa.",
            ReverseName::Unknown(Family::V6),
        );
    }

    #[test]
    fn reverse_apexes() {
        let r = rules();
        assert_eq!(r.reverse_apex(Family::V4).to_ascii(), "30.10.in-addr.arpa.");
        assert_eq!(
            r.reverse_apex(Family::V6).to_ascii(),
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.f.f.d.f.ip6.arpa."
        );
        assert_eq!(
            reverse_v4("10.30.1.7".parse().expect("addr")).to_ascii(),
            "7.1.30.10.in-addr.arpa."
        );
    }
}
