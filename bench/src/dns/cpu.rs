//! CPU time of single threads of this process, from
//! `/proc/self/task/<tid>/stat`: how much of a core the resolver, the echo
//! server and the load tool used during a load.

use std::collections::BTreeSet;
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::measure::cpu::{parse_pid_stat, ticks_per_sec, Sample};

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Binds thread `tid` to CPU `cpu`: the load tool and the server it
/// measures each get a core of their own, so the numbers say what the server
/// does rather than how the scheduler shared two cores between a spinning
/// load thread and it.
pub fn pin(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET writes
    // inside it for cpu < CPU_SETSIZE, checked first.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other("cpu index out of range"));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The ids of this process's threads now.
pub fn task_ids() -> Result<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let e = e.context("reading /proc/self/task")?;
        if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.insert(tid);
        }
    }
    Ok(out)
}

/// utime + stime ticks of one thread (0 when it is gone).
fn thread_ticks(tid: i32) -> u64 {
    fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|t| parse_pid_stat(&t).ok())
        .unwrap_or(0)
}

/// CPU ticks of a group of threads at one instant.
#[derive(Debug, Clone)]
pub struct Meter {
    tids: Vec<i32>,
    ticks: u64,
    at: Instant,
}

impl Meter {
    /// Starts measuring the threads `tids`.
    pub fn start(tids: &[i32]) -> Meter {
        Meter {
            tids: tids.to_vec(),
            ticks: tids.iter().map(|&t| thread_ticks(t)).sum(),
            at: Instant::now(),
        }
    }

    /// The share of one core the threads used since `start`, in percent
    /// (`None` without threads). /proc counts in ticks (10 ms), so a short
    /// load reads coarse.
    pub fn percent(&self) -> Option<f64> {
        if self.tids.is_empty() {
            return None;
        }
        let now: u64 = self.tids.iter().map(|&t| thread_ticks(t)).sum();
        let secs = self.at.elapsed().as_secs_f64();
        (secs > 0.0)
            .then(|| (now.saturating_sub(self.ticks)) as f64 / ticks_per_sec() / secs * 100.0)
    }
}

/// The CPU the rest of the machine used (busy time from `/proc/stat` minus
/// this process's), in percent of one core: other work competing for the
/// two cores makes a run noisy, and this says how noisy.
#[derive(Debug, Clone)]
pub struct Others {
    start: Option<Sample>,
    at: Instant,
}

impl Others {
    /// Starts measuring.
    pub fn start() -> Others {
        Others {
            start: Sample::take(&[std::process::id()]).ok(),
            at: Instant::now(),
        }
    }

    /// Percent of one core used by everything but this process since
    /// `start` (`None` if /proc could not be read).
    pub fn percent(&self) -> Option<f64> {
        let start = self.start.as_ref()?;
        let now = Sample::take(&[std::process::id()]).ok()?;
        let (machine, ours) = start.secs_until(&now);
        let secs = self.at.elapsed().as_secs_f64();
        (secs > 0.0).then(|| (machine - ours).max(0.0) / secs * 100.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn a_spinning_thread_reads_near_one_core() {
        let me = gettid();
        assert!(task_ids().unwrap().contains(&me));
        let m = Meter::start(&[me]);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 300 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let p = m.percent().unwrap();
        // Lenient: other builds may share the two cores.
        assert!(p > 5.0 && p < 150.0, "{p}%");
        assert!(Meter::start(&[]).percent().is_none());
        // Over an interval long enough for the jiffy counters to mean
        // something (one 10 ms tick in a few µs reads as thousands of %).
        let others = Others::start();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let o = others.percent().unwrap();
        assert!((0.0..=100.0 * 64.0).contains(&o), "{o}");
    }
}
