//! What `proxytun top` shows, built from the API's answers alone: no
//! socket, no terminal, no clock (the caller passes the instants), so every
//! rule here is tested with literal JSON.
//!
//! A refresh turns the six answers into a [`Snapshot`]; the previous
//! snapshot gives the rates. [`Screen`] keeps the last snapshot across
//! failed refreshes, so a lost daemon shows as a problem line over the last
//! known state instead of an empty screen.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The daemon's answers for one refresh, one per endpoint.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// `GET /v1/status`.
    pub status: Value,
    /// `GET /v1/peers`.
    pub peers: Value,
    /// `GET /v1/services`.
    pub services: Value,
    /// `GET /v1/instances`.
    pub instances: Value,
    /// `GET /v1/flows`.
    pub flows: Value,
    /// `GET /v1/counters`.
    pub counters: Value,
}

/// An answer whose shape the view cannot use: a daemon of another version,
/// or a dataplane that answered with an error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the daemon's answer to {endpoint} is not {expected}")]
pub struct ShapeError {
    /// The endpoint, e.g. `/v1/peers`.
    pub endpoint: &'static str,
    /// What was expected there.
    pub expected: &'static str,
}

/// One peer row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node's name.
    pub name: String,
    /// Its tunnel endpoint.
    pub endpoint: String,
    /// Keepalive liveness; `None` until the dataplane has an opinion.
    pub alive: Option<bool>,
    /// Last measured round-trip time.
    pub rtt_us: Option<u64>,
    /// Time since the peer was last heard from.
    pub last_heard_ms: Option<u64>,
}

/// Where one instance of a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The instance number.
    pub number: u64,
    /// The node it runs on (this node's name for a local one).
    pub node: String,
}

/// One service row: its instances and how many active flows go to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFlows {
    /// `app/service`.
    pub name: String,
    /// The round-robin ServiceIP (v4), `-` for a service only flows name.
    pub service_ip: String,
    /// Its instances, by number.
    pub instances: Vec<Placement>,
    /// Active flows to any of its instances.
    pub flows: u64,
}

/// A counter with its change since the previous refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Rated {
    /// The counter's name (a drop reason, or a traffic counter).
    pub name: String,
    /// Its value now.
    pub total: u64,
    /// Per second since the previous refresh; `None` on the first one or
    /// when the counter went down (the daemon restarted).
    pub rate: Option<f64>,
    /// True when it rose since the previous refresh: what the eye should
    /// go to.
    pub rose: bool,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// This node's name.
    pub node: String,
    /// The table's version, the counts and the store, as one line.
    pub state: String,
    /// The packet path the dataplane chose (offload or plain).
    pub path: String,
    /// The TUN device and its MTU.
    pub device: String,
    /// Active flows in the whole table.
    pub flows_active: u64,
    /// Packets from and to containers and peers, with rates.
    pub traffic: Vec<Rated>,
    /// The peers, by name.
    pub peers: Vec<Peer>,
    /// Services with their flows, by name.
    pub services: Vec<ServiceFlows>,
    /// Drop reasons that are not zero, by name.
    pub drops: Vec<Rated>,
    /// Drop reasons at zero (not listed, only counted).
    pub drops_at_zero: usize,
    /// Every counter as a dotted key, kept for the next refresh's rates.
    pub counters: BTreeMap<String, u64>,
}

/// The traffic counters of the header, with the words they are shown as.
pub const TRAFFIC: [(&str, &str); 4] = [
    ("tun_rx", "from containers"),
    ("tun_tx_tun", "to containers"),
    ("tun_tx_peer", "to peers"),
    ("tunnel_rx", "from peers"),
];

impl Snapshot {
    /// Builds the snapshot of `a`; `prev` and `elapsed` (the time since
    /// `prev` was taken) give the rates.
    pub fn build(
        a: &Answers,
        prev: Option<&Snapshot>,
        elapsed: Duration,
    ) -> Result<Snapshot, ShapeError> {
        let counters = flat_counters(&a.counters)?;
        let rated = |key: &str, name: &str| rate(key, name, &counters, prev, elapsed);
        let traffic = TRAFFIC.iter().map(|(k, _)| rated(k, k)).collect();
        let mut drops = Vec::new();
        let mut drops_at_zero = 0;
        for (key, total) in &counters {
            if let Some(reason) = key.strip_prefix("drops.") {
                if *total == 0 {
                    drops_at_zero += 1;
                } else {
                    drops.push(rated(key, reason));
                }
            }
        }
        let s = &a.status;
        let node = text(&s["node"]["name"]);
        let dp = &s["dataplane"];
        Ok(Snapshot {
            state: describe_state(s),
            path: text(&dp["path"]),
            device: format!("{} mtu {}", text(&dp["tun"]), text(&dp["mtu"])),
            flows_active: counters
                .get("flows_active")
                .copied()
                .or_else(|| dp["flows_active"].as_u64())
                .unwrap_or(0),
            traffic,
            peers: peers(&a.peers)?,
            services: services(a, &node)?,
            drops,
            drops_at_zero,
            counters,
            node,
        })
    }
}

/// `name`'s value now against `prev`'s.
fn rate(
    key: &str,
    name: &str,
    now: &BTreeMap<String, u64>,
    prev: Option<&Snapshot>,
    elapsed: Duration,
) -> Rated {
    let total = now.get(key).copied().unwrap_or(0);
    let before = prev.and_then(|p| p.counters.get(key).copied());
    let secs = elapsed.as_secs_f64();
    let (rate, rose) = match before {
        Some(b) if b <= total && secs > 0.0 => (Some((total - b) as f64 / secs), total > b),
        _ => (None, false),
    };
    Rated {
        name: name.to_owned(),
        total,
        rate,
        rose,
    }
}

/// Every numeric counter as a dotted key (`drops.no_service`).
fn flat_counters(v: &Value) -> Result<BTreeMap<String, u64>, ShapeError> {
    if !v.is_object() || v.get("error").is_some() {
        return Err(ShapeError {
            endpoint: "/v1/counters",
            expected: "an object of counters",
        });
    }
    Ok(crate::cli::render::flatten(v)
        .into_iter()
        .filter_map(|(k, text)| text.parse().ok().map(|n| (k, n)))
        .collect())
}

/// `table v5 · 2 services · 3 instances (2 local) · 1 peer · store local`.
fn describe_state(s: &Value) -> String {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let plural = |count: u64, one: &str| {
        if count == 1 {
            format!("1 {one}")
        } else {
            format!("{count} {one}s")
        }
    };
    let store = &s["store"];
    let store = match (store["backend"].as_str(), store["connected"].as_bool()) {
        (None, _) => "-".to_owned(),
        (Some(b), None) => b.to_owned(),
        (Some(b), Some(true)) => format!("{b} connected"),
        (Some(b), Some(false)) => format!("{b} UNREACHABLE"),
    };
    format!(
        "table v{} · {} · {} ({} local) · {} · store {store}",
        text(&s["table_version"]),
        plural(n("services"), "service"),
        plural(n("instances"), "instance"),
        n("local_instances"),
        plural(n("peers"), "peer"),
    )
}

fn peers(v: &Value) -> Result<Vec<Peer>, ShapeError> {
    let list = v.as_array().ok_or(ShapeError {
        endpoint: "/v1/peers",
        expected: "a list",
    })?;
    let mut out: Vec<Peer> = list
        .iter()
        .map(|p| Peer {
            name: text(&p["name"]),
            endpoint: text(&p["endpoint"]),
            alive: p["alive"].as_bool(),
            rtt_us: p["rtt_us"].as_u64(),
            last_heard_ms: p["last_heard_ms"].as_u64(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The services with their placements and active flows; a service that
/// only the flow table still names (its last instance just left) is listed
/// too, so no flow goes uncounted.
fn services(a: &Answers, node: &str) -> Result<Vec<ServiceFlows>, ShapeError> {
    let list = a.services.as_array().ok_or(ShapeError {
        endpoint: "/v1/services",
        expected: "a list",
    })?;
    let instances = a.instances.as_array().ok_or(ShapeError {
        endpoint: "/v1/instances",
        expected: "a list",
    })?;
    let flows = a.flows["flows"].as_array().ok_or(ShapeError {
        endpoint: "/v1/flows",
        expected: "an object with a list of flows",
    })?;
    let mut by_name: BTreeMap<String, ServiceFlows> = BTreeMap::new();
    for s in list {
        let name = format!("{}/{}", text(&s["app"]), text(&s["service"]));
        by_name.insert(
            name.clone(),
            ServiceFlows {
                name,
                service_ip: text(&s["rr_ip"]["v4"]),
                instances: Vec::new(),
                flows: 0,
            },
        );
    }
    for i in instances {
        let k = &i["key"];
        let name = format!("{}/{}", text(&k["app"]), text(&k["service"]));
        let Some(svc) = by_name.get_mut(&name) else {
            continue;
        };
        let p = &i["placement"];
        let on = match p["kind"].as_str() {
            Some("local") => node.to_owned(),
            _ => text(&p["node"]),
        };
        svc.instances.push(Placement {
            number: k["number"].as_u64().unwrap_or(0),
            node: on,
        });
    }
    for f in flows {
        let instance = text(&f["instance"]);
        let name = instance
            .rsplit_once('/')
            .map_or(instance.as_str(), |(svc, _)| svc);
        by_name
            .entry(name.to_owned())
            .or_insert_with(|| ServiceFlows {
                name: name.to_owned(),
                service_ip: "-".to_owned(),
                instances: Vec::new(),
                flows: 0,
            })
            .flows += 1;
    }
    let mut out: Vec<ServiceFlows> = by_name.into_values().collect();
    for s in &mut out {
        s.instances.sort_by_key(|p| p.number);
    }
    Ok(out)
}

/// A JSON scalar as text: strings bare, `null` as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why a refresh brought nothing new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer: the socket is missing, refused or timed out.
    Unreachable(String),
    /// An answer the view cannot use (an API error, an unknown shape).
    Refused(String),
}

/// What the view draws: the last good snapshot and, while refreshes fail,
/// why, with the time of the last good one.
#[derive(Debug, Clone)]
pub struct Screen {
    /// The last good snapshot; `None` until the daemon first answered.
    pub snapshot: Option<Snapshot>,
    /// The last refresh's failure, if it failed.
    pub problem: Option<Failure>,
    /// When the last good snapshot was taken.
    pub taken: Option<Instant>,
    /// Seconds between refreshes, shown in the status line.
    pub interval: Duration,
    /// How many refreshes succeeded, so a person sees the view is live.
    pub refreshes: u64,
}

impl Screen {
    /// An empty screen that refreshes every `interval`.
    pub fn new(interval: Duration) -> Self {
        Screen {
            snapshot: None,
            problem: None,
            taken: None,
            interval,
            refreshes: 0,
        }
    }

    /// Takes one refresh's outcome, fetched at `at`.
    pub fn apply(&mut self, outcome: Result<Answers, Failure>, at: Instant) {
        let answers = match outcome {
            Ok(a) => a,
            Err(f) => {
                self.problem = Some(f);
                return;
            }
        };
        let elapsed = self
            .taken
            .map_or(Duration::ZERO, |t| at.saturating_duration_since(t));
        match Snapshot::build(&answers, self.snapshot.as_ref(), elapsed) {
            Ok(s) => {
                self.snapshot = Some(s);
                self.taken = Some(at);
                self.problem = None;
                self.refreshes += 1;
            }
            Err(e) => self.problem = Some(Failure::Refused(e.to_string())),
        }
    }

    /// How old the shown snapshot is at `now`.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.taken.map(|t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
pub(super) mod tests;
