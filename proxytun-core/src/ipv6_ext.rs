//! Walking the IPv6 extension headers hosts send in normal operation
//! (hop-by-hop options, for MLD's router alert; destination options; a
//! routing header that has arrived; the fragment header), so that a packet
//! carrying them is parsed like any other instead of dropped.
//!
//! AH, ESP and the other extension headers are left to the caller: the
//! walk stops at them and returns them as the next header.

use super::counters::DropReason;

/// Hop-by-hop options.
pub const EXT_HOP_BY_HOP: u8 = 0;
/// Routing header.
pub const EXT_ROUTING: u8 = 43;
/// Fragment header.
pub const EXT_FRAGMENT: u8 = 44;
/// Destination options.
pub const EXT_DEST_OPTS: u8 = 60;

/// The fixed IPv6 header (as `packet` has it; kept here so the walk
/// depends on nothing but the drop reasons).
const IPV6_HEADER_LEN: usize = 40;

/// More extension headers than this in one packet is an attack, not a host.
const MAX_EXT_HEADERS: usize = 8;

/// The fragment header of a packet, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag6 {
    /// The fragment's identification.
    pub id: u32,
    /// Offset of the fragment's data in the original packet, in bytes.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// Where the fragmentable part (this fragment's data) starts.
    pub data_at: usize,
    /// The header's next-header value: the same in every fragment of a
    /// datagram, so it names the datagram.
    pub next: u8,
}

/// Where the walk ended: the upper-layer header (or a header it does not
/// walk) and its offset, and the fragment header met on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// The next-header value at `offset`.
    pub next: u8,
    /// Offset of that header in the packet.
    pub offset: usize,
    /// The fragment header, when the packet is a fragment.
    pub frag: Option<Frag6>,
}

/// Walks the extension headers of `pkt` (an IPv6 packet cut to its
/// length, at least 40 bytes). A non-first fragment ends the walk at its
/// data: what follows is the middle of someone's payload.
///
/// Errors: `Malformed` for a header running past the packet, hop-by-hop
/// anywhere but first, two fragment headers or too many headers;
/// `Ipv6ExtHeader` for a routing header with segments left (the
/// destination is not the final one, and rewriting it would be wrong).
pub fn walk(pkt: &[u8]) -> Result<Walk, DropReason> {
    let mut next = *pkt.get(6).ok_or(DropReason::Malformed)?;
    let mut at = IPV6_HEADER_LEN;
    let mut frag = None;
    for i in 0..=MAX_EXT_HEADERS {
        let hdr = pkt.get(at..at + 8);
        match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                if i == MAX_EXT_HEADERS || (next == EXT_HOP_BY_HOP && i != 0) {
                    return Err(DropReason::Malformed);
                }
                let hdr = hdr.ok_or(DropReason::Malformed)?;
                if next == EXT_ROUTING && hdr[3] != 0 {
                    return Err(DropReason::Ipv6ExtHeader);
                }
                let len = (usize::from(hdr[1]) + 1) * 8;
                if at + len > pkt.len() {
                    return Err(DropReason::Malformed);
                }
                next = hdr[0];
                at += len;
            }
            EXT_FRAGMENT => {
                let hdr = hdr.ok_or(DropReason::Malformed)?;
                if frag.is_some() || i == MAX_EXT_HEADERS {
                    return Err(DropReason::Malformed);
                }
                let word = u16::from_be_bytes([hdr[2], hdr[3]]);
                let f = Frag6 {
                    id: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                    offset: usize::from(word & 0xfff8),
                    more: word & 1 != 0,
                    data_at: at + 8,
                    next: hdr[0],
                };
                frag = Some(f);
                next = hdr[0];
                at += 8;
                if f.offset != 0 {
                    break;
                }
            }
            _ => break,
        }
    }
    Ok(Walk {
        next,
        offset: at,
        frag,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v6(next: u8, ext: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = next;
        p.extend_from_slice(ext);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    #[test]
    fn skips_hop_by_hop_and_destination_options() {
        // Hop-by-hop (router alert, 8 bytes) -> dest opts (16 bytes) -> ICMPv6.
        let mut ext = vec![60, 0, 5, 2, 0, 0, 1, 0];
        ext.extend_from_slice(&[58, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
        let w = walk(&v6(0, &ext)).unwrap();
        assert_eq!((w.next, w.offset, w.frag), (58, 64, None));
    }

    #[test]
    fn fragment_header_first_and_later() {
        let first = v6(44, &[17, 0, 0, 1, 0, 0, 0, 7, 1, 2, 3, 4, 0, 8, 0, 0]);
        let w = walk(&first).unwrap();
        assert_eq!((w.next, w.offset), (17, 48));
        assert_eq!(
            w.frag,
            Some(Frag6 {
                id: 7,
                offset: 0,
                more: true,
                data_at: 48,
                next: 17,
            })
        );
        // A later fragment whose data happens to look like a header: not walked.
        let later = v6(44, &[60, 0, 0x05, 0x28, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        let w = walk(&later).unwrap();
        assert_eq!((w.next, w.offset), (60, 48));
        let f = w.frag.unwrap();
        assert_eq!((f.id, f.offset, f.more), (9, 0x0528, false));
    }

    #[test]
    fn refuses_what_hosts_do_not_send() {
        // Hop-by-hop after another header.
        let p = v6(60, &[0, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(walk(&p), Err(DropReason::Malformed));
        // A header longer than the packet.
        assert_eq!(
            walk(&v6(60, &[17, 3, 0, 0, 0, 0, 0, 0])),
            Err(DropReason::Malformed)
        );
        // Truncated.
        assert_eq!(walk(&v6(0, &[17, 0])), Err(DropReason::Malformed));
        // Routing header with segments left.
        let p = v6(43, &[17, 0, 4, 1, 0, 0, 0, 0]);
        assert_eq!(walk(&p), Err(DropReason::Ipv6ExtHeader));
        // Two fragment headers.
        let p = v6(44, &[44, 0, 0, 1, 0, 0, 0, 1, 17, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(walk(&p), Err(DropReason::Malformed));
        // An endless chain of destination options.
        let mut ext = Vec::new();
        for _ in 0..12 {
            ext.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(walk(&v6(60, &ext)), Err(DropReason::Malformed));
    }
}
