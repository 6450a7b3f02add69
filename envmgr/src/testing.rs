//! Test doubles shared by this crate's tests and its dependents' (feature
//! `testing`): a kernel that records calls, a dataplane with fixed answers,
//! and a real network namespace to attach.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde_json::{json, Value};

use crate::api::DataplaneView;
use crate::kernel::{BridgeSpec, Kernel, KernelError, NatSpec, VethSpec};
use crate::manager::Settings;
use crate::model::PortMapping;
use crate::plan::AddressPlan;

/// Settings of node `n1` (index 1, default ranges) keeping its state in
/// `state_dir`.
pub fn settings(state_dir: PathBuf) -> Settings {
    Settings {
        node_name: "n1".into(),
        plan: AddressPlan::with_default_ranges(1),
        bridge: "ptbr0".into(),
        mtu: 1400,
        state_dir,
        tunnel_port: 50103,
        resolv: None,
        masquerade: true,
        masquerade_except: Default::default(),
        client_range: None,
    }
}

/// Records kernel calls; `attach` fails while `fail_attach` is set.
#[derive(Debug, Clone, Default)]
pub struct RecordingKernel {
    /// Every call, in order, as `"verb args"`.
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Makes `attach` fail like an EPERM from the kernel.
    pub fail_attach: Arc<AtomicBool>,
}

impl RecordingKernel {
    fn record(&self, call: String) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Kernel for RecordingKernel {
    async fn setup_bridge(&self, spec: &BridgeSpec) -> Result<(), KernelError> {
        self.record(format!("setup_bridge {}", spec.name));
        Ok(())
    }
    async fn route_services(
        &self,
        tun: &str,
        services: ipnet::Ipv4Net,
        _services6: ipnet::Ipv6Net,
    ) -> Result<(), KernelError> {
        self.record(format!("route_services {tun} {services}"));
        Ok(())
    }
    async fn attach(&self, spec: &VethSpec) -> Result<(), KernelError> {
        if self.fail_attach.load(Ordering::SeqCst) {
            return Err(KernelError {
                action: format!("create veth {}", spec.host_veth),
                message: "Operation not permitted (os error 1)".into(),
            });
        }
        self.record(format!("attach {} {}", spec.host_veth, spec.addr.v4));
        Ok(())
    }
    async fn attached(&self, _spec: &VethSpec) -> Result<bool, KernelError> {
        Ok(true)
    }
    async fn default_route(&self, spec: &VethSpec) -> Result<(), KernelError> {
        self.record(format!("default_route {}", spec.host_veth));
        Ok(())
    }
    async fn detach(&self, host_veth: &str) -> Result<(), KernelError> {
        self.record(format!("detach {host_veth}"));
        Ok(())
    }
    async fn set_nat(&self, spec: &NatSpec) -> Result<(), KernelError> {
        // Recorded only when there is something to publish, so callers'
        // call lists stay as they were for attachments without ports.
        for p in &spec.publish {
            self.record(format!("publish {} {}", p.mapping, p.to));
        }
        Ok(())
    }
    async fn port_in_use(&self, _mapping: &PortMapping) -> Result<bool, KernelError> {
        Ok(false)
    }
}

/// A dataplane with fixed, recognisable answers.
#[derive(Debug)]
pub struct FixedDataplane;

impl DataplaneView for FixedDataplane {
    fn status(&self) -> Value {
        json!({"tun": "ptun0", "mtu": 1400, "flows_active": 1})
    }
    fn counters(&self) -> Value {
        json!({"tun_rx": 10, "drops": {"no_service": 2}})
    }
    fn flows(&self) -> BoxFuture<'static, Value> {
        async {
            json!({"flows": [{"proto": "tcp", "client": "10.18.1.2:40000",
                   "vip": "10.30.1.1:80", "instance": "shop/web/0",
                   "peer": null, "packets": 12}],
                   "replies": []})
        }
        .boxed()
    }
    fn peers(&self) -> Value {
        json!([{"endpoint": "192.0.2.9:50103", "alive": false, "rtt_us": 1500,
                "last_heard_ms": 4200}])
    }
}

/// A process in a fresh network namespace (`unshare --net`, needs root),
/// killed by its pid on drop: something real to attach.
#[derive(Debug)]
pub struct NetnsChild(Child);

impl NetnsChild {
    /// Starts the process and waits until it is in its own namespace.
    pub fn start() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn unshare --net (needs root)");
        let me = NetnsChild(child);
        let own = std::fs::metadata("/proc/self/ns/net")
            .expect("own netns")
            .ino();
        for _ in 0..200 {
            if std::fs::metadata(me.netns()).is_ok_and(|m| m.ino() != own) {
                return me;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("child {} never entered a new netns", me.pid());
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Its network namespace file.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }
}

impl Drop for NetnsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
