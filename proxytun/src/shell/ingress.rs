//! The ingress thread: tunnel socket → core → TUN.
//!
//! The core verifies (and in encrypt mode decrypts) every datagram in place
//! before anything else; only the inner packets it accepted, without their
//! tags, reach the TUN.
//!
//! One `recvmmsg` brings up to [`MSGS`] messages; with `UDP_GRO` each may
//! hold up to 64 datagrams of one stride, coalesced by the kernel. The core
//! checks and rewrites every datagram in place under one lock per batch.
//! The accepted inner packets are then written to the TUN. With offloads
//! the core's coalescer ([`proxytun_core::gro`]) groups the segments of each
//! TCP (or, with USO, UDP) flow into frames, and each frame goes out in one
//! vectored write: a virtio-net header, the head packet and the following
//! payloads where they lie in the receive buffer, marked CHECKSUM_PARTIAL.
//! No user-space copy, no checksum pass. Without offloads each packet is
//! written in place, its checksum first finished if the sender left it
//! partial.
//!
//! Keepalive pings from peers come back from the core as pongs written in
//! place ([`NetVerdict::Reply`]); they are sent back to their senders once
//! the lock is released.
//!
//! Buffers are allocated once when the thread starts.

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::time::Instant;

use quinn_udp::RecvMeta;
use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use super::shared::{IoCounters, Shared, MAX_SLEEP};
use proxytun_core::gro::{Coalescer, FrameMeta, Pushed, MAX_SEGMENTS};
use proxytun_core::offload::{self, Gso};
use proxytun_core::tunnel::{self, HEADER_LEN};
use proxytun_core::NetVerdict;

/// Messages per `recvmmsg`.
const MSGS: usize = quinn_udp::BATCH_SIZE;

/// One message's buffer: up to 64 coalesced datagrams (the kernel's
/// `UDP_GRO_CNT_MAX`) of at most 2 KB each (an Ethernet underlay's MTU).
/// A longer datagram is truncated and then fails the core's length checks.
const MSG_BUF: usize = 64 * 2048;

/// Datagrams one batch can hold, bounded so the list of accepted packets
/// never grows.
const MAX_DGRAMS: usize = MSGS * 64;

/// Pongs one batch can send back; more pings in one batch than this are
/// left unanswered (the peer's next ping comes a keepalive interval later).
const MAX_PONGS: usize = 1024;

/// Frames the coalescer holds before they are written: flows of one batch
/// beyond this only cost an earlier write.
const FRAMES: usize = 64;

// The virtio-net header values tun-rs does not name.
const VNET_F_NEEDS_CSUM: u8 = 1;

/// The ingress direction's buffers, allocated once: driven by its own
/// thread ([`run`]) or, with one packet thread, by `super::both` next to
/// the egress direction.
pub(super) struct Ingress {
    big: Vec<u8>,
    meta: [RecvMeta; MSGS],
    /// (start, len, checksum partial) of each inner packet the core
    /// accepted, in `big`.
    accepted: Vec<(usize, usize, bool)>,
    gro: Coalescer,
    /// (to, start, len) of each pong the core wrote in place, in `big`.
    pongs: Vec<(SocketAddr, usize, usize)>,
}

impl Ingress {
    /// The buffers.
    pub(super) fn new(sh: &Shared) -> Ingress {
        Ingress {
            big: vec![0u8; MSGS * MSG_BUF],
            meta: [RecvMeta::default(); MSGS],
            accepted: Vec::with_capacity(MAX_DGRAMS),
            gro: Coalescer::new(FRAMES, sh.offload.uso),
            pongs: Vec::with_capacity(MAX_PONGS),
        }
    }

    /// One turn: a batch from the socket through the core and into the
    /// TUN, pongs sent back. Returns whether any datagram came.
    pub(super) fn turn(&mut self, sh: &Shared) -> bool {
        let Ingress {
            big,
            meta,
            accepted,
            gro,
            pongs,
        } = self;
        let n = {
            let mut chunks = big.chunks_mut(MSG_BUF);
            let mut slices: [IoSliceMut<'_>; MSGS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match sh.socket.recv(&mut slices, meta) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => return false,
                Err(e) => {
                    // ICMP errors from earlier sends surface here (e.g. a
                    // peer that is down); count them and go on.
                    IoCounters::add(&sh.io.recv_errors, 1);
                    tracing::debug!(error = %e, "tunnel receive failed");
                    return false;
                }
            }
        };
        accepted.clear();
        pongs.clear();
        {
            let mut dp = sh.core();
            let now = Instant::now();
            for (i, m) in meta.iter().enumerate().take(n) {
                let base = i * MSG_BUF;
                let len = m.len.min(MSG_BUF);
                let stride = if m.stride == 0 { len } else { m.stride };
                let mut at = 0;
                while at < len {
                    let end = (at + stride).min(len);
                    let dgram = &mut big[base + at..base + end];
                    match dp.handle_tunnel(m.addr, dgram, now) {
                        NetVerdict::Tun(inner) if accepted.len() < MAX_DGRAMS => {
                            // The core opened the datagram: the packet ends
                            // before the tag, and never past the datagram.
                            let inner = inner.min(end - at - HEADER_LEN.min(end - at));
                            let partial = tunnel::csum_partial(&big[base + at..base + end]);
                            accepted.push((base + at + HEADER_LEN, inner, partial));
                        }
                        NetVerdict::Reply(len) if pongs.len() < MAX_PONGS => {
                            pongs.push((m.addr, base + at, len.min(end - at)));
                        }
                        _ => {}
                    }
                    at = end;
                }
            }
            sh.publish_gauges(&dp);
        }
        for &(to, start, len) in pongs.iter() {
            match sh.socket.send(to, &big[start..start + len], None) {
                Ok(()) => IoCounters::add(&sh.io.keepalive_tx, 1),
                Err(e) => {
                    IoCounters::add(&sh.io.send_errors, 1);
                    tracing::debug!(error = %e, %to, "keepalive pong not sent");
                }
            }
        }
        if sh.offload.vnet {
            write_coalesced(sh, big, accepted, gro);
        } else {
            for &(start, len, partial) in accepted.iter() {
                let pkt = &mut big[start..start + len];
                if partial && offload::fill_checksum(pkt).is_err() {
                    IoCounters::add(&sh.io.offload_errors, 1);
                    continue;
                }
                if let Err(e) = sh.tun.send(pkt) {
                    IoCounters::add(&sh.io.tun_write_errors, 1);
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
        }
        true
    }
}

/// Runs until a stop is asked for.
pub(super) fn run(sh: &Shared) {
    let mut ing = Ingress::new(sh);
    let mut traffic = false;
    loop {
        if !sh.wait(sh.socket.as_fd(), MAX_SLEEP, traffic) {
            return;
        }
        traffic = ing.turn(sh);
    }
}

/// Writes the accepted packets as the coalescer's frames, flushing early
/// when it is full; a packet it refuses (a partial checksum it cannot
/// finish) is counted as an offload error.
fn write_coalesced(
    sh: &Shared,
    big: &mut [u8],
    accepted: &[(usize, usize, bool)],
    gro: &mut Coalescer,
) {
    for &(start, len, partial) in accepted {
        let mut r = gro.push(big, start, len, partial);
        if r == Ok(Pushed::Full) {
            flush(sh, big, gro);
            r = gro.push(big, start, len, partial);
        }
        if r.is_err() {
            IoCounters::add(&sh.io.offload_errors, 1);
        }
    }
    flush(sh, big, gro);
}

/// Writes every frame the coalescer holds, one vectored write each, and
/// empties it.
fn flush(sh: &Shared, big: &mut [u8], gro: &mut Coalescer) {
    if gro.is_empty() {
        return;
    }
    gro.finish(big);
    for f in gro.frames() {
        let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
        if vnet_of(&f.meta).encode(&mut hdr).is_err() {
            IoCounters::add(&sh.io.offload_errors, 1);
            continue;
        }
        let mut iov = [IoSlice::new(&[]); 2 + MAX_SEGMENTS];
        iov[0] = IoSlice::new(&hdr);
        iov[1] = IoSlice::new(&big[f.head.clone()]);
        let mut n = 2;
        for (slot, &(s, l)) in iov[2..].iter_mut().zip(f.tails) {
            *slot = IoSlice::new(&big[s..s + l]);
            n += 1;
        }
        match sh.tun.send_vectored(&iov[..n]) {
            Ok(_) if n > 2 => IoCounters::add(&sh.io.tun_coalesced_writes, 1),
            Ok(_) => {}
            Err(e) => {
                IoCounters::add(&sh.io.tun_write_errors, 1);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
    }
    gro.clear();
}

/// The virtio-net header of a frame.
fn vnet_of(m: &FrameMeta) -> VirtioNetHdr {
    let (gso_type, gso_size) = match m.gso {
        Gso::None => (0, 0),
        Gso::Tcp { mss } if m.v6 => (tun_rs::VIRTIO_NET_HDR_GSO_TCPV6, mss),
        Gso::Tcp { mss } => (tun_rs::VIRTIO_NET_HDR_GSO_TCPV4, mss),
        Gso::Udp { size } => (tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4, size),
    };
    let (flags, csum_start, csum_offset) = match m.csum {
        Some(at) => (VNET_F_NEEDS_CSUM, at.start, at.offset),
        None => (0, 0, 0),
    };
    VirtioNetHdr {
        flags,
        gso_type,
        hdr_len: m.hdr_len,
        gso_size,
        csum_start,
        csum_offset,
    }
}
