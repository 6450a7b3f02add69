//! Offload helpers: segments equal tun-rs's `gso_split` (an independent
//! implementation of the kernel's GSO) and pass etherparse's checksum
//! checks; partial checksums re-seeded after the core's rewrite finish like
//! the kernel would; hostile input never panics.

use std::net::IpAddr;

use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, TcpHeader};
use tun_rs::VirtioNetHdr;

use super::util::*;
use crate::core::offload::{
    finish_checksum, layout, plan, seed_partial_checksum, segment, CsumAt, Gso, Offload,
    OffloadError, Segments,
};
use crate::core::packet;
use crate::core::tunnel::{parse_header, write_header, MsgType, HEADER_LEN};

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

/// The shape of a test super-packet.
#[derive(Debug, Clone, Copy)]
struct Shape {
    fam: Fam,
    tcp: bool,
    /// IPv4 options (8 bytes) and TCP options (12 bytes).
    opts: bool,
    /// TCP flags byte.
    flags: u8,
    len: usize,
}

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;
const CWR: u8 = 0x80;
const ECE: u8 = 0x40;

/// Builds a packet with valid full checksums (etherparse), sequence number
/// and IPv4 id close to wrapping so the per-segment increments wrap too.
fn build_super(s: Shape) -> Vec<u8> {
    let (src, dst) = (CLI1.iip(s.fam), WEB2.ns(s.fam));
    let b = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, a.octets(), d.octets()).unwrap();
            if s.opts {
                h.options = [1u8; 8].into();
            }
            h.identification = 0xfffe;
            h.dont_fragment = true;
            PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        }
        (IpAddr::V6(a), IpAddr::V6(d)) => PacketBuilder::ipv6(a.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    let data = payload(s.len, s.len as u64 * 31 + u64::from(s.flags));
    let mut out = Vec::new();
    if s.tcp {
        let mut t = TcpHeader::new(40000, 80, u32::MAX - 3000, 64000);
        t.acknowledgment_number = 77;
        t.fin = s.flags & FIN != 0;
        t.psh = s.flags & PSH != 0;
        t.ack = s.flags & ACK != 0;
        t.cwr = s.flags & CWR != 0;
        t.ece = s.flags & ECE != 0;
        if s.opts {
            // NOP NOP timestamp: what Linux sends on every segment.
            t.set_options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                .unwrap();
        }
        b.tcp_header(t).write(&mut out, &data).unwrap();
    } else {
        b.udp(40000, 53).write(&mut out, &data).unwrap();
    }
    out
}

fn gso_of(s: Shape, size: u16) -> Gso {
    if s.tcp {
        Gso::Tcp { mss: size }
    } else {
        Gso::Udp { size }
    }
}

fn csum_at(pkt: &[u8]) -> CsumAt {
    let lay = layout(pkt).unwrap();
    let offset = match lay.proto {
        packet::IPPROTO_TCP => 16,
        packet::IPPROTO_UDP => 6,
        _ => 2,
    };
    CsumAt {
        start: lay.l4_start as u16,
        offset,
    }
}

/// The pseudo-header built byte by byte and summed by tun-rs: the seed a
/// CHECKSUM_PARTIAL packet carries, from an implementation other than ours.
fn reference_seed(pkt: &[u8]) -> u16 {
    let lay = layout(pkt).unwrap();
    let l4_len = (lay.len - lay.l4_start) as u32;
    let mut ph = Vec::new();
    if lay.v6 {
        ph.extend_from_slice(&pkt[8..40]);
        ph.extend_from_slice(&l4_len.to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, lay.proto]);
    } else if lay.proto == packet::IPPROTO_ICMP {
        return 0;
    } else {
        ph.extend_from_slice(&pkt[12..20]);
        ph.extend_from_slice(&[0, lay.proto]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    tun_rs::checksum(&ph, 0)
}

/// Puts a packet into the form the kernel hands over with `NEEDS_CSUM`.
fn make_partial(pkt: &mut [u8]) -> CsumAt {
    let at = csum_at(pkt);
    let seed = reference_seed(pkt);
    let i = usize::from(at.start + at.offset);
    pkt[i..i + 2].copy_from_slice(&seed.to_be_bytes());
    at
}

/// What the kernel's `skb_checksum_help` does with a CHECKSUM_PARTIAL
/// packet: sum from `csum_start` to the end with the seed in place, store
/// the complement (summed by tun-rs, not by us).
fn kernel_finish(pkt: &mut [u8], at: CsumAt) {
    let i = usize::from(at.start + at.offset);
    let sum = tun_rs::checksum(&pkt[usize::from(at.start)..], 0);
    pkt[i..i + 2].copy_from_slice(&(!sum).to_be_bytes());
}

fn vnet(pkt: &[u8], s: Shape, size: u16) -> VirtioNetHdr {
    let lay = layout(pkt).unwrap();
    VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: match (s.tcp, s.fam) {
            (true, Fam::V4) => GSO_TCPV4,
            (true, Fam::V6) => GSO_TCPV6,
            (false, _) => GSO_UDP_L4,
        },
        hdr_len: lay.l4_end as u16,
        gso_size: size,
        csum_start: lay.l4_start as u16,
        csum_offset: if s.tcp { 16 } else { 6 },
    }
}

/// Segments `pkt` with ours and with tun-rs and compares them byte for
/// byte; checks every segment with etherparse and the layout invariants.
fn compare_with_tun_rs(pkt: &[u8], s: Shape, size: u16) -> Segments {
    let off = Offload {
        gso: gso_of(s, size),
        csum: Some(csum_at(pkt)),
    };
    let planned = plan(pkt, &off).unwrap();
    let mut out = vec![0u8; planned.len + 7];
    let segs = segment(pkt, &off, &mut out).unwrap();
    assert_eq!(segs, planned);
    assert_eq!(out[segs.len..], [0; 7], "nothing written past len");

    let lay = layout(pkt).unwrap();
    let mut input = pkt.to_vec();
    let biggest = lay.l4_end + usize::from(size).min(lay.len - lay.l4_end);
    let mut bufs = vec![vec![0u8; biggest]; segs.count + 1];
    let mut sizes = vec![0usize; bufs.len()];
    let n = tun_rs::gso_split(
        &mut input,
        vnet(pkt, s, size),
        &mut bufs,
        &mut sizes,
        0,
        s.fam == Fam::V6,
    )
    .unwrap();
    assert_eq!(n, segs.count, "{s:?} size {size}");

    let mut header = [0u8; HEADER_LEN];
    write_header(&mut header);
    let mut joined = Vec::new();
    for i in 0..segs.count {
        let r = segs.datagram(i).unwrap();
        assert_eq!(r.start, i * segs.stride);
        let d = &out[r.clone()];
        if i + 1 < segs.count {
            assert_eq!(d.len(), segs.stride, "only the last one is shorter");
        } else {
            assert_eq!(r.end, segs.len);
            assert!(d.len() <= segs.stride);
        }
        assert_eq!(d[..HEADER_LEN], header);
        assert_eq!(parse_header(d), Ok(MsgType::Data));
        let inner = &d[HEADER_LEN..];
        assert_eq!(inner, &bufs[i][..sizes[i]], "{s:?} size {size} segment {i}");
        let seen = check(inner);
        assert_eq!((seen.src, seen.dst), (CLI1.iip(s.fam), WEB2.ns(s.fam)));
        joined.extend_from_slice(&seen.payload);
        let info = packet::parse(inner).unwrap();
        assert_eq!(info.len, inner.len());
        if s.tcp {
            let f = inner[lay.l4_start + 13];
            let last = i + 1 == segs.count;
            let first = i == 0;
            assert_eq!(
                f & (FIN | PSH),
                if last { s.flags & (FIN | PSH) } else { 0 }
            );
            assert_eq!(f & CWR, if first { s.flags & CWR } else { 0 });
            assert_eq!(f & (ACK | ECE), s.flags & (ACK | ECE));
        }
    }
    assert_eq!(joined, pkt[lay.l4_end..], "payload reassembles");
    segs
}

#[test]
fn segments_equal_tun_rs_gso_split() {
    let mut cases = 0;
    for fam in [Fam::V4, Fam::V6] {
        for tcp in [true, false] {
            for opts in [false, true] {
                if opts && !tcp && fam == Fam::V6 {
                    continue; // no options to speak of
                }
                for flags in [ACK, ACK | PSH, ACK | PSH | FIN, ACK | CWR | ECE | PSH] {
                    if !tcp && flags != ACK {
                        continue;
                    }
                    let l4_hdr = if tcp {
                        20 + if opts { 12 } else { 0 }
                    } else {
                        8
                    };
                    let ip_hdr = match fam {
                        Fam::V4 if opts => 28,
                        Fam::V4 => 20,
                        Fam::V6 => 40,
                    };
                    let max = match fam {
                        Fam::V4 => 65535 - ip_hdr - l4_hdr,
                        Fam::V6 => 65535 - l4_hdr,
                    };
                    // (payload, segment size): short last, exact last, one
                    // short segment, one exact, 64 KB, tiny segments.
                    for (len, size) in [
                        (10_000, 1448),
                        (1448 * 7, 1448),
                        (100, 1448),
                        (1448, 1448),
                        (max, 1448),
                        (max, 65535),
                        (3001, 1),
                        (5000, 1000),
                        (4001, 1232),
                    ] {
                        let s = Shape {
                            fam,
                            tcp,
                            opts,
                            flags,
                            len,
                        };
                        let mut pkt = build_super(s);
                        make_partial(&mut pkt);
                        let segs = compare_with_tun_rs(&pkt, s, size);
                        assert_eq!(segs.count, len.div_ceil(usize::from(size)));
                        assert_eq!(
                            segs.stride,
                            HEADER_LEN + ip_hdr + l4_hdr + usize::from(size)
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 100);
}

#[test]
fn segment_ignores_the_incoming_checksum_and_needs_no_csum_info() {
    let s = Shape {
        fam: Fam::V4,
        tcp: true,
        opts: false,
        flags: ACK,
        len: 5000,
    };
    let full = build_super(s);
    let mut partial = full.clone();
    let at = make_partial(&mut partial);
    let mut garbage = full.clone();
    garbage[usize::from(at.start + at.offset)] ^= 0x5a;
    let gso = gso_of(s, 1400);
    let mut want = vec![0u8; 8000];
    let n = segment(
        &partial,
        &Offload {
            gso,
            csum: Some(at),
        },
        &mut want,
    )
    .unwrap();
    for (pkt, csum) in [(&full, None), (&partial, None), (&garbage, Some(at))] {
        let mut got = vec![0u8; 8000];
        assert_eq!(segment(pkt, &Offload { gso, csum }, &mut got).unwrap(), n);
        assert_eq!(got[..n.len], want[..n.len]);
    }
}

#[test]
fn header_only_gso_packet_is_one_datagram() {
    let s = Shape {
        fam: Fam::V6,
        tcp: true,
        opts: true,
        flags: ACK | FIN,
        len: 0,
    };
    let mut pkt = build_super(s);
    let at = make_partial(&mut pkt);
    let mut out = vec![0u8; 200];
    let segs = segment(
        &pkt,
        &Offload {
            gso: gso_of(s, 1000),
            csum: Some(at),
        },
        &mut out,
    )
    .unwrap();
    assert_eq!((segs.count, segs.len), (1, HEADER_LEN + pkt.len()));
    let seen = check(&out[HEADER_LEN..segs.len]);
    assert!(seen.payload.is_empty());
    assert_eq!(
        out[HEADER_LEN + 40 + 13] & FIN,
        FIN,
        "FIN kept on the only segment"
    );
}

#[test]
fn non_gso_packet_is_one_datagram_with_finished_checksum() {
    for fam in [Fam::V4, Fam::V6] {
        for l in [L::Ack, L::Udp, L::Ping] {
            let full = build(CLI1.iip(fam), 40000, WEB2.ns(fam), 80, l, fam == Fam::V4);
            let mut partial = full.clone();
            let at = make_partial(&mut partial);
            let mut out = vec![0u8; 300];
            let off = Offload {
                gso: Gso::None,
                csum: Some(at),
            };
            let segs = segment(&partial, &off, &mut out).unwrap();
            assert_eq!(segs.count, 1);
            assert_eq!(out[..HEADER_LEN], wrap(&full)[..HEADER_LEN]);
            assert_eq!(out[HEADER_LEN..segs.len], full[..], "{fam:?} {l:?}");
            // Without csum info the packet goes out as it is.
            let segs = segment(&full, &Offload::default(), &mut out).unwrap();
            assert_eq!(out[..segs.len], wrap(&full)[..]);
        }
    }
}

/// After the core's address rewrite a re-seeded partial checksum, finished
/// the way the kernel does ([`kernel_finish`]), equals a freshly computed one.
#[test]
fn seeded_partial_checksum_finishes_like_a_fresh_one() {
    for fam in [Fam::V4, Fam::V6] {
        for opts in [false, true] {
            if opts && fam == Fam::V6 {
                continue;
            }
            for l in [L::Syn, L::Ack, L::FinAck, L::Udp, L::Ping, L::Pong] {
                let orig = build(CLI1.ns(fam), 40000, rr(WEB, fam), 80, l, opts);
                let mut pkt = orig.clone();
                let at = make_partial(&mut pkt);
                let info = packet::parse(&pkt).unwrap();
                assert!(packet::rewrite(
                    &mut pkt,
                    &info,
                    CLI1.iip(fam),
                    WEB2.ns(fam)
                ));

                // The fresh reference: the rewrite applied to the full form.
                let mut fresh = orig.clone();
                let info = packet::parse(&fresh).unwrap();
                assert!(packet::rewrite(
                    &mut fresh,
                    &info,
                    CLI1.iip(fam),
                    WEB2.ns(fam)
                ));
                check(&fresh);

                // The rewrite alone leaves a wrong seed (except ICMPv4, whose
                // checksum has no pseudo-header and is left untouched).
                let mut unseeded = pkt.clone();
                kernel_finish(&mut unseeded, at);
                let is_icmp4 = l.is_icmp() && fam == Fam::V4;
                assert_eq!(unseeded == fresh, is_icmp4, "{fam:?} {l:?}");

                seed_partial_checksum(&mut pkt, at).unwrap();
                assert_eq!(
                    pkt[usize::from(at.start + at.offset)..][..2],
                    reference_seed(&pkt).to_be_bytes()
                );
                kernel_finish(&mut pkt, at);
                // The kernel turns a UDP 0 into 0xffff; tun-rs does not.
                check(&pkt);
                let i = usize::from(at.start + at.offset);
                pkt[i..i + 2].copy_from_slice(&fresh[i..i + 2]);
                assert_eq!(pkt, fresh, "{fam:?} {l:?} opts={opts}");
            }
        }
    }
}

#[test]
fn finish_checksum_equals_a_fresh_one_whatever_the_field_holds() {
    for fam in [Fam::V4, Fam::V6] {
        for l in [L::Syn, L::Udp, L::Ping, L::Pong] {
            let full = build(CLI1.iip(fam), 40000, WEB2.ns(fam), 80, l, fam == Fam::V4);
            let mut pkt = full.clone();
            let at = make_partial(&mut pkt);
            finish_checksum(&mut pkt, at).unwrap();
            assert_eq!(pkt, full, "{fam:?} {l:?}");
            let i = usize::from(at.start + at.offset);
            pkt[i] ^= 0xff;
            pkt[i + 1] ^= 0x0f;
            finish_checksum(&mut pkt, at).unwrap();
            assert_eq!(pkt, full);
        }
    }
}

#[test]
fn finish_udp_zero_is_sent_as_ffff() {
    for fam in [Fam::V4, Fam::V6] {
        let mut pkt = build(CLI1.iip(fam), 40000, WEB2.ns(fam), 53, L::Udp, false);
        let at = csum_at(&pkt);
        let l4 = usize::from(at.start);
        // Make the data sum cancel out: replace the first payload word by
        // the checksum it yields with that word zeroed.
        pkt[l4 + 8..l4 + 10].copy_from_slice(&[0, 0]);
        finish_checksum(&mut pkt, at).unwrap();
        let c = [pkt[l4 + 6], pkt[l4 + 7]];
        pkt[l4 + 8..l4 + 10].copy_from_slice(&c);
        finish_checksum(&mut pkt, at).unwrap();
        assert_eq!(pkt[l4 + 6..l4 + 8], [0xff, 0xff], "{fam:?}");
        check(&pkt);
        // The same through segment().
        let mut sup = pkt.clone();
        make_partial(&mut sup);
        let mut out = vec![0u8; 200];
        let off = Offload {
            gso: Gso::Udp { size: 1000 },
            csum: Some(at),
        };
        let segs = segment(&sup, &off, &mut out).unwrap();
        assert_eq!(out[HEADER_LEN..segs.len], pkt[..]);
    }
}

#[test]
fn groups_respect_limits_and_cover_everything() {
    let mut r = Rng(0xfeed);
    for _ in 0..300 {
        let s = Shape {
            fam: if r.below(2) == 0 { Fam::V4 } else { Fam::V6 },
            tcp: r.below(2) == 0,
            opts: r.below(2) == 0,
            flags: ACK,
            len: r.below(64_000),
        };
        let size = [1, 100, 536, 1200, 1448, 8000][r.below(6)] as u16;
        let pkt = build_super(s);
        let off = Offload {
            gso: gso_of(s, size),
            csum: None,
        };
        let segs = plan(&pkt, &off).unwrap();
        let mut out = vec![0u8; segs.len];
        assert_eq!(segment(&pkt, &off, &mut out).unwrap(), segs);
        for (max_segs, max_bytes) in [(64, 65000), (3, 65000), (64, 9000), (1, 1), (64, 100)] {
            let mut next = 0;
            let mut seen = 0;
            let groups: Vec<_> = segs.groups(max_segs, max_bytes).collect();
            for (g, range) in groups.iter().enumerate() {
                assert_eq!(range.start, next, "contiguous");
                assert_eq!(range.start % segs.stride, 0, "starts on a datagram");
                let n = range.len().div_ceil(segs.stride);
                assert!(n >= 1 && n <= max_segs);
                assert!(range.len() <= max_bytes || n == 1, "bytes limit");
                if g + 1 < groups.len() {
                    assert_eq!(range.len() % segs.stride, 0, "full strides only");
                }
                seen += n;
                next = range.end;
            }
            assert_eq!(next, segs.len, "covers everything");
            assert_eq!(seen, segs.count);
            // As many datagrams per group as the limits allow.
            let per = max_segs.min(max_bytes / segs.stride).max(1);
            assert_eq!(groups.len(), segs.count.div_ceil(per));
        }
        assert_eq!(segs.datagram(segs.count), None);
    }
    assert_eq!(Segments::default().groups(64, 65000).count(), 0);
}

#[test]
fn typed_errors_for_bad_input() {
    let s = Shape {
        fam: Fam::V4,
        tcp: true,
        opts: true,
        flags: ACK,
        len: 3000,
    };
    let pkt = build_super(s);
    let at = csum_at(&pkt);
    let tso = Offload {
        gso: Gso::Tcp { mss: 1000 },
        csum: Some(at),
    };
    let mut out = vec![0u8; 70_000];
    let seg = |p: &[u8], o: Offload| segment(p, &o, &mut vec![0u8; 70_000]);
    assert_eq!(
        seg(
            &pkt,
            Offload {
                gso: Gso::Tcp { mss: 0 },
                ..tso
            }
        ),
        Err(OffloadError::ZeroGsoSize)
    );
    assert_eq!(
        seg(
            &pkt,
            Offload {
                gso: Gso::Udp { size: 1000 },
                ..tso
            }
        ),
        Err(OffloadError::GsoProtocolMismatch(6))
    );
    for bad in [
        CsumAt {
            start: 20,
            offset: 16,
        },
        CsumAt {
            start: at.start,
            offset: 6,
        },
        CsumAt {
            start: 60000,
            offset: 60000,
        },
    ] {
        let e = OffloadError::BadChecksumPosition {
            start: bad.start,
            offset: bad.offset,
        };
        assert_eq!(
            seg(
                &pkt,
                Offload {
                    csum: Some(bad),
                    ..tso
                }
            ),
            Err(e)
        );
        assert_eq!(seed_partial_checksum(&mut pkt.clone(), bad), Err(e));
        assert_eq!(finish_checksum(&mut pkt.clone(), bad), Err(e));
    }
    let need = plan(&pkt, &tso).unwrap().len;
    assert_eq!(
        segment(&pkt, &tso, &mut out[..need - 1]),
        Err(OffloadError::OutTooSmall {
            need,
            have: need - 1
        })
    );
    assert_eq!(
        seg(&pkt[..pkt.len() - 1], tso),
        Err(OffloadError::Truncated)
    );
    assert_eq!(seg(&[], tso), Err(OffloadError::Truncated));
    assert_eq!(seg(&[0x55; 60], tso), Err(OffloadError::NotIp));
    let mut p = pkt.clone();
    p[0] = 0x44; // IHL 16 bytes
    assert!(matches!(seg(&p, tso), Err(OffloadError::BadIpHeader(_))));
    let mut p = pkt.clone();
    p[2..4].copy_from_slice(&10u16.to_be_bytes());
    assert!(matches!(seg(&p, tso), Err(OffloadError::BadIpHeader(_))));
    let mut p = pkt.clone();
    p[6] |= 0x20; // MF
    assert_eq!(seg(&p, tso), Err(OffloadError::Fragment));
    let mut p = pkt.clone();
    p[9] = 47; // GRE
    assert_eq!(seg(&p, tso), Err(OffloadError::UnsupportedProtocol(47)));
    let mut p = pkt.clone();
    p[28 + 12] = 0x40; // TCP data offset 16 bytes
    assert_eq!(seg(&p, tso), Err(OffloadError::BadTransportHeader));
    let mut p = pkt.clone();
    p[28 + 12] = 0xf0; // 60 bytes of TCP header
    p.truncate(28 + 50);
    p[2..4].copy_from_slice(&78u16.to_be_bytes());
    assert_eq!(seg(&p, tso), Err(OffloadError::Truncated));
    // IPv6 with a hop-by-hop header.
    let mut p6 = build_super(Shape { fam: Fam::V6, ..s });
    p6[6] = 0;
    assert_eq!(seg(&p6, tso), Err(OffloadError::UnsupportedProtocol(0)));
    // The largest gso size is one segment, fine.
    let one = seg(
        &pkt,
        Offload {
            gso: Gso::Tcp { mss: u16::MAX },
            ..tso
        },
    )
    .unwrap();
    assert_eq!(one.count, 1);
    // Error messages say what is wrong.
    assert_eq!(
        OffloadError::OutTooSmall { need: 9, have: 3 }.to_string(),
        "output buffer of 3 bytes, 9 needed"
    );
}

/// Random bytes, random truncations and random header corruption of valid
/// super-packets with random offload metadata: errors, never a panic, and
/// whatever succeeds stays inside the buffer it was given.
#[test]
fn hostile_input_never_panics() {
    let mut r = Rng(0x1234_5678_9abc);
    let mut out = vec![0u8; 80_000];
    let mut ok = 0;
    for round in 0..4000 {
        let s = Shape {
            fam: if r.below(2) == 0 { Fam::V4 } else { Fam::V6 },
            tcp: r.below(2) == 0,
            opts: r.below(2) == 0,
            flags: r.next() as u8,
            len: r.below(9000),
        };
        let mut pkt = match round % 4 {
            0 => payload(r.below(200), r.next()),
            _ => build_super(s),
        };
        if round % 4 == 2 && !pkt.is_empty() {
            let cut = r.below(pkt.len());
            pkt.truncate(cut);
        }
        if round % 4 == 3 {
            for _ in 0..1 + r.below(4) {
                let i = r.below(pkt.len().min(80));
                pkt[i] = r.next() as u8;
            }
        }
        let size = [0, 1, 7, 1400, 65535][r.below(5)];
        let gso = match r.below(3) {
            0 => Gso::None,
            1 => Gso::Tcp { mss: size },
            _ => Gso::Udp { size },
        };
        let csum = match r.below(3) {
            0 => None,
            1 => Some(CsumAt {
                start: r.next() as u16,
                offset: r.next() as u16,
            }),
            _ => Some(CsumAt {
                start: [20, 28, 40][r.below(3)],
                offset: [2, 6, 16][r.below(3)],
            }),
        };
        let off = Offload { gso, csum };
        let cap = r.below(out.len());
        if let Ok(segs) = segment(&pkt, &off, &mut out[..cap]) {
            assert!(segs.len <= cap && segs.count >= 1);
            assert_eq!(plan(&pkt, &off), Ok(segs));
            ok += 1;
        }
        if let Some(c) = csum {
            let _ = seed_partial_checksum(&mut pkt.clone(), c);
            let _ = finish_checksum(&mut pkt, c);
        }
    }
    assert!(ok > 100, "some inputs are valid: {ok}");
}

/// Timing of one 64 KB TSO split: `cargo test --release -p proxytun
/// segment_timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing, run by hand with --release"]
fn segment_timing() {
    let s = Shape {
        fam: Fam::V4,
        tcp: true,
        opts: true,
        flags: ACK | PSH,
        len: 65535 - 28 - 32,
    };
    let mut pkt = build_super(s);
    let at = make_partial(&mut pkt);
    let off = Offload {
        gso: Gso::Tcp { mss: 1448 },
        csum: Some(at),
    };
    let mut out = vec![0u8; plan(&pkt, &off).unwrap().len];
    let n = 20_000u32;
    let t = std::time::Instant::now();
    for _ in 0..n {
        segment(std::hint::black_box(&pkt), &off, &mut out).unwrap();
    }
    let per = t.elapsed().as_nanos() as f64 / f64::from(n);
    let segs = plan(&pkt, &off).unwrap();
    println!(
        "64 KB TSO -> {} segments: {:.1} us per super-packet, {:.0} ns per segment, {:.1} Gbit/s of payload",
        segs.count,
        per / 1000.0,
        per / segs.count as f64,
        s.len as f64 * 8.0 / per
    );
}
