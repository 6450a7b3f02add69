//! What the management API sees of the dataplane.
//!
//! Status and counters are read straight from shared atomics; the flow list
//! is copied out of the core between two batches (a control message) and
//! comes back over a oneshot channel; peer health is copied out under the
//! core's lock.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use envmgr::api::DataplaneView;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use crate::dns::DnsStatus;
use crate::logging::LogHandle;
use crate::shell::io_loop::{Control, ControlSender};
use crate::shell::shared::{IoCounters, IoReadings};
use proxytun_core::{Counters, DropReason};

/// What the view reads, given by the daemon once the dataplane runs.
#[derive(Debug)]
pub struct ViewSources {
    /// The TUN device's name.
    pub tun: String,
    /// Its MTU.
    pub mtu: u32,
    /// The tunnel socket's bound address.
    pub tunnel: SocketAddr,
    /// Which packet path is in use, in words, so operators know what they
    /// are measuring ([`super::io_loop::LoopHandle::path`]).
    pub path: String,
    /// The packet core's counters.
    pub counters: Arc<Counters>,
    /// The I/O shell's counters and gauges.
    pub io: Arc<IoCounters>,
    /// The dataplane threads' control channel (flow dumps, peer health).
    pub ctrl: ControlSender,
}

/// The API's window onto the dataplane.
#[derive(Debug)]
pub struct ShellView {
    src: ViewSources,
    dns: Option<Arc<DnsStatus>>,
    log: Option<LogHandle>,
}

impl ShellView {
    /// A view of `src`, without a resolver or a log handle yet.
    pub fn new(src: ViewSources) -> Self {
        Self {
            src,
            dns: None,
            log: None,
        }
    }

    /// Adds the log filter handle, so `proxytun log-level` can change it.
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }

    /// Adds the resolver, so `status` shows it.
    pub fn with_dns(mut self, dns: Option<Arc<DnsStatus>>) -> Self {
        self.dns = dns;
        self
    }
}

impl DataplaneView for ShellView {
    fn log_level(&self) -> Option<String> {
        self.log.as_ref().map(LogHandle::current)
    }

    fn set_log_level(&self, filter: &str) -> Result<(), String> {
        match &self.log {
            Some(log) => log.set(filter),
            None => Err("this daemon cannot change its log level at runtime".to_owned()),
        }
    }

    fn dns(&self) -> Value {
        self.dns.as_ref().map_or(Value::Null, |d| d.json())
    }

    fn status(&self) -> Value {
        let src = &self.src;
        let c = src.counters.snapshot();
        json!({
            "tun": src.tun,
            "mtu": src.mtu,
            "tunnel": src.tunnel.to_string(),
            "path": src.path,
            "flows_active": src.io.flows_active.load(Ordering::Relaxed),
            "replies_active": src.io.replies_active.load(Ordering::Relaxed),
            "drops_total": c.drops.values().sum::<u64>(),
            "policy_denied": c.drops.get(DropReason::PolicyDenied.name()).copied().unwrap_or(0),
            "flows_cut_by_policy": c.flows_cut_by_policy,
        })
    }

    fn counters(&self) -> Value {
        let mut v = serde_json::to_value(self.src.counters.snapshot())
            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        if let (Value::Object(map), Ok(Value::Object(io))) =
            (&mut v, serde_json::to_value(IoReadings::read(&self.src.io)))
        {
            map.extend(io);
        }
        v
    }

    fn peers(&self) -> Value {
        serde_json::to_value(self.src.ctrl.peers())
            .unwrap_or_else(|e| json!({ "error": e.to_string() }))
    }

    fn flows(&self) -> BoxFuture<'static, Value> {
        let ctrl = self.src.ctrl.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Err(e) = ctrl.send(Control::DumpFlows(tx)) {
                return json!({ "error": e.to_string() });
            }
            match tokio::time::timeout(Duration::from_secs(2), rx).await {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => json!({ "error": "the dataplane thread stopped" }),
                Err(_) => json!({ "error": "the dataplane thread did not answer within 2 s" }),
            }
        })
    }
}
