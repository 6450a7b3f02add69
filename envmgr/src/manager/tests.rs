//! The manager's rules, with a fake kernel, a fake netns probe and a real
//! store in a temporary directory. The real probe has its own tests at the
//! end (they need `ip netns` for the positive case).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use super::netns::{NetnsProbe, NsId, NsProblem};
use super::*;
use crate::store::{LocalStore, StoreError};

// ---------------------------------------------------------------- fakes

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    SetupBridge(BridgeSpec),
    Attach(VethSpec),
    Attached(String),
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
}

impl FakeKernel {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
    fn present(&self) -> BTreeSet<String> {
        self.present.lock().expect("lock").clone()
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

    async fn detach(&self, host_veth: &str) -> Result<(), KernelError> {
        self.record(Call::Detach(host_veth.to_owned()));
        if self.fail_detach.load(Ordering::SeqCst) {
            return Err(Self::fail(&format!("delete veth {host_veth}")));
        }
        self.present.lock().expect("lock").remove(host_veth);
        Ok(())
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
            .put_peer(PeerRequest {
                name: name.into(),
                endpoint: endpoint.into(),
            })
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

fn key(s: &str, n: u32) -> InstanceKey {
    InstanceKey {
        name: s.parse().expect("name"),
        number: n,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn fresh_node_sets_up_bridge_and_writes_empty_state() {
    let h = H::new().await;
    let snap = h.m.snapshot();
    assert_eq!(snap.version, 0);
    assert_eq!(snap.node.subnet.to_string(), "10.18.1.0/24");
    assert_eq!(snap.node.subnet6.to_string(), "fdff:18::100/120");
    assert!(snap.services.is_empty() && snap.instances.is_empty() && snap.peers.is_empty());
    assert_eq!(
        h.m.kernel().calls(),
        vec![Call::SetupBridge(BridgeSpec {
            name: "ptbr0".into(),
            gateway: plan(1).gateway(),
            subnet: "10.18.1.0/24".parse().expect("net"),
            subnet6: "fdff:18::100/120".parse().expect("net"),
            mtu: 1400,
        })]
    );
    assert!(h.dir.path().join("state.json").exists());
}

#[tokio::test]
async fn attach_allocates_lowest_free_addresses_in_order() {
    let h = H::new().await;
    for p in ["/run/netns/a", "/run/netns/b", "/run/netns/c"] {
        h.ns.add(p);
    }
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let b = h.attach("shop/web", "/run/netns/b").await.expect("b");
    let c = h.attach("shop/db", "/run/netns/c").await.expect("c");

    assert_eq!((a.key.number, b.key.number, c.key.number), (0, 1, 0));
    assert_eq!(a.ns_addr.v4, ip("10.18.1.2"), "skips .0 and the gateway .1");
    assert_eq!(
        a.ns_addr.v6,
        "fdff:18::102".parse::<std::net::Ipv6Addr>().expect("v6")
    );
    assert_eq!(b.ns_addr.v4, ip("10.18.1.3"));
    assert_eq!(c.ns_addr.v4, ip("10.18.1.4"));

    let snap = h.m.snapshot();
    let web = &snap.services[&"shop/web".parse().expect("name")];
    let db = &snap.services[&"shop/db".parse().expect("name")];
    assert_eq!(web.rr_ip.v4, ip("10.30.1.1"), "first host of our block");
    assert_eq!(
        web.rr_ip.v6,
        "fdff:30::101".parse::<std::net::Ipv6Addr>().expect("v6")
    );
    assert_eq!(
        web.closest_ip.map(|c| c.v4),
        Some(ip("10.30.1.2")),
        "the closest ServiceIP right after the round-robin one"
    );
    assert_eq!(a.instance_ip.v4, ip("10.30.1.3"));
    assert_eq!(
        a.instance_ip.v6,
        "fdff:30::103".parse::<std::net::Ipv6Addr>().expect("v6")
    );
    assert_eq!(b.instance_ip.v4, ip("10.30.1.4"));
    assert_eq!(db.rr_ip.v4, ip("10.30.1.5"));
    assert_eq!(db.closest_ip.map(|c| c.v4), Some(ip("10.30.1.6")));
    assert_eq!(c.instance_ip.v4, ip("10.30.1.7"));
    assert_eq!(snap.version, 3);

    let Placement::Local {
        host_veth,
        ifname,
        netns,
        pid,
        container_id,
    } = &a.placement
    else {
        panic!("local");
    };
    assert_eq!(host_veth, &alloc::host_veth_name(&a.key, &BTreeSet::new()));
    assert_eq!(ifname, "eth0");
    assert_eq!(container_id, &None);
    assert_eq!(netns, Path::new("/run/netns/a"));
    assert_eq!(*pid, None);
    let attach = h.m.kernel().calls()[1].clone();
    assert_eq!(
        attach,
        Call::Attach(VethSpec {
            netns: "/run/netns/a".into(),
            host_veth: host_veth.clone(),
            ifname: "eth0".into(),
            bridge: "ptbr0".into(),
            addr: a.ns_addr,
            subnet: plan(1).node_subnet(),
            subnet6: plan(1).node_subnet6(),
            gateway: plan(1).gateway(),
            mtu: 1400,
        })
    );
}

#[tokio::test]
async fn allocation_skips_every_known_address() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2").await;
    // A remote instance pins 10.30.1.1 (our block) before any local service.
    h.m.add_remote(remote("shop/api", 0, "n2", "10.18.2.2", "10.30.1.1"))
        .await
        .expect("remote");
    let snap = h.m.snapshot();
    let api = &snap.services[&"shop/api".parse().expect("name")];
    assert_eq!(
        api.rr_ip.v4,
        ip("10.30.1.2"),
        "allocated around the pinned instance IP"
    );

    h.ns.add("/run/netns/a");
    let mut r = req("shop/web", "/run/netns/a");
    r.instance_ip = Some(ip("10.30.1.4"));
    let a = h.m.attach(r).await.expect("a");
    assert_eq!(a.instance_ip.v4, ip("10.30.1.4"));
    let web = h.m.snapshot().services[&a.key.name].clone();
    assert_eq!(
        web.rr_ip.v4,
        ip("10.30.1.5"),
        "after api's two ServiceIPs and the pin"
    );
    assert_eq!(web.closest_ip.map(|c| c.v4), Some(ip("10.30.1.6")));

    h.ns.add("/run/netns/b");
    let b = h.attach("shop/web", "/run/netns/b").await.expect("b");
    assert_eq!(b.instance_ip.v4, ip("10.30.1.7"), "skips .1-.6");
    assert_eq!(b.ns_addr.v4, ip("10.18.1.3"));
}

#[tokio::test]
async fn instance_numbers_count_remote_and_local() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2:4000").await;
    h.m.add_remote(remote("shop/web", 0, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.ns.add("/run/netns/c");
    let mut r = req("shop/web", "/run/netns/a");
    r.instance = Some(2);
    assert_eq!(h.m.attach(r).await.expect("a").key.number, 2);
    assert_eq!(
        h.attach("shop/web", "/run/netns/b")
            .await
            .expect("b")
            .key
            .number,
        1
    );
    assert_eq!(
        h.attach("shop/web", "/run/netns/c")
            .await
            .expect("c")
            .key
            .number,
        3
    );
}

#[tokio::test]
async fn pinned_service_ip_rules() {
    let h = H::new().await;
    for p in ["/run/netns/a", "/run/netns/b", "/run/netns/c"] {
        h.ns.add(p);
    }
    // Another node's block is fine: an orchestrator keeps one ServiceIP per service.
    let mut r = req("shop/web", "/run/netns/a");
    r.service_ip = Some(ip("10.30.7.9"));
    let a = h.m.attach(r).await.expect("pinned");
    assert_eq!(
        h.m.snapshot().services[&a.key.name].rr_ip.v4,
        ip("10.30.7.9")
    );

    // Same ServiceIP again: accepted.
    let mut r = req("shop/web", "/run/netns/b");
    r.service_ip = Some(ip("10.30.7.9"));
    h.m.attach(r).await.expect("matching service_ip");

    // Another ServiceIP for the existing service: 409 naming both.
    let mut r = req("shop/web", "/run/netns/c");
    r.service_ip = Some(ip("10.30.7.10"));
    let e = h.m.attach(r).await.expect_err("mismatch");
    assert_eq!(e.status(), 409);
    assert!(
        e.to_string().contains("10.30.7.9") && e.to_string().contains("10.30.7.10"),
        "{e}"
    );

    // A new service may not take a used address.
    let mut r = req("shop/db", "/run/netns/c");
    r.service_ip = Some(a.instance_ip.v4);
    let e = h.m.attach(r).await.expect_err("used");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("instance IP of shop/web/0"), "{e}");

    // Pinning both to the same address is a conflict too.
    let mut r = req("shop/db", "/run/netns/c");
    r.service_ip = Some(ip("10.30.9.9"));
    r.instance_ip = Some(ip("10.30.9.9"));
    assert_eq!(h.m.attach(r).await.expect_err("same").status(), 409);
}

#[tokio::test]
async fn rejected_requests_change_nothing() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2").await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/free");
    h.ns.alias("/proc/4242/ns/net", "/run/netns/a");
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    h.m.add_remote(remote("shop/web", 5, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");

    let free = "/run/netns/free";
    let with = |f: &dyn Fn(&mut AttachRequest)| {
        let mut r = req("shop/web", free);
        f(&mut r);
        r
    };
    let attach_cases: Vec<(u16, &str, AttachRequest)> = vec![
        (400, "both", with(&|r| r.pid = Some(1))),
        (400, "or its pid", with(&|r| r.netns = None)),
        (
            400,
            "absolute",
            with(&|r| r.netns = Some("run/netns/free".into())),
        ),
        (
            400,
            "pid must not be 0",
            with(&|r| {
                r.netns = None;
                r.pid = Some(0)
            }),
        ),
        (
            400,
            "ifname",
            with(&|r| r.ifname = Some("eth0-is-far-too-long".into())),
        ),
        (400, "ifname", with(&|r| r.ifname = Some("eth 0".into()))),
        (400, "ifname", with(&|r| r.ifname = Some("".into()))),
        (400, "invalid app", with(&|r| r.app = "Shop".into())),
        (
            400,
            "invalid service",
            with(&|r| r.service = "web_1".into()),
        ),
        (
            422,
            "does not exist",
            with(&|r| r.netns = Some("/run/netns/nope".into())),
        ),
        (
            422,
            "not a network namespace",
            with(&|r| r.netns = Some("/etc/hostname".into())),
        ),
        (
            422,
            "own network namespace",
            with(&|r| r.netns = Some("/proc/self/ns/net".into())),
        ),
        (
            422,
            "no process with pid 77",
            with(&|r| {
                r.netns = None;
                r.pid = Some(77)
            }),
        ),
        (
            409,
            "already attached as instance shop/web/0",
            with(&|r| r.netns = Some("/run/netns/a".into())),
        ),
        (
            409,
            "already attached",
            with(&|r| {
                r.netns = None;
                r.pid = Some(4242)
            }),
        ),
        (
            409,
            "shop/web/0 already exists",
            with(&|r| r.instance = Some(0)),
        ),
        (
            409,
            "shop/web/5 already exists",
            with(&|r| r.instance = Some(5)),
        ),
        (
            400,
            "outside the ServiceIP range",
            with(&|r| r.service_ip = Some(ip("10.31.0.1"))),
        ),
        (
            400,
            "outside the ServiceIP range",
            with(&|r| r.instance_ip = Some(ip("192.0.2.1"))),
        ),
        (
            400,
            "network or broadcast",
            with(&|r| r.instance_ip = Some(ip("10.30.255.255"))),
        ),
        (
            409,
            "already has ServiceIP",
            with(&|r| r.service_ip = Some(ip("10.30.1.9"))),
        ),
        (
            409,
            "already the instance IP of shop/web/5",
            with(&|r| r.instance_ip = Some(ip("10.30.2.2"))),
        ),
        (
            409,
            "already the ServiceIP of shop/web",
            with(&|r| r.instance_ip = Some(ip("10.30.1.1"))),
        ),
    ];
    for (status, text, r) in attach_cases {
        let before = h.observe();
        let e = h.m.attach(r.clone()).await.expect_err("must be refused");
        assert_eq!(e.status(), status, "{r:?}: {e}");
        assert!(e.to_string().contains(text), "{r:?}: {e:?} lacks {text:?}");
        assert_eq!(h.observe(), before, "{r:?} changed something");
    }

    let remote_cases: Vec<(u16, &str, RemoteInstanceRequest)> = vec![
        (
            422,
            "register peer n3 first",
            remote("shop/web", 7, "n3", "10.18.3.2", "10.30.3.2"),
        ),
        (
            422,
            "this node",
            remote("shop/web", 7, "n1", "10.18.3.2", "10.30.3.2"),
        ),
        (
            400,
            "own subnet",
            remote("shop/web", 7, "n2", "10.18.1.9", "10.30.3.2"),
        ),
        (
            400,
            "outside the cluster range",
            remote("shop/web", 7, "n2", "10.19.0.2", "10.30.3.2"),
        ),
        (
            400,
            "gateway",
            remote("shop/web", 7, "n2", "10.18.2.1", "10.30.3.2"),
        ),
        (
            400,
            "broadcast",
            remote("shop/web", 7, "n2", "10.18.2.255", "10.30.3.2"),
        ),
        (
            400,
            "outside the ServiceIP range",
            remote("shop/web", 7, "n2", "10.18.2.3", "10.18.2.3"),
        ),
        (
            409,
            "already the instance IP of shop/web/0",
            remote(
                "shop/web",
                7,
                "n2",
                "10.18.2.3",
                &a.instance_ip.v4.to_string(),
            ),
        ),
        (
            409,
            "ns_addr 10.18.2.2 is already used",
            remote("shop/web", 7, "n2", "10.18.2.2", "10.30.3.2"),
        ),
        (
            409,
            "already exists",
            remote("shop/web", 5, "n2", "10.18.2.3", "10.30.3.2"),
        ),
        (
            400,
            "invalid app",
            remote("Shop/web", 7, "n2", "10.18.2.3", "10.30.3.2"),
        ),
    ];
    for (status, text, r) in remote_cases {
        let before = h.observe();
        let e =
            h.m.add_remote(r.clone())
                .await
                .expect_err("must be refused");
        assert_eq!(e.status(), status, "{r:?}: {e}");
        assert!(e.to_string().contains(text), "{r:?}: {e:?} lacks {text:?}");
        assert_eq!(h.observe(), before, "{r:?} changed something");
    }

    let peer_cases: Vec<(u16, &str, &str, &str)> = vec![
        (400, "own name", "n1", "192.0.2.9"),
        (400, "invalid node", "N_2", "192.0.2.9"),
        (400, "must be ip", "n3", "host.example:50103"),
        (400, "must be ip", "n3", "192.0.2.9:notaport"),
        (400, "port must not be 0", "n3", "192.0.2.9:0"),
        (400, "unicast", "n3", "0.0.0.0"),
        (409, "already belongs to peer n2", "n3", "192.0.2.2:50103"),
    ];
    for (status, text, name, endpoint) in peer_cases {
        let before = h.observe();
        let e =
            h.m.put_peer(PeerRequest {
                name: name.into(),
                endpoint: endpoint.into(),
            })
            .await
            .expect_err("must be refused");
        assert_eq!(e.status(), status, "{name} {endpoint}: {e}");
        assert!(e.to_string().contains(text), "{e:?} lacks {text:?}");
        assert_eq!(h.observe(), before);
    }

    let before = h.observe();
    let e = h.m.remove_peer("n2").await.expect_err("in use");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("1 registered instance"), "{e}");
    assert_eq!(
        h.m.remove_peer("n9").await.expect_err("unknown").status(),
        404
    );
    assert_eq!(
        h.m.detach(&key("shop/web", 9))
            .await
            .expect_err("none")
            .status(),
        404
    );
    let e = h.m.detach(&key("shop/web", 5)).await.expect_err("remote");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("n2"), "{e}");
    assert_eq!(
        h.m.remove_remote(&key("shop/web", 0))
            .await
            .expect_err("local")
            .status(),
        409
    );
    assert_eq!(
        h.m.remove_remote(&key("shop/db", 0))
            .await
            .expect_err("none")
            .status(),
        404
    );
    assert_eq!(h.observe(), before);
}

#[tokio::test]
async fn kernel_failure_rolls_back() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let before = h.observe();
    h.m.kernel().fail_attach.store(true, Ordering::SeqCst);
    let e = h
        .attach("shop/web", "/run/netns/a")
        .await
        .expect_err("kernel");
    assert_eq!(e.status(), 500);
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert!(h.m.kernel().present().is_empty());

    h.m.kernel().fail_attach.store(false, Ordering::SeqCst);
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let before = h.observe();
    h.m.kernel().fail_detach.store(true, Ordering::SeqCst);
    assert_eq!(h.m.detach(&a.key).await.expect_err("kernel").status(), 500);
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert_eq!(h.m.kernel().present(), before.3);
}

#[tokio::test]
async fn store_failure_rolls_back_kernel_and_state() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.fail_store.store(true, Ordering::SeqCst);
    let before = h.observe();
    let e = h
        .attach("shop/web", "/run/netns/a")
        .await
        .expect_err("store");
    assert_eq!(e.status(), 500);
    assert!(e.to_string().contains("disk full"), "{e}");
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert!(
        h.m.kernel().present().is_empty(),
        "the new veth was removed again"
    );
    let calls = h.m.kernel().calls();
    let veth = alloc::host_veth_name(&key("shop/web", 0), &BTreeSet::new());
    assert!(matches!(&calls[calls.len() - 2], Call::Attach(s) if s.host_veth == veth));
    assert_eq!(calls[calls.len() - 1], Call::Detach(veth.clone()));

    // Nothing was taken: the next attempt gets the same addresses.
    h.fail_store.store(false, Ordering::SeqCst);
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    assert_eq!(a.ns_addr.v4, ip("10.18.1.2"));
    assert_eq!(h.m.snapshot().version, 1);

    // Detach whose store write fails re-creates the veth.
    h.fail_store.store(true, Ordering::SeqCst);
    let before = h.observe();
    assert_eq!(h.m.detach(&a.key).await.expect_err("store").status(), 500);
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert_eq!(h.m.kernel().present(), BTreeSet::from([veth]));

    // Peers and remote instances too.
    let before = h.observe();
    let e =
        h.m.put_peer(PeerRequest {
            name: "n2".into(),
            endpoint: "192.0.2.2".into(),
        })
        .await
        .expect_err("store");
    assert_eq!(e.status(), 500);
    assert_eq!(h.observe(), before);
}

#[tokio::test]
async fn reopen_restores_the_same_snapshot_and_reapplies_attachments() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.peer("n2", "192.0.2.2").await;
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let mut r = req("shop/db", "/run/netns/b");
    r.ifname = Some("net1".into());
    let b = h.m.attach(r).await.expect("b");
    h.m.add_remote(remote("shop/web", 3, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");
    let snap = h.m.snapshot();
    let s = h.m.settings().clone();

    // A fresh kernel (after a reboot): nothing is attached.
    let h = h
        .reopen(s.clone(), FakeKernel::default())
        .await
        .expect("reopen");
    assert_eq!(h.m.snapshot(), snap, "same view, same version");
    let attached: Vec<String> =
        h.m.kernel()
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Attach(spec) => Some(spec.host_veth),
                _ => None,
            })
            .collect();
    let veth = |i: &Instance| match &i.placement {
        Placement::Local { host_veth, .. } => host_veth.clone(),
        Placement::Remote { .. } => panic!("local"),
    };
    let mut want = vec![veth(&a), veth(&b)];
    want.sort();
    let mut got = attached;
    got.sort();
    assert_eq!(got, want);

    // Everything still there: only checks, no attach.
    let kernel = FakeKernel::default();
    kernel.present.lock().expect("lock").extend(want.clone());
    let h = h.reopen(s.clone(), kernel).await.expect("reopen");
    assert!(h
        .m
        .kernel()
        .calls()
        .iter()
        .all(|c| !matches!(c, Call::Attach(_))));
    assert_eq!(h.m.snapshot(), snap);

    // The container of b is gone: released, with its service.
    h.ns.remove("/run/netns/b");
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    let now = h.m.snapshot();
    assert_eq!(now.version, snap.version + 1);
    assert!(!now.instances.contains_key(&b.key));
    assert!(!now.services.contains_key(&b.key.name));
    assert!(now.instances.contains_key(&a.key));
    assert!(h.m.kernel().calls().contains(&Call::Detach(veth(&b))));
    // And that is persisted.
    let state: State = serde_json::from_slice(&h.file()).expect("json");
    assert_eq!(state.version, now.version);
    assert_eq!(state.instances.len(), 2);
}

/// Opens a node, changes its settings, reopens: returns the refusal, after
/// checking it names the state file and left the file alone.
async fn refused_with(change: impl FnOnce(&mut Settings)) -> String {
    let h = H::new().await;
    let mut s = h.m.settings().clone();
    change(&mut s);
    let path = h.dir.path().join("state.json");
    let before = fs::read(&path).expect("file");
    let H { dir, ns, m, .. } = h;
    drop(m);
    let store = LocalStore::new(dir.path());
    let r = Manager::open_inner(s, FakeKernel::default(), Box::new(store), Box::new(ns)).await;
    let Err(e) = r else { panic!("must refuse") };
    assert_eq!(fs::read(&path).expect("file"), before);
    let msg = format!("{e:#}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[tokio::test]
async fn state_of_another_plan_or_node_is_refused() {
    let msg = refused_with(|s| s.plan.node_index = 2).await;
    assert!(msg.starts_with("node.index is 2 in the config"), "{msg}");
    let msg = refused_with(|s| s.plan.services = "10.40.0.0/16".parse().expect("net")).await;
    assert!(msg.contains("network.services"), "{msg}");
    let msg = refused_with(|s| s.plan.cluster6 = "fdff:19::/112".parse().expect("net")).await;
    assert!(msg.contains("network.cluster6"), "{msg}");
    let msg = refused_with(|s| s.node_name = "n7".into()).await;
    assert!(msg.contains("node.name"), "{msg}");
}

#[tokio::test]
async fn corrupt_state_is_an_error_not_a_fresh_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("state.json"), b"{not json").expect("write");
    let s = settings(dir.path());
    let Err(e) = H::open_in(dir, s, FakeNs::default(), FakeKernel::default()).await else {
        panic!("must refuse")
    };
    assert!(format!("{e:#}").contains("state.json"), "{e:#}");
}

#[tokio::test]
async fn last_instance_gone_releases_the_service() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.peer("n2", "192.0.2.2").await;
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let b = h.attach("shop/web", "/run/netns/b").await.expect("b");
    let name = a.key.name.clone();
    assert_eq!(h.m.detach(&a.key).await.expect("detach").key, a.key);
    assert!(h.m.snapshot().services.contains_key(&name));
    h.m.detach(&b.key).await.expect("detach");
    assert!(!h.m.snapshot().services.contains_key(&name));
    assert!(h.m.kernel().present().is_empty());

    // The addresses are free again.
    let a2 = h.attach("shop/web", "/run/netns/a").await.expect("again");
    assert_eq!(h.m.snapshot().services[&name].rr_ip.v4, ip("10.30.1.1"));
    assert_eq!(a2.instance_ip.v4, ip("10.30.1.3"));
    assert_eq!(a2.ns_addr.v4, ip("10.18.1.2"));

    // Remote instances count too.
    h.m.add_remote(remote("shop/api", 0, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");
    let api = key("shop/api", 0);
    assert!(h.m.snapshot().services.contains_key(&api.name));
    h.m.remove_remote(&api).await.expect("remove");
    assert!(!h.m.snapshot().services.contains_key(&api.name));
    h.m.remove_peer("n2").await.expect("peer gone");
}

#[tokio::test]
async fn subscribers_see_every_change_with_increasing_versions() {
    let h = H::new().await;
    let mut rx = h.m.subscribe();
    assert_eq!(rx.borrow_and_update().version, 0);
    h.ns.add("/run/netns/a");
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    rx.changed().await.expect("changed");
    let s1 = rx.borrow_and_update().clone();
    assert_eq!(s1.version, 1);
    assert!(s1.instances.contains_key(&a.key));

    let (p, created) =
        h.m.put_peer(PeerRequest {
            name: "n2".into(),
            endpoint: "192.0.2.2".into(),
        })
        .await
        .expect("peer");
    assert!(created);
    assert_eq!(p.endpoint, "192.0.2.2:50103".parse().expect("sa"));
    rx.changed().await.expect("changed");
    assert_eq!(rx.borrow_and_update().version, 2);

    // Same endpoint again: nothing to publish.
    let (_, created) =
        h.m.put_peer(PeerRequest {
            name: "n2".into(),
            endpoint: "192.0.2.2:50103".into(),
        })
        .await
        .expect("peer");
    assert!(!created);
    assert!(!rx.has_changed().expect("open"));

    // Moving it publishes.
    let (p, created) =
        h.m.put_peer(PeerRequest {
            name: "n2".into(),
            endpoint: "[2001:db8::2]".into(),
        })
        .await
        .expect("move");
    assert!(!created);
    assert_eq!(p.endpoint, "[2001:db8::2]:50103".parse().expect("sa"));
    rx.changed().await.expect("changed");
    let s3 = rx.borrow_and_update().clone();
    assert_eq!(s3.version, 3);
    assert_eq!(s3.peers["n2"].endpoint, p.endpoint);

    h.m.detach(&a.key).await.expect("detach");
    rx.changed().await.expect("changed");
    assert_eq!(rx.borrow_and_update().version, 4);
    assert_eq!(h.m.snapshot().version, 4);
}

#[tokio::test]
async fn exhausted_pools_are_507() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    // /30 per node: one container address (.6), two service addresses
    // (the round-robin and closest ServiceIPs of one service).
    s.plan.node_prefix = 30;
    let h = H::open_in(dir, s, FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    assert_eq!(h.m.snapshot().node.subnet.to_string(), "10.18.0.4/30");
    for p in ["/run/netns/a", "/run/netns/b", "/run/netns/c"] {
        h.ns.add(p);
    }
    let mut r = req("shop/web", "/run/netns/a");
    r.instance_ip = Some(ip("10.30.9.8"));
    let a = h.m.attach(r).await.expect("a");
    assert_eq!(a.ns_addr.v4, ip("10.18.0.6"));
    assert_eq!(a.instance_ip.v4, ip("10.30.9.8"));
    h.peer("n2", "192.0.2.2").await;
    let before = h.observe();
    let e =
        h.m.add_remote(remote("shop/db", 0, "n2", "10.18.0.10", "10.30.9.20"))
            .await
            .expect_err("services");
    assert_eq!(e.status(), 507);
    assert!(e.to_string().contains("10.30.0.4/30"), "{e}");
    assert_eq!(h.observe(), before);
    // Enough service addresses (pinned), but no container address left.
    let mut r = req("shop/web", "/run/netns/c");
    r.instance_ip = Some(ip("10.30.9.9"));
    let e = h.m.attach(r).await.expect_err("subnet");
    assert_eq!(e.status(), 507);
    assert!(e.to_string().contains("10.18.0.4/30"), "{e}");
    assert_eq!(h.observe(), before);
}

#[tokio::test]
async fn attach_by_pid_records_the_pid() {
    let h = H::new().await;
    h.ns.add("/proc/4321/ns/net");
    let mut r = req("shop/web", "/unused");
    r.netns = None;
    r.pid = Some(4321);
    let a = h.m.attach(r).await.expect("pid");
    assert!(matches!(
        &a.placement,
        Placement::Local { netns, pid: Some(4321), .. } if netns == Path::new("/proc/4321/ns/net")
    ));
}

#[test]
fn manager_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn check(m: &Manager<FakeKernel>) {
        send(&m.attach(req("a/b", "/x")));
        send(&m.detach(&key("a/b", 0)));
        send(&m.add_remote(remote("a/b", 0, "n", "10.18.2.2", "10.30.2.2")));
        send(&m.remove_remote(&key("a/b", 0)));
        send(&m.remove_peer("n"));
        send(&m.put_peer(PeerRequest {
            name: "n".into(),
            endpoint: "192.0.2.1".into(),
        }));
    }
    let _ = check;
}

// ------------------------------------------------- the real netns probe

/// A named network namespace made with `ip netns add`, removed on drop.
struct TempNetns(String);

impl TempNetns {
    fn create() -> Option<Self> {
        let name = format!("ptm-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Self(name))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[tokio::test]
async fn real_probe_checks_namespaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let m = Manager::open(s, FakeKernel::default()).await.expect("open");
    let attach = |netns: Option<&str>, pid: Option<u32>| {
        let mut r = req("shop/web", "/x");
        r.netns = netns.map(PathBuf::from);
        r.pid = pid;
        m.attach(r)
    };
    let e = attach(Some("/proc/self/ns/net"), None)
        .await
        .expect_err("own");
    assert_eq!(e.status(), 422);
    assert!(e.to_string().contains("own network namespace"), "{e}");
    let e = attach(Some("/etc/hostname"), None).await.expect_err("file");
    assert_eq!(e.status(), 422);
    assert!(e.to_string().contains("not a network namespace"), "{e}");
    let e = attach(Some("/proc/self/ns/mnt"), None)
        .await
        .expect_err("mnt");
    assert_eq!(e.status(), 422);
    let e = attach(None, Some(std::process::id()))
        .await
        .expect_err("own pid");
    assert_eq!(e.status(), 422);
    assert!(e.to_string().contains("own network namespace"), "{e}");
    assert_eq!(m.snapshot().version, 0);

    let Some(ns) = TempNetns::create() else {
        eprintln!("skipping the positive case: `ip netns add` is not available here");
        return;
    };
    let path = ns.path();
    let a = attach(path.to_str(), None)
        .await
        .expect("a real netns is accepted");
    assert!(matches!(&a.placement, Placement::Local { netns, .. } if netns == &path));
    let e = attach(path.to_str(), None).await.expect_err("twice");
    assert_eq!(e.status(), 409);
    // Reopen after the namespace is gone: the instance is released.
    drop(m);
    drop(ns);
    let m = Manager::open(settings(dir.path()), FakeKernel::default())
        .await
        .expect("reopen");
    assert!(m.snapshot().instances.is_empty());
    assert!(m.snapshot().services.is_empty());
}

// ------------------------------------------------- cluster store (fake)

/// A registry that allocates from fixed addresses and records releases;
/// fails with `Unavailable` on demand, like an unreachable etcd.
#[derive(Debug, Default)]
struct FakeRegistry {
    released: StdMutex<Vec<InstanceKey>>,
    down: AtomicBool,
    next_ip: AtomicU64,
}

impl Registry for FakeRegistry {
    fn service<'a>(
        &'a self,
        name: &'a ServiceName,
        _pinned_rr: Option<Ipv4Addr>,
    ) -> futures::future::BoxFuture<'a, Result<Service>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            let p = plan(1);
            Ok(Service {
                name: name.clone(),
                rr_ip: p.service_pair(ip("10.30.200.1")),
                closest_ip: Some(p.service_pair(ip("10.30.200.2"))),
            })
        })
    }

    fn claim(
        &self,
        claim: Claim,
    ) -> futures::future::BoxFuture<'_, Result<(InstanceKey, DualAddr)>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
            let v4 = Ipv4Addr::new(10, 30, 200, 10 + u8::try_from(n).expect("few"));
            let key = InstanceKey {
                name: claim.name,
                number: claim.number.unwrap_or(40 + u32::try_from(n).expect("few")),
            };
            Ok((key, plan(1).service_pair(v4)))
        })
    }

    fn release<'a>(&'a self, key: &'a InstanceKey) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.released.lock().expect("lock").push(key.clone());
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            Ok(())
        })
    }

    fn put_policy<'a>(
        &'a self,
        _policy: &'a crate::model::Policy,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            Ok(())
        })
    }
}

async fn clustered(dir: &Path, ns: &FakeNs, reg: Arc<FakeRegistry>) -> Manager<FakeKernel> {
    Manager::open_full(
        settings(dir),
        FakeKernel::default(),
        Box::new(LocalStore::new(dir)),
        Box::new(ns.clone()),
        Some(reg),
    )
    .await
    .expect("open clustered")
}

fn remote_inst(app_service: &str, n: u32, node: &str, ns_addr: &str, iip: &str) -> Instance {
    let p = plan(1);
    Instance {
        key: key(app_service, n),
        ns_addr: p.cluster_pair(ip(ns_addr)),
        instance_ip: p.service_pair(ip(iip)),
        placement: Placement::Remote { node: node.into() },
    }
}

fn view_with(services: &[Service], instances: &[Instance], peers: &[(&str, &str)]) -> ClusterView {
    ClusterView {
        revision: 7,
        peers: peers
            .iter()
            .map(|(n, e)| {
                (
                    (*n).to_owned(),
                    Peer {
                        name: (*n).to_owned(),
                        endpoint: e.parse().expect("endpoint"),
                    },
                )
            })
            .collect(),
        services: services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        instances: instances
            .iter()
            .map(|i| (i.key.clone(), i.clone()))
            .collect(),
        policy: None,
    }
}

fn svc(name: &str, rr: &str, closest: &str) -> Service {
    let p = plan(1);
    Service {
        name: name.parse().expect("name"),
        rr_ip: p.service_pair(ip(rr)),
        closest_ip: Some(p.service_pair(ip(closest))),
    }
}

#[tokio::test]
async fn clustered_attach_uses_the_registry_and_detach_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = FakeNs::default();
    ns.add("/run/netns/a");
    let reg = Arc::new(FakeRegistry::default());
    let m = clustered(dir.path(), &ns, reg.clone()).await;
    assert!(m.is_clustered());
    let a = m
        .attach(req("shop/web", "/run/netns/a"))
        .await
        .expect("attach");
    assert_eq!(a.key.number, 40, "the number the registry chose");
    assert_eq!(a.instance_ip.v4, ip("10.30.200.10"));
    assert_eq!(
        a.ns_addr.v4,
        ip("10.18.1.2"),
        "the namespace address stays local"
    );
    let web = &m.snapshot().services[&a.key.name];
    assert_eq!(web.rr_ip.v4, ip("10.30.200.1"));
    m.detach(&a.key).await.expect("detach");
    assert_eq!(*reg.released.lock().expect("lock"), vec![a.key.clone()]);

    // Peers and remote instances come from the cluster store only.
    let e = m
        .put_peer(PeerRequest {
            name: "n2".into(),
            endpoint: "192.0.2.2".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("etcd"), "{e}");

    // The store down: the attach fails with 503 and changes nothing.
    reg.down.store(true, Ordering::SeqCst);
    let before = (
        m.snapshot(),
        fs::read(dir.path().join("state.json")).expect("file"),
    );
    let e = m
        .attach(req("shop/web", "/run/netns/a"))
        .await
        .expect_err("down");
    assert_eq!(e.status(), 503);
    assert_eq!(
        (
            m.snapshot(),
            fs::read(dir.path().join("state.json")).expect("file")
        ),
        before
    );
    assert!(m.kernel().present().is_empty());
}

#[tokio::test]
async fn cluster_view_merges_with_local_attachments_and_skips_clashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = FakeNs::default();
    ns.add("/run/netns/a");
    let reg = Arc::new(FakeRegistry::default());
    let m = clustered(dir.path(), &ns, reg).await;
    let a = m
        .attach(req("shop/web", "/run/netns/a"))
        .await
        .expect("attach");
    let web = m.snapshot().services[&a.key.name].clone();
    let v0 = m.snapshot().version;

    let good = remote_inst("shop/web", 1, "n2", "10.18.2.2", "10.30.2.5");
    let other_svc = svc("shop/db", "10.30.2.1", "10.30.2.2");
    let db = remote_inst("shop/db", 0, "n3", "10.18.3.2", "10.30.3.5");
    let bad = [
        // Its instance IP is the local instance's.
        remote_inst("shop/web", 2, "n2", "10.18.2.3", "10.30.200.10"),
        // On this node's own subnet.
        remote_inst("shop/web", 3, "n2", "10.18.1.9", "10.30.2.6"),
        // On an unknown node.
        remote_inst("shop/web", 4, "nx", "10.18.9.2", "10.30.2.7"),
        // The same key as the local attachment.
        remote_inst("shop/web", a.key.number, "n2", "10.18.2.4", "10.30.2.8"),
        // A service nobody described.
        remote_inst("shop/zzz", 0, "n2", "10.18.2.5", "10.30.2.9"),
    ];
    let clash_svc = svc("shop/clash", "10.30.200.1", "10.30.2.3");
    let mut insts = vec![good.clone(), db.clone()];
    insts.extend(bad.iter().cloned());
    let view = view_with(
        &[web.clone(), other_svc.clone(), clash_svc],
        &insts,
        &[
            ("n2", "192.0.2.2:50103"),
            ("n3", "192.0.2.3:50103"),
            ("n1", "192.0.2.1:50103"),
        ],
    );
    assert!(m.set_cluster_view(&view).await.expect("apply"));
    let snap = m.snapshot();
    assert_eq!(snap.version, v0 + 1);
    assert_eq!(
        snap.peers.keys().collect::<Vec<_>>(),
        ["n2", "n3"],
        "this node (n1) is never its own peer"
    );
    let keys: Vec<String> = snap.instances.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["shop/db/0", "shop/web/1", &a.key.to_string()]);
    assert!(snap.instances[&a.key].is_local());
    assert!(snap.services.contains_key(&other_svc.name));
    assert!(!snap
        .services
        .contains_key(&"shop/clash".parse().expect("n")));
    // Persisted: a restart while etcd is down starts with this view.
    let file =
        String::from_utf8(fs::read(dir.path().join("state.json")).expect("f")).expect("utf8");
    assert!(file.contains("10.30.3.5"), "remote instance persisted");

    // The same view again changes nothing.
    assert!(!m.set_cluster_view(&view).await.expect("apply"));
    assert_eq!(m.snapshot().version, v0 + 1);

    // n3 and its instance gone: removed; the local attachment stays.
    let view = view_with(&[web, other_svc], &[good], &[("n2", "192.0.2.2:50103")]);
    assert!(m.set_cluster_view(&view).await.expect("apply"));
    let snap = m.snapshot();
    assert_eq!(snap.instances.len(), 2);
    assert!(snap.instances.contains_key(&a.key));
    assert_eq!(snap.peers.len(), 1);
}

#[tokio::test]
async fn a_state_without_closest_ips_gets_them_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let mut state = State::empty(&s.node_name, &s.plan);
    state.version = 3;
    state.services.push(Service {
        name: "shop/web".parse().expect("name"),
        rr_ip: s.plan.service_pair(ip("10.30.1.1")),
        closest_ip: None,
    });
    LocalStore::new(dir.path()).save(&state).expect("save");
    let m = Manager::open_inner(
        s,
        FakeKernel::default(),
        Box::new(LocalStore::new(dir.path())),
        Box::new(FakeNs::default()),
    )
    .await
    .expect("open");
    let snap = m.snapshot();
    let web = &snap.services[&"shop/web".parse().expect("name")];
    assert_eq!(web.closest_ip.map(|c| c.v4), Some(ip("10.30.1.2")));
    assert_eq!(snap.version, 4);
}

#[tokio::test]
async fn resolv_conf_follows_attach_detach_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.resolv = Some(crate::resolv::ResolvConf {
        nameservers: vec!["10.18.1.1".parse().expect("ip")],
        domain: "cluster.internal".into(),
        etc_netns: etc.path().to_owned(),
    });
    let h = H::open_in(dir, s.clone(), FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    h.ns.add("/run/netns/c1");
    let inst = h.attach("shop/web", "/run/netns/c1").await.expect("attach");
    let file = etc.path().join("c1/resolv.conf");
    let text = fs::read_to_string(&file).expect("written on attach");
    assert!(text.contains("nameserver 10.18.1.1\n"), "{text}");
    assert!(
        text.contains("search shop.svc.cluster.internal svc.cluster.internal\n"),
        "{text}"
    );

    // Lost (say, /etc/netns wiped): a restart writes it again.
    fs::remove_file(&file).expect("rm");
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    assert!(file.exists(), "rewritten at start");

    h.m.detach(&inst.key).await.expect("detach");
    assert!(
        !etc.path().join("c1").exists(),
        "removed with its dir on detach"
    );
}

#[tokio::test]
async fn a_runtime_attach_is_found_by_container_id_and_repeats_are_idempotent() {
    let h = H::new().await;
    h.ns.add("/run/netns/cni-1");
    h.ns.add("/run/netns/cni-2");
    let mut r = req("shop/web", "/run/netns/cni-1");
    r.container_id = Some("abc123".into());
    let first = h.m.attach(r.clone()).await.expect("attach");
    let version = h.m.snapshot().version;

    // The runtime repeats its ADD: same instance, nothing changes.
    let again = h.m.attach(r.clone()).await.expect("repeat");
    assert_eq!(again, first);
    assert_eq!(h.m.snapshot().version, version);

    // The same container for another service is a conflict.
    let mut other = r.clone();
    other.service = "db".into();
    let err = h.m.attach(other).await.expect_err("other service");
    assert!(err.to_string().contains("abc123"), "{err}");

    assert_eq!(
        h.m.find_container("abc123", "eth0").await.map(|i| i.key),
        Some(first.key.clone())
    );
    assert_eq!(h.m.find_container("abc123", "eth1").await, None);
    assert_eq!(h.m.find_container("nope", "eth0").await, None);

    // Bad ids are refused before anything happens.
    for bad in ["", "-lead", "a/b", "x y", &"a".repeat(257)] {
        let mut r = req("shop/web", "/run/netns/cni-2");
        r.container_id = Some(bad.to_owned());
        let err = h.m.attach(r).await.expect_err(bad);
        assert!(err.to_string().contains("container_id"), "{err}");
    }
    assert_eq!(h.m.snapshot().version, version);

    h.m.detach(&first.key).await.expect("detach");
    assert_eq!(h.m.find_container("abc123", "eth0").await, None);
}
