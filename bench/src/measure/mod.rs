//! One round of measurements of one mode: the loads, in a fixed order,
//! each bounded in time. A load that fails is recorded as an error and the
//! round goes on, so one bad figure does not lose the others.

pub mod cpu;
pub mod drops;
pub mod iperf;
pub mod rr;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::modes::{ModeEnv, Tools, RR_PORT};
use crate::profile::Recording;
use crate::topo::Hosts;
use iperf::Load;
use testbed::cmd;

/// The UDP datagram size of the UDP test.
pub const UDP_LEN: u32 = 1400;
/// Parallel streams of the multi-stream TCP test.
pub const TCP_STREAMS: u32 = 4;
/// The request/response message size, bytes.
pub const RR_SIZE: usize = 1;
/// A pause between loads, so one load's tail does not overlap the next.
const SETTLE: Duration = Duration::from_millis(500);

/// Every figure of one round of one mode; `None` where the load failed
/// (the reason is in `errors`) or the figure does not apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Single-stream TCP, Gbit/s.
    pub tcp1_gbps: Option<f64>,
    /// 4-stream TCP, Gbit/s.
    pub tcp4_gbps: Option<f64>,
    /// UDP 1400 B at max rate: received Gbit/s.
    pub udp_gbps: Option<f64>,
    /// UDP loss, percent.
    pub udp_loss_pct: Option<f64>,
    /// UDP datagrams the receiver counted as lost.
    pub udp_lost_pkts: Option<f64>,
    /// UDP datagrams dropped by the sending node's TUN queue (proxytun).
    pub udp_drop_tun_pkts: Option<f64>,
    /// UDP datagrams dropped by both hosts' socket buffers (modes with
    /// forwarder processes).
    pub udp_drop_sockbuf_pkts: Option<f64>,
    /// Packets both daemons counted as dropped during the UDP load.
    pub udp_drop_daemon_pkts: Option<f64>,
    /// UDP datagrams the receiving iperf3's socket buffer dropped (in the
    /// server container; part of the receiver's loss).
    pub udp_drop_receiver_pkts: Option<f64>,
    /// Request/response transactions per second.
    pub rr_tps: Option<f64>,
    /// Request/response median round trip, µs.
    pub rr_p50_us: Option<f64>,
    /// Request/response 99th percentile round trip, µs.
    pub rr_p99_us: Option<f64>,
    /// New TCP connections per second.
    pub crr_cps: Option<f64>,
    /// Forwarder processes' CPU seconds per Gbit during single-stream TCP
    /// (`None` for kernel dataplanes, which have no such process).
    pub fwd_cpu_s_per_gbit: Option<f64>,
    /// Whole machine CPU seconds per Gbit during single-stream TCP.
    pub sys_cpu_s_per_gbit: Option<f64>,
}

/// One round of one mode, as written to the JSON file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The mode's name.
    pub mode: String,
    /// The round, from 1.
    pub run: u32,
    /// The figures.
    pub figures: Figures,
    /// Raw reports of the loads, for a second look.
    pub raw: serde_json::Value,
    /// What failed, `load: reason`.
    pub errors: Vec<String>,
}

/// What one round needs besides the mode.
#[derive(Debug, Clone, Copy)]
pub struct RoundCtx<'a> {
    /// The hosts, for the per-namespace drop counters.
    pub hosts: &'a Hosts,
    /// The binaries.
    pub tools: &'a Tools,
    /// Seconds per load.
    pub secs: u64,
    /// The round, from 1.
    pub run: u32,
    /// Where to record `perf` of the forwarders during single-stream TCP
    /// (`--profile`, the proxytun mode's first round).
    pub profile_to: Option<&'a Path>,
}

/// Runs every load once against `env`, each for `secs` seconds. Returns
/// the round and, when a profile was asked for and recorded, its file.
pub fn round(env: &mut ModeEnv, ctx: RoundCtx<'_>) -> Result<(RunRecord, Option<PathBuf>)> {
    let RoundCtx {
        hosts,
        tools,
        secs,
        run,
        profile_to,
    } = ctx;
    let mut f = Figures::default();
    let mut raw = serde_json::Map::new();
    let mut errors = Vec::new();
    let mode = env.kind.name();
    let note = |what: &str, e: anyhow::Error, errors: &mut Vec<String>| -> Result<()> {
        cmd::check_interrupt()?;
        eprintln!("  {mode}: {what} failed: {e:#}");
        errors.push(format!("{what}: {e:#}"));
        Ok(())
    };

    // Single-stream TCP, with the CPU counters around it (and perf, when
    // profiling: a failed recording is a note, never a failed round).
    let pids = env.forwarder_pids();
    let recording = match profile_to {
        Some(p) => match Recording::start(&pids, secs, p) {
            Ok(r) => Some(r),
            Err(e) => {
                note("profile", e, &mut errors)?;
                None
            }
        },
        None => None,
    };
    let tcp1 = (|| -> Result<_> {
        let before = cpu::Sample::take(&pids)?;
        let r = iperf::run(&env.client, env.target, Load::Tcp { streams: 1 }, secs)?;
        let after = cpu::Sample::take(&pids)?;
        Ok((r, before.secs_until(&after)))
    })();
    let mut profile = None;
    if let Some(rec) = recording {
        match rec.finish() {
            Ok(p) => profile = Some(p),
            Err(e) => note("profile", e, &mut errors)?,
        }
        raw.insert("tcp1_profiled".into(), serde_json::json!(true));
    }
    match tcp1 {
        Ok((r, (machine_s, procs_s))) => {
            f.tcp1_gbps = Some(r.bps / 1e9);
            let gbit = r.gbits();
            if gbit > 0.0 {
                f.sys_cpu_s_per_gbit = Some(machine_s / gbit);
                if !pids.is_empty() {
                    f.fwd_cpu_s_per_gbit = Some(procs_s / gbit);
                }
            }
            raw.insert(
                "tcp1".into(),
                serde_json::json!({"iperf": r, "cpu_machine_s": machine_s, "cpu_forwarders_s": procs_s}),
            );
        }
        Err(e) => note("tcp1", e, &mut errors)?,
    }
    env.check_alive()?;
    cmd::sleep(SETTLE)?;

    match iperf::run(
        &env.client,
        env.target,
        Load::Tcp {
            streams: TCP_STREAMS,
        },
        secs,
    ) {
        Ok(r) => {
            f.tcp4_gbps = Some(r.bps / 1e9);
            raw.insert("tcp4".into(), serde_json::to_value(&r)?);
        }
        Err(e) => note("tcp4", e, &mut errors)?,
    }
    env.check_alive()?;
    cmd::sleep(SETTLE)?;

    // UDP, with the drop counters around it.
    let drops_before = drops::Sample::take(env, hosts, tools);
    let udp = iperf::run(&env.client, env.target, Load::Udp { len: UDP_LEN }, secs);
    let drops_after = drops::Sample::take(env, hosts, tools);
    match udp {
        Ok(r) => {
            f.udp_gbps = Some(r.bps / 1e9);
            f.udp_loss_pct = r.lost_percent;
            f.udp_lost_pkts = r.lost_packets.map(|n| n as f64);
            raw.insert("udp".into(), serde_json::to_value(&r)?);
        }
        Err(e) => note("udp", e, &mut errors)?,
    }
    match (drops_before, drops_after) {
        (Ok(b), Ok(a)) => {
            let d = b.until(&a);
            let count = |n: Option<u64>| n.map(|n| n as f64);
            f.udp_drop_tun_pkts = count(d.tun_pkts);
            f.udp_drop_sockbuf_pkts = count(d.sockbuf_pkts);
            f.udp_drop_daemon_pkts = count(d.daemon_pkts);
            f.udp_drop_receiver_pkts = count(Some(d.receiver_sockbuf.total()));
            raw.insert("udp_drops".into(), serde_json::to_value(d)?);
        }
        (Err(e), _) | (_, Err(e)) => note("udp drop counters", e, &mut errors)?,
    }
    env.check_alive()?;
    cmd::sleep(SETTLE)?;

    let addr = SocketAddr::new(env.target.into(), RR_PORT).to_string();
    let s = secs.to_string();
    let size = RR_SIZE.to_string();
    match client_json::<rr::RrReport>(
        env,
        tools,
        &["rr-client", "--addr", &addr, "--secs", &s, "--size", &size],
        secs,
    ) {
        Ok(r) => {
            f.rr_tps = Some(r.tps);
            f.rr_p50_us = Some(r.p50_us);
            f.rr_p99_us = Some(r.p99_us);
            raw.insert("rr".into(), serde_json::to_value(&r)?);
        }
        Err(e) => note("rr", e, &mut errors)?,
    }
    env.check_alive()?;
    cmd::sleep(SETTLE)?;

    let crr_addr = SocketAddr::new(env.target.into(), rr::crr_port(RR_PORT)).to_string();
    match client_json::<rr::CrrReport>(
        env,
        tools,
        &["crr-client", "--addr", &crr_addr, "--secs", &s],
        secs,
    ) {
        Ok(r) => {
            f.crr_cps = Some(r.cps);
            raw.insert("crr".into(), serde_json::to_value(&r)?);
        }
        Err(e) => note("crr", e, &mut errors)?,
    }
    env.check_alive()?;
    cmd::sleep(SETTLE)?;

    let rec = RunRecord {
        mode: env.kind.name().to_owned(),
        run,
        figures: f,
        raw: serde_json::Value::Object(raw),
        errors,
    };
    Ok((rec, profile))
}

/// Runs one of our clients in the client container and parses its JSON line.
fn client_json<T: serde::de::DeserializeOwned>(
    env: &ModeEnv,
    tools: &Tools,
    args: &[&str],
    secs: u64,
) -> Result<T> {
    let out = env
        .client
        .exec(
            &tools.bench.to_string_lossy(),
            args,
            Duration::from_secs(secs + 20),
        )?
        .ok()?;
    let line = out
        .stdout
        .lines()
        .last()
        .ok_or_else(|| anyhow!("`{}` printed nothing", out.cmdline))?;
    serde_json::from_str(line).with_context(|| format!("`{}` printed {line:?}", out.cmdline))
}
