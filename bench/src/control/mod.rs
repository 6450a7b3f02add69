//! `bench control`: the control plane at scale.
//!
//! 1. Heap per 10k table entries: the dataplane's [`proxytun_core::Table`]
//!    and envmgr's `Snapshot` at 1k/10k/100k instances, counted exactly by
//!    the bench binary's global allocator ([`alloc::Counting`]).
//! 2. Lookup flatness: new-flow lookups over random ServiceIPs at 1k, 10k
//!    and 100k services.
//! 3. A real etcd on loopback: 200 simulated nodes with 50 instances each
//!    registered directly with the key schema, then a watching node
//!    (envmgr's own cluster sync, in-process) and the time each change
//!    takes to reach its view.
//!
//! The pure parts run first, on the main thread before any runtime exists,
//! so nothing else allocates while they count. etcd is a guard: Drop stops
//! it by pid and removes its data, also on an error or Ctrl-C.

pub mod alloc;
mod args;
mod layout;
mod load;
mod metrics;
pub mod report;
pub(crate) mod tables;
mod watch;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use envmgr::cluster::keys::Keys;
use envmgr::plan::AddressPlan;

use report::ControlReport;
use testbed::cmd;
use testbed::etcd::Etcd;

pub use args::ControlArgs;

/// Runs the control-plane bench, prints the table and writes the JSON.
pub fn run(args: &ControlArgs) -> Result<()> {
    if args.changes > 0 && args.interest == 0 {
        bail!("--interest must be at least 1 to time changes");
    }
    if args.interest > args.services {
        bail!("--interest cannot exceed --services");
    }
    if args.runs == 0 || args.lookups == 0 {
        bail!("--runs and --lookups must be at least 1");
    }
    cmd::install_interrupt_handler("bench")?;
    let layout = layout::Layout::new(
        args.nodes,
        args.per_node,
        args.services,
        AddressPlan::with_default_ranges(0),
    )?;

    let mut memory = Vec::new();
    for &n in &args.memory_sizes {
        cmd::check_interrupt()?;
        println!("bench: memory of tables with {n} instances");
        memory.push(tables::memory(n)?);
    }
    let mut lookup = Vec::new();
    for &n in &args.lookup_sizes {
        cmd::check_interrupt()?;
        println!("bench: lookups in a table of {n} services");
        lookup.push(tables::lookup(n, 2, args.hot, args.lookups, args.runs)?);
    }

    let mut report = ControlReport {
        settings: serde_json::json!({
            "nodes": args.nodes,
            "per_node": args.per_node,
            "services": args.services,
            "interest": args.interest,
            "changes": args.changes,
            "misses": args.misses,
            "gap_ms": args.gap_ms,
            "lease_ttl_secs": args.lease_ttl,
            "lookups_per_run": args.lookups,
            "runs": args.runs,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "unix_time": unix_now(),
        }),
        etcd: None,
        load: None,
        watch: None,
        lookup_ratio: report::ratio_last_first(&lookup, |r| r.new_flow_ns),
        vip_ratio: report::ratio_last_first(&lookup, |r| r.vip_ns),
        hot_ratio: report::ratio_last_first(&lookup, |r| r.hot_new_flow_ns),
        memory,
        lookup,
    };

    if !args.no_etcd {
        report.etcd = etcd_version(&args.etcd);
        let server = start_etcd(&args.etcd)?;
        println!(
            "bench: etcd pid {} on {}",
            server.pid().unwrap_or(0),
            server.endpoint()
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let keys = Keys::new(&args.prefix);
        let r = rt.block_on(interruptible(cluster_part(args, &layout, &keys, &server)));
        // Stop the watcher's and keepalive tasks before etcd goes away.
        rt.shutdown_timeout(Duration::from_secs(2));
        drop(server);
        let (load, watch) = r?;
        report.load = Some(load);
        report.watch = watch;
    }

    println!();
    print!("{}", report::render(&report));
    let out_dir = args.out.clone().unwrap_or_else(default_out);
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(format!("control-{}.json", unix_now()));
    let text = serde_json::to_string_pretty(&report)?;
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    fs::write(out_dir.join("control-latest.json"), &text).context("writing control-latest.json")?;
    println!("json: {}", path.display());
    Ok(())
}

/// The etcd part: load, then the watching node.
async fn cluster_part(
    args: &ControlArgs,
    layout: &layout::Layout,
    keys: &Keys,
    server: &Etcd,
) -> Result<(load::LoadReport, Option<report::WatchReport>)> {
    let client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .context("connecting to etcd")?;
    println!(
        "bench: registering {} nodes x {} instances ({} services) in etcd",
        layout.nodes, layout.per_node, layout.services
    );
    let (leases, load) = load::load(&client, layout, keys, args.lease_ttl).await?;
    println!(
        "bench:   {} keys in {:.2} s",
        load.keys,
        load.write_secs + load.lease_secs
    );
    let watch = watch::measure(args, layout, keys, &client, &leases, server).await?;
    drop(leases);
    Ok((load, Some(watch)))
}

/// Runs `fut` until it ends or SIGINT/SIGTERM arrives (then fails, so the
/// guards unwind).
async fn interruptible<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        r = fut => r,
        () = async {
            while !cmd::interrupted() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => bail!("interrupted"),
    }
}

/// Seconds since the epoch, for report file names.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `target/bench`, next to the `release` directory this binary is in.
pub(crate) fn default_out() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(|t| t.join("bench")))
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// A throwaway etcd for the run: loopback only, free ports, data in a
/// temporary directory; stopped by pid (SIGTERM, then SIGKILL) and its data
/// removed on Drop, also on an error or a Ctrl-C, which unwind through it.
fn start_etcd(bin: &Path) -> Result<Etcd> {
    if !bin.exists() {
        bail!(
            "{} not found: install it with `apt-get install etcd-server` or pass --etcd",
            bin.display()
        );
    }
    Etcd::builder("bench")
        .bin(bin)
        .dir_prefix("ptbench-etcd.")
        .log_level("warn")
        .grace(Duration::from_millis(500))
        .start()
}

fn etcd_version(bin: &Path) -> Option<String> {
    let out = cmd::run(Command::new(bin).arg("--version"), Duration::from_secs(10)).ok()?;
    out.stdout.lines().next().map(|l| l.trim().to_owned())
}
