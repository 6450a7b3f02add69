//! Running programs with a deadline, background processes stopped by pid
//! when their handle is dropped, and the interrupt flag that turns a Ctrl-C
//! into an orderly teardown.
//!
//! Every command can hang when the dataplane is broken (a ping that never
//! returns, a connect that never completes, a benchmark load), so nothing
//! here waits without a deadline. A program that installs the interrupt
//! handler (the bench) starts every child in its own process group, so a
//! Ctrl-C on the terminal reaches only the program, which then stops its
//! children itself, by pid, in the right order (servers before daemons
//! before namespaces). Without the handler (the tests) children stay in the
//! caller's group, so a Ctrl-C ends them together with the test.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// How many lines of each stream an error shows: enough for any test's
/// diagnosis, bounded so a chatty benchmark tool does not flood the terminal.
const DESCRIBE_LINES: usize = 200;

/// Installs the SIGINT/SIGTERM handler that sets the interrupt flag; the
/// waits below notice it and fail, so the guards' Drop cleans up. `who`
/// names the program in the messages (`bench: interrupted; ...`).
pub fn install_interrupt_handler(who: &'static str) -> Result<()> {
    ctrlc::set_handler(move || {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\n{who}: interrupted again; still cleaning up");
        } else {
            eprintln!("\n{who}: interrupted; stopping processes and removing namespaces");
        }
    })
    .context("installing the SIGINT/SIGTERM handler")?;
    HANDLER_INSTALLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived (never, without the handler).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails if the run was interrupted: called between steps.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, waking early (with an error) on an interrupt.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Puts the child in its own process group when the interrupt handler is
/// installed (see the module doc).
fn own_group(cmd: &mut Command) -> &mut Command {
    if HANDLER_INSTALLED.load(Ordering::SeqCst) {
        cmd.process_group(0);
    }
    cmd
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Out {
    /// The command line, for error messages.
    pub cmdline: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything it wrote to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Out {
    /// Turns a non-zero exit into an error that shows the output, so a
    /// failure says what the command complained about.
    pub fn ok(self) -> Result<Out> {
        if self.status.success() {
            Ok(self)
        } else {
            bail!("{}", self.describe("failed"))
        }
    }

    /// A multi-line description with the exit status and both streams.
    pub fn describe(&self, what: &str) -> String {
        format!(
            "`{}` {what} ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            tail(self.stdout.trim_end(), DESCRIBE_LINES),
            tail(self.stderr.trim_end(), DESCRIBE_LINES)
        )
    }

    /// The value of the first `key=value` line of stdout (ptprobe's output format).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// The first line of stdout (ptprobe prints the server's name there).
    pub fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or("").trim()
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Renders a command line for messages.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` to completion, killing it after `timeout` or on an interrupt
/// (both are errors carrying what it printed so far).
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    run_inner(cmd, timeout, true)
}

/// Like [`run`], but ignores the interrupt flag: for the teardown itself.
pub fn run_uninterruptible(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    run_inner(cmd, timeout, false)
}

fn run_inner(cmd: &mut Command, timeout: Duration, interruptible: bool) -> Result<Out> {
    let line = cmdline(cmd);
    let mut child = own_group(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let (status, why) = loop {
        if let Some(st) = child.try_wait().context("waitpid")? {
            break (st, None);
        }
        let why = if Instant::now() >= deadline {
            format!("timed out after {timeout:?}")
        } else if interruptible && interrupted() {
            "interrupted".to_owned()
        } else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = child.kill();
        break (child.wait().context("waitpid")?, Some(why));
    };
    let o = Out {
        cmdline: line,
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    };
    if let Some(why) = why {
        bail!("{}", o.describe(&why));
    }
    Ok(o)
}

/// Runs `prog args..` and requires success.
pub fn run_ok(prog: &str, args: &[&str], timeout: Duration) -> Result<Out> {
    run(Command::new(prog).args(args), timeout)?.ok()
}

/// Output collected from a background process, with a way to wait for a line.
#[derive(Debug, Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

/// A background process (a server in a container, a daemon), stopped by
/// pid on Drop: SIGTERM, up to its grace period, then SIGKILL; always
/// reaped. The grace period is zero unless set, so a test's servers are
/// killed at once.
#[derive(Debug)]
pub struct Bg {
    child: Option<Child>,
    cmdline: String,
    log: Arc<Log>,
    grace: Duration,
}

impl Bg {
    /// Starts `cmd` in the background, collecting stdout and stderr.
    pub fn spawn(cmd: &mut Command) -> Result<Bg> {
        let cmdline = cmdline(cmd);
        let mut child = own_group(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{cmdline}`"))?;
        let log = Arc::new(Log::default());
        let streams = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let log = Arc::clone(&log);
            thread::spawn(move || collect(stream, &log));
        }
        Ok(Bg {
            child: Some(child),
            cmdline,
            log,
            grace: Duration::ZERO,
        })
    }

    /// Starts `cmd` with stdout and stderr going to the file `log` (for
    /// daemons, whose log is kept on disk for a post-mortem).
    pub fn spawn_logged(cmd: &mut Command, log: &Path, grace: Duration) -> Result<Bg> {
        let cmdline = cmdline(cmd);
        let f = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = own_group(cmd)
            .stdin(Stdio::null())
            .stdout(f.try_clone().context("dup log fd")?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start `{cmdline}`"))?;
        Ok(Bg {
            child: Some(child),
            cmdline,
            log: Arc::new(Log::default()),
            grace,
        })
    }

    /// Sets how long [`Bg::stop`] (and Drop) waits after SIGTERM before
    /// SIGKILL: for servers that should end cleanly.
    pub fn with_grace(mut self, grace: Duration) -> Bg {
        self.grace = grace;
        self
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line it was started with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Everything printed so far (for processes started with [`Bg::spawn`]).
    pub fn output(&self) -> String {
        self.log.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait().context("waitpid")?),
            None => Err(anyhow!("`{}` was already stopped", self.cmdline)),
        }
    }

    /// Waits until a printed line contains `needle`; fails if the process
    /// exits first, `timeout` passes, or the run is interrupted.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let t = self
                    .log
                    .text
                    .lock()
                    .map_err(|_| anyhow!("log lock poisoned"))?;
                if t.contains(needle) {
                    return Ok(());
                }
                let _ = self
                    .log
                    .grew
                    .wait_timeout(t, Duration::from_millis(50))
                    .map_err(|_| anyhow!("log lock poisoned"))?;
            }
            let why = if let Some(st) = self.exited()? {
                format!("exited ({st}) before printing {needle:?}")
            } else if Instant::now() >= deadline {
                format!("did not print {needle:?} within {timeout:?}")
            } else {
                check_interrupt()?;
                continue;
            };
            bail!(
                "`{}` {why}:\n{}",
                self.cmdline,
                tail(&self.output(), DESCRIBE_LINES)
            );
        }
    }

    /// Kills (SIGKILL) and reaps the process at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process: SIGTERM to its pid, up to the grace period, then
    /// SIGKILL; always reaps it. With no grace period, just SIGKILL.
    pub fn stop(&mut self) {
        if self.grace.is_zero() {
            return self.kill();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped,
            // so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Appends each line `stream` prints to `log`, waking the waiters.
fn collect(stream: Box<dyn Read + Send>, log: &Log) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Ok(mut t) = log.text.lock() {
                    t.push_str(&line);
                }
                log.grew.notify_all();
            }
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.stop();
    }
}
