//! Per-node keys inside the dataplane: handshake messages from the
//! tunnel, starts and confirmations on the keepalive schedule, and the
//! membership's keys followed at every table swap.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Dataplane, NetVerdict};
use crate::counters::{inc, DropReason};
use crate::handshake::{Handshaker, NodeKey};
use crate::tunnel::{Header, MsgType};

impl Dataplane {
    /// Switches this dataplane to per-node keys: `handshaker` sets up the
    /// sessions of the sealer (which must be [`crate::seal::Sealer::node_keys`]).
    pub fn with_handshaker(mut self, handshaker: Handshaker) -> Self {
        self.handshaker = Some(handshaker);
        self.follow_members();
        self
    }

    /// This node's public key, with per-node keys.
    pub fn public_key(&self) -> Option<crate::handshake::PublicKey> {
        self.handshaker.as_ref().map(Handshaker::public)
    }

    /// Replaces this node's static key (rotation); see [`Handshaker::set_key`].
    pub fn set_node_key(&mut self, key: NodeKey) {
        if let Some(h) = &mut self.handshaker {
            h.set_key(key);
        }
    }

    /// Per-node keys: the table's membership keys reach the handshaker.
    pub(super) fn follow_members(&mut self) {
        if let Some(h) = &mut self.handshaker {
            let members = self.table.peer_members();
            h.set_members(&members, &self.sealer, &mut self.opener, &self.counters);
        }
    }

    /// A handshake message from member `from`.
    pub(super) fn handshake_input(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        h: &Header,
        now: Instant,
    ) -> Result<NetVerdict, DropReason> {
        let Some(hs) = &mut self.handshaker else {
            tracing::debug!(peer = %from, "handshake from a peer with per-node keys; this node uses the cluster key");
            return Err(DropReason::ProtectionMismatch);
        };
        if h.protection != self.opener.protection() {
            return Err(DropReason::ProtectionMismatch);
        }
        match h.msg {
            MsgType::HandshakeInit => {
                let len = hs.on_start(from, dgram, now, &mut self.opener)?;
                inc(&self.counters.handshakes_answered);
                Ok(NetVerdict::Reply(len))
            }
            _ => {
                hs.on_answer(from, dgram, now, &self.sealer, &mut self.opener)?;
                inc(&self.counters.handshakes_completed);
                Ok(NetVerdict::Done)
            }
        }
    }

    /// After a datagram opened: if it was the first of an answered
    /// handshake, our half of that session may now be used.
    pub(super) fn confirm_session(&mut self, from: IpAddr) {
        let Some((ip, session)) = self.opener.take_confirmed() else {
            return;
        };
        debug_assert_eq!(ip, from);
        if let Some(h) = &mut self.handshaker {
            if h.confirm(ip, session, &self.sealer) {
                inc(&self.counters.handshakes_completed);
            }
        }
    }

    /// The next handshake datagram due (a confirming ping first, then a
    /// start), if any: `(peer endpoint, length)`.
    pub(super) fn poll_handshake(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let h = self.handshaker.as_mut()?;
        if let Some(ep) = h.take_confirm() {
            self.peers.ping_now(ep);
        }
        h.poll(now, buf, &self.sealer, &mut self.opener, &self.counters)
    }

    /// True when a packet to peer `to` can be sealed now; with per-node
    /// keys it cannot before a handshake (the keepalive schedule starts one).
    pub(super) fn can_send(&self, to: IpAddr) -> bool {
        self.sealer.can_send(to)
    }
}
