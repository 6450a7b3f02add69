//! The egress thread: TUN → core → tunnel socket (or back into the TUN).
//!
//! With TUN offloads one read brings a virtio-net header and up to a 64 KB
//! super-packet. The core rewrites it once (one flow lookup for up to 45
//! segments); only then is it cut into tunnel datagrams, laid out back to
//! back at one stride so that a single `UDP_SEGMENT` send carries them all.
//! A packet for a local instance goes back into the TUN whole, with its
//! virtio-net header and a re-seeded partial checksum.
//!
//! This thread also sends the keepalive pings: its sleep is bounded by the
//! next one due, and after each batch it collects the due pings under the
//! same lock and sends them with the batch's datagrams. It drains the
//! core's misses into the control plane's channel the same way.
//!
//! The datagrams' TCP/UDP checksums are left partial (the pseudo-header
//! seed, no pass over the payload) and the header says so
//! ([`proxytun_core::tunnel::FLAG_CSUM_PARTIAL`]): the receiver's kernel, or
//! the receiver itself without offloads, finishes them.
//!
//! Every datagram to a peer is sealed here ([`proxytun_core::seal`]), after
//! segmenting and outside the core's lock: one atomic add and one AEAD pass
//! per datagram, in place, no allocation.
//!
//! Buffers are allocated once when the thread starts. Every read buffer
//! keeps [`PKT`] bytes in front of the packet and [`TAG_LEN`] after its
//! largest size: the virtio-net header is read just before the packet, the
//! tunnel header is written over the [`PKT`] bytes and the tag after the
//! packet, so a packet that needs no segmenting is sent without a copy.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use super::shared::{IoCounters, Shared, MAX_SLEEP};
use proxytun_core::flow::min_opt;
use proxytun_core::keepalive::CONTROL_MAX as KEEPALIVE_MAX;
use proxytun_core::miss::MISS_RING;
use proxytun_core::offload::{self, CsumAt, Gso, Offload, Segments, Sums};
use proxytun_core::packet::{IPPROTO_TCP, IPPROTO_UDP};
use proxytun_core::tunnel::{MsgType, HEADER_LEN, TAG_LEN};
use proxytun_core::{DropReason, TunVerdict};

/// Reads taken from the TUN before the core's lock is taken once for all.
const READS: usize = 16;

/// Where the IP packet starts in each read buffer: room for the tunnel
/// header in front; the virtio-net header is read into its tail
/// (`PKT - VIRTIO_NET_HDR_LEN..PKT`).
const PKT: usize = if HEADER_LEN > VIRTIO_NET_HDR_LEN {
    HEADER_LEN
} else {
    VIRTIO_NET_HDR_LEN
};
/// Where a read with offloads starts: the virtio-net header, then the packet.
const VNET: usize = PKT - VIRTIO_NET_HDR_LEN;

/// The largest IP packet, super-packets included.
const MAX_PACKET: usize = 65535;

/// Room for the datagrams of one super-packet: its bytes plus a tunnel, IP
/// and L4 header per segment, with a generous margin for small segments.
const SEG_BUF: usize = 4 * MAX_PACKET;

/// Payload bytes per GSO send: what fits in one IP packet with room for the
/// UDP and IPv6 headers.
const GSO_MAX_BYTES: usize = 65000;

/// Segments per GSO send: the kernel's `UDP_MAX_SEGMENTS`.
const GSO_MAX_SEGMENTS: usize = 64;

// The virtio-net header fields tun-rs does not name.
const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_GSO_NONE: u8 = 0;
const VNET_GSO_ECN: u8 = 0x80;

/// One read: the buffer, the packet's length and offload metadata, and the
/// core's verdict on it.
struct Slot {
    buf: Vec<u8>,
    len: usize,
    off: Offload,
    verdict: TunVerdict,
}

/// Pings one turn may collect; bounds the loop over the core's due peers.
const MAX_PINGS: usize = 4096;

/// What one turn gathered under the lock besides the packets: due pings
/// and misses, sent once the lock is released.
struct Extra {
    pings: Vec<(SocketAddr, [u8; KEEPALIVE_MAX], usize)>,
    misses: [IpAddr; MISS_RING],
    n_misses: usize,
    next_keepalive: Option<Instant>,
}

impl Extra {
    fn new() -> Extra {
        Extra {
            pings: Vec::with_capacity(64),
            misses: [IpAddr::V4(Ipv4Addr::UNSPECIFIED); MISS_RING],
            n_misses: 0,
            next_keepalive: None,
        }
    }

    /// Under the lock: takes the due pings (if any are due, or the schedule
    /// is unknown) and the misses.
    fn collect(&mut self, dp: &mut proxytun_core::Dataplane, now: Instant) {
        if dp.next_keepalive().is_none_or(|t| t <= now) {
            let mut buf = [0u8; KEEPALIVE_MAX];
            while self.pings.len() < MAX_PINGS {
                match dp.poll_keepalive(now, &mut buf) {
                    Some((to, len)) if len <= KEEPALIVE_MAX => self.pings.push((to, buf, len)),
                    Some(_) => {}
                    None => break,
                }
            }
        }
        self.next_keepalive = dp.next_keepalive();
        if dp.has_misses() {
            let (list, n) = (&mut self.misses, &mut self.n_misses);
            dp.drain_misses(|a| {
                if let Some(slot) = list.get_mut(*n) {
                    *slot = a;
                    *n += 1;
                }
            });
        }
    }

    /// After the lock: sends the pings and hands the misses on.
    fn send(&mut self, sh: &Shared) {
        for (to, ping, len) in self.pings.drain(..) {
            match sh.socket.send(to, &ping[..len], None) {
                Ok(()) => IoCounters::add(&sh.io.keepalive_tx, 1),
                Err(e) => {
                    IoCounters::add(&sh.io.send_errors, 1);
                    tracing::debug!(error = %e, %to, "keepalive ping not sent");
                }
            }
        }
        if let Some(tx) = &sh.misses {
            for &a in &self.misses[..self.n_misses] {
                if tx.try_send(a).is_err() {
                    IoCounters::add(&sh.io.misses_lost, 1);
                }
            }
        }
        self.n_misses = 0;
    }
}

/// The egress direction's buffers and timers, allocated once: driven by
/// its own thread ([`run`]) or, with one packet thread, by
/// `super::both` next to the ingress direction.
pub(super) struct Egress {
    slots: Vec<Slot>,
    seg: Vec<u8>,
    train: Train,
    next_timer: Option<Instant>,
    extra: Extra,
}

impl Egress {
    /// The buffers, and the first keepalive pings sent at once (not after
    /// the first sleep).
    pub(super) fn new(sh: &Shared) -> Egress {
        let slots = (0..READS)
            .map(|_| Slot {
                buf: vec![0; PKT + MAX_PACKET + TAG_LEN],
                len: 0,
                off: Offload::default(),
                verdict: TunVerdict::Drop(DropReason::Malformed),
            })
            .collect();
        let mut extra = Extra::new();
        extra.collect(&mut sh.core(), Instant::now());
        extra.send(sh);
        Egress {
            slots,
            seg: vec![0u8; SEG_BUF],
            train: Train::new(),
            next_timer: None,
            extra,
        }
    }

    /// How long this direction may sleep: until the next flow timer or
    /// keepalive, at most [`MAX_SLEEP`].
    pub(super) fn sleep(&self, now: Instant) -> Duration {
        min_opt(self.next_timer, self.extra.next_keepalive)
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    /// One turn: a batch of TUN reads through the core and out, the timers
    /// and the due pings. Returns whether any packet was read.
    pub(super) fn turn(&mut self, sh: &Shared) -> bool {
        let n = read_batch(sh, &mut self.slots);
        {
            let mut dp = sh.core();
            let now = Instant::now();
            for s in &mut self.slots[..n] {
                // The whole buffer after `PKT`: room for an answer longer
                // than the packet (an ICMP error quoting a small one).
                let buf = &mut s.buf[PKT..];
                let wire = wire_len(&buf[..s.len], &s.off);
                s.verdict = dp.handle_tun_buf(buf, s.len, wire, now);
            }
            if dp.poll_timeout().is_some_and(|t| t <= now) {
                dp.handle_timeout(now);
            }
            self.next_timer = dp.poll_timeout();
            self.extra.collect(&mut dp, now);
            sh.publish_gauges(&dp);
        }
        for s in &mut self.slots[..n] {
            output(sh, s, &mut self.seg, &mut self.train);
        }
        self.train.flush(sh);
        self.extra.send(sh);
        n > 0
    }
}

/// Runs until a stop is asked for.
pub(super) fn run(sh: &Shared) {
    let mut eg = Egress::new(sh);
    let mut traffic = false;
    loop {
        let sleep = eg.sleep(Instant::now());
        if !sh.wait(sh.tun.as_fd(), sleep, traffic) {
            return;
        }
        traffic = eg.turn(sh);
    }
}

/// Reads up to [`READS`] packets, stopping when the TUN has no more.
/// Returns how many slots were filled.
fn read_batch(sh: &Shared, slots: &mut [Slot]) -> usize {
    let mut n = 0;
    while n < slots.len() {
        let s = &mut slots[n];
        let start = if sh.offload.vnet { VNET } else { PKT };
        let got = match sh.tun.recv(&mut s.buf[start..PKT + MAX_PACKET]) {
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                IoCounters::add(&sh.io.tun_read_errors, 1);
                tracing::debug!(error = %e, "TUN read failed");
                break;
            }
        };
        if sh.offload.vnet {
            let meta = (got > VIRTIO_NET_HDR_LEN)
                .then(|| VirtioNetHdr::decode(&s.buf[VNET..PKT]).ok())
                .flatten()
                .and_then(|h| offload_of(&h));
            match meta {
                Some(off) => {
                    s.off = off;
                    s.len = got - VIRTIO_NET_HDR_LEN;
                }
                None => {
                    IoCounters::add(&sh.io.offload_errors, 1);
                    continue;
                }
            }
        } else {
            s.off = Offload::default();
            s.len = got;
        }
        n += 1;
    }
    n
}

/// The core's view of a virtio-net header; `None` for a GSO type we do not
/// know (the kernel only sends those we enabled, so this is a bug or a lie).
fn offload_of(h: &VirtioNetHdr) -> Option<Offload> {
    let csum = (h.flags & VNET_F_NEEDS_CSUM != 0).then_some(CsumAt {
        start: h.csum_start,
        offset: h.csum_offset,
    });
    let gso = match h.gso_type & !VNET_GSO_ECN {
        VNET_GSO_NONE => Gso::None,
        tun_rs::VIRTIO_NET_HDR_GSO_TCPV4 | tun_rs::VIRTIO_NET_HDR_GSO_TCPV6 => {
            Gso::Tcp { mss: h.gso_size }
        }
        tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4 => Gso::Udp { size: h.gso_size },
        _ => return None,
    };
    Some(Offload { gso, csum })
}

/// The largest IP packet `pkt` leaves as: itself, or for a super-packet
/// its headers plus one segment (what the path MTU must carry).
fn wire_len(pkt: &[u8], off: &Offload) -> usize {
    let size = match off.gso {
        Gso::None => return pkt.len(),
        Gso::Tcp { mss } => mss,
        Gso::Udp { size } => size,
    };
    offload::layout(pkt).map_or(pkt.len(), |l| (l.l4_end + usize::from(size)).min(pkt.len()))
}

/// Carries out the core's verdict on one packet.
fn output(sh: &Shared, s: &mut Slot, seg: &mut [u8], train: &mut Train) {
    let end = PKT + s.len;
    match s.verdict {
        TunVerdict::Drop(_) => {}
        TunVerdict::Icmp(n) | TunVerdict::Reject(n) => {
            // The core's answer in place of the packet (an ICMP error for a
            // packet too big for the tunnel, a RST or ICMP error for one the
            // policy refused): a plain packet, so a zeroed virtio-net header.
            let frame = if sh.offload.vnet {
                s.buf[VNET..PKT].fill(0);
                &s.buf[VNET..PKT + n]
            } else {
                &s.buf[PKT..PKT + n]
            };
            if let Err(e) = sh.tun.send(frame) {
                IoCounters::add(&sh.io.tun_write_errors, 1);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
        TunVerdict::Tun => {
            // A local instance: back into the TUN whole. With offloads the
            // virtio-net header read with the packet still describes it (the
            // rewrite changed no length), and a partial checksum is seeded
            // anew for the rewritten addresses.
            let frame = if sh.offload.vnet {
                if let Some(at) = s.off.csum {
                    if offload::seed_partial_checksum(&mut s.buf[PKT..end], at).is_err() {
                        IoCounters::add(&sh.io.offload_errors, 1);
                        return;
                    }
                }
                &s.buf[VNET..end]
            } else {
                &s.buf[PKT..end]
            };
            if let Err(e) = sh.tun.send(frame) {
                IoCounters::add(&sh.io.tun_write_errors, 1);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
        TunVerdict::Peer(to) => {
            if s.off.gso != Gso::None {
                // Datagrams of earlier packets go first: order within a
                // flow is kept.
                train.flush(sh);
                let trailer = sh.sealer.trailer_len();
                // Seeds, not checksums: the receiver finishes them (or its
                // kernel does), see `FLAG_CSUM_PARTIAL`.
                let sums = Sums::Partial;
                match offload::segment_with_trailer(&s.buf[PKT..end], &s.off, trailer, sums, seg) {
                    Ok(segs) => {
                        if seal_segments(sh, to.ip(), seg, &segs) {
                            send_segments(sh, to, seg, &segs);
                        }
                    }
                    Err(e) => {
                        IoCounters::add(&sh.io.offload_errors, 1);
                        tracing::debug!(error = %e, "super-packet not segmented");
                    }
                }
                return;
            }
            // A partial TCP/UDP checksum stays partial (re-seeded for the
            // rewritten addresses) and travels flagged; any other is finished.
            let mut partial = false;
            if let Some(at) = s.off.csum {
                let pkt = &mut s.buf[PKT..end];
                partial = offload::layout(pkt)
                    .is_ok_and(|l| matches!(l.proto, IPPROTO_TCP | IPPROTO_UDP));
                let done = if partial {
                    offload::seed_partial_checksum(pkt, at)
                } else {
                    offload::finish_checksum(pkt, at)
                };
                if done.is_err() {
                    IoCounters::add(&sh.io.offload_errors, 1);
                    return;
                }
            }
            let dgram = &mut s.buf[PKT - HEADER_LEN..];
            match sh
                .sealer
                .seal_for(to.ip(), dgram, MsgType::Data, s.len, partial)
            {
                Ok(n) => train.push(sh, to, &dgram[..n]),
                Err(e) => seal_failed(sh, &e, 1),
            }
        }
    }
}

/// Ordinary datagrams of one batch, gathered so that a run of them to the
/// same peer leaves in one GSO send: `UDP_SEGMENT` only asks that all but
/// the last datagram have the same size, not that they come from one
/// super-packet. A UDP flood or many small flows then cost one send per
/// batch instead of one per packet. Without GSO each datagram is sent as it
/// comes, from where it lies.
struct Train {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    stride: usize,
    count: usize,
    /// The last datagram was shorter than `stride`: nothing may follow it.
    closed: bool,
}

impl Train {
    fn new() -> Train {
        Train {
            buf: Vec::with_capacity(GSO_MAX_BYTES),
            to: None,
            stride: 0,
            count: 0,
            closed: false,
        }
    }

    /// Adds one datagram for `to`, sending what came before when it cannot
    /// join them.
    fn push(&mut self, sh: &Shared, to: SocketAddr, dgram: &[u8]) {
        if !sh.socket.gso() {
            self.flush(sh);
            send(sh, to, dgram, None, 1);
            return;
        }
        let joins = self.to == Some(to)
            && !self.closed
            && dgram.len() <= self.stride
            && self.count < GSO_MAX_SEGMENTS.min(sh.socket.max_gso_segments())
            && self.buf.len() + dgram.len() <= GSO_MAX_BYTES;
        if !joins {
            self.flush(sh);
            self.to = Some(to);
            self.stride = dgram.len();
        }
        self.buf.extend_from_slice(dgram);
        self.count += 1;
        self.closed = dgram.len() < self.stride;
    }

    /// Sends what is gathered.
    fn flush(&mut self, sh: &Shared) {
        if let Some(to) = self.to.take() {
            let segment = (self.count > 1).then_some(self.stride);
            send(sh, to, &self.buf, segment, self.count as u64);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

/// Seals each datagram of one super-packet in place (the segmenter left
/// room for the tag at the end of each). False, with the datagrams
/// counted, when sealing failed and nothing may be sent.
fn seal_segments(sh: &Shared, to: IpAddr, seg: &mut [u8], segs: &Segments) -> bool {
    let trailer = sh.sealer.trailer_len();
    for i in 0..segs.count {
        let Some(range) = segs.datagram(i) else {
            break;
        };
        let inner = range.len().saturating_sub(HEADER_LEN + trailer);
        if let Err(e) = sh
            .sealer
            .seal_for(to, &mut seg[range], MsgType::Data, inner, true)
        {
            seal_failed(sh, &e, segs.count as u64);
            return false;
        }
    }
    true
}

/// Counts datagrams that could not be sealed (a session whose counter is
/// exhausted: the daemon must restart; with per-node keys, a session cut
/// between the core's verdict and the seal) as send errors.
fn seal_failed(sh: &Shared, e: &proxytun_core::seal::SealError, count: u64) {
    IoCounters::add(&sh.io.send_errors, count);
    if *e == proxytun_core::seal::SealError::NoSession {
        tracing::debug!(error = %e, "tunnel datagram not sealed, not sent");
    } else {
        tracing::warn!(error = %e, "tunnel datagram not sealed, not sent");
    }
}

/// Sends the datagrams of one super-packet: in as few GSO sends as the
/// kernel allows, or one by one without GSO.
fn send_segments(sh: &Shared, to: SocketAddr, seg: &[u8], segs: &Segments) {
    if sh.socket.gso() {
        let max = sh.socket.max_gso_segments().min(GSO_MAX_SEGMENTS);
        for range in segs.groups(max, GSO_MAX_BYTES) {
            let count = range.len().div_ceil(segs.stride);
            send(sh, to, &seg[range], Some(segs.stride), count as u64);
        }
    } else {
        for dgram in seg[..segs.len].chunks(segs.stride) {
            send(sh, to, dgram, None, 1);
        }
    }
}

/// One send system call carrying `count` datagrams.
fn send(sh: &Shared, to: SocketAddr, bytes: &[u8], segment: Option<usize>, count: u64) {
    match sh.socket.send(to, bytes, segment) {
        Ok(()) => {
            IoCounters::add(&sh.io.tunnel_tx, count);
            if count > 1 {
                IoCounters::add(&sh.io.gso_sends, 1);
            }
        }
        Err(e) => {
            IoCounters::add(&sh.io.send_errors, count);
            tracing::debug!(error = %e, %to, "tunnel send failed");
        }
    }
}
