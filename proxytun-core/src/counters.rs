//! Dataplane counters shared with the API thread, and the drop reasons.
//!
//! The packet thread increments relaxed atomics; readers take a
//! [`CountersSnapshot`]. Every dropped packet increments exactly one
//! [`DropReason`], whose [`DropReason::name`] is a stable metric label.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why the dataplane dropped a packet; one counter each.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter-index order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// How many reasons exist (the size of the counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used as a metric label.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Tunnel datagram shorter than the tunnel header.
    TunnelTooShort => "tunnel_too_short",
    /// Tunnel header without the `PT` magic.
    BadMagic => "bad_magic",
    /// Tunnel header of a version this node does not speak.
    BadVersion => "bad_version",
    /// Tunnel message type unknown to this version.
    UnknownType => "unknown_type",
    /// Tunnel datagram from an address that is not a member node.
    NotMember => "not_member",
    /// Tunnel datagram of a member whose tag did not verify (forged or corrupted).
    AuthFailed => "auth_failed",
    /// Tunnel datagram whose (session, counter) was seen already or is below the window.
    Replay => "replay",
    /// Tunnel datagram protected otherwise (plain/auth/encrypt) than this node's mode.
    ProtectionMismatch => "protection_mismatch",
    /// Packet failed length or field validation.
    Malformed => "malformed",
    /// ICMP error quoting a non-first fragment: it carries no ports to find a flow by.
    Fragment => "fragment",
    /// Later fragment whose first fragment did not come before it (or too long ago).
    FragmentNoFirst => "fragment_no_first",
    /// IPv6 fragment overlapping one already forwarded, or of a datagram that had one (RFC 5722).
    FragmentOverlap => "fragment_overlap",
    /// First fragment of a new datagram while the fragment table had no free slot for it.
    FragmentTableFull => "fragment_table_full",
    /// Packet larger than the tunnel to its peer carries; an ICMP "fragmentation needed" or "packet too big" went back instead.
    TooBig => "too_big",
    /// IPv6 extension header the dataplane does not walk (AH, ESP, mobility, a routing header with segments left).
    Ipv6ExtHeader => "ipv6_ext_header",
    /// Transport other than TCP, UDP, ICMP.
    UnsupportedProtocol => "unsupported_protocol",
    /// ICMP message other than echo request/reply.
    IcmpUnsupported => "icmp_unsupported",
    /// ICMP error whose quoted packet belongs to no flow or reply entry.
    IcmpErrorNoFlow => "icmp_error_no_flow",
    /// Tunnel packet to a local instance whose source is not in the ServiceIP range.
    InnerSrcNotService => "inner_src_not_service",
    /// Tunnel packet whose destination is no local instance.
    InnerDstNotLocal => "inner_dst_not_local",
    /// Tunnel packet to a local client's instance IP without a flow.
    ReplyNoFlow => "reply_no_flow",
    /// Tunnel reply for a flow that does not go to the sending node.
    ReplyWrongPeer => "reply_wrong_peer",
    /// TUN packet to an address that is not a ServiceIP or instance IP.
    NoService => "no_service",
    /// TUN packet whose source is not a local instance's namespace address.
    SourceNotInstance => "source_not_instance",
    /// Packet that may not start a flow (TCP without SYN, echo reply) and has none.
    NoFlow => "no_flow",
    /// Service without instances.
    NoInstance => "no_instance",
    /// Flow table at its configured maximum.
    FlowTableFull => "flow_table_full",
    /// Reply cache at its configured maximum.
    ReplyTableFull => "reply_table_full",
    /// Keepalive of the wrong length, an unknown kind or non-zero reserved bytes.
    KeepaliveMalformed => "keepalive_malformed",
    /// Pong whose echoed send time is in the future or too old to be a fair sample.
    KeepaliveBadTime => "keepalive_bad_time",
    /// Pong that answers no ping of ours (unknown peer endpoint or a sequence never sent).
    KeepaliveUnexpected => "keepalive_unexpected",
    /// New flow or reply entry the isolation policy forbids (client or receiving node); from the TUN, answered with a TCP RST or ICMP error where one applies.
    PolicyDenied => "policy_denied",
    /// Per-node keys: tunnel datagram of a session this node holds no key for (before a handshake, or recorded before a restart).
    NoSession => "no_session",
    /// Per-node keys: handshake message that did not verify, or an answer to no handshake of ours.
    HandshakeFailed => "handshake_failed",
    /// Per-node keys: handshake start not newer than the last one accepted from that peer (a replay).
    HandshakeReplay => "handshake_replay",
    /// Per-node keys: handshake from a member under another static key than the membership lists, or from a member with no key listed.
    UnknownKey => "unknown_key",
    /// External client (docs/join.md): data packet whose source is not the client's own address.
    ClientSpoofed => "client_spoofed",
    /// External client: data packet to neither a ServiceIP nor the gateway's resolver (port 53).
    ClientNotAllowed => "client_not_allowed",
    /// External client: packet towards a client's address that answers no flow the client opened.
    ClientUnsolicited => "client_unsolicited",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packet counters, written by the packet thread, read by the API.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from the TUN.
    pub tun_rx: AtomicU64,
    /// Packets handed back to the TUN (from either input).
    pub tun_tx_tun: AtomicU64,
    /// Packets sent to peer nodes.
    pub tun_tx_peer: AtomicU64,
    /// Datagrams received from the tunnel.
    pub tunnel_rx: AtomicU64,
    /// Bytes of the IP packets read from the TUN (a super-packet counts whole).
    pub tun_rx_bytes: AtomicU64,
    /// Bytes of the IP packets handed back to the TUN (from either input).
    pub tun_tx_tun_bytes: AtomicU64,
    /// Bytes of the IP packets sent to peer nodes, before the tunnel header.
    pub tun_tx_peer_bytes: AtomicU64,
    /// Bytes of the datagrams received from the tunnel, tunnel header included.
    pub tunnel_rx_bytes: AtomicU64,
    /// Flows installed.
    pub flows_created: AtomicU64,
    /// Flows and reply entries removed because a new policy forbids them.
    pub flows_cut_by_policy: AtomicU64,
    /// Keepalive pings written for peers.
    pub keepalive_pings_tx: AtomicU64,
    /// Keepalive pings from members, each answered with a pong.
    pub keepalive_pings_rx: AtomicU64,
    /// Keepalive pongs accepted as RTT samples.
    pub keepalive_pongs_rx: AtomicU64,
    /// TUN packets to multicast or link-local addresses (MLD reports, router and neighbour solicitations the kernel sends on any interface): ignored, not dropped.
    pub tun_not_for_us: AtomicU64,
    /// ICMP "fragmentation needed" / "packet too big" errors written back to the TUN (one per `too_big` drop).
    pub icmp_too_big_tx: AtomicU64,
    /// Fragments forwarded, first and later ones (counted in the packet counters too).
    pub fragments_forwarded: AtomicU64,
    /// Per-node keys: handshake starts sent (first tries, retries and re-keys).
    pub handshakes_sent: AtomicU64,
    /// Per-node keys: handshake starts of peers answered.
    pub handshakes_answered: AtomicU64,
    /// Per-node keys: sessions set up (an answer received, or an answered handshake confirmed).
    pub handshakes_completed: AtomicU64,
    /// Per-node keys: peers whose sessions were cut because their key left the membership or changed.
    pub sessions_cut: AtomicU64,
    /// TCP RSTs written back to the TUN in answer to segments the isolation policy refused (each also a `policy_denied` drop).
    pub policy_rejects_tcp_rst: AtomicU64,
    /// ICMP "administratively prohibited" errors written back to the TUN in answer to UDP datagrams and echo requests the isolation policy refused (each also a `policy_denied` drop).
    pub policy_rejects_icmp: AtomicU64,
    drops: Drops,
}

/// One counter per [`DropReason`] (more than the 32 elements `Default`
/// covers for arrays).
#[derive(Debug)]
struct Drops([AtomicU64; DropReason::COUNT]);

impl Default for Drops {
    fn default() -> Self {
        Drops(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    /// Counts a dropped packet.
    pub fn count_drop(&self, reason: DropReason) {
        self.drops.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current count for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.0[reason as usize].load(Ordering::Relaxed)
    }

    /// Plain numbers for the API and metrics.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            tun_rx: get(&self.tun_rx),
            tun_tx_tun: get(&self.tun_tx_tun),
            tun_tx_peer: get(&self.tun_tx_peer),
            tunnel_rx: get(&self.tunnel_rx),
            tun_rx_bytes: get(&self.tun_rx_bytes),
            tun_tx_tun_bytes: get(&self.tun_tx_tun_bytes),
            tun_tx_peer_bytes: get(&self.tun_tx_peer_bytes),
            tunnel_rx_bytes: get(&self.tunnel_rx_bytes),
            flows_created: get(&self.flows_created),
            flows_cut_by_policy: get(&self.flows_cut_by_policy),
            keepalive_pings_tx: get(&self.keepalive_pings_tx),
            keepalive_pings_rx: get(&self.keepalive_pings_rx),
            keepalive_pongs_rx: get(&self.keepalive_pongs_rx),
            tun_not_for_us: get(&self.tun_not_for_us),
            icmp_too_big_tx: get(&self.icmp_too_big_tx),
            fragments_forwarded: get(&self.fragments_forwarded),
            handshakes_sent: get(&self.handshakes_sent),
            handshakes_answered: get(&self.handshakes_answered),
            handshakes_completed: get(&self.handshakes_completed),
            sessions_cut: get(&self.sessions_cut),
            policy_rejects_tcp_rst: get(&self.policy_rejects_tcp_rst),
            policy_rejects_icmp: get(&self.policy_rejects_icmp),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name(), self.dropped(*r)))
                .collect(),
        }
    }
}

/// Increments a counter by one (relaxed: counters order nothing).
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds a length to a byte counter (relaxed, like [`inc`]).
pub(crate) fn add_len(c: &AtomicU64, len: usize) {
    c.fetch_add(len as u64, Ordering::Relaxed);
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// Packets read from the TUN.
    pub tun_rx: u64,
    /// Packets handed back to the TUN.
    pub tun_tx_tun: u64,
    /// Packets sent to peer nodes.
    pub tun_tx_peer: u64,
    /// Datagrams received from the tunnel.
    pub tunnel_rx: u64,
    /// Bytes read from the TUN.
    pub tun_rx_bytes: u64,
    /// Bytes handed back to the TUN.
    pub tun_tx_tun_bytes: u64,
    /// Bytes of IP packets sent to peer nodes (tunnel header not included).
    pub tun_tx_peer_bytes: u64,
    /// Bytes of tunnel datagrams received (tunnel header included).
    pub tunnel_rx_bytes: u64,
    /// Flows installed.
    pub flows_created: u64,
    /// Flows and reply entries removed because a new policy forbids them.
    pub flows_cut_by_policy: u64,
    /// Keepalive pings written for peers.
    pub keepalive_pings_tx: u64,
    /// Keepalive pings answered (one pong each).
    pub keepalive_pings_rx: u64,
    /// Keepalive pongs accepted as RTT samples.
    pub keepalive_pongs_rx: u64,
    /// TUN packets to multicast or link-local addresses, ignored.
    pub tun_not_for_us: u64,
    /// ICMP too-big errors written back to the TUN.
    pub icmp_too_big_tx: u64,
    /// Fragments forwarded.
    pub fragments_forwarded: u64,
    /// Handshake starts sent.
    pub handshakes_sent: u64,
    /// Handshake starts answered.
    pub handshakes_answered: u64,
    /// Sessions set up by handshakes.
    pub handshakes_completed: u64,
    /// Peers whose sessions were cut by a membership key change.
    pub sessions_cut: u64,
    /// TCP RSTs answering packets the isolation policy refused.
    pub policy_rejects_tcp_rst: u64,
    /// ICMP "administratively prohibited" errors answering packets the isolation policy refused.
    pub policy_rejects_icmp: u64,
    /// Drops by reason name (every reason present, zero included).
    pub drops: BTreeMap<&'static str, u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(seen.insert(r.name()));
            assert!(r
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        let c = Counters::default();
        c.count_drop(DropReason::Fragment);
        let s = c.snapshot();
        assert_eq!(s.drops["fragment"], 1);
        assert_eq!(s.drops.len(), DropReason::COUNT);
    }
}
