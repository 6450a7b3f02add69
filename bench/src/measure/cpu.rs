//! CPU time from /proc: the whole machine (`/proc/stat`) and single
//! processes (`/proc/<pid>/stat`, which sums all threads of the process).
//!
//! A sample is taken before and after a load; the difference, divided by
//! the gigabits the load moved, is "CPU seconds per Gbit".

use std::fs;

use anyhow::{anyhow, bail, Context, Result};

/// Busy ticks of the whole machine: every `cpu` column except idle and
/// iowait. Guest time is already inside user/nice, so it is not added.
pub fn parse_proc_stat(text: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no aggregate cpu line in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| {
            x.parse::<u64>()
                .with_context(|| format!("bad /proc/stat field {x:?}"))
        })
        .collect::<Result<_>>()?;
    if f.len() < 7 {
        bail!("short cpu line in /proc/stat: {line:?}");
    }
    // user nice system idle iowait irq softirq [steal ...]
    let steal = f.get(7).copied().unwrap_or(0);
    Ok(f[0] + f[1] + f[2] + f[5] + f[6] + steal)
}

/// utime + stime ticks from one `/proc/<pid>/stat` line. The command name
/// may contain spaces and parentheses, so fields are counted from the last
/// `)`.
pub fn parse_pid_stat(text: &str) -> Result<u64> {
    let close = text
        .rfind(')')
        .ok_or_else(|| anyhow!("no ')' in /proc/<pid>/stat: {text:?}"))?;
    // After ")": state(3) ppid(4) ... utime(14) stime(15); index 0 is state.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        rest.get(i)
            .ok_or_else(|| anyhow!("short /proc/<pid>/stat"))?
            .parse::<u64>()
            .context("bad /proc/<pid>/stat field")
    };
    Ok(get(11)? + get(12)?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of /proc.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Busy ticks of the whole machine.
    pub machine: u64,
    /// utime+stime ticks of the watched processes.
    pub procs: u64,
}

impl Sample {
    /// Reads /proc/stat and each pid's stat.
    pub fn take(pids: &[u32]) -> Result<Sample> {
        let machine = parse_proc_stat(&fs::read_to_string("/proc/stat").context("/proc/stat")?)?;
        let mut procs = 0;
        for pid in pids {
            let p = format!("/proc/{pid}/stat");
            procs += parse_pid_stat(&fs::read_to_string(&p).with_context(|| p.clone())?)?;
        }
        Ok(Sample { machine, procs })
    }

    /// CPU seconds between `self` (earlier) and `later`: (machine, procs).
    pub fn secs_until(&self, later: &Sample) -> (f64, f64) {
        let hz = ticks_per_sec();
        (
            later.machine.saturating_sub(self.machine) as f64 / hz,
            later.procs.saturating_sub(self.procs) as f64 / hz,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    const PROC_STAT: &str = include_str!("../../fixtures/proc-stat.txt");

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        // cpu  146116 0 36199 304991 2263 0 2202 98 0 0
        assert_eq!(
            parse_proc_stat(PROC_STAT).unwrap(),
            146116 + 36199 + 2202 + 98
        );
    }

    #[test]
    fn machine_busy_needs_the_aggregate_line() {
        assert!(parse_proc_stat("cpu0 1 2 3 4 5 6 7\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 x 4 5 6 7\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err());
        // Old kernels without steal.
        assert_eq!(
            parse_proc_stat("cpu  1 2 3 4 5 6 7\n").unwrap(),
            1 + 2 + 3 + 6 + 7
        );
    }

    #[test]
    fn pid_stat_counts_fields_after_the_name() {
        let line = "4380 (cat) R 4373 4373 2124 0 -1 4194304 121 0 0 0 7 3 0 0 20 0 1 0 247582";
        assert_eq!(parse_pid_stat(line).unwrap(), 10);
        let odd = "77 (a (b) c) S 1 77 77 0 -1 0 0 0 0 0 250 50 0 0 20 0 9 0 1";
        assert_eq!(parse_pid_stat(odd).unwrap(), 300);
        assert!(parse_pid_stat("77 (x) S 1 2").is_err());
        assert!(parse_pid_stat("no paren").is_err());
    }

    #[test]
    fn sample_difference_is_in_seconds() {
        let a = Sample {
            machine: 100,
            procs: 10,
        };
        let b = Sample {
            machine: 300,
            procs: 60,
        };
        let hz = ticks_per_sec();
        let (m, p) = a.secs_until(&b);
        assert!((m - 200.0 / hz).abs() < 1e-12);
        assert!((p - 50.0 / hz).abs() < 1e-12);
    }

    #[test]
    fn live_sample_of_ourselves() {
        let s = Sample::take(&[std::process::id()]).unwrap();
        assert!(s.machine > 0);
    }
}
