//! The Oakestra backend of the cluster control plane: this node speaks
//! Oakestra's table protocol over MQTT, as the Go NetManager does, and the
//! cluster's answers become the same [`ClusterView`] the etcd backend
//! builds (docs/oakestra.md).
//!
//! One client task owns the MQTT session (`client.rs`): it connects as the
//! worker's client id, subscribes the node's result topics and every
//! interest's `jobs/{job}/updates_available` after each (re)connect, and
//! hands what arrives to everyone else as [`Event`]s on a broadcast
//! channel. The manager's claims (`registry.rs`) and the sync task
//! (`sync.rs`) publish queries and read the answers from there. The
//! protocol's messages are `wire.rs`, the answers' checks and the view
//! `view.rs`, the subnet and its cache `subnet.rs`; those are pure.

mod client;
mod registry;
pub mod subnet;
mod sync;
#[cfg(test)]
mod tests;
pub mod view;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;

use crate::model::{ServiceName, Snapshot};
use crate::oakestra::JobBook;
use crate::plan::AddressPlan;
use crate::registry::{ClusterView, Registry};
use subnet::{plan_for, CachedSubnet};
use view::Ctx;
use wire::{Drop, Leaf, TableAnswer, TableQuery, Topics};

pub use registry::OakestraRegistry;

/// How long a table query waits for its answer (the Go NetManager's 5 s).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one subnet request waits before it is sent again (Go: 10 s).
pub const SUBNET_TIMEOUT: Duration = Duration::from_secs(10);

/// What the backend needs to know; the daemon fills it from `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OakestraSettings {
    /// The worker's id: the MQTT client id and `{id}` of its topics.
    pub client_id: String,
    /// The broker's host (name or address).
    pub broker_host: String,
    /// The broker's port (Oakestra's cluster broker: 10003).
    pub broker_port: u16,
    /// This node's underlay address and tunnel port: `host_ip` and
    /// `host_port` of its deploy notices, and how it tells its own
    /// instances from others in answers.
    pub me: SocketAddr,
    /// This node's public key with per-node tunnel keys (`tunnel.keys =
    /// "node"`): published in its presence, since Oakestra's answers carry
    /// no keys.
    pub public_key: Option<String>,
    /// How long a table query waits for its answer.
    pub query_timeout: Duration,
    /// Interests unused this long expire (`store.interest_idle_secs`).
    pub interest_idle: Option<Duration>,
}

impl OakestraSettings {
    /// `host:port` for messages.
    pub fn broker(&self) -> String {
        if self.broker_host.contains(':') {
            format!("[{}]:{}", self.broker_host, self.broker_port)
        } else {
            format!("{}:{}", self.broker_host, self.broker_port)
        }
    }
}

/// Why the backend could not start or join.
#[derive(Debug, thiserror::Error)]
pub enum OakestraError {
    /// A setting is wrong; the message names the key.
    #[error("{0}")]
    Config(String),
    /// The broker or the cluster did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The cluster's subnet does not fit the plan.
    #[error("{0}")]
    Subnet(String),
}

/// What the client task hands on.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A (re)connect: subscriptions are back; updates may have been missed.
    Connected,
    /// A table answer (well-formed JSON; not yet checked); `solicited`
    /// when its key or job was asked (and so no longer in flight).
    Answer {
        /// The answer.
        answer: Arc<TableAnswer>,
        /// It answers a query of this node.
        solicited: bool,
    },
    /// `jobs/{job}/updates_available`.
    Update(String),
    /// Another proxytun worker's presence (`proxytun/workers/{id}`) came
    /// or went: [`Inner::workers`] changed.
    Workers,
}

/// The backend's health for `proxytun status`.
#[derive(Debug, Clone, Default)]
pub struct OakestraStatus {
    /// The MQTT session is up.
    pub connected: bool,
    /// Jobs this node has an interest in.
    pub interests: usize,
    /// Messages dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// The node's subnet, once known.
    pub subnet: Option<String>,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// Another proxytun worker, from its presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its tunnel endpoint.
    pub endpoint: SocketAddr,
    /// Its public key (per-node tunnel keys), checked.
    pub public_key: Option<String>,
}

/// What the tasks and the registry share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) settings: OakestraSettings,
    pub(crate) topics: Topics,
    pub(crate) client: AsyncClient,
    pub(crate) book: JobBook,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) subnet: watch::Sender<Option<wire::SubnetAnswer>>,
    /// The `jobs/{job}/updates_available` topics to subscribe on connect.
    pub(crate) subscriptions: Mutex<BTreeSet<String>>,
    /// Query keys asked and when: one query in flight per key, and what an
    /// answer must match to be taken.
    pub(crate) asked: Mutex<HashMap<String, Instant>>,
    pub(crate) ctx: Mutex<Option<Ctx>>,
    /// The other proxytun workers' tunnel endpoints, by client id, from
    /// their retained presences: peers even when they host no job this
    /// node uses. Kept here, not in the sync task, since the broker
    /// delivers retained presences once, at subscribe, possibly before
    /// the sync task runs.
    pub(crate) workers: Mutex<BTreeMap<String, Worker>>,
    pub(crate) status: Mutex<OakestraStatus>,
    warned: Mutex<HashMap<Drop, Instant>>,
}

/// Locks, surviving a panicked holder.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn status(&self) -> MutexGuard<'_, OakestraStatus> {
        lock(&self.status)
    }

    pub(crate) fn connected(&self) -> bool {
        self.status().connected
    }

    /// Counts a dropped message and warns (once per reason per 10 s).
    pub(crate) fn dropped(&self, reason: Drop, what: &str) {
        *self.status().dropped.entry(reason.as_str()).or_insert(0) += 1;
        let now = Instant::now();
        let mut w = lock(&self.warned);
        let quiet = w
            .get(&reason)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10));
        if !quiet {
            w.insert(reason, now);
            tracing::warn!(%reason, "oakestra: broker message dropped: {what}");
        }
    }

    /// Publishes under `nodes/{id}/net/`, without waiting (a full queue
    /// while the broker is away is an error).
    pub(crate) fn publish(&self, leaf: Leaf, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .try_publish(self.topics.publish(leaf), QoS::AtLeastOnce, false, payload)
            .map_err(|e| {
                format!(
                    "publish to the Oakestra broker at {}: {e}",
                    self.settings.broker()
                )
            })
    }

    /// Sends a table query unless one for the same key is in flight
    /// (`force` sends it anyway). True when sent.
    pub(crate) fn ask(&self, q: &TableQuery, force: bool) -> bool {
        let now = Instant::now();
        let key = q.key().to_owned();
        {
            let mut asked = lock(&self.asked);
            let busy = asked
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < self.settings.query_timeout);
            if busy && !force {
                return false;
            }
            if asked.len() > 1024 {
                asked.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
            }
            asked.insert(key, now);
        }
        match self.publish(Leaf::TableQuery, wire::to_payload(q)) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("oakestra: table query {q:?} not sent: {e}");
                false
            }
        }
    }

    /// True (and no longer in flight) when `key` was asked.
    pub(crate) fn take_asked(&self, key: &str) -> bool {
        lock(&self.asked).remove(key).is_some()
    }

    /// Subscribes a job's updates, now and after every reconnect.
    pub(crate) fn subscribe_job(&self, job: &str) {
        let topic = wire::updates_topic(job);
        if lock(&self.subscriptions).insert(topic.clone()) {
            if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                tracing::debug!("oakestra: subscribe {job}: {e} (again on reconnect)");
            }
        }
    }

    /// Ends the subscription of a job's updates.
    pub(crate) fn unsubscribe_job(&self, job: &str) {
        let topic = wire::updates_topic(job);
        if lock(&self.subscriptions).remove(&topic) {
            let _ = self.client.try_unsubscribe(topic);
        }
    }

    pub(crate) fn ctx(&self) -> Option<Ctx> {
        lock(&self.ctx).clone()
    }
}

/// Aborts the background tasks when the last handle goes.
#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    fn push(&self, h: AbortHandle) {
        lock(&self.0).push(h);
    }
    fn abort_all(&self) {
        for h in lock(&self.0).drain(..) {
            h.abort();
        }
    }
}

impl std::ops::Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// The node's handle on the Oakestra cluster. Cheap to clone; the tasks
/// end with the last clone or [`Self::stop`].
#[derive(Debug, Clone)]
pub struct OakestraCluster {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

impl OakestraCluster {
    /// Starts the MQTT client task and returns at once; it connects (and
    /// reconnects, 250 ms to 5 s apart) to the broker as the client id.
    /// `book` is the job spellings shared with the NodeEngine API. Must
    /// be called inside a tokio runtime.
    pub fn start(settings: OakestraSettings, book: JobBook) -> Result<Self, OakestraError> {
        let id = &settings.client_id;
        crate::oakestra::check_client_id(id)
            .map_err(|e| OakestraError::Config(format!("store.client_id: {e}")))?;
        if settings.broker_host.is_empty() || settings.broker_port == 0 {
            return Err(OakestraError::Config(format!(
                "store.broker: {:?} is not HOST:PORT",
                settings.broker()
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            OakestraError::Config("internal: OakestraCluster::start needs a tokio runtime".into())
        })?;
        let mut opts = MqttOptions::new(
            id.clone(),
            settings.broker_host.clone(),
            settings.broker_port,
        );
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        // A worker that goes away without a word leaves no presence behind.
        opts.set_last_will(rumqttc::LastWill::new(
            wire::worker_topic(id),
            Vec::new(),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, eventloop) = AsyncClient::new(opts, 256);
        let (events, _) = broadcast::channel(1024);
        let (subnet, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            topics: Topics::new(id),
            settings,
            client,
            book,
            events,
            subnet,
            subscriptions: Mutex::default(),
            asked: Mutex::default(),
            ctx: Mutex::default(),
            workers: Mutex::default(),
            status: Mutex::default(),
            warned: Mutex::default(),
        });
        let tasks = Arc::new(Tasks::default());
        let h = runtime.spawn(client::run(inner.clone(), eventloop));
        tasks.push(h.abort_handle());
        Ok(Self { inner, tasks })
    }

    /// This node's plan: from the subnet cached in `state_dir` for this
    /// client id, else asked of the cluster (`nodes/{id}/net/subnet`,
    /// again every 10 s) for up to `wait`, then cached. `base` gives the
    /// ranges; the node prefix is Oakestra's 26.
    pub async fn plan(
        &self,
        base: &AddressPlan,
        state_dir: &Path,
        wait: Duration,
    ) -> Result<AddressPlan, OakestraError> {
        let id = &self.inner.settings.client_id;
        let address = match CachedSubnet::load(state_dir, id) {
            Some(c) => {
                tracing::info!(subnet = %c.address, "oakestra: subnet from the state directory");
                c.address
            }
            None => {
                let address = self.ask_subnet(wait).await?;
                let c = CachedSubnet {
                    client_id: id.clone(),
                    address,
                };
                if let Err(e) = c.save(state_dir) {
                    tracing::warn!("oakestra: subnet not cached: {e}");
                }
                address
            }
        };
        let plan = plan_for(base, address).map_err(OakestraError::Subnet)?;
        self.inner.status().subnet = Some(plan.node_subnet().to_string());
        *lock(&self.inner.ctx) = Some(Ctx {
            plan: plan.clone(),
            me: self.inner.settings.me,
        });
        Ok(plan)
    }

    async fn ask_subnet(&self, wait: Duration) -> Result<std::net::Ipv4Addr, OakestraError> {
        let inner = &self.inner;
        let mut rx = inner.subnet.subscribe();
        let work = async {
            loop {
                // Asked only once connected: a request queued before the
                // session is up would wait a whole SUBNET_TIMEOUT.
                if !inner.connected() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                if let Err(e) = inner.publish(Leaf::Subnet, wire::subnet_request()) {
                    tracing::warn!("oakestra: {e}");
                }
                let got = tokio::time::timeout(SUBNET_TIMEOUT, async {
                    loop {
                        if let Some(a) = rx.borrow_and_update().clone() {
                            return Some(a);
                        }
                        if rx.changed().await.is_err() {
                            return None;
                        }
                    }
                })
                .await;
                match got {
                    Ok(Some(a)) => match a.address.trim().parse() {
                        Ok(ip) => return ip,
                        Err(_) => {
                            inner.dropped(Drop::BadAddress, &format!("subnet {:?}", a.address));
                            inner.subnet.send_replace(None);
                        }
                    },
                    Ok(None) => std::future::pending::<()>().await,
                    Err(_) => {
                        tracing::info!(broker = %inner.settings.broker(), connected = inner.connected(), "oakestra: no subnet yet; asking again")
                    }
                }
            }
        };
        tokio::time::timeout(wait, work).await.map_err(|_| {
            OakestraError::Unavailable(format!(
                "the Oakestra cluster gave no subnet within {wait:?} (broker {}, client id {:?}, connected: {})",
                inner.settings.broker(),
                inner.settings.client_id,
                inner.connected()
            ))
        })
    }

    /// The manager's registry; call after [`Self::plan`].
    pub fn registry(&self, plan: AddressPlan) -> Arc<dyn Registry> {
        Arc::new(OakestraRegistry::new(self.inner.clone(), plan))
    }

    /// Starts the sync task: interests from the local instances, the
    /// dataplane's `misses` (queried by sip) and the resolver's `names`
    /// (queried by sname); the answers become the returned view.
    pub fn start_sync(
        &self,
        local: watch::Receiver<Arc<Snapshot>>,
        misses: mpsc::Receiver<IpAddr>,
        names: mpsc::Receiver<ServiceName>,
    ) -> watch::Receiver<Arc<ClusterView>> {
        let (tx, rx) = watch::channel(Arc::new(ClusterView::default()));
        let h = tokio::spawn(sync::run(self.inner.clone(), local, misses, names, tx));
        self.tasks.push(h.abort_handle());
        rx
    }

    /// The backend's health.
    pub fn status(&self) -> OakestraStatus {
        self.inner.status().clone()
    }

    /// Stops the tasks and closes the session.
    pub fn stop(&self) {
        self.tasks.abort_all();
        let _ = self.inner.client.try_disconnect();
        self.inner.status().connected = false;
    }
}

/// The status JSON of `proxytun status` (and the metrics' source).
pub(crate) fn status_json(inner: &Inner) -> serde_json::Value {
    let s = inner.status();
    let mut dropped = serde_json::Map::new();
    for r in Drop::ALL {
        let n = s.dropped.get(r.as_str()).copied().unwrap_or(0);
        dropped.insert(r.as_str().into(), n.into());
    }
    serde_json::json!({
        "backend": "oakestra",
        "connected": s.connected,
        "client_id": inner.settings.client_id,
        "broker": inner.settings.broker(),
        "subnet": s.subnet,
        "interests": s.interests,
        "dropped": dropped,
        "last_error": s.last_error,
        "tls": false,
    })
}
