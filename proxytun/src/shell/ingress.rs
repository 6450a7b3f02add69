//! The ingress thread: tunnel socket → core → TUN.
//!
//! The core verifies (and in encrypt mode decrypts) every datagram in place
//! before anything else; only the inner packets it accepted, without their
//! tags, reach the TUN.
//!
//! One `recvmmsg` brings up to [`MSGS`] messages; with `UDP_GRO` each may
//! hold up to 64 datagrams of one stride, coalesced by the kernel. The core
//! checks and rewrites every datagram in place under one lock per batch.
//! The accepted inner packets are then written to the TUN: with offloads
//! they are copied behind a virtio-net header and handed to tun-rs's GRO,
//! which coalesces the segments of a TCP (or UDP) flow back into one
//! super-packet and one write; without, each is written in place.
//!
//! Keepalive pings from peers come back from the core as pongs written in
//! place ([`NetVerdict::Reply`]); they are sent back to their senders once
//! the lock is released.
//!
//! Buffers are allocated once when the thread starts.

use std::io::{ErrorKind, IoSliceMut};
use std::net::SocketAddr;
use std::time::Instant;

use quinn_udp::RecvMeta;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::shared::{IoCounters, Shared, MAX_SLEEP};
use proxytun_core::tunnel::HEADER_LEN;
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

/// Room in a TUN write buffer: a coalesced super-packet, and the
/// virtio-net header twice over, as tun-rs's GRO asks.
const OUT_BUF: usize = 2 * VIRTIO_NET_HDR_LEN + 65536;

/// Runs until a stop is asked for.
pub(super) fn run(sh: &Shared) {
    let mut big = vec![0u8; MSGS * MSG_BUF];
    let mut meta = [RecvMeta::default(); MSGS];
    // (start, len) of each inner packet the core accepted, in `big`.
    let mut accepted: Vec<(usize, usize)> = Vec::with_capacity(MAX_DGRAMS);
    let mut out: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| Vec::with_capacity(OUT_BUF))
        .collect();
    let mut gro = GROTable::default();
    // (to, start, len) of each pong the core wrote in place, in `big`.
    let mut pongs: Vec<(SocketAddr, usize, usize)> = Vec::with_capacity(MAX_PONGS);
    loop {
        if !sh.wait(sh.socket.as_fd(), MAX_SLEEP) {
            return;
        }
        let n = {
            let mut chunks = big.chunks_mut(MSG_BUF);
            let mut slices: [IoSliceMut<'_>; MSGS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match sh.socket.recv(&mut slices, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here (e.g. a
                    // peer that is down); count them and go on.
                    IoCounters::add(&sh.io.recv_errors, 1);
                    tracing::debug!(error = %e, "tunnel receive failed");
                    continue;
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
                            accepted.push((base + at + HEADER_LEN, inner));
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
        for &(to, start, len) in &pongs {
            match sh.socket.send(to, &big[start..start + len], None) {
                Ok(()) => IoCounters::add(&sh.io.keepalive_tx, 1),
                Err(e) => {
                    IoCounters::add(&sh.io.send_errors, 1);
                    tracing::debug!(error = %e, %to, "keepalive pong not sent");
                }
            }
        }
        if sh.offload.vnet {
            write_coalesced(sh, &big, &accepted, &mut out, &mut gro);
        } else {
            for &(start, len) in &accepted {
                if let Err(e) = sh.tun.send(&big[start..start + len]) {
                    IoCounters::add(&sh.io.tun_write_errors, 1);
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
        }
    }
}

/// Writes the accepted packets through tun-rs's GRO, [`IDEAL_BATCH_SIZE`]
/// at a time: segments of one flow become one super-packet and one write.
fn write_coalesced(
    sh: &Shared,
    big: &[u8],
    accepted: &[(usize, usize)],
    out: &mut [Vec<u8>],
    gro: &mut GROTable,
) {
    for batch in accepted.chunks(out.len()) {
        for (buf, &(start, len)) in out.iter_mut().zip(batch) {
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(&big[start..start + len]);
        }
        if let Err(e) = sh
            .tun
            .send_multiple(gro, &mut out[..batch.len()], VIRTIO_NET_HDR_LEN)
        {
            IoCounters::add(&sh.io.tun_write_errors, 1);
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}
