//! The underlay path MTU to each peer, which the packet core needs to tell
//! a container that a packet is too big for the tunnel (see
//! `docs/fragments.md`).
//!
//! Asked of the kernel: a UDP socket connected to the peer (connecting
//! sends nothing) reports `IP_MTU` / `IPV6_MTU`, the MTU of the route to
//! it, lowered by any path MTU the kernel learned for that destination.
//! `tunnel.mtu` overrides it for every peer (an underlay whose routers
//! do not send "fragmentation needed", or a VPN below us). Runs on the
//! control path: on each new table and every [`REFRESH`].

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// How often the path MTUs are asked again, so a changed underlay (or a
/// path MTU the kernel learned) reaches the core without a new table.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The path MTU to each peer endpoint's address: `fixed` when set, else
/// the kernel's; a peer the kernel has no route to is left out (and not
/// checked), with a debug line.
pub fn path_mtus(peers: &[SocketAddr], fixed: Option<u16>) -> Vec<(IpAddr, u16)> {
    peers
        .iter()
        .filter_map(|&peer| match fixed {
            Some(m) => Some((peer.ip(), m)),
            None => match route_mtu(peer) {
                Ok(m) => Some((peer.ip(), m)),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "path MTU unknown; packets to this peer are not checked");
                    None
                }
            },
        })
        .collect()
}

/// The kernel's MTU for the route to `peer`.
fn route_mtu(peer: SocketAddr) -> io::Result<u16> {
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    socket.connect(&peer.into())?;
    let socket: UdpSocket = socket.into();
    let (level, opt) = if peer.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and a c_int with its length for the kernel
    // to write; an option it does not know is an error, not UB.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            opt,
            std::ptr::from_mut(&mut v).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u16::try_from(v).map_err(|_| io::Error::other(format!("path MTU {v} out of range")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_a_route_mtu_and_fixed_wins() {
        let lo: SocketAddr = "127.0.0.1:50103".parse().unwrap();
        let got = path_mtus(&[lo], None);
        assert_eq!(got.len(), 1);
        // Loopback's MTU is 65536 on Linux, which IP_MTU caps or reports;
        // either way it is no Ethernet MTU.
        assert!(got[0].1 >= 1500 || got.is_empty(), "{got:?}");
        assert_eq!(path_mtus(&[lo], Some(1400)), vec![(lo.ip(), 1400)]);
    }
}
