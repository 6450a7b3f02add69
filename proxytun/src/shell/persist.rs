//! Flow persistence: the flow table and reply cache in `<state dir>/flows.json`,
//! so established connections survive a restart of the daemon, also a
//! `kill -9` (see `docs/crash-survival.md`).
//!
//! - A saver thread wakes every [`SAVE_INTERVAL`] and, only when the flows
//!   changed (a flow was created, or the number of flows or reply entries
//!   moved) or [`REFRESH_INTERVAL`] passed with flows present, copies the
//!   records out under the core's lock (one pass, no I/O under the lock)
//!   and writes them with [`envmgr::store::write_atomic`] (temporary file,
//!   fsync, rename, fsync of the directory): a crash at any point leaves
//!   the previous file or the new one, never half of one.
//! - On SIGTERM the daemon saves once more after the packet threads
//!   stopped, so nothing that happened since the last tick is lost.
//! - At start the daemon imports the file before the packet threads run;
//!   the records are validated against the first table like a table swap.
//!   A missing file is a fresh node; a damaged one is logged and ignored:
//!   the daemon starts without flows rather than not at all.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::io_loop::ControlSender;
use proxytun_core::flow::{FlowRecords, ImportReport};
use proxytun_core::{Counters, Dataplane};

/// Name of the flow state file in the state directory.
pub const FLOWS_FILE: &str = "flows.json";

/// How often the saver looks for changes: a `kill -9` loses at most the
/// flows created in this last interval.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the saver rewrites the file when flows exist but nothing
/// counted changed, so the saved idle ages (and TCP states) stay recent.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Format version of the file; another version is ignored like damage.
const VERSION: u32 = 1;

/// Saved idle ages are aged by the downtime, but at most by this much: a
/// clock that jumped must not make every flow look expired (or negative).
const MAX_DOWNTIME: Duration = Duration::from_secs(24 * 3600);

/// Why the state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Writing the file failed at one step of the atomic write.
    #[error("{action} {path}: {source}")]
    Write {
        /// The step, e.g. `fsync`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a flow state file of this version.
    #[error("parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The records could not be encoded (a bug).
    #[error("encode the flow records: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct FlowFile {
    version: u32,
    /// Wall-clock time of the save, to age the records by the downtime.
    saved_unix_ms: u64,
    #[serde(flatten)]
    records: FlowRecords,
}

/// The flow state file in `state_dir`.
pub fn flows_path(state_dir: &Path) -> PathBuf {
    state_dir.join(FLOWS_FILE)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `records` to `path` atomically and durably, stamped with `wall`.
pub fn save(path: &Path, records: FlowRecords, wall: SystemTime) -> Result<(), PersistError> {
    let file = FlowFile {
        version: VERSION,
        saved_unix_ms: unix_ms(wall),
        records,
    };
    let bytes = serde_json::to_vec(&file)?;
    envmgr::store::write_atomic(path, &bytes).map_err(|e| PersistError::Write {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}

/// Reads the records saved at `path`, aged by the time between the save
/// and `wall`. `Ok(None)`: there is no file.
pub fn load(path: &Path, wall: SystemTime) -> Result<Option<FlowRecords>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let parse = |reason: String| PersistError::Parse {
        path: path.to_owned(),
        reason,
    };
    let file: FlowFile = serde_json::from_slice(&bytes).map_err(|e| parse(e.to_string()))?;
    if file.version != VERSION {
        return Err(parse(format!(
            "version {} (this daemon reads {VERSION})",
            file.version
        )));
    }
    let down = Duration::from_millis(unix_ms(wall).saturating_sub(file.saved_unix_ms));
    let mut records = file.records;
    records.age(down.min(MAX_DOWNTIME));
    Ok(Some(records))
}

/// Imports the flows saved in `state_dir` into `dp`, before the packet
/// threads run. Never fails: a damaged file is logged and the daemon
/// starts without flows.
pub fn restore(dp: &mut Dataplane, state_dir: &Path) -> ImportReport {
    let path = flows_path(state_dir);
    match load(&path, SystemTime::now()) {
        Ok(Some(records)) => {
            let report = dp.import_flows(records, Instant::now());
            tracing::info!(
                flows = report.flows,
                flows_dropped = report.flows_dropped,
                replies = report.replies,
                replies_dropped = report.replies_dropped,
                "restored the saved flows"
            );
            report
        }
        Ok(None) => ImportReport::default(),
        Err(e) => {
            tracing::warn!(error = %e, "the saved flows are unreadable; starting without them");
            ImportReport::default()
        }
    }
}

/// Copies the records out of the running core and writes them. Returns how
/// long the core's lock was held and how many records were written.
pub fn save_now(ctrl: &ControlSender, path: &Path) -> Result<SaveStats, PersistError> {
    let (records, held) = ctrl.with_core(|dp| {
        let start = Instant::now();
        let records = dp.export_flows(Instant::now());
        (records, start.elapsed())
    });
    let entries = records.flows.len() + records.replies.len();
    save(path, records, SystemTime::now())?;
    Ok(SaveStats { held, entries })
}

/// What one save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveStats {
    /// How long the core's lock was held to copy the records.
    pub held: Duration,
    /// Flows plus reply entries written.
    pub entries: usize,
}

/// The background saver; [`Saver::stop`] ends it with a last save.
#[derive(Debug)]
pub struct Saver {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    ctrl: ControlSender,
    path: PathBuf,
}

/// What the saver compares between ticks to know whether to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    created: u64,
    flows: usize,
    replies: usize,
}

impl Saver {
    /// Starts the saver thread for the core behind `ctrl`, writing
    /// `<state_dir>/flows.json`.
    pub fn spawn(
        ctrl: ControlSender,
        counters: Arc<Counters>,
        state_dir: &Path,
    ) -> std::io::Result<Saver> {
        let path = flows_path(state_dir);
        let (stop, stopped) = mpsc::channel();
        let thread = {
            let ctrl = ctrl.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("flow-saver".into())
                .spawn(move || run(&ctrl, &counters, &path, &stopped))?
        };
        Ok(Saver {
            stop,
            thread: Some(thread),
            ctrl,
            path,
        })
    }

    /// Stops the thread and saves once more. Call after the packet threads
    /// stopped, so the file holds the very last state.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the flow saver panicked");
            }
        }
        match save_now(&self.ctrl, &self.path) {
            Ok(s) => tracing::info!(entries = s.entries, "saved the flows for the next start"),
            Err(e) => tracing::error!(error = %e, "cannot save the flows at stop"),
        }
    }
}

/// The saver's loop: a tick every [`SAVE_INTERVAL`] until told to stop.
fn run(ctrl: &ControlSender, counters: &Counters, path: &Path, stopped: &mpsc::Receiver<()>) {
    let mut last: Option<Fingerprint> = None;
    let mut last_write = Instant::now();
    let mut failing = false;
    loop {
        match stopped.recv_timeout(SAVE_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let (flows, replies) = ctrl.with_core(|dp| (dp.flows_active(), dp.replies_active()));
        let now = Instant::now();
        let fp = Fingerprint {
            created: counters.flows_created.load(Ordering::Relaxed),
            flows,
            replies,
        };
        let stale = flows + replies > 0 && now.duration_since(last_write) >= REFRESH_INTERVAL;
        if last == Some(fp) && !stale {
            continue;
        }
        match save_now(ctrl, path) {
            Ok(s) => {
                tracing::debug!(
                    entries = s.entries,
                    held_us = s.held.as_micros(),
                    "saved the flows"
                );
                if failing {
                    tracing::info!("saving the flows works again");
                }
                failing = false;
                last = Some(fp);
                last_write = now;
            }
            Err(e) => {
                // Once per failure streak: a full disk must not flood the log.
                if !failing {
                    tracing::error!(error = %e, "cannot save the flows; retrying every second");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proxytun_core::flow::{ActivityRecord, FlowRecord, KeyRecord, ReplyRecord};
    use proxytun_core::packet::Proto;
    use proxytun_core::{CoreConfig, TableBuilder};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const PEER: &str = "192.0.2.2:50103";

    /// A table with one local client (10.18.1.5 / iip 10.30.1.5), one local
    /// instance web/1 (10.18.1.9) and one remote web/2 on PEER.
    fn table() -> proxytun_core::Table {
        let mut b = TableBuilder::new(
            "10.30.0.0/16".parse().unwrap(),
            "fdff:30::/112".parse().unwrap(),
        );
        let cli = b.service(
            "a/cli",
            "10.30.0.1".parse().unwrap(),
            "fdff:30::1".parse().unwrap(),
        );
        let web = b.service(
            "a/web",
            "10.30.0.2".parse().unwrap(),
            "fdff:30::2".parse().unwrap(),
        );
        let peer: SocketAddr = PEER.parse().unwrap();
        b.peer(peer);
        instance(&mut b, "a/cli/1", cli, 5, None);
        instance(&mut b, "a/web/1", web, 9, None);
        instance(&mut b, "a/web/2", web, 20, Some(peer));
        b.build().unwrap()
    }

    fn instance(
        b: &mut TableBuilder,
        name: &str,
        svc: proxytun_core::table::ServiceId,
        host: u8,
        peer: Option<SocketAddr>,
    ) {
        let subnet = if peer.is_some() { 2 } else { 1 };
        let loc = match peer {
            Some(p) => proxytun_core::Location::Remote(p),
            None => proxytun_core::Location::Local,
        };
        b.instance(
            svc,
            name,
            Ipv4Addr::new(10, 18, subnet, host),
            format!("fdff:18::{subnet}{host:02}").parse().unwrap(),
            Ipv4Addr::new(10, 30, subnet, host),
            format!("fdff:30::{subnet}{host:02}").parse().unwrap(),
            loc,
        );
    }

    fn act(idle_ms: u64) -> ActivityRecord {
        ActivityRecord {
            established: true,
            fin_fwd: false,
            fin_rev: false,
            idle_ms,
            packets: 10,
            bytes: 1000,
        }
    }

    fn flow(sport: u16, dport: u16, instance: &str, ns: &str, peer: Option<&str>) -> FlowRecord {
        FlowRecord {
            key: KeyRecord {
                proto: Proto::Tcp,
                src: SocketAddr::new("10.18.1.5".parse().unwrap(), sport),
                dst: SocketAddr::new("10.30.0.2".parse().unwrap(), dport),
            },
            client_iip: "10.30.1.5".parse().unwrap(),
            instance: instance.into(),
            instance_ns: ns.parse().unwrap(),
            peer: peer.map(|p| p.parse().unwrap()),
            activity: act(500),
        }
    }

    #[test]
    fn import_validates_like_set_table_and_export_round_trips() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let mut dp = Dataplane::new(CoreConfig::default(), Arc::new(table()));
        let good_remote = flow(1000, 80, "a/web/2", "10.18.2.20", Some(PEER));
        let good_local = flow(1001, 80, "a/web/1", "10.18.1.9", None);
        let moved = flow(1002, 80, "a/web/2", "10.18.2.20", None);
        let gone = flow(1003, 80, "a/web/3", "10.18.2.21", Some(PEER));
        let mut stranger = flow(1004, 80, "a/web/1", "10.18.1.9", None);
        stranger.key.src = SocketAddr::new("10.18.1.77".parse().unwrap(), 1004);
        let mut expired = flow(1005, 80, "a/web/1", "10.18.1.9", None);
        expired.activity.idle_ms = 3 * 3600 * 1000;
        let reply = |peer: &str, instance: &str| ReplyRecord {
            key: KeyRecord {
                proto: Proto::Tcp,
                src: "10.18.1.9:80".parse().unwrap(),
                dst: "10.30.2.7:4000".parse().unwrap(),
            },
            peer: peer.parse().unwrap(),
            instance: instance.into(),
            activity: act(0),
        };
        let records = FlowRecords {
            flows: vec![
                good_remote.clone(),
                good_local.clone(),
                moved,
                gone,
                stranger,
                expired,
            ],
            replies: vec![
                reply(PEER, "a/web/1"),
                reply("192.0.2.99:50103", "a/web/1"),
                reply(PEER, "a/web/7"),
            ],
        };
        let report = dp.import_flows(records, now);
        assert_eq!(
            report,
            ImportReport {
                flows: 2,
                flows_dropped: 4,
                replies: 1,
                replies_dropped: 2,
            }
        );
        let mut back = dp.export_flows(now);
        back.flows.sort_by_key(|f| f.key.src.port());
        assert_eq!(back.flows, vec![good_remote, good_local]);
        assert_eq!(back.replies, vec![reply(PEER, "a/web/1")]);
        assert!(dp.poll_timeout().is_some());
    }

    #[test]
    fn save_load_ages_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = flows_path(dir.path());
        assert!(load(&path, SystemTime::now()).unwrap().is_none());
        let t = SystemTime::now();
        let records = FlowRecords {
            flows: vec![flow(1000, 80, "a/web/1", "10.18.1.9", None)],
            replies: vec![],
        };
        save(&path, records.clone(), t).unwrap();
        let back = load(&path, t + Duration::from_secs(3)).unwrap().unwrap();
        assert_eq!(back.flows[0].activity.idle_ms, 3500);
        // A clock that went back does not make idle ages negative.
        let back = load(&path, t - Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!(back, records);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(load(&path, t), Err(PersistError::Parse { .. })));
        let mut dp = Dataplane::new(CoreConfig::default(), Arc::new(table()));
        assert_eq!(restore(&mut dp, dir.path()), ImportReport::default());
        std::fs::write(
            &path,
            br#"{"version":2,"saved_unix_ms":0,"flows":[],"replies":[]}"#,
        )
        .unwrap();
        assert!(matches!(load(&path, t), Err(PersistError::Parse { .. })));
    }

    /// The core's lock is held only for `export_flows`; this measures it
    /// for 100k flows (printed; run with `--nocapture`) and bounds it
    /// generously so a debug build on a slow CI box passes too.
    #[test]
    fn export_of_100k_flows_is_bounded() {
        let cfg = CoreConfig {
            max_flows: 200_000,
            ..CoreConfig::default()
        };
        let mut dp = Dataplane::new(cfg, Arc::new(table()));
        let now = Instant::now() + Duration::from_secs(10_000);
        let flows: Vec<_> = (0..100_000u32)
            .map(|i| {
                let sport = u16::try_from(1000 + i % 50_000).unwrap();
                let dport = u16::try_from(80 + i / 50_000).unwrap();
                flow(sport, dport, "a/web/2", "10.18.2.20", Some(PEER))
            })
            .collect();
        let report = dp.import_flows(
            FlowRecords {
                flows,
                replies: vec![],
            },
            now,
        );
        assert_eq!(report.flows, 100_000);
        let start = Instant::now();
        let records = dp.export_flows(now);
        let held = start.elapsed();
        assert_eq!(records.flows.len(), 100_000);
        let start = Instant::now();
        let bytes = serde_json::to_vec(&records).unwrap();
        let encode = start.elapsed();
        println!(
            "export of 100k flows: lock held {held:?}; JSON encode (outside the lock) {encode:?}, {} bytes",
            bytes.len()
        );
        assert!(held < Duration::from_secs(2), "held {held:?}");
        let _: IpAddr = records.flows[0].client_iip;
    }
}
