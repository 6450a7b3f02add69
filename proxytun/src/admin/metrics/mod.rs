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
//!
//! One file per family of series, written in this order: `traffic`
//! (packets, bytes, drops, I/O errors, flows), `table`, `peers`
//! (health and keepalives), `dns`, `store`, `health` (`/ready` and
//! `/live` as gauges); `encode` holds the writers they share.

mod dns;
mod encode;
mod health;
mod oakestra;
mod peers;
mod store;
mod table;
#[cfg(test)]
mod tests;
mod traffic;

use mdns::DnsStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::sources::{MetricsSources, Readiness};
use crate::shell::shared::IoReadings;
use encode::gauge_labelled;
pub use health::HealthReadings;
pub use oakestra::OakestraReadings;
pub use peers::PeerReading;
use proxytun_core::CountersSnapshot;
pub use store::StoreReadings;
pub use table::TableReadings;

/// The version the `proxytun_build_info` gauge reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The content type of `/metrics` (OpenMetrics text, which Prometheus asks for).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    /// The Oakestra backend's drop counters (that backend only).
    pub oakestra: Option<OakestraReadings>,
    /// What `/ready` and `/live` answer.
    pub health: HealthReadings,
}

impl Readings {
    /// Reads every source once, and the readiness flag.
    pub fn gather(sources: &MetricsSources, ready: &Readiness) -> Self {
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
        let store = (sources.store)();
        Readings {
            counters: sources.counters.snapshot(),
            io: IoReadings::read(&sources.io),
            peers,
            table: TableReadings::read(&snap),
            dns: sources.dns.as_ref().map(|d| d.stats()),
            store: StoreReadings::from_json(&store),
            oakestra: OakestraReadings::from_json(&store),
            health: HealthReadings {
                ready: ready.get(),
                live: sources.ctrl.threads_alive(),
            },
        }
    }

    /// Writes every family; see `docs/metrics.md` for what each means.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauge_labelled(
            enc,
            "proxytun_build_info",
            "Always 1; the version label says which proxytun runs",
            &[(vec![("version", VERSION.to_owned())], 1)],
        )?;

        traffic::encode(enc, &self.counters, &self.io)?;
        self.table.encode(enc)?;
        peers::encode(enc, &self.peers, &self.counters, &self.io)?;
        if let Some(d) = &self.dns {
            dns::encode(enc, d)?;
        }
        self.store.encode(enc)?;
        if let Some(o) = &self.oakestra {
            o.encode(enc)?;
        }
        self.health.encode(enc)?;
        Ok(())
    }

    /// The whole `/metrics` text, `# EOF` included.
    pub fn to_text(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(self.clone())));
        render(&registry)
    }
}

/// Readings taken already (for [`Readings::to_text`]).
#[derive(Debug)]
struct Fixed(Readings);

impl Collector for Fixed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(&mut encoder)
    }
}

/// The live collector: reads [`MetricsSources`] and the flag `/ready`
/// reports at every scrape.
#[derive(Debug)]
pub struct SourcesCollector {
    /// The daemon's counters, peers, snapshot, resolver and store.
    pub sources: MetricsSources,
    /// The readiness flag (the same one `/ready` answers from).
    pub ready: Readiness,
}

impl Collector for SourcesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Readings::gather(&self.sources, &self.ready).encode(&mut encoder)
    }
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
