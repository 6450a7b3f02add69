//! One node: a host namespace running the real `proxytun` daemon.
//!
//! The daemon runs in the foreground inside its host namespace
//! (`ip netns exec <host> proxytun run --config ..`, which execs, so the
//! child's pid is the daemon's). Its config, state, socket and log live in a
//! per-node temporary directory. Drop stops the daemon by its pid before the
//! namespace goes away.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::api::{self, Response};
use crate::cmd::{self, Out};
use crate::model::{instances_from_json, services_from_json, Instance, Service};
use crate::netns::Netns;

mod config;
mod keys;
mod oakestra;

pub use config::{
    offload_wanted, test_node_keys, test_security_mode, DnsConfig, EtcdStore, Keepalive,
    NodeConfig, NodeKeys, TestKey, TunnelSecurity, KEYS_ENV, SECURITY_ENV, TUNNEL_PORT,
};
pub use oakestra::{OakestraStore, NODEENGINE_SOCKET};

/// How long a daemon may take to answer on its socket after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one CLI call may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// One entry of `GET /v1/peers`: a member node and what the keepalives
/// say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    /// The peer's node name.
    pub name: String,
    /// Its tunnel endpoint, as the API shows it.
    pub endpoint: String,
    /// Whether it answered keepalives lately; `None` when the API does not
    /// say (a daemon without liveness).
    pub alive: Option<bool>,
    /// The last measured round-trip time in microseconds, if any.
    pub rtt_us: Option<u64>,
    /// The whole JSON object.
    pub raw: Value,
}

impl PeerState {
    /// Reads a peer object.
    pub fn from_json(v: &Value) -> Result<PeerState> {
        Ok(PeerState {
            name: v["name"]
                .as_str()
                .ok_or_else(|| anyhow!("no peer name in {v}"))?
                .to_owned(),
            endpoint: v["endpoint"].as_str().unwrap_or_default().to_owned(),
            alive: v["alive"].as_bool(),
            rtt_us: v["rtt_us"].as_u64(),
            raw: v.clone(),
        })
    }
}

/// A node: its host namespace, its daemon and the daemon's files.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    /// The node's name.
    pub name: String,
    /// Its index in the address plan.
    pub index: u32,
    /// Its underlay address.
    pub underlay: Ipv4Addr,
    bin: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    dir: TempDir,
    host: Netns,
    env: Vec<(String, String)>,
}

impl Node {
    /// Writes the config into a fresh temporary directory; does not start
    /// the daemon.
    pub fn new(host: Netns, cfg: &NodeConfig) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("proxytun-{}-", host.name()))
            .tempdir()
            .context("creating the node's temporary directory")?;
        let config = dir.path().join("proxytun.toml");
        fs::write(&config, cfg.render(dir.path())).context("writing the node config")?;
        let bin = crate::support::proxytun_bin()?;
        if cfg.node_keys.is_some() {
            let key = dir.path().join("node.key");
            let mut c = Command::new(&bin);
            c.arg("keygen").arg("--node").arg("--out").arg(&key);
            cmd::run(&mut c, CLI_TIMEOUT)?
                .ok()
                .context("proxytun keygen --node")?;
        }
        Ok(Node {
            child: None,
            name: cfg.name.clone(),
            index: cfg.index,
            underlay: cfg.underlay,
            bin,
            socket: dir.path().join("api.sock"),
            log: dir.path().join("daemon.log"),
            config,
            dir,
            host,
            env: Vec::new(),
        })
    }

    /// Sets an environment variable for the daemon's next starts (e.g.
    /// `NOTIFY_SOCKET`, to play systemd).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The host namespace the daemon runs in.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The MAC address of the node's bridge (the containers' gateway).
    pub fn bridge_mac(&self) -> Result<String> {
        let out = self.host.ip(&["-br", "link", "show", "ptbr0"])?;
        out.stdout
            .split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no MAC in {:?}", out.stdout))
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The node's temporary directory (config, state, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node's tunnel endpoint on the underlay.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.underlay.into(), TUNNEL_PORT)
    }

    /// Everything the daemon logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        cmd::tail(&self.log(), n)
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once a launched daemon has exited (reaped then);
    /// `None` while it runs. For waits that must not outlast the daemon.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            bail!("node {} is not running", self.name);
        };
        let st = child.try_wait().context("waitpid")?;
        if st.is_some() {
            self.child = None;
        }
        Ok(st)
    }

    /// The daemon's state directory (`[state] dir`: the store, `flows.json`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The running daemon's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.name))?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
    }

    /// The running daemon's number of open file descriptors.
    pub fn fd_count(&self) -> Result<usize> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.name))?;
        Ok(fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("list /proc/{pid}/fd"))?
            .count())
    }

    /// Starts the daemon and waits until its API answers.
    pub fn start(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_ready()
    }

    /// Starts the daemon without waiting for its API, so several daemons
    /// can start at the same moment; follow with [`Node::wait_started`].
    pub fn launch(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.name);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("opening the daemon log")?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.host.name()])
            .arg(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::cmdline(&c)))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until a daemon started with [`Node::launch`] answers on its
    /// socket (at most [`START_TIMEOUT`]).
    pub fn wait_started(&mut self) -> Result<()> {
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "daemon of node {} exited ({st}) during start-up; log:\n{}",
                        self.name,
                        self.log_tail(40)
                    );
                }
            }
            if self.socket.exists() {
                match api::request(&self.socket, "GET", "/v1/status", None) {
                    Ok(r) if r.status == 200 => return Ok(()),
                    Ok(r) => last = format!("HTTP {}: {}", r.status, r.body),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "daemon of node {} did not answer on {} within {START_TIMEOUT:?} ({last}); log:\n{}",
                    self.name,
                    self.socket.display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.name))?;
        let pid = libc::pid_t::try_from(pid).context("pid")?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the daemon with SIGTERM and returns its exit status; fails if it
    /// does not exit within [`STOP_TIMEOUT`] (it is then SIGKILLed).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let child = self.child.as_mut().ok_or_else(|| anyhow!("not running"))?;
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                bail!(
                    "daemon of node {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed. log:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("node {} is not running", self.name))?;
        child.kill().context("SIGKILL")?;
        child.wait().context("waitpid")?;
        Ok(())
    }

    /// SIGTERM, check a clean exit, start again.
    pub fn restart(&mut self) -> Result<()> {
        let st = self.stop()?;
        if !st.success() {
            bail!(
                "daemon of node {} exited with {st} on SIGTERM; log:\n{}",
                self.name,
                self.log_tail(20)
            );
        }
        self.start()
    }

    // ------------------------------------------------------------ API

    /// One API request; `body` is sent as JSON.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        let text = body.map(Value::to_string);
        api::request(&self.socket, method, path, text.as_deref())
            .with_context(|| format!("{method} {path} on node {}", self.name))
    }

    /// `GET path`, requiring 2xx, as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.api("GET", path, None)?
            .ok_json()
            .with_context(|| format!("GET {path} on node {}", self.name))
    }

    /// `POST path body`, requiring 2xx, as JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.api("POST", path, Some(body))?
            .ok_json()
            .with_context(|| format!("POST {path} {body} on node {}", self.name))
    }

    /// All instances this node knows.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        instances_from_json(&self.get("/v1/instances")?)
    }

    /// All services this node knows.
    pub fn services(&self) -> Result<Vec<Service>> {
        services_from_json(&self.get("/v1/services")?)
    }

    /// One service by `app/service`.
    pub fn service(&self, name: &str) -> Result<Service> {
        self.services()?
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| anyhow!("node {} has no service {name}", self.name))
    }

    /// The packet counters.
    pub fn counters(&self) -> Result<Value> {
        self.get("/v1/counters")
    }

    /// One drop counter (`drops.<reason>`), 0 when absent.
    pub fn drops(&self, reason: &str) -> Result<u64> {
        Ok(self.counters()?["drops"][reason].as_u64().unwrap_or(0))
    }

    /// The sum of all drop counters.
    pub fn drops_total(&self) -> Result<u64> {
        let c = self.counters()?;
        Ok(c["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0))
    }

    /// Attaches the namespace `netns` as an instance of `service`
    /// (`app/service`) through `POST /v1/attachments`.
    pub fn attach(
        &self,
        service: &str,
        netns: &Path,
        number: Option<u32>,
        service_ip: Option<Ipv4Addr>,
    ) -> Result<Instance> {
        let (app, svc) = service
            .split_once('/')
            .ok_or_else(|| anyhow!("{service:?} is not app/service"))?;
        let mut body = json!({"app": app, "service": svc, "netns": netns});
        if let Some(n) = number {
            body["instance"] = json!(n);
        }
        if let Some(ip) = service_ip {
            body["service_ip"] = json!(ip.to_string());
        }
        let r = self.api("POST", "/v1/attachments", Some(&body))?;
        if r.status != 201 {
            bail!(
                "attach {service} on node {}: HTTP {} {}",
                self.name,
                r.status,
                r.body
            );
        }
        Instance::from_json(&r.json()?)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value> {
        self.get("/v1/status")
    }

    /// The node's IPv4 container subnet (`status.node.subnet`, like
    /// `10.18.2.0/24`): with etcd the node leases it, so this is how a test
    /// learns what it got.
    pub fn subnet(&self) -> Result<String> {
        let st = self.status()?;
        st["node"]["subnet"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no node.subnet in the status of node {}: {st}", self.name))
    }

    /// The member nodes this node knows, with their liveness (`GET /v1/peers`).
    pub fn peers(&self) -> Result<Vec<PeerState>> {
        let v = self.get("/v1/peers")?;
        let arr = v
            .as_array()
            .or_else(|| v["peers"].as_array())
            .ok_or_else(|| anyhow!("expected a list of peers from node {}, got {v}", self.name))?;
        arr.iter().map(PeerState::from_json).collect()
    }

    /// One peer by name, `None` when this node does not list it.
    pub fn peer(&self, name: &str) -> Result<Option<PeerState>> {
        Ok(self.peers()?.into_iter().find(|p| p.name == name))
    }

    /// Detaches a local instance (`DELETE /v1/attachments/app/service/n`).
    pub fn detach(&self, key: &str) -> Result<Value> {
        self.api("DELETE", &format!("/v1/attachments/{key}"), None)?
            .ok_json()
            .with_context(|| format!("detach {key} on node {}", self.name))
    }

    // ------------------------------------------------------------ CLI

    /// Runs `proxytun --socket S args..`; the exit status is left to the caller.
    pub fn cli(&self, args: &[&str]) -> Result<Out> {
        let mut c = Command::new(&self.bin);
        c.arg("--socket").arg(&self.socket).args(args);
        cmd::run(&mut c, CLI_TIMEOUT)
    }

    /// Runs the CLI and requires success.
    pub fn cli_ok(&self, args: &[&str]) -> Result<Out> {
        self.cli(args)?
            .ok()
            .with_context(|| format!("proxytun CLI on node {}", self.name))
    }

    /// Runs the CLI with `--json` and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli_ok(&a)?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("`{}` printed no JSON: {:?}", out.cmdline, out.stdout))
    }

    /// `proxytun peer add NAME ENDPOINT`.
    pub fn peer_add(&self, name: &str, endpoint: SocketAddr) -> Result<()> {
        self.cli_ok(&["peer", "add", name, &endpoint.to_string()])?;
        Ok(())
    }

    /// `proxytun remote add`: registers `inst`, which runs on node `on`.
    pub fn remote_add(
        &self,
        inst: &Instance,
        on: &str,
        service_ip: Option<Ipv4Addr>,
    ) -> Result<()> {
        let key = inst.key();
        let ns = inst.ns_addr.v4.to_string();
        let iip = inst.instance_ip.v4.to_string();
        let mut args = vec![
            "remote",
            "add",
            &key,
            "--node",
            on,
            "--ns-addr",
            &ns,
            "--instance-ip",
            &iip,
        ];
        let sip = service_ip.map(|s| s.to_string());
        if let Some(s) = &sip {
            args.extend(["--service-ip", s]);
        }
        self.cli_ok(&args)?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- log of node {} ({}) -----\n{}\n-----",
                self.name,
                self.log.display(),
                self.log_tail(60)
            );
            if self.child.is_some() {
                for what in ["flows", "counters"] {
                    if let Ok(out) = self.cli(&[what]) {
                        eprintln!(
                            "----- proxytun {what} on node {} -----\n{}",
                            self.name, out.stdout
                        );
                    }
                }
            }
        }
        if self.child.is_some() && self.stop().is_err() {
            // stop() already SIGKILLed and reaped it.
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
