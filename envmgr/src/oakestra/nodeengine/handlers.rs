//! What each route does, independent of HTTP: [`NodeEngine::handle`] takes
//! the method, the path and the body and returns the answer, so every rule
//! is unit-tested without a socket.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use tokio::sync::{watch, Mutex};

use super::error::NodeEngineError;
use super::wire::{port_mappings, DeployRequest, DeployResponse, RegisterRequest, UndeployRequest};
use crate::kernel::Kernel;
use crate::manager::Manager;
use crate::model::InstanceKey;
use crate::oakestra::names::{JobBook, JobName};
use crate::oakestra::registration::{check_client_id, Registration, RegistrationError, FILE};
use crate::requests::AttachRequest;

/// The message of a deploy or undeploy before `/register`.
pub const NOT_REGISTERED: &str = "node not registered: POST /register first";

/// An answer: status, media type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type`; `None` for an empty body.
    pub content_type: Option<&'static str>,
    /// The body (JSON for a deploy, the message for a refusal).
    pub body: String,
}

impl Reply {
    fn empty() -> Self {
        Self {
            status: 200,
            content_type: None,
            body: String::new(),
        }
    }
}

impl From<NodeEngineError> for Reply {
    /// A refusal is answered like Go's `http.Error`: the message as text.
    fn from(e: NodeEngineError) -> Self {
        Self {
            status: e.status(),
            content_type: Some("text/plain; charset=utf-8"),
            body: format!("{e}\n"),
        }
    }
}

/// The NetManager API's state: the registration (saved in the state
/// directory and published to whoever waits for it), the job spellings
/// heard, and the node's manager once the daemon has opened it.
#[derive(Debug)]
pub struct NodeEngine<K: Kernel> {
    state_dir: PathBuf,
    book: JobBook,
    registration: watch::Sender<Option<Registration>>,
    manager: OnceLock<Arc<Manager<K>>>,
    /// Serialises `/register` (check, save, publish).
    registering: Mutex<()>,
}

impl<K: Kernel> NodeEngine<K> {
    /// The API for a node keeping its state in `state_dir`: a registration
    /// saved there by an earlier run counts as done.
    pub fn open(state_dir: PathBuf, book: JobBook) -> Result<Self, RegistrationError> {
        let saved = Registration::load(&state_dir)?;
        Ok(Self {
            state_dir,
            book,
            registration: watch::channel(saved).0,
            manager: OnceLock::new(),
            registering: Mutex::new(()),
        })
    }

    /// Sets the registration from elsewhere (the config's
    /// `store.client_id`), without saving it; a later `/register` must
    /// then give the same id.
    pub fn preset(&self, reg: Registration) {
        self.registration.send_replace(Some(reg));
    }

    /// The registration as it is and as it changes: `None` until the
    /// first `/register` (the oakestra backend waits on this).
    pub fn registrations(&self) -> watch::Receiver<Option<Registration>> {
        self.registration.subscribe()
    }

    /// The job spellings this API has heard (shared with the table protocol).
    pub fn book(&self) -> &JobBook {
        &self.book
    }

    /// Hands over the node's manager once it is open; deploys are answered
    /// 503 until then. A second call is ignored.
    pub fn set_manager(&self, mgr: Arc<Manager<K>>) {
        if self.manager.set(mgr).is_err() {
            tracing::warn!("nodeengine: the manager was set twice; keeping the first");
        }
    }

    /// Answers one request. Routes as the Go NetManager's (gorilla mux with
    /// StrictSlash: a trailing slash reaches the same route). Never panics
    /// on any input.
    pub async fn handle(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let route = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let known = [
            "/register",
            "/container/deploy",
            "/container/undeploy",
            "/docker/undeploy",
            "/unikernel/deploy",
            "/unikernel/undeploy",
        ];
        let result = if !known.contains(&route) {
            Err(NodeEngineError::NotFound(format!(
                "no route {path}: the NetManager API has POST /register, /container/deploy, \
                 /container/undeploy, /docker/undeploy"
            )))
        } else if method != "POST" {
            Err(NodeEngineError::MethodNotAllowed(format!(
                "{method} {path}: the NetManager API takes POST only"
            )))
        } else {
            match route {
                "/register" => self.register(body).await,
                "/container/deploy" => self.deploy(body).await,
                "/container/undeploy" | "/docker/undeploy" => self.undeploy(body).await,
                _ => Err(NodeEngineError::NotImplemented(format!(
                    "{route}: proxytun does not run unikernels; deploy containers \
                     (POST /container/deploy)"
                ))),
            }
        };
        match result {
            Ok(reply) => {
                tracing::debug!(route, "nodeengine: ok");
                reply
            }
            Err(e) => {
                tracing::warn!(route, status = e.status(), "nodeengine: {e}");
                e.into()
            }
        }
    }

    async fn register(&self, body: &[u8]) -> Result<Reply, NodeEngineError> {
        let req: RegisterRequest = parse(
            body,
            r#"{"client_id": "<worker id>", "cluster_address": "<cluster manager host>"}"#,
        )?;
        check_client_id(&req.client_id)
            .map_err(|e| NodeEngineError::BadRequest(format!("client_id: {e}")))?;
        let _one = self.registering.lock().await;
        let current = self.registration.borrow().clone();
        if let Some(r) = current {
            if r.client_id == req.client_id {
                return Ok(Reply::empty());
            }
            return Err(NodeEngineError::BadRequest(format!(
                "this node is registered as worker {:?}, not {:?}; to register it anew, stop \
                 proxytun, remove {} and start it again",
                r.client_id,
                req.client_id,
                self.state_dir.join(FILE).display()
            )));
        }
        let reg = Registration {
            client_id: req.client_id,
            cluster_address: Some(req.cluster_address).filter(|a| !a.is_empty()),
        };
        reg.save(&self.state_dir)
            .map_err(|e| NodeEngineError::Internal(format!("saving the registration: {e}")))?;
        tracing::info!(client_id = %reg.client_id, cluster = ?reg.cluster_address, "nodeengine: registered");
        self.registration.send_replace(Some(reg));
        Ok(Reply::empty())
    }

    /// The registration; deploys and undeploys need one (400, as Oakestra).
    fn registered(&self) -> Result<Registration, NodeEngineError> {
        self.registration
            .borrow()
            .clone()
            .ok_or_else(|| NodeEngineError::BadRequest(NOT_REGISTERED.to_owned()))
    }

    /// The manager, once registered and open.
    fn ready(&self) -> Result<&Arc<Manager<K>>, NodeEngineError> {
        let reg = self.registered()?;
        self.manager.get().ok_or_else(|| {
            NodeEngineError::NotReady(format!(
                "registered as worker {:?}, still joining the cluster (the node's manager is \
                 not open yet); retry in a moment",
                reg.client_id
            ))
        })
    }

    async fn deploy(&self, body: &[u8]) -> Result<Reply, NodeEngineError> {
        self.registered()?;
        let req: DeployRequest = parse(
            body,
            r#"{"pid": <int>, "serviceName": "app.appns.service.servicens", "instanceNumber": <int>, "portMappings": "8080:80;53/udp"}"#,
        )?;
        let job = job_name(&req.service_name)?;
        let ports = port_mappings(&req.port_mappings).map_err(NodeEngineError::BadRequest)?;
        if req.pid == 0 {
            return Err(NodeEngineError::BadRequest(
                "pid must be the container task's pid, not 0".to_owned(),
            ));
        }
        let mgr = self.ready()?;
        // Before the attach: the oakestra registry asks the cluster for the
        // job by the spelling the NodeEngine used.
        self.book.remember(&job);
        let name = job.service();
        let inst = mgr
            .attach(AttachRequest {
                app: name.app.clone(),
                service: name.service.clone(),
                instance: Some(req.instance_number),
                netns: None,
                pid: Some(req.pid),
                ifname: None,
                service_ip: None,
                instance_ip: None,
                // A repeated deploy of the same task is the instance it has.
                container_id: Some(format!("oakestra-{}", req.pid)),
                ports,
            })
            .await?;
        if inst.key.number != req.instance_number {
            return Err(NodeEngineError::Manager {
                status: 409,
                message: format!(
                    "pid {} is already deployed as instance {}; undeploy it first",
                    req.pid, inst.key
                ),
            });
        }
        tracing::info!(job = %job, instance = %inst.key, pid = req.pid, "nodeengine: deployed");
        let answer = DeployResponse {
            service_name: req.service_name,
            ns_address: inst.ns_addr.v4.to_string(),
            ns_address_v6: inst.ns_addr.v6.to_string(),
        };
        let mut body = serde_json::to_string(&answer)
            .map_err(|e| NodeEngineError::Internal(format!("encoding the answer: {e}")))?;
        // Go's json.Encoder ends the document with a newline.
        body.push('\n');
        Ok(Reply {
            status: 200,
            content_type: Some("application/json"),
            body,
        })
    }

    /// Detaches the instance; one that is not there is success too (a
    /// repeated undeploy), as the Go NetManager answers 200 after any
    /// detach attempt.
    async fn undeploy(&self, body: &[u8]) -> Result<Reply, NodeEngineError> {
        self.registered()?;
        let req: UndeployRequest = parse(
            body,
            r#"{"serviceName": "app.appns.service.servicens", "instanceNumber": <int>}"#,
        )?;
        let job = job_name(&req.service_name)?;
        let mgr = self.ready()?;
        let key = InstanceKey {
            name: job.service().clone(),
            number: req.instance_number,
        };
        match mgr.detach(&key).await {
            Ok(_) => tracing::info!(job = %job, instance = %key, "nodeengine: undeployed"),
            Err(crate::Error::NotFound(_)) => {
                tracing::info!(job = %job, instance = %key, "nodeengine: undeploy of an instance not attached here; nothing to do")
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Reply::empty())
    }
}

fn parse<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, NodeEngineError> {
    serde_json::from_slice(body).map_err(|e| {
        NodeEngineError::BadRequest(format!(
            "the body is not the JSON this route takes ({e}); send {shape}"
        ))
    })
}

fn job_name(raw: &str) -> Result<JobName, NodeEngineError> {
    JobName::parse(raw).map_err(|e| NodeEngineError::BadRequest(format!("serviceName: {e}")))
}
