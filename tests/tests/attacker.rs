//! An attacker on the underlay of a cluster with per-node keys
//! (`tunnel.keys = "node"`): it records the tunnel datagrams between nodes
//! a and b (handshakes included) on the switch, then replays, reorders,
//! truncates and forges them, spoofing a's address and MAC, before and
//! after a restart of b, a rotation of a's key and the removal of a's key
//! from b's membership. Each attempt must be counted by its reason on b
//! and nothing may reach the server container on b (its log, and b's
//! `tun_tx_tun`, do not move). docs/security.md, "Per-node keys: attacks
//! tried", tabulates what is sent here.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use proxytun_core::tunnel::{HEADER_LEN, TAG_LEN};
use testbed::cmd::{self, Bg};
use testbed::udpwire::ipv4_udp;
use testbed::{eventually, Cluster, Container, Deployment, Node, NodeKeys, TUNNEL_PORT};

const PROPAGATION: Duration = Duration::from_secs(20);
/// Low 3 bits of the type byte (header offset 3).
const TYPE_DATA: u8 = 1;
const TYPE_START: u8 = 3;
const TYPE_ANSWER: u8 = 4;
/// The most datagrams one attack step sends.
const MAX_SEND: usize = 64;

/// Sends raw Ethernet frames, one per hex line of the file argv[2], out of
/// interface argv[1] (AF_PACKET), 2 ms apart; prints how many it sent.
const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
n = 0
for line in open(sys.argv[2]):
    line = line.strip()
    if line:
        s.send(bytes.fromhex(line))
        n += 1
        time.sleep(0.002)
print("sent=%d" % n)
"#;

/// One recorded tunnel datagram from a to b: its Ethernet header (a's MAC
/// to b's) and its UDP payload.
#[derive(Clone, Debug)]
struct Dgram {
    eth: [u8; 14],
    payload: Vec<u8>,
}

impl Dgram {
    fn kind(&self) -> u8 {
        self.payload.get(3).map_or(0, |t| t & 0x07)
    }

    fn counter(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.payload[12..20]);
        u64::from_be_bytes(c)
    }

    /// The same datagram with `payload` instead (same addresses).
    fn with(&self, payload: Vec<u8>) -> Dgram {
        Dgram {
            eth: self.eth,
            payload,
        }
    }

    /// The datagram under a counter b has not seen, so that the replay
    /// window lets it through to the tag check.
    fn fresh_counter(&self, bump: u64) -> Dgram {
        let mut p = self.payload.clone();
        p[12..20].copy_from_slice(&(self.counter() + bump).to_be_bytes());
        self.with(p)
    }

    /// The whole frame: Ethernet, IPv4 192.0.2.1 -> 192.0.2.2 (a's address,
    /// spoofed), UDP tunnel port to tunnel port with checksum 0.
    fn frame(&self) -> Vec<u8> {
        let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        let mut f = self.eth.to_vec();
        f.extend_from_slice(&ipv4_udp(a, TUNNEL_PORT, b, TUNNEL_PORT, &self.payload));
        f
    }
}

/// The attacker: it sits in the switch namespace, captures on a's port of
/// the bridge (`pa`) and injects on b's (`pb`), so b receives the frames
/// as if from a.
struct Attacker {
    switch: String,
    dir: tempfile::TempDir,
    dump: Option<Bg>,
}

impl Attacker {
    /// Starts recording every tunnel datagram through a's switch port.
    fn record(c: &Cluster) -> Result<Attacker> {
        let switch = format!("{}sw", c.prefix());
        let dir = tempfile::tempdir()?;
        let pcap = dir.path().join("tunnel.pcap");
        let port = TUNNEL_PORT.to_string();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &switch, "tcpdump", "-i", "pa", "-n", "-U"])
            .arg("--immediate-mode")
            .args(["-s", "0", "-w", &pcap.to_string_lossy()])
            .args(["udp", "port", &port]);
        let mut dump = Bg::spawn(&mut cmd)?;
        dump.wait_for("listening", Duration::from_secs(5))?;
        Ok(Attacker {
            switch,
            dir,
            dump: Some(dump),
        })
    }

    /// Stops the capture and returns the datagrams from a to b, in order.
    fn recorded(&mut self) -> Result<Vec<Dgram>> {
        std::thread::sleep(Duration::from_millis(1000));
        let mut said = String::new();
        if let Some(mut d) = self.dump.take() {
            d.stop();
            said = d.output();
        }
        let bytes = std::fs::read(self.dir.path().join("tunnel.pcap"))?;
        let dgrams = parse_pcap(&bytes)?;
        if dgrams.is_empty() {
            bail!(
                "no datagram from a to b in {} captured bytes; tcpdump: {said}",
                bytes.len()
            );
        }
        Ok(dgrams)
    }

    /// Injects `dgrams` (at most [`MAX_SEND`]) on b's switch port.
    fn send(&self, dgrams: &[Dgram]) -> Result<()> {
        if dgrams.len() > MAX_SEND {
            bail!(
                "{} datagrams: more than the {MAX_SEND} one step may send",
                dgrams.len()
            );
        }
        let list = self.dir.path().join("frames.hex");
        let hex: Vec<String> = dgrams.iter().map(|d| hex(&d.frame())).collect();
        std::fs::write(&list, hex.join("\n"))?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.switch, "python3", "-c", SENDER, "pb"])
            .arg(&list);
        let out = cmd::run(&mut cmd, Duration::from_secs(20))?.ok()?;
        let want = format!("sent={}", dgrams.len());
        if !out.stdout.contains(&want) {
            bail!("sender: {}", out.stdout);
        }
        Ok(())
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        if let Some(mut d) = self.dump.take() {
            d.stop();
        }
    }
}

/// The UDP datagrams 192.0.2.1 -> 192.0.2.2 of an Ethernet pcap file.
fn parse_pcap(b: &[u8]) -> Result<Vec<Dgram>> {
    let u32_at = |i: usize| -> Result<usize> {
        let w = b.get(i..i + 4).context("pcap cut short")?;
        Ok(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    if b.len() < 24 || u32_at(0)? != 0xa1b2_c3d4 || u32_at(20)? != 1 {
        bail!("not a little-endian Ethernet pcap ({} bytes)", b.len());
    }
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let caplen = u32_at(i + 8)?;
        let f = b.get(i + 16..i + 16 + caplen).context("record cut short")?;
        i += 16 + caplen;
        if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        if f[26..30] != [192, 0, 2, 1] || f[30..34] != [192, 0, 2, 2] {
            continue;
        }
        let Some(payload) = f.get(14 + ihl + 8..) else {
            continue;
        };
        let mut eth = [0u8; 14];
        eth.copy_from_slice(&f[..14]);
        out.push(Dgram {
            eth,
            payload: payload.to_vec(),
        });
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn counter(node: &Node, name: &str) -> u64 {
    node.counters()
        .ok()
        .and_then(|c| c[name].as_u64())
        .unwrap_or(0)
}

/// A cluster with node keys, a server on b behind a ServiceIP and a client
/// on a, and an attacker that recorded a fresh handshake of a (a restarted
/// under the capture) and a's traffic to the server.
struct Scene {
    c: Cluster,
    web: Container,
    client: Container,
    d: Deployment,
    attacker: Attacker,
    rec: Vec<Dgram>,
}

impl Scene {
    fn new(test: &str) -> Scene {
        let mut c = Cluster::two_nodes_with(test, |cfg| {
            cfg.node_keys = Some(NodeKeys::default());
        })
        .expect("cluster");
        let mut attacker = Attacker::record(&c).expect("tcpdump on the switch");
        // A restart loses a's sessions: its next datagram to b needs a
        // handshake, recorded with the rest.
        c.a.restart().expect("restart a");
        let mut web = c.container("web").expect("container");
        web.serve("web-b").expect("serve");
        let d = c.deploy("shop/web", &[(&c.b, &web, 1)]).expect("deploy");
        let (client, _) = c.client(&c.a, "cl", 1).expect("client");
        eventually(PROPAGATION, || client.udp_hello(d.rr.v4)).expect("a reaches b");
        for _ in 0..8 {
            client.udp_hello(d.rr.v4).expect("udp hello");
        }
        client.tcp_hello(d.rr.v4).expect("tcp hello");
        let rec = attacker.recorded().expect("capture");
        let kinds = |k: u8| rec.iter().filter(|d| d.kind() == k).count();
        eprintln!(
            "recorded a -> b: {} datagrams, {} data, {} starts, {} answers",
            rec.len(),
            kinds(TYPE_DATA),
            kinds(TYPE_START),
            kinds(TYPE_ANSWER)
        );
        assert!(kinds(TYPE_DATA) >= 10, "too little data recorded");
        assert!(kinds(TYPE_START) >= 1, "no handshake start recorded");
        Scene {
            c,
            web,
            client,
            d,
            attacker,
            rec,
        }
    }

    fn data(&self) -> Vec<Dgram> {
        let d: Vec<Dgram> = self
            .rec
            .iter()
            .filter(|d| d.kind() == TYPE_DATA)
            .cloned()
            .collect();
        d[..d.len().min(MAX_SEND / 2)].to_vec()
    }

    fn start(&self) -> Dgram {
        self.rec
            .iter()
            .rev()
            .find(|d| d.kind() == TYPE_START)
            .cloned()
            .expect("a recorded start")
    }

    /// Sends `dgrams` to b as a, and requires that b counts exactly
    /// `want` (reason, delta) and that nothing reaches the server on b.
    fn attack(&self, what: &str, dgrams: &[Dgram], want: &[(&str, u64)]) {
        self.attack_as(what, dgrams, want, true);
    }

    /// [`Scene::attack`]; with `exact` false, at least `want` (a's own
    /// refused keepalives and starts may add to the same reasons).
    fn attack_as(&self, what: &str, dgrams: &[Dgram], want: &[(&str, u64)], exact: bool) {
        let b = &self.c.b;
        let before: Vec<u64> = want.iter().map(|(r, _)| b.drops(r).unwrap_or(0)).collect();
        let tun0 = counter(b, "tun_tx_tun");
        let log0 = self.web.server_log();
        self.attacker
            .send(dgrams)
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        eventually(Duration::from_secs(5), || {
            let now: Vec<u64> = want.iter().map(|(r, _)| b.drops(r).unwrap_or(0)).collect();
            let deltas: Vec<u64> = now
                .iter()
                .zip(&before)
                .map(|(n, b)| n.saturating_sub(*b))
                .collect();
            if deltas.iter().zip(want).all(|(d, (_, w))| d >= w) {
                Ok(deltas)
            } else {
                bail!("{what}: deltas {deltas:?}, want {want:?}")
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(200));
        let now: Vec<u64> = want.iter().map(|(r, _)| b.drops(r).unwrap_or(0)).collect();
        let deltas: Vec<u64> = now
            .iter()
            .zip(&before)
            .map(|(n, b)| n.saturating_sub(*b))
            .collect();
        let wanted: Vec<u64> = want.iter().map(|(_, w)| *w).collect();
        if exact {
            assert_eq!(deltas, wanted, "{what}: counted by reason {want:?}");
        }
        assert_eq!(
            counter(b, "tun_tx_tun"),
            tun0,
            "{what}: b wrote packets to its TUN"
        );
        assert_eq!(self.web.server_log(), log0, "{what}: reached the server");
        eprintln!(
            "{what}: {} sent, b counted {deltas:?} of {want:?}",
            dgrams.len()
        );
    }

    /// a's traffic to the server works (eventually: sessions come back).
    fn recovers(&self, what: &str) {
        eventually(PROPAGATION, || self.client.udp_hello(self.d.rr.v4))
            .unwrap_or_else(|e| panic!("{what}: a does not reach b again: {e:#}"));
    }
}

#[test]
fn recorded_traffic_replayed_reordered_truncated_forged() {
    let s = Scene::new("recorded");
    let data = s.data();
    let n = data.len() as u64;

    // 2. Replay: the same session, counters already seen.
    s.attack("replay", &data, &[("replay", n)]);
    // 3. Reorder: backwards, and interleaved, all within the window.
    let mut back = data.clone();
    back.reverse();
    s.attack("reorder (backwards)", &back, &[("replay", n)]);
    let mut odd_even: Vec<Dgram> = data.iter().skip(1).step_by(2).cloned().collect();
    odd_even.extend(data.iter().step_by(2).cloned());
    s.attack("reorder (odd then even)", &odd_even, &[("replay", n)]);

    // 4. Truncate: below the header, the header alone, header and a short
    //    tag; cut in half under an unseen counter (auth_failed) or under
    //    its own counter (replay comes first).
    let big = data
        .iter()
        .max_by_key(|d| d.payload.len())
        .expect("data")
        .clone();
    let cut = |d: &Dgram, len: usize| d.with(d.payload[..len].to_vec());
    s.attack(
        "truncate below the tag",
        &[
            cut(&big, 10),
            cut(&big, HEADER_LEN),
            cut(&big, HEADER_LEN + TAG_LEN - 1),
        ],
        &[("tunnel_too_short", 3)],
    );
    let fresh = big.fresh_counter(1000);
    s.attack(
        "truncate (fresh counter)",
        &[
            cut(&fresh, big.payload.len() / 2),
            cut(&fresh, HEADER_LEN + TAG_LEN),
        ],
        &[("auth_failed", 2)],
    );
    s.attack(
        "truncate (own counter)",
        &[cut(&big, big.payload.len() / 2)],
        &[("replay", 1)],
    );

    // 5. Forge: flipped bytes (payload, tag, session) under unseen
    //    counters; a garbage start; a start of the wrong length; the
    //    recorded start again (its timestamp is not newer).
    let flip = |d: &Dgram, at: usize| {
        let mut p = d.payload.clone();
        p[at] ^= 0x40;
        d.with(p)
    };
    let f1 = big.fresh_counter(2000);
    let f2 = big.fresh_counter(2001);
    let f3 = big.fresh_counter(2002);
    s.attack(
        "flipped bytes",
        &[
            flip(&f1, HEADER_LEN + 5),
            flip(&f2, f2.payload.len() - 1),
            flip(&f3, 3 + 2),
        ],
        // The third one names a session b does not hold.
        &[("auth_failed", 2), ("no_session", 1)],
    );
    let start = s.start();
    let mut garbage = start.payload.clone();
    for (i, b) in garbage.iter_mut().enumerate().skip(HEADER_LEN) {
        *b = (i as u8).wrapping_mul(37);
    }
    s.attack(
        "garbage handshake start",
        &[
            start.with(garbage.clone()),
            start.with(garbage[..garbage.len() - 7].to_vec()),
            flip(&start, HEADER_LEN + 40),
        ],
        &[("handshake_failed", 3)],
    );
    s.attack(
        "recorded handshake start replayed",
        &[start.clone(), start],
        &[("handshake_replay", 2)],
    );
    // None of it disturbed the real traffic.
    s.client.udp_hello(s.d.rr.v4).expect("a still reaches b");
    s.client
        .tcp_hello(s.d.rr.v4)
        .expect("a still reaches b (TCP)");
}

#[test]
fn restarted_rotated_removed_refuse_old_recordings() {
    let mut s = Scene::new("restarts");
    let data = s.data();
    let n = data.len() as u64;
    let start = s.start();

    // 6. b restarts: every session is gone. The recorded data is
    //    `no_session`; the recorded start is accepted again (b lost the
    //    last timestamp) and answered, but the data recorded after it
    //    still does not verify under the answer's new keys.
    s.c.b.restart().expect("restart b");
    // b has no session to a, so it starts one itself at once: the real
    // traffic comes back without the attacker's help. (Then a keepalive
    // period, so that none of a's is still in flight on the old session.)
    s.recovers("after b's restart");
    std::thread::sleep(Duration::from_millis(1500));
    s.attack("replay after b's restart", &data, &[("no_session", n)]);
    let answered0 = counter(&s.c.b, "handshakes_answered");
    let a_failed0 = s.c.a.drops("handshake_failed").unwrap_or(0);
    let hs_replay0 = s.c.b.drops("handshake_replay").unwrap_or(0);
    s.attack(
        "recorded start after b's restart",
        std::slice::from_ref(&start),
        &[],
    );
    let answered = eventually(Duration::from_secs(5), || {
        let a = counter(&s.c.b, "handshakes_answered") - answered0;
        let r = s.c.b.drops("handshake_replay")? - hs_replay0;
        if a + r == 1 {
            Ok(a == 1)
        } else {
            bail!("answered {a}, handshake_replay {r}")
        }
    })
    .expect("the replayed start is answered or refused, once");
    eprintln!("recorded start after b's restart: answered {answered}");
    if answered {
        // The answer goes to the real a, which asked for nothing.
        eventually(Duration::from_secs(5), || {
            let f = s.c.a.drops("handshake_failed")?;
            if f > a_failed0 {
                Ok(())
            } else {
                bail!("a's handshake_failed {a_failed0} -> {f}")
            }
        })
        .expect("a refuses the answer to a start it did not send");
    }
    // Answered: the recorded session is pending under the answer's fresh
    // keys, which the recording cannot match. Refused: nothing pending.
    let reason = if answered {
        "auth_failed"
    } else {
        "no_session"
    };
    s.attack("replay after the replayed start", &data, &[(reason, n)]);
    s.recovers("after the replayed start");

    // 7. a gets a new key; until b lists it, a's real starts are
    //    `unknown_key`; then old recordings are refused too.
    let path = s.c.a.node_key_path();
    let fresh = path.with_extension("new");
    s.c.a
        .cli_ok(&["keygen", "--node", "--out", &fresh.to_string_lossy()])
        .expect("keygen");
    std::fs::rename(&fresh, &path).expect("new key in place");
    let new_key = s.c.a.public_key().expect("new key");
    let unknown0 = s.c.b.drops("unknown_key").unwrap_or(0);
    s.c.a.restart().expect("restart a under its new key");
    let _ = s.client.udp_hello(s.d.rr.v4);
    eventually(Duration::from_secs(10), || {
        let u = s.c.b.drops("unknown_key")?;
        if u > unknown0 {
            Ok(u)
        } else {
            bail!("unknown_key {unknown0} -> {u}")
        }
    })
    .expect("a's starts under a key b does not list are refused");
    s.c.b
        .peer_add_with_key("a", s.c.a.endpoint(), &new_key)
        .expect("b lists a's new key");
    s.recovers("after the rotation");
    s.attack(
        "old recordings after the rotation",
        &[data.clone(), vec![start.clone()]].concat(),
        &[("no_session", n), ("unknown_key", 1)],
    );

    // 8. b lists another key for a: a's sessions are cut, its datagrams
    //    and its starts are refused.
    let stranger = "11".repeat(32);
    s.c.b
        .peer_add_with_key("a", s.c.a.endpoint(), &stranger)
        .expect("replace a's key");
    s.attack_as(
        "old recordings with a's key removed",
        &[data, vec![start]].concat(),
        &[("no_session", n), ("unknown_key", 1)],
        false,
    );
    let log0 = s.web.server_log();
    let no_session0 = s.c.b.drops("no_session").unwrap_or(0);
    let unknown0 = s.c.b.drops("unknown_key").unwrap_or(0);
    let _ = s.client.udp_hello(s.d.rr.v4);
    assert_eq!(s.web.server_log(), log0, "a reached b with its key removed");
    let refused = s.c.b.drops("no_session").unwrap_or(0) - no_session0
        + s.c.b.drops("unknown_key").unwrap_or(0)
        - unknown0;
    assert!(refused > 0, "b counted none of a's real datagrams");
    s.c.b
        .peer_add_with_key("a", s.c.a.endpoint(), &new_key)
        .expect("restore a's key");
    s.recovers("a's key restored");
}
