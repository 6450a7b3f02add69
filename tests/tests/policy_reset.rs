//! Flows a policy change cuts are refused like a firewall's REJECT
//! (docs/isolation.md): a long-lived TCP connection from a client on node a
//! to a service on node b through its ServiceIP gets "connection reset" on
//! both ends, and a connected UDP socket gets the ICMP error's errno, well
//! before the clients' own timeouts, for IPv4 and IPv6.

use std::path::PathBuf;
use std::time::Duration;

use testbed::cmd::Bg;
use testbed::{Cluster, Container, Node, TCP_PORT, UDP_PORT};

/// The clients' own timeout: without an answer they would wait this long.
const CLIENT_TIMEOUT_SECS: u32 = 60;
/// How long the test waits for the clients and the server to see the end:
/// far below [`CLIENT_TIMEOUT_SECS`], so only an answer gets there in time.
const BOUND: Duration = Duration::from_secs(10);

/// A dual-stack server for `bank/api`: TCP on `TCP_PORT`, echoing lines and
/// writing `tick` every 200 ms on its own (so that it sends after the cut
/// too and learns of it), printing how each connection ended; UDP on
/// `UDP_PORT`, echoing.
const SERVER: &str = r#"
import errno, socket, sys, threading
port, uport = int(sys.argv[1]), int(sys.argv[2])
def dual(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port if kind == socket.SOCK_STREAM else uport))
    return s
def udp(u):
    while True:
        d, a = u.recvfrom(2048)
        u.sendto(d, a)
def conn(s, peer):
    s.settimeout(0.2)
    try:
        while True:
            try:
                d = s.recv(4096)
                if not d:
                    print("server eof", peer, flush=True)
                    return
                s.sendall(d)
            except socket.timeout:
                pass
            s.sendall(b"tick\n")
    except OSError as e:
        print("server error", errno.errorcode.get(e.errno, e.errno), peer, flush=True)
threading.Thread(target=udp, args=(dual(socket.SOCK_DGRAM),), daemon=True).start()
l = dual(socket.SOCK_STREAM)
l.listen(16)
print("ready", flush=True)
while True:
    s, a = l.accept()
    print("server conn", a[0], flush=True)
    threading.Thread(target=conn, args=(s, a[0]), daemon=True).start()
"#;

/// The client: one TCP connection and one connected UDP socket to
/// `ip`, both with a long timeout; proven to work, then `ready`; once the
/// trigger file exists, it keeps writing (a line every 200 ms, a datagram
/// every 200 ms) until an error, and prints `tcp <errno name>` and `udp
/// <errno name>` (`timeout` for its own timeout).
const CLIENT: &str = r#"
import errno, os, socket, sys, time
ip, port, uport, trigger, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
def name(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return errno.errorcode.get(e.errno, str(e))
s = socket.create_connection((ip, port), timeout=limit)
f = s.makefile("rb")
s.sendall(b"hello\n")
while f.readline() != b"hello\n":
    pass
u = socket.socket(fam, socket.SOCK_DGRAM)
u.settimeout(limit)
u.connect((ip, uport))
u.send(b"x")
u.recv(100)
print("ready", flush=True)
while not os.path.exists(trigger):
    time.sleep(0.05)
try:
    while True:
        s.sendall(b"ping\n")
        if not f.readline():
            print("tcp eof", flush=True)
            break
        time.sleep(0.2)
except OSError as e:
    print("tcp", name(e), flush=True)
try:
    while True:
        u.send(b"x")
        u.recv(100)
        time.sleep(0.2)
except OSError as e:
    print("udp", name(e), flush=True)
print("done", flush=True)
"#;

fn both(c: &Cluster, args: &[&str]) {
    for n in c.nodes() {
        n.cli_ok(args).expect("policy command");
    }
}

fn counter(n: &Node, name: &str) -> u64 {
    n.counters().expect("counters")[name].as_u64().unwrap_or(0)
}

/// Removes the trigger file also when the test fails.
struct Trigger(PathBuf);

impl Drop for Trigger {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn client(sc: &Container, ip: &str, trigger: &Trigger) -> Bg {
    let mut bg = sc
        .ns()
        .spawn(
            "python3",
            &[
                "-c",
                CLIENT,
                ip,
                &TCP_PORT.to_string(),
                &UDP_PORT.to_string(),
                &trigger.0.to_string_lossy(),
                &CLIENT_TIMEOUT_SECS.to_string(),
            ],
        )
        .expect("python client");
    bg.wait_for("ready", Duration::from_secs(15))
        .expect("the client's connection and datagram work before the change");
    bg
}

#[test]
fn policy_change_resets_cut_flows() {
    testbed::require_root().expect("root");
    let c = Cluster::two_nodes("prst").expect("cluster");
    let b1 = c.container("b1").expect("container");
    let mut server = b1
        .ns()
        .spawn(
            "python3",
            &["-c", SERVER, &TCP_PORT.to_string(), &UDP_PORT.to_string()],
        )
        .expect("python server");
    server
        .wait_for("ready", Duration::from_secs(10))
        .expect("server");
    let bank = c.deploy("bank/api", &[(&c.b, &b1, 1)]).expect("bank/api");
    // A shop instance registered on both nodes: node b knows its app.
    let sc = c.container("sc").expect("container");
    c.deploy("shop/client", &[(&c.a, &sc, 1)])
        .expect("shop/client");

    both(&c, &["policy", "isolate", "on"]);
    both(&c, &["policy", "allow", "shop", "bank/api"]);
    let trigger = Trigger(PathBuf::from(format!("/tmp/{}trigger", c.prefix())));
    let _ = std::fs::remove_file(&trigger.0);
    let mut v4 = client(&sc, &bank.rr.v4.to_string(), &trigger);
    let mut v6 = client(&sc, &bank.rr.v6.to_string(), &trigger);
    let before = (
        counter(&c.a, "policy_rejects_tcp_rst"),
        counter(&c.a, "policy_rejects_icmp"),
        counter(&c.b, "policy_rejects_tcp_rst"),
    );

    both(&c, &["policy", "revoke", "shop", "bank/api"]);
    std::fs::write(&trigger.0, b"go").expect("trigger");
    for (fam, bg) in [("v4", &mut v4), ("v6", &mut v6)] {
        bg.wait_for("done", BOUND)
            .unwrap_or_else(|e| panic!("{fam}: the client was not answered in time: {e:#}"));
        let out = bg.output();
        assert!(
            out.contains("tcp ECONNRESET"),
            "{fam}: the TCP client's next write is reset:\n{out}"
        );
        // ICMP "administratively prohibited": Linux reports v4 code 13 as
        // EHOSTUNREACH and v6 code 1 as EACCES on a connected socket.
        let want = if fam == "v4" {
            "udp EHOSTUNREACH"
        } else {
            "udp EACCES"
        };
        assert!(out.contains(want), "{fam}: {want}:\n{out}");
    }
    // The server learns too: its next tick is answered with a RST by its
    // own node, whose reply entries the change cut.
    server
        .wait_for("server error", BOUND)
        .expect("the server's connection ends");
    let deadline = std::time::Instant::now() + BOUND;
    while server.output().matches("server error ECONNRESET").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "both server connections (v4, v6) end with ECONNRESET:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = (
        counter(&c.a, "policy_rejects_tcp_rst"),
        counter(&c.a, "policy_rejects_icmp"),
        counter(&c.b, "policy_rejects_tcp_rst"),
    );
    assert!(
        after.0 > before.0 && after.1 > before.1 && after.2 > before.2,
        "node a answered with RSTs and ICMP errors, node b with RSTs: {before:?} -> {after:?}"
    );

    // A new connection is refused at once, not left to time out.
    let target = std::net::SocketAddr::new(bank.rr.v4.into(), TCP_PORT).to_string();
    let out = sc
        .probe(
            &[
                "tcp-hello",
                &target,
                "--timeout",
                &CLIENT_TIMEOUT_SECS.to_string(),
            ],
            BOUND,
        )
        .expect("a refused connect returns before the bound");
    assert!(!out.status.success(), "shop -> bank passed: {}", out.stdout);
}
