//! The etcd backend of the cluster control plane.
//!
//! A node talks to etcd for three things: its node index (leased once by
//! compare-and-swap, see [`EtcdCluster::join`]), the claims of the manager
//! (ServiceIPs, instance numbers and instance IPs, see [`registry`]), and
//! what the other nodes run (the sync task, see [`sync`], which watches only
//! the services this node is interested in).
//!
//! One background *session* task owns the connection: it grants the node's
//! lease, keeps it alive, and hands the current [`Session`] (client + lease)
//! to everyone else through a watch channel. An outage is just "no session"
//! for a while: registry calls fail with [`crate::Error::Unavailable`], the
//! sync task keeps the last view, and both resume when the session is back.

pub mod keys;
mod registry;
mod sync;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::model::{ServiceName, Snapshot};
use crate::plan::AddressPlan;
use crate::registry::{ClusterView, Registry};
use keys::{Keys, NodeRecord};

pub use registry::EtcdRegistry;

/// How to reach etcd and how long the node's lease lives (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port` URLs (`store.endpoints`).
    pub endpoints: Vec<String>,
    /// The key prefix (`store.prefix`, default `/proxytun`).
    pub prefix: String,
    /// The node lease's TTL (`store.lease_ttl_secs`): how long a dead
    /// node's instances stay registered.
    pub lease_ttl: Duration,
    /// TLS files, for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    /// The longest a single store request may take before the caller gets
    /// [`crate::Error::Unavailable`].
    pub request_timeout: Duration,
}

impl EtcdSettings {
    /// The documented defaults for these endpoints: prefix `/proxytun`,
    /// lease TTL 10 s, request timeout 3 s, no TLS.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: keys::DEFAULT_PREFIX.to_owned(),
            lease_ttl: Duration::from_secs(10),
            tls: None,
            request_timeout: Duration::from_secs(3),
        }
    }
}

/// TLS files for etcd (`store.ca_file`, `store.cert_file`, `store.key_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed etcd's server certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM), when etcd asks for one.
    pub cert: Option<PathBuf>,
    /// The client key (PEM), together with `cert`.
    pub key: Option<PathBuf>,
}

/// What went wrong talking to etcd; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The settings cannot work (`store.*`).
    #[error("{0}")]
    Config(String),
    /// etcd did not answer in time; nothing was changed.
    #[error("etcd unavailable: {0}; check store.endpoints and that etcd is running")]
    Unavailable(String),
    /// No node index is free in these ranges.
    #[error("{0}")]
    Exhausted(String),
    /// The store holds something that contradicts this node.
    #[error("{0}")]
    Conflict(String),
    /// A record in the store is not what the schema says.
    #[error("{0}; fix or delete the key with etcdctl")]
    Corrupt(String),
}

impl From<ClusterError> for crate::Error {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Config(m) => crate::Error::Invalid(m),
            ClusterError::Unavailable(_) => crate::Error::Unavailable(e.to_string()),
            ClusterError::Exhausted(m) => crate::Error::Exhausted(m),
            ClusterError::Conflict(m) => crate::Error::Conflict(m),
            ClusterError::Corrupt(_) => crate::Error::Store(e.to_string()),
        }
    }
}

fn unavailable(e: etcd_client::Error) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

/// What `proxytun status` shows about the cluster store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// Whether the node holds a live session (a connection and its lease).
    pub connected: bool,
    /// The node's index, once joined.
    pub node_index: Option<u32>,
    /// The node's current lease.
    pub lease_id: Option<i64>,
    /// The last store revision the sync task has seen.
    pub revision: i64,
    /// How many services the sync task watches.
    pub interests: usize,
    /// Local instances whose key another node holds (not taken over).
    pub conflicts: u64,
    /// The last error, if any, while talking to etcd.
    pub last_error: Option<String>,
}

/// A live connection with the node's lease; `None` while etcd is away.
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) lease: i64,
    /// Increases with every new lease, so watchers can tell a re-grant.
    pub(crate) epoch: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.lease)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// State shared by the handle, the registry and the background tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) settings: EtcdSettings,
    pub(crate) node: String,
    pub(crate) endpoint: SocketAddr,
    pub(crate) keys: Keys,
    pub(crate) session: watch::Sender<Option<Session>>,
    pub(crate) status: Mutex<ClusterStatus>,
}

impl Inner {
    pub(crate) fn status(&self) -> MutexGuard<'_, ClusterStatus> {
        // A panic while holding this lock leaves plain data behind; go on.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current session, waiting up to `timeout` for one.
    pub(crate) async fn wait_session(&self, timeout: Duration) -> Result<Session, ClusterError> {
        let mut rx = self.session.subscribe();
        let wait = async { rx.wait_for(|s| s.is_some()).await.map(|s| s.clone()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => {
                s.ok_or_else(|| ClusterError::Unavailable("internal: session vanished".to_owned()))
            }
            Ok(Err(_)) => Err(ClusterError::Unavailable(
                "the cluster client was stopped".to_owned(),
            )),
            Err(_) => {
                let last = self.status().last_error.clone();
                Err(ClusterError::Unavailable(format!(
                    "no connection within {timeout:?}{}",
                    last.map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )))
            }
        }
    }
}

/// Aborts the background tasks when the last handle goes.
#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    fn push(&self, h: AbortHandle) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    }
    fn abort_all(&self) {
        for h in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// The node's handle on the etcd cluster store. Cheap to clone; when the
/// last clone is dropped (or [`Self::stop`] is called) the background tasks
/// end and the node's lease runs out on its own.
#[derive(Debug, Clone)]
pub struct EtcdCluster {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

impl EtcdCluster {
    /// Starts the session task and returns at once. The task connects (and
    /// reconnects with capped exponential backoff, 250 ms to 5 s), grants the
    /// node's lease (TTL `lease_ttl`), keeps it alive every TTL/3 and puts
    /// `alive/{node}` under it. Must be called inside a tokio runtime.
    pub fn start(
        settings: EtcdSettings,
        node: String,
        endpoint: SocketAddr,
    ) -> Result<Self, ClusterError> {
        if settings.endpoints.is_empty() {
            return Err(ClusterError::Config(
                "store.endpoints: give at least one etcd URL, e.g. \"http://10.77.0.254:2379\""
                    .to_owned(),
            ));
        }
        for e in &settings.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ClusterError::Config(format!(
                    "store.endpoints: {e:?} must start with http:// or https://"
                )));
            }
        }
        if settings.lease_ttl < Duration::from_secs(2) {
            return Err(ClusterError::Config(format!(
                "store.lease_ttl_secs: must be at least 2, got {:?}",
                settings.lease_ttl
            )));
        }
        crate::model::check_label("node", &node)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let options = connect_options(&settings)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClusterError::Config("internal: EtcdCluster::start needs a tokio runtime".to_owned())
        })?;
        let (session, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            keys: Keys::new(&settings.prefix),
            settings,
            node,
            endpoint,
            session,
            status: Mutex::new(ClusterStatus::default()),
        });
        let tasks = Arc::new(Tasks::default());
        let h = runtime.spawn(session_task(inner.clone(), options));
        tasks.push(h.abort_handle());
        Ok(Self { inner, tasks })
    }

    /// Leases the node's index by compare-and-swap: the node's own index
    /// after a restart (`nodes/{name}` remembers it), else the lowest free
    /// one from 1, retrying when another node wins the race. Writes
    /// `subnets/{i}` and `nodes/{name}` together. Waits for a connection up
    /// to `timeout`, then fails with [`ClusterError::Unavailable`].
    pub async fn join(&self, plan: &AddressPlan, timeout: Duration) -> Result<u32, ClusterError> {
        let inner = &self.inner;
        let work = async {
            let session = inner.wait_session(timeout).await?;
            join_index(inner, session.client, plan).await
        };
        let index = tokio::time::timeout(timeout, work).await.map_err(|_| {
            ClusterError::Unavailable(format!("join took longer than {timeout:?}"))
        })??;
        inner.status().node_index = Some(index);
        tracing::info!(node = %inner.node, index, "cluster: joined");
        Ok(index)
    }

    /// The manager's allocator for this node; `plan` carries the leased index.
    ///
    /// Also records the index, so the sync task re-asserts this node's
    /// membership (`nodes/`, `subnets/`) after each reconnect; that covers
    /// a node that started from its cached index while etcd was down.
    pub fn registry(&self, plan: AddressPlan) -> Arc<dyn Registry> {
        self.inner.status().node_index = Some(plan.node_index);
        Arc::new(EtcdRegistry::new(self.inner.clone(), plan))
    }

    /// Starts the sync task: it watches the services this node is interested
    /// in (those of its local instances, and those found from `misses`, the
    /// ServiceIPs the dataplane had no entry for, and from `names`, the
    /// services the resolver was asked for by name), keeps etcd's
    /// registrations in line with the local attachments, and publishes what
    /// the other nodes run on the returned channel. The view is kept through
    /// an outage.
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

    /// Connected?, lease, revision, interests, last error: for `status`.
    pub fn status(&self) -> ClusterStatus {
        self.inner.status().clone()
    }

    /// Stops the background tasks now (the keepalive too: the lease then
    /// expires after its TTL, taking this node's instances with it).
    pub fn stop(&self) {
        self.tasks.abort_all();
        self.inner.session.send_replace(None);
        self.inner.status().connected = false;
    }

    /// Stops the background tasks and revokes the lease, so this node's
    /// instances disappear at once (a clean shutdown). Best effort: if etcd
    /// is away the lease expires on its own.
    pub async fn shutdown(&self) {
        let session = self.inner.session.borrow().clone();
        self.stop();
        if let Some(s) = session {
            let mut c = s.client;
            let t = self.inner.settings.request_timeout;
            if let Ok(Err(e)) = tokio::time::timeout(t, c.lease_revoke(s.lease)).await {
                tracing::warn!("cluster: revoke lease on shutdown: {e}");
            }
        }
    }
}

fn connect_options(settings: &EtcdSettings) -> Result<ConnectOptions, ClusterError> {
    let mut options = ConnectOptions::new().with_connect_timeout(settings.request_timeout);
    if let Some(tls) = &settings.tls {
        let read = |key: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                ClusterError::Config(format!("{key}: cannot read {}: {e}", p.display()))
            })
        };
        let mut t = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("store.ca_file", &tls.ca)?));
        match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => {
                t = t.identity(Identity::from_pem(
                    read("store.cert_file", c)?,
                    read("store.key_file", k)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ClusterError::Config(
                    "store.cert_file and store.key_file: give both or neither".to_owned(),
                ))
            }
        }
        if settings
            .endpoints
            .iter()
            .any(|e| !e.starts_with("https://"))
        {
            return Err(ClusterError::Config(
                "store.endpoints: TLS files are set, so every endpoint must be https://".to_owned(),
            ));
        }
        options = options.with_tls(t);
    }
    Ok(options)
}

/// Capped exponential backoff: 250 ms, 500 ms, ... 5 s.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) const MIN: Duration = Duration::from_millis(250);
    pub(crate) const MAX: Duration = Duration::from_secs(5);
    pub(crate) fn new() -> Self {
        Self(Self::MIN)
    }
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
    pub(crate) fn reset(&mut self) {
        self.0 = Self::MIN;
    }
}

/// Why a session ended.
enum SessionEnd {
    /// etcd said the lease is gone: grant a new one at once.
    LeaseLost,
    /// etcd is unreachable: back off and reconnect.
    Outage(String),
}

async fn session_task(inner: Arc<Inner>, options: ConnectOptions) {
    let mut backoff = Backoff::new();
    let mut client: Option<Client> = None;
    let mut lease: Option<i64> = None;
    let mut epoch = 0u64;
    let mut in_outage = false;
    loop {
        let end = run_session(
            &inner,
            &options,
            &mut client,
            &mut lease,
            &mut epoch,
            &mut || {
                if in_outage {
                    tracing::info!("cluster: etcd reachable again");
                    in_outage = false;
                }
                backoff.reset();
            },
        )
        .await;
        inner.session.send_replace(None);
        {
            let mut st = inner.status();
            st.connected = false;
            if let SessionEnd::Outage(e) = &end {
                st.last_error = Some(e.clone());
            }
        }
        match end {
            SessionEnd::LeaseLost => {
                tracing::warn!(node = %inner.node, "cluster: lease expired; granting a new one and registering again");
                lease = None;
            }
            SessionEnd::Outage(e) => {
                if !in_outage {
                    tracing::warn!("cluster: etcd unreachable, keeping the last known view: {e}");
                    in_outage = true;
                } else {
                    tracing::debug!("cluster: still unreachable: {e}");
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

async fn run_session(
    inner: &Inner,
    options: &ConnectOptions,
    client: &mut Option<Client>,
    lease: &mut Option<i64>,
    epoch: &mut u64,
    on_up: &mut (dyn FnMut() + Send),
) -> SessionEnd {
    let t = inner.settings.request_timeout;
    let outage = |e: String| SessionEnd::Outage(e);
    let c = match client {
        Some(c) => c.clone(),
        None => {
            let fut = Client::connect(inner.settings.endpoints.clone(), Some(options.clone()));
            match tokio::time::timeout(t, fut).await {
                Ok(Ok(c)) => {
                    *client = Some(c.clone());
                    c
                }
                Ok(Err(e)) => return outage(e.to_string()),
                Err(_) => return outage(format!("connect timed out after {t:?}")),
            }
        }
    };
    let mut lc = c.lease_client();
    let ttl = inner.settings.lease_ttl;
    // Keep the old lease when it survived the outage: the node's keys are
    // still there then.
    let mut kept = None;
    if let Some(id) = *lease {
        match tokio::time::timeout(t, lc.keep_alive(id)).await {
            Ok(Ok(k)) => kept = Some((id, k)),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => *lease = None,
            Ok(Err(e)) => return outage(e.to_string()),
            Err(_) => return outage(format!("lease keepalive timed out after {t:?}")),
        }
    }
    let (id, (mut keeper, mut stream)) = match kept {
        Some(k) => k,
        None => {
            let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            let id = match tokio::time::timeout(t, lc.grant(secs, None)).await {
                Ok(Ok(r)) => r.id(),
                Ok(Err(e)) => return outage(e.to_string()),
                Err(_) => return outage(format!("lease grant timed out after {t:?}")),
            };
            *lease = Some(id);
            match tokio::time::timeout(t, lc.keep_alive(id)).await {
                Ok(Ok(k)) => (id, k),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                    return SessionEnd::LeaseLost
                }
                Ok(Err(e)) => return outage(e.to_string()),
                Err(_) => return outage(format!("lease keepalive timed out after {t:?}")),
            }
        }
    };
    let mut kv = c.kv_client();
    let put = kv.put(
        inner.keys.alive(&inner.node),
        "",
        Some(PutOptions::new().with_lease(id)),
    );
    match tokio::time::timeout(t, put).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return outage(e.to_string()),
        Err(_) => return outage(format!("put alive key timed out after {t:?}")),
    }
    *epoch += 1;
    inner.session.send_replace(Some(Session {
        client: c,
        lease: id,
        epoch: *epoch,
    }));
    {
        let mut st = inner.status();
        st.connected = true;
        st.lease_id = Some(id);
    }
    on_up();
    tracing::debug!(lease = id, "cluster: session up");
    let every = (ttl / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = keeper.keep_alive().await {
            return outage(e.to_string());
        }
        match tokio::time::timeout(t, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return SessionEnd::LeaseLost,
            Ok(Ok(None)) => return outage("lease keepalive stream closed".to_owned()),
            Ok(Err(e)) => return outage(e.to_string()),
            Err(_) => return outage(format!("no keepalive answer within {t:?}")),
        }
    }
}

/// The index leasing of [`EtcdCluster::join`], without the timeout.
async fn join_index(
    inner: &Inner,
    client: Client,
    plan: &AddressPlan,
) -> Result<u32, ClusterError> {
    let keys = &inner.keys;
    let mut kv = client.kv_client();
    let node_key = keys.node(&inner.node);
    let max = u32::try_from(plan.max_nodes()).unwrap_or(u32::MAX);
    for _attempt in 0..256 {
        let got = kv.get(node_key.as_str(), None).await.map_err(unavailable)?;
        if let Some(kvp) = got.kvs().first() {
            let rec: NodeRecord =
                keys::decode(kvp.key(), kvp.value()).map_err(ClusterError::Corrupt)?;
            if rec.index == 0 || rec.index >= max {
                return Err(ClusterError::Conflict(format!(
                    "{node_key} holds index {} which is outside 1..{max} for these ranges; delete the key or fix network.*",
                    rec.index
                )));
            }
            let sk = keys.subnet(rec.index);
            let mut want = rec.clone();
            want.endpoint = inner.endpoint;
            // Keep subnets/{i} ours (recreate it if it was lost) and the
            // endpoint current, in one txn against the record just read.
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(node_key.as_str(), CompareOp::Equal, kvp.mod_revision()),
                    Compare::create_revision(sk.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(sk.as_str(), inner.node.as_str(), None),
                    TxnOp::put(node_key.as_str(), keys::encode(&want), None),
                ])
                .or_else([TxnOp::get(sk.as_str(), None)]);
            let resp = kv.txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                return Ok(rec.index);
            }
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|k| String::from_utf8_lossy(k.value()).into_owned()),
                _ => None,
            });
            match holder {
                Some(h) if h == inner.node => {
                    if rec.endpoint != inner.endpoint {
                        let txn = Txn::new()
                            .when([Compare::mod_revision(
                                node_key.as_str(),
                                CompareOp::Equal,
                                kvp.mod_revision(),
                            )])
                            .and_then([TxnOp::put(node_key.as_str(), keys::encode(&want), None)]);
                        if !kv.txn(txn).await.map_err(unavailable)?.succeeded() {
                            continue;
                        }
                        tracing::info!(endpoint = %inner.endpoint, "cluster: node endpoint updated");
                    }
                    return Ok(rec.index);
                }
                Some(h) => {
                    return Err(ClusterError::Conflict(format!(
                        "{node_key} says index {} but {sk} is held by node {h:?}; two nodes share the name {:?} or the store was edited",
                        rec.index, inner.node
                    )))
                }
                // The node record changed under us; read again.
                None => continue,
            }
        }
        let subnets = kv
            .get(
                keys.subnets(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(unavailable)?;
        let used: std::collections::BTreeSet<u32> = subnets
            .kvs()
            .iter()
            .filter_map(|k| match keys.parse(k.key()) {
                Some(keys::ParsedKey::Subnet(i)) => Some(i),
                _ => None,
            })
            .collect();
        let Some(index) = (1..max).find(|i| !used.contains(i)) else {
            return Err(ClusterError::Exhausted(format!(
                "all {} node indexes of these ranges are leased; remove dead nodes' subnets/ and nodes/ keys or widen network.cluster",
                max.saturating_sub(1)
            )));
        };
        let sk = keys.subnet(index);
        let rec = NodeRecord {
            name: inner.node.clone(),
            index,
            endpoint: inner.endpoint,
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(sk.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(node_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(sk.as_str(), inner.node.as_str(), None),
                TxnOp::put(node_key.as_str(), keys::encode(&rec), None),
            ]);
        if kv.txn(txn).await.map_err(unavailable)?.succeeded() {
            return Ok(index);
        }
        // Lost a race for `index` (or our own record appeared): read again.
    }
    Err(ClusterError::Unavailable(
        "could not lease a node index after 256 attempts; too much contention".to_owned(),
    ))
}

/// Makes sure `nodes/{name}` and `subnets/{index}` say this node holds
/// `index` at its endpoint. Run after every (re)connect by the sync task, so
/// a node that started from its cached index while etcd was down becomes a
/// member once etcd is back. Never takes an index another node holds.
pub(crate) async fn ensure_member(
    inner: &Inner,
    client: &mut Client,
    index: u32,
) -> Result<(), ClusterError> {
    let keys = &inner.keys;
    let (nk, sk) = (keys.node(&inner.node), keys.subnet(index));
    let rec = NodeRecord {
        name: inner.node.clone(),
        index,
        endpoint: inner.endpoint,
    };
    for _ in 0..8 {
        let read =
            Txn::new().and_then([TxnOp::get(nk.as_str(), None), TxnOp::get(sk.as_str(), None)]);
        let resp = client.txn(read).await.map_err(unavailable)?;
        let mut got = resp.op_responses().into_iter().map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let (node, subnet) = (got.next().flatten(), got.next().flatten());
        if let Some(s) = &subnet {
            if s.value() != inner.node.as_bytes() {
                return Err(ClusterError::Conflict(format!(
                    "{sk} is held by node {:?}, but this node runs with index {index} (cached); stop one of them or delete this node's state",
                    String::from_utf8_lossy(s.value())
                )));
            }
        }
        if let Some(n) = &node {
            let held: NodeRecord =
                keys::decode(n.key(), n.value()).map_err(ClusterError::Corrupt)?;
            if held.index != index {
                return Err(ClusterError::Conflict(format!(
                    "{nk} says index {} but this node runs with index {index}; restart it to take its leased index",
                    held.index
                )));
            }
            if held == rec && subnet.is_some() {
                return Ok(());
            }
        }
        let rev = |kv: &Option<etcd_client::KeyValue>| kv.as_ref().map_or(0, |k| k.mod_revision());
        let txn = Txn::new()
            .when([
                Compare::mod_revision(nk.as_str(), CompareOp::Equal, rev(&node)),
                Compare::mod_revision(sk.as_str(), CompareOp::Equal, rev(&subnet)),
            ])
            .and_then([
                TxnOp::put(sk.as_str(), inner.node.as_str(), None),
                TxnOp::put(nk.as_str(), keys::encode(&rec), None),
            ]);
        if client.txn(txn).await.map_err(unavailable)?.succeeded() {
            tracing::info!(index, endpoint = %inner.endpoint, "cluster: node record written");
            return Ok(());
        }
    }
    Err(ClusterError::Unavailable(format!(
        "{nk}: the record keeps changing"
    )))
}
