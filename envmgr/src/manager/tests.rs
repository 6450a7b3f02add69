//! The manager's rules, with a fake kernel, a fake netns probe and a real
//! store in a temporary directory. The real probe has its own tests
//! (`tests/probe.rs`; they need `ip netns` for the positive case).
//!
//! This file holds the fakes and the harness; the tests are in `tests/`,
//! one file per operation (`rollback.rs` holds the rule they all share: a
//! refused request changes nothing).

mod attach;
mod client_range;
mod clients;
mod cluster;
mod detach;
mod multinet;
mod nat;
mod peers;
mod probe;
mod restore;
mod rollback;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use ipnet::Ipv4Net;

use super::netns::{NetnsProbe, NsId, NsProblem};
use super::{Manager, Settings};
use crate::alloc;
use crate::error::{Error, Result};
use crate::kernel::{BridgeSpec, Kernel, KernelError, NatSpec, VethSpec};
use crate::model::{
    DualAddr, Instance, InstanceKey, Peer, Placement, PortMapping, Service, ServiceName, Snapshot,
};
use crate::plan::AddressPlan;
use crate::registry::{Claim, ClusterView, Registry};
use crate::requests::{AttachRequest, PeerRequest, RemoteInstanceRequest};
use crate::store::{LocalStore, State, Store, StoreError};

// ---------------------------------------------------------------- fakes

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    SetupBridge(BridgeSpec),
    Attach(VethSpec),
    Attached(String),
    DefaultRoute(String),
    Detach(String),
}

/// Records every call; keeps the set of veths that "exist"; fails on demand.
#[derive(Debug, Default)]
struct FakeKernel {
    calls: StdMutex<Vec<Call>>,
    present: StdMutex<BTreeSet<String>>,
    fail_attach: AtomicBool,
    fail_detach: AtomicBool,
    fail_bridge: AtomicBool,
    /// The NAT last applied (what the kernel's table would hold).
    nat: StdMutex<NatSpec>,
    /// How many times the NAT was applied.
    nat_applied: AtomicU64,
    fail_nat: AtomicBool,
    /// Node ports (`"8080/tcp"`) a program on the node holds.
    busy_ports: StdMutex<BTreeSet<String>>,
}

impl FakeKernel {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
    fn present(&self) -> BTreeSet<String> {
        self.present.lock().expect("lock").clone()
    }
    fn nat(&self) -> NatSpec {
        self.nat.lock().expect("lock").clone()
    }
    fn record(&self, c: Call) {
        self.calls.lock().expect("lock").push(c);
    }
    fn fail(action: &str) -> KernelError {
        KernelError {
            action: action.to_owned(),
            message: "injected failure".to_owned(),
        }
    }
}

impl Kernel for FakeKernel {
    async fn setup_bridge(&self, spec: &BridgeSpec) -> Result<(), KernelError> {
        self.record(Call::SetupBridge(spec.clone()));
        if self.fail_bridge.load(Ordering::SeqCst) {
            return Err(Self::fail("create bridge"));
        }
        Ok(())
    }

    async fn route_services(
        &self,
        _tun: &str,
        _services: Ipv4Net,
        _services6: ipnet::Ipv6Net,
    ) -> Result<(), KernelError> {
        Ok(())
    }

    async fn attach(&self, spec: &VethSpec) -> Result<(), KernelError> {
        self.record(Call::Attach(spec.clone()));
        if self.fail_attach.load(Ordering::SeqCst) {
            return Err(Self::fail(&format!("create veth {}", spec.host_veth)));
        }
        self.present
            .lock()
            .expect("lock")
            .insert(spec.host_veth.clone());
        Ok(())
    }

    async fn attached(&self, spec: &VethSpec) -> Result<bool, KernelError> {
        self.record(Call::Attached(spec.host_veth.clone()));
        Ok(self.present().contains(&spec.host_veth))
    }

    async fn default_route(&self, spec: &VethSpec) -> Result<(), KernelError> {
        self.record(Call::DefaultRoute(spec.host_veth.clone()));
        Ok(())
    }

    async fn detach(&self, host_veth: &str) -> Result<(), KernelError> {
        self.record(Call::Detach(host_veth.to_owned()));
        if self.fail_detach.load(Ordering::SeqCst) {
            return Err(Self::fail(&format!("delete veth {host_veth}")));
        }
        self.present.lock().expect("lock").remove(host_veth);
        Ok(())
    }

    async fn set_nat(&self, spec: &NatSpec) -> Result<(), KernelError> {
        if self.fail_nat.load(Ordering::SeqCst) {
            return Err(Self::fail("replace nftables table inet proxytun"));
        }
        self.nat_applied.fetch_add(1, Ordering::SeqCst);
        *self.nat.lock().expect("lock") = spec.clone();
        Ok(())
    }

    async fn port_in_use(&self, m: &PortMapping) -> Result<bool, KernelError> {
        let key = format!("{}/{}", m.host_port, m.protocol.as_str());
        Ok(self.busy_ports.lock().expect("lock").contains(&key))
    }
}

/// Namespaces are whatever the test registers; `/proc/self/ns/net` is ours;
/// `/etc/...` exists but is not a namespace; anything else is missing.
#[derive(Debug, Clone, Default)]
struct FakeNs {
    known: Arc<StdMutex<BTreeMap<PathBuf, NsId>>>,
    next: Arc<AtomicU64>,
}

impl FakeNs {
    fn add(&self, path: &str) -> PathBuf {
        let ino = self.next.fetch_add(1, Ordering::SeqCst) + 1000;
        self.known
            .lock()
            .expect("lock")
            .insert(path.into(), NsId { dev: 4, ino });
        path.into()
    }
    /// A second path to the same namespace (like /proc/<pid>/ns/net).
    fn alias(&self, path: &str, of: &str) {
        let mut known = self.known.lock().expect("lock");
        let id = *known.get(Path::new(of)).expect("known");
        known.insert(path.into(), id);
    }
    fn remove(&self, path: &str) {
        self.known.lock().expect("lock").remove(Path::new(path));
    }
}

impl NetnsProbe for FakeNs {
    fn identify(&self, path: &Path) -> Result<NsId, NsProblem> {
        if path == Path::new("/proc/self/ns/net") {
            return Err(NsProblem::Own);
        }
        if let Some(id) = self.known.lock().expect("lock").get(path) {
            return Ok(*id);
        }
        if path.starts_with("/etc") {
            return Err(NsProblem::NotNetns("not on nsfs"));
        }
        Err(NsProblem::Missing)
    }
}

/// The real file store, with a switch that makes saves fail.
#[derive(Debug)]
struct FlakyStore {
    inner: LocalStore,
    fail: Arc<AtomicBool>,
}

impl Store for FlakyStore {
    fn load(&self) -> Result<Option<State>, StoreError> {
        self.inner.load()
    }
    fn save(&self, state: &State) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Other("injected: disk full".to_owned()));
        }
        self.inner.save(state)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

// ---------------------------------------------------------------- harness

fn plan(index: u32) -> AddressPlan {
    AddressPlan::with_default_ranges(index)
}

fn settings(dir: &Path) -> Settings {
    Settings {
        node_name: "n1".to_owned(),
        plan: plan(1),
        bridge: "ptbr0".to_owned(),
        mtu: 1400,
        state_dir: dir.to_owned(),
        tunnel_port: 50103,
        resolv: None,
        masquerade: true,
        masquerade_except: Default::default(),
        client_range: None,
    }
}

struct H {
    dir: tempfile::TempDir,
    ns: FakeNs,
    fail_store: Arc<AtomicBool>,
    m: Manager<FakeKernel>,
}

impl H {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        Self::open_in(dir, s, FakeNs::default(), FakeKernel::default())
            .await
            .expect("open")
    }

    async fn open_in(
        dir: tempfile::TempDir,
        settings: Settings,
        ns: FakeNs,
        kernel: FakeKernel,
    ) -> anyhow::Result<Self> {
        let fail_store = Arc::new(AtomicBool::new(false));
        let store = FlakyStore {
            inner: LocalStore::new(dir.path()),
            fail: fail_store.clone(),
        };
        let m =
            Manager::open_inner(settings, kernel, Box::new(store), Box::new(ns.clone())).await?;
        Ok(Self {
            dir,
            ns,
            fail_store,
            m,
        })
    }

    /// Closes the manager and opens a new one on the same directory.
    async fn reopen(self, settings: Settings, kernel: FakeKernel) -> anyhow::Result<Self> {
        let Self { dir, ns, m, .. } = self;
        drop(m);
        Self::open_in(dir, settings, ns, kernel).await
    }

    fn file(&self) -> Vec<u8> {
        fs::read(self.dir.path().join("state.json")).expect("state file")
    }

    /// Everything a rejected request must leave alone.
    fn observe(&self) -> (Arc<Snapshot>, Vec<u8>, Vec<Call>, BTreeSet<String>) {
        (
            self.m.snapshot(),
            self.file(),
            self.m.kernel().calls(),
            self.m.kernel().present(),
        )
    }

    async fn attach(&self, app_service: &str, ns: &str) -> Result<Instance> {
        self.m.attach(req(app_service, ns)).await
    }

    async fn peer(&self, name: &str, endpoint: &str) {
        self.m
            .put_peer(peer_req(name, endpoint))
            .await
            .expect("peer");
    }
}

/// An attach request for a fresh fake namespace at `ns` (registered lazily
/// by the caller through `H::ns`).
fn req(app_service: &str, ns: &str) -> AttachRequest {
    let (app, service) = app_service.split_once('/').expect("app/service");
    AttachRequest {
        app: app.into(),
        service: service.into(),
        instance: None,
        netns: Some(ns.into()),
        pid: None,
        ifname: None,
        service_ip: None,
        instance_ip: None,
        container_id: None,
        ports: Vec::new(),
    }
}

fn remote(app_service: &str, n: u32, node: &str, ns_addr: &str, ip: &str) -> RemoteInstanceRequest {
    let (app, service) = app_service.split_once('/').expect("app/service");
    RemoteInstanceRequest {
        app: app.into(),
        service: service.into(),
        instance: n,
        node: node.into(),
        ns_addr: ns_addr.parse().expect("ip"),
        instance_ip: ip.parse().expect("ip"),
        service_ip: None,
    }
}

/// A peer request.
fn peer_req(name: &str, endpoint: &str) -> PeerRequest {
    PeerRequest {
        name: name.into(),
        endpoint: endpoint.into(),
        public_key: None,
    }
}

fn key(s: &str, n: u32) -> InstanceKey {
    InstanceKey {
        name: s.parse().expect("name"),
        number: n,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

// ------------------------------------------------- the manager type

#[test]
fn manager_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn check(m: &Manager<FakeKernel>) {
        send(&m.attach(req("a/b", "/x")));
        send(&m.detach(&key("a/b", 0)));
        send(&m.add_remote(remote("a/b", 0, "n", "10.18.2.2", "10.30.2.2")));
        send(&m.remove_remote(&key("a/b", 0)));
        send(&m.remove_peer("n"));
        send(&m.put_peer(peer_req("n", "192.0.2.1")));
    }
    let _ = check;
}
