//! Running programs with a deadline, and background processes that are
//! killed when their handle is dropped.
//!
//! Every command a test runs can hang when the dataplane is broken (a ping
//! that never returns, a connect that never completes), so nothing here
//! waits without a timeout.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
    /// Turns a non-zero exit into an error that shows the output, so a test
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
            self.stdout.trim_end(),
            self.stderr.trim_end()
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

/// Runs `cmd` to completion, killing it after `timeout`. A timeout is an
/// error carrying what the command printed so far.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    let line = cmdline(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        if let Some(st) = child.try_wait().context("waitpid")? {
            break (st, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().context("waitpid")?, true);
        }
        thread::sleep(Duration::from_millis(10));
    };
    let o = Out {
        cmdline: line,
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    };
    if timed_out {
        bail!("{}", o.describe(&format!("timed out after {timeout:?}")));
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

/// A background process (a server in a container) killed and reaped on
/// Drop, whose stdout and stderr are collected for the test to inspect.
#[derive(Debug)]
pub struct Bg {
    child: Child,
    cmdline: String,
    log: Arc<Log>,
}

impl Bg {
    /// Starts `cmd` in the background.
    pub fn spawn(cmd: &mut Command) -> Result<Bg> {
        let cmdline = cmdline(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{cmdline}`"))?;
        let log = Arc::new(Log::default());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
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
            });
        }
        Ok(Bg {
            child,
            cmdline,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.log.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until a printed line contains `needle`; fails if the process
    /// exits first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let t = self
                    .log
                    .text
                    .lock()
                    .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
                if t.contains(needle) {
                    return Ok(());
                }
                let _ = self
                    .log
                    .grew
                    .wait_timeout(t, Duration::from_millis(50))
                    .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "`{}` exited ({st}) before printing {needle:?}:\n{}",
                    self.cmdline,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not print {needle:?} within {timeout:?}:\n{}",
                    self.cmdline,
                    self.output()
                );
            }
        }
    }

    /// Kills (SIGKILL) and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill();
    }
}
