//! Target `decap`: tunnel input from members and strangers, plain,
//! sealed, altered and replayed.

use std::sync::Arc;

use super::fixture::{fixture_now, fixture_table, wrap, B, STRANGER};
use crate::dataplane::{Dataplane, NetVerdict};
use crate::flow::CoreConfig;
use crate::seal::{ClusterKey, Sealer};
use crate::tunnel::{MsgType, Protection, HEADER_LEN};

/// Target `decap`: [`Dataplane::handle_tunnel`] of node A on a sequence of
/// datagrams (each: one control byte, a length byte, that many bytes).
///
/// The control byte says who sends (member B or a stranger) and how:
/// raw bytes, a plain header prepended, or (on an authenticated node)
/// sealed with the cluster key, sealed then one byte flipped, or a replay
/// of the last sealed datagram. Never a panic; nothing from a stranger,
/// nothing unsealed or altered on the authenticated node and no replay
/// reaches the TUN; counters stay balanced.
pub fn decap(data: &[u8]) {
    let now = fixture_now();
    let key = ClusterKey::from_bytes([7u8; 32]);
    let auth = data.first().is_some_and(|b| b & 1 == 1);
    let sealer = match auth {
        true => Sealer::new(Protection::Auth, Some(&key), 0xa11ce),
        false => Ok(Sealer::plain(0xa11ce)),
    };
    let peer_sealer = match auth {
        true => Sealer::new(Protection::Auth, Some(&key), 0xb0b),
        false => Ok(Sealer::plain(0xb0b)),
    };
    let (Ok(sealer), Ok(peer_sealer)) = (sealer, peer_sealer) else {
        panic!("sealer for a fixed key");
    };
    let mut dp = Dataplane::with_sealer(CoreConfig::default(), fixture_table(), Arc::new(sealer));
    let mut rest = data.get(1..).unwrap_or_default();
    // The last datagram sealed by the peer, and whether a member address
    // has presented it (then its counter is spent; a stranger's copy is
    // dropped before any crypto and spends nothing).
    let mut last_sealed: Option<(Vec<u8>, bool)> = None;
    let mut count = 0u64;
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let from = if ctl & 0x80 == 0 { B } else { STRANGER };
        let (mut dgram, may_pass) = match (ctl >> 4) & 0x7 {
            // Raw bytes: a valid tunnel header only by luck.
            0 | 1 => (body.to_vec(), !auth),
            2 | 3 => (wrap(body), !auth),
            4 | 5 => {
                let s = seal(&peer_sealer, body);
                last_sealed = Some((s.clone(), from != STRANGER));
                (s, true)
            }
            6 => {
                let mut s = seal(&peer_sealer, body);
                let i = usize::from(ctl & 0x0f) * 7 % s.len().max(1);
                if let Some(b) = s.get_mut(i) {
                    *b ^= 1 << (ctl & 7);
                }
                (s, !auth)
            }
            _ => match &mut last_sealed {
                Some((s, spent)) => {
                    let first = !*spent;
                    *spent |= from != STRANGER;
                    (s.clone(), !auth || first)
                }
                None => continue,
            },
        };
        count += 1;
        let v = dp.handle_tunnel(from, &mut dgram, now);
        if matches!(v, NetVerdict::Tun(_)) {
            assert!(from != STRANGER, "a stranger's datagram reached the TUN");
            assert!(
                may_pass,
                "an unsealed, altered or replayed datagram reached the TUN"
            );
        }
    }
    let s = dp.counters().snapshot();
    let drops: u64 = s.drops.values().sum();
    assert_eq!(s.tunnel_rx, count);
    assert_eq!(
        s.tunnel_rx + s.tun_rx,
        s.tun_tx_tun + s.tun_tx_peer + s.keepalive_pings_rx + s.keepalive_pongs_rx + drops,
        "unbalanced counters {s:?}"
    );
}

fn seal(sealer: &Sealer, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + inner.len() + sealer.trailer_len()];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    match sealer.seal(&mut buf, MsgType::Data, inner.len()) {
        Ok(n) => buf.truncate(n),
        Err(e) => panic!("sealing failed: {e}"),
    }
    buf
}
