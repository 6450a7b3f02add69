//! Part of target `parse`: the answer to a refused packet
//! ([`crate::reject::answer`]) on the same bytes.

use super::assert_checksums;
use crate::packet::{self, IcmpKind, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::reject::{self, Answer};

/// Room after the packet, as the shell leaves it.
const ROOM: usize = 64;

/// [`reject::answer`] never panics and, given room, answers exactly the
/// packets it should: a TCP segment without RST gets a RST (addresses and
/// ports swapped, sequence and acknowledgement numbers by RFC 9293), UDP
/// and an echo request get an ICMP "administratively prohibited" error
/// from the destination to the source quoting the packet's first bytes;
/// every checksum of the answer verifies by full recomputation. Without
/// an answer the buffer is untouched.
pub(super) fn check_answer(data: &[u8]) {
    let mut buf = data.to_vec();
    buf.resize(data.len() + ROOM, 0);
    let before = buf.clone();
    let got = reject::answer(&mut buf, data.len());
    let Ok(info) = packet::parse(data) else {
        assert!(got.is_none(), "an unparsable packet was answered");
        return;
    };
    let Some((kind, n)) = got else {
        assert_eq!(buf, before, "no answer, yet the buffer changed");
        let unanswered = match info.l4 {
            L4::Tcp { flags } => flags & TCP_RST != 0,
            L4::Udp { .. } => false,
            L4::Icmp { kind } => kind != IcmpKind::EchoRequest,
        };
        // A sender that cannot be answered (multicast, unspecified).
        let odd_sender = info.src.is_multicast()
            || info.src.is_unspecified()
            || info.src == std::net::Ipv4Addr::BROADCAST;
        assert!(unanswered || odd_sender, "{info:?} got no answer");
        return;
    };
    assert!(n <= buf.len(), "answer longer than the buffer");
    let out = &buf[..n];
    let ans = match packet::parse(out) {
        Ok(a) => a,
        Err(e) => panic!("the answer to {info:?} does not parse: {e:?}"),
    };
    assert_eq!(
        (ans.src, ans.dst),
        (info.dst, info.src),
        "addresses swapped"
    );
    assert_checksums(out, &ans, "answer");
    let l4 = info.l4_offset;
    match (kind, info.l4, ans.l4) {
        (Answer::TcpRst, L4::Tcp { flags }, L4::Tcp { flags: rst }) => {
            assert_eq!((ans.sport, ans.dport), (info.dport, info.sport));
            let be32 =
                |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let (seq, ack) = (be32(data, l4 + 4), be32(data, l4 + 8));
            let a = ans.l4_offset;
            let (rseq, rack) = (be32(out, a + 4), be32(out, a + 8));
            if flags & TCP_ACK != 0 {
                assert_eq!((rst, rseq), (TCP_RST, ack), "RST for a segment with ACK");
            } else {
                let doff = usize::from(data[l4 + 12] >> 4) * 4;
                let len = (info.len - l4 - doff) as u32
                    + u32::from(flags & TCP_SYN != 0)
                    + u32::from(flags & TCP_FIN != 0);
                assert_eq!(
                    (rst, rseq, rack),
                    (TCP_RST | TCP_ACK, 0, seq.wrapping_add(len)),
                    "RST for a segment without ACK"
                );
            }
            assert_eq!(ans.len, ans.l4_offset + packet::TCP_HEADER_MIN);
        }
        (Answer::Icmp, L4::Udp { .. } | L4::Icmp { .. }, L4::Icmp { .. }) => {
            let a = ans.l4_offset;
            let want = if info.src.is_ipv4() { [3, 13] } else { [1, 1] };
            assert_eq!(out[a..a + 2], want, "type and code");
            let quote = &out[a + 8..];
            assert_eq!(quote, &data[..quote.len()], "the quote is the packet");
            // All of it, up to the RFC limits (576 / 1280 bytes in all).
            let max = if info.src.is_ipv4() {
                576 - 28
            } else {
                1280 - 48
            };
            assert_eq!(quote.len(), info.len.min(max), "the quote is whole");
        }
        other => panic!("{info:?} answered with {other:?}"),
    }
}
