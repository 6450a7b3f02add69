//! `store.backend = "oakestra"` at start-up: who this worker is (the
//! config, the saved registration, or the NodeEngine's first
//! `/register`), where the broker is, and the subnet the cluster gives it.

use std::time::Duration;

use anyhow::{bail, Context};
use envmgr::oakestra::mqtt::{OakestraCluster, OakestraSettings, QUERY_TIMEOUT};
use envmgr::oakestra::{JobBook, Registration};
use envmgr::plan::AddressPlan;
use tokio::sync::watch;

use crate::config::{Backend, Config};

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

/// The NodeEngine listener's side of the backend: its registrations and
/// job book; with `store.client_id` set, that id preset as the worker's,
/// so a `/register` with another id is refused.
pub fn link(config: &Config, ne: &crate::oakestra::NodeEngineListener) -> OakestraLink {
    let engine = ne.engine();
    if let (Backend::Oakestra, Some(id)) = (config.store.backend, &config.store.client_id) {
        let same = engine
            .registrations()
            .borrow()
            .clone()
            .filter(|r| &r.client_id == id);
        engine.preset(Registration {
            client_id: id.clone(),
            cluster_address: same.and_then(|r| r.cluster_address),
        });
    }
    OakestraLink {
        registration: engine.registrations(),
        book: engine.book().clone(),
    }
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
    let r = r.context("store.client_id: no registration")?;
    // Kept for the next start (the listener may have saved it already).
    if let Err(e) = r.save(&config.state.dir) {
        tracing::warn!("oakestra: registration not saved: {e}");
    }
    Ok(r)
}

/// Starts the MQTT client and finds the node's plan. Returns the cluster
/// handle and the plan with the cluster's subnet.
pub async fn open(
    config: &Config,
    link: Option<OakestraLink>,
    public_key: Option<String>,
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
        public_key,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(state: &Path, extra: &str) -> Config {
        let text = format!(
            "[node]\nname = \"w1\"\n[state]\ndir = {:?}\n[tunnel]\nadvertise = \"192.0.2.1\"\n[store]\nbackend = \"oakestra\"\n{extra}",
            state.display().to_string()
        );
        Config::parse(&text, Path::new("t.toml")).expect("a valid config")
    }

    #[tokio::test]
    async fn the_registration_comes_from_config_file_or_nodeengine() {
        let dir = tempfile::tempdir().expect("dir");
        let c = config(dir.path(), "");
        let e = registration(&c, None).await.expect_err("nothing known");
        assert!(format!("{e:#}").contains("store.client_id"), "{e:#}");

        // The NodeEngine's first /register, then kept.
        let (tx, rx) = watch::channel(None);
        let link = OakestraLink {
            registration: rx,
            book: JobBook::default(),
        };
        let reg = Registration {
            client_id: "w-ne".into(),
            cluster_address: Some("10.0.0.9".into()),
        };
        let r2 = reg.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Some(r2));
        });
        assert_eq!(
            registration(&c, Some(&link)).await.expect("registered"),
            reg
        );
        assert_eq!(
            c.store.oakestra_broker(reg.cluster_address.as_deref()),
            Some(("10.0.0.9".to_owned(), 10003))
        );

        // The saved one, without a listener.
        assert_eq!(registration(&c, None).await.expect("saved"), reg);

        // The config's id wins; the saved address is another worker's.
        let c = config(
            dir.path(),
            "client_id = \"w-cfg\"\nbroker = \"10.0.0.1:1883\"\n",
        );
        let r = registration(&c, None).await.expect("configured");
        assert_eq!((r.client_id.as_str(), r.cluster_address), ("w-cfg", None));
    }
}
