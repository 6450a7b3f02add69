//! The coalescer against the segmenter: the segments of a super-packet,
//! coalesced, give back the super-packet (what the kernel would segment the
//! same way), in any mix of flows, losses and packets that cannot join.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::offload::{finish_checksum, plan, segment, segment_with_trailer, Offload, Sums};
use crate::testkit::superpacket::*;
use crate::testkit::Fam;
use crate::tunnel::HEADER_LEN;

/// The datagrams' inner packets of `pkt` cut at `size`, in one buffer:
/// (buffer, (start, len) of each packet).
fn cut(pkt: &[u8], size: u16, tcp: bool, sums: Sums) -> (Vec<u8>, Vec<(usize, usize)>) {
    let off = Offload {
        gso: if tcp {
            Gso::Tcp { mss: size }
        } else {
            Gso::Udp { size }
        },
        csum: Some(csum_at(pkt)),
    };
    let segs = plan(pkt, &off).unwrap();
    let mut out = vec![0u8; segs.len];
    segment_with_trailer(pkt, &off, 0, sums, &mut out).unwrap();
    let list = (0..segs.count)
        .map(|i| {
            let r = segs.datagram(i).unwrap();
            (r.start + HEADER_LEN, r.len() - HEADER_LEN)
        })
        .collect();
    (out, list)
}

/// Every frame as one contiguous packet, with its metadata.
fn frames(c: &Coalescer, buf: &[u8]) -> Vec<(FrameMeta, Vec<u8>)> {
    c.frames()
        .map(|f| {
            let mut p = buf[f.head.clone()].to_vec();
            for &(s, l) in f.tails {
                p.extend_from_slice(&buf[s..s + l]);
            }
            (f.meta, p)
        })
        .collect()
}

fn push_all(c: &mut Coalescer, buf: &mut [u8], list: &[(usize, usize)], partial: bool) {
    for &(s, l) in list {
        assert_ne!(c.push(buf, s, l, partial).unwrap(), Pushed::Full);
    }
    c.finish(buf);
}

/// `pkt` as the kernel sees a frame: its checksum finished from the seed.
fn finished(meta: &FrameMeta, mut pkt: Vec<u8>) -> Vec<u8> {
    if let Some(at) = meta.csum {
        finish_checksum(&mut pkt, at).unwrap();
    }
    pkt
}

fn shape(fam: Fam, tcp: bool, len: usize, flags: u8) -> Shape {
    Shape {
        fam,
        tcp,
        opts: fam == Fam::V6,
        flags,
        len,
    }
}

#[test]
fn segments_coalesce_back_into_their_super_packet() {
    for fam in [Fam::V4, Fam::V6] {
        for (len, size) in [
            (10_000, 1000),
            (64_000, 1400),
            (1400 * 5 + 7, 1400),
            (1, 1400),
        ] {
            for sums in [Sums::Partial, Sums::Full] {
                let s = shape(fam, true, len, ACK | PSH);
                let pkt = build_super(s);
                let (mut buf, list) = cut(&pkt, size, true, sums);
                let mut c = Coalescer::new(8, false);
                push_all(&mut c, &mut buf, &list, sums == Sums::Partial);
                let got = frames(&c, &buf);
                assert_eq!(got.len(), 1, "{fam:?} {len}/{size}: one frame");
                let (meta, p) = got.into_iter().next().unwrap();
                let want_gso = if list.len() > 1 {
                    Gso::Tcp { mss: size }
                } else {
                    Gso::None
                };
                assert_eq!(meta.gso, want_gso);
                assert_eq!(meta.v6, fam == Fam::V6);
                assert_eq!(meta.csum, Some(csum_at(&pkt)));
                assert_eq!(usize::from(meta.hdr_len), layout(&pkt).unwrap().l4_end);
                // The kernel finishes the seed: the original, byte for byte.
                assert_eq!(finished(&meta, p.clone()), pkt, "{fam:?} {len}/{size}");
                // And segments it as the sender did.
                if list.len() > 1 {
                    let off = Offload {
                        gso: meta.gso,
                        csum: meta.csum,
                    };
                    let segs = plan(&p, &off).unwrap();
                    let (mut a, mut b) = (vec![0; segs.len], vec![0; segs.len]);
                    segment(&p, &off, &mut a).unwrap();
                    segment(&pkt, &off, &mut b).unwrap();
                    assert_eq!(a, b);
                }
            }
        }
    }
}

#[test]
fn udp_runs_coalesce_only_when_the_tun_takes_uso() {
    for fam in [Fam::V4, Fam::V6] {
        let pkt = build_super(shape(fam, false, 1400 * 10 + 100, 0));
        let (buf0, list) = cut(&pkt, 1400, false, Sums::Partial);
        let mut buf = buf0.clone();
        let mut c = Coalescer::new(16, true);
        push_all(&mut c, &mut buf, &list, true);
        let got = frames(&c, &buf);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.gso, Gso::Udp { size: 1400 });
        assert_eq!(finished(&got[0].0, got[0].1.clone()), pkt);

        let mut buf = buf0.clone();
        let mut c = Coalescer::new(16, false);
        push_all(&mut c, &mut buf, &list, true);
        let got = frames(&c, &buf);
        assert_eq!(got.len(), list.len(), "one frame per datagram");
        for ((meta, p), &(s, l)) in got.iter().zip(&list) {
            assert_eq!(meta.gso, Gso::None);
            // Seeded for the kernel, which then has a correct checksum.
            let mut want = buf0[s..s + l].to_vec();
            crate::offload::fill_checksum(&mut want).unwrap();
            assert_eq!(finished(meta, p.clone()), want);
        }
    }
}

#[test]
fn a_lost_segment_splits_the_run_and_order_is_kept() {
    let pkt = build_super(shape(Fam::V4, true, 14_000, ACK));
    let (mut buf, mut list) = cut(&pkt, 1400, true, Sums::Partial);
    list.remove(4);
    let mut c = Coalescer::new(8, false);
    push_all(&mut c, &mut buf, &list, true);
    let got = frames(&c, &buf);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1.len(), 40 + 4 * 1400);
    assert_eq!(got[1].1.len(), 40 + 5 * 1400);
    // Reordered: each of the two swapped segments stands alone.
    let (mut buf, mut list) = cut(&pkt, 1400, true, Sums::Partial);
    list.swap(2, 3);
    let mut c = Coalescer::new(8, false);
    push_all(&mut c, &mut buf, &list, true);
    let sizes: Vec<usize> = frames(&c, &buf).iter().map(|f| f.1.len()).collect();
    assert_eq!(sizes, [40 + 2 * 1400, 40 + 1400, 40 + 1400, 40 + 6 * 1400]);
}

#[test]
fn interleaved_flows_each_get_their_frame() {
    let a = build_super(shape(Fam::V4, true, 7000, ACK));
    let b = build_super(shape(Fam::V6, true, 7000, ACK));
    let (ba, la) = cut(&a, 1000, true, Sums::Partial);
    let (bb, lb) = cut(&b, 1000, true, Sums::Partial);
    let mut buf = ba.clone();
    buf.extend_from_slice(&bb);
    let mut list = Vec::new();
    for (x, y) in la.iter().zip(&lb) {
        list.push(*x);
        list.push((y.0 + ba.len(), y.1));
    }
    let mut c = Coalescer::new(8, false);
    push_all(&mut c, &mut buf, &list, true);
    let got = frames(&c, &buf);
    assert_eq!(got.len(), 2);
    assert_eq!(finished(&got[0].0, got[0].1.clone()), a);
    assert_eq!(finished(&got[1].0, got[1].1.clone()), b);
}

#[test]
fn packets_that_cannot_join_stand_alone_in_their_place() {
    let data = build_super(shape(Fam::V4, true, 4200, ACK));
    let (mut buf, list) = cut(&data, 1400, true, Sums::Full);
    // A pure ACK of the same flow between the second and third segment,
    // and an IPv4 packet with options (Linux's GRO does not merge those).
    let ack = build_super(shape(Fam::V4, true, 0, ACK));
    let opts = build_super(Shape {
        fam: Fam::V4,
        tcp: true,
        opts: true,
        flags: ACK,
        len: 100,
    });
    let mut order = vec![list[0], list[1]];
    for extra in [&ack, &opts] {
        order.push((buf.len(), extra.len()));
        buf.extend_from_slice(extra);
    }
    order.push(list[2]);
    let mut c = Coalescer::new(8, false);
    push_all(&mut c, &mut buf, &order, false);
    let got = frames(&c, &buf);
    let sizes: Vec<usize> = got.iter().map(|f| f.1.len()).collect();
    assert_eq!(sizes, [40 + 2800, 40, opts.len(), 40 + 1400], "order kept");
    assert_eq!(got[1].0.gso, Gso::None);
    assert_eq!(finished(&got[1].0, got[1].1.clone()), ack);
    assert_eq!(finished(&got[2].0, got[2].1.clone()), opts);
}

#[test]
fn a_full_coalescer_says_so_and_takes_the_packet_after_clear() {
    let a = build_super(shape(Fam::V4, true, 100, ACK));
    let b = build_super(shape(Fam::V6, true, 100, ACK));
    let mut buf = a.clone();
    buf.extend_from_slice(&b);
    let mut c = Coalescer::new(1, false);
    assert_eq!(c.push(&mut buf, 0, a.len(), false), Ok(Pushed::Opened));
    assert_eq!(c.push(&mut buf, a.len(), b.len(), false), Ok(Pushed::Full));
    c.clear();
    assert!(c.is_empty());
    assert_eq!(
        c.push(&mut buf, a.len(), b.len(), false),
        Ok(Pushed::Opened)
    );
}

#[test]
fn hostile_input_never_panics_and_a_partial_one_without_layout_is_refused() {
    let mut r = Rng(0x5eed);
    let good = build_super(shape(Fam::V4, true, 3000, ACK));
    let (base, list) = cut(&good, 700, true, Sums::Partial);
    for round in 0..2000 {
        let mut buf = base.clone();
        // Flip a few bytes anywhere, headers included.
        for _ in 0..r.below(6) {
            let at = r.below(buf.len());
            buf[at] = r.next() as u8;
        }
        let mut c = Coalescer::new(3, round % 2 == 0);
        for &(s, l) in &list {
            let l = if r.below(4) == 0 { r.below(l + 40) } else { l };
            if let Ok(Pushed::Full) = c.push(&mut buf, s, l, r.below(2) == 0) {
                c.finish(&mut buf);
                let _ = frames(&c, &buf);
                c.clear();
            }
        }
        c.finish(&mut buf);
        for f in c.frames() {
            assert!(f.head.end <= buf.len());
            assert!(f.tails.len() < MAX_SEGMENTS);
        }
    }
    let mut junk = vec![0x45u8; 10];
    let mut c = Coalescer::new(2, true);
    assert_eq!(c.push(&mut junk, 0, 10, false), Ok(Pushed::Opened));
    assert!(
        c.push(&mut junk, 0, 10, true).is_err(),
        "a seed nobody can finish"
    );
    assert_eq!(
        c.push(&mut junk, 5, 10, false),
        Err(OffloadError::Truncated)
    );
}
