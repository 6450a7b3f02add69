//! The `/metrics` collector: at each scrape it reads the daemon's existing
//! counters (the packet core's atomics, the I/O shell's, the resolver's),
//! the peers' health, the latest snapshot and the store's state, and
//! writes them as OpenMetrics text. Nothing is counted twice and nothing
//! runs per packet: a scrape is a few dozen relaxed loads, one short hold
//! of the core's lock to copy the peer health, and one string.
//!
//! Gathering ([`Readings::gather`]) is separate from writing
//! ([`Readings::encode`]) so the text can be checked for known numbers
//! without a running dataplane.

use envmgr::model::Snapshot;
use mdns::DnsStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::MetricsSources;
use crate::core::{CountersSnapshot, PeerHealthView};
use crate::shell::io_loop::IoReadings;

/// The version the `proxytun_build_info` gauge reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The content type of `/metrics` (OpenMetrics text, which Prometheus asks for).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Sizes of the node's table, from the latest snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReadings {
    /// The snapshot's version.
    pub version: u64,
    /// Services known to the node.
    pub services: u64,
    /// Instances attached on this node.
    pub instances_local: u64,
    /// Instances on other nodes.
    pub instances_remote: u64,
    /// Peer nodes.
    pub peers: u64,
}

impl TableReadings {
    /// Counts what `snap` holds.
    pub fn read(snap: &Snapshot) -> Self {
        let local = snap.instances.values().filter(|i| i.is_local()).count() as u64;
        Self {
            version: snap.version,
            services: snap.services.len() as u64,
            instances_local: local,
            instances_remote: snap.instances.len() as u64 - local,
            peers: snap.peers.len() as u64,
        }
    }
}

/// One peer endpoint's health with the node name the snapshot gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReading {
    /// The peer's node name; empty when no peer of the snapshot has this endpoint.
    pub name: String,
    /// Its health as the keepalives measured it.
    pub health: PeerHealthView,
}

/// The store backend and whether it is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReadings {
    /// `local` or `etcd`.
    pub backend: String,
    /// Whether the store can be written now (always true for `local`).
    pub connected: bool,
}

impl StoreReadings {
    /// Reads `Manager::store_status()`'s JSON: `backend`, and `connected`
    /// for a cluster store; a store without `connected` is a local file.
    pub fn from_json(v: &serde_json::Value) -> Self {
        Self {
            backend: v
                .get("backend")
                .and_then(|b| b.as_str())
                .unwrap_or("unknown")
                .to_owned(),
            connected: v.get("connected").and_then(|c| c.as_bool()).unwrap_or(true),
        }
    }
}

/// Everything one scrape reports, as plain numbers.
#[derive(Debug, Clone)]
pub struct Readings {
    /// The packet core's counters.
    pub counters: CountersSnapshot,
    /// The I/O shell's counters and gauges.
    pub io: IoReadings,
    /// Each peer endpoint's health.
    pub peers: Vec<PeerReading>,
    /// Table sizes.
    pub table: TableReadings,
    /// The resolver's counters, when it runs.
    pub dns: Option<DnsStats>,
    /// The store.
    pub store: StoreReadings,
}

impl Readings {
    /// Reads every source once.
    pub fn gather(sources: &MetricsSources) -> Self {
        let snap = sources.snapshots.borrow().clone();
        let peers = sources
            .ctrl
            .peers()
            .into_iter()
            .map(|health| PeerReading {
                name: snap
                    .peers
                    .values()
                    .find(|p| p.endpoint == health.endpoint)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                health,
            })
            .collect();
        Readings {
            counters: sources.counters.snapshot(),
            io: IoReadings::read(&sources.io),
            peers,
            table: TableReadings::read(&snap),
            dns: sources.dns.as_ref().map(|d| d.stats()),
            store: StoreReadings::from_json(&(sources.store)()),
        }
    }

    /// Writes every family; see `docs/metrics.md` for what each means.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        let io = &self.io;

        gauge_labelled(
            enc,
            "proxytun_build_info",
            "Always 1; the version label says which proxytun runs",
            &[(vec![("version", VERSION.to_owned())], 1)],
        )?;

        // Traffic: per device (the TUN, the tunnel) and direction.
        let traffic = |tun_rx, tun_tx, tunnel_rx, tunnel_tx| {
            [
                (dev("tun", "rx"), tun_rx),
                (dev("tun", "tx"), tun_tx),
                (dev("tunnel", "rx"), tunnel_rx),
                (dev("tunnel", "tx"), tunnel_tx),
            ]
        };
        counter_labelled(
            enc,
            "proxytun_packets",
            "Packets by device and direction: tun rx read from the TUN, tun tx written to it, tunnel rx datagrams from peers (keepalives included), tunnel tx packets forwarded to peers (before segmenting)",
            &traffic(c.tun_rx, c.tun_tx_tun, c.tunnel_rx, c.tun_tx_peer),
        )?;
        counter_labelled(
            enc,
            "proxytun_bytes",
            "Bytes by device and direction: IP packet bytes for tun rx, tun tx and tunnel tx; datagram bytes with the tunnel header for tunnel rx",
            &traffic(
                c.tun_rx_bytes,
                c.tun_tx_tun_bytes,
                c.tunnel_rx_bytes,
                c.tun_tx_peer_bytes,
            ),
        )?;
        counter(
            enc,
            "proxytun_tunnel_datagrams_sent",
            "Data datagrams the socket accepted for peers, after segmenting super-packets (keepalives not included)",
            io.tunnel_tx,
        )?;
        counter(
            enc,
            "proxytun_tunnel_gso_sends",
            "Send system calls that carried more than one datagram (UDP GSO)",
            io.gso_sends,
        )?;

        let drops: Vec<_> = c
            .drops
            .iter()
            .map(|(reason, n)| (vec![("reason", (*reason).to_owned())], *n))
            .collect();
        counter_labelled(
            enc,
            "proxytun_drops",
            "Packets the dataplane dropped, by reason (every reason listed, zero included)",
            &drops,
        )?;
        let io_errors = [
            ("tun_read", io.tun_read_errors),
            ("tun_write", io.tun_write_errors),
            ("tunnel_send", io.send_errors),
            ("tunnel_recv", io.recv_errors),
            ("offload", io.offload_errors),
        ]
        .map(|(op, n)| (vec![("op", op.to_owned())], n));
        counter_labelled(
            enc,
            "proxytun_io_errors",
            "Failed system calls of the dataplane threads, by operation",
            &io_errors,
        )?;

        counter(
            enc,
            "proxytun_flows_created",
            "Flows installed (first packets of connections to a ServiceIP)",
            c.flows_created,
        )?;
        counter(
            enc,
            "proxytun_flows_cut_by_policy",
            "Flows and reply entries removed because a policy change forbade them",
            c.flows_cut_by_policy,
        )?;
        gauge(
            enc,
            "proxytun_flows_active",
            "Flows in the flow table",
            io.flows_active,
        )?;
        gauge(
            enc,
            "proxytun_reply_cache_entries",
            "Entries of the reply-address cache (clients on other nodes served here)",
            io.replies_active,
        )?;
        counter(
            enc,
            "proxytun_misses_lost",
            "First packets to unknown ServiceIPs the cluster sync could not be told of (its queue was full)",
            io.misses_lost,
        )?;

        let t = &self.table;
        gauge(
            enc,
            "proxytun_table_version",
            "Version of the snapshot the node's table was built from",
            t.version,
        )?;
        gauge(
            enc,
            "proxytun_table_services",
            "Services in the node's table",
            t.services,
        )?;
        gauge_labelled(
            enc,
            "proxytun_table_instances",
            "Instances in the node's table, by location (local: attached on this node)",
            &[
                (vec![("location", "local".to_owned())], t.instances_local),
                (vec![("location", "remote".to_owned())], t.instances_remote),
            ],
        )?;
        gauge(
            enc,
            "proxytun_table_peers",
            "Peer nodes in the node's table",
            t.peers,
        )?;

        let labels = |p: &PeerReading| {
            vec![
                ("peer", p.name.clone()),
                ("endpoint", p.health.endpoint.to_string()),
            ]
        };
        let up: Vec<_> = self
            .peers
            .iter()
            .map(|p| (labels(p), u64::from(p.health.alive)))
            .collect();
        gauge_labelled(
            enc,
            "proxytun_peer_up",
            "1 while the peer answers keepalives within the peer timeout (or was never pinged yet), else 0",
            &up,
        )?;
        let rtt: Vec<_> = self
            .peers
            .iter()
            .filter_map(|p| {
                p.health
                    .rtt_us
                    .map(|us| (labels(p), us as f64 / 1_000_000.0))
            })
            .collect();
        {
            let mut m = enc.encode_descriptor(
                "proxytun_peer_rtt",
                "Smoothed keepalive round-trip time to the peer (absent until measured)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (l, v) in &rtt {
                ConstGauge::new(*v).encode(m.encode_family(l)?)?;
            }
        }
        let pings: Vec<_> = self
            .peers
            .iter()
            .map(|p| (labels(p), p.health.pings_sent))
            .collect();
        counter_labelled(
            enc,
            "proxytun_peer_pings_sent",
            "Keepalive pings sent to the peer",
            &pings,
        )?;
        let pongs: Vec<_> = self
            .peers
            .iter()
            .map(|p| (labels(p), p.health.pongs_received))
            .collect();
        counter_labelled(
            enc,
            "proxytun_peer_pongs_received",
            "Keepalive pongs received from the peer",
            &pongs,
        )?;
        counter_labelled(
            enc,
            "proxytun_keepalives",
            "Keepalive messages by kind and direction, all peers together (ping tx: written for a peer; ping rx: answered; pong rx: accepted as an RTT sample)",
            &[
                (ka("ping", "tx"), c.keepalive_pings_tx),
                (ka("ping", "rx"), c.keepalive_pings_rx),
                (ka("pong", "rx"), c.keepalive_pongs_rx),
            ],
        )?;
        counter(
            enc,
            "proxytun_keepalive_datagrams_sent",
            "Keepalive pings and pongs the socket accepted",
            io.keepalive_tx,
        )?;

        if let Some(d) = &self.dns {
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
        }

        gauge_labelled(
            enc,
            "proxytun_store_info",
            "Always 1; the backend label names the store (local or etcd)",
            &[(vec![("backend", self.store.backend.clone())], 1)],
        )?;
        gauge(
            enc,
            "proxytun_store_connected",
            "1 while the store can be written (etcd: a live session holding the node's lease; local: always)",
            u64::from(self.store.connected),
        )?;
        Ok(())
    }

    /// The whole `/metrics` text, `# EOF` included.
    pub fn to_text(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(self.clone())));
        render(&registry)
    }
}

/// The labels of a traffic sample.
fn dev(device: &str, direction: &str) -> Vec<(&'static str, String)> {
    vec![
        ("device", device.to_owned()),
        ("direction", direction.to_owned()),
    ]
}

/// The labels of a keepalive sample.
fn ka(kind: &str, direction: &str) -> Vec<(&'static str, String)> {
    vec![
        ("kind", kind.to_owned()),
        ("direction", direction.to_owned()),
    ]
}

/// Labels of one sample: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = ConstCounter::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = ConstGauge::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn counter_labelled(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_labelled(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Readings taken already (for [`Readings::to_text`]).
#[derive(Debug)]
struct Fixed(Readings);

impl Collector for Fixed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(&mut encoder)
    }
}

/// The live collector: reads [`MetricsSources`] at every scrape.
#[derive(Debug)]
pub struct SourcesCollector(pub MetricsSources);

impl Collector for SourcesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Readings::gather(&self.0).encode(&mut encoder)
    }
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::core::{Counters, DropReason};
    use crate::shell::io_loop::IoCounters;
    use std::sync::atomic::Ordering;

    /// The text's samples: full sample name with labels -> value.
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// The declared families: name -> type.
    fn families(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n.to_owned(), t.to_owned())
            })
            .collect()
    }

    fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }

    fn readings(dns: bool) -> Readings {
        let c = Counters::default();
        set(&c.tun_rx, 10);
        set(&c.tun_tx_tun, 4);
        set(&c.tun_tx_peer, 5);
        set(&c.tunnel_rx, 7);
        set(&c.tun_rx_bytes, 1000);
        set(&c.tun_tx_tun_bytes, 400);
        set(&c.tun_tx_peer_bytes, 500);
        set(&c.tunnel_rx_bytes, 756);
        set(&c.flows_created, 3);
        set(&c.keepalive_pings_tx, 11);
        set(&c.keepalive_pings_rx, 12);
        set(&c.keepalive_pongs_rx, 9);
        c.count_drop(DropReason::NoService);
        c.count_drop(DropReason::NoService);
        c.count_drop(DropReason::Fragment);
        let io = IoCounters::default();
        set(&io.tunnel_tx, 6);
        set(&io.flows_active, 2);
        set(&io.replies_active, 1);
        set(&io.send_errors, 8);
        set(&io.keepalive_tx, 23);
        let peer = |ep: &str, alive, rtt_us| PeerHealthView {
            endpoint: ep.parse().unwrap(),
            alive,
            rtt_us,
            last_heard_ms: None,
            pings_sent: 4,
            pongs_received: 3,
        };
        Readings {
            counters: c.snapshot(),
            io: IoReadings::read(&io),
            peers: vec![
                PeerReading {
                    name: "b".into(),
                    health: peer("10.0.0.2:50103", true, Some(1500)),
                },
                PeerReading {
                    name: String::new(),
                    health: peer("[fd00::3]:50103", false, None),
                },
            ],
            table: TableReadings {
                version: 42,
                services: 2,
                instances_local: 1,
                instances_remote: 3,
                peers: 1,
            },
            dns: dns.then(|| DnsStats {
                queries_udp: 20,
                queries_tcp: 1,
                noerror: 15,
                nxdomain: 4,
                servfail: 2,
                forwarded: 3,
                forward_failed: 1,
                ..DnsStats::default()
            }),
            store: StoreReadings {
                backend: "etcd".into(),
                connected: false,
            },
        }
    }

    #[test]
    fn every_family_with_its_exact_values() {
        let text = readings(true).to_text().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let f = families(&text);
        for (name, ty) in [
            ("proxytun_build_info", "gauge"),
            ("proxytun_packets", "counter"),
            ("proxytun_bytes", "counter"),
            ("proxytun_drops", "counter"),
            ("proxytun_io_errors", "counter"),
            ("proxytun_flows_created", "counter"),
            ("proxytun_flows_cut_by_policy", "counter"),
            ("proxytun_flows_active", "gauge"),
            ("proxytun_reply_cache_entries", "gauge"),
            ("proxytun_table_services", "gauge"),
            ("proxytun_table_instances", "gauge"),
            ("proxytun_table_peers", "gauge"),
            ("proxytun_peer_up", "gauge"),
            ("proxytun_peer_rtt_seconds", "gauge"),
            ("proxytun_dns_queries", "counter"),
            ("proxytun_dns_answers", "counter"),
            ("proxytun_store_connected", "gauge"),
        ] {
            assert_eq!(f.get(name).map(String::as_str), Some(ty), "{name}\n{text}");
        }
        let s = samples(&text);
        let want = |k: &str, v: &str| {
            assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}\n{text}");
        };
        want(
            &format!("proxytun_build_info{{version=\"{VERSION}\"}}"),
            "1",
        );
        want(
            "proxytun_packets_total{device=\"tun\",direction=\"rx\"}",
            "10",
        );
        want(
            "proxytun_packets_total{device=\"tun\",direction=\"tx\"}",
            "4",
        );
        want(
            "proxytun_packets_total{device=\"tunnel\",direction=\"rx\"}",
            "7",
        );
        want(
            "proxytun_packets_total{device=\"tunnel\",direction=\"tx\"}",
            "5",
        );
        want(
            "proxytun_bytes_total{device=\"tun\",direction=\"rx\"}",
            "1000",
        );
        want(
            "proxytun_bytes_total{device=\"tun\",direction=\"tx\"}",
            "400",
        );
        want(
            "proxytun_bytes_total{device=\"tunnel\",direction=\"rx\"}",
            "756",
        );
        want(
            "proxytun_bytes_total{device=\"tunnel\",direction=\"tx\"}",
            "500",
        );
        want("proxytun_tunnel_datagrams_sent_total", "6");
        want("proxytun_drops_total{reason=\"no_service\"}", "2");
        want("proxytun_drops_total{reason=\"fragment\"}", "1");
        for r in DropReason::ALL {
            assert!(
                s.contains_key(&format!("proxytun_drops_total{{reason=\"{}\"}}", r.name())),
                "{r}"
            );
        }
        want("proxytun_io_errors_total{op=\"tunnel_send\"}", "8");
        want("proxytun_io_errors_total{op=\"tun_read\"}", "0");
        want("proxytun_flows_created_total", "3");
        want("proxytun_flows_active", "2");
        want("proxytun_reply_cache_entries", "1");
        want("proxytun_table_version", "42");
        want("proxytun_table_services", "2");
        want("proxytun_table_instances{location=\"local\"}", "1");
        want("proxytun_table_instances{location=\"remote\"}", "3");
        want("proxytun_table_peers", "1");
        want(
            "proxytun_peer_up{peer=\"b\",endpoint=\"10.0.0.2:50103\"}",
            "1",
        );
        want(
            "proxytun_peer_up{peer=\"\",endpoint=\"[fd00::3]:50103\"}",
            "0",
        );
        want(
            "proxytun_peer_rtt_seconds{peer=\"b\",endpoint=\"10.0.0.2:50103\"}",
            "0.0015",
        );
        assert!(
            !s.keys()
                .any(|k| k.starts_with("proxytun_peer_rtt_seconds{peer=\"\"")),
            "an unmeasured peer has no RTT sample"
        );
        want(
            "proxytun_peer_pings_sent_total{peer=\"b\",endpoint=\"10.0.0.2:50103\"}",
            "4",
        );
        want(
            "proxytun_keepalives_total{kind=\"ping\",direction=\"tx\"}",
            "11",
        );
        want(
            "proxytun_keepalives_total{kind=\"pong\",direction=\"rx\"}",
            "9",
        );
        want("proxytun_keepalive_datagrams_sent_total", "23");
        want("proxytun_dns_queries_total{transport=\"udp\"}", "20");
        want("proxytun_dns_queries_total{transport=\"tcp\"}", "1");
        want("proxytun_dns_answers_total{rcode=\"NOERROR\"}", "15");
        want("proxytun_dns_answers_total{rcode=\"NXDOMAIN\"}", "4");
        want("proxytun_dns_answers_total{rcode=\"SERVFAIL\"}", "2");
        want("proxytun_dns_answers_total{rcode=\"REFUSED\"}", "0");
        want("proxytun_dns_forwarded_total", "3");
        want(
            "proxytun_dns_forward_failures_total{cause=\"timeout\"}",
            "1",
        );
        want("proxytun_store_info{backend=\"etcd\"}", "1");
        want("proxytun_store_connected", "0");
    }

    #[test]
    fn no_resolver_no_dns_families() {
        let text = readings(false).to_text().unwrap();
        assert!(!text.contains("proxytun_dns_"), "{text}");
        assert!(text.contains("proxytun_packets_total"));
    }

    #[test]
    fn store_json() {
        let local =
            StoreReadings::from_json(&serde_json::json!({"backend": "local", "location": "/x"}));
        assert_eq!((local.backend.as_str(), local.connected), ("local", true));
        let etcd =
            StoreReadings::from_json(&serde_json::json!({"backend": "etcd", "connected": false}));
        assert_eq!((etcd.backend.as_str(), etcd.connected), ("etcd", false));
    }
}
