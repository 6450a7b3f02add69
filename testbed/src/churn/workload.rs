//! The soak workload: stable echo streams and UDP flows that must survive
//! while containers and services churn around them, with the nodes' memory
//! and descriptor use checked before and after. Shared by the CI soak
//! (`tests/soak.rs`) and `bench soak`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::report::{SoakConfig, SoakReport, Usage};
use super::{join, spawn_in, Pattern};
use crate::cluster::{Cluster, Container};
use crate::netns::Netns;
use crate::node::Node;

/// TCP port of the stable echo servers.
pub const ECHO_TCP: u16 = 7100;
/// UDP port of the stable echo servers.
pub const ECHO_UDP: u16 = 7101;
/// Bytes per echo round trip of a stable stream (a multiple of 8).
const ECHO_CHUNK: usize = 16 * 1024;

/// Echo servers (TCP and UDP) in a namespace until `stop`.
fn echo_servers(ns: &Path, stop: Arc<AtomicBool>) -> Result<Vec<JoinHandle<Result<()>>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let tcp = {
        let stop = stop.clone();
        let tx = tx.clone();
        spawn_in(ns, "echo-tcp", move || {
            let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, ECHO_TCP))?;
            l.set_nonblocking(true)?;
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        let stop = stop.clone();
                        thread::spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                            let mut buf = vec![0u8; ECHO_CHUNK];
                            loop {
                                match s.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            ErrorKind::WouldBlock | ErrorKind::TimedOut
                                        ) && !stop.load(Ordering::Relaxed) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e).context("accept"),
                }
            }
            Ok(())
        })?
    };
    let udp = spawn_in(ns, "echo-udp", move || {
        let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, ECHO_UDP))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let _ = tx.send(());
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
        Ok(())
    })?;
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("an echo server did not start"))?;
    }
    Ok(vec![tcp, udp])
}

/// One stable TCP stream: echo round trips of the pattern at `rate` per
/// second until `stop`; every byte checked. Reports its local address
/// once connected, and adds to `bytes`.
fn stable_stream(
    ns: &Path,
    target: SocketAddr,
    seed: u64,
    rate: u32,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    local: std::sync::mpsc::Sender<SocketAddr>,
) -> Result<JoinHandle<Result<()>>> {
    spawn_in(ns, "stream", move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .with_context(|| format!("connect to {target}"))?;
        let me = s.local_addr()?;
        let _ = local.send(me);
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut p = Pattern::new(seed);
        let mut out = vec![0u8; ECHO_CHUNK];
        let mut back = vec![0u8; ECHO_CHUNK];
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut next = Instant::now();
        let mut done = 0u64;
        while !stop.load(Ordering::Relaxed) {
            p.fill(&mut out);
            s.write_all(&out)
                .with_context(|| format!("stream {me} -> {target}: send after {done} bytes"))?;
            s.read_exact(&mut back)
                .with_context(|| format!("stream {me} -> {target}: echo after {done} bytes"))?;
            if out != back {
                bail!("stream {me} -> {target}: echo differs after {done} bytes");
            }
            done += ECHO_CHUNK as u64;
            bytes.fetch_add(ECHO_CHUNK as u64, Ordering::Relaxed);
            next += period;
            if let Some(w) = next.checked_duration_since(Instant::now()) {
                thread::sleep(w);
            }
        }
        Ok(())
    })
}

/// UDP request/response to `target` at `rate` per second until `stop`.
fn stable_udp(
    ns: &Path,
    target: SocketAddr,
    rate: u32,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
) -> Result<JoinHandle<Result<()>>> {
    spawn_in(ns, "udp", move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(target)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut buf = [0u8; 64];
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            s.send(&seq.to_be_bytes())?;
            let deadline = Instant::now() + Duration::from_secs(1);
            let answered = loop {
                match s.recv(&mut buf) {
                    // A late answer to an earlier request: keep waiting.
                    Ok(8) if buf[..8] == seq.to_be_bytes() => break true,
                    Ok(_) if Instant::now() < deadline => {}
                    _ => break false,
                }
            };
            if answered {
                ok.fetch_add(1, Ordering::Relaxed);
                thread::sleep(period);
            } else {
                lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    })
}

/// A short TCP echo and UDP exchange from a churned container.
fn little_traffic(ns: &Path, rr: Ipv4Addr) -> Result<()> {
    join(spawn_in(ns, "churn-traffic", move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((rr, ECHO_TCP)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let msg = [7u8; 1024];
        s.write_all(&msg)?;
        let mut back = [0u8; 1024];
        s.read_exact(&mut back)?;
        if back != msg {
            bail!("echo differs");
        }
        drop(s);
        let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        u.set_read_timeout(Some(Duration::from_secs(2)))?;
        u.connect((rr, ECHO_UDP))?;
        // UDP may lose the first datagram while the neighbour entry
        // resolves; three tries.
        for _ in 0..3 {
            u.send(b"churn")?;
            let mut buf = [0u8; 16];
            if let Ok(5) = u.recv(&mut buf) {
                return Ok(());
            }
        }
        bail!("no UDP echo")
    })?)
}

/// Names of namespaces, links and routes: what must not grow.
fn inventory(c: &Cluster) -> Result<std::collections::BTreeSet<String>> {
    let mut set = std::collections::BTreeSet::new();
    let netns = crate::cmd::run_ok("ip", &["-j", "netns", "list"], Duration::from_secs(10))?;
    let v: Value = serde_json::from_str(netns.stdout.trim()).unwrap_or(Value::Null);
    for n in v.as_array().into_iter().flatten() {
        if let Some(name) = n["name"].as_str() {
            if name.starts_with(c.prefix()) {
                set.insert(format!("netns {name}"));
            }
        }
    }
    for node in c.nodes() {
        let links: Value = serde_json::from_str(node.host().ip(&["-j", "link"])?.stdout.trim())?;
        for l in links.as_array().into_iter().flatten() {
            set.insert(format!(
                "node {} link {}",
                node.name,
                l["ifname"].as_str().unwrap_or("?")
            ));
        }
        for fam in ["-4", "-6"] {
            let routes: Value = serde_json::from_str(
                node.host()
                    .ip(&["-j", fam, "route", "show", "table", "all"])?
                    .stdout
                    .trim(),
            )?;
            for r in routes.as_array().into_iter().flatten() {
                // Link-local and multicast routes come and go with each
                // interface's IPv6 setup; a leftover interface shows up
                // in the links above.
                let dst = r["dst"].as_str().unwrap_or("?");
                if dst.starts_with("fe80:") || dst.starts_with("ff00:") {
                    continue;
                }
                set.insert(format!(
                    "node {} route {} {} dev {} table {}",
                    node.name,
                    r["type"].as_str().unwrap_or("unicast"),
                    r["dst"].as_str().unwrap_or("?"),
                    r["dev"].as_str().unwrap_or("-"),
                    r["table"].as_str().unwrap_or("main")
                ));
            }
        }
        // The daemon's nftables table (published ports, masquerade): a
        // rule a detached container left behind shows up here.
        let ruleset = node
            .host()
            .exec_ok("nft", &["list", "ruleset"], Duration::from_secs(10))?;
        for line in ruleset
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            set.insert(format!("node {} nft {line}", node.name));
        }
    }
    Ok(set)
}

/// The `client` addresses of every flow a node shows.
fn flow_clients(node: &Node) -> Result<Vec<String>> {
    let v = node.cli_json(&["flows"])?;
    let list = v["flows"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(list
        .iter()
        .filter_map(|f| f["client"].as_str().map(str::to_owned))
        .collect())
}

/// Attaches, uses, registers remotely, unregisters, detaches and deletes
/// one container; returns the attached instance's service IP for the next
/// rounds.
fn churn_round(
    c: &Cluster,
    i: u64,
    rr_stable: Ipv4Addr,
    churn_rr: &mut Option<Ipv4Addr>,
) -> Result<()> {
    let (home, other) = if i.is_multiple_of(2) {
        (&c.a, &c.b)
    } else {
        (&c.b, &c.a)
    };
    let ns = Netns::create(&format!("{}c{}", c.prefix(), i % 1000))?;
    let number = u32::try_from(i % 100_000 + 1).unwrap_or(1);
    let inst = home
        .attach("soak/churn", &ns.path(), Some(number), *churn_rr)
        .context("attach")?;
    let key = inst.key();
    let result = (|| -> Result<()> {
        if churn_rr.is_none() {
            *churn_rr = Some(home.service("soak/churn")?.rr_ip.v4);
        }
        other
            .remote_add(&inst, &home.name, *churn_rr)
            .context("register remotely")?;
        let traffic = little_traffic(&ns.path(), rr_stable).context("traffic");
        let r = other.api("DELETE", &format!("/v1/remote-instances/{key}"), None)?;
        if r.status != 200 {
            bail!(
                "unregister {key} on {}: HTTP {} {}",
                other.name,
                r.status,
                r.body
            );
        }
        traffic
    })();
    let detached = home.detach(&key).map(|_| ());
    drop(ns);
    result
        .and(detached)
        .with_context(|| format!("round {i} ({key} on {})", home.name))
}

/// Registers and unregisters a remote instance that never runs anywhere
/// (only the registration churns), on node a, as if on node b.
fn ghost_round(c: &Cluster, i: u64) -> Result<()> {
    let n = i % 50;
    let body = serde_json::json!({
        "app": "soak", "service": "ghost", "instance": n + 1, "node": c.b.name,
        "ns_addr": format!("10.18.2.{}", 200 + n),
        "instance_ip": format!("10.30.2.{}", 200 + n),
    });
    let r = c.a.api("POST", "/v1/remote-instances", Some(&body))?;
    if r.status != 201 {
        bail!("register ghost {n}: HTTP {} {}", r.status, r.body);
    }
    let r = c.a.api(
        "DELETE",
        &format!("/v1/remote-instances/soak/ghost/{}", n + 1),
        None,
    )?;
    if r.status != 200 {
        bail!("unregister ghost {n}: HTTP {} {}", r.status, r.body);
    }
    Ok(())
}

/// Runs the soak on a fresh two-node cluster named after `test`.
pub fn soak(test: &str, cfg: &SoakConfig) -> Result<SoakReport> {
    let started = Instant::now();
    let c = Cluster::two_nodes(test)?;
    let w1 = c.container("w1")?;
    let w2 = c.container("w2")?;
    let stop_servers = Arc::new(AtomicBool::new(false));
    let mut servers = echo_servers(&w1.path(), stop_servers.clone())?;
    servers.extend(echo_servers(&w2.path(), stop_servers.clone())?);
    let d = c.deploy("soak/web", &[(&c.a, &w1, 1), (&c.b, &w2, 2)])?;
    let rr = d.rr.v4;
    let (cla, _) = c.client(&c.a, "cla", 1)?;
    let (clb, _) = c.client(&c.b, "clb", 2)?;
    // The stable clients can reach the service before anything is measured.
    for cl in [&cla, &clb] {
        crate::support::eventually(Duration::from_secs(10), || little_traffic(&cl.path(), rr))?;
    }
    let before_churn = inventory(&c)?;

    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let (ok, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (local_tx, local_rx) = std::sync::mpsc::channel();
    let mut traffic = Vec::new();
    let stable: [&Container; 2] = [&cla, &clb];
    let mut seed = 1;
    for cl in stable {
        for _ in 0..cfg.streams {
            seed += 1;
            traffic.push(stable_stream(
                &cl.path(),
                SocketAddr::from((rr, ECHO_TCP)),
                seed,
                cfg.stream_rate,
                stop.clone(),
                bytes.clone(),
                local_tx.clone(),
            )?);
        }
        traffic.push(stable_udp(
            &cl.path(),
            SocketAddr::from((rr, ECHO_UDP)),
            cfg.udp_rate,
            stop.clone(),
            ok.clone(),
            lost.clone(),
        )?);
    }
    drop(local_tx);
    let mut stream_addrs = Vec::new();
    for _ in 0..cfg.streams * stable.len() {
        match local_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(a) => stream_addrs.push(a),
            Err(_) => bail!("a stable stream did not connect"),
        }
    }

    let mut report = SoakReport::default();
    let mut churn_rr = None;
    let mut baseline: Option<(Usage, Usage)> = None;
    let mut i = 0u64;
    let end = started + cfg.duration;
    let mut last_print = Instant::now();
    while Instant::now() < end {
        if baseline.is_none() && started.elapsed() >= cfg.warmup {
            baseline = Some((Usage::of(&c.a)?, Usage::of(&c.b)?));
        }
        if let Err(e) = churn_round(&c, i, rr, &mut churn_rr) {
            report.churn_errors.push(format!("{e:#}"));
            if report.churn_errors.len() > 20 {
                break;
            }
        } else {
            report.churn_rounds += 1;
        }
        match ghost_round(&c, i) {
            Ok(()) => report.remote_rounds += 1,
            Err(e) => report.churn_errors.push(format!("{e:#}")),
        }
        i += 1;
        if last_print.elapsed() >= Duration::from_secs(30) {
            last_print = Instant::now();
            eprintln!(
                "soak: {:.0} s, {} rounds, a {:?}, b {:?}",
                started.elapsed().as_secs_f64(),
                i,
                Usage::of(&c.a).ok(),
                Usage::of(&c.b).ok()
            );
        }
    }
    let baseline = match baseline {
        Some(b) => b,
        None => (Usage::of(&c.a)?, Usage::of(&c.b)?),
    };

    // The churn is over and everything churned is detached. The stable
    // streams still run: their flows must all be there, and no other
    // flow (the detached clients' are removed with their attachment).
    thread::sleep(Duration::from_secs(2));
    let mut clients = flow_clients(&c.a)?;
    clients.extend(flow_clients(&c.b)?);
    for a in &stream_addrs {
        if !clients.contains(&a.to_string()) {
            report.missing_flows.push(format!("stream from {a}"));
        }
    }
    let stable_hosts: Vec<std::net::IpAddr> = stream_addrs.iter().map(SocketAddr::ip).collect();
    report.stray_flows = clients
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| !stable_hosts.contains(&a.ip()))
        .count();
    report.a = (baseline.0, Usage::of(&c.a)?);
    report.b = (baseline.1, Usage::of(&c.b)?);
    let after = inventory(&c)?;
    report.leftovers = after.difference(&before_churn).cloned().collect();

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        if let Err(e) = join(t) {
            report.stream_errors.push(format!("{e:#}"));
        }
    }
    stop_servers.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = join(s);
    }
    report.stream_bytes = bytes.load(Ordering::Relaxed);
    report.udp_ok = ok.load(Ordering::Relaxed);
    report.udp_lost = lost.load(Ordering::Relaxed);
    report.secs = started.elapsed().as_secs_f64();
    Ok(report)
}
