//! The node's session with etcd: one background task owns the connection,
//! grants the node's lease, keeps it alive and puts `alive/{node}` under
//! it, and hands the current [`Session`] to everyone else through a watch
//! channel ([`Inner::session`]). An outage is "no session" for a while.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use serde::Serialize;
use tokio::sync::watch;

use super::error::ClusterError;
use super::keys::Keys;
use super::probe;
use super::refusal;
use super::settings::EtcdSettings;

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
    /// Why etcd refused the last TLS connection, naming the `store.*` key
    /// to fix; `None` once a session is up (see `refusal.rs`).
    pub(crate) refused: watch::Sender<Option<String>>,
    pub(crate) status: Mutex<ClusterStatus>,
}

impl Inner {
    /// The status, for writing (a poisoned lock is taken over).
    pub(crate) fn status(&self) -> MutexGuard<'_, ClusterStatus> {
        // A panic while holding this lock leaves plain data behind; go on.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current session, waiting up to `timeout` for one; fails at once
    /// with [`ClusterError::Refused`] when etcd refuses this node's TLS.
    pub(crate) async fn wait_session(&self, timeout: Duration) -> Result<Session, ClusterError> {
        let mut rx = self.session.subscribe();
        let mut refused = self.refused.subscribe();
        let wait = async {
            tokio::select! {
                s = rx.wait_for(|s| s.is_some()) => s.map(|s| s.clone()).map_err(|_| None),
                r = refused.wait_for(|r| r.is_some()) => Err(r.ok().and_then(|r| r.clone())),
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => {
                s.ok_or_else(|| ClusterError::Unavailable("internal: session vanished".to_owned()))
            }
            Ok(Err(Some(why))) => Err(ClusterError::Refused(why)),
            Ok(Err(None)) => Err(ClusterError::Unavailable(
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

/// Capped exponential backoff: 250 ms, 500 ms, ... 5 s.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    /// The first wait.
    pub(crate) const MIN: Duration = Duration::from_millis(250);
    /// The longest wait.
    pub(crate) const MAX: Duration = Duration::from_secs(5);
    /// Starts at [`Self::MIN`].
    pub(crate) fn new() -> Self {
        Self(Self::MIN)
    }
    /// The next wait; doubles up to [`Self::MAX`].
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
    /// Back to [`Self::MIN`] after a success.
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
    /// etcd (or whatever answers there) refused this node's TLS: back off
    /// and retry, as for an outage, but tell waiters at once.
    Refused(String),
}

/// The session task: connects (with backoff), grants or keeps the lease,
/// and publishes the session until it ends; then starts over.
pub(super) async fn session_task(inner: Arc<Inner>, options: ConnectOptions) {
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
        // The client's error may hide a TLS refusal ("connection closed"
        // after a rejected client certificate): ask the server directly.
        let end = match end {
            SessionEnd::Outage(e) if inner.settings.tls.is_some() => {
                match probe::probe(&inner.settings).await {
                    Some(why) => SessionEnd::Refused(why),
                    None => SessionEnd::Outage(e),
                }
            }
            end => end,
        };
        inner.session.send_replace(None);
        {
            let mut st = inner.status();
            st.connected = false;
            if let SessionEnd::Outage(e) | SessionEnd::Refused(e) = &end {
                st.last_error = Some(e.clone());
            }
        }
        match end {
            SessionEnd::Refused(why) => {
                tracing::error!("cluster: etcd refused the TLS connection: {why}");
                inner.refused.send_replace(Some(why));
                in_outage = true;
                tokio::time::sleep(backoff.next()).await;
            }
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

/// One session: connect, lease, `alive/{node}`, then keepalives until the
/// lease is lost or etcd goes away. `on_up` runs once it is live.
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
    let fail = |e: etcd_client::Error| {
        let text = refusal::chain(&e);
        match refusal::tls_refusal(&inner.settings, &text) {
            Some(why) => SessionEnd::Refused(why),
            None => SessionEnd::Outage(text),
        }
    };
    let c = match client {
        Some(c) => c.clone(),
        None => {
            let fut = Client::connect(inner.settings.endpoints.clone(), Some(options.clone()));
            match tokio::time::timeout(t, fut).await {
                Ok(Ok(c)) => {
                    *client = Some(c.clone());
                    c
                }
                Ok(Err(e)) => return fail(e),
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
            Ok(Err(e)) => return fail(e),
            Err(_) => return outage(format!("lease keepalive timed out after {t:?}")),
        }
    }
    let (id, (mut keeper, mut stream)) = match kept {
        Some(k) => k,
        None => {
            let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            let id = match tokio::time::timeout(t, lc.grant(secs, None)).await {
                Ok(Ok(r)) => r.id(),
                Ok(Err(e)) => return fail(e),
                Err(_) => return outage(format!("lease grant timed out after {t:?}")),
            };
            *lease = Some(id);
            match tokio::time::timeout(t, lc.keep_alive(id)).await {
                Ok(Ok(k)) => (id, k),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                    return SessionEnd::LeaseLost
                }
                Ok(Err(e)) => return fail(e),
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
        Ok(Err(e)) => return fail(e),
        Err(_) => return outage(format!("put alive key timed out after {t:?}")),
    }
    *epoch += 1;
    inner.refused.send_replace(None);
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
            return fail(e);
        }
        match tokio::time::timeout(t, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return SessionEnd::LeaseLost,
            Ok(Ok(None)) => return outage("lease keepalive stream closed".to_owned()),
            Ok(Err(e)) => return fail(e),
            Err(_) => return outage(format!("no keepalive answer within {t:?}")),
        }
    }
}
