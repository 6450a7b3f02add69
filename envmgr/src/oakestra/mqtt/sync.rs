//! The sync task: which jobs this node cares about, their table answers,
//! and the view built from them.
//!
//! Interests, as in the Go NetManager: the services of local instances
//! (never expire), services whose ServiceIP the dataplane missed (asked
//! by sip) and services the resolver was asked for (asked by sname). Each
//! interest subscribes `jobs/{job}/updates_available`; an update asks the
//! job again by name and replaces its entries. An interest unused for
//! `store.interest_idle_secs` ends with `interest/remove`. One query per
//! key is in flight at a time. An answer is taken when its key was asked
//! or its job is an interest, and when `view::check` accepts it; anything
//! else is dropped and counted, and the view stays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

use super::view::{add_workers, check, Ctx, Tables};
use super::wire::{self, Drop, InterestRemove, Leaf, TableAnswer, TableQuery};
use super::{lock, Event, Inner};
use crate::model::{Placement, ServiceName, Snapshot};
use crate::oakestra::JobName;
use crate::plan;
use crate::registry::ClusterView;

/// How long a key the cluster knows nothing of is not asked again.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Misses and names kept while the broker is away.
const PENDING: usize = 1024;

/// What the task knows.
#[derive(Debug, Default)]
struct State {
    tables: Tables,
    interests: BTreeMap<ServiceName, JobName>,
    /// When each interest was last used.
    used: BTreeMap<ServiceName, Instant>,
    /// Keys the cluster knows nothing of, until when.
    negative: HashMap<String, Instant>,
    /// Queries that could not be sent (broker away), by key.
    pending: BTreeMap<String, TableQuery>,
}

/// The task's body; ends when the manager or every view receiver is gone.
pub(super) async fn run(
    inner: Arc<Inner>,
    mut local: watch::Receiver<Arc<Snapshot>>,
    mut misses: mpsc::Receiver<IpAddr>,
    mut names: mpsc::Receiver<ServiceName>,
    tx: watch::Sender<Arc<ClusterView>>,
) {
    let Some(ctx) = inner.ctx() else {
        tracing::error!("internal: the oakestra sync started before the subnet was known");
        return;
    };
    let mut s = Sync {
        inner: &inner,
        ctx,
        st: State::default(),
        tx: &tx,
    };
    let mut events = inner.events.subscribe();
    let idle = inner.settings.interest_idle;
    let period = crate::registry::interest_check_period(idle);
    let mut tick = tokio::time::interval(period);
    let (mut misses_open, mut names_open) = (true, true);
    s.local(&local.borrow_and_update().clone());
    s.publish();
    loop {
        tokio::select! {
            r = local.changed() => {
                if r.is_err() { return }
                let snap = local.borrow_and_update().clone();
                s.local(&snap);
            }
            e = events.recv() => match e {
                Ok(Event::Answer { answer, solicited }) => s.answer(&answer, solicited),
                Ok(Event::Update(job)) => s.update(&job),
                Ok(Event::Workers) => s.publish(),
                Ok(Event::Connected) => s.requery_all(),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "oakestra sync: fell behind the broker's messages; asking every interest again");
                    s.requery_all();
                }
                Err(RecvError::Closed) => return,
            },
            a = misses.recv(), if misses_open => match a {
                Some(ip) => s.miss(ip),
                None => misses_open = false,
            },
            n = names.recv(), if names_open => match n {
                Some(name) => s.name(&name),
                None => names_open = false,
            },
            _ = tick.tick() => {
                if let Some(idle) = idle {
                    let snap = local.borrow().clone();
                    s.expire(&snap, idle, Instant::now());
                }
                s.retry_pending();
            }
            _ = tx.closed() => return,
        }
    }
}

/// The task's working set.
struct Sync<'a> {
    inner: &'a Inner,
    ctx: Ctx,
    st: State,
    tx: &'a watch::Sender<Arc<ClusterView>>,
}

/// The services of the local instances.
fn local_services(snap: &Snapshot) -> BTreeSet<ServiceName> {
    snap.instances
        .values()
        .filter(|i| matches!(i.placement, Placement::Local { .. }))
        .map(|i| i.key.name.clone())
        .collect()
}

impl Sync<'_> {
    /// Sends a query, or keeps it for when the broker is back.
    fn ask(&mut self, q: TableQuery, force: bool) {
        if !self.inner.connected() {
            if self.st.pending.len() < PENDING {
                self.st.pending.insert(q.key().to_owned(), q);
            }
            return;
        }
        self.inner.ask(&q, force);
    }

    fn ask_job(&mut self, job: &JobName, force: bool) {
        let q = TableQuery {
            sname: job.as_str().to_owned(),
            sip: String::new(),
        };
        self.ask(q, force);
    }

    fn retry_pending(&mut self) {
        if self.st.pending.is_empty() || !self.inner.connected() {
            return;
        }
        for (_, q) in std::mem::take(&mut self.st.pending) {
            self.inner.ask(&q, false);
        }
    }

    /// Makes `job` an interest (subscribed, counted as used now).
    fn interest(&mut self, job: &JobName) -> bool {
        let name = job.service().clone();
        if self.st.interests.contains_key(&name) {
            return false;
        }
        self.inner.subscribe_job(job.as_str());
        self.st.interests.insert(name.clone(), job.clone());
        self.st.used.insert(name, Instant::now());
        self.inner.status().interests = self.st.interests.len();
        true
    }

    /// The local instances' services become interests.
    fn local(&mut self, snap: &Snapshot) {
        for name in local_services(snap) {
            let Some(job) = self.inner.book.job_for(&name) else {
                continue;
            };
            if self.interest(&job) {
                self.ask_job(&job, false);
            }
        }
    }

    /// A ServiceIP the dataplane had no entry for.
    fn miss(&mut self, ip: IpAddr) {
        let plan = &self.ctx.plan;
        let v4 = match ip {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => match plan::unmirror(plan.services, plan.services6, a) {
                Some(a) => a,
                None => return,
            },
        };
        if !plan.services.contains(&v4) || self.st.tables.knows_addr(v4) {
            return;
        }
        let key = v4.to_string();
        if self.negative(&key) {
            return;
        }
        tracing::debug!(%ip, "oakestra sync: asking the cluster about a missed address");
        self.ask(
            TableQuery {
                sname: String::new(),
                sip: key,
            },
            false,
        );
    }

    /// A name the resolver was asked for, or a service a flow uses.
    fn name(&mut self, name: &ServiceName) {
        if self.st.interests.contains_key(name) {
            self.st.used.insert(name.clone(), Instant::now());
            return;
        }
        let Some(job) = self.inner.book.job_for(name) else {
            return;
        };
        if self.negative(job.as_str()) {
            return;
        }
        self.ask_job(&job, false);
    }

    fn negative(&mut self, key: &str) -> bool {
        let now = Instant::now();
        match self.st.negative.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.st.negative.remove(key);
                false
            }
            None => false,
        }
    }

    /// A table answer (checked here; the registry may have asked it).
    fn answer(&mut self, a: &TableAnswer, asked: bool) {
        let interest = a
            .app_name
            .as_deref()
            .and_then(|j| JobName::parse(j).ok())
            .is_some_and(|j| self.st.interests.contains_key(j.service()));
        if !asked && !interest {
            let job = a.app_name.as_deref().unwrap_or("");
            self.inner.dropped(
                Drop::UnknownService,
                &format!(
                    "table answer for {job:?} (key {:?}) nobody asked for",
                    a.query_key
                ),
            );
            return;
        }
        match check(&self.ctx, a) {
            Err(reason) => {
                let job = a.app_name.as_deref().unwrap_or("");
                self.inner.dropped(
                    reason,
                    &format!("table answer for {job:?}; keeping the previous entries"),
                );
            }
            Ok(None) => self.not_known(&a.query_key),
            // A job without ServiceIPs is no interest yet (a name lookup
            // of a job the cluster does not know makes none).
            Ok(Some(t)) if t.service.is_none() && !interest => self.not_known(&a.query_key),
            Ok(Some(t)) => {
                self.inner.book.remember(&t.job);
                let job = t.job.clone();
                self.interest(&job);
                self.st.tables.replace(t);
                self.publish();
            }
        }
    }

    /// The cluster knows nothing of `key`: not asked again for a while.
    fn not_known(&mut self, key: &str) {
        let now = Instant::now();
        if self.st.negative.len() > 4096 {
            self.st.negative.retain(|_, until| *until > now);
        }
        self.st.negative.insert(key.to_owned(), now + NEGATIVE_TTL);
    }

    /// `jobs/{job}/updates_available`: ask the job again.
    fn update(&mut self, job: &str) {
        let known = JobName::parse(job)
            .ok()
            .and_then(|j| self.st.interests.get(j.service()).cloned());
        match known {
            // Forced: an answer in flight may predate the change.
            Some(j) => self.ask_job(&j, true),
            None => self.inner.dropped(
                Drop::UnknownService,
                &format!("update for job {job:?} this node has no interest in"),
            ),
        }
    }

    /// After a (re)connect or a lag: updates may have been missed.
    fn requery_all(&mut self) {
        for job in self.st.interests.values().cloned().collect::<Vec<_>>() {
            self.ask_job(&job, true);
        }
        self.retry_pending();
    }

    /// Ends the interests unused for `idle` (never a local service's).
    fn expire(&mut self, snap: &Snapshot, idle: Duration, now: Instant) {
        let keep = local_services(snap);
        let gone: Vec<(ServiceName, JobName)> = self
            .st
            .interests
            .iter()
            .filter(|(n, _)| !keep.contains(*n))
            .filter(|(n, _)| {
                self.st
                    .used
                    .get(*n)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= idle)
            })
            .map(|(n, j)| (n.clone(), j.clone()))
            .collect();
        if gone.is_empty() {
            return;
        }
        for (name, job) in gone {
            tracing::info!(%job, idle_secs = idle.as_secs(), "oakestra sync: interest expired");
            let msg = InterestRemove {
                appname: job.as_str().to_owned(),
            };
            if let Err(e) = self
                .inner
                .publish(Leaf::InterestRemove, wire::to_payload(&msg))
            {
                tracing::debug!("oakestra sync: {e}");
            }
            self.inner.unsubscribe_job(job.as_str());
            self.st.interests.remove(&name);
            self.st.used.remove(&name);
            self.st.tables.remove(&name);
        }
        self.inner.status().interests = self.st.interests.len();
        self.publish();
    }

    /// Publishes the view if it changed.
    fn publish(&mut self) {
        let mut view = self.st.tables.view(&self.ctx.plan);
        add_workers(&mut view, lock(&self.inner.workers).values().cloned());
        self.tx.send_if_modified(|cur| {
            let same = cur.peers == view.peers
                && cur.services == view.services
                && cur.instances == view.instances;
            if same {
                false
            } else {
                *cur = Arc::new(view);
                true
            }
        });
    }
}
