//! The core's offload helpers against tun-rs: segments equal tun-rs's
//! `gso_split` (an independent implementation of the kernel's GSO) and pass
//! etherparse's checksum checks; partial checksums re-seeded after the
//! core's rewrite finish like the kernel would (summed by tun-rs).
//!
//! Here in the daemon crate, not in the core, because the core depends on
//! no I/O crate and tun-rs is one. Fixtures: `proxytun_core::testkit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tun_rs::VirtioNetHdr;

use proxytun_core::offload::{
    finish_checksum, layout, plan, seed_partial_checksum, segment, CsumAt, Gso, Offload, Segments,
};
use proxytun_core::packet;
use proxytun_core::testkit::superpacket::*;
use proxytun_core::testkit::*;
use proxytun_core::tunnel::{parse_header, write_header, MsgType, HEADER_LEN};

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;

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

/// Timing of one 64 KB TSO split: `cargo test --release -p proxytun
/// --test offload_vs_tun_rs segment_timing -- --ignored --nocapture`.
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
