//! A three-node cluster whose control plane is a real etcd, in namespaces.
//!
//! ```text
//!   <p>a 192.0.2.1 ──┐                                   ┌── <p>c 192.0.2.3
//!   <p>b 192.0.2.2 ──┤── <p>sw: bridge br0 ──────────────┤
//!                    └── <p>e 192.0.2.254: etcd :2379 ───┘
//! ```
//!
//! Unlike [`crate::Cluster`], nobody tells a node about the others: each
//! daemon runs with `[store] backend = "etcd"`, leases its subnet, finds its
//! peers and the instances it needs in etcd. The timers are short (lease TTL
//! 3 s, keepalive 300 ms, peer timeout 1.2 s) so failures show within a test.
//! Drop order: daemons (they may still talk to etcd on the way out), then
//! etcd, then the switch; every namespace is deleted, also on failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cluster::{plug_host, prefix_for, Container};
use crate::etcd::Etcd;
use crate::linkdelay::DelayLink;
use crate::model::{Dual, Instance, Service};
use crate::netns::Netns;
use crate::node::{EtcdStore, Keepalive, Node, NodeConfig, TestKey};
use crate::tls::Pki;

/// The etcd host's underlay address.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// `store.lease_ttl_secs` of every node.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// `tunnel.keepalive_ms` of every node.
pub const KEEPALIVE_MS: u32 = 300;
/// `tunnel.peer_timeout_ms` of every node.
pub const PEER_TIMEOUT_MS: u32 = 1200;
/// The key prefix in etcd (the product's default).
pub const KEY_PREFIX: &str = "/proxytun";

/// Three etcd-backed nodes `a`, `b`, `c` and the etcd server.
#[derive(Debug)]
pub struct Cluster3 {
    /// Node `a`, underlay 192.0.2.1.
    pub a: Node,
    /// Node `b`, underlay 192.0.2.2.
    pub b: Node,
    /// Node `c`, underlay 192.0.2.3.
    pub c: Node,
    /// The etcd server, 192.0.2.254.
    pub etcd: Etcd,
    /// The test certificates of a TLS cluster ([`Cluster3::build_tls`]).
    pki: Option<Pki>,
    links: Vec<(String, DelayLink)>,
    switch: Netns,
    prefix: String,
    /// The cluster key every node's `tunnel.key_file` points at (held so
    /// the file lives as long as the cluster).
    _key: TestKey,
}

impl Cluster3 {
    /// Builds the topology, starts etcd and the three daemons at the same
    /// moment, and waits until all three answer.
    pub fn start(test: &str) -> Result<Cluster3> {
        Cluster3::start_with_delay_on(test, &[])
    }

    /// [`Cluster3::start`], with the nodes named in `delayable` plugged
    /// through a [`DelayLink`] so [`Cluster3::delay`] works on them.
    pub fn start_with_delay_on(test: &str, delayable: &[&str]) -> Result<Cluster3> {
        let mut c = Cluster3::build(test, delayable)?;
        c.start_parallel()?;
        Ok(c)
    }

    /// Builds the topology and starts etcd; the daemons are configured but
    /// not started. The nodes named in `delayable` get a [`DelayLink`]
    /// instead of a veth pair.
    pub fn build(test: &str, delayable: &[&str]) -> Result<Cluster3> {
        Cluster3::build_with(test, delayable, |_| {})
    }

    /// [`Cluster3::build`], with `tweak` applied to each node's config
    /// before it is written (e.g. a `[dns]` section).
    pub fn build_with(
        test: &str,
        delayable: &[&str],
        tweak: impl Fn(&mut NodeConfig),
    ) -> Result<Cluster3> {
        Cluster3::build_store(test, delayable, false, tweak)
    }

    /// [`Cluster3::build`] on an etcd that speaks TLS only and requires
    /// client certificates, with certificates made for the test
    /// ([`Cluster3::pki`]); every node gets `store.ca_file` and a client
    /// certificate.
    pub fn build_tls(test: &str) -> Result<Cluster3> {
        Cluster3::build_store(test, &[], true, |_| {})
    }

    fn build_store(
        test: &str,
        delayable: &[&str],
        tls: bool,
        tweak: impl Fn(&mut NodeConfig),
    ) -> Result<Cluster3> {
        crate::support::require_root()?;
        let prefix = prefix_for(test);
        let switch = Netns::create(&format!("{prefix}sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let etcd_host = plug_host(&switch, &format!("{prefix}e"), "pe", ETCD_IP)?;
        let pki = if tls {
            Some(Pki::generate(
                &format!("proxytun-{prefix}pki-"),
                ETCD_IP.into(),
            )?)
        } else {
            None
        };
        let etcd = match &pki {
            Some(pki) => Etcd::start_in_tls(etcd_host, ETCD_IP, &format!("{prefix}etcd"), pki)?,
            None => Etcd::start_in(etcd_host, ETCD_IP, &format!("{prefix}etcd"))?,
        };
        let store = EtcdStore {
            endpoints: vec![etcd.endpoint()],
            prefix: None,
            lease_ttl_secs: u32::try_from(LEASE_TTL.as_secs()).unwrap_or(3),
            ca_file: pki.as_ref().map(|p| p.ca.clone()),
            client: pki.as_ref().map(|p| p.client.clone()),
            empty_service_grace_secs: None,
            interest_idle_secs: None,
        };
        let key = TestKey::generate()?;
        let security = Some(key.security()?);
        let mut nodes = Vec::new();
        let node_keys = crate::node::test_node_keys()?.then(crate::node::NodeKeys::default);
        let mut links = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let last = u8::try_from(i + 1).unwrap_or(1);
            let ip = Ipv4Addr::new(192, 0, 2, last);
            let (host_name, port) = (format!("{prefix}{name}"), format!("p{name}"));
            let host = if delayable.contains(&name) {
                let host = Netns::create(&host_name)?;
                let link = DelayLink::plug(&switch, &host, &port, ip)
                    .with_context(|| format!("plugging node {name} through a delay link"))?;
                links.push((name.to_owned(), link));
                host
            } else {
                plug_host(&switch, &host_name, &port, ip)?
            };
            let mut cfg = NodeConfig {
                name: name.into(),
                index: 0,
                underlay: ip,
                peers: vec![],
                store: Some(store.clone()),
                oakestra: None,
                keepalive: Some(Keepalive {
                    interval_ms: KEEPALIVE_MS,
                    peer_timeout_ms: PEER_TIMEOUT_MS,
                }),
                dns: None,
                extra: String::new(),
                security: security.clone(),
                offload: None,
                busy_poll_us: None,
                threads: None,
                node_keys: node_keys.clone(),
                peer_keys: Vec::new(),
            };
            tweak(&mut cfg);
            nodes.push(Node::new(host, &cfg)?);
        }
        let mut it = nodes.into_iter();
        let (Some(a), Some(b), Some(c)) = (it.next(), it.next(), it.next()) else {
            bail!("three nodes expected");
        };
        Ok(Cluster3 {
            a,
            b,
            c,
            etcd,
            pki,
            links,
            switch,
            prefix,
            _key: key,
        })
    }

    /// Spawns all three daemons, then waits for all three: they race for
    /// their subnets in etcd.
    pub fn start_parallel(&mut self) -> Result<()> {
        for n in [&mut self.a, &mut self.b, &mut self.c] {
            n.launch()?;
        }
        for n in [&mut self.a, &mut self.b, &mut self.c] {
            n.wait_started()?;
        }
        Ok(())
    }

    /// The test certificates, for a cluster from [`Cluster3::build_tls`].
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// The namespace-name prefix of this test.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The three nodes.
    pub fn nodes(&self) -> [&Node; 3] {
        [&self.a, &self.b, &self.c]
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name}"))
    }

    /// The switch namespace of the underlay.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// A new, empty container namespace `<prefix><short>`.
    pub fn container(&self, short: &str) -> Result<Container> {
        Ok(Container::new(Netns::create(&format!(
            "{}{short}",
            self.prefix
        ))?))
    }

    /// A container running `ptprobe serve --name server`, attached on
    /// `node` as `service/number`. The node gets the ServiceIPs from etcd.
    pub fn server(
        &self,
        node: &Node,
        short: &str,
        service: &str,
        number: u32,
        server: &str,
    ) -> Result<(Container, Instance)> {
        let mut c = self.container(short)?;
        c.serve(server)?;
        let inst = node
            .attach(service, &c.path(), Some(number), None)
            .with_context(|| format!("attaching {service}/{number} on node {}", node.name))?;
        Ok((c, inst))
    }

    /// A client container attached on `node` as `shop/client/<number>` (it
    /// needs an instance IP for the replies).
    pub fn client(&self, node: &Node, short: &str, number: u32) -> Result<(Container, Instance)> {
        let c = self.container(short)?;
        let inst = node
            .attach("shop/client", &c.path(), Some(number), None)
            .with_context(|| format!("attaching shop/client/{number} on node {}", node.name))?;
        Ok((c, inst))
    }

    /// Delays everything `node` sends on the underlay by `ms`, which adds
    /// as much to every round trip with it. The node must have been built
    /// with a [`DelayLink`] (this kernel has no `sch_netem`, so
    /// `tc qdisc .. netem` is not an option).
    pub fn delay(&self, node: &Node, ms: u32) -> Result<()> {
        let (_, link) = self
            .links
            .iter()
            .find(|(n, _)| *n == node.name)
            .ok_or_else(|| {
                anyhow!(
                    "node {} has no delay link: build the cluster with \
                     start_with_delay_on(.., &[\"{}\"])",
                    node.name,
                    node.name
                )
            })?;
        link.set_delay(Duration::from_millis(u64::from(ms)));
        Ok(())
    }

    /// What went wrong in the delay links' relays, if anything.
    pub fn link_errors(&self) -> Vec<String> {
        self.links
            .iter()
            .flat_map(|(n, l)| l.errors().into_iter().map(move |e| format!("{n}: {e}")))
            .collect()
    }

    /// Waits until every node lists the two others as peers (and, when
    /// the API reports liveness, as alive).
    pub fn wait_mesh(&self, timeout: Duration) -> Result<()> {
        for n in self.nodes() {
            crate::support::eventually(timeout, || {
                let peers = n.peers()?;
                for other in self.nodes() {
                    if other.name == n.name {
                        continue;
                    }
                    let p = peers
                        .iter()
                        .find(|p| p.name == other.name)
                        .ok_or_else(|| anyhow!("node {} does not list {}", n.name, other.name))?;
                    if p.alive == Some(false) {
                        bail!("node {} sees {} down: {}", n.name, other.name, p.raw);
                    }
                }
                Ok(())
            })
            .with_context(|| format!("peers of node {}", n.name))?;
        }
        Ok(())
    }
}

impl Drop for Cluster3 {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster {} torn down after a failure", self.prefix);
            let errors = self.link_errors();
            if !errors.is_empty() {
                eprintln!("delay link errors: {errors:?}");
            }
        }
    }
}

/// The closest ServiceIP of a service as the API shows it (`closest_ip`).
pub fn closest_ip(svc: &Service) -> Result<Dual> {
    Dual::from_json(&svc.raw["closest_ip"])
        .with_context(|| format!("closest_ip of {} in {}", svc.name(), svc.raw))
}

/// What [`paced_send`] reports.
#[derive(Debug, Clone)]
pub struct PacedTransfer {
    /// The server's name.
    pub name: String,
    /// Bytes sent.
    pub bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// The checksum of what was sent; the server's matched it.
    pub sha256: String,
}

/// A long-lived TCP transfer: from the namespace `ns`, connects to
/// `target` (a `ptprobe serve`), asks it to `sink`, and sends `chunk`
/// bytes every `tick` for `ticks` ticks, then checks the server's
/// checksum. Runs on its own thread (which enters the namespace; its
/// socket stays there), so the test can break things meanwhile.
pub fn paced_send(
    ns: &Netns,
    target: SocketAddr,
    chunk: usize,
    tick: Duration,
    ticks: u32,
) -> thread::JoinHandle<Result<PacedTransfer>> {
    let path = ns.path();
    thread::spawn(move || paced_send_in(&path, target, chunk, tick, ticks))
}

fn paced_send_in(
    ns: &Path,
    target: SocketAddr,
    chunk: usize,
    tick: Duration,
    ticks: u32,
) -> Result<PacedTransfer> {
    crate::netns::enter(ns)?;
    let idle = Some(Duration::from_secs(20));
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .with_context(|| format!("connect {target}"))?;
    s.set_read_timeout(idle)?;
    s.set_write_timeout(idle)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut name = String::new();
    r.read_line(&mut name)
        .context("reading the server's name")?;
    w.write_all(b"sink\n").context("sending sink")?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; chunk];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut sent = 0u64;
    let t0 = Instant::now();
    for i in 0..ticks {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state.to_le_bytes()[0];
        }
        h.update(&buf);
        w.write_all(&buf)
            .with_context(|| format!("sending after {sent} bytes ({:?})", t0.elapsed()))?;
        sent += buf.len() as u64;
        let next = tick * (i + 1);
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            thread::sleep(wait);
        }
    }
    w.shutdown(Shutdown::Write).context("shutdown(write)")?;
    let mut reply = String::new();
    r.read_line(&mut reply)
        .context("reading the server's checksum")?;
    let ours = h
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let (theirs, their_n) = reply.trim().split_once(' ').unwrap_or((reply.trim(), "?"));
    if theirs != ours {
        bail!("checksum mismatch: sent {sent} bytes sha256 {ours}, server got {their_n} bytes sha256 {theirs:?}");
    }
    Ok(PacedTransfer {
        name: name.trim().to_owned(),
        bytes: sent,
        elapsed: t0.elapsed(),
        sha256: ours,
    })
}
