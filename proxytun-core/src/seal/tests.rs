//! Seal/open round trips, tampering, replay window and sessions.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::tunnel::parse;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn key() -> ClusterKey {
    ClusterKey::from_bytes([7u8; KEY_LEN])
}

fn sealer(p: Protection, session: u64) -> Sealer {
    Sealer::new(p, Some(&key()), session).unwrap()
}

/// A sealed datagram carrying `inner`.
fn sealed(s: &Sealer, msg: MsgType, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    let n = s.seal(&mut buf, msg, inner.len()).unwrap();
    buf.truncate(n);
    buf
}

fn open(o: &mut Opener, d: &mut [u8]) -> Result<usize, OpenError> {
    let h = parse(d).unwrap();
    o.open(PEER, d, &h)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

#[test]
fn round_trip_all_modes_and_lengths() {
    for p in [Protection::Plain, Protection::Auth, Protection::Encrypt] {
        let s = sealer(p, 42);
        let mut o = s.opener();
        for len in (0..=1500).step_by(7).chain([1, 16, 1400, 1500]) {
            let inner = pattern(len);
            let mut d = sealed(&s, MsgType::Data, &inner);
            assert_eq!(d.len(), HEADER_LEN + len + p.trailer_len());
            let h = parse(&d).unwrap();
            assert_eq!((h.protection, h.session, h.msg), (p, 42, MsgType::Data));
            assert_eq!(open(&mut o, &mut d), Ok(len), "{p} {len}");
            assert_eq!(d[HEADER_LEN..HEADER_LEN + len], inner[..], "{p} {len}");
        }
    }
}

#[test]
fn counters_start_at_one_and_increase() {
    let s = sealer(Protection::Auth, 1);
    for want in 1..=5u64 {
        let d = sealed(&s, MsgType::Keepalive, b"x");
        assert_eq!(parse(&d).unwrap().counter, want);
    }
}

#[test]
fn any_flipped_bit_fails() {
    for p in [Protection::Auth, Protection::Encrypt] {
        let s = sealer(p, 9);
        let good = sealed(&s, MsgType::Data, &pattern(60));
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut d = good.clone();
                d[byte] ^= 1 << bit;
                let mut o = s.opener();
                // A header flip may break the header itself (magic, version,
                // type, protection): that is a refusal too.
                let r = match parse(&d) {
                    Ok(h) => o.open(PEER, &mut d, &h).map(|_| ()),
                    Err(_) => Err(OpenError::AuthFailed),
                };
                assert!(r.is_err(), "{p}: bit {bit} of byte {byte} accepted");
                assert!(o.sessions_of(PEER).is_empty(), "failure left state");
            }
        }
        let mut d = good.clone();
        assert!(open(&mut s.opener(), &mut d).is_ok());
    }
}

#[test]
fn truncated_or_foreign_key_fails() {
    let s = sealer(Protection::Auth, 3);
    let good = sealed(&s, MsgType::Data, &pattern(40));
    let mut o = s.opener();
    let mut short = good[..good.len() - 1].to_vec();
    assert_eq!(open(&mut o, &mut short), Err(OpenError::AuthFailed));
    let mut tiny = good[..HEADER_LEN + 3].to_vec();
    assert_eq!(open(&mut o, &mut tiny), Err(OpenError::TooShort));
    let other = Sealer::new(Protection::Auth, Some(&ClusterKey::from_bytes([8; 32])), 3).unwrap();
    let mut d = good.clone();
    assert_eq!(
        open(&mut other.opener(), &mut d),
        Err(OpenError::AuthFailed)
    );
}

#[test]
fn replay_is_refused() {
    for p in [Protection::Auth, Protection::Encrypt] {
        let s = sealer(p, 5);
        let mut o = s.opener();
        let good = sealed(&s, MsgType::Data, &pattern(100));
        let mut d = good.clone();
        assert!(open(&mut o, &mut d).is_ok());
        let mut d = good.clone();
        assert_eq!(open(&mut o, &mut d), Err(OpenError::Replay));
    }
}

/// A session belongs to the address its first good datagram came from:
/// the same bytes from another member's address are a replay, before and
/// after the first delivery, and that session's later datagrams from the
/// other address too.
#[test]
fn a_session_is_bound_to_its_first_address() {
    let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8));
    for p in [Protection::Auth, Protection::Encrypt] {
        let s = sealer(p, 9);
        let mut o = s.opener();
        let first = sealed(&s, MsgType::Data, &pattern(60));
        let mut d = first.clone();
        assert!(open(&mut o, &mut d).is_ok());
        let mut d = first.clone();
        let h = parse(&d).unwrap();
        assert_eq!(o.open(other, &mut d, &h), Err(OpenError::Replay));
        let mut next = sealed(&s, MsgType::Data, &pattern(61));
        let h = parse(&next).unwrap();
        assert_eq!(o.open(other, &mut next, &h), Err(OpenError::Replay));
        assert!(o.sessions_of(other).is_empty());
        // The rightful address still gets the session's next datagram.
        let mut next = sealed(&s, MsgType::Data, &pattern(62));
        assert!(open(&mut o, &mut next).is_ok());
    }
}

#[test]
fn window_slides() {
    let s = sealer(Protection::Auth, 6);
    let all: Vec<Vec<u8>> = (0..3000)
        .map(|_| sealed(&s, MsgType::Data, b"abc"))
        .collect();
    let mut o = s.opener();
    // Counter 3000 first, then out of order within the window: each once.
    assert!(open(&mut o, &mut all[2999].clone()).is_ok());
    for i in [2998, 1500, 953, 2000] {
        assert!(
            open(&mut o, &mut all[i].clone()).is_ok(),
            "counter {}",
            i + 1
        );
        assert_eq!(open(&mut o, &mut all[i].clone()), Err(OpenError::Replay));
    }
    // Counter 952 = 3000 - 2048: just below the window.
    assert_eq!(open(&mut o, &mut all[951].clone()), Err(OpenError::Replay));
    assert_eq!(open(&mut o, &mut all[0].clone()), Err(OpenError::Replay));
}

#[test]
fn window_unit() {
    let mut w = ReplayWindow::default();
    assert!(!w.fresh(0));
    for c in [1, 5, 64, 65, 200] {
        assert!(w.fresh(c));
        w.mark(c);
        assert!(!w.fresh(c));
    }
    assert!(w.fresh(2) && w.fresh(199));
    // A jump far ahead forgets everything below the new window.
    w.mark(100_000);
    assert!(!w.fresh(200) && !w.fresh(100_000 - REPLAY_WINDOW));
    assert!(w.fresh(100_000 - REPLAY_WINDOW + 1) && w.fresh(99_999));
    // Bits of the old window never alias into the new one.
    for c in (100_000 - REPLAY_WINDOW + 1)..100_000 {
        assert!(w.fresh(c), "{c}");
    }
    assert_eq!(w.top(), 100_000);
}

#[test]
fn new_session_only_when_it_verifies() {
    let a = sealer(Protection::Auth, 100);
    let mut o = a.opener();
    assert!(open(&mut o, &mut sealed(&a, MsgType::Data, b"1")).is_ok());
    assert_eq!(o.sessions_of(PEER), vec![100]);
    // A forged datagram of a new session (wrong key) changes nothing.
    let forger = Sealer::new(
        Protection::Auth,
        Some(&ClusterKey::from_bytes([1; 32])),
        200,
    )
    .unwrap();
    for _ in 0..10 {
        let mut d = sealed(&forger, MsgType::Data, b"x");
        assert_eq!(open(&mut o, &mut d), Err(OpenError::AuthFailed));
    }
    assert_eq!(o.sessions_of(PEER), vec![100]);
    // The peer restarts with a new session: adopted once it verifies, and
    // datagrams of the old one still in flight are still accepted.
    let late_old = sealed(&a, MsgType::Data, b"late");
    let b = sealer(Protection::Auth, 300);
    assert!(open(&mut o, &mut sealed(&b, MsgType::Data, b"2")).is_ok());
    assert_eq!(o.sessions_of(PEER), vec![100, 300]);
    assert!(open(&mut o, &mut late_old.clone()).is_ok());
    assert_eq!(open(&mut o, &mut late_old.clone()), Err(OpenError::Replay));
    // At most MAX_SESSIONS_PER_PEER are kept; the least recently used go.
    for id in 400..410 {
        let c = sealer(Protection::Auth, id);
        assert!(open(&mut o, &mut sealed(&c, MsgType::Data, b"3")).is_ok());
        assert!(open(&mut o, &mut sealed(&b, MsgType::Data, b"b")).is_ok());
    }
    let kept = o.sessions_of(PEER);
    assert_eq!(kept.len(), MAX_SESSIONS_PER_PEER);
    assert!(kept.contains(&300) && kept.contains(&409));
    o.retain_peers(|_| false);
    assert!(o.sessions_of(PEER).is_empty());
}

#[test]
fn protection_must_match() {
    let modes = [Protection::Plain, Protection::Auth, Protection::Encrypt];
    for x in modes {
        for y in modes {
            let s = sealer(x, 1);
            let mut d = sealed(&s, MsgType::Data, &pattern(30));
            let r = open(&mut sealer(y, 2).opener(), &mut d);
            if x == y {
                assert!(r.is_ok());
            } else {
                assert_eq!(r, Err(OpenError::ProtectionMismatch(x)), "{x} on {y}");
            }
        }
    }
}

#[test]
fn domain_separation_between_modes() {
    // The same key and session give unrelated keys per mode: an auth tag
    // relabelled as encrypt (or back) never verifies.
    let a = sealer(Protection::Auth, 11);
    let mut d = sealed(&a, MsgType::Data, &[]);
    d[3] = (Protection::Encrypt.code() << 4) | (d[3] & 0x0f);
    assert_eq!(
        open(&mut sealer(Protection::Encrypt, 11).opener(), &mut d),
        Err(OpenError::AuthFailed)
    );
}

#[test]
fn encrypt_changes_bytes_auth_and_plain_do_not() {
    let inner = b"MARKER-0123456789-MARKER-0123456789".to_vec();
    for p in [Protection::Plain, Protection::Auth, Protection::Encrypt] {
        let d = sealed(&sealer(p, 1), MsgType::Data, &inner);
        let body = &d[HEADER_LEN..HEADER_LEN + inner.len()];
        let found = d.windows(6).any(|w| w == b"MARKER");
        match p {
            Protection::Encrypt => {
                assert_ne!(body, &inner[..]);
                assert!(!found);
            }
            Protection::Plain | Protection::Auth => assert_eq!(body, &inner[..]),
        }
        if p == Protection::Plain {
            // Plain: the header and the packet, nothing else.
            assert_eq!(d.len(), HEADER_LEN + inner.len());
        }
    }
}

#[test]
fn exhausted_counter_stops_sending() {
    let s = sealer(Protection::Auth, 1);
    s.counter.store(COUNTER_LIMIT, Ordering::Relaxed);
    let mut buf = [0u8; 64];
    assert_eq!(
        s.seal(&mut buf, MsgType::Data, 4),
        Err(SealError::Exhausted)
    );
    assert!(matches!(
        s.seal(&mut [0u8; HEADER_LEN + 4], MsgType::Data, 4),
        Err(SealError::TooSmall { need: 40, .. })
    ));
}

#[test]
fn keys_hex() {
    let k = ClusterKey::parse_hex(&format!("  {}\n", "aB".repeat(32))).unwrap();
    assert_eq!(k, ClusterKey::from_bytes([0xab; 32]));
    assert_eq!(k.to_hex(), "ab".repeat(32));
    assert_eq!(ClusterKey::parse_hex("abc"), Err(KeyError::BadLength(3)));
    assert_eq!(
        ClusterKey::parse_hex(&"zz".repeat(32)),
        Err(KeyError::NotHex)
    );
    assert_eq!(format!("{k:?}"), "ClusterKey(..)");
    assert!(Sealer::new(Protection::Auth, None, 1).is_err());
    let g = ClusterKey::generate(&SystemRandom::new()).unwrap();
    assert_ne!(g, ClusterKey::generate(&SystemRandom::new()).unwrap());
}

/// The v3 auth tag is AES-GCM's own tag over (header, packet as plaintext),
/// computed here independently with ring on a copy: the construction is
/// plain AES-GCM, and the packet goes out unchanged.
#[test]
fn auth_tag_is_aes_gcm_over_the_packet_as_plaintext() {
    let s = sealer(Protection::Auth, 0x5e55);
    for len in [0, 1, 64, 1400, 9000] {
        let inner = pattern(len);
        let d = sealed(&s, MsgType::Data, &inner);
        assert_eq!(
            &d[HEADER_LEN..HEADER_LEN + len],
            &inner[..],
            "packet unchanged"
        );
        let h = parse(&d).unwrap();
        let k = session_key(&key().prk(), Protection::Auth, 0x5e55).unwrap();
        let mut copy = inner.clone();
        let want = k
            .seal_in_place_separate_tag(nonce(h.counter), Aad::from(&d[..HEADER_LEN]), &mut copy)
            .unwrap();
        assert_eq!(&d[HEADER_LEN + len..], want.as_ref(), "len {len}");
        if len == 0 {
            continue; // with no packet, both constructions are GMAC over the header
        }
        // v2's construction (GMAC over header and packet) does not verify.
        let v2 = k
            .seal_in_place_separate_tag(
                nonce(h.counter),
                Aad::from(&d[..HEADER_LEN + len]),
                &mut [],
            )
            .unwrap();
        let mut forged = d.clone();
        forged[HEADER_LEN + len..].copy_from_slice(v2.as_ref());
        assert_eq!(
            open(&mut s.opener(), &mut forged),
            Err(OpenError::AuthFailed),
            "len {len}"
        );
    }
}
