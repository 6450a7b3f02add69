//! The baseline: a trivial UDP echo server on one thread (blocking
//! `recv_from`, then `send_to` of the same bytes), so the resolver's figures
//! can be read as a ratio to what the kernel and two syscalls per packet
//! cost on the same machine at the same moment.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::cpu;

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct Echo {
    addr: SocketAddr,
    tid: i32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// Binds `127.0.0.1:0` and serves on a new thread.
    pub fn start() -> Result<Echo> {
        let sock = UdpSocket::bind("127.0.0.1:0").context("binding the echo socket")?;
        // Wakes up now and then to see the stop flag.
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .context("echo socket timeout")?;
        let addr = sock.local_addr().context("echo socket address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                let _ = tx.send(cpu::gettid());
                let mut buf = [0u8; 2048];
                while !flag.load(Ordering::Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let _ = sock.send_to(&buf[..n], from);
                        }
                        Err(_) => continue,
                    }
                }
            })
            .context("starting the echo thread")?;
        let tid = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the echo thread did not start"))?;
        Ok(Echo {
            addr,
            tid,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its thread's id, for its CPU time.
    pub fn tid(&self) -> i32 {
        self.tid
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
