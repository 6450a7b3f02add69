//! The I/O shell: sockets, the resolver thread, and hickory's `Server`
//! driving our [`RequestHandler`], which carries out what `answer` decides.
//!
//! Everything runs on one thread named `dns` with a single-threaded tokio
//! runtime, at a slightly lower priority than the dataplane: a flood of
//! queries costs at most that one core and yields to packet forwarding.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use envmgr::model::{ServiceName, Snapshot};
use hickory_proto::op::{Edns, Header, HeaderCounts, LowerQuery, Metadata, ResponseCode};
use hickory_proto::rr::Name;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tracing::{debug, error, warn};

use crate::answer::{self, Decision, Reply};
use crate::counters::{bump, Counters};
use crate::forward::{Forwarded, Forwarder};
use crate::settings::{DnsError, DnsSettings};
use crate::zone::Zone;

/// The largest UDP answer we send to an EDNS client, whatever it offers:
/// 1232 bytes fits any path without IP fragmentation (DNS flag day 2020).
/// Clients without EDNS get 512 (RFC 1035); bigger answers are cut with TC.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The niceness of the resolver thread: a little below the dataplane (0),
/// so under a flood the scheduler prefers packet forwarding.
const DNS_NICE: libc::c_int = 5;

/// Answers queued per TCP connection before hickory drops one.
const TCP_RESPONSE_BUFFER: usize = 32;

/// Tries to find a port free for both UDP and TCP when the port is 0.
const PORT_ATTEMPTS: usize = 8;

/// What the handler shares with the zone follower and the owner.
struct Handler {
    zone: Arc<ArcSwap<Zone>>,
    changed: Arc<Notify>,
    forwarder: Forwarder,
    permits: Arc<Semaphore>,
    misses: Option<mpsc::Sender<ServiceName>>,
    miss_wait: Duration,
    counters: Arc<Counters>,
}

fn servfail() -> Reply<'static> {
    Reply::error(ResponseCode::ServFail)
}

impl Handler {
    /// Sends `reply` and counts what went out (rcode, TC).
    async fn send<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        reply: &Reply<'_>,
        mut handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        let response = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            reply.answers.iter(),
            std::iter::empty(),
            reply.soa,
            reply.additionals.iter(),
        );
        match handle.send_response(response).await {
            Ok(info) => {
                self.counters.answered(info.response_code, info.truncation);
                info
            }
            Err(error) => {
                debug!(%error, src = %request.src(), "could not send a DNS answer");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }

    /// Forwards an outside name, holding one of `max_forwards` permits.
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        query: &LowerQuery,
        handle: R,
    ) -> ResponseInfo {
        let Ok(_permit) = self.permits.try_acquire() else {
            bump(&self.counters.forward_rejected);
            return self.send(request, edns, &servfail(), handle).await;
        };
        bump(&self.counters.forwarded);
        let result = self
            .forwarder
            .lookup(query.name(), query.query_type())
            .await;
        let reply = match &result {
            Forwarded::Records(records) => Reply {
                rcode: ResponseCode::NoError,
                authoritative: false,
                answers: Cow::Borrowed(records.as_slice()),
                soa: None,
                additionals: &[],
            },
            Forwarded::NoRecords { rcode, soa } => Reply {
                rcode: *rcode,
                authoritative: false,
                answers: Cow::Borrowed(&[]),
                soa: soa.as_deref(),
                additionals: &[],
            },
            Forwarded::Failed => {
                bump(&self.counters.forward_failed);
                servfail()
            }
        };
        self.send(request, edns, &reply, handle).await
    }

    /// A service this node does not know (etcd mode): tell the cluster
    /// sync, wait (holding a forward permit, so waiting queries are bounded
    /// too) for a zone that has it, then answer from the newest zone.
    async fn miss<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        query: &LowerQuery,
        name: ServiceName,
        handle: R,
    ) -> ResponseInfo {
        let asked = match &self.misses {
            Some(tx) => match tx.try_send(name) {
                Ok(()) => {
                    bump(&self.counters.name_misses);
                    true
                }
                // The store is busy with earlier misses: one of them may be
                // this name, so waiting still helps.
                Err(TrySendError::Full(_)) => true,
                Err(TrySendError::Closed(_)) => false,
            },
            None => false,
        };
        let permit = if asked {
            self.permits.try_acquire().ok()
        } else {
            None
        };
        if permit.is_some() {
            let deadline = tokio::time::Instant::now() + self.miss_wait;
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                // Register before looking, so a swap in between is not lost.
                notified.as_mut().enable();
                let missing = {
                    let zone = self.zone.load();
                    matches!(answer::decide(&zone, query, true), Decision::Miss(_))
                };
                if !missing || tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        drop(permit);
        let zone = self.zone.load_full();
        let reply = match answer::decide(&zone, query, false) {
            Decision::Reply(reply) => reply,
            // A service-form name is always inside the domain.
            Decision::Forward | Decision::Miss(_) => servfail(),
        };
        self.send(request, edns, &reply, handle).await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        match request.protocol() {
            Protocol::Udp => bump(&self.counters.queries_udp),
            Protocol::Tcp => bump(&self.counters.queries_tcp),
            _ => {}
        }
        // RFC 6891: answer EDNS with EDNS, version 0, our payload size.
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours.set_version(0);
            ours
        });
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            let reply = Reply::error(ResponseCode::BADVERS);
            return self.send(request, edns.as_ref(), &reply, handle).await;
        }
        let query = match answer::check_request(&request.metadata, request.queries.queries()) {
            Ok(query) => query,
            Err(rcode) => {
                return self
                    .send(request, edns.as_ref(), &Reply::error(rcode), handle)
                    .await
            }
        };
        let zone = self.zone.load_full();
        match answer::decide(&zone, query, self.misses.is_some()) {
            Decision::Reply(reply) => self.send(request, edns.as_ref(), &reply, handle).await,
            Decision::Forward => self.forward(request, edns.as_ref(), query, handle).await,
            Decision::Miss(name) => self.miss(request, edns.as_ref(), query, name, handle).await,
        }
    }
}

/// Swaps in a new zone for every snapshot, until the publisher goes away
/// (then the last zone keeps being served).
async fn follow(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    zone: Arc<ArcSwap<Zone>>,
    changed: Arc<Notify>,
    domain: Name,
    ttl: u32,
) {
    while snapshots.changed().await.is_ok() {
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        zone.store(Arc::new(Zone::build(&snapshot, &domain, ttl)));
        changed.notify_waiters();
    }
    debug!("snapshot publisher gone; serving the last zone");
}

/// Lowers the calling thread's priority a little (Linux threads have their
/// own nice value).
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers and only
    // affect the calling thread.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, DNS_NICE)
    };
    if rc != 0 {
        warn!(error = %io::Error::last_os_error(), "could not lower the DNS thread's priority");
    }
}

/// The UDP receive buffer asked for: at 60k queries per second the
/// default (about 200 KB) holds only a few milliseconds of queries, so a
/// short stall of the resolver's thread would drop them. The kernel caps it
/// at `net.core.rmem_max`.
const UDP_RCVBUF: usize = 4 << 20;

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(UDP_RCVBUF) {
        tracing::debug!("dns: cannot grow the UDP receive buffer: {e}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds UDP and TCP on the same port of `addr` (a free one if it is 0).
fn bind_pair(
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener, SocketAddr), DnsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = bind_udp(addr).map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < PORT_ATTEMPTS => {}
            Err(source) => {
                return Err(DnsError::Bind {
                    proto: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
}

/// Parses the configured domain into a lowercased FQDN.
pub(crate) fn parse_domain(domain: &str) -> Result<Name, DnsError> {
    let bad = |why: &str| DnsError::Domain(domain.to_owned(), why.to_owned());
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.is_empty() {
        return Err(bad("must not be empty or the root"));
    }
    let valid = trimmed.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !valid {
        return Err(bad(
            "labels must be 1 to 63 letters, digits or '-', not starting or ending with '-'",
        ));
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| bad(&e.to_string()))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// The running resolver's handles.
#[derive(Debug)]
pub(crate) struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) counters: Arc<Counters>,
}

impl Running {
    /// Stops serving and joins the thread (idempotent).
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the DNS thread panicked");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds, builds the first zone, and starts the `dns` thread.
pub(crate) fn start(
    settings: DnsSettings,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    misses: Option<mpsc::Sender<ServiceName>>,
) -> Result<Running, DnsError> {
    let domain = parse_domain(&settings.domain)?;
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let mut addrs = Vec::new();
    for &ip in &settings.listen {
        let (u, t, bound) = bind_pair(SocketAddr::new(ip, settings.port))?;
        udp.push(u);
        tcp.push(t);
        addrs.push(bound);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DnsError::Thread)?;
    let forwarder = {
        // Inside the runtime's context, in case the resolver spawns.
        let _enter = runtime.enter();
        Forwarder::new(&settings.upstreams, settings.upstream_timeout)
            .map_err(|e| DnsError::Thread(io::Error::other(format!("upstream resolver: {e}"))))?
    };

    let first = Arc::clone(&snapshots.borrow_and_update());
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        &first,
        &domain,
        settings.ttl,
    )));
    let changed = Arc::new(Notify::new());
    let counters = Arc::new(Counters::default());
    let handler = Handler {
        zone: Arc::clone(&zone),
        changed: Arc::clone(&changed),
        forwarder,
        permits: Arc::new(Semaphore::new(settings.max_forwards)),
        misses,
        miss_wait: settings.miss_wait,
        counters: Arc::clone(&counters),
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let tcp_idle = settings.tcp_idle_timeout;
    // With nothing to listen on there is nothing to serve, only a stop to
    // wait for.
    let serving = !addrs.is_empty();
    let ttl = settings.ttl;
    let thread = std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            lower_priority();
            runtime.block_on(async move {
                let mut server = Server::new(handler);
                for socket in udp {
                    match tokio::net::UdpSocket::from_std(socket) {
                        Ok(socket) => server.register_socket(socket),
                        Err(error) => error!(%error, "DNS UDP socket not served"),
                    }
                }
                for listener in tcp {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            server.register_listener(listener, tcp_idle, TCP_RESPONSE_BUFFER)
                        }
                        Err(error) => error!(%error, "DNS TCP socket not served"),
                    }
                }
                let follower = tokio::spawn(follow(snapshots, zone, changed, domain, ttl));
                tokio::select! {
                    _ = stop_rx => {}
                    result = server.block_until_done(), if serving => {
                        error!(?result, "the DNS server stopped on its own");
                    }
                }
                follower.abort();
                if let Err(error) = server.shutdown_gracefully().await {
                    debug!(%error, "DNS server shutdown");
                }
            });
        })
        .map_err(DnsError::Thread)?;
    Ok(Running {
        stop: Some(stop_tx),
        thread: Some(thread),
        addrs,
        counters,
    })
}
