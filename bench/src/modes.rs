//! The dataplanes under comparison, each with its own pair of containers.
//!
//! A mode sets itself up once (containers, routes, forwarder processes,
//! servers) and hands back a [`ModeEnv`]: where the client lives, what
//! address it dials, and which processes forward its packets (for the CPU
//! figures). Dropping the `ModeEnv` stops its processes by pid, servers
//! first, then forwarders, and then deletes its containers.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use testbed::cmd::{self, Bg};
use testbed::netns::Netns;
use crate::topo::{self, Hosts, HOST_A, HOST_B, UNDERLAY_IF};

/// The port iperf3 listens on in every server container.
pub const IPERF_PORT: u16 = 5201;
/// How long a server or forwarder may take to end on SIGTERM before
/// SIGKILL, when its mode is torn down.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// The port `bench rr-server` listens on in every server container.
pub const RR_PORT: u16 = 7100;

/// One dataplane under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModeKind {
    /// Plain kernel routing between the container subnets: the limit.
    Direct,
    /// A kernel VXLAN overlay between the hosts: what users pick today.
    Vxlan,
    /// OpenVPN 2.6 peer-to-peer without crypto: the nearest userspace
    /// TUN<->UDP peer.
    Openvpn,
    /// Both proxytun daemons, the server reached through its ServiceIP.
    Proxytun,
    /// The same with `[tun] offload = false`: the plain path.
    ProxytunPlain,
    /// `proxytun` (offloads on) with `tunnel.security = "plain"`: no tag,
    /// the baseline the security modes are compared with.
    ProxytunNoauth,
    /// `proxytun` (offloads on) with `tunnel.security = "encrypt"`.
    ProxytunEncrypt,
}

impl ModeKind {
    /// Every mode, in the order they are measured and printed.
    pub const ALL: [ModeKind; 7] = [
        ModeKind::Direct,
        ModeKind::Vxlan,
        ModeKind::Openvpn,
        ModeKind::Proxytun,
        ModeKind::ProxytunPlain,
        ModeKind::ProxytunNoauth,
        ModeKind::ProxytunEncrypt,
    ];

    /// The tunnel security comparison (`--modes` of `bench security`'s
    /// figures): plain, auth (the default, mode `proxytun`) and encrypt,
    /// all with offloads.
    pub const SECURITY: [ModeKind; 3] = [
        ModeKind::ProxytunNoauth,
        ModeKind::Proxytun,
        ModeKind::ProxytunEncrypt,
    ];

    /// The name used on the command line, in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ModeKind::Direct => "direct",
            ModeKind::Vxlan => "vxlan",
            ModeKind::Openvpn => "openvpn",
            ModeKind::Proxytun => "proxytun",
            ModeKind::ProxytunPlain => "proxytun-plain",
            ModeKind::ProxytunNoauth => "proxytun-noauth",
            ModeKind::ProxytunEncrypt => "proxytun-encrypt",
        }
    }

    /// A short tag for namespace and interface names (which are short).
    fn tag(self) -> &'static str {
        match self {
            ModeKind::Direct => "dir",
            ModeKind::Vxlan => "vxl",
            ModeKind::Openvpn => "ovpn",
            ModeKind::Proxytun => "pt",
            ModeKind::ProxytunPlain => "ptpl",
            ModeKind::ProxytunNoauth => "ptna",
            ModeKind::ProxytunEncrypt => "ptenc",
        }
    }
}

impl fmt::Display for ModeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ModeKind::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = ModeKind::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode {s:?}; known: {}", all.join(", "))
            })
    }
}

/// What the modes need from outside: binaries and the run's prefix.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `proxytun` binary (release build).
    pub proxytun: PathBuf,
    /// This binary, for `rr-server`/`rr-client` inside the containers.
    pub bench: PathBuf,
}

/// A mode, set up and ready to measure.
#[derive(Debug)]
pub struct ModeEnv {
    /// Which mode.
    pub kind: ModeKind,
    /// The address the client dials: the server container's address, or
    /// for proxytun the server's ServiceIP.
    pub target: Ipv4Addr,
    /// The servers in the server container (stopped first).
    servers: Vec<Bg>,
    /// The forwarder processes (daemons), stopped after the servers.
    forwarders: Vec<Bg>,
    /// The client container.
    pub client: Netns,
    /// The server container.
    pub server: Netns,
    /// Config files, state and logs of the forwarders.
    dir: Option<TempDir>,
    /// Log files of the forwarders, shown when something fails.
    logs: Vec<PathBuf>,
}

impl ModeEnv {
    /// The pids of the forwarder processes (empty for the kernel modes).
    pub fn forwarder_pids(&self) -> Vec<u32> {
        self.forwarders.iter().filter_map(Bg::pid).collect()
    }

    /// Fails if a forwarder died (a crashed daemon makes later figures
    /// meaningless), with the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for (i, f) in self.forwarders.iter_mut().enumerate() {
            if let Some(st) = f.exited()? {
                let log = self
                    .logs
                    .get(i)
                    .and_then(|p| fs::read_to_string(p).ok())
                    .unwrap_or_else(|| f.output());
                bail!(
                    "{}: forwarder `{}` exited ({st}); log:\n{}",
                    self.kind,
                    f.cmdline(),
                    cmd::tail(&log, 30)
                );
            }
        }
        Ok(())
    }

    /// Where the forwarders' configs and logs are.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }
}

impl Drop for ModeEnv {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        for f in &mut self.forwarders {
            f.stop();
        }
        // The namespaces and the temporary directory go with the fields.
    }
}

/// Sets up `kind` on `hosts`.
pub fn setup(kind: ModeKind, hosts: &Hosts, tools: &Tools) -> Result<ModeEnv> {
    let client = Netns::create(&format!("{}{}-c", hosts.prefix, kind.tag()))?;
    let server = Netns::create(&format!("{}{}-s", hosts.prefix, kind.tag()))?;
    let mut env = ModeEnv {
        kind,
        target: Ipv4Addr::UNSPECIFIED,
        servers: Vec::new(),
        forwarders: Vec::new(),
        client,
        server,
        dir: None,
        logs: Vec::new(),
    };
    match kind {
        ModeKind::Direct => setup_direct(&mut env, hosts)?,
        ModeKind::Vxlan => setup_vxlan(&mut env, hosts)?,
        ModeKind::Openvpn => setup_openvpn(&mut env, hosts)?,
        ModeKind::Proxytun => setup_proxytun(&mut env, hosts, tools, &PROXYTUN)?,
        ModeKind::ProxytunPlain => setup_proxytun(&mut env, hosts, tools, &PROXYTUN_PLAIN)?,
        ModeKind::ProxytunNoauth => setup_proxytun(&mut env, hosts, tools, &PROXYTUN_NOAUTH)?,
        ModeKind::ProxytunEncrypt => setup_proxytun(&mut env, hosts, tools, &PROXYTUN_ENCRYPT)?,
    }
    // Client-side tuning for the connection-rate test: many short
    // connections from one address must not run out of ports.
    env.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    env.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    start_servers(&mut env, tools)?;
    wait_reachable(&env, tools)?;
    Ok(env)
}

/// The kernel modes' addressing: client subnet `10.<n>.1.0/24` on host A,
/// server subnet `10.<n>.2.0/24` on host B.
fn subnets(n: u8) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(10, n, 1, 1),
        Ipv4Addr::new(10, n, 1, 2),
        Ipv4Addr::new(10, n, 2, 1),
        Ipv4Addr::new(10, n, 2, 2),
    )
}

fn setup_direct(env: &mut ModeEnv, hosts: &Hosts) -> Result<()> {
    let (gw_c, ip_c, gw_s, ip_s) = subnets(101);
    let tag = env.kind.tag();
    topo::plug_container(&hosts.a, &format!("{tag}-c"), &env.client, gw_c, ip_c, 1500)?;
    topo::plug_container(&hosts.b, &format!("{tag}-s"), &env.server, gw_s, ip_s, 1500)?;
    hosts.a.ip(&[
        "route",
        "add",
        "10.101.2.0/24",
        "via",
        &HOST_B.to_string(),
        "dev",
        UNDERLAY_IF,
    ])?;
    hosts.b.ip(&[
        "route",
        "add",
        "10.101.1.0/24",
        "via",
        &HOST_A.to_string(),
        "dev",
        UNDERLAY_IF,
    ])?;
    env.target = ip_s;
    Ok(())
}

/// The overlay MTU of VXLAN over IPv4 on a 1500-byte underlay; the
/// containers get the same, as a VXLAN user would configure.
const VXLAN_MTU: u32 = 1450;

fn setup_vxlan(env: &mut ModeEnv, hosts: &Hosts) -> Result<()> {
    let (gw_c, ip_c, gw_s, ip_s) = subnets(102);
    let tag = env.kind.tag();
    topo::plug_container(
        &hosts.a,
        &format!("{tag}-c"),
        &env.client,
        gw_c,
        ip_c,
        VXLAN_MTU,
    )?;
    topo::plug_container(
        &hosts.b,
        &format!("{tag}-s"),
        &env.server,
        gw_s,
        ip_s,
        VXLAN_MTU,
    )?;
    let vx = "vx0";
    for (host, local, remote, addr, peer, far) in [
        (
            &hosts.a,
            HOST_A,
            HOST_B,
            "10.102.0.1/24",
            "10.102.0.2",
            "10.102.2.0/24",
        ),
        (
            &hosts.b,
            HOST_B,
            HOST_A,
            "10.102.0.2/24",
            "10.102.0.1",
            "10.102.1.0/24",
        ),
    ] {
        host.ip(&[
            "link",
            "add",
            vx,
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &local.to_string(),
            "remote",
            &remote.to_string(),
            "dstport",
            "4789",
            "dev",
            UNDERLAY_IF,
        ])?;
        host.ip(&["link", "set", vx, "mtu", &VXLAN_MTU.to_string()])?;
        host.ip(&["addr", "add", addr, "dev", vx])?;
        host.ip(&["link", "set", vx, "up"])?;
        host.ip(&["route", "add", far, "via", peer, "dev", vx])?;
    }
    env.target = ip_s;
    Ok(())
}

/// OpenVPN's TUN MTU: the same overlay MTU as VXLAN, so its UDP datagrams
/// are not fragmented on the underlay.
const OPENVPN_MTU: u32 = 1450;

/// Whether `openvpn` is on the PATH.
pub fn openvpn_installed() -> bool {
    Command::new("openvpn")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

fn setup_openvpn(env: &mut ModeEnv, hosts: &Hosts) -> Result<()> {
    if !openvpn_installed() {
        bail!("openvpn is not installed (run with --install to apt-get it)");
    }
    let (gw_c, ip_c, gw_s, ip_s) = subnets(103);
    let tag = env.kind.tag();
    topo::plug_container(
        &hosts.a,
        &format!("{tag}-c"),
        &env.client,
        gw_c,
        ip_c,
        OPENVPN_MTU,
    )?;
    topo::plug_container(
        &hosts.b,
        &format!("{tag}-s"),
        &env.server,
        gw_s,
        ip_s,
        OPENVPN_MTU,
    )?;
    for (host, local, remote, me, peer, far) in [
        (
            &hosts.a,
            HOST_A,
            HOST_B,
            "10.103.0.1",
            "10.103.0.2",
            "10.103.2.0",
        ),
        (
            &hosts.b,
            HOST_B,
            HOST_A,
            "10.103.0.2",
            "10.103.0.1",
            "10.103.1.0",
        ),
    ] {
        let mtu = OPENVPN_MTU.to_string();
        let (local, remote) = (local.to_string(), remote.to_string());
        let args = [
            "--dev",
            "tun",
            "--proto",
            "udp",
            "--local",
            &local,
            "--lport",
            "1194",
            "--remote",
            &remote,
            "--rport",
            "1194",
            "--ifconfig",
            me,
            peer,
            "--route",
            far,
            "255.255.255.0",
            "--cipher",
            "none",
            "--data-ciphers",
            "none",
            "--auth",
            "none",
            "--tun-mtu",
            &mtu,
            "--verb",
            "3",
        ];
        let p = host.spawn("openvpn", &args)?.with_grace(STOP_GRACE);
        env.forwarders.push(p);
        let far_net = format!("{far}/24");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            env.check_alive()?;
            let out = host.ip(&["route", "show", &far_net])?;
            if !out.stdout.trim().is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "openvpn in {} did not install its route within 15 s; output:\n{}",
                    host.name(),
                    env.forwarders
                        .last()
                        .map(|p| cmd::tail(&p.output(), 30))
                        .unwrap_or_default()
                );
            }
            cmd::sleep(Duration::from_millis(100))?;
        }
    }
    env.target = ip_s;
    Ok(())
}

/// How one proxytun mode configures its daemons. The two proxytun modes
/// share the host namespaces, so each gets its own ranges, device names,
/// port and app names.
#[derive(Debug)]
struct PtFlavour {
    /// Extra lines of the `[tun]` section.
    tun_extra: &'static str,
    tun_name: &'static str,
    bridge: &'static str,
    port: u16,
    cluster: &'static str,
    cluster6: &'static str,
    services: &'static str,
    services6: &'static str,
    /// The app the bench's instances belong to (also keeps the daemons'
    /// veth names, which derive from the instance key, apart).
    app: &'static str,
    /// `tunnel.security`; a key made by `proxytun keygen` unless plain.
    security: &'static str,
}

/// The TUN MTU of the proxytun modes: the largest that fits a 1500-byte
/// IPv4 underlay with the sealed tunnel's overhead (20 IP + 8 UDP + 20
/// header + 16 tag), the same for every security mode so their figures
/// compare; VXLAN's 1450 would not fit an authenticated datagram.
const PT_MTU: u32 = 1500 - 20 - 8 - 20 - 16;

const PROXYTUN: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun0",
    bridge: "ptbr0",
    port: 50103,
    cluster: "10.18.0.0/16",
    cluster6: "fdff:18::/112",
    services: "10.30.0.0/16",
    services6: "fdff:30::/112",
    app: "ptbench",
    security: "auth",
};

const PROXYTUN_PLAIN: PtFlavour = PtFlavour {
    tun_extra: "offload = false\n",
    tun_name: "ptun1",
    bridge: "ptbr1",
    port: 50104,
    cluster: "10.19.0.0/16",
    cluster6: "fdff:19::/112",
    services: "10.31.0.0/16",
    services6: "fdff:31::/112",
    app: "ptplain",
    security: "auth",
};

const PROXYTUN_NOAUTH: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun2",
    bridge: "ptbr2",
    port: 50105,
    cluster: "10.20.0.0/16",
    cluster6: "fdff:20::/112",
    services: "10.32.0.0/16",
    services6: "fdff:32::/112",
    app: "ptnoauth",
    security: "plain",
};

const PROXYTUN_ENCRYPT: PtFlavour = PtFlavour {
    tun_extra: "",
    tun_name: "ptun3",
    bridge: "ptbr3",
    port: 50106,
    cluster: "10.21.0.0/16",
    cluster6: "fdff:21::/112",
    services: "10.33.0.0/16",
    services6: "fdff:33::/112",
    app: "ptenc",
    security: "encrypt",
};

/// How long a daemon may take to answer on its socket after start.
const DAEMON_START: Duration = Duration::from_secs(20);
/// How long one CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);

fn render_config(
    fl: &PtFlavour,
    name: &str,
    index: u32,
    bind: Ipv4Addr,
    peer: (&str, Ipv4Addr),
    dir: &Path,
) -> String {
    format!(
        "[node]\nname = \"{name}\"\nindex = {index}\n\n\
         [network]\ncluster = \"{}\"\ncluster6 = \"{}\"\nservices = \"{}\"\nservices6 = \"{}\"\n\n\
         [tunnel]\nbind = \"{bind}\"\nport = {}\nsecurity = \"{}\"\nkey_file = \"{}\"\n\n\
         [tun]\nname = \"{}\"\nmtu = {PT_MTU}\n{}\n\
         [bridge]\nname = \"{}\"\n\n\
         [admin]\nenable = false\n\n\
         [api]\nsocket = \"{}\"\n\n\
         [state]\ndir = \"{}\"\n\n\
         [[peer]]\nname = \"{}\"\nendpoint = \"{}:{}\"\n",
        fl.cluster,
        fl.cluster6,
        fl.services,
        fl.services6,
        fl.port,
        fl.security,
        dir.join("cluster.key").display(),
        fl.tun_name,
        fl.tun_extra,
        fl.bridge,
        dir.join(format!("{name}.sock")).display(),
        dir.join(format!("{name}-state")).display(),
        peer.0,
        peer.1,
        fl.port,
    )
}

/// Runs `proxytun --socket SOCK args..` (the CLI, as an operator would),
/// requiring success.
fn cli(tools: &Tools, sock: &Path, args: &[&str]) -> Result<String> {
    let mut c = Command::new(&tools.proxytun);
    c.arg("--socket").arg(sock).args(args);
    Ok(cmd::run(&mut c, CLI_TIMEOUT)?.ok()?.stdout)
}

fn cli_json(tools: &Tools, sock: &Path, args: &[&str]) -> Result<Value> {
    let mut a = args.to_vec();
    a.push("--json");
    let out = cli(tools, sock, &a)?;
    serde_json::from_str(&out)
        .with_context(|| format!("proxytun {} printed no JSON: {out:?}", a.join(" ")))
}

fn v4_of(v: &Value, what: &str) -> Result<Ipv4Addr> {
    v["v4"]
        .as_str()
        .ok_or_else(|| anyhow!("no {what}.v4 in {v}"))?
        .parse()
        .with_context(|| format!("{what}.v4"))
}

/// The round-robin ServiceIP of `app/service` in `proxytun services --json`.
pub fn rr_ip_of(services: &Value, app: &str, service: &str) -> Result<Ipv4Addr> {
    let list = services
        .as_array()
        .ok_or_else(|| anyhow!("services are not a list: {services}"))?;
    for s in list {
        let a = s["app"].as_str().or_else(|| s["name"]["app"].as_str());
        let n = s["service"]
            .as_str()
            .or_else(|| s["name"]["service"].as_str());
        if a == Some(app) && n == Some(service) {
            return v4_of(&s["rr_ip"], "rr_ip");
        }
    }
    bail!("no service {app}/{service} in {services}")
}

fn wait_daemon(env: &mut ModeEnv, tools: &Tools, sock: &Path) -> Result<()> {
    let deadline = Instant::now() + DAEMON_START;
    loop {
        env.check_alive()?;
        if sock.exists() && cli(tools, sock, &["status"]).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon did not answer on {} within {DAEMON_START:?}",
                sock.display()
            );
        }
        cmd::sleep(Duration::from_millis(100))?;
    }
}

fn setup_proxytun(env: &mut ModeEnv, hosts: &Hosts, tools: &Tools, fl: &PtFlavour) -> Result<()> {
    if !tools.proxytun.exists() {
        bail!("no proxytun binary at {}", tools.proxytun.display());
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}{}-", hosts.prefix, env.kind.tag()))
        .tempdir()
        .context("creating the daemons' directory")?;
    let d = dir.path().to_owned();
    env.dir = Some(dir);
    // One cluster key for both daemons, made the way an operator would.
    let mut k = Command::new(&tools.proxytun);
    k.arg("keygen").arg("--out").arg(d.join("cluster.key"));
    cmd::run(&mut k, CLI_TIMEOUT)?.ok()?;
    let nodes = [
        ("a", 1, HOST_A, ("b", HOST_B), &hosts.a),
        ("b", 2, HOST_B, ("a", HOST_A), &hosts.b),
    ];
    for (name, index, bind, peer, host) in nodes {
        let cfg = d.join(format!("{name}.toml"));
        fs::write(&cfg, render_config(fl, name, index, bind, peer, &d))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = d.join(format!("{name}.log"));
        let mut c = host.command(&tools.proxytun.to_string_lossy(), &["run", "--config"]);
        c.arg(&cfg);
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "warn");
        }
        let p = Bg::spawn_logged(&mut c, &log, Duration::from_secs(5))?;
        env.forwarders.push(p);
        env.logs.push(log);
    }
    let (sa, sb) = (d.join("a.sock"), d.join("b.sock"));
    wait_daemon(env, tools, &sa)?;
    wait_daemon(env, tools, &sb)?;

    let server_svc = format!("{}/server", fl.app);
    let srv = cli_json(
        tools,
        &sb,
        &[
            "attach",
            &server_svc,
            "--instance",
            "1",
            "--netns",
            &env.server.path().to_string_lossy(),
        ],
    )
    .context("attaching the server container on node b")?;
    let rr = rr_ip_of(&cli_json(tools, &sb, &["services"])?, fl.app, "server")?;
    let ns_addr = v4_of(&srv["ns_addr"], "ns_addr")?;
    let iip = v4_of(&srv["instance_ip"], "instance_ip")?;
    cli(
        tools,
        &sa,
        &[
            "remote",
            "add",
            &format!("{server_svc}/1"),
            "--node",
            "b",
            "--ns-addr",
            &ns_addr.to_string(),
            "--instance-ip",
            &iip.to_string(),
            "--service-ip",
            &rr.to_string(),
        ],
    )
    .context("registering the server on node a")?;
    cli_json(
        tools,
        &sa,
        &[
            "attach",
            &format!("{}/client", fl.app),
            "--instance",
            "1",
            "--netns",
            &env.client.path().to_string_lossy(),
        ],
    )
    .context("attaching the client container on node a")?;
    env.target = rr;
    Ok(())
}

fn start_servers(env: &mut ModeEnv, tools: &Tools) -> Result<()> {
    let port = IPERF_PORT.to_string();
    let iperf = env.server.spawn("iperf3", &["-s", "-p", &port])?.with_grace(STOP_GRACE);
    env.servers.push(iperf);
    let rr_port = RR_PORT.to_string();
    let mut rr = env
        .server
        .spawn(
            &tools.bench.to_string_lossy(),
            &["rr-server", "--port", &rr_port],
        )?
        .with_grace(STOP_GRACE);
    rr.wait_for("ready", Duration::from_secs(10))?;
    env.servers.push(rr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.server.listens_tcp(IPERF_PORT)? {
        if let Some(s) = env.servers.first_mut() {
            if let Some(st) = s.exited()? {
                bail!("iperf3 -s exited ({st}):\n{}", s.output());
            }
        }
        if Instant::now() >= deadline {
            bail!("iperf3 -s does not listen on {IPERF_PORT} after 10 s");
        }
        cmd::sleep(Duration::from_millis(50))?;
    }
    Ok(())
}

/// Waits until the client reaches the rr server through the mode's path
/// (routes, ARP, daemons' tables all settled), trying for up to 15 s.
fn wait_reachable(env: &ModeEnv, tools: &Tools) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let target = format!("{}:{RR_PORT}", env.target);
    loop {
        let out = env.client.exec(
            &tools.bench.to_string_lossy(),
            &["rr-client", "--addr", &target, "--secs", "0.2"],
            Duration::from_secs(10),
        )?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: the client cannot reach {target} after 15 s: {}",
                env.kind,
                out.describe("failed")
            );
        }
        cmd::sleep(Duration::from_millis(200))?;
    }
}
