//! Oakestra's cluster service manager, played by the tests.
//!
//! [`OakCluster`] connects to a real broker ([`crate::mosquitto`]) with
//! rumqttc, subscribes `nodes/+/net/#` (QoS 1) like `handle_connect`, and
//! answers every worker message the way Oakestra's Python cluster code
//! does ([`table`] is that logic without I/O): subnets, table queries
//! (recording interest), deployment reports (followed by
//! `jobs/{job}/updates_available`, as the root's notification chain ends),
//! interest removal. The root's part is played by the test through this
//! API: [`OakCluster::add_job`] (the root scheduled a job and assigned its
//! instance IPs) and [`OakCluster::undeploy`] (the root's UNDEPLOYMENT).
//! The `inject_*` calls send what a broken or hostile cluster could.
//!
//! The MQTT client runs on its own thread, in the broker's namespace when
//! the broker runs in one, so no traffic leaves the test's namespaces.
//! The NodeEngine side, the HTTP calls Oakestra's NodeEngine makes on a
//! worker's NetManager socket, is [`crate::nodeengine`].

pub mod table;
pub mod topology;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::mosquitto::Mosquitto;
use crate::netns;
use table::{ClusterState, Deployed, Heard, Job, JobInstance, Outgoing};

/// The topic filter the cluster subscribes (`handle_connect`).
pub const SUBSCRIPTION: &str = "nodes/+/net/#";
/// How long the fixture may take to connect and subscribe.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
struct Inner {
    state: ClusterState,
    /// (topic, what it did), in arrival order.
    heard: Vec<(String, Heard)>,
    subscribed: bool,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| anyhow!("the fixture's state lock is poisoned"))
    }
}

/// The cluster service manager on a broker; stopped on Drop.
pub struct OakCluster {
    client: Client,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    broker: SocketAddr,
}

impl std::fmt::Debug for OakCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OakCluster")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl OakCluster {
    /// Connects to `broker` (from its namespace) as client id
    /// `cluster_service_manager`, subscribes and waits until the broker
    /// confirmed the subscription.
    pub fn start(broker: &Mosquitto) -> Result<OakCluster> {
        OakCluster::connect(broker.addr(), broker.netns().cloned())
    }

    /// [`OakCluster::start`] for a broker at `addr`, reached from the
    /// namespace file `ns` (`None`: the caller's namespace, loopback only).
    pub fn connect(addr: SocketAddr, ns: Option<PathBuf>) -> Result<OakCluster> {
        let mut opts = MqttOptions::new(
            "cluster_service_manager",
            addr.ip().to_string(),
            addr.port(),
        );
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, conn) = Client::new(opts, 1024);
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (client, shared, stop) = (client.clone(), Arc::clone(&shared), Arc::clone(&stop));
            thread::Builder::new()
                .name("oak-cluster".into())
                .spawn(move || run(conn, &client, &shared, &stop, ns))
                .context("starting the fixture's MQTT thread")?
        };
        let c = OakCluster {
            client,
            shared,
            stop,
            thread: Some(thread),
            broker: addr,
        };
        c.wait_until(CONNECT_TIMEOUT, "subscribed to the broker", |i| {
            i.subscribed
        })?;
        Ok(c)
    }

    /// The broker address the nodes are told (`cluster_address` is its IP).
    pub fn broker(&self) -> SocketAddr {
        self.broker
    }

    /// The root scheduled `job` (`app.appns.service.servicens`) with its
    /// round-robin and closest ServiceIPs and instances (number, instance
    /// IP): the cluster's job table now holds it (`instance_deployment`).
    pub fn add_job(
        &self,
        job: &str,
        rr: Ipv4Addr,
        closest: Ipv4Addr,
        instances: &[(u32, Ipv4Addr)],
    ) -> Result<()> {
        let mut j = Job::new(job, rr, closest);
        j.instances = instances
            .iter()
            .map(|&(number, ip)| JobInstance {
                number,
                instance_ip: ip,
                instance_ip_v6: table::v6_of(0, ip),
                deployed: None,
            })
            .collect();
        self.shared.lock()?.state.jobs.insert(job.to_owned(), j);
        Ok(())
    }

    /// Waits until a worker reported (job, number) deployed; its report.
    pub fn wait_deployed(&self, job: &str, number: u32, timeout: Duration) -> Result<Deployed> {
        let what = format!("service/deployed of {job} instance {number}");
        let mut got = None;
        self.wait_until(timeout, &what, |i| {
            got = i
                .state
                .jobs
                .get(job)
                .and_then(|j| j.instances.iter().find(|x| x.number == number))
                .and_then(|x| x.deployed.clone());
            got.is_some()
        })?;
        got.ok_or_else(|| anyhow!("{what}: lost"))
    }

    /// Waits until a message satisfying `pred` (on its topic and what it
    /// did) was heard; returns that topic.
    pub fn wait_heard(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str, &Heard) -> bool,
    ) -> Result<String> {
        let mut topic = None;
        self.wait_until(timeout, what, |i| {
            topic = i
                .heard
                .iter()
                .find(|(t, h)| pred(t, h))
                .map(|(t, _)| t.clone());
            topic.is_some()
        })?;
        topic.ok_or_else(|| anyhow!("{what}: lost"))
    }

    /// Everything heard so far: (topic, what the cluster did).
    pub fn heard(&self) -> Result<Vec<(String, Heard)>> {
        Ok(self.shared.lock()?.heard.clone())
    }

    /// The workers interested in each job (`interested_nodes`).
    pub fn interests(&self) -> Result<BTreeMap<String, Vec<String>>> {
        Ok(self
            .shared
            .lock()?
            .state
            .jobs
            .values()
            .map(|j| (j.name.clone(), j.interested.clone()))
            .collect())
    }

    /// The subnets handed to worker `client_id`, in order.
    pub fn subnets(&self, client_id: &str) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .shared
            .lock()?
            .state
            .subnets
            .get(client_id)
            .cloned()
            .unwrap_or_default())
    }

    /// The job's `instance_list` as a table answer would carry it now.
    pub fn instance_list(&self, job: &str) -> Result<Vec<Value>> {
        let i = self.shared.lock()?;
        let j = i
            .state
            .jobs
            .get(job)
            .ok_or_else(|| anyhow!("the fixture has no job {job}"))?;
        Ok(j.instance_list())
    }

    /// The root undeployed (job, number): the instance leaves the table and
    /// `jobs/{job}/updates_available` `{"type":"UNDEPLOYMENT"}` goes out.
    pub fn undeploy(&self, job: &str, number: u32) -> Result<()> {
        let out = self
            .shared
            .lock()?
            .state
            .undeploy(job, number)
            .ok_or_else(|| anyhow!("the fixture has no instance {number} of {job}"))?;
        self.send(&out)
    }

    /// Publishes `payload` on `topic` (QoS 1).
    pub fn publish(&self, topic: &str, payload: &[u8]) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .with_context(|| format!("publishing on {topic}"))
    }

    fn send(&self, o: &Outgoing) -> Result<()> {
        self.publish(&o.topic, &o.payload)
    }

    /// Hostile: raw bytes (not JSON, or JSON of the wrong shape) as a table
    /// answer to worker `client_id`.
    pub fn inject_raw_answer(&self, client_id: &str, payload: &[u8]) -> Result<()> {
        self.publish(&table::result_topic(client_id), payload)
    }

    /// Hostile: a well-formed answer about `job`, which the worker never
    /// asked about, listing one instance on `host_ip`.
    pub fn inject_unasked_answer(&self, client_id: &str, job: &str, instance: Value) -> Result<()> {
        let v = json!({"app_name": job, "instance_list": [instance], "query_key": job});
        self.publish(&table::result_topic(client_id), v.to_string().as_bytes())
    }

    /// Hostile: the real answer for `job` plus instance `number` whose
    /// `namespace_ip` is `ns_ip` (inside the worker's own subnet) but whose
    /// `host_ip` is `host_ip` (another machine): what a forged update
    /// claiming one of the worker's own addresses looks like.
    pub fn inject_own_subnet_answer(
        &self,
        client_id: &str,
        job: &str,
        number: u32,
        ns_ip: Ipv4Addr,
        host_ip: Ipv4Addr,
    ) -> Result<()> {
        let mut list = self.instance_list(job)?;
        let sips = self
            .shared
            .lock()?
            .state
            .jobs
            .get(job)
            .map_or_else(Vec::new, Job::service_ip_list);
        list.push(forged_instance(number, ns_ip, host_ip, &sips));
        let v = json!({"app_name": job, "instance_list": list, "query_key": job});
        self.publish(&table::result_topic(client_id), v.to_string().as_bytes())
    }

    /// Hostile: `jobs/{job}/updates_available` `{"type":"DEPLOYMENT"}` for a
    /// job the cluster (and the workers) may not know.
    pub fn inject_update_notice(&self, job: &str) -> Result<()> {
        self.send(&table::notify(job, Some("DEPLOYMENT")))
    }

    fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Inner) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock()?;
        loop {
            if done(&g) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the Oakestra fixture: not {what} within {timeout:?} (last MQTT error: {}; heard: {:?})",
                    g.last_error.as_deref().unwrap_or("none"),
                    g.heard.iter().rev().take(10).collect::<Vec<_>>()
                );
            }
            crate::cmd::check_interrupt()?;
            let wait = (deadline - now).min(Duration::from_millis(100));
            g = self
                .shared
                .changed
                .wait_timeout(g, wait)
                .map_err(|_| anyhow!("the fixture's state lock is poisoned"))?
                .0;
        }
    }
}

/// An instance entry of a table answer, with every key Oakestra sends.
pub fn forged_instance(number: u32, ns_ip: Ipv4Addr, host_ip: Ipv4Addr, sips: &[Value]) -> Value {
    let iip = Ipv4Addr::new(10, 30, 200, u8::try_from(number % 250).unwrap_or(0) + 1);
    let mut s = sips.to_vec();
    s.push(json!({"IpType": "instance_ip", "Address": iip.to_string(),
                  "Address_v6": table::v6_of(0, iip).to_string()}));
    json!({
        "instance_number": number,
        "namespace_ip": ns_ip.to_string(),
        "namespace_ip_v6": "fc00::1",
        "host_ip": host_ip.to_string(),
        "host_port": 50103,
        "instance_ip": iip.to_string(),
        "instance_ip_v6": table::v6_of(0, iip).to_string(),
        "service_ip": s,
    })
}

/// The MQTT loop: (re)subscribe on every ConnAck, hand each publish to the
/// state, publish its answers; until `stop`.
fn run(
    mut conn: Connection,
    client: &Client,
    shared: &Shared,
    stop: &AtomicBool,
    ns: Option<PathBuf>,
) {
    if let Some(ns) = ns {
        if let Err(e) = netns::enter(&ns) {
            if let Ok(mut g) = shared.lock() {
                g.last_error = Some(format!("{e:#}"));
            }
            return;
        }
    }
    while !stop.load(Ordering::SeqCst) {
        let ev = match conn.recv_timeout(Duration::from_millis(100)) {
            Err(rumqttc::RecvTimeoutError::Timeout) => continue,
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
            Ok(ev) => ev,
        };
        let mut out = Vec::new();
        {
            let Ok(mut g) = shared.lock() else { break };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(SUBSCRIPTION, QoS::AtLeastOnce) {
                        g.last_error = Some(format!("subscribe: {e}"));
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => g.subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (heard, o) = g.state.handle(&p.topic, &p.payload);
                    g.heard.push((p.topic.clone(), heard));
                    out = o;
                }
                Ok(_) => {}
                Err(e) => {
                    g.subscribed = false;
                    g.last_error = Some(e.to_string());
                }
            }
        }
        shared.changed.notify_all();
        for o in out {
            if let Err(e) = client.try_publish(o.topic, QoS::AtLeastOnce, false, o.payload) {
                if let Ok(mut g) = shared.lock() {
                    g.last_error = Some(format!("publish: {e}"));
                }
            }
        }
        if shared
            .lock()
            .is_ok_and(|g| g.last_error.is_some() && !g.subscribed)
        {
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for OakCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(g) = self.shared.lock() {
                eprintln!("----- the Oakestra fixture heard -----");
                for (t, h) in &g.heard {
                    eprintln!("{t}: {h:?}");
                }
                eprintln!("last MQTT error: {:?}\n-----", g.last_error);
            }
        }
        let _ = self.client.try_disconnect();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
