//! The daemon's listeners bound what a client may do with a request head,
//! against a real daemon: a client that sends half a head and then
//! nothing is disconnected after the header timeout (set to 1 s here
//! through `api.header_timeout_ms` and `admin.header_timeout_ms`), a
//! 64 KiB header gets 431 (or a closed connection), and a normal request
//! still works on the same daemon afterwards. The API's unix socket is
//! reached from here; the admin port is on the node's loopback, reached
//! from a thread inside its namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use testbed::Cluster;

/// The header timeout the test configures on both listeners.
const HEADER_TIMEOUT_MS: u64 = 1000;

/// How long the test waits for the server to close a half-sent request:
/// the timeout plus a wide margin, never the 30 s admin connection
/// lifetime (so a missing header timeout fails the test).
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// What the server sends on `s` until it closes; an error when it is
/// still open after [`CLOSE_WITHIN`].
fn until_closed(s: &mut impl Read) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the server closed with our bytes unread.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "the connection is still open after {CLOSE_WITHIN:?} (got {:?})",
                    String::from_utf8_lossy(&buf)
                )
            }
            Err(e) => return Err(e).context("reading"),
        }
    }
}

/// The three checks on one connection factory: half a head is closed
/// with no answer, a 64 KiB header is refused, a normal request answers.
fn check_listener<S: Read + Write>(
    what: &str,
    connect: &dyn Fn() -> Result<S>,
    normal: &[u8],
) -> Result<()> {
    // Half a request head, then silence: closed, no answer.
    let mut slow = connect()?;
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")?;
    let got = until_closed(&mut slow).with_context(|| format!("{what}: half a head"))?;
    if !got.is_empty() {
        bail!("{what}: half a head was answered: {got:?}");
    }

    // A 64 KiB header: 431, or the connection closed without an answer.
    let mut big = connect()?;
    let head = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may stop reading (and close) before all of it is
    // written: a failed write is fine, the answer is what counts.
    let _ = big.write_all(head.as_bytes());
    let got = until_closed(&mut big).with_context(|| format!("{what}: 64 KiB header"))?;
    if !(got.is_empty() || got.starts_with("HTTP/1.1 431")) {
        bail!(
            "{what}: a 64 KiB header got {:?}",
            got.lines().next().unwrap_or("")
        );
    }

    // And a normal request still works.
    let mut ok = connect()?;
    ok.write_all(normal)?;
    let got = until_closed(&mut ok).with_context(|| format!("{what}: a normal request"))?;
    if !got.starts_with("HTTP/1.1 200") {
        bail!("{what}: a normal request got {got:?}");
    }
    Ok(())
}

#[test]
fn listeners_close_slow_heads_and_refuse_huge_ones() {
    let mut c = Cluster::two_nodes("listenrs").expect("cluster");
    // Short header timeouts on node a, through its config file.
    let path = c.a.config_path().to_owned();
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replacen(
        "[api]\n",
        &format!("[api]\nheader_timeout_ms = {HEADER_TIMEOUT_MS}\n"),
        1,
    );
    let text = format!("{text}\n[admin]\nheader_timeout_ms = {HEADER_TIMEOUT_MS}\n");
    std::fs::write(&path, text).expect("write config");
    c.a.restart().expect("restart a with short header timeouts");

    // The API's unix socket.
    let socket = c.a.socket().to_owned();
    let connect_api = || -> Result<UnixStream> {
        let s = UnixStream::connect(&socket).context("connect to the API socket")?;
        s.set_read_timeout(Some(CLOSE_WITHIN))?;
        s.set_write_timeout(Some(CLOSE_WITHIN))?;
        Ok(s)
    };
    check_listener(
        "API",
        &connect_api,
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("the API socket");
    let st = c.a.status().expect("the API answers afterwards");
    assert_eq!(st["node"]["name"], "a", "{st}");

    // The admin port, on the loopback of a's namespace.
    let ns = c.a.host().path();
    let admin = std::thread::spawn(move || -> Result<()> {
        testbed::netns::enter(&ns)?;
        let connect_admin = || -> Result<TcpStream> {
            let s = TcpStream::connect("127.0.0.1:9110").context("connect to the admin port")?;
            s.set_read_timeout(Some(CLOSE_WITHIN))?;
            s.set_write_timeout(Some(CLOSE_WITHIN))?;
            Ok(s)
        };
        check_listener(
            "admin",
            &connect_admin,
            b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    admin
        .join()
        .expect("admin thread")
        .expect("the admin listener");
    let log = c.a.log();
    assert!(!log.contains("panicked"), "{log}");
}
