//! The traffic families: packets and bytes by device and direction,
//! tunnel sends, drops by reason, I/O errors, flows and lost misses.

use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{counter, counter_labelled, gauge};
use crate::shell::shared::IoReadings;
use proxytun_core::CountersSnapshot;

/// Writes the traffic families from the core's and the shell's counters.
pub(super) fn encode(
    enc: &mut DescriptorEncoder<'_>,
    c: &CountersSnapshot,
    io: &IoReadings,
) -> Result<(), std::fmt::Error> {
    // Traffic: per device (the TUN, the tunnel) and direction.
    let traffic = |tun_rx, tun_tx, tunnel_rx, tunnel_tx| {
        [
            (dev("tun", "rx"), tun_rx),
            (dev("tun", "tx"), tun_tx),
            (dev("tunnel", "rx"), tunnel_rx),
            (dev("tunnel", "tx"), tunnel_tx),
        ]
    };
    counter_labelled(
        enc,
        "proxytun_packets",
        "Packets by device and direction: tun rx read from the TUN, tun tx written to it, tunnel rx datagrams from peers (keepalives included), tunnel tx packets forwarded to peers (before segmenting)",
        &traffic(c.tun_rx, c.tun_tx_tun, c.tunnel_rx, c.tun_tx_peer),
    )?;
    counter_labelled(
        enc,
        "proxytun_bytes",
        "Bytes by device and direction: IP packet bytes for tun rx, tun tx and tunnel tx; datagram bytes with the tunnel header for tunnel rx",
        &traffic(
            c.tun_rx_bytes,
            c.tun_tx_tun_bytes,
            c.tunnel_rx_bytes,
            c.tun_tx_peer_bytes,
        ),
    )?;
    counter(
        enc,
        "proxytun_tunnel_datagrams_sent",
        "Data datagrams the socket accepted for peers, after segmenting super-packets (keepalives not included)",
        io.tunnel_tx,
    )?;
    counter(
        enc,
        "proxytun_tunnel_gso_sends",
        "Send system calls that carried more than one datagram (UDP GSO)",
        io.gso_sends,
    )?;
    counter(
        enc,
        "proxytun_tun_coalesced_writes",
        "TUN writes that carried several received packets coalesced into one super-packet",
        io.tun_coalesced_writes,
    )?;

    let drops: Vec<_> = c
        .drops
        .iter()
        .map(|(reason, n)| (vec![("reason", (*reason).to_owned())], *n))
        .collect();
    counter_labelled(
        enc,
        "proxytun_drops",
        "Packets the dataplane dropped, by reason (every reason listed, zero included)",
        &drops,
    )?;
    let io_errors = [
        ("tun_read", io.tun_read_errors),
        ("tun_write", io.tun_write_errors),
        ("tunnel_send", io.send_errors),
        ("tunnel_recv", io.recv_errors),
        ("offload", io.offload_errors),
    ]
    .map(|(op, n)| (vec![("op", op.to_owned())], n));
    counter_labelled(
        enc,
        "proxytun_io_errors",
        "Failed system calls of the dataplane threads, by operation",
        &io_errors,
    )?;

    counter(
        enc,
        "proxytun_fragments_forwarded",
        "IP fragments forwarded by the translation of their datagram's first fragment",
        c.fragments_forwarded,
    )?;
    counter(
        enc,
        "proxytun_icmp_too_big_sent",
        "ICMP fragmentation-needed / packet-too-big errors sent back to containers (one per too_big drop)",
        c.icmp_too_big_tx,
    )?;
    counter(
        enc,
        "proxytun_tun_not_for_us",
        "TUN packets to multicast or link-local addresses (MLD, router solicitations): ignored, not drops",
        c.tun_not_for_us,
    )?;
    counter(
        enc,
        "proxytun_flows_created",
        "Flows installed (first packets of connections to a ServiceIP)",
        c.flows_created,
    )?;
    counter(
        enc,
        "proxytun_flows_cut_by_policy",
        "Flows and reply entries removed because a policy change forbade them",
        c.flows_cut_by_policy,
    )?;
    let rejects = [
        ("tcp_rst", c.policy_rejects_tcp_rst),
        ("icmp", c.policy_rejects_icmp),
    ]
    .map(|(answer, n)| (vec![("answer", answer.to_owned())], n));
    counter_labelled(
        enc,
        "proxytun_policy_rejects",
        "Answers written back to containers for packets the isolation policy refused (each also a policy_denied drop): tcp_rst for TCP segments, icmp (administratively prohibited) for UDP and echo requests",
        &rejects,
    )?;
    let handshakes = [
        ("start_sent", c.handshakes_sent),
        ("start_answered", c.handshakes_answered),
        ("completed", c.handshakes_completed),
    ]
    .map(|(event, n)| (vec![("event", event.to_owned())], n));
    counter_labelled(
        enc,
        "proxytun_handshakes",
        "Per-node keys: handshake starts sent, starts of peers answered, and sessions set up",
        &handshakes,
    )?;
    counter(
        enc,
        "proxytun_sessions_cut",
        "Per-node keys: peers whose tunnel sessions were cut because their key left the membership or changed",
        c.sessions_cut,
    )?;
    gauge(
        enc,
        "proxytun_flows_active",
        "Flows in the flow table",
        io.flows_active,
    )?;
    gauge(
        enc,
        "proxytun_reply_cache_entries",
        "Entries of the reply-address cache (clients on other nodes served here)",
        io.replies_active,
    )?;
    counter(
        enc,
        "proxytun_misses_lost",
        "First packets to unknown ServiceIPs the cluster sync could not be told of (its queue was full)",
        io.misses_lost,
    )?;
    Ok(())
}

/// The labels of a traffic sample.
fn dev(device: &str, direction: &str) -> Vec<(&'static str, String)> {
    vec![
        ("device", device.to_owned()),
        ("direction", direction.to_owned()),
    ]
}
