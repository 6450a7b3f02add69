//! The sync task: what the other nodes run, as far as this node cares, and
//! this node's registrations kept in line with its attachments.
//!
//! Interest-based, like Oakestra's lazy table queries: the task never reads
//! all services or instances. It watches `nodes/` (every node is a peer that
//! may send traffic here) and, per interesting service, its `services/` key
//! and its `instances/` prefix, all on one watch stream. A service becomes
//! interesting when a local instance serves it or when the dataplane reports
//! a miss on one of its addresses.
//!
//! This file holds the task and its connected rounds (reading, watching,
//! following misses, reconciling); `state.rs` is what it knows (records in,
//! view out, no I/O) and `register.rs` registers one local instance.

mod idle;
mod register;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, GetOptions, LeaseTimeToLiveOptions, Txn, TxnOp, WatchOptions,
    WatchRequestSender, WatchResponse,
};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use super::error::ClusterError;
use super::keys::{self, InstanceRecord, ParsedKey, VipRecord};
use super::member::ensure_member;
use super::registry::{unavailable, withdraw};
use super::session::{Backoff, Inner, Session};
use crate::error::{Error, Result};
use crate::model::{InstanceKey, NodeInfo, Policy, ServiceName, Snapshot};
use crate::plan;
use crate::registry::{interest_check_period, ClusterView};
use state::State;

/// How long an address that nobody claims is not looked up again.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Misses remembered while etcd is away.
const PENDING_MISSES: usize = 1024;

/// What tells the sync of services nobody here serves yet: ServiceIPs the
/// dataplane missed, and names the resolver was asked for.
struct Misses {
    addrs: mpsc::Receiver<IpAddr>,
    addrs_open: bool,
    names: mpsc::Receiver<ServiceName>,
    names_open: bool,
}

/// Why a connected round ended without an error.
enum Exit {
    /// The session went away or its lease changed: start over.
    SessionChanged,
    /// The manager or the cluster handle is gone.
    Closed,
}

/// The sync task's body; see the module doc. Ends when the manager's
/// snapshot channel or the view's receivers are all gone.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut local: watch::Receiver<Arc<Snapshot>>,
    misses: mpsc::Receiver<IpAddr>,
    names: mpsc::Receiver<ServiceName>,
    tx: watch::Sender<Arc<ClusterView>>,
) {
    let mut m = Misses {
        addrs: misses,
        addrs_open: true,
        names,
        names_open: true,
    };
    let mut st = State::default();
    let mut sessions = inner.session.subscribe();
    let mut backoff = Backoff::new();
    let mut in_outage = false;
    loop {
        let session = loop {
            if let Some(s) = sessions.borrow_and_update().clone() {
                break s;
            }
            tokio::select! {
                r = sessions.changed() => if r.is_err() { return },
                r = local.changed() => if r.is_err() { return },
                a = m.addrs.recv(), if m.addrs_open => match a {
                    Some(ip) if st.pending.len() < PENDING_MISSES => { st.pending.insert(ip); }
                    Some(_) => {}
                    None => m.addrs_open = false,
                },
                n = m.names.recv(), if m.names_open => match n {
                    Some(name) if st.pending_names.len() < PENDING_MISSES => { st.pending_names.insert(name); }
                    Some(_) => {}
                    None => m.names_open = false,
                },
            }
        };
        let mut round = Round {
            inner: &inner,
            st: &mut st,
            client: session.client.clone(),
            session: &session,
            tx: &tx,
        };
        match round
            .run(&mut local, &mut m, &mut sessions, &mut || {
                if in_outage {
                    tracing::info!("cluster sync: resumed");
                    in_outage = false;
                }
                backoff.reset();
            })
            .await
        {
            Ok(Exit::SessionChanged) => {}
            Ok(Exit::Closed) => return,
            Err(e) => {
                inner.status().last_error = Some(e.to_string());
                if !in_outage {
                    tracing::warn!("cluster sync: {e}; keeping the last view and retrying");
                    in_outage = true;
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// One connected stretch of the sync task.
struct Round<'a> {
    inner: &'a Inner,
    st: &'a mut State,
    client: Client,
    session: &'a Session,
    tx: &'a watch::Sender<Arc<ClusterView>>,
}

impl Round<'_> {
    async fn run(
        &mut self,
        local: &mut watch::Receiver<Arc<Snapshot>>,
        m: &mut Misses,
        sessions: &mut watch::Receiver<Option<Session>>,
        on_up: &mut (dyn FnMut() + Send),
    ) -> Result<Exit> {
        let t = self.inner.settings.request_timeout;
        let snap = local.borrow_and_update().clone();
        let want = self.wanted(&snap);
        for k in want.keys() {
            self.st.interests.insert(k.name.clone());
        }
        let mut idle_tick =
            tokio::time::interval(interest_check_period(self.inner.settings.interest_idle));
        let index = self.inner.status().node_index;
        if let Some(index) = index {
            let ensure = ensure_member(self.inner, &mut self.client, index);
            match tokio::time::timeout(t, ensure).await {
                Ok(Ok(())) => {}
                Ok(Err(ClusterError::Unavailable(e))) => return Err(Error::Unavailable(e)),
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "etcd did not answer within {t:?}"
                    )))
                }
                Ok(Err(e)) => {
                    tracing::error!("cluster sync: {e}");
                    self.inner.status().last_error = Some(e.to_string());
                }
            }
        }
        // Re-read everything: the old revision may be compacted by now.
        let nodes_prefix = self.inner.keys.nodes();
        let got = timed(
            t,
            self.client
                .get(nodes_prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let nodes_rev = got.header().map(|h| h.revision()).unwrap_or(0);
        self.st.nodes.clear();
        for kv in got.kvs() {
            self.apply(kv.key(), Some(kv.value()));
        }
        self.st.revision = nodes_rev;
        let policy_key = self.inner.keys.policy();
        let got = timed(t, self.client.get(policy_key.as_str(), None)).await?;
        let policy_rev = got.header().map(|h| h.revision()).unwrap_or(0);
        self.st.policy = Some(Policy::default());
        for kv in got.kvs() {
            self.apply(kv.key(), Some(kv.value()));
        }
        let mut revs = Vec::new();
        for name in self.st.interests.clone() {
            revs.push((name.clone(), self.load(&name).await?));
        }
        let pending = std::mem::take(&mut self.st.pending);
        let mut new = Vec::new();
        for ip in pending {
            if let Some((name, rev)) = self.miss(ip, &snap.node).await? {
                new.push((name, rev));
            }
        }
        for name in std::mem::take(&mut self.st.pending_names) {
            if let Some(rev) = self.name_miss(&name).await? {
                new.push((name, rev));
            }
        }
        revs.extend(new);
        self.reconcile(&want, true).await?;

        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(nodes_rev + 1);
        let stream = timed(t, self.client.watch(nodes_prefix.as_str(), Some(opts))).await?;
        let (mut wtx, mut wrx) = stream.split();
        wtx.watch(
            policy_key.as_str(),
            Some(WatchOptions::new().with_start_revision(policy_rev + 1)),
        )
        .await
        .map_err(unavailable)?;
        for (name, rev) in &revs {
            self.watch(&mut wtx, name, *rev).await?;
        }
        self.publish();
        on_up();

        loop {
            tokio::select! {
                msg = wrx.message() => {
                    self.event(msg)?;
                    // Coalesce a burst: take what is ready, publish once.
                    while let Some(msg) = wrx.message().now_or_never() {
                        self.event(msg)?;
                    }
                    if !self.st.dirty.is_empty() {
                        let want = self.wanted(&local.borrow().clone());
                        self.reconcile(&want, false).await?;
                    }
                    self.publish();
                }
                r = local.changed() => {
                    if r.is_err() {
                        return Ok(Exit::Closed);
                    }
                    let snap = local.borrow_and_update().clone();
                    let want = self.wanted(&snap);
                    for name in want.keys().map(|k| k.name.clone()).collect::<BTreeSet<_>>() {
                        if !self.st.interests.contains(&name) {
                            self.st.interests.insert(name.clone());
                            let rev = self.load(&name).await?;
                            self.watch(&mut wtx, &name, rev).await?;
                        }
                    }
                    self.reconcile(&want, false).await?;
                    self.publish();
                }
                a = m.addrs.recv(), if m.addrs_open => {
                    let Some(ip) = a else {
                        m.addrs_open = false;
                        continue;
                    };
                    let node = local.borrow().node.clone();
                    let mut ips = vec![ip];
                    while let Ok(ip) = m.addrs.try_recv() {
                        ips.push(ip);
                    }
                    for ip in ips {
                        if let Some((name, rev)) = self.miss(ip, &node).await? {
                            self.watch(&mut wtx, &name, rev).await?;
                        }
                    }
                    self.publish();
                }
                n = m.names.recv(), if m.names_open => {
                    let Some(name) = n else {
                        m.names_open = false;
                        continue;
                    };
                    let mut batch = vec![name];
                    while let Ok(name) = m.names.try_recv() {
                        batch.push(name);
                    }
                    for name in batch {
                        if let Some(rev) = self.name_miss(&name).await? {
                            self.watch(&mut wtx, &name, rev).await?;
                        }
                    }
                    self.publish();
                }
                _ = idle_tick.tick(), if self.inner.settings.interest_idle.is_some() => {
                    self.expire_interests(&local.borrow().clone());
                }
                r = sessions.changed() => {
                    if r.is_err() {
                        return Ok(Exit::Closed);
                    }
                    let same = sessions
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|s| s.epoch == self.session.epoch);
                    if !same {
                        return Ok(Exit::SessionChanged);
                    }
                }
                _ = self.tx.closed() => return Ok(Exit::Closed),
            }
        }
    }

    /// What etcd should hold for the local instances.
    fn wanted(&self, snap: &Snapshot) -> BTreeMap<InstanceKey, InstanceRecord> {
        state::wanted(&self.inner.node, snap)
    }

    /// Reads one service's record and instances; returns the revision to
    /// watch from.
    async fn load(&mut self, name: &ServiceName) -> Result<i64> {
        let keys = &self.inner.keys;
        let (sk, ip) = (keys.service(name), keys.instances_of(name));
        let txn = Txn::new().and_then([
            TxnOp::get(sk.as_str(), None),
            TxnOp::get(ip.as_str(), Some(GetOptions::new().with_prefix())),
        ]);
        let t = self.inner.settings.request_timeout;
        let resp = timed(t, self.client.txn(txn)).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.st.services.remove(name);
        self.st.instances.retain(|k, _| &k.name != name);
        for r in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = r {
                for kv in g.kvs() {
                    self.apply(kv.key(), Some(kv.value()));
                }
            }
        }
        self.st.revision = self.st.revision.max(rev);
        self.inner.status().interests = self.st.interests.len();
        Ok(rev)
    }

    /// Adds the watches of one service to the stream, from `rev + 1`.
    async fn watch(
        &mut self,
        wtx: &mut WatchRequestSender,
        name: &ServiceName,
        rev: i64,
    ) -> Result<()> {
        let keys = &self.inner.keys;
        let from = WatchOptions::new().with_start_revision(rev + 1);
        wtx.watch(keys.service(name), Some(from.clone()))
            .await
            .map_err(unavailable)?;
        wtx.watch(keys.instances_of(name), Some(from.with_prefix()))
            .await
            .map_err(unavailable)
    }

    /// Applies one watch message (or fails the round on a stream error).
    fn event(
        &mut self,
        msg: std::result::Result<Option<WatchResponse>, etcd_client::Error>,
    ) -> Result<()> {
        let resp = msg
            .map_err(unavailable)?
            .ok_or_else(|| Error::Unavailable("etcd closed the watch stream".to_owned()))?;
        if resp.canceled() {
            return Err(Error::Unavailable(format!(
                "etcd cancelled a watch (compacted at {}: {}); reading everything again",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        if let Some(h) = resp.header() {
            self.st.revision = self.st.revision.max(h.revision());
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => self.apply(kv.key(), Some(kv.value())),
                EventType::Delete => self.apply(kv.key(), None),
            }
        }
        self.inner.status().revision = self.st.revision;
        Ok(())
    }

    /// Applies a key's new value (`None`: deleted) to the state. A record
    /// that does not parse is skipped with a warning.
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.st.apply(&self.inner.keys, key, value);
    }

    /// Looks up the owner of a missed address; returns a new interest (with
    /// the revision to watch from) if it belongs to a service not watched yet.
    async fn miss(&mut self, ip: IpAddr, node: &NodeInfo) -> Result<Option<(ServiceName, i64)>> {
        let v4 = match ip {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => match plan::unmirror(node.service_range, node.service_range6, a) {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        if !node.service_range.contains(&v4) {
            return Ok(None);
        }
        let now = Instant::now();
        if self.st.negative.get(&v4).is_some_and(|until| *until > now) {
            return Ok(None);
        }
        let known = self
            .st
            .services
            .values()
            .any(|s| s.rr_ip.v4 == v4 || s.closest_ip.is_some_and(|c| c.v4 == v4))
            || self.st.instances.values().any(|i| i.instance_ip.v4 == v4);
        if known {
            return Ok(None);
        }
        let t = self.inner.settings.request_timeout;
        let got = timed(t, self.client.get(self.inner.keys.vip(v4), None)).await?;
        let owner = match got.kvs().first() {
            None => None,
            Some(kv) => match keys::decode::<VipRecord>(kv.key(), kv.value()) {
                Ok(rec) => rec.service(),
                Err(e) => {
                    tracing::warn!("cluster sync: {e}");
                    None
                }
            },
        };
        let Some(name) = owner else {
            if self.st.negative.len() > 4096 {
                self.st.negative.retain(|_, until| *until > now);
            }
            self.st.negative.insert(v4, now + NEGATIVE_TTL);
            return Ok(None);
        };
        if self.st.interests.contains(&name) {
            return Ok(None);
        }
        tracing::debug!(%ip, service = %name, "cluster sync: new interest from a miss");
        self.st.interests.insert(name.clone());
        self.st.touch(&name, Instant::now());
        let rev = self.load(&name).await?;
        Ok(Some((name, rev)))
    }

    /// Looks up a service the resolver was asked for by name; returns the
    /// revision to watch from if it exists and is not watched yet.
    async fn name_miss(&mut self, name: &ServiceName) -> Result<Option<i64>> {
        if self.st.interests.contains(name) {
            // A name lookup, or a flow the daemon reports: still in use.
            self.st.touch(name, Instant::now());
            return Ok(None);
        }
        let now = Instant::now();
        if self
            .st
            .negative_names
            .get(name)
            .is_some_and(|until| *until > now)
        {
            return Ok(None);
        }
        let t = self.inner.settings.request_timeout;
        let key = self.inner.keys.service(name);
        let got = timed(t, self.client.get(key.as_str(), None)).await?;
        if got.kvs().is_empty() {
            if self.st.negative_names.len() > 4096 {
                self.st.negative_names.retain(|_, until| *until > now);
            }
            self.st
                .negative_names
                .insert(name.clone(), now + NEGATIVE_TTL);
            return Ok(None);
        }
        tracing::debug!(service = %name, "cluster sync: new interest from a name lookup");
        self.st.interests.insert(name.clone());
        self.st.touch(name, now);
        Ok(Some(self.load(name).await?))
    }

    /// Makes etcd hold `want` for this node: registers what is missing
    /// (under the current lease), withdraws this node's registrations that
    /// are no longer local. `full` checks everything (after a (re)connect),
    /// otherwise only what changed since the last time.
    async fn reconcile(
        &mut self,
        want: &BTreeMap<InstanceKey, InstanceRecord>,
        full: bool,
    ) -> Result<()> {
        let t = self.inner.settings.request_timeout;
        let mut check: BTreeSet<InstanceKey> = std::mem::take(&mut self.st.dirty);
        let mut gone: BTreeSet<InstanceKey> = BTreeSet::new();
        if full {
            check.extend(want.keys().cloned());
            // Ours in etcd: the keys under our lease, and what the watches show.
            let ttl = timed(
                t,
                self.client.lease_time_to_live(
                    self.session.lease,
                    Some(LeaseTimeToLiveOptions::new().with_keys()),
                ),
            )
            .await?;
            for k in ttl.keys() {
                if let Some(ParsedKey::Instance(ik)) = self.inner.keys.parse(k) {
                    gone.insert(ik);
                }
            }
            for (k, rec) in &self.st.instances {
                if rec.node == self.inner.node {
                    gone.insert(k.clone());
                }
            }
            gone.extend(self.st.reconciled.keys().cloned());
        } else {
            for (k, rec) in want {
                if self.st.reconciled.get(k) != Some(rec) {
                    check.insert(k.clone());
                }
            }
            gone.extend(self.st.reconciled.keys().cloned());
        }
        gone.retain(|k| !want.contains_key(k));
        for k in &check {
            if let Some(rec) = want.get(k) {
                let reg = register::register(
                    self.inner,
                    &mut self.client,
                    self.session.lease,
                    &mut self.st.conflicting,
                    k,
                    rec,
                );
                timed_r(t, reg).await?;
            }
        }
        for k in &gone {
            let mut c = self.client.clone();
            timed_r(t, withdraw(self.inner, &mut c, k)).await?;
        }
        self.st.reconciled = want.clone();
        self.st.conflicting.retain(|k| want.contains_key(k));
        self.inner.status().conflicts = self.st.conflicting.len() as u64;
        Ok(())
    }

    /// Publishes the view if it differs from the last one.
    fn publish(&mut self) {
        let view = self.st.view(&self.inner.node);
        let st = &*self.st;
        {
            let mut s = self.inner.status();
            s.revision = st.revision;
            s.interests = st.interests.len();
        }
        self.tx.send_if_modified(|cur| {
            let same = cur.peers == view.peers
                && cur.services == view.services
                && cur.instances == view.instances
                && cur.policy == view.policy;
            if same {
                false
            } else {
                *cur = Arc::new(view);
                true
            }
        });
    }
}

/// An etcd call bounded by the request timeout.
async fn timed<T>(
    t: Duration,
    f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(Error::Unavailable(format!(
            "etcd did not answer within {t:?}"
        ))),
    }
}

/// A store step bounded by the request timeout.
async fn timed_r<T>(t: Duration, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(format!(
            "etcd did not answer within {t:?}"
        ))),
    }
}
