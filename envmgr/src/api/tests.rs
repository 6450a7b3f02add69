//! The API end to end: `serve` on a socket in a tempdir, a real `Manager`
//! over a recording fake kernel, a fake dataplane, driven by [`Client`].
//!
//! Attaching needs a real network namespace other than our own (the manager
//! checks); the tests start `unshare --net sleep` children for that and kill
//! them by pid when done. The fake kernel never touches the system.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{serve, Client, ClientError, BODY_LIMIT};
use crate::manager::Manager;

use crate::testing::{FixedDataplane as FakeDataplane, NetnsChild, RecordingKernel as FakeKernel};

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    mgr: Arc<Manager<FakeKernel>>,
    kernel: FakeKernel,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    async fn start() -> Self {
        let (mgr, kernel, dir) = manager().await;
        let socket = dir.path().join("run").join("api.sock");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let socket = socket.clone();
            let mgr = Arc::clone(&mgr);
            async move {
                serve(&socket, mgr, Arc::new(FakeDataplane), async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let client = Client::new(&socket);
        Harness {
            _dir: dir,
            socket,
            mgr,
            kernel,
            client,
            stop: Some(stop),
            server: Some(server),
        }
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(h) => h.await.expect("server task"),
            None => Ok(()),
        }
    }
}

/// Asserts the JSON error shape and returns the message.
fn error_message(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "status for body {body}");
    let err = &body["error"];
    assert_eq!(err["code"], want_code, "code in {body}");
    let msg = err["message"].as_str().expect("message is a string");
    assert!(!msg.is_empty(), "empty message in {body}");
    msg.to_owned()
}

#[tokio::test]
async fn api_happy_paths() {
    let h = Harness::start().await;
    let c = &h.client;

    let (s, v) = c.get("/v1/status").await.expect("status");
    assert_eq!(s, 200);
    assert_eq!(v["node"]["name"], "n1");
    assert_eq!(v["node"]["subnet"], "10.18.1.0/24");
    assert_eq!(v["services"], 0);
    assert_eq!(v["dataplane"]["tun"], "ptun0");

    // Peers: created, then moved.
    let (s, v) = c
        .post("/v1/peers", &json!({"name": "n2", "endpoint": "192.0.2.2"}))
        .await
        .expect("add peer");
    assert_eq!((s, &v["endpoint"]), (201, &json!("192.0.2.2:50103")));
    let (s, v) = c
        .post(
            "/v1/peers",
            &json!({"name": "n2", "endpoint": "192.0.2.3:4000"}),
        )
        .await
        .expect("move peer");
    assert_eq!((s, &v["endpoint"]), (200, &json!("192.0.2.3:4000")));
    let (s, v) = c.get("/v1/peers").await.expect("peers");
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!([{"name": "n2", "endpoint": "192.0.2.3:4000", "alive": null}]),
        "no liveness before the dataplane measured any"
    );
    // A peer the dataplane measured gets its liveness and RTT.
    c.post("/v1/peers", &json!({"name": "n9", "endpoint": "192.0.2.9"}))
        .await
        .expect("add peer");
    let (_, v) = c.get("/v1/peers").await.expect("peers");
    assert_eq!(
        v[1],
        json!({"name": "n9", "endpoint": "192.0.2.9:50103", "alive": false,
               "rtt_us": 1500, "last_heard_ms": 4200})
    );
    let (s, _) = c.delete("/v1/peers/n9").await.expect("remove");
    assert_eq!(s, 200);

    // Attach by pid and by netns path.
    let ns1 = NetnsChild::start();
    let ns2 = NetnsChild::start();
    let (s, a) = c
        .post(
            "/v1/attachments",
            &json!({"app": "shop", "service": "web", "pid": ns1.pid(), "instance": 2,
                    "service_ip": "10.30.1.10"}),
        )
        .await
        .expect("attach");
    assert_eq!(s, 201, "{a}");
    assert_eq!(
        a["key"],
        json!({"app": "shop", "service": "web", "number": 2})
    );
    assert_eq!(a["placement"]["kind"], "local");
    assert_eq!(a["placement"]["pid"], ns1.pid());
    let (s, b) = c
        .post(
            "/v1/attachments",
            &json!({"app": "shop", "service": "web", "netns": ns2.netns()}),
        )
        .await
        .expect("attach 2");
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["key"]["number"], 0);
    assert!(
        h.kernel
            .calls()
            .iter()
            .filter(|c| c.starts_with("attach "))
            .count()
            == 2
    );

    // A remote instance on n2.
    let (s, r) = c
        .post(
            "/v1/remote-instances",
            &json!({"app": "shop", "service": "db", "instance": 1, "node": "n2",
                    "ns_addr": "10.18.2.5", "instance_ip": "10.30.2.7"}),
        )
        .await
        .expect("remote");
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["placement"], json!({"kind": "remote", "node": "n2"}));
    assert_eq!(r["instance_ip"]["v4"], "10.30.2.7");

    // Reads.
    let (s, v) = c.get("/v1/services").await.expect("services");
    assert_eq!(s, 200);
    let list = v.as_array().expect("list");
    assert_eq!(list.len(), 2);
    let web = list
        .iter()
        .find(|s| s["service"] == "web")
        .expect("web listed");
    assert_eq!(web["app"], "shop");
    assert_eq!(web["rr_ip"]["v4"], "10.30.1.10");
    assert_eq!(web["rr_ip"]["v6"], "fdff:30::10a");
    assert_eq!(web["instances"], json!([0, 2]));

    let (s, v) = c.get("/v1/services/shop/web").await.expect("service");
    assert_eq!(s, 200);
    assert_eq!(v["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["instances"][1], a);

    let (s, v) = c.get("/v1/instances").await.expect("instances");
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(3)));
    let (s, v) = c.get("/v1/instances/shop/web/2").await.expect("instance");
    assert_eq!((s, &v), (200, &a));

    let (s, v) = c.get("/v1/status").await.expect("status");
    assert_eq!(s, 200);
    assert_eq!(
        (
            &v["services"],
            &v["instances"],
            &v["local_instances"],
            &v["peers"]
        ),
        (&json!(2), &json!(3), &json!(2), &json!(1))
    );
    assert_eq!(v["table_version"], h.mgr.snapshot().version);

    let (s, v) = c.get("/v1/flows").await.expect("flows");
    assert_eq!((s, &v["flows"][0]["proto"]), (200, &json!("tcp")));
    let (s, v) = c.get("/v1/counters").await.expect("counters");
    assert_eq!((s, &v["drops"]["no_service"]), (200, &json!(2)));

    // Removals answer with what was removed.
    let (s, v) = c
        .delete("/v1/attachments/shop/web/2")
        .await
        .expect("detach");
    assert_eq!((s, &v), (200, &a));
    let (s, v) = c
        .delete("/v1/remote-instances/shop/db/1")
        .await
        .expect("remove remote");
    assert_eq!((s, &v), (200, &r));
    let (s, v) = c.delete("/v1/peers/n2").await.expect("remove peer");
    assert_eq!((s, &v["name"]), (200, &json!("n2")));

    let snap = h.mgr.snapshot();
    assert_eq!(snap.instances.len(), 1);
    assert!(snap.peers.is_empty());
    let socket = h.socket.clone();
    h.shutdown().await.expect("clean shutdown");
    assert!(!socket.exists(), "socket removed on shutdown");
}

/// method, path, content type, body; then the expected status, code, and a
/// text the message must hold.
type BadCase<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    String,
    u16,
    &'a str,
    &'a str,
);

#[tokio::test]
async fn api_bad_requests_are_json_and_change_nothing() {
    let h = Harness::start().await;
    let c = &h.client;
    // Some state, so "unchanged" means something.
    let (s, _) = c
        .post("/v1/peers", &json!({"name": "n2", "endpoint": "192.0.2.2"}))
        .await
        .expect("add peer");
    assert_eq!(s, 201);
    let ns = NetnsChild::start();
    let ns_path = ns.netns().display().to_string();

    let json_ct = Some("application/json");
    let huge = format!(
        r#"{{"name":"n3","endpoint":"{}"}}"#,
        "x".repeat(BODY_LIMIT + 10)
    );
    // (method, path, content type, body, status, code, text the message must hold)
    let cases: Vec<BadCase> = vec![
        (Method::POST, "/v1/peers", json_ct, r#"{"name": "#.into(), 400, "invalid", "malformed JSON"),
        (Method::POST, "/v1/peers", json_ct, "[1,".into(), 400, "invalid", "JSON object"),
        (Method::POST, "/v1/peers", json_ct, "".into(), 400, "invalid", "empty"),
        (Method::POST, "/v1/peers", json_ct, r#"{"name":"n3","endpoint":"192.0.2.3"} x"#.into(), 400, "invalid", "trailing"),
        (Method::POST, "/v1/attachments", json_ct,
         r#"{"app":"shop","service":"web","pid":"abc"}"#.into(), 400, "invalid", "pid"),
        (Method::POST, "/v1/peers", json_ct, r#"{"name":5,"endpoint":"192.0.2.3"}"#.into(), 400, "invalid", "name"),
        (Method::POST, "/v1/peers", json_ct,
         r#"{"name":"n3","endpoint":"192.0.2.3","colour":"red"}"#.into(), 400, "invalid", "colour"),
        (Method::POST, "/v1/peers", json_ct, r#"{"name":"n3"}"#.into(), 400, "invalid", "endpoint"),
        (Method::POST, "/v1/remote-instances", json_ct,
         r#"{"app":"shop","service":"db","instance":1,"node":"n2","ns_addr":"10.18.2.300","instance_ip":"10.30.2.7"}"#.into(),
         400, "invalid", "ns_addr"),
        (Method::POST, "/v1/peers", json_ct, huge, 413, "too_large", "65536"),
        (Method::POST, "/v1/peers", None, r#"{"name":"n3","endpoint":"192.0.2.3"}"#.into(),
         415, "unsupported_media_type", "Content-Type"),
        (Method::POST, "/v1/peers", Some("text/plain"), r#"{"name":"n3","endpoint":"192.0.2.3"}"#.into(),
         415, "unsupported_media_type", "text/plain"),
        (Method::POST, "/v1/attachments", json_ct,
         format!(r#"{{"app":"Shop","service":"web","netns":"{ns_path}"}}"#), 400, "invalid", "app"),
        (Method::POST, "/v1/attachments", json_ct,
         format!(r#"{{"app":"shop","service":"web","netns":"{ns_path}","pid":1}}"#), 400, "invalid", "netns"),
        (Method::POST, "/v1/peers", json_ct, r#"{"name":"bad_name","endpoint":"192.0.2.3"}"#.into(), 400, "invalid", "bad_name"),
        (Method::POST, "/v1/remote-instances", json_ct,
         r#"{"app":"shop","service":"db","instance":1,"node":"ghost","ns_addr":"10.18.2.5","instance_ip":"10.30.2.7"}"#.into(),
         422, "unprocessable", "ghost"),
        (Method::GET, "/v1/services/Shop/web", None, String::new(), 400, "invalid", "app"),
        (Method::GET, "/v1/services/shop/web", None, String::new(), 404, "not_found", "shop/web"),
        (Method::GET, "/v1/instances/shop/web/abc", None, String::new(), 400, "invalid", "instance number"),
        (Method::GET, "/v1/instances/shop/web/99999999999", None, String::new(), 400, "invalid", "instance number"),
        (Method::DELETE, "/v1/attachments/shop/web/-1", None, String::new(), 400, "invalid", "instance number"),
        (Method::DELETE, "/v1/attachments/shop/we_b/1", None, String::new(), 400, "invalid", "service"),
        (Method::DELETE, "/v1/attachments/shop/web/1", None, String::new(), 404, "not_found", "shop/web/1"),
        (Method::DELETE, "/v1/peers/Node", None, String::new(), 400, "invalid", "node"),
        (Method::DELETE, "/v1/peers/ghost", None, String::new(), 404, "not_found", "ghost"),
        (Method::GET, "/v1/nope", None, String::new(), 404, "not_found", "/v1/nope"),
        (Method::GET, "/", None, String::new(), 404, "not_found", "no such endpoint"),
        (Method::GET, "/v1/instances/shop/web", None, String::new(), 404, "not_found", "no such endpoint"),
        (Method::PUT, "/v1/status", None, String::new(), 405, "method_not_allowed", "GET"),
        (Method::DELETE, "/v1/peers", None, String::new(), 405, "method_not_allowed", "POST"),
        (Method::GET, "/v1/attachments", None, String::new(), 405, "method_not_allowed", "POST"),
    ];
    for (method, path, ct, body, want_status, want_code, needle) in cases {
        let before = h.mgr.snapshot();
        let what = format!("{method} {path} {ct:?} {}", &body[..body.len().min(80)]);
        let raw = if ct.is_none() && body.is_empty() {
            None
        } else {
            Some((ct.unwrap_or(""), body.clone().into_bytes()))
        };
        let (status, v) = c
            .raw(method.clone(), path, raw)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let msg = error_message(status, &v, want_status, want_code);
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} should mention {needle:?}"
        );
        assert_eq!(*h.mgr.snapshot(), *before, "{what} changed the snapshot");
    }

    // A kernel failure is a 500 with the kernel's words, and is undone.
    h.kernel.fail_attach.store(true, Ordering::SeqCst);
    let before = h.mgr.snapshot();
    let (s, v) = c
        .post(
            "/v1/attachments",
            &json!({"app": "shop", "service": "web", "pid": ns.pid()}),
        )
        .await
        .expect("attach");
    let msg = error_message(s, &v, 500, "kernel");
    assert!(msg.contains("not permitted"), "{msg}");
    assert_eq!(*h.mgr.snapshot(), *before);
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn api_socket_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");

    // No daemon: the client says so, naming the socket.
    let err = Client::new(&socket)
        .get("/v1/status")
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    assert!(err.to_string().contains("is the daemon running?"), "{err}");
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );

    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let err = Client::new(&socket)
        .get("/v1/status")
        .await
        .expect_err("stale");
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");

    let h = start_on(&socket).await;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (s, _) = Client::new(&socket)
        .get("/v1/status")
        .await
        .expect("serves");
    assert_eq!(s, 200);

    // A second server on a live socket refuses instead of stealing it.
    let (mgr, _k, _d) = manager().await;
    let second = serve(&socket, mgr, Arc::new(FakeDataplane), async {}).await;
    let msg = format!("{:#}", second.expect_err("live socket"));
    assert!(msg.contains("another process"), "{msg}");

    let (stop, server) = h;
    let _ = stop.send(());
    server.await.expect("join").expect("clean shutdown");
    assert!(!socket.exists(), "socket removed on shutdown");

    // A regular file at the path is not ours to delete.
    std::fs::write(&socket, b"precious").expect("file");
    let (mgr, _k, _d) = manager().await;
    let res = serve(&socket, mgr, Arc::new(FakeDataplane), async {}).await;
    let msg = format!("{:#}", res.expect_err("not a socket"));
    assert!(msg.contains("not a socket"), "{msg}");
    assert_eq!(std::fs::read(&socket).expect("kept"), b"precious");
}

async fn manager() -> (Arc<Manager<FakeKernel>>, FakeKernel, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = FakeKernel::default();
    let settings = crate::testing::settings(dir.path().join("state"));
    let mgr = Manager::open(settings, kernel.clone()).await.expect("open");
    (Arc::new(mgr), kernel, dir)
}

async fn start_on(socket: &Path) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let (mgr, _k, dir) = manager().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let socket_owned = socket.to_path_buf();
    let server = tokio::spawn(async move {
        let _dir = dir;
        serve(&socket_owned, mgr, Arc::new(FakeDataplane), async {
            let _ = stopped.await;
        })
        .await
    });
    for _ in 0..200 {
        if Client::new(socket).get("/v1/status").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stop, server)
}
