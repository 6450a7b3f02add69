//! Names outside our zones go to the node's upstream resolvers, through
//! `hickory-resolver` (not a hand-rolled client).
//!
//! One [`Resolver`] per upstream, tried in the configured order: hickory's
//! name-server pool bounds a whole lookup by one `timeout`, so with a single
//! pool a silent first upstream would use up the time and the second would
//! never be asked. With one resolver each, every upstream gets
//! `upstream_timeout` of its own (UDP, then TCP when the answer is truncated),
//! and a query costs at most `upstreams × upstream_timeout`. Each resolver
//! keeps hickory's answer cache, which also absorbs repeated outside names.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::Resolver;
use tracing::debug;

/// The outcome of a forwarded query, ready to be sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// An upstream answered with records (NOERROR).
    Records(Vec<Record>),
    /// An upstream answered with no records: NXDOMAIN, or NODATA (NOERROR);
    /// its SOA, if it sent one, goes in the authority section.
    NoRecords {
        /// NXDOMAIN or NOERROR.
        rcode: ResponseCode,
        /// The upstream's SOA.
        soa: Option<Box<Record>>,
    },
    /// No upstream answered usefully in time (or there are none): SERVFAIL.
    Failed,
}

/// The upstream resolvers, in order.
pub struct Forwarder {
    upstreams: Vec<(SocketAddr, Resolver<TokioRuntimeProvider>)>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field(
                "upstreams",
                &self.upstreams.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn options(timeout: Duration) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    // No retry of the whole lookup: the UDP client already retransmits
    // within `timeout`, and the next upstream is the retry.
    opts.attempts = 0;
    opts.num_concurrent_reqs = 1;
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    opts.use_hosts_file = ResolveHosts::Never;
    // A forwarder must pass CNAME chains on as the upstream gave them.
    opts.preserve_intermediates = true;
    opts.recursion_desired = true;
    opts.try_tcp_on_error = false;
    opts
}

impl Forwarder {
    /// Resolvers for `upstreams` (each UDP and TCP on the address's port),
    /// each lookup bounded by `timeout`. Needs no runtime; lookups run on
    /// the caller's tokio runtime.
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> Result<Self, NetError> {
        let mut resolvers = Vec::with_capacity(upstreams.len());
        for &addr in upstreams {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
            let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(options(timeout))
                .build()?;
            resolvers.push((addr, resolver));
        }
        Ok(Self {
            upstreams: resolvers,
        })
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// True when there is no upstream (every outside name gets SERVFAIL).
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Asks the upstreams in order; the first that answers (records or a
    /// negative answer) wins. Timeouts, I/O errors and error codes
    /// (SERVFAIL, REFUSED...) move on to the next upstream.
    pub async fn lookup(&self, name: &LowerName, rtype: RecordType) -> Forwarded {
        let name: Name = (**name).clone();
        for (addr, resolver) in &self.upstreams {
            match resolver.lookup(name.clone(), rtype).await {
                Ok(lookup) => return Forwarded::Records(lookup.answers().to_vec()),
                Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
                    let rcode = match no.response_code {
                        ResponseCode::NXDomain => ResponseCode::NXDomain,
                        _ => ResponseCode::NoError,
                    };
                    return Forwarded::NoRecords {
                        rcode,
                        soa: no.soa.map(|soa| Box::new(soa.into_record_of_rdata())),
                    };
                }
                Err(error) => {
                    debug!(upstream = %addr, %name, %error, "upstream did not answer");
                }
            }
        }
        Forwarded::Failed
    }
}
