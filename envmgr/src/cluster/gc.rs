//! Empty services leave etcd: a service with no instance on any node for
//! `store.empty_service_grace_secs` loses its record and its ServiceIPs
//! (`services/…`, and the `vips/` claims of its round-robin and closest
//! addresses), so the addresses can be handed out again.
//!
//! Every node sweeps (the first to see a service empty for the grace time
//! removes it): one transaction that compares the service record's revision
//! as read and that no key exists under its `instances/` prefix, so two
//! nodes doing it at once, or an attach in between, are safe. The decision
//! of what is due is [`EmptyServices`], without I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio::time::Instant;

use super::keys::{self, ParsedKey, VipRecord};
use super::session::Inner;
use crate::model::{Service, ServiceName};

/// When each service was first seen empty, at which record revision.
#[derive(Debug, Default)]
pub(crate) struct EmptyServices {
    since: BTreeMap<ServiceName, (i64, Instant)>,
}

impl EmptyServices {
    /// One sweep's observation: every service with its record's revision,
    /// and the services with at least one instance. Returns the services
    /// empty (at the same revision) for at least `grace`, with that revision.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        services: &BTreeMap<ServiceName, i64>,
        busy: &BTreeSet<ServiceName>,
        grace: Duration,
    ) -> Vec<(ServiceName, i64)> {
        self.since
            .retain(|name, (rev, _)| services.get(name) == Some(rev) && !busy.contains(name));
        let mut due = Vec::new();
        for (name, rev) in services {
            if busy.contains(name) {
                continue;
            }
            let (_, t0) = self.since.entry(name.clone()).or_insert((*rev, now));
            if now.duration_since(*t0) >= grace {
                due.push((name.clone(), *rev));
            }
        }
        due
    }
}

/// The sweep task: every quarter of the grace time (0.5 s to 30 s), reads
/// the services and the instance keys, and removes the services due.
pub(super) async fn run(inner: Arc<Inner>, grace: Duration) {
    let every = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
    let mut empty = EmptyServices::default();
    loop {
        tokio::time::sleep(every).await;
        let Some(s) = inner.session.borrow().clone() else {
            continue;
        };
        if let Err(e) = sweep(&inner, s.client, &mut empty, grace).await {
            tracing::debug!("cluster: empty-service sweep: {e}");
        }
    }
}

/// One sweep.
async fn sweep(
    inner: &Inner,
    mut c: Client,
    empty: &mut EmptyServices,
    grace: Duration,
) -> Result<(), etcd_client::Error> {
    let k = &inner.keys;
    let got = c
        .get(k.services(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut records = BTreeMap::new();
    for kv in got.kvs() {
        if let Some(ParsedKey::Service(name)) = k.parse(kv.key()) {
            if let Ok(svc) = keys::decode::<Service>(kv.key(), kv.value()) {
                records.insert(name, (kv.mod_revision(), svc));
            }
        }
    }
    let inst = c
        .get(
            k.instances(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let busy: BTreeSet<ServiceName> = inst
        .kvs()
        .iter()
        .filter_map(|kv| match k.parse(kv.key()) {
            Some(ParsedKey::Instance(ik)) => Some(ik.name),
            _ => None,
        })
        .collect();
    let revs = records.iter().map(|(n, (r, _))| (n.clone(), *r)).collect();
    for (name, rev) in empty.observe(Instant::now(), &revs, &busy, grace) {
        let Some((_, svc)) = records.get(&name) else {
            continue;
        };
        remove(inner, &mut c, &name, rev, svc).await?;
    }
    Ok(())
}

/// Removes one empty service and its ServiceIP claims, if it is still the
/// record read at `rev` and still has no instance.
async fn remove(
    inner: &Inner,
    c: &mut Client,
    name: &ServiceName,
    rev: i64,
    svc: &Service,
) -> Result<(), etcd_client::Error> {
    let k = &inner.keys;
    let sk = k.service(name);
    let mut when = vec![
        Compare::mod_revision(sk.as_str(), CompareOp::Equal, rev),
        Compare::create_revision(k.instances_of(name), CompareOp::Equal, 0).with_prefix(),
    ];
    let mut ops = vec![TxnOp::delete(sk.as_str(), None)];
    let addrs = std::iter::once(svc.rr_ip.v4).chain(svc.closest_ip.map(|c| c.v4));
    for ip in addrs {
        let vk = k.vip(ip);
        let got = c.get(vk.as_str(), None).await?;
        let Some(kv) = got.kvs().first() else {
            continue;
        };
        let ours = keys::decode::<VipRecord>(kv.key(), kv.value())
            .ok()
            .and_then(|v| v.service())
            .is_some_and(|s| s == *name);
        if ours {
            when.push(Compare::mod_revision(
                vk.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            ));
            ops.push(TxnOp::delete(vk.as_str(), None));
        }
    }
    let resp = c.txn(Txn::new().when(when).and_then(ops)).await?;
    if resp.succeeded() {
        tracing::info!(service = %name, rr = %svc.rr_ip.v4, "cluster: empty service removed; its ServiceIPs are free");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServiceName {
        s.parse().expect("name")
    }

    #[test]
    fn due_after_grace_only_while_empty_and_unchanged() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut e = EmptyServices::default();
        let services = BTreeMap::from([(name("shop/web"), 7), (name("shop/db"), 9)]);
        let busy = BTreeSet::from([name("shop/db")]);
        assert!(e.observe(t0, &services, &busy, grace).is_empty());
        let t1 = t0 + Duration::from_secs(59);
        assert!(e.observe(t1, &services, &busy, grace).is_empty());
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(
            e.observe(t2, &services, &busy, grace),
            [(name("shop/web"), 7)]
        );

        // An instance comes and goes: the clock starts again.
        let busy_web = BTreeSet::from([name("shop/web"), name("shop/db")]);
        assert!(e.observe(t2, &services, &busy_web, grace).is_empty());
        let t3 = t2 + Duration::from_secs(1);
        assert!(e.observe(t3, &services, &busy, grace).is_empty());
        let t4 = t3 + Duration::from_secs(60);
        assert_eq!(
            e.observe(t4, &services, &busy, grace),
            [(name("shop/web"), 7)]
        );

        // The record changed (affinity set): the clock starts again.
        let changed = BTreeMap::from([(name("shop/web"), 8), (name("shop/db"), 9)]);
        assert!(e.observe(t4, &changed, &busy, grace).is_empty());
        assert_eq!(
            e.observe(t4 + grace, &changed, &busy, grace),
            [(name("shop/web"), 8)]
        );

        // A busy service is never due, however long.
        assert!(!e
            .observe(t4 + grace * 10, &changed, &busy, grace)
            .iter()
            .any(|(n, _)| *n == name("shop/db")));
    }
}
