//! The driver's rules with a real `Manager` over the recording fake kernel
//! (nothing touches the system's links), a real network namespace to join
//! (`unshare --net sleep`, needs root, killed by pid), and the bodies
//! Docker's engine sends.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::networks::NETWORKS_FILE;
use super::{serve, Driver};
use crate::manager::Manager;
use crate::model::Placement;
use crate::testing::{settings, NetnsChild, RecordingKernel};

const NET: &str = "5c7a0b3f2d9e4a1b8c6d7e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";
const EP: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddccbbaa99887766554433221100";
const EP2: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

mod multinet;

struct Harness {
    dir: tempfile::TempDir,
    mgr: Arc<Manager<RecordingKernel>>,
    kernel: RecordingKernel,
    driver: Driver<RecordingKernel>,
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = RecordingKernel::default();
        let mgr = Arc::new(
            Manager::open(settings(dir.path().join("state")), kernel.clone())
                .await
                .expect("open manager"),
        );
        let driver = Driver::open(Arc::clone(&mgr)).expect("open driver");
        Harness {
            dir,
            mgr,
            kernel,
            driver,
        }
    }

    async fn call(&self, method: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("encode");
        let r = self.driver.handle(method, &bytes).await;
        (r.status, r.body)
    }

    async fn ok(&self, method: &str, body: &Value) -> Value {
        let (status, body) = self.call(method, body).await;
        assert_eq!(status, 200, "{method}: {body}");
        assert!(body.get("Err").is_none(), "{method}: {body}");
        body
    }

    async fn err(&self, method: &str, body: &Value, want: u16) -> String {
        let (status, body) = self.call(method, body).await;
        assert_eq!(status, want, "{method}: {body}");
        let msg = body["Err"].as_str().expect("Err is a string").to_owned();
        assert!(!msg.is_empty());
        msg
    }

    fn networks_file(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("state").join(NETWORKS_FILE)).ok()
    }
}

/// `docker network create -d proxytun --ipam-driver null -o app=.. -o service=..`
fn create_network(id: &str, generic: Value) -> Value {
    json!({
        "NetworkID": id,
        "Options": {
            "com.docker.network.enable_ipv6": false,
            "com.docker.network.generic": generic,
        },
        "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}],
        "IPv6Data": [],
    })
}

fn create_endpoint(net: &str, ep: &str) -> Value {
    json!({
        "NetworkID": net,
        "EndpointID": ep,
        "Interface": {"Address": "", "AddressIPv6": "", "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []},
    })
}

fn join(net: &str, ep: &str, sandbox: &Path) -> Value {
    json!({
        "NetworkID": net,
        "EndpointID": ep,
        "SandboxKey": sandbox,
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []},
    })
}

fn ids(net: &str, ep: &str) -> Value {
    json!({"NetworkID": net, "EndpointID": ep})
}

#[tokio::test]
async fn handshake_and_capabilities() {
    let h = Harness::new().await;
    let r = h.driver.handle("/Plugin.Activate", b"").await;
    assert_eq!(
        (r.status, r.body),
        (200, json!({"Implements": ["NetworkDriver"]}))
    );
    let r = h.driver.handle("/NetworkDriver.GetCapabilities", b"").await;
    assert_eq!(
        (r.status, r.body),
        (200, json!({"Scope": "local", "ConnectivityScope": "local"}))
    );
    let msg = h.err("/NetworkDriver.Frobnicate", &json!({}), 404).await;
    assert!(msg.contains("Frobnicate"), "{msg}");
    // Docker's optional methods are answered too, and change nothing.
    h.ok(
        "/NetworkDriver.DiscoverNew",
        &json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.1", "self": true}}),
    )
    .await;
    h.ok(
        "/NetworkDriver.DiscoverDelete",
        &json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.1", "self": false}}),
    )
    .await;
    h.ok("/NetworkDriver.RevokeExternalConnectivity", &ids(NET, EP))
        .await;
    h.ok("/NetworkDriver.FreeNetwork", &json!({"NetworkID": NET}))
        .await;
    assert_eq!(
        h.ok("/NetworkDriver.AllocateNetwork", &json!({"NetworkID": NET, "Options": {"app": "shop", "service": "web"}, "IPv4Data": [], "IPv6Data": []})).await,
        json!({"Options": {}})
    );
    let msg = h
        .err(
            "/NetworkDriver.AllocateNetwork",
            &json!({"NetworkID": NET, "Options": {"app": "shop"}}),
            500,
        )
        .await;
    assert!(msg.contains("-o service"), "{msg}");
    assert!(h.networks_file().is_none(), "nothing persisted");
}

#[tokio::test]
async fn create_network_validates_and_persists() {
    let h = Harness::new().await;
    let cases: &[(Value, &str)] = &[
        (json!({"service": "web"}), "missing -o app"),
        (json!({"app": "shop"}), "missing -o service"),
        (json!(null), "missing -o app"),
        (json!({"app": "Shop", "service": "web"}), "-o app"),
        (
            json!({"app": "shop", "service": "web", "colour": "red"}),
            "unknown option -o colour",
        ),
        (
            json!({"app": "shop", "service": "web", "ifname": "a-very-long-interface"}),
            "-o ifname",
        ),
        (
            json!({"app": "shop", "service": "web", "service_ip": "10.30.0"}),
            "-o service_ip",
        ),
        (
            json!({"app": "shop", "service": "web", "service_ip": "192.168.1.1"}),
            "ServiceIP range",
        ),
    ];
    for (generic, want) in cases {
        let msg = h
            .err(
                "/NetworkDriver.CreateNetwork",
                &create_network(NET, generic.clone()),
                500,
            )
            .await;
        assert!(msg.contains(want), "{generic}: {msg}");
    }
    // Docker's default IPAM allocated a pool: refused, naming the fix.
    let mut with_pool = create_network(NET, json!({"app": "shop", "service": "web"}));
    with_pool["IPv4Data"] = json!([{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}]);
    let msg = h.err("/NetworkDriver.CreateNetwork", &with_pool, 500).await;
    assert!(
        msg.contains("--ipam-driver null") && msg.contains("172.18.0.0/16"),
        "{msg}"
    );
    // Malformed bodies and ids are 400.
    let r = h
        .driver
        .handle("/NetworkDriver.CreateNetwork", b"{\"NetworkID\": ")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    h.err(
        "/NetworkDriver.CreateNetwork",
        &json!({"NetworkID": 7}),
        400,
    )
    .await;
    h.err(
        "/NetworkDriver.CreateNetwork",
        &create_network("../x", json!({"app": "shop", "service": "web"})),
        400,
    )
    .await;
    h.err(
        "/NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {"com.docker.network.generic": "app=shop"}}),
        400,
    )
    .await;
    assert!(
        h.networks_file().is_none(),
        "a refused request persisted something"
    );

    let generic =
        json!({"app": "shop", "service": "web", "ifname": "pt0", "service_ip": "10.30.0.77"});
    h.ok(
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, generic.clone()),
    )
    .await;
    // Repeated with the same options: fine; with others: refused.
    h.ok(
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, generic),
    )
    .await;
    let msg = h
        .err(
            "/NetworkDriver.CreateNetwork",
            &create_network(NET, json!({"app": "shop", "service": "db"})),
            500,
        )
        .await;
    assert!(msg.contains("already exists as shop/web"), "{msg}");
    let file: Value = serde_json::from_str(&h.networks_file().expect("persisted")).expect("JSON");
    assert_eq!(
        file,
        json!({"format": 1, "networks": {NET: {"app": "shop", "service": "web", "ifname": "pt0", "service_ip": "10.30.0.77"}}})
    );

    // A new driver over the same state (a daemon restart) knows it.
    let again = Driver::open(Arc::clone(&h.mgr)).expect("reopen");
    let net = again.networks().get(NET).expect("network survived");
    assert_eq!((net.app.as_str(), net.service.as_str()), ("shop", "web"));

    h.ok("/NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}))
        .await;
    h.ok("/NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}))
        .await;
    let file: Value = serde_json::from_str(&h.networks_file().expect("file")).expect("JSON");
    assert_eq!(file["networks"], json!({}));
}

#[tokio::test]
async fn endpoint_lifecycle_attaches_and_detaches() {
    let h = Harness::new().await;
    let sandbox = NetnsChild::start();
    let unknown = h
        .err(
            "/NetworkDriver.CreateEndpoint",
            &create_endpoint(NET, EP),
            500,
        )
        .await;
    assert!(unknown.contains("unknown network"), "{unknown}");
    let unknown = h
        .err("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()), 500)
        .await;
    assert!(unknown.contains("unknown network"), "{unknown}");
    assert!(h.mgr.snapshot().instances.is_empty());

    h.ok(
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, json!({"app": "shop", "service": "front"})),
    )
    .await;
    let mut given = create_endpoint(NET, EP);
    given["Interface"]["Address"] = json!("172.18.0.2/16");
    let msg = h.err("/NetworkDriver.CreateEndpoint", &given, 500).await;
    assert!(
        msg.contains("172.18.0.2/16") && msg.contains("--ipam-driver null"),
        "{msg}"
    );
    // No Interface in the answer: libnetwork keeps what it has (nothing).
    assert_eq!(
        h.ok("/NetworkDriver.CreateEndpoint", &create_endpoint(NET, EP))
            .await,
        json!({})
    );
    let info = h.ok("/NetworkDriver.EndpointOperInfo", &ids(NET, EP)).await;
    assert_eq!(info["Value"]["joined"], json!(false), "{info}");

    let before = h.kernel.calls().len();
    let answer = h
        .ok("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()))
        .await;
    assert_eq!(answer, json!({"DisableGatewayService": true}));
    let inst = h
        .mgr
        .find_container(EP, "eth0")
        .await
        .expect("joined endpoint is an instance");
    assert_eq!(inst.key.to_string(), "shop/front/0");
    assert!(matches!(&inst.placement, Placement::Local { netns, .. } if netns == &sandbox.netns()));
    let attaches = |k: &RecordingKernel| {
        k.calls()
            .iter()
            .filter(|c| c.starts_with("attach "))
            .count()
    };
    assert_eq!(attaches(&h.kernel), 1, "{:?}", h.kernel.calls());

    // Docker may repeat a Join: same answer, nothing new.
    let again = h
        .ok("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()))
        .await;
    assert_eq!(again, answer);
    assert_eq!(attaches(&h.kernel), 1);
    assert_eq!(h.mgr.snapshot().instances.len(), 1);
    assert!(h.kernel.calls().len() > before);

    let info = h.ok("/NetworkDriver.EndpointOperInfo", &ids(NET, EP)).await;
    let v = &info["Value"];
    assert_eq!(v["joined"], json!(true), "{info}");
    assert_eq!(v["instance"], json!("shop/front/0"));
    assert_eq!(v["ns_addr"], json!(inst.ns_addr.v4.to_string()));
    assert_eq!(v["instance_ip"], json!(inst.instance_ip.v4.to_string()));
    assert_eq!(v["ifname"], json!("eth0"));
    let svc = h
        .mgr
        .snapshot()
        .services
        .values()
        .next()
        .cloned()
        .expect("service");
    assert_eq!(v["service_ip"], json!(svc.rr_ip.v4.to_string()));

    // A second endpoint in the same sandbox is refused by the manager, and
    // the refusal says why.
    h.ok("/NetworkDriver.CreateEndpoint", &create_endpoint(NET, EP2))
        .await;
    let msg = h
        .err(
            "/NetworkDriver.Join",
            &join(NET, EP2, &sandbox.netns()),
            500,
        )
        .await;
    assert!(msg.contains("already attached"), "{msg}");

    h.ok("/NetworkDriver.Leave", &ids(NET, EP)).await;
    assert!(h.mgr.snapshot().instances.is_empty());
    assert!(h.kernel.calls().iter().any(|c| c.starts_with("detach ")));
    // Leave again, DeleteEndpoint after Leave: successes that change nothing.
    h.ok("/NetworkDriver.Leave", &ids(NET, EP)).await;
    h.ok("/NetworkDriver.DeleteEndpoint", &ids(NET, EP)).await;
    h.ok("/NetworkDriver.DeleteEndpoint", &ids(NET, EP2)).await;
    h.ok("/NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}))
        .await;
    let msg = h
        .err("/NetworkDriver.EndpointOperInfo", &ids(NET, EP), 500)
        .await;
    assert!(msg.contains("unknown network"), "{msg}");
}

#[tokio::test]
async fn delete_endpoint_without_leave_detaches() {
    let h = Harness::new().await;
    let sandbox = NetnsChild::start();
    h.ok(
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, json!({"app": "shop", "service": "front"})),
    )
    .await;
    h.ok("/NetworkDriver.CreateEndpoint", &create_endpoint(NET, EP))
        .await;
    h.ok("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()))
        .await;
    // The network's record lost (e.g. the file was moved away): Leave and
    // DeleteEndpoint still find the instance by its endpoint id.
    h.driver.networks().remove(NET).expect("remove");
    h.ok("/NetworkDriver.DeleteEndpoint", &ids(NET, EP)).await;
    assert!(h.mgr.snapshot().instances.is_empty());
}

#[tokio::test]
async fn kernel_failure_on_join_is_an_err_and_changes_nothing() {
    let h = Harness::new().await;
    let sandbox = NetnsChild::start();
    h.ok(
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, json!({"app": "shop", "service": "front"})),
    )
    .await;
    h.kernel
        .fail_attach
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let msg = h
        .err("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()), 500)
        .await;
    assert!(msg.contains("Operation not permitted"), "{msg}");
    assert!(h.mgr.snapshot().instances.is_empty());
    let missing = h
        .err(
            "/NetworkDriver.Join",
            &join(NET, EP, Path::new("/nonexistent/netns")),
            500,
        )
        .await;
    assert!(missing.contains("/nonexistent/netns"), "{missing}");
    h.err(
        "/NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": ""}),
        400,
    )
    .await;
}

#[tokio::test]
async fn docker_run_p_publishes_the_ports_until_revoked() {
    let h = Harness::new().await;
    let sandbox = NetnsChild::start();
    h.ok(
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, json!({"app": "shop", "service": "front"})),
    )
    .await;
    h.ok("/NetworkDriver.CreateEndpoint", &create_endpoint(NET, EP))
        .await;
    let with_ports = json!({
        "NetworkID": NET, "EndpointID": EP,
        "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]},
    });
    // Before Join there is nothing to publish to.
    let msg = h
        .err(
            "/NetworkDriver.ProgramExternalConnectivity",
            &with_ports,
            500,
        )
        .await;
    assert!(msg.contains("after Join"), "{msg}");
    h.ok("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()))
        .await;
    h.ok("/NetworkDriver.ProgramExternalConnectivity", &with_ports)
        .await;
    let inst = h.mgr.find_container(EP, "eth0").await.expect("joined");
    let ports: Vec<String> = inst
        .placement
        .ports()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(ports, ["8080:80/tcp"]);
    assert!(
        h.kernel
            .calls()
            .iter()
            .any(|c| c == &format!("publish 8080:80/tcp {}", inst.ns_addr.v4)),
        "{:?}",
        h.kernel.calls()
    );
    // What cannot be published is refused, naming the -p.
    let range = json!({
        "NetworkID": NET, "EndpointID": EP,
        "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8090}]},
    });
    let msg = h
        .err("/NetworkDriver.ProgramExternalConnectivity", &range, 500)
        .await;
    assert!(msg.contains("8080-8090:80"), "{msg}");
    h.ok("/NetworkDriver.RevokeExternalConnectivity", &ids(NET, EP))
        .await;
    let inst = h.mgr.find_container(EP, "eth0").await.expect("joined");
    assert!(inst.placement.ports().is_empty());
    // No bindings at all is fine, joined or not.
    let without = json!({"NetworkID": NET, "EndpointID": EP2, "Options": {"com.docker.network.portmap": [], "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}});
    h.ok("/NetworkDriver.ProgramExternalConnectivity", &without)
        .await;
}

/// One HTTP/1.1 request over the socket; returns (status, content type, body).
async fn http(socket: &Path, raw: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    s.write_all(raw).await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let h = Harness::new().await;
    let socket = h.dir.path().join("plugins").join("proxytun.sock");
    // A stale socket file from a crashed daemon is replaced.
    std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(socket.clone(), Arc::clone(&h.mgr), async {
        let _ = stopped.await;
    }));
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let meta = std::fs::metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (status, ctype, body) = http(&socket, &post("/Plugin.Activate", "")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"Implements":["NetworkDriver"]}"#)
    );
    assert_eq!(ctype, "application/vnd.docker.plugins.v1+json");
    let (status, _, body) = http(
        &socket,
        &post(
            "/NetworkDriver.CreateNetwork",
            &create_network(NET, json!({"app": "shop", "service": "web"})).to_string(),
        ),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));

    let (status, _, body) = http(
        &socket,
        b"GET /Plugin.Activate HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("\"Err\""), "{body}");
    let huge = format!(
        "{{\"NetworkID\": \"{}\"}}",
        "a".repeat(super::BODY_LIMIT + 10)
    );
    let (status, _, body) = http(&socket, &post("/NetworkDriver.DeleteNetwork", &huge)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"Err\""), "{body}");
    let (status, _, body) = http(&socket, &post("/NetworkDriver.Join", "{not json")).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = http(&socket, &post("/nope", "{}")).await;
    assert_eq!(status, 404, "{body}");
    // The network is still there after all that.
    let file =
        std::fs::read_to_string(h.dir.path().join("state").join(NETWORKS_FILE)).expect("file");
    assert!(file.contains(NET), "{file}");

    // A second server on the same live socket is refused.
    let second = serve(socket.clone(), Arc::clone(&h.mgr), async {}).await;
    assert!(second.is_err());

    stop.send(()).expect("stop");
    server.await.expect("join").expect("serve");
    assert!(!socket.exists(), "socket left behind");
}
