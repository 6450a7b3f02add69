//! Two Oakestra workers and their cluster manager in namespaces.
//!
//! ```text
//!   <p>a (192.0.2.1) ──┐                 ┌── <p>b (192.0.2.2)
//!     proxytun a        │  <p>sw: br0     │     proxytun b
//!     (oakestra store)  └───────┬─────────┘     (oakestra store)
//!                               └── <p>cm (192.0.2.254): mosquitto :10003,
//!                                   the cluster service manager fixture
//! ```
//!
//! The daemons run with `store.backend = "oakestra"` and no client id or
//! broker in their config: the test plays the NodeEngine and registers
//! each one ([`OakTopology::register`]), after which it connects to the
//! broker at `cluster_address:10003`, gets its subnet from the fixture and
//! opens its API. Containers are deployed the NodeEngine way, by the pid of
//! a process inside them ([`OakTopology::pod`], [`Pod`]).

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::OakCluster;
use crate::cluster::{plug_host, prefix_for, two_hosts, Container};
use crate::cmd::{self, Bg};
use crate::mosquitto::{Mosquitto, OAKESTRA_MQTT_PORT};
use crate::netns::Netns;
use crate::node::{Node, NodeConfig, OakestraStore, TestKey};
use crate::nodeengine::{DeployReply, NodeEngine};

/// The cluster manager's underlay address (`cluster_address`).
pub const MANAGER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// How long a worker may take from `/register` to an answering API.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The topology; Drop stops the daemons, then the fixture, the broker,
/// and removes the namespaces (field order).
#[derive(Debug)]
pub struct OakTopology {
    /// Worker `a`, underlay 192.0.2.1.
    pub a: Node,
    /// Worker `b`, underlay 192.0.2.2.
    pub b: Node,
    /// The cluster service manager.
    pub cluster: OakCluster,
    /// The broker, in the manager's namespace.
    pub broker: Mosquitto,
    manager: Netns,
    switch: Netns,
    prefix: String,
    key: TestKey,
}

/// A container deployed the NodeEngine way: a process inside it whose pid
/// the NetManager was given. The process goes before the namespace.
#[derive(Debug)]
pub struct Pod {
    sleeper: Bg,
    /// The container (servers, probes).
    pub container: Container,
}

impl Pod {
    /// The pid of the process inside (what `/container/deploy` takes).
    pub fn pid(&self) -> Result<u32> {
        self.sleeper
            .pid()
            .ok_or_else(|| anyhow!("the pod's process has stopped"))
    }
}

impl OakTopology {
    /// Builds the underlay, starts the broker and the fixture on the
    /// manager host, and launches both daemons (not yet registered).
    pub fn two_nodes(test: &str) -> Result<OakTopology> {
        OakTopology::two_nodes_with(test, |_| {})
    }

    /// [`Self::two_nodes`] with each worker's config passed through `edit`
    /// first (e.g. `[network] client_range` for a gateway, in `extra`).
    pub fn two_nodes_with(test: &str, edit: impl Fn(&mut NodeConfig)) -> Result<OakTopology> {
        crate::support::require_root()?;
        if !Mosquitto::available() {
            bail!(
                "{} is not installed (apt-get install mosquitto; scripts/lib.sh install_deps)",
                crate::mosquitto::mosquitto_bin().display()
            );
        }
        let prefix = prefix_for(test);
        let (switch, [(host_a, ip_a), (host_b, ip_b)]) = two_hosts(&prefix)?;
        let manager = plug_host(&switch, &format!("{prefix}cm"), "pcm", MANAGER_IP)?;
        let broker = Mosquitto::start_in(&manager, MANAGER_IP, OAKESTRA_MQTT_PORT)?;
        let cluster = OakCluster::start(&broker)?;
        let key = TestKey::generate()?;
        let security = Some(key.security()?);
        // `PROXYTUN_TEST_KEYS=node`: per-node keys, published in the
        // workers' presences (no `[[peer]]` keys with this backend).
        let node_keys = crate::node::test_node_keys()?.then(crate::node::NodeKeys::default);
        let cfg = |name: &str, underlay| {
            let mut c = NodeConfig {
                name: name.into(),
                index: 0,
                underlay,
                peers: vec![],
                store: None,
                oakestra: Some(OakestraStore::default()),
                keepalive: None,
                dns: None,
                extra: String::new(),
                security: security.clone(),
                offload: None,
                busy_poll_us: None,
                threads: None,
                node_keys: node_keys.clone(),
                peer_keys: Vec::new(),
            };
            edit(&mut c);
            c
        };
        let mut a = Node::new(host_a, &cfg("a", ip_a))?;
        let mut b = Node::new(host_b, &cfg("b", ip_b))?;
        a.launch()?;
        b.launch()?;
        Ok(OakTopology {
            a,
            b,
            cluster,
            broker,
            manager,
            switch,
            prefix,
            key,
        })
    }

    /// The namespace-name prefix of this test.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cluster key the workers' tunnels use.
    pub fn key(&self) -> &TestKey {
        &self.key
    }

    /// The manager host's namespace (broker and fixture).
    pub fn manager(&self) -> &Netns {
        &self.manager
    }

    /// The switch namespace (the underlay bridge).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Plays the NodeEngine's registration of `node` as worker `client_id`
    /// with cluster address [`MANAGER_IP`], then waits until its API
    /// answers (it joined: connected, got its subnet).
    pub fn register(node: &mut Node, client_id: &str) -> Result<()> {
        let socket = OakTopology::wait_nodeengine(node)?;
        let r = NodeEngine::new(&socket).register(client_id, Some(&MANAGER_IP.to_string()))?;
        if r.status != 200 {
            bail!(
                "/register on node {}: HTTP {} {}",
                node.name,
                r.status,
                r.body.trim()
            );
        }
        node.wait_started()
            .with_context(|| format!("node {} after /register", node.name))
    }

    /// Waits until `node`'s NodeEngine socket exists (the daemon listens
    /// there before it joins); returns its path.
    pub fn wait_nodeengine(node: &mut Node) -> Result<PathBuf> {
        let socket = NodeEngine::of(node).socket().to_owned();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        while !socket.exists() {
            if let Some(st) = node.exited()? {
                bail!(
                    "daemon of node {} exited ({st}) before its NodeEngine socket appeared; log:\n{}",
                    node.name,
                    node.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {}: no NodeEngine socket {} within {JOIN_TIMEOUT:?}; log:\n{}",
                    node.name,
                    socket.display(),
                    node.log_tail(40)
                );
            }
            cmd::sleep(Duration::from_millis(50))?;
        }
        Ok(socket)
    }

    /// A new container `<prefix><short>` with a process inside for the
    /// NetManager to find its namespace by.
    pub fn pod(&self, short: &str) -> Result<Pod> {
        let ns = Netns::create(&format!("{}{short}", self.prefix))?;
        let sleeper = ns.spawn("sleep", &["600"])?;
        let pid = sleeper
            .pid()
            .ok_or_else(|| anyhow!("the pod's process did not start"))?;
        // `ip netns exec` enters the namespace, then execs: wait until the
        // pid is inside, so the NetManager never sees another namespace.
        wait_in_netns(pid, &ns.path())?;
        Ok(Pod {
            sleeper,
            container: Container::new(ns),
        })
    }

    /// `/container/deploy` of `pod` as instance `number` of `job` on
    /// `node`, required to succeed.
    pub fn deploy(node: &Node, pod: &Pod, job: &str, number: u32) -> Result<DeployReply> {
        NodeEngine::of(node)
            .deploy_ok(pod.pid()?, job, number)
            .with_context(|| format!("deploying {job} {number} on node {}", node.name))
    }

    /// `/container/undeploy` of instance `number` of `job` on `node`,
    /// required to answer 200.
    pub fn undeploy(node: &Node, job: &str, number: u32) -> Result<()> {
        let r = NodeEngine::of(node).undeploy(job, number)?;
        if r.status != 200 {
            bail!(
                "/container/undeploy {job} {number} on node {}: HTTP {} {}",
                node.name,
                r.status,
                r.body.trim()
            );
        }
        Ok(())
    }
}

/// Waits until process `pid`'s network namespace is the one at `ns`.
fn wait_in_netns(pid: u32, ns: &Path) -> Result<()> {
    let want = fs::metadata(ns).with_context(|| format!("stat {}", ns.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            if m.ino() == want.ino() && m.dev() == want.dev() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("process {pid} did not enter {} within 5s", ns.display());
        }
        cmd::sleep(Duration::from_millis(10))?;
    }
}
