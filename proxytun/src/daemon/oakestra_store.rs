//! `store.backend = "oakestra"` at start-up: who this worker is (the
//! config, the saved registration, or the NodeEngine's first
//! `/register`), where the broker is, and the subnet the cluster gives it.

use std::time::Duration;

use anyhow::{bail, Context};
use envmgr::oakestra::mqtt::{OakestraCluster, OakestraSettings, QUERY_TIMEOUT};
use envmgr::oakestra::{JobBook, Registration};
use envmgr::plan::AddressPlan;
use tokio::sync::watch;

use crate::config::Config;

/// How long a starting node waits for the cluster's subnet answer when
/// none is cached.
const SUBNET_WAIT: Duration = Duration::from_secs(30);

/// What the NodeEngine listener shares with the Oakestra backend.
#[derive(Debug, Clone)]
pub struct OakestraLink {
    /// The registration, once the NodeEngine posted `/register`.
    pub registration: watch::Receiver<Option<Registration>>,
    /// The job spellings the NodeEngine's deploys taught.
    pub book: JobBook,
}

/// The worker id and the cluster manager's address, in this order: the
/// config's `store.client_id`, the saved `oakestra.json`, the NodeEngine's
/// first `/register` (waited for).
async fn registration(
    config: &Config,
    link: Option<&OakestraLink>,
) -> anyhow::Result<Registration> {
    let saved = Registration::load(&config.state.dir)?;
    if let Some(id) = &config.store.client_id {
        let cluster_address = saved
            .filter(|r| &r.client_id == id)
            .and_then(|r| r.cluster_address)
            .or_else(|| {
                link.and_then(|l| l.registration.borrow().clone())
                    .and_then(|r| r.cluster_address)
            });
        return Ok(Registration {
            client_id: id.clone(),
            cluster_address,
        });
    }
    if let Some(r) = saved {
        tracing::info!(client_id = %r.client_id, "oakestra: registration from the state directory");
        return Ok(r);
    }
    let Some(link) = link else {
        bail!(
            "store.client_id: this worker has no Oakestra id: set store.client_id (and store.broker), or enable the NodeEngine API ([oakestra] enable) so the NodeEngine's /register gives it"
        );
    };
    let mut rx = link.registration.clone();
    tracing::info!("oakestra: waiting for the NodeEngine's POST /register");
    let r = rx
        .wait_for(|r| r.is_some())
        .await
        .context("store.client_id: the NodeEngine listener stopped before /register")?
        .clone();
    r.context("store.client_id: no registration")
}

/// Starts the MQTT client and finds the node's plan. Returns the cluster
/// handle and the plan with the cluster's subnet.
pub async fn open(
    config: &Config,
    link: Option<OakestraLink>,
) -> anyhow::Result<(OakestraCluster, AddressPlan)> {
    let reg = registration(config, link.as_ref()).await?;
    let Some((host, port)) = config.store.oakestra_broker(reg.cluster_address.as_deref()) else {
        bail!(
            "store.broker: the Oakestra broker is unknown (worker {:?} registered without a cluster_address): set store.broker = \"HOST:PORT\"",
            reg.client_id
        );
    };
    let settings = OakestraSettings {
        client_id: reg.client_id.clone(),
        broker_host: host,
        broker_port: port,
        me: config.advertise_endpoint(),
        query_timeout: QUERY_TIMEOUT,
        interest_idle: (config.store.interest_idle_secs > 0)
            .then(|| Duration::from_secs(config.store.interest_idle_secs)),
    };
    let broker = settings.broker();
    let book = link.map(|l| l.book).unwrap_or_default();
    let cluster =
        OakestraCluster::start(settings, book).context("start the Oakestra MQTT client")?;
    tracing::info!(%broker, client_id = %reg.client_id, "oakestra: connecting (MQTT without TLS)");
    let plan = match cluster
        .plan(&config.plan_with_index(0), &config.state.dir, SUBNET_WAIT)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            cluster.stop();
            return Err(e).context(format!(
                "get this worker's subnet from the Oakestra cluster at {broker}"
            ));
        }
    };
    tracing::info!(subnet = %plan.node_subnet(), index = plan.node_index, "oakestra: subnet");
    Ok((cluster, plan))
}
