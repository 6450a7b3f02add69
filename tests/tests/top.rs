//! `proxytun top` as a person at the node sees it: the real binary in a
//! pseudo-terminal of 120x40, its output fed to a terminal emulator
//! (`vt100`), keys typed into the pty. Against a real two-node cluster it
//! shows peer b alive with its endpoint and `shop/web` with its instances on
//! both nodes and its flows; it rides out its daemon's restart; `q` quits
//! with status 0 and gives the terminal back (main screen, raw mode off).
//! Against a socket where nothing listens it shows the daemon as
//! unreachable and keeps running; without a terminal it refuses. Ctrl-C,
//! Esc, SIGTERM and SIGHUP give the terminal back too.

use std::fs::File;
use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use testbed::{proxytun_bin, Cluster};

const ROWS: u16 = 40;
const COLS: u16 = 120;
/// How long the screen may take to show what a check waits for.
const SCREEN_DEADLINE: Duration = Duration::from_secs(10);
/// How long `top` may take to exit after a quit key or a signal.
const EXIT_DEADLINE: Duration = Duration::from_secs(3);

const ENTER_ALT: &[u8] = b"\x1b[?1049h";
const LEAVE_ALT: &[u8] = b"\x1b[?1049l";

/// `proxytun top` running in a pseudo-terminal we hold the master side of.
struct Top {
    child: Child,
    master: File,
    output: mpsc::Receiver<Vec<u8>>,
    parser: vt100::Parser,
    /// Everything it wrote, for the escape sequences.
    raw: Vec<u8>,
}

impl Top {
    /// Starts `proxytun --socket SOCKET top ARGS` on a new pty, as the
    /// session leader with the pty as its controlling terminal (so
    /// `/dev/tty` is this pty, not the terminal the tests run in).
    fn spawn(socket: &Path, args: &[&str]) -> Result<Top> {
        let (master, slave) = openpty(ROWS, COLS)?;
        let mut cmd = Command::new(proxytun_bin()?);
        cmd.arg("--socket")
            .arg(socket)
            .arg("top")
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: runs in the child between fork and exec, calling only
        // async-signal-safe functions (setsid, ioctl) on its own fd 0.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        // The parent's copies of the slave go, so reads on the master end
        // (EIO) once the child and its pty are gone.
        drop(cmd);
        let master = File::from(master);
        let mut reader = master.try_clone().context("dup the pty master")?;
        let (tx, output) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let size = |n| NonZeroU16::new(n).ok_or_else(|| anyhow!("zero size"));
        Ok(Top {
            child,
            master,
            output,
            parser: vt100::Parser::new(size(ROWS)?, size(COLS)?, 0),
            raw: Vec::new(),
        })
    }

    /// Feeds what arrived within `wait` to the emulator; false once the
    /// output ended.
    fn pump(&mut self, wait: Duration) -> bool {
        match self.output.recv_timeout(wait) {
            Ok(bytes) => {
                self.parser.process(&bytes);
                self.raw.extend_from_slice(&bytes);
                while let Ok(more) = self.output.try_recv() {
                    self.parser.process(&more);
                    self.raw.extend_from_slice(&more);
                }
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Err(mpsc::RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The screen's rows as text.
    fn rows(&self) -> Vec<String> {
        self.parser.screen().rows(0, COLS).collect()
    }

    fn screen(&self) -> String {
        self.rows().join("\n")
    }

    /// Waits until `check` accepts the screen; fails with `what` and the
    /// screen after [`SCREEN_DEADLINE`] or when `top` exits.
    fn wait_for(&mut self, what: &str, check: impl Fn(&[String]) -> bool) -> Result<()> {
        let deadline = Instant::now() + SCREEN_DEADLINE;
        loop {
            let open = self.pump(Duration::from_millis(100));
            if check(&self.rows()) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "`proxytun top` exited ({st}) before showing {what}; the screen:\n{}",
                    self.screen()
                );
            }
            if !open || Instant::now() >= deadline {
                bail!(
                    "{what} not on the screen within {SCREEN_DEADLINE:?}; the screen:\n{}",
                    self.screen()
                );
            }
        }
    }

    fn press(&mut self, keys: &[u8]) -> Result<()> {
        self.master.write_all(keys).context("typing into the pty")
    }

    /// Waits for the exit (at most [`EXIT_DEADLINE`]) and reads the rest of
    /// the output.
    fn wait_exit(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + EXIT_DEADLINE;
        let st = loop {
            self.pump(Duration::from_millis(50));
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                bail!(
                    "`proxytun top` still runs {EXIT_DEADLINE:?} after it was told to stop; the screen:\n{}",
                    self.screen()
                );
            }
        };
        while self.pump(Duration::from_millis(200)) && Instant::now() < deadline {}
        Ok(st)
    }

    /// The pty's local modes: ICANON and ECHO are off in raw mode.
    fn lflag(&self) -> Result<libc::tcflag_t> {
        // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is our open pty master; `t` outlives the call.
        if unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) } != 0 {
            bail!("tcgetattr: {}", std::io::Error::last_os_error());
        }
        Ok(t.c_lflag)
    }

    /// Checks `top` switched the terminal to raw mode and the alternate
    /// screen while it runs.
    fn assert_took_the_terminal(&self) -> Result<()> {
        let raw = self.lflag()? & (libc::ICANON | libc::ECHO) == 0;
        anyhow::ensure!(raw, "the pty is not in raw mode while `top` runs");
        anyhow::ensure!(
            self.parser.screen().alternate_screen(),
            "`top` draws on the main screen"
        );
        Ok(())
    }

    /// Quits with `q` and checks the exit and the terminal given back.
    fn quit_and_check_restored(self) -> Result<()> {
        self.stop_and_check_restored(Stop::Keys(b"q"))
    }

    /// Stops it as `how` says, then checks it exited with status 0 within
    /// [`EXIT_DEADLINE`], left the alternate screen it had entered, and
    /// turned raw mode off.
    fn stop_and_check_restored(mut self, how: Stop) -> Result<()> {
        match how {
            Stop::Keys(keys) => self.press(keys)?,
            Stop::Signal(sig) => {
                let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
                // SAFETY: kill(2) on our own child, not yet reaped.
                if unsafe { libc::kill(pid, sig) } != 0 {
                    bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
                }
            }
        }
        let st = self.wait_exit()?;
        let screen = self.screen();
        anyhow::ensure!(
            st.success(),
            "{how:?} exited with {st}; the screen:\n{screen}"
        );
        anyhow::ensure!(
            !self.parser.screen().alternate_screen(),
            "still on the alternate screen after {how:?}:\n{screen}"
        );
        let entered = find_last(&self.raw, ENTER_ALT);
        let left = find_last(&self.raw, LEAVE_ALT);
        anyhow::ensure!(
            matches!((entered, left), (Some(e), Some(l)) if l > e),
            "the output does not leave the alternate screen after entering it \
             (enter at {entered:?}, leave at {left:?})"
        );
        let lflag = self.lflag()?;
        anyhow::ensure!(
            lflag & libc::ICANON != 0 && lflag & libc::ECHO != 0,
            "raw mode left on after {how:?} (c_lflag {lflag:#o})"
        );
        Ok(())
    }
}

/// How a test ends `top`.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Bytes typed into the terminal.
    Keys(&'static [u8]),
    /// A signal sent to the process.
    Signal(libc::c_int),
}

impl Drop for Top {
    fn drop(&mut self) {
        // A failed check leaves it running: stop our own child by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A new pty pair of `rows`x`cols`: (master, slave).
fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new fds into `master` and `slave`; the
    // name and termios pointers may be null; `size` outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        bail!("openpty: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened by openpty and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// A table row's cells: split on the borders and on runs of two spaces.
fn cells(row: &str) -> Vec<&str> {
    row.split('│')
        .flat_map(|part| part.split("  "))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The status line at the bottom, its wrapped rows joined, spaces collapsed.
fn status(rows: &[String]) -> String {
    let start = rows
        .iter()
        .position(|r| {
            ["daemon unreachable:", "refresh failed:", "refresh "]
                .iter()
                .any(|p| r.starts_with(p))
        })
        .unwrap_or(rows.len());
    rows[start..]
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when some row's cells start with `first` and hold every one of `rest`.
fn has_row(rows: &[String], first: &str, rest: &[&str]) -> bool {
    rows.iter().any(|r| {
        let c = cells(r);
        c.first() == Some(&first) && rest.iter().all(|want| c.contains(want))
    })
}

#[test]
fn top_shows_peers_and_flows_per_service_and_quits_cleanly() {
    let mut c = Cluster::two_nodes("top").expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    // UDP flows stay in the table for a minute (closed TCP ones only 10 s).
    for _ in 0..3 {
        client
            .udp_hello(d.rr.v4)
            .expect("UDP hello through the ServiceIP");
    }
    let flows = c.a.get("/v1/flows").expect("flows");
    let web_flows = flows["flows"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|f| {
                    f["instance"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("shop/web/"))
                })
                .count()
        })
        .unwrap_or(0);
    assert!(web_flows >= 3, "{flows}");

    let mut top = Top::spawn(c.a.socket(), &["--interval", "0.5"]).expect("start top");
    let endpoint = c.b.endpoint().to_string();
    let rr = d.rr.v4.to_string();
    let flow_count = web_flows.to_string();
    top.wait_for(
        "peer b alive and shop/web with its instances and flows",
        |rows| {
            has_row(rows, "b", &[&endpoint, "alive"])
                && has_row(rows, "shop/web", &[&rr, "1@a 2@b", &flow_count])
                && rows.iter().any(|r| r.contains("proxytun top · node a"))
        },
    )
    .expect("the screen");
    top.assert_took_the_terminal()
        .expect("raw mode and alternate screen");

    // The daemon goes away: a status line, not an exit; back, the view recovers.
    let st = c.a.stop().expect("stop node a's daemon");
    assert!(st.success(), "{st}");
    top.wait_for("the unreachable status line", |rows| {
        let s = status(rows);
        s.starts_with("daemon unreachable: ")
            && s.contains(", retrying every 0.5 s (last answer ")
            && rows[0].contains("proxytun top · node a · NOT ANSWERING, data ")
            && has_row(rows, "b", &[&endpoint])
    })
    .expect("unreachable");
    c.a.start().expect("start node a's daemon again");
    top.wait_for("the view back after the restart", |rows| {
        status(rows).starts_with("refresh ")
            && status(rows).contains(" every 0.5 s · q, Esc or Ctrl-C quits")
            && has_row(rows, "shop/web", &[&rr, "1@a 2@b"])
    })
    .expect("recovered");

    top.quit_and_check_restored().expect("quit with q");
}

#[test]
fn top_without_a_daemon_shows_it_unreachable_and_without_a_terminal_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody-listens.sock");

    let mut top = Top::spawn(&socket, &[]).expect("start top");
    top.wait_for("the unreachable status line", |rows| {
        let s = status(rows);
        s.starts_with("daemon unreachable: cannot connect to ")
            && s.contains("nobody-listens.sock")
            && s.ends_with(", retrying every 1.0 s (no answer yet)")
            && rows
                .iter()
                .any(|r| r.contains("waiting for the first answer of the daemon"))
    })
    .expect("the screen");
    top.assert_took_the_terminal()
        .expect("raw mode and alternate screen");
    // Still there a few refreshes later, not exited nor panicked.
    thread::sleep(Duration::from_millis(2500));
    top.pump(Duration::from_millis(100));
    assert!(
        top.child.try_wait().expect("try_wait").is_none(),
        "`top` exited without a daemon; the screen:\n{}",
        top.screen()
    );
    assert!(!String::from_utf8_lossy(&top.raw).contains("panicked"));
    top.quit_and_check_restored().expect("quit with q");

    // Stdout not a terminal: a clear refusal pointing at `status`.
    let out = Command::new(proxytun_bin().expect("binary"))
        .arg("--socket")
        .arg(&socket)
        .arg("top")
        .stdin(Stdio::null())
        .output()
        .expect("run top with pipes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.starts_with("error: `proxytun top` draws on a terminal and stdout is not one")
            && stderr.contains("use `proxytun status`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn ctrl_c_esc_and_sigterm_also_give_the_terminal_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody-listens.sock");
    for how in [
        Stop::Keys(b"\x03"),
        Stop::Keys(b"\x1b"),
        Stop::Signal(libc::SIGTERM),
        Stop::Signal(libc::SIGHUP),
    ] {
        let mut top = Top::spawn(&socket, &[]).expect("start top");
        top.wait_for("the status line", |rows| {
            status(rows).starts_with("daemon unreachable: ")
        })
        .expect("the screen");
        top.assert_took_the_terminal()
            .expect("raw mode and alternate screen");
        top.stop_and_check_restored(how)
            .unwrap_or_else(|e| panic!("{how:?}: {e:#}"));
    }
}
