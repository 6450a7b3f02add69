//! Target `coalesce`: the receive coalescer against the segmenter.

use crate::gro::{Coalescer, FrameView, Pushed, MAX_SEGMENTS};
use crate::offload::{plan, segment, Gso, Offload};
use crate::tunnel::HEADER_LEN;

/// Target `coalesce`: `data` is a flags byte (bit 0: the TUN takes USO)
/// and then packets, each behind a 2-byte big-endian length and a byte
/// whose bit 0 says its checksum is partial. Whatever they hold:
/// - every packet the coalescer took lies in exactly one frame, whole as
///   its head or by its payload as a tail, in the order it was pushed;
/// - a frame of several packets is one the kernel's GSO would cut back
///   into exactly those packets: [`segment`] of it gives one segment per
///   packet, each with that packet's payload.
pub fn coalesce(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut buf = Vec::new();
    let mut packets = Vec::new();
    while let [hi, lo, pflags, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        packets.push((buf.len(), len, pflags & 1 != 0));
        buf.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    let mut c = Coalescer::new(4, flags & 1 != 0);
    // Packets the coalescer took since the last flush, by index.
    let mut taken: Vec<usize> = Vec::new();
    for (i, &(start, len, partial)) in packets.iter().enumerate() {
        let mut r = c.push(&mut buf, start, len, partial);
        if r == Ok(Pushed::Full) {
            check(&mut c, &mut buf, &packets, &taken);
            taken.clear();
            r = c.push(&mut buf, start, len, partial);
            assert_ne!(r, Ok(Pushed::Full), "an empty coalescer is full");
        }
        if r.is_ok() {
            taken.push(i);
        }
    }
    check(&mut c, &mut buf, &packets, &taken);
}

/// Finishes the frames and checks them against the packets in `taken`.
fn check(c: &mut Coalescer, buf: &mut [u8], packets: &[(usize, usize, bool)], taken: &[usize]) {
    c.finish(buf);
    let of = |start: usize, len: usize| {
        packets
            .iter()
            .position(|&(s, l, _)| start >= s && start + len <= s + l)
            .unwrap_or_else(|| panic!("range {start}+{len} is in no packet"))
    };
    let mut seen = Vec::new();
    for f in c.frames() {
        let head = of(f.head.start, f.head.len());
        assert_eq!(f.head.start, packets[head].0, "a head is a whole packet");
        assert_eq!(f.head.len(), packets[head].1, "a head is a whole packet");
        assert!(f.tails.len() < MAX_SEGMENTS);
        let mut last = head;
        seen.push(head);
        for &(s, l) in f.tails {
            let p = of(s, l);
            assert!(p > last, "a tail after what came before it");
            last = p;
            seen.push(p);
        }
        if !f.tails.is_empty() {
            resegments(&f, buf);
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, taken, "every packet taken is in exactly one frame");
    c.clear();
}

/// A frame of several packets cut by the segmenter gives them back.
fn resegments(f: &FrameView<'_>, buf: &[u8]) {
    assert_ne!(f.meta.gso, Gso::None, "a multi-packet frame without GSO");
    let mut frame = buf[f.head.clone()].to_vec();
    for &(s, l) in f.tails {
        frame.extend_from_slice(&buf[s..s + l]);
    }
    let off = Offload {
        gso: f.meta.gso,
        csum: f.meta.csum,
    };
    let segs = plan(&frame, &off).unwrap_or_else(|e| panic!("frame refused: {e}"));
    assert_eq!(segs.count, f.tails.len() + 1, "one segment per packet");
    let mut out = vec![0u8; segs.len];
    assert!(segment(&frame, &off, &mut out).is_ok());
    let hdr = usize::from(f.meta.hdr_len);
    for (i, &(s, l)) in f.tails.iter().enumerate() {
        let r = segs.datagram(i + 1).unwrap_or_default();
        assert_eq!(
            &out[r][HEADER_LEN + hdr..],
            &buf[s..s + l],
            "segment {}",
            i + 1
        );
    }
}

/// Seeds: the segments of a 5000-byte TCP and a 5000-byte UDP
/// super-packet cut at 1000 bytes, each packet marked partial, in the
/// input format of [`coalesce`] (UDP with USO on).
pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for tcp in [true, false] {
        let l4 = if tcp { 20 } else { 8 };
        let total = 20 + l4 + 5000;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = if tcp {
            crate::packet::IPPROTO_TCP
        } else {
            crate::packet::IPPROTO_UDP
        };
        p[12..16].copy_from_slice(&[10, 18, 2, 7]);
        p[16..20].copy_from_slice(&[10, 18, 1, 5]);
        p[20..24].copy_from_slice(&[0x1f, 0x90, 0x9c, 0x40]);
        if tcp {
            p[24..28].copy_from_slice(&0xffff_f000u32.to_be_bytes());
            p[28..32].copy_from_slice(&77u32.to_be_bytes());
            p[32] = 0x50;
            p[33] = crate::packet::TCP_ACK;
            p[34..36].copy_from_slice(&64000u16.to_be_bytes());
        } else {
            p[24..26].copy_from_slice(&((l4 + 5000) as u16).to_be_bytes());
        }
        for (i, b) in p[20 + l4..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let off = Offload {
            gso: if tcp {
                Gso::Tcp { mss: 1000 }
            } else {
                Gso::Udp { size: 1000 }
            },
            csum: None,
        };
        let Ok(segs) = plan(&p, &off) else {
            continue;
        };
        let mut o = vec![0u8; segs.len];
        if segment(&p, &off, &mut o).is_err() {
            continue;
        }
        let mut d = vec![u8::from(!tcp)];
        for i in 0..segs.count {
            let r = segs.datagram(i).unwrap_or_default();
            let pkt = &o[r.start + HEADER_LEN..r.end];
            d.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
            d.push(1);
            d.extend_from_slice(pkt);
        }
        out.push(d);
    }
    out
}
