//! The dataplane as the API sees it: a read-only view (and the log level),
//! so envmgr does not depend on the dataplane crate.

use futures::future::BoxFuture;
use serde_json::Value;

/// What the API needs from the dataplane (implemented in the proxytun
/// crate). A trait so envmgr does not depend on the dataplane and the API
/// can be tested with a fake.
pub trait DataplaneView: Send + Sync + 'static {
    /// Device and path facts: tun name, mtu, tunnel address, flows active…
    fn status(&self) -> Value;
    /// Packet counters, e.g. `{"tun_rx":..,"drops":{"reason":n,..},..}`.
    fn counters(&self) -> Value;
    /// The flow table and the reply-address cache:
    /// `{"flows":[..],"replies":[..]}`. Async because the dataplane may
    /// have to ask its packet threads.
    fn flows(&self) -> BoxFuture<'static, Value>;
    /// Liveness and round-trip time of each peer endpoint, as measured by
    /// the tunnel keepalives: `[{"endpoint":"ip:port","alive":true,
    /// "rtt_us":123,"last_heard_ms":456,...}]`. Empty when not measured.
    fn peers(&self) -> Value {
        Value::Array(Vec::new())
    }
    /// The node's resolver: listen addresses, domain, upstreams and its
    /// counters; `null` when it does not run.
    fn dns(&self) -> Value {
        Value::Null
    }
    /// The log filter in force; `None` when it cannot change at runtime.
    fn log_level(&self) -> Option<String> {
        None
    }
    /// Replaces the log filter (a `tracing` filter such as `debug` or
    /// `info,proxytun=trace`); the error says what is wrong with it.
    fn set_log_level(&self, filter: &str) -> Result<(), String> {
        let _ = filter;
        Err("this daemon cannot change its log level at runtime".to_owned())
    }
}
