//! Crash survival: a download through a ServiceIP survives `kill -9` and a
//! SIGTERM restart of either node's daemon with its checksum intact,
//! because the flows (client side) and reply entries (server side) are
//! saved in `<state dir>/flows.json` and restored at start.
//!
//! The client on node a downloads a deterministic stream from the only
//! instance of `shop/dl`, on node b, through the round-robin ServiceIP, at
//! a bounded rate (~11 s). A quarter in, one daemon is restarted.
//! `without_saved_flows_the_download_breaks` removes the saved file before
//! the restart and shows the transfer then fails: the persistence is what
//! the other cases test.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed::churn::{self, DownloadSpec};
use testbed::{eventually, Cluster, Node};

/// 64 MiB at 6 MiB/s: about 11 s.
const BYTES: u64 = 64 << 20;
const RATE: u64 = 6 << 20;
const PORT: u16 = 8000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// `kill -9` node a (the client's node: flows are saved).
    KillClient,
    /// SIGTERM-restart node a.
    TermClient,
    /// `kill -9` node b (the instance's node: reply entries are saved).
    KillServer,
}

/// The ServiceIP ranges routed into the TUN.
const RANGES: [&str; 2] = ["10.30.0.0/16", "fdff:30::/112"];

/// Whether `ptun0` exists in the node's host namespace with both ranges
/// routed into it.
fn tun_and_routes(node: &Node) -> (bool, bool) {
    let link = node.host().ip(&["link", "show", "ptun0"]).is_ok();
    let routes = RANGES.iter().all(|r| {
        let fam = if r.contains(':') { "-6" } else { "-4" };
        node.host()
            .ip(&[fam, "route", "show", r])
            .is_ok_and(|o| o.stdout.contains("ptun0"))
    });
    (link, routes)
}

fn run(test: &str, victim: Victim, keep_saved_flows: bool) -> anyhow::Result<churn::Download> {
    let mut c = Cluster::two_nodes(test)?;
    let server = c.container("dl")?;
    let d = c.deploy("shop/dl", &[(&c.b, &server, 1)])?;
    let (client, _) = c.client(&c.a, "cl", 1)?;
    let target = SocketAddr::new(IpAddr::from(d.rr.v4), PORT);
    let seed = 0x5eed;
    let expected = churn::pattern_sha256(seed, BYTES);
    let srv = churn::serve_download(
        &server.path(),
        DownloadSpec {
            port: PORT,
            seed,
            bytes: BYTES,
            rate: RATE,
        },
    )?;
    let progress = Arc::new(AtomicU64::new(0));
    // A stall of 20 s fails the transfer: far longer than a restart takes.
    let dl = churn::download(
        &client.path(),
        target,
        Duration::from_secs(20),
        progress.clone(),
    )?;
    churn::wait_for_count(&progress, BYTES / 4, Duration::from_secs(30))?;

    let node = match victim {
        Victim::KillClient | Victim::TermClient => &mut c.a,
        Victim::KillServer => &mut c.b,
    };
    // The saver has written the connection (at most a second after it
    // appeared; the transfer has run for ~3 s).
    let saved = node.state_dir().join("flows.json");
    eventually(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&saved)?;
        anyhow::ensure!(text.contains("shop/dl/1"), "not saved yet: {text}");
        Ok(())
    })?;
    assert_eq!(tun_and_routes(node), (true, true), "before the restart");
    let t = Instant::now();
    let at = progress.load(std::sync::atomic::Ordering::Relaxed);
    match victim {
        Victim::KillClient | Victim::KillServer => {
            node.kill()?;
            // The TUN is not persistent: with the process, the device and
            // its routes are gone.
            assert_eq!(tun_and_routes(node), (false, false), "after kill -9");
            if !keep_saved_flows {
                std::fs::remove_file(&saved)?;
            }
            node.start()?;
        }
        Victim::TermClient => node.restart()?,
    }
    eprintln!(
        "{test}: node {} {:?} at byte {at} and back in {:?}",
        node.name,
        victim,
        t.elapsed()
    );
    assert_eq!(tun_and_routes(node), (true, true), "after the restart");
    if keep_saved_flows {
        let log = node.log();
        assert!(
            log.contains("restored the saved flows"),
            "no restore in the log:\n{}",
            node.log_tail(30)
        );
    }

    let got = churn::join(dl)?;
    let sent = churn::join(srv)?;
    eprintln!(
        "{test}: received {} bytes in {:?}, sha256 {} (expected {expected})",
        got.bytes, got.elapsed, got.sha256
    );
    assert_eq!(sent, BYTES);
    assert_eq!(got.bytes, BYTES, "bytes received");
    assert_eq!(got.sha256, expected, "checksum");
    println!("download sha256 {}", got.sha256);
    Ok(got)
}

#[test]
fn download_survives_kill_9_of_the_client_node() {
    run("crashka", Victim::KillClient, true).expect("download across kill -9 of node a");
}

#[test]
fn download_survives_sigterm_restart_of_the_client_node() {
    run("crashta", Victim::TermClient, true).expect("download across SIGTERM of node a");
}

#[test]
fn download_survives_kill_9_of_the_server_node() {
    run("crashkb", Victim::KillServer, true).expect("download across kill -9 of node b");
}

/// The control: the same crash with the saved flows removed breaks the
/// transfer (the client's node no longer knows which instance it chose,
/// and mid-stream segments open no flow).
#[test]
fn without_saved_flows_the_download_breaks() {
    let r = run("crashno", Victim::KillClient, false);
    let e = r.expect_err("the download survived without the saved flows");
    eprintln!("as expected, without flows.json: {e:#}");
}

/// "The state file is never half-written": SIGKILL at random moments while
/// attach and detach requests write the store, dozens of times. Every
/// restart must parse the state (the daemon starts, `state.json` and
/// `flows.json` are whole JSON) and show either the attachment set before
/// the request or the one after it.
#[test]
fn state_file_is_never_half_written() {
    use std::collections::BTreeSet;
    let mut c = Cluster::two_nodes("crashst").expect("cluster");
    let pool: Vec<_> = (0..4)
        .map(|i| c.container(&format!("s{i}")).expect("container"))
        .collect();
    let local = |node: &Node| -> BTreeSet<String> {
        node.instances()
            .expect("instances")
            .into_iter()
            .filter(|i| i.kind == "local" && i.service == "st")
            .map(|i| i.key())
            .collect()
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("state_file_is_never_half_written: seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let start = Instant::now();
    let (mut rounds, mut old, mut new) = (0u32, 0u32, 0u32);
    while rounds < 40 && start.elapsed() < Duration::from_secs(120) {
        let before = local(&c.a);
        let i = (next() % pool.len() as u64) as usize;
        let key = format!("shop/st/{}", i + 1);
        let mut after = before.clone();
        let (method, path, body) = if before.contains(&key) {
            after.remove(&key);
            ("DELETE", format!("/v1/attachments/{key}"), None)
        } else {
            after.insert(key.clone());
            let body = serde_json::json!({
                "app": "shop", "service": "st", "instance": i + 1,
                "netns": pool[i].path(),
            });
            ("POST", "/v1/attachments".to_owned(), Some(body.to_string()))
        };
        let socket = c.a.socket().to_owned();
        let req = std::thread::spawn(move || {
            testbed::api::request(&socket, method, &path, body.as_deref())
        });
        // Attach and detach take some tens of milliseconds: kill anywhere
        // in them (or just before or after).
        std::thread::sleep(Duration::from_micros(next() % 60_000));
        c.a.kill().expect("SIGKILL");
        let _ = req.join();
        for file in ["state.json", "flows.json"] {
            let p = c.a.state_dir().join(file);
            if let Ok(text) = std::fs::read_to_string(&p) {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("round {rounds}: {} is damaged: {e}", p.display()));
            }
        }
        c.a.start().expect("start after SIGKILL");
        let got = local(&c.a);
        if got == before {
            old += 1;
        } else if got == after {
            new += 1;
        } else {
            panic!(
                "round {rounds}: {method} {key}: before {before:?}, after {after:?}, got {got:?}"
            );
        }
        rounds += 1;
    }
    eprintln!(
        "{rounds} kills in {:?}: {old} restarts with the old attachment set, {new} with the new one",
        start.elapsed()
    );
    assert!(rounds >= 24, "only {rounds} rounds in the time limit");
}
