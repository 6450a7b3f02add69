//! A two-node cluster in namespaces, containers, and the orchestration an
//! operator (or a future etcd backend) would do between the nodes.
//!
//! ```text
//!   <p>a (host, 192.0.2.1) ──┐                      ┌── <p>b (host, 192.0.2.2)
//!     proxytun a, ptbr0       │   <p>sw: bridge br0  │     proxytun b, ptbr0
//!     └ containers <p>..      └──────────┬──────────┘     └ containers <p>..
//!                                        └── outsiders (non-members, 192.0.2.99..)
//! ```
//!
//! The underlay is a bridge in its own "switch" namespace, so a third,
//! non-member host can be plugged in to send forged datagrams.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cmd::{Bg, Out};
use crate::model::{Dual, Instance};
use crate::netns::Netns;
use crate::node::{Node, NodeConfig, TestKey};

/// The TCP port every test server listens on.
pub const TCP_PORT: u16 = 7000;
/// The UDP port every test server listens on.
pub const UDP_PORT: u16 = 7001;
/// Deadline of one probe (hello, ping).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Two nodes `a` (index 1) and `b` (index 2) on a shared underlay.
#[derive(Debug)]
pub struct Cluster {
    /// Node `a`, index 1, underlay 192.0.2.1.
    pub a: Node,
    /// Node `b`, index 2, underlay 192.0.2.2.
    pub b: Node,
    switch: Netns,
    prefix: String,
    /// The cluster key every node's `tunnel.key_file` points at.
    key: TestKey,
}

/// The unique namespace-name prefix of a test: `pt<pid%1000>-<short>-`.
pub fn prefix_for(test: &str) -> String {
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("pt{}-{}-", std::process::id() % 1000, short)
}

impl Cluster {
    /// Builds the underlay, starts both daemons and registers them as each
    /// other's peer: `a` through a static `[[peer]]` in its config, `b`
    /// through `proxytun peer add` (so both paths are exercised).
    pub fn two_nodes(test: &str) -> Result<Cluster> {
        Cluster::two_nodes_with(test, |_| {})
    }

    /// [`Cluster::two_nodes`], with `tweak` applied to each node's config
    /// before it is written (e.g. a `[dns]` section).
    pub fn two_nodes_with(test: &str, tweak: impl Fn(&mut NodeConfig)) -> Result<Cluster> {
        crate::support::require_root()?;
        let prefix = prefix_for(test);
        let (switch, [(host_a, ip_a), (host_b, ip_b)]) = two_hosts(&prefix)?;
        let key = TestKey::generate()?;
        let security = Some(key.security()?);
        let node_keys = crate::node::test_node_keys()?.then(crate::node::NodeKeys::default);
        let mut cfg_a = NodeConfig {
            name: "a".into(),
            index: 1,
            underlay: ip_a,
            peers: vec![(
                "b".into(),
                SocketAddr::new(ip_b.into(), crate::node::TUNNEL_PORT),
            )],
            store: None,
            oakestra: None,
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
        let mut cfg_b = NodeConfig {
            name: "b".into(),
            index: 2,
            underlay: ip_b,
            peers: vec![],
            store: None,
            oakestra: None,
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
        tweak(&mut cfg_a);
        tweak(&mut cfg_b);
        let mut a = Node::new(host_a, &cfg_a)?;
        let mut b = Node::new(host_b, &cfg_b)?;
        // Per-node keys: a lists b's public key in its [[peer]], b learns
        // a's through `peer add --public-key`.
        let keyed = cfg_a.node_keys.is_some() && cfg_b.node_keys.is_some();
        if keyed {
            cfg_a.peer_keys = vec![("b".into(), b.public_key()?)];
            a.rewrite_config(&cfg_a)?;
        }
        a.start()?;
        b.start()?;
        if keyed {
            b.peer_add_with_key("a", a.endpoint(), &a.public_key()?)?;
        } else {
            b.peer_add("a", a.endpoint())?;
        }
        Ok(Cluster {
            a,
            b,
            switch,
            prefix,
            key,
        })
    }

    /// The cluster key (for tests that seal datagrams themselves).
    pub fn key(&self) -> &TestKey {
        &self.key
    }

    /// The namespace-name prefix of this test.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Both nodes.
    pub fn nodes(&self) -> [&Node; 2] {
        [&self.a, &self.b]
    }

    /// A new, empty container namespace `<prefix><short>`.
    pub fn container(&self, short: &str) -> Result<Container> {
        Ok(Container {
            procs: Vec::new(),
            ns: Netns::create(&format!("{}{short}", self.prefix))?,
        })
    }

    /// A new container attached on `node` as `shop/client/<number>`: a
    /// client is an instance too (it needs an instance IP for replies), but
    /// it is registered only on its own node; other nodes learn where to
    /// send replies from the datagrams.
    pub fn client(&self, node: &Node, short: &str, number: u32) -> Result<(Container, Instance)> {
        let c = self.container(short)?;
        let inst = node.attach("shop/client", &c.path(), Some(number), None)?;
        Ok((c, inst))
    }

    /// A third host on the underlay that is not a member of the cluster.
    pub fn outsider(&self, short: &str, ip: Ipv4Addr) -> Result<Netns> {
        let port = format!("p{short}");
        plug_host(&self.switch, &format!("{}{short}", self.prefix), &port, ip)
    }

    /// The common deployment: `shop/web` instance 1 (`w1`, answering
    /// `web1`) on node a and instance 2 (`w2`, answering `web2`) on node b,
    /// behind one ServiceIP.
    pub fn web_on_both(&self) -> Result<(Container, Container, Deployment)> {
        let mut w1 = self.container("w1")?;
        w1.serve("web1")?;
        let mut w2 = self.container("w2")?;
        w2.serve("web2")?;
        let d = self.deploy("shop/web", &[(&self.a, &w1, 1), (&self.b, &w2, 2)])?;
        Ok((w1, w2, d))
    }

    /// Deploys `service` (`app/service`): attaches each (node, container,
    /// number), the first without a ServiceIP and the others with the one
    /// the first got, then registers every instance on every other node as
    /// a remote instance with that ServiceIP.
    pub fn deploy(
        &self,
        service: &str,
        placements: &[(&Node, &Container, u32)],
    ) -> Result<Deployment> {
        let mut rr: Option<Dual> = None;
        let mut placed: Vec<(String, Instance)> = Vec::new();
        for (node, c, n) in placements {
            let inst = node
                .attach(service, &c.path(), Some(*n), rr.map(|d| d.v4))
                .with_context(|| format!("deploying {service}/{n} on node {}", node.name))?;
            if rr.is_none() {
                rr = Some(node.service(service)?.rr_ip);
            }
            placed.push((node.name.clone(), inst));
        }
        let rr = rr.ok_or_else(|| anyhow!("deploy {service}: no placements"))?;
        for (home, inst) in &placed {
            for node in self.nodes() {
                if &node.name != home {
                    node.remote_add(inst, home, Some(rr.v4)).with_context(|| {
                        format!("registering {} on node {}", inst.key(), node.name)
                    })?;
                }
            }
        }
        for node in self.nodes() {
            let got = node.service(service)?.rr_ip;
            if got != rr {
                bail!(
                    "node {} has ServiceIP {:?} for {service}, expected {:?}",
                    node.name,
                    got,
                    rr
                );
            }
        }
        Ok(Deployment {
            service: service.to_owned(),
            rr,
            instances: placed.into_iter().map(|(_, i)| i).collect(),
        })
    }
}

/// The underlay of a two-node test: switch `{prefix}sw` with its bridge
/// `br0`, and hosts `{prefix}a` (192.0.2.1) and `{prefix}b` (192.0.2.2)
/// plugged into it.
pub(crate) fn two_hosts(prefix: &str) -> Result<(Netns, [(Netns, Ipv4Addr); 2])> {
    let switch = Netns::create(&format!("{prefix}sw"))?;
    switch.ip(&["link", "add", "br0", "type", "bridge"])?;
    switch.ip(&["link", "set", "br0", "up"])?;
    let ip_a = Ipv4Addr::new(192, 0, 2, 1);
    let ip_b = Ipv4Addr::new(192, 0, 2, 2);
    let host_a = plug_host(&switch, &format!("{prefix}a"), "pa", ip_a)?;
    let host_b = plug_host(&switch, &format!("{prefix}b"), "pb", ip_b)?;
    Ok((switch, [(host_a, ip_a), (host_b, ip_b)]))
}

/// Creates host namespace `name`, plugs it into the switch's bridge through
/// veth `port` (switch side) / `ul0` (host side) and gives it `ip/24`.
pub(crate) fn plug_host(switch: &Netns, name: &str, port: &str, ip: Ipv4Addr) -> Result<Netns> {
    let host = Netns::create(name)?;
    switch.add_veth(port, &host, "ul0", None)?;
    switch.ip(&["link", "set", port, "master", "br0", "up"])?;
    host.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])?;
    host.ip(&["link", "set", "ul0", "up"])?;
    Ok(host)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster {} torn down after a failure", self.prefix);
        }
    }
}

/// A deployed service: its ServiceIP and its instances in placement order.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `app/service`.
    pub service: String,
    /// The round-robin ServiceIP, the same on every node.
    pub rr: Dual,
    /// The instances as the attaching nodes reported them.
    pub instances: Vec<Instance>,
}

/// A container: a namespace, and the servers running in it (killed on Drop,
/// before the namespace is deleted).
#[derive(Debug)]
pub struct Container {
    procs: Vec<Bg>,
    ns: Netns,
}

/// What `ptprobe tcp-hello`/`udp-hello` reported.
#[derive(Debug, Clone)]
pub struct Hello {
    /// The server's name.
    pub name: String,
    /// TCP: the client address as the server saw it.
    pub server_saw: Option<SocketAddr>,
    /// UDP: the address the reply came from.
    pub from: Option<SocketAddr>,
    /// The raw output.
    pub out: Out,
}

/// What `ptprobe tcp-send` reported.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The server's name.
    pub name: String,
    /// Throughput in MB/s.
    pub mbps: f64,
    /// The checksum both sides agreed on.
    pub sha256: String,
    /// The raw output.
    pub out: Out,
}

impl Container {
    /// A container in the namespace `ns` (which it deletes on Drop), for
    /// topologies built outside [`Cluster`].
    pub fn new(ns: Netns) -> Container {
        Container {
            procs: Vec::new(),
            ns,
        }
    }

    /// The namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The namespace file (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        self.ns.path()
    }

    /// Starts `ptprobe serve --name NAME` on [`TCP_PORT`] and [`UDP_PORT`]
    /// and waits until it listens.
    pub fn serve(&mut self, name: &str) -> Result<()> {
        let probe = crate::support::ptprobe_bin()?;
        let probe = probe.to_string_lossy();
        let mut bg = self.ns.spawn(
            &probe,
            &[
                "serve",
                "--name",
                name,
                "--tcp",
                &TCP_PORT.to_string(),
                "--udp",
                &UDP_PORT.to_string(),
            ],
        )?;
        bg.wait_for("ready", Duration::from_secs(10))?;
        self.procs.push(bg);
        Ok(())
    }

    /// What the servers of this container printed (one line per connection
    /// and datagram).
    pub fn server_log(&self) -> String {
        self.procs.iter().map(Bg::output).collect()
    }

    /// Runs `ptprobe args..` inside the container.
    pub fn probe(&self, args: &[&str], timeout: Duration) -> Result<Out> {
        let probe = crate::support::ptprobe_bin()?;
        self.ns.exec(&probe.to_string_lossy(), args, timeout)
    }

    /// `ptprobe tcp-hello ip:TCP_PORT`, required to succeed.
    pub fn tcp_hello(&self, ip: impl Into<IpAddr>) -> Result<Hello> {
        let target = SocketAddr::new(ip.into(), TCP_PORT).to_string();
        let out = self.probe(&["tcp-hello", &target], PROBE_TIMEOUT)?.ok()?;
        Ok(Hello {
            name: out.first_line().to_owned(),
            server_saw: out.field("server_saw").and_then(|s| s.parse().ok()),
            from: None,
            out,
        })
    }

    /// `ptprobe udp-hello ip:UDP_PORT`, required to succeed (which includes
    /// the reply coming from exactly the address it was sent to).
    pub fn udp_hello(&self, ip: impl Into<IpAddr>) -> Result<Hello> {
        let target = SocketAddr::new(ip.into(), UDP_PORT).to_string();
        let out = self.probe(&["udp-hello", &target], PROBE_TIMEOUT)?.ok()?;
        Ok(Hello {
            name: out.first_line().to_owned(),
            server_saw: None,
            from: out.field("from").and_then(|s| s.parse().ok()),
            out,
        })
    }

    /// `ptprobe tcp-send ip:TCP_PORT --bytes N`, required to succeed
    /// (which includes matching checksums).
    pub fn tcp_send(
        &self,
        ip: impl Into<IpAddr>,
        bytes: u64,
        timeout: Duration,
    ) -> Result<Transfer> {
        let target = SocketAddr::new(ip.into(), TCP_PORT).to_string();
        let secs = format!("{}", timeout.as_secs_f64());
        let out = self
            .probe(
                &[
                    "tcp-send",
                    &target,
                    "--bytes",
                    &bytes.to_string(),
                    "--timeout",
                    &secs,
                ],
                timeout + Duration::from_secs(5),
            )?
            .ok()?;
        Ok(Transfer {
            name: out.first_line().to_owned(),
            mbps: out
                .field("mbps")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("no mbps in {}", out.stdout))?,
            sha256: out.field("sent_sha256").unwrap_or("").to_owned(),
            out,
        })
    }

    /// `ping -c count` to `ip`, required to get every reply back.
    pub fn ping(&self, ip: impl Into<IpAddr>, count: u32) -> Result<Out> {
        let ip = ip.into().to_string();
        let out = self
            .ns
            .exec(
                "ping",
                &["-n", "-c", &count.to_string(), "-i", "0.2", "-W", "2", &ip],
                PROBE_TIMEOUT,
            )?
            .ok()?;
        let want = format!("{count} received");
        if !out.stdout.contains(&want) {
            bail!("{}", out.describe(&format!("did not report {want:?}")));
        }
        Ok(out)
    }
}
