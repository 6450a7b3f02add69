//! Interests expire: a service this node only uses (no local instance
//! serves it) and that none of its flows or name lookups touched for
//! `store.interest_idle_secs` leaves the node's view. No I/O: the sync task
//! reports uses and asks which interests to drop at `now`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::state::State;
use super::Round;
use crate::model::{ServiceName, Snapshot};

impl Round<'_> {
    /// Drops the interests no flow or lookup used for `store.interest_idle`
    /// (never those of local instances) and publishes the smaller view.
    pub(super) fn expire_interests(&mut self, snap: &Snapshot) {
        let Some(idle) = self.inner.settings.interest_idle else {
            return;
        };
        let keep: BTreeSet<ServiceName> =
            self.wanted(snap).keys().map(|k| k.name.clone()).collect();
        let gone = self.st.idle_interests(Instant::now(), idle, &keep);
        if gone.is_empty() {
            return;
        }
        for name in &gone {
            tracing::info!(service = %name, idle_secs = idle.as_secs(), "cluster sync: interest expired");
            self.st.forget_interest(name);
        }
        self.publish();
    }
}

impl State {
    /// `name` was used (an interest made, a flow or a name lookup).
    pub(super) fn touch(&mut self, name: &ServiceName, now: Instant) {
        if self.interests.contains(name) {
            self.used.insert(name.clone(), now);
        }
    }

    /// The interests idle for `idle` as of `now` that `keep` (the services
    /// of local instances) does not hold. An interest never touched counts
    /// from the first time it is asked about.
    pub(super) fn idle_interests(
        &mut self,
        now: Instant,
        idle: Duration,
        keep: &BTreeSet<ServiceName>,
    ) -> Vec<ServiceName> {
        let mut out = Vec::new();
        for name in &self.interests {
            if keep.contains(name) {
                continue;
            }
            let since = *self.used.entry(name.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= idle {
                out.push(name.clone());
            }
        }
        out
    }

    /// Drops the interest in `name`: its service and instances leave the
    /// view (its watch stays until the next reconnect; its events are
    /// ignored while it is not an interest).
    pub(super) fn forget_interest(&mut self, name: &ServiceName) {
        self.interests.remove(name);
        self.used.remove(name);
        self.services.remove(name);
        self.instances.retain(|k, _| k.name != *name);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_unused_interests_of_no_local_service_expire() {
        let mut st = State::default();
        let (web, db, own): (ServiceName, ServiceName, ServiceName) = (
            "shop/web".parse().unwrap(),
            "shop/db".parse().unwrap(),
            "shop/own".parse().unwrap(),
        );
        for n in [&web, &db, &own] {
            st.interests.insert(n.clone());
        }
        let t0 = Instant::now();
        let idle = Duration::from_secs(10);
        let keep: BTreeSet<_> = [own.clone()].into();
        st.touch(&web, t0);
        assert!(st.idle_interests(t0, idle, &keep).is_empty());
        let t1 = t0 + Duration::from_secs(6);
        st.touch(&db, t1);
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(st.idle_interests(t2, idle, &keep), vec![web.clone()]);
        st.forget_interest(&web);
        assert!(!st.interests.contains(&web));
        // A touch of a forgotten name makes no interest by itself.
        st.touch(&web, t2);
        assert!(!st.interests.contains(&web));
        let t3 = t1 + Duration::from_secs(10);
        assert_eq!(st.idle_interests(t3, idle, &keep), vec![db]);
        // The local service never expires.
        let t4 = t3 + Duration::from_secs(3600);
        assert!(!st.idle_interests(t4, idle, &keep).contains(&own));
    }
}
