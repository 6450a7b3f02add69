//! The resolver under test, and queries to it over UDP and TCP.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use envmgr::model::{ServiceName, Snapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use mdns::{DnsServer, DnsSettings, DEFAULT_DOMAIN};
use tokio::sync::{mpsc, watch};

pub(crate) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The shared test snapshot, as the resolver's channel carries it.
pub(crate) fn snapshot(version: u64, services: &[(&str, &str, u32)]) -> Arc<Snapshot> {
    Arc::new(mdns::testing::snapshot(version, services))
}

pub(crate) fn settings(upstreams: Vec<SocketAddr>) -> DnsSettings {
    DnsSettings {
        domain: DEFAULT_DOMAIN.into(),
        listen: vec![LOOPBACK],
        port: 0,
        ttl: 5,
        upstreams,
        upstream_timeout: Duration::from_millis(400),
        max_forwards: 16,
        miss_wait: Duration::from_secs(2),
        tcp_idle_timeout: Duration::from_secs(5),
    }
}

pub(crate) struct Fixture {
    pub(crate) server: DnsServer,
    pub(crate) addr: SocketAddr,
    pub(crate) tx: watch::Sender<Arc<Snapshot>>,
}

pub(crate) fn start(settings: DnsSettings, snap: Arc<Snapshot>) -> Fixture {
    start_with(settings, snap, None)
}

pub(crate) fn start_with(
    settings: DnsSettings,
    snap: Arc<Snapshot>,
    misses: Option<mpsc::Sender<ServiceName>>,
) -> Fixture {
    let (tx, rx) = watch::channel(snap);
    let server = DnsServer::start(settings, rx, misses).expect("start");
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 1);
    assert_ne!(addrs[0].port(), 0);
    Fixture {
        addr: addrs[0],
        server,
        tx,
    }
}

pub(crate) fn query_msg(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg.to_vec().expect("encode")
}

pub(crate) fn udp_client() -> UdpSocket {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind client");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    sock
}

/// Sends raw bytes, returns the raw answer (None when nothing comes back
/// within `wait`).
pub(crate) fn udp_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = udp_client();
    sock.set_read_timeout(Some(wait)).expect("timeout");
    sock.send_to(bytes, addr).expect("send");
    let mut buf = vec![0u8; 65535];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

pub(crate) fn udp_query(
    addr: SocketAddr,
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> (Message, usize) {
    let bytes = udp_raw(
        addr,
        &query_msg(0x1234, name, qtype, edns),
        Duration::from_secs(5),
    )
    .expect("an answer");
    let len = bytes.len();
    let msg = Message::from_vec(&bytes).expect("decode answer");
    assert_eq!(msg.metadata.id, 0x1234);
    assert_eq!(msg.metadata.message_type, MessageType::Response);
    (msg, len)
}

pub(crate) fn tcp_query(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let q = query_msg(0x4321, name, qtype, None);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    stream.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("read length");
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).expect("read answer");
    let msg = Message::from_vec(&buf).expect("decode");
    assert_eq!(msg.metadata.id, 0x4321);
    msg
}

pub(crate) fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
