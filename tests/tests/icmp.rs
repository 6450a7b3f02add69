//! ICMP errors travel back through the ServiceIP rewrite: a connected UDP
//! socket that sends to a ServiceIP port nobody listens on gets
//! ECONNREFUSED, whether round robin chose the instance on the client's
//! node (the instance's port unreachable goes TUN -> TUN) or the one on
//! the other node (back through the server node's reply cache and the
//! tunnel), over IPv4 and IPv6. Without the translation the client never
//! sees the error and times out.

use std::net::IpAddr;
use std::time::Duration;

use testbed::{eventually, Cluster, Container};

/// A port no test server listens on.
const CLOSED_PORT: u16 = 7009;

/// Sends one datagram from a fresh connected UDP socket (so a fresh flow)
/// and reports what `recv` said: `refused`, `timeout` or `data`.
const SCRIPT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((ip, port))
s.send(b"hello?")
try:
    s.recv(100)
    print("data")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#;

fn udp_to_closed_port(client: &Container, ip: IpAddr) -> String {
    let out = client
        .ns()
        .exec_ok(
            "python3",
            &["-c", SCRIPT, &ip.to_string(), &CLOSED_PORT.to_string()],
            Duration::from_secs(10),
        )
        .expect("python3 udp probe");
    out.stdout.trim().to_owned()
}

#[test]
fn port_unreachable_reaches_the_client_through_a_service_ip() {
    let c = Cluster::two_nodes("icmp").expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cla", 1).expect("client a");
    // Let IPv6 DAD finish, and prove the ServiceIP works at all.
    eventually(Duration::from_secs(10), || client.udp_hello(d.rr.v6)).expect("v6 up");
    client.udp_hello(d.rr.v4).expect("v4 up");

    for ip in [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)] {
        // Round robin alternates new flows between web/1 (node a, the
        // client's node) and web/2 (node b): four flows cover both twice.
        let got: Vec<String> = (0..4).map(|_| udp_to_closed_port(&client, ip)).collect();
        eprintln!("{ip}: {got:?}");
        assert!(
            got.iter().all(|g| g == "refused"),
            "{ip}: every datagram to a closed port must be refused, got {got:?}\nnode a: {}\nnode b: {}",
            c.a.log_tail(20),
            c.b.log_tail(20)
        );
    }
    // The errors matched their flows: none was dropped for want of one.
    for node in c.nodes() {
        assert_eq!(node.drops("icmp_error_no_flow").expect("counters"), 0);
    }
}
