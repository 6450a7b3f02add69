//! Offload helpers on their own: segment groups respect the send limits
//! and cover everything, bad input gets typed errors, hostile input never
//! panics. (The cross-checks against tun-rs's `gso_split` and checksum are
//! in the daemon crate's `tests/offload_vs_tun_rs.rs`: the core does not
//! depend on tun-rs.)

use crate::offload::{
    finish_checksum, plan, seed_partial_checksum, segment, CsumAt, Gso, Offload, OffloadError,
    Segments,
};
use crate::testkit::superpacket::*;
use crate::testkit::*;

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
