//! `ptprobe serve`: the TCP and UDP servers a container runs, which name
//! themselves on every connection and datagram and log each one, so a test
//! can prove what reached them and what did not.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};
use testbed::dnswire::hex;

use crate::fail::{fail, Ctx, Res};

/// A wildcard socket of one family; v6 sockets are v6-only so the v4
/// wildcard can bind the same port next to them.
pub(crate) fn wildcard(v6: bool, ty: Type, port: u16) -> Res<Socket> {
    let (domain, ip) = if v6 {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let addr = SocketAddr::new(ip, port);
    let s = Socket::new(domain, ty, Some(proto)).ctx(|| format!("socket for {addr}"))?;
    if v6 {
        s.set_only_v6(true).ctx(|| "IPV6_V6ONLY".to_owned())?;
    }
    s.set_reuse_address(true)
        .ctx(|| "SO_REUSEADDR".to_owned())?;
    s.bind(&addr.into()).ctx(|| format!("bind {addr}"))?;
    Ok(s)
}

pub(crate) fn serve(name: &str, tcp_port: u16, udp_port: u16) -> Res<()> {
    let mut threads = Vec::new();
    for v6 in [false, true] {
        let s = wildcard(v6, Type::STREAM, tcp_port)?;
        s.listen(128)
            .ctx(|| format!("listen on tcp port {tcp_port}"))?;
        let listener = TcpListener::from(s);
        let tcp_name = name.to_owned();
        threads.push(thread::spawn(move || accept_loop(&listener, &tcp_name)));

        let udp = UdpSocket::from(wildcard(v6, Type::DGRAM, udp_port)?);
        let udp_name = name.to_owned();
        threads.push(thread::spawn(move || udp_loop(&udp, &udp_name)));
    }
    println!("ready name={name} tcp={tcp_port} udp={udp_port}");
    for t in threads {
        if t.join().is_err() {
            return fail("a server thread panicked");
        }
    }
    Ok(())
}

pub(crate) fn accept_loop(listener: &TcpListener, name: &str) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                println!("tcp from={peer}");
                let name = name.to_owned();
                thread::spawn(move || {
                    if let Err(e) = handle_tcp(stream, &name, peer) {
                        println!("tcp from={peer} error={e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("ptprobe: accept: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

pub(crate) fn handle_tcp(stream: TcpStream, name: &str, peer: SocketAddr) -> Res<()> {
    let idle = Some(Duration::from_secs(30));
    stream.set_read_timeout(idle).ctx(|| "timeout".to_owned())?;
    stream
        .set_write_timeout(idle)
        .ctx(|| "timeout".to_owned())?;
    let mut out = stream.try_clone().ctx(|| "clone".to_owned())?;
    out.write_all(format!("{name}\n").as_bytes())
        .ctx(|| "greeting".to_owned())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .ctx(|| "reading the command".to_owned())?;
    match line.trim() {
        "hello" => {
            out.write_all(format!("peer {peer}\n").as_bytes())
                .ctx(|| "hello reply".to_owned())?;
        }
        "sink" => {
            let (hash, n) = hash_reader(&mut reader)?;
            out.write_all(format!("{hash} {n}\n").as_bytes())
                .ctx(|| "sink reply".to_owned())?;
            println!("tcp from={peer} sink bytes={n} sha256={hash}");
        }
        "echo" => {
            io::copy(&mut reader, &mut out).ctx(|| "echo".to_owned())?;
        }
        _ => {}
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

pub(crate) fn hash_reader(r: &mut impl Read) -> Res<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(format!("reading data after {n} bytes: {e}")),
        }
    }
    Ok((hex(&h.finalize()), n))
}

pub(crate) fn udp_loop(sock: &UdpSocket, name: &str) {
    let mut buf = [0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                println!("udp from={from} len={n}");
                if let Err(e) = sock.send_to(name.as_bytes(), from) {
                    println!("udp from={from} error={e}");
                }
            }
            Err(e) => {
                eprintln!("ptprobe: udp recv: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
