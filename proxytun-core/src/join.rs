//! The joining side of an external client (`proxytun join`,
//! docs/join.md), sans-IO: what may leave the client's TUN for its gateway,
//! and what from the gateway may reach the TUN.
//!
//! Two halves, so the shell's two threads share nothing but the sealer
//! (lock-free): [`JoinTx`] (TUN to gateway, `&self`) and [`JoinRx`]
//! (gateway to TUN, keepalives). Neither allocates per packet.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::clients::DNS_PORT;
use crate::counters::DropReason;
use crate::keepalive::{self, Keepalive, Kind, KEEPALIVE_LEN};
use crate::packet::{self, L4};
use crate::seal::{Opener, Sealer};
use crate::tunnel::{self, MsgType, HEADER_LEN};

/// What the client is: its address, its gateway, what it may reach.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// The client's one address (its TUN's, given by the gateway).
    pub addr: IpAddr,
    /// The gateway's tunnel endpoint.
    pub gateway: SocketAddr,
    /// The cluster's ServiceIP range (IPv4).
    pub services4: Ipv4Net,
    /// The cluster's ServiceIP range (IPv6).
    pub services6: Ipv6Net,
    /// The gateway's resolver address (port 53 only).
    pub resolver: IpAddr,
    /// How often to ping the gateway.
    pub keepalive: Duration,
}

impl JoinSettings {
    fn allowed(&self, dst: IpAddr, pkt: &[u8]) -> bool {
        match dst {
            IpAddr::V4(a) if self.services4.contains(&a) => return dst != self.addr,
            IpAddr::V6(a) if self.services6.contains(&a) => return dst != self.addr,
            _ => {}
        }
        dst == self.resolver
            && packet::parse(pkt).is_ok_and(|i| {
                matches!(i.l4, L4::Tcp { .. } | L4::Udp { .. }) && i.dport == DNS_PORT
            })
    }
}

/// The client's counters (atomics: read by the shell's status line).
#[derive(Debug, Default)]
pub struct JoinCounters {
    /// Packets sent to the gateway.
    pub sent: AtomicU64,
    /// Packets written to the TUN.
    pub received: AtomicU64,
    /// Packets or datagrams dropped (any reason).
    pub dropped: AtomicU64,
    /// Keepalive pongs from the gateway.
    pub pongs: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What to do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinVerdict {
    /// Send `buf[..n]` (a sealed datagram) to the gateway.
    Send(usize),
    /// Write `buf[HEADER_LEN..HEADER_LEN + n]` to the TUN.
    Tun(usize),
    /// Nothing to do (a pong, a datagram consumed).
    Done,
    /// Dropped, for this reason.
    Drop(DropReason),
}

/// TUN to gateway: checks and seals a packet the client's TUN gave.
#[derive(Debug)]
pub struct JoinTx {
    settings: Arc<JoinSettings>,
    sealer: Arc<Sealer>,
    counters: Arc<JoinCounters>,
}

impl JoinTx {
    /// The sending half, sealing with `sealer` (the cluster key's).
    pub fn new(
        settings: Arc<JoinSettings>,
        sealer: Arc<Sealer>,
        counters: Arc<JoinCounters>,
    ) -> Self {
        JoinTx {
            settings,
            sealer,
            counters,
        }
    }

    /// The packet at `buf[HEADER_LEN..HEADER_LEN + len]` (room for the
    /// tag after it): sealed in place as [`JoinVerdict::Send`] when its
    /// source is the client's address and its destination a ServiceIP or
    /// the resolver's port 53; anything else is dropped.
    pub fn handle_tun(&self, buf: &mut [u8], len: usize) -> JoinVerdict {
        let verdict = self.check_and_seal(buf, len);
        match verdict {
            JoinVerdict::Send(_) => inc(&self.counters.sent),
            _ => inc(&self.counters.dropped),
        }
        verdict
    }

    fn check_and_seal(&self, buf: &mut [u8], len: usize) -> JoinVerdict {
        let Some(pkt) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return JoinVerdict::Drop(DropReason::Malformed);
        };
        let Some((src, dst)) = crate::frag::addresses(pkt) else {
            return JoinVerdict::Drop(DropReason::Malformed);
        };
        if src != self.settings.addr {
            return JoinVerdict::Drop(DropReason::ClientSpoofed);
        }
        if !self.settings.allowed(dst, pkt) {
            return JoinVerdict::Drop(DropReason::ClientNotAllowed);
        }
        match self
            .sealer
            .seal_for(self.settings.gateway.ip(), buf, MsgType::Data, len, false)
        {
            Ok(n) => JoinVerdict::Send(n),
            Err(_) => JoinVerdict::Drop(DropReason::NoSession),
        }
    }
}

/// Gateway to TUN, and the keepalives that keep the gateway's view live.
#[derive(Debug)]
pub struct JoinRx {
    settings: Arc<JoinSettings>,
    sealer: Arc<Sealer>,
    opener: Opener,
    counters: Arc<JoinCounters>,
    epoch: Instant,
    seq: u32,
    next_ping: Option<Instant>,
    last_pong: Option<Instant>,
    /// Per-node keys: the handshakes with the gateway (`None`: cluster key).
    handshaker: Option<crate::handshake::Handshaker>,
    /// What the handshaker counts (its own, not shown).
    hs_counters: crate::counters::Counters,
}

impl JoinRx {
    /// The receiving half; `epoch` is the time keepalives count from.
    pub fn new(
        settings: Arc<JoinSettings>,
        sealer: Arc<Sealer>,
        counters: Arc<JoinCounters>,
        epoch: Instant,
    ) -> Self {
        let opener = sealer.opener();
        JoinRx {
            settings,
            sealer,
            opener,
            counters,
            epoch,
            seq: 0,
            next_ping: Some(epoch),
            last_pong: None,
            handshaker: None,
            hs_counters: crate::counters::Counters::default(),
        }
    }

    /// Per-node keys: sessions come from handshakes with the gateway,
    /// whose static key must be `gateway_key` (`sealer` must be
    /// [`Sealer::node_keys`]).
    pub fn with_handshaker(
        mut self,
        mut handshaker: crate::handshake::Handshaker,
        gateway_key: crate::handshake::PublicKey,
    ) -> Self {
        let gw = self.settings.gateway;
        let members = [(gw.ip(), gw, Some(gateway_key))];
        handshaker.set_members(&members, &self.sealer, &mut self.opener, &self.hs_counters);
        self.handshaker = Some(handshaker);
        self
    }

    /// When the last pong arrived (`None`: the gateway never answered).
    pub fn last_pong(&self) -> Option<Instant> {
        self.last_pong
    }

    /// When [`JoinRx::poll_keepalive`] should next be called.
    pub fn next_keepalive(&self) -> Option<Instant> {
        self.next_ping
    }

    /// The next control datagram for the gateway in `buf[..n]` (a handshake
    /// start or a sealed ping; [`crate::keepalive::CONTROL_MAX`] bytes fit).
    pub fn poll_keepalive(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if let Some(h) = &mut self.handshaker {
            // A completed start is confirmed by a ping at once.
            if h.take_confirm().is_some() {
                self.next_ping = Some(now);
            }
            let (sealer, opener, counters) = (&self.sealer, &mut self.opener, &self.hs_counters);
            if let Some((_, len)) = h.poll(now, buf, sealer, opener, counters) {
                return Some(len);
            }
        }
        if self.next_ping.is_some_and(|t| t > now) || self.settings.keepalive.is_zero() {
            return None;
        }
        self.next_ping = now.checked_add(self.settings.keepalive);
        self.seq = self.seq.wrapping_add(1);
        let sent_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let ka = Keepalive {
            kind: Kind::Ping,
            seq: self.seq,
            sent_ns,
        };
        let len = keepalive::write(buf, &ka)?;
        let gw = self.settings.gateway.ip();
        self.sealer
            .seal_for(gw, buf, MsgType::Keepalive, len - HEADER_LEN, false)
            .ok()
    }

    /// A datagram from `from`: only the gateway's, opened under the key;
    /// data only to the client's address ([`JoinVerdict::Tun`], a partial
    /// checksum finished), a ping answered ([`JoinVerdict::Send`]), a pong
    /// noted.
    pub fn handle_tunnel(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        now: Instant,
    ) -> JoinVerdict {
        let v = self.open_and_check(from, dgram, now);
        match v {
            JoinVerdict::Tun(_) => inc(&self.counters.received),
            JoinVerdict::Drop(_) => inc(&self.counters.dropped),
            JoinVerdict::Send(_) | JoinVerdict::Done => {}
        }
        v
    }

    fn open_and_check(&mut self, from: SocketAddr, dgram: &mut [u8], now: Instant) -> JoinVerdict {
        if from.ip() != self.settings.gateway.ip() {
            return JoinVerdict::Drop(DropReason::NotMember);
        }
        let h = match tunnel::parse(dgram) {
            Ok(h) => h,
            Err(e) => return JoinVerdict::Drop(e.into()),
        };
        let n = match h.msg {
            MsgType::Data | MsgType::Keepalive => match self.opener.open(from.ip(), dgram, &h) {
                Ok(n) => n,
                Err(e) => return JoinVerdict::Drop(e.into()),
            },
            _ => return self.handshake(from, dgram, &h, now),
        };
        if let (Some(hs), Some((ip, session))) =
            (&mut self.handshaker, self.opener.take_confirmed())
        {
            hs.confirm(ip, session, &self.sealer);
        }
        if h.msg == MsgType::Keepalive {
            return self.keepalive(dgram, n, now);
        }
        let Some(pkt) = dgram.get_mut(HEADER_LEN..HEADER_LEN + n) else {
            return JoinVerdict::Drop(DropReason::TunnelTooShort);
        };
        match crate::frag::addresses(pkt) {
            Some((_, dst)) if dst == self.settings.addr => {}
            _ => return JoinVerdict::Drop(DropReason::InnerDstNotLocal),
        }
        if h.csum_partial && crate::offload::fill_checksum(pkt).is_err() {
            return JoinVerdict::Drop(DropReason::Malformed);
        }
        JoinVerdict::Tun(n)
    }

    /// A handshake message from the gateway (per-node keys only).
    fn handshake(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        h: &tunnel::Header,
        now: Instant,
    ) -> JoinVerdict {
        let Some(hs) = &mut self.handshaker else {
            return JoinVerdict::Drop(DropReason::ProtectionMismatch);
        };
        if h.protection != self.opener.protection() {
            return JoinVerdict::Drop(DropReason::ProtectionMismatch);
        }
        let r = match h.msg {
            MsgType::HandshakeInit => hs
                .on_start(from, dgram, now, &mut self.opener)
                .map(JoinVerdict::Send),
            _ => hs
                .on_answer(from, dgram, now, &self.sealer, &mut self.opener)
                .map(|()| JoinVerdict::Done),
        };
        r.unwrap_or_else(JoinVerdict::Drop)
    }

    fn keepalive(&mut self, dgram: &mut [u8], n: usize, now: Instant) -> JoinVerdict {
        let Some(msg) = dgram.get_mut(..HEADER_LEN + n) else {
            return JoinVerdict::Drop(DropReason::KeepaliveMalformed);
        };
        let Ok(ka) = keepalive::parse(msg) else {
            return JoinVerdict::Drop(DropReason::KeepaliveMalformed);
        };
        match ka.kind {
            Kind::Pong => {
                self.last_pong = Some(now);
                inc(&self.counters.pongs);
                JoinVerdict::Done
            }
            Kind::Ping => {
                if keepalive::ping_to_pong(msg) != Some(KEEPALIVE_LEN) {
                    return JoinVerdict::Drop(DropReason::KeepaliveMalformed);
                }
                let gw = self.settings.gateway.ip();
                match self.sealer.seal_for(
                    gw,
                    dgram,
                    MsgType::Keepalive,
                    KEEPALIVE_LEN - HEADER_LEN,
                    false,
                ) {
                    Ok(len) => JoinVerdict::Send(len),
                    Err(_) => JoinVerdict::Drop(DropReason::NoSession),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
