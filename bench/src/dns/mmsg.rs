//! The load tool's socket: one connected non-blocking UDP socket whose
//! queries go out with `sendmmsg` and answers come in with `recvmmsg`, up
//! to [`BATCH`] at a time (two syscalls shared by up to 64 queries), kept
//! apart from the load loop that decides what to send.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

/// Queries per `sendmmsg` / answers per `recvmmsg`, at most.
pub(super) const BATCH: usize = 64;
/// Room for any answer we expect (they are under 150 bytes).
pub(super) const RECV_BUF: usize = 2048;
/// Room for any query we send.
pub(super) const SEND_BUF: usize = 300;

/// A connected non-blocking UDP socket with batch send and receive.
#[derive(Debug)]
pub(super) struct Io {
    sock: UdpSocket,
    /// The queries to send, filled by the caller before `send_batch`.
    pub(super) send: Vec<[u8; SEND_BUF]>,
    /// Their lengths.
    pub(super) send_len: [usize; BATCH],
    /// The answers `recv_batch` received.
    pub(super) recv: Vec<[u8; RECV_BUF]>,
    /// Their lengths.
    pub(super) recv_len: [usize; BATCH],
}

impl Io {
    /// A socket bound to loopback and connected to `target`.
    pub(super) fn connect(target: SocketAddr) -> Result<Io> {
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        };
        let sock = UdpSocket::bind(local).context("binding the load socket")?;
        sock.connect(target)
            .with_context(|| format!("connecting the load socket to {target}"))?;
        sock.set_nonblocking(true)
            .context("non-blocking load socket")?;
        // A larger receive buffer, so a burst of answers is not dropped by
        // our own socket (capped by net.core.rmem_max; best effort).
        let size: libc::c_int = 4 << 20;
        // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Io {
            sock,
            send: vec![[0; SEND_BUF]; BATCH],
            send_len: [0; BATCH],
            recv: vec![[0; RECV_BUF]; BATCH],
            recv_len: [0; BATCH],
        })
    }

    /// Sends `send[..n]`; returns how many left (0 when the buffer is full).
    pub(super) fn send_batch(&mut self, n: usize) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iov[i].iov_base = self.send[i].as_mut_ptr().cast();
            iov[i].iov_len = self.send_len[i];
            msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at `iov[..n]`, which point at buffers
        // of the stated lengths; all live across the call. The socket is
        // connected, so no addresses are needed.
        let r = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                // An ICMP error from an earlier send (server gone) shows up
                // here; the query it concerned is counted lost.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// Receives up to [`BATCH`] datagrams into `recv`; returns how many.
    pub(super) fn recv_batch(&mut self) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i].iov_base = self.recv[i].as_mut_ptr().cast();
            iov[i].iov_len = RECV_BUF;
            msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: as in `send_batch`; the kernel writes at most `iov_len`
        // bytes into each buffer and the lengths into `msgs`.
        let r = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        let n = r as usize;
        for (len, m) in self.recv_len.iter_mut().zip(&msgs[..n]) {
            *len = (m.msg_len as usize).min(RECV_BUF);
        }
        Ok(n)
    }
}
