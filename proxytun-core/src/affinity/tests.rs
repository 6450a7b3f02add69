//! Pins: kept, refreshed and expired by time; re-chosen when the instance
//! leaves or its node is down; bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;
use crate::policy::Balancer;
use crate::table::TableBuilder;

const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50103);
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 30, 0, 1));
const TTL: Duration = Duration::from_secs(60);

fn client(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 18, 0, 100 + n))
}

/// `a/web` with instances `a/web/<n>` for each n of `numbers`, the odd
/// ones on a peer.
fn table(numbers: &[u8]) -> Table {
    let mut b = TableBuilder::new(
        "10.30.0.0/16".parse().unwrap(),
        "fdff:30::/112".parse().unwrap(),
    );
    let web = b.service(
        "a/web",
        Ipv4Addr::new(10, 30, 0, 1),
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 1),
    );
    b.affinity(web, TTL);
    for &n in numbers {
        let loc = if n % 2 == 1 {
            Location::Remote(PEER)
        } else {
            Location::Local
        };
        b.instance(
            web,
            &format!("a/web/{n}"),
            Ipv4Addr::new(10, 18, 0, n),
            Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, u16::from(n)),
            Ipv4Addr::new(10, 30, 1, n),
            Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x100 + u16::from(n)),
            loc,
        );
    }
    b.build().unwrap()
}

/// One new flow from `client` with every node up (or the peer `down`).
fn flow(
    a: &mut Affinity,
    b: &mut Balancer,
    t: &Table,
    c: IpAddr,
    now: Instant,
    down: bool,
) -> (String, Choice) {
    let svc = t.services().next().unwrap();
    let cost = |l: Location| match l {
        Location::Remote(_) if down => None,
        _ => Some(0),
    };
    let choice = a
        .choose(VIP, c, TTL, now, t, svc, cost, || {
            b.round_robin(svc, t, cost)
        })
        .unwrap();
    (
        t.instance(choice.instance()).unwrap().name.to_string(),
        choice,
    )
}

#[test]
fn a_client_stays_with_its_instance_and_clients_still_rotate() {
    let t = table(&[0, 1]);
    let (mut a, mut b) = (Affinity::new(100), Balancer::default());
    let now = Instant::now();
    let first: Vec<String> = (0..2)
        .map(|n| flow(&mut a, &mut b, &t, client(n), now, false).0)
        .collect();
    assert_eq!(first, ["a/web/0", "a/web/1"], "new clients are balanced");
    for round in 0..5 {
        for n in 0..2 {
            let (name, choice) = flow(&mut a, &mut b, &t, client(n), now, false);
            assert_eq!(name, first[usize::from(n)], "client {n}, round {round}");
            assert!(matches!(choice, Choice::Pinned(_)));
        }
    }
    assert_eq!(a.len(), 2);
}

#[test]
fn pins_expire_after_the_timeout_and_each_flow_refreshes_it() {
    let t = table(&[0, 1]);
    let (mut a, mut b) = (Affinity::new(100), Balancer::default());
    let t0 = Instant::now();
    assert_eq!(flow(&mut a, &mut b, &t, client(0), t0, false).0, "a/web/0");
    // A flow every 50 s keeps the pin alive well past one timeout.
    for k in 1..=4u64 {
        let at = t0 + Duration::from_secs(50 * k);
        assert_eq!(
            flow(&mut a, &mut b, &t, client(0), at, false).0,
            "a/web/0",
            "at {k}"
        );
    }
    // 61 s of silence: the pin is gone, round robin picks the next one.
    let later = t0 + Duration::from_secs(200 + 61);
    let (name, choice) = flow(&mut a, &mut b, &t, client(0), later, false);
    assert_eq!(name, "a/web/1");
    assert!(matches!(choice, Choice::Picked(_)));
    a.purge(later + TTL);
    assert!(a.is_empty());
}

#[test]
fn a_gone_or_unreachable_instance_is_chosen_again_and_re_pinned() {
    let (mut a, mut b) = (Affinity::new(100), Balancer::default());
    let now = Instant::now();
    let t = table(&[0, 1, 2]);
    flow(&mut a, &mut b, &t, client(0), now, false);
    assert_eq!(flow(&mut a, &mut b, &t, client(1), now, false).0, "a/web/1");
    // a/web/1's node goes down: client 1 moves to an instance that is up
    // and stays there once the node is back.
    let moved = flow(&mut a, &mut b, &t, client(1), now, true).0;
    assert_ne!(moved, "a/web/1");
    assert_eq!(flow(&mut a, &mut b, &t, client(1), now, false).0, moved);
    // Its new instance is detached (a new table without it): re-chosen.
    let gone: u8 = moved.rsplit('/').next().unwrap().parse().unwrap();
    let left: Vec<u8> = [0, 1, 2].into_iter().filter(|&n| n != gone).collect();
    let t2 = table(&left);
    let again = flow(&mut a, &mut b, &t2, client(1), now, false).0;
    assert_ne!(again, moved);
    assert_eq!(flow(&mut a, &mut b, &t2, client(1), now, false).0, again);
}

#[test]
fn a_full_table_balances_without_pinning_until_pins_expire() {
    let t = table(&[0, 1]);
    let (mut a, mut b) = (Affinity::new(2), Balancer::default());
    let now = Instant::now();
    flow(&mut a, &mut b, &t, client(0), now, false);
    flow(&mut a, &mut b, &t, client(1), now, false);
    let (_, third) = flow(&mut a, &mut b, &t, client(2), now, false);
    assert!(matches!(third, Choice::Unpinned(_)), "{third:?}");
    assert_eq!(a.len(), 2);
    // Once the two pins expired, the third client gets one.
    let (_, later) = flow(
        &mut a,
        &mut b,
        &t,
        client(2),
        now + TTL + Duration::from_secs(1),
        false,
    );
    assert!(matches!(later, Choice::Picked(_)), "{later:?}");
    assert_eq!(a.len(), 1);
}
