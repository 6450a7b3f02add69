//! The manager's claims, answered by the Oakestra cluster: a service's
//! ServiceIPs and an instance's IP come from table answers (the root
//! orchestrator allocated them when it scheduled the job); a claim ends
//! with `service/deployed`, a release with `service/undeployed`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;

use super::view::{check, JobTable};
use super::wire::{self, DeployNotice, Leaf, TableQuery};
use super::{lock, status_json, Event, Inner};
use crate::error::{Error, Result};
use crate::model::{Affinity, DualAddr, InstanceKey, Policy, Service, ServiceName};
use crate::oakestra::JobName;
use crate::plan::AddressPlan;
use crate::registry::{Claim, Registry};

/// The Oakestra cluster as the manager's registry.
#[derive(Debug)]
pub struct OakestraRegistry {
    inner: Arc<Inner>,
    plan: AddressPlan,
    /// The namespace addresses claimed, for the undeploy notice.
    claimed: Mutex<HashMap<InstanceKey, DualAddr>>,
}

impl OakestraRegistry {
    pub(super) fn new(inner: Arc<Inner>, plan: AddressPlan) -> Self {
        Self {
            inner,
            plan,
            claimed: Mutex::default(),
        }
    }

    /// The job a service name stands for.
    fn job(&self, name: &ServiceName) -> Result<JobName> {
        self.inner.book.job_for(name).ok_or_else(|| {
            Error::Invalid(format!(
                "service {name} is not an Oakestra job (with store.backend = \"oakestra\" services are named app-appns/service-servicens, from the job app.appns.service.servicens)"
            ))
        })
    }

    /// Asks the cluster for a job's table (always sent) and waits for the
    /// answer; checked like the sync task's.
    async fn table(&self, job: &JobName) -> Result<JobTable> {
        let inner = &self.inner;
        if !inner.connected() {
            return Err(Error::Unavailable(format!(
                "not connected to the Oakestra broker at {}",
                inner.settings.broker()
            )));
        }
        let mut rx = inner.events.subscribe();
        let q = TableQuery {
            sname: job.as_str().to_owned(),
            sip: String::new(),
        };
        if !inner.ask(&q, true) {
            return Err(Error::Unavailable(format!(
                "cannot send a table query to the Oakestra broker at {}",
                inner.settings.broker()
            )));
        }
        let t = inner.settings.query_timeout;
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(Event::Answer { answer: a, .. })
                        if a.query_key == job.as_str()
                            || a.app_name.as_deref() == Some(job.as_str()) =>
                    {
                        return Some(a)
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        };
        let answer = tokio::time::timeout(t, wait)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "the Oakestra cluster did not answer the table query for {job} within {t:?}"
                ))
            })?;
        let ctx = inner
            .ctx()
            .ok_or_else(|| Error::Unavailable("the node's subnet is not known yet".into()))?;
        match check(&ctx, &answer) {
            Ok(Some(t)) => {
                inner.book.remember(&t.job);
                Ok(t)
            }
            Ok(None) => Err(not_known(job)),
            Err(reason) => Err(Error::Unprocessable(format!(
                "the Oakestra cluster's table answer for {job} was refused ({reason}); see docs/oakestra.md"
            ))),
        }
    }

    /// Publishes a deploy or undeploy notice.
    fn notify(&self, leaf: Leaf, job: &JobName, number: u32, ns: Option<DualAddr>) -> Result<()> {
        let me = self.inner.settings.me;
        let n = DeployNotice {
            appname: job.as_str().to_owned(),
            status: if leaf == Leaf::Deployed {
                "DEPLOYED".into()
            } else {
                "UNDEPLOYED".into()
            },
            instance_number: number,
            nsip: ns.map(|a| a.v4.to_string()).unwrap_or_default(),
            nsipv6: ns.map(|a| a.v6.to_string()).unwrap_or_default(),
            host_ip: me.ip().to_string(),
            host_port: me.port().to_string(),
        };
        self.inner
            .publish(leaf, wire::to_payload(&n))
            .map_err(Error::Unavailable)
    }
}

/// The cluster has no RR ServiceIP for the job.
fn not_known(job: &JobName) -> Error {
    Error::NotFound(format!(
        "the Oakestra cluster does not know service {job} (its table answer has no RR ServiceIP); deploy it through Oakestra first"
    ))
}

/// Oakestra keeps no such record.
fn refused(what: &str) -> Error {
    Error::Conflict(format!(
        "{what} is not available with store.backend = \"oakestra\": the Oakestra cluster has no such record"
    ))
}

impl Registry for OakestraRegistry {
    fn service<'a>(
        &'a self,
        name: &'a ServiceName,
        pinned_rr: Option<Ipv4Addr>,
    ) -> BoxFuture<'a, Result<Service>> {
        Box::pin(async move {
            let job = self.job(name)?;
            let t = self.table(&job).await?;
            let mut svc = t.service.ok_or_else(|| not_known(&job))?;
            if let Some(p) = pinned_rr {
                if p != svc.rr_ip.v4 {
                    return Err(Error::Conflict(format!(
                        "service {name}: the cluster's RR ServiceIP is {}, not {p}",
                        svc.rr_ip.v4
                    )));
                }
            }
            svc.name = name.clone();
            Ok(svc)
        })
    }

    fn claim(&self, claim: Claim) -> BoxFuture<'_, Result<(InstanceKey, DualAddr)>> {
        Box::pin(async move {
            let job = self.job(&claim.name)?;
            let number = claim.number.ok_or_else(|| {
                Error::Invalid(format!(
                    "{job}: give the instance number: with store.backend = \"oakestra\" the cluster schedules instances and the NodeEngine names them"
                ))
            })?;
            let t = self.table(&job).await?;
            let ip = *t.instance_ips.get(&number).ok_or_else(|| {
                Error::NotFound(format!(
                    "the Oakestra cluster has no instance {number} of {job} (no instance_ip in its table answer)"
                ))
            })?;
            if let Some(want) = claim.instance_ip {
                if want != ip {
                    return Err(Error::Conflict(format!(
                        "instance {number} of {job}: the cluster's instance IP is {ip}, not {want}"
                    )));
                }
            }
            self.notify(Leaf::Deployed, &job, number, Some(claim.ns_addr))?;
            let key = InstanceKey {
                name: claim.name.clone(),
                number,
            };
            lock(&self.claimed).insert(key.clone(), claim.ns_addr);
            tracing::info!(%job, number, ns = %claim.ns_addr.v4, %ip, "oakestra: deployed");
            Ok((key, self.plan.service_pair(ip)))
        })
    }

    fn release<'a>(&'a self, key: &'a InstanceKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Ok(job) = self.job(&key.name) else {
                return Ok(());
            };
            let ns = lock(&self.claimed).remove(key);
            self.notify(Leaf::Undeployed, &job, key.number, ns)
        })
    }

    fn status(&self) -> serde_json::Value {
        status_json(&self.inner)
    }

    fn put_policy<'a>(
        &'a self,
        _policy: &'a Policy,
        _read: Option<u64>,
    ) -> BoxFuture<'a, Result<Policy>> {
        Box::pin(async move { Err(refused("an isolation policy")) })
    }

    fn set_affinity<'a>(
        &'a self,
        _name: &'a ServiceName,
        _affinity: Affinity,
    ) -> BoxFuture<'a, Result<Service>> {
        Box::pin(async move { Err(refused("client affinity")) })
    }
}
