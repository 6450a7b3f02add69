//! Our own DNS load tool: one thread, one connected UDP socket, batches of
//! queries out with `sendmmsg` and answers in with `recvmmsg`, both
//! non-blocking, the thread spinning between them.
//!
//! Why one spinning thread: the box has two cores and the resolver has one
//! thread by design, so the load gets exactly the other core. A separate
//! sender and receiver would compete with the resolver for its core, and a
//! load thread that sleeps in `poll` would add its own wake-up time to
//! every measured latency. Batching keeps the tool's per-query cost (two
//! syscalls shared by up to 64 queries) well under the server's (two
//! syscalls per query), so the server is what saturates.
//!
//! Two ways to offer load:
//! - **closed loop** ([`Mode::Closed`]): keep `window` queries in flight;
//!   a new one goes out as soon as an answer comes back (the maximum rate);
//! - **open loop** ([`Mode::Open`]): query `i` is due at `i / rate`
//!   seconds, whether answers come back or not, and its latency counts from
//!   that due time (not from when it was actually sent), so a stall of the
//!   server or of the tool shows up in the figures instead of hiding in a
//!   slower send rate (no coordinated omission).
//!
//! Answers are matched to queries by the 16-bit DNS ID and each one is
//! checked ([`wire::check_answer`]); a query without an answer after
//! `loss_timeout` is lost and its ID is free again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use testbed::cmd;
use testbed::dnswire::{self as wire, Query, Verdict};

use super::mmsg::{Io, BATCH};
use crate::stats;

/// How often expired queries are collected and the interrupt flag read.
const TICK_NS: u64 = 5_000_000;

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Keep this many queries in flight.
    Closed {
        /// Outstanding queries.
        window: usize,
    },
    /// Send at this many queries per second, answered or not.
    Open {
        /// Queries per second.
        rate: f64,
    },
}

/// How answers are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A resolver: [`wire::check_answer`].
    Dns,
    /// An echo server: [`wire::check_echo`].
    Echo,
}

/// One load against one server.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// The server.
    pub target: SocketAddr,
    /// Closed or open loop.
    pub mode: Mode,
    /// How answers are judged.
    pub check: Check,
    /// How long queries are sent.
    pub duration: Duration,
    /// An answer later than this is a loss.
    pub loss_timeout: Duration,
}

/// Latency percentiles, microseconds (nearest rank over every answer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Answers timed.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest answer.
    pub max_us: f64,
    /// The 99th percentile over every query sent, a lost or wrong one
    /// counting as infinitely slow: `None` when those are more than 1 %.
    /// This is the figure the target is checked against.
    pub p99_all_us: Option<f64>,
}

impl Latency {
    /// Percentiles of nanosecond samples (sorted in place) of the answered
    /// queries, and `unanswered` more that got no right answer; `None`
    /// when nothing was answered.
    pub fn of_ns(samples: &mut [u64], unanswered: u64) -> Option<Latency> {
        samples.sort_unstable();
        let us = |q| stats::quantile_sorted(samples, q).map(|x| x as f64 / 1000.0);
        let all = samples.len() as u64 + unanswered;
        let rank = (0.99 * all as f64).ceil() as u64;
        let p99_all_us = (rank <= samples.len() as u64 && rank > 0)
            .then(|| samples[rank as usize - 1] as f64 / 1000.0);
        Some(Latency {
            p99_all_us,
            count: samples.len(),
            p50_us: us(0.5)?,
            p99_us: us(0.99)?,
            p999_us: us(0.999)?,
            max_us: us(1.0)?,
        })
    }
}

/// What one load measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Seconds queries were sent.
    pub secs: f64,
    /// Queries sent.
    pub sent: u64,
    /// Right answers (during the load and the drain after it).
    pub ok: u64,
    /// Right answers that arrived while queries were being sent, per
    /// second: the rate figure.
    pub qps: f64,
    /// Queries sent per second (open loop: the achieved offered rate).
    pub offered_qps: f64,
    /// Wrong answers by kind.
    pub mismatches: Mismatches,
    /// Queries never answered within the loss timeout.
    pub lost: u64,
    /// Replies whose ID matched nothing in flight (late after a loss, or
    /// duplicated).
    pub unexpected: u64,
    /// Times the socket refused a send (buffer full).
    pub send_stalls: u64,
    /// Latency of the right answers: from the send (closed loop) or from
    /// the due time (open loop).
    pub latency: Option<Latency>,
    /// Open loop: how far behind its due time a query was sent, at worst,
    /// microseconds (the tool's own lag, included in the latency).
    pub max_send_lag_us: Option<f64>,
}

/// Counters of the verdicts, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Mismatches {
    /// [`Verdict::Malformed`].
    pub malformed: u64,
    /// [`Verdict::Truncated`].
    pub truncated: u64,
    /// [`Verdict::Rcode`] 2 (SERVFAIL).
    pub servfail: u64,
    /// [`Verdict::Rcode`] 3 (NXDOMAIN).
    pub nxdomain: u64,
    /// [`Verdict::Rcode`], any other code.
    pub other_rcode: u64,
    /// [`Verdict::AnswerCount`].
    pub answer_count: u64,
    /// [`Verdict::WrongRecord`].
    pub wrong_record: u64,
}

impl Mismatches {
    /// Counts one verdict that is not `Ok`.
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Ok => {}
            Verdict::Malformed => self.malformed += 1,
            Verdict::Truncated => self.truncated += 1,
            Verdict::Rcode(2) => self.servfail += 1,
            Verdict::Rcode(3) => self.nxdomain += 1,
            Verdict::Rcode(_) => self.other_rcode += 1,
            Verdict::AnswerCount(_) => self.answer_count += 1,
            Verdict::WrongRecord => self.wrong_record += 1,
        }
    }

    /// All wrong answers.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.truncated
            + self.servfail
            + self.nxdomain
            + self.other_rcode
            + self.answer_count
            + self.wrong_record
    }
}

/// When query `i` is due, nanoseconds after the start, at `rate` per second.
pub fn scheduled_ns(i: u64, rate: f64) -> u64 {
    (i as f64 * 1e9 / rate) as u64
}

/// How many queries are due by `t_ns` nanoseconds after the start: query
/// 0 is due at once, query `i` at [`scheduled_ns`]`(i)`.
pub fn due_by(t_ns: u64, rate: f64) -> u64 {
    let mut n = (t_ns as f64 * rate / 1e9) as u64 + 1;
    // Float rounding must never put a query before its own due time.
    while n > 0 && scheduled_ns(n - 1, rate) > t_ns {
        n -= 1;
    }
    while scheduled_ns(n, rate) <= t_ns {
        n += 1;
    }
    n
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    busy: bool,
    seq: u64,
    t0_ns: u64,
    tmpl: u32,
}

/// The queries in flight, by ID, with the send order for expiry.
#[derive(Debug)]
struct InFlight {
    slots: Vec<Slot>,
    fifo: VecDeque<(u16, u64)>,
    count: usize,
}

impl InFlight {
    fn new() -> InFlight {
        InFlight {
            slots: vec![Slot::default(); 1 << 16],
            fifo: VecDeque::with_capacity(1 << 16),
            count: 0,
        }
    }

    /// Marks `id` in flight; returns true when it evicted an older query
    /// still holding the ID (65536 queries ago: a loss).
    fn insert(&mut self, id: u16, seq: u64, t0_ns: u64, tmpl: u32) -> bool {
        let s = &mut self.slots[usize::from(id)];
        let evicted = s.busy;
        *s = Slot {
            busy: true,
            seq,
            t0_ns,
            tmpl,
        };
        self.fifo.push_back((id, seq));
        if !evicted {
            self.count += 1;
        }
        evicted
    }

    /// Takes `id` out of flight, with its due/send time and template.
    fn take(&mut self, id: u16) -> Option<(u64, u32)> {
        let s = &mut self.slots[usize::from(id)];
        if !s.busy {
            return None;
        }
        s.busy = false;
        self.count -= 1;
        Some((s.t0_ns, s.tmpl))
    }

    /// Drops queries older than `deadline_ns`; returns how many.
    fn expire(&mut self, deadline_ns: u64) -> u64 {
        let mut lost = 0;
        while let Some(&(id, seq)) = self.fifo.front() {
            let s = &mut self.slots[usize::from(id)];
            if s.busy && s.seq == seq {
                if s.t0_ns >= deadline_ns {
                    break;
                }
                s.busy = false;
                self.count -= 1;
                lost += 1;
            }
            self.fifo.pop_front();
        }
        lost
    }
}

/// Runs one load: `queries` asked in the order of `order` (template
/// indices, cycled), then a drain of up to `loss_timeout` for the answers
/// still in flight.
pub fn run(spec: &LoadSpec, queries: &[Query], order: &[u32]) -> Result<LoadResult> {
    if queries.is_empty() || order.is_empty() {
        bail!("no queries to send");
    }
    if let Some(bad) = order.iter().find(|&&t| t as usize >= queries.len()) {
        bail!(
            "query order names template {bad}, there are {}",
            queries.len()
        );
    }
    match spec.mode {
        Mode::Closed { window } if window == 0 || window > 1 << 15 => {
            bail!("window must be 1..=32768, not {window}")
        }
        Mode::Open { rate } if !(rate.is_finite() && rate >= 1.0) => {
            bail!("open-loop rate must be at least 1 query/s, not {rate}")
        }
        _ => {}
    }
    let mut io = Io::connect(spec.target)?;
    let mut fl = InFlight::new();
    let mut r = LoadResult {
        secs: 0.0,
        sent: 0,
        ok: 0,
        qps: 0.0,
        offered_qps: 0.0,
        mismatches: Mismatches::default(),
        lost: 0,
        unexpected: 0,
        send_stalls: 0,
        latency: None,
        max_send_lag_us: None,
    };
    let dur_ns = spec.duration.as_nanos() as u64;
    let timeout_ns = spec.loss_timeout.as_nanos() as u64;
    let expected = match spec.mode {
        Mode::Closed { .. } => 1 << 16,
        Mode::Open { rate } => (rate * spec.duration.as_secs_f64()) as usize + 16,
    };
    let mut lat: Vec<u64> = Vec::with_capacity(expected.min(1 << 24));
    let mut ok_in_period = 0u64;
    let mut max_lag = 0u64;
    let mut next_id: u16 = 0;
    let mut next_tick = TICK_NS;
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
    let mut sending = true;
    let mut end_ns = dur_ns;
    loop {
        let now = now_ns();
        if sending && now >= dur_ns {
            sending = false;
            end_ns = now;
        }
        if !sending && (fl.count == 0 || now >= end_ns + timeout_ns) {
            break;
        }
        // Send what the mode allows, one batch at most per turn.
        if sending {
            let (n, due_from) = match spec.mode {
                Mode::Closed { window } => (window.saturating_sub(fl.count).min(BATCH), None),
                Mode::Open { rate } => {
                    let due = due_by(now, rate);
                    (
                        due.saturating_sub(r.sent).min(BATCH as u64) as usize,
                        Some(rate),
                    )
                }
            };
            if n > 0 {
                for j in 0..n {
                    let seq = r.sent + j as u64;
                    let t = order[(seq % order.len() as u64) as usize];
                    io.send_len[j] = queries[t as usize]
                        .write_with_id(next_id.wrapping_add(j as u16), &mut io.send[j]);
                }
                let k = io.send_batch(n).context("sending queries")?;
                if k < n {
                    r.send_stalls += 1;
                }
                let sent_at = now_ns();
                for j in 0..k {
                    let seq = r.sent + j as u64;
                    let t = order[(seq % order.len() as u64) as usize];
                    let t0 = match due_from {
                        Some(rate) => {
                            let due = scheduled_ns(seq, rate);
                            max_lag = max_lag.max(sent_at.saturating_sub(due));
                            due
                        }
                        None => sent_at,
                    };
                    if fl.insert(next_id, seq, t0, t) {
                        r.lost += 1;
                    }
                    next_id = next_id.wrapping_add(1);
                }
                r.sent += k as u64;
            }
        }
        // Take every answer waiting.
        let m = io.recv_batch().context("receiving answers")?;
        if m > 0 {
            let at = now_ns();
            for i in 0..m {
                let reply = &io.recv[i][..io.recv_len[i]];
                let Some(id) = wire::reply_id(reply) else {
                    r.unexpected += 1;
                    continue;
                };
                let Some((t0, t)) = fl.take(id) else {
                    r.unexpected += 1;
                    continue;
                };
                let q = &queries[t as usize];
                let v = match spec.check {
                    Check::Dns => wire::check_answer(reply, q),
                    Check::Echo => wire::check_echo(reply, q),
                };
                if v == Verdict::Ok {
                    r.ok += 1;
                    if sending {
                        ok_in_period += 1;
                    }
                    lat.push(at.saturating_sub(t0));
                } else {
                    r.mismatches.add(v);
                }
            }
        }
        if now >= next_tick {
            next_tick = now + TICK_NS;
            r.lost += fl.expire(now.saturating_sub(timeout_ns));
            cmd::check_interrupt()?;
        }
    }
    r.lost += fl.count as u64;
    r.secs = end_ns as f64 / 1e9;
    if r.secs > 0.0 {
        r.qps = ok_in_period as f64 / r.secs;
        r.offered_qps = r.sent as f64 / r.secs;
    }
    r.latency = Latency::of_ns(&mut lat, r.sent - r.ok);
    if matches!(spec.mode, Mode::Open { .. }) {
        r.max_send_lag_us = Some(max_lag as f64 / 1000.0);
    }
    Ok(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;
    use std::net::{IpAddr, UdpSocket};

    #[test]
    fn latency_percentiles_nearest_rank() {
        let mut v: Vec<u64> = (1..=1000).rev().map(|x| x * 1000).collect();
        let l = Latency::of_ns(&mut v, 0).unwrap();
        assert_eq!(l.count, 1000);
        assert_eq!(l.p99_all_us, Some(990.0));
        assert_eq!(l.p50_us, 500.0);
        assert_eq!(l.p99_us, 990.0);
        assert_eq!(l.p999_us, 999.0);
        assert_eq!(l.max_us, 1000.0);
        // 5 of 1005 unanswered: they are the slowest 0.5 %, so p99 over
        // all sent moves up by 5 ranks; 11 of 1011 (over 1 %) leave none.
        let l = Latency::of_ns(&mut v, 5).unwrap();
        assert_eq!((l.p99_us, l.p99_all_us), (990.0, Some(995.0)));
        assert_eq!(Latency::of_ns(&mut v, 11).unwrap().p99_all_us, None);
        let mut one = vec![2500];
        let l = Latency::of_ns(&mut one, 0).unwrap();
        assert_eq!((l.p50_us, l.p999_us, l.max_us), (2.5, 2.5, 2.5));
        assert!(Latency::of_ns(&mut [], 3).is_none());
    }

    #[test]
    fn pacing_schedule_is_exact() {
        for rate in [1.0, 3.0, 1000.0, 25_000.0, 33_333.3, 1e6] {
            assert_eq!(scheduled_ns(0, rate), 0);
            assert_eq!(due_by(0, rate), 1);
            for i in [1u64, 2, 7, 999, 123_456] {
                let t = scheduled_ns(i, rate);
                // At its due time query i is due, one nanosecond before not.
                assert_eq!(due_by(t, rate), i + 1, "rate {rate} i {i}");
                assert_eq!(due_by(t - 1, rate), i, "rate {rate} i {i}");
            }
            // One second holds `rate` queries (rounded), never more.
            let in_one_sec = due_by(999_999_999, rate) as f64;
            assert!(
                (in_one_sec - rate).abs() <= 1.0,
                "rate {rate}: {in_one_sec}"
            );
        }
        assert_eq!(scheduled_ns(3, 1000.0), 3_000_000);
        assert_eq!(due_by(2_500_000, 1000.0), 3);
    }

    #[test]
    fn in_flight_matches_ids_and_expires_in_order() {
        let mut f = InFlight::new();
        assert!(!f.insert(1, 0, 100, 7));
        assert!(!f.insert(2, 1, 200, 8));
        assert!(!f.insert(3, 2, 300, 9));
        assert_eq!(f.count, 3);
        assert_eq!(f.take(2), Some((200, 8)));
        assert_eq!(f.take(2), None);
        assert_eq!(f.take(99), None);
        // Expire everything due before 250: only ID 1 (2 was answered).
        assert_eq!(f.expire(250), 1);
        assert_eq!(f.take(1), None);
        assert_eq!(f.count, 1);
        // Reusing a busy ID evicts (a loss).
        assert!(f.insert(3, 65_538, 400, 1));
        assert_eq!(f.count, 1);
        assert_eq!(f.expire(350), 0, "the old entry for ID 3 is stale");
        assert_eq!(f.take(3), Some((400, 1)));
        assert_eq!(f.count, 0);
    }

    /// A server answering wrongly on purpose: half the replies are the
    /// echoed query (not an answer), every 10th is dropped.
    fn bad_server() -> (SocketAddr, std::thread::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let addr = s.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut n_seen = 0u64;
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                n_seen += 1;
                if n_seen.is_multiple_of(10) {
                    continue;
                }
                let _ = s.send_to(&buf[..n], from);
            }
        });
        (addr, h)
    }

    #[test]
    fn the_tool_notices_wrong_and_missing_answers() {
        let (addr, h) = bad_server();
        let q = vec![
            Query::new("a.b", wire::TYPE_A, IpAddr::from([10, 0, 0, 1])).unwrap(),
            Query::new("c.d", wire::TYPE_A, IpAddr::from([10, 0, 0, 2])).unwrap(),
        ];
        let spec = LoadSpec {
            target: addr,
            mode: Mode::Closed { window: 8 },
            check: Check::Dns,
            duration: Duration::from_millis(200),
            loss_timeout: Duration::from_millis(50),
        };
        let r = run(&spec, &q, &[0, 1]).unwrap();
        assert!(r.sent > 100, "{r:?}");
        assert_eq!(r.ok, 0, "an echo is no answer: {r:?}");
        assert!(r.mismatches.malformed > 0, "{r:?}");
        assert!(r.lost > 0, "every 10th query is dropped: {r:?}");
        assert_eq!(r.mismatches.malformed + r.lost, r.sent, "{r:?}");
        // The same server is a perfect echo for the echo check, apart from
        // the drops, and paced sending keeps to its rate.
        let spec = LoadSpec {
            mode: Mode::Open { rate: 2000.0 },
            check: Check::Echo,
            ..spec
        };
        let r = run(&spec, &q, &[0, 1]).unwrap();
        // 400 are due in 0.2 s; a few fewer if this thread is descheduled
        // at the very end (the box is shared), never more.
        assert!(r.sent <= 401 && r.sent >= 360, "{r:?}");
        assert_eq!(r.mismatches.total(), 0, "{r:?}");
        assert_eq!(r.ok + r.lost, r.sent, "{r:?}");
        assert!(r.lost >= r.sent / 10 - 1, "{r:?}");
        assert!(r.latency.unwrap().count as u64 == r.ok);
        h.join().unwrap();
    }
}
