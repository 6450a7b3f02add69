//! The resolver's families: queries, answers by response code, forwards
//! and their failures, truncations and name misses.

use mdns::DnsStats;
use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{counter, counter_labelled};

/// Writes the resolver's families from its counters.
pub(super) fn encode(enc: &mut DescriptorEncoder<'_>, d: &DnsStats) -> Result<(), std::fmt::Error> {
    counter_labelled(
        enc,
        "proxytun_dns_queries",
        "DNS queries received by the node's resolver, by transport",
        &[
            (vec![("transport", "udp".to_owned())], d.queries_udp),
            (vec![("transport", "tcp".to_owned())], d.queries_tcp),
        ],
    )?;
    let rcodes = [
        ("NOERROR", d.noerror),
        ("NXDOMAIN", d.nxdomain),
        ("SERVFAIL", d.servfail),
        ("FORMERR", d.formerr),
        ("REFUSED", d.refused),
        ("NOTIMP", d.notimp),
    ]
    .map(|(rcode, n)| (vec![("rcode", rcode.to_owned())], n));
    counter_labelled(
        enc,
        "proxytun_dns_answers",
        "DNS answers sent by the node's resolver, by response code",
        &rcodes,
    )?;
    counter(
        enc,
        "proxytun_dns_forwarded",
        "Queries for names outside the cluster domain sent on to an upstream",
        d.forwarded,
    )?;
    counter_labelled(
            enc,
            "proxytun_dns_forward_failures",
            "Forwarded queries answered SERVFAIL, by cause (timeout: no upstream answered; rejected: too many in flight)",
            &[
                (vec![("cause", "timeout".to_owned())], d.forward_failed),
                (vec![("cause", "rejected".to_owned())], d.forward_rejected),
            ],
        )?;
    counter(
        enc,
        "proxytun_dns_truncated",
        "UDP answers cut short with the TC bit set",
        d.truncated,
    )?;
    counter(
        enc,
        "proxytun_dns_name_misses",
        "Unknown service names passed to the cluster store for a lookup",
        d.name_misses,
    )?;
    Ok(())
}
