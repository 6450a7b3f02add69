//! The routes' rules with a real `Manager` over the recording fake kernel
//! (nothing touches the system's links): registration, refusals before and
//! after it, and the socket itself; one deploy of a real network namespace
//! (`unshare --net sleep`, needs root, killed by pid).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{bind, serve_on, NodeEngine, NOT_REGISTERED};
use crate::manager::Manager;
use crate::oakestra::names::{JobBook, JobName};
use crate::oakestra::registration::Registration;
use crate::testing::{settings, NetnsChild, RecordingKernel};

struct Harness {
    dir: tempfile::TempDir,
    engine: NodeEngine<RecordingKernel>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = NodeEngine::open(dir.path().to_owned(), JobBook::default()).expect("open");
        Harness { dir, engine }
    }

    async fn with_manager(self) -> (Self, Arc<Manager<RecordingKernel>>) {
        let mgr = Arc::new(
            Manager::open(
                settings(self.dir.path().join("state")),
                RecordingKernel::default(),
            )
            .await
            .expect("open manager"),
        );
        self.engine.set_manager(mgr.clone());
        (self, mgr)
    }

    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let r = self.engine.handle("POST", path, body.as_bytes()).await;
        (r.status, r.body)
    }
}

const DEPLOY: &str = r#"{"pid": 1, "serviceName": "demo.default.web.default", "instanceNumber": 0, "portMappings": ""}"#;
const UNDEPLOY: &str = r#"{"serviceName": "demo.default.web.default", "instanceNumber": 0}"#;

#[tokio::test]
async fn register_saves_publishes_and_keeps_the_first_id() {
    let h = Harness::new();
    let mut regs = h.engine.registrations();
    assert_eq!(*regs.borrow(), None);
    let (status, body) = h.post("/register", "{").await;
    assert_eq!(status, 400);
    assert!(body.contains("client_id"), "{body}");
    let (status, body) = h.post("/register", r#"{"client_id": "a/b"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(*regs.borrow(), None, "a refused register changes nothing");

    let (status, body) = h
        .post(
            "/register/",
            r#"{"client_id": "w1", "cluster_address": "10.0.0.9"}"#,
        )
        .await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(regs.has_changed().expect("open"));
    let want = Registration {
        client_id: "w1".into(),
        cluster_address: Some("10.0.0.9".into()),
    };
    assert_eq!(regs.borrow_and_update().as_ref(), Some(&want));
    assert_eq!(
        Registration::load(h.dir.path()).expect("load"),
        Some(want.clone())
    );

    let (status, _) = h.post("/register", r#"{"client_id": "w1"}"#).await;
    assert_eq!(status, 200, "the same id again is fine");
    let (status, body) = h.post("/register", r#"{"client_id": "w2"}"#).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("\"w1\"") && body.contains("oakestra.json"),
        "{body}"
    );
    assert_eq!(regs.borrow().as_ref(), Some(&want));

    // A restart finds the registration saved.
    let again = NodeEngine::<RecordingKernel>::open(h.dir.path().to_owned(), JobBook::default())
        .expect("open");
    assert_eq!(again.registrations().borrow().as_ref(), Some(&want));
}

#[tokio::test]
async fn deploys_wait_for_register_then_for_the_manager() {
    let h = Harness::new();
    for path in [
        "/container/deploy",
        "/container/undeploy",
        "/docker/undeploy",
    ] {
        let (status, body) = h.post(path, DEPLOY).await;
        assert_eq!((status, body.trim()), (400, NOT_REGISTERED), "{path}");
    }
    let (status, _) = h.post("/register", r#"{"client_id": "w1"}"#).await;
    assert_eq!(status, 200);
    let (status, body) = h.post("/container/deploy", DEPLOY).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("still joining"), "{body}");
    // Bad input is still a 400, manager or not.
    let (status, _) = h.post("/container/deploy", "{").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn bad_deploys_say_what_is_wrong_and_change_nothing() {
    let (h, mgr) = Harness::new().with_manager().await;
    h.post("/register", r#"{"client_id": "w1"}"#).await;
    let cases = [
        ("not json", "not the JSON"),
        (r#"{"serviceName": "demo.default.web.default"}"#, "pid"),
        (
            r#"{"pid": 1, "serviceName": "demo.web.default"}"#,
            "four parts",
        ),
        (
            r#"{"pid": 1, "serviceName": "demo.de-fault.web.x"}"#,
            "letters or digits",
        ),
        (
            r#"{"pid": 0, "serviceName": "demo.default.web.default"}"#,
            "not 0",
        ),
        (
            r#"{"pid": 1, "serviceName": "demo.default.web.default", "portMappings": "80:x"}"#,
            "portMappings",
        ),
    ];
    for (body, want) in cases {
        let (status, msg) = h.post("/container/deploy", body).await;
        assert_eq!(status, 400, "{body}: {msg}");
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // A pid whose namespace cannot be used: the manager's refusal (4xx).
    let (status, msg) = h
        .post(
            "/container/deploy",
            r#"{"pid": 4294967295, "serviceName": "demo.default.web.default"}"#,
        )
        .await;
    assert!((400..500).contains(&status), "{status} {msg}");
    assert!(mgr.snapshot().instances.is_empty());
    let job = JobName::parse("demo.default.web.default").expect("valid");
    assert_eq!(
        h.engine
            .book()
            .job_for(job.service())
            .expect("mapped")
            .as_str(),
        "demo.default.web.default"
    );
}

#[tokio::test]
async fn a_task_deployed_once_answered_like_go_and_undeployed() {
    let (h, mgr) = Harness::new().with_manager().await;
    h.post("/register", r#"{"client_id": "w1"}"#).await;
    let task = NetnsChild::start();
    let body = |n: u32| {
        json!({"pid": task.pid(), "serviceName": "Demo.default.Web.default",
               "instanceNumber": n, "portMappings": "18080:80"})
        .to_string()
    };
    let r = h
        .engine
        .handle("POST", "/container/deploy/", body(0).as_bytes())
        .await;
    assert_eq!(
        (r.status, r.content_type),
        (200, Some("application/json")),
        "{}",
        r.body
    );
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let snap = mgr.snapshot();
    let inst = snap.instances.values().next().expect("attached");
    assert_eq!(inst.key.to_string(), "demo-default/web-default/0");
    assert_eq!(inst.placement.ports().len(), 1);
    assert_eq!(
        answer,
        json!({"serviceName": "Demo.default.Web.default",
               "nsAddress": inst.ns_addr.v4.to_string(),
               "nsAddressv6": inst.ns_addr.v6.to_string()})
    );
    let job = JobName::parse("Demo.default.Web.default").expect("valid");
    assert_eq!(
        h.engine
            .book()
            .job_for(job.service())
            .expect("known")
            .as_str(),
        "Demo.default.Web.default"
    );

    // Again: the same attachment; under another number: refused.
    let (status, again) = h.post("/container/deploy", &body(0)).await;
    assert_eq!(status, 200);
    assert_eq!(again.trim_end(), r.body.trim_end());
    let (status, msg) = h.post("/container/deploy", &body(1)).await;
    assert_eq!(status, 409, "{msg}");
    assert_eq!(mgr.snapshot().instances.len(), 1);

    let undeploy = r#"{"serviceName": "Demo.default.Web.default", "instanceNumber": 0}"#;
    assert_eq!(
        h.post("/container/undeploy", undeploy).await,
        (200, String::new())
    );
    assert!(mgr.snapshot().instances.is_empty());
}

#[tokio::test]
async fn undeploy_of_nothing_is_ok_and_other_routes_are_refused() {
    let (h, _mgr) = Harness::new().with_manager().await;
    h.post("/register", r#"{"client_id": "w1"}"#).await;
    for path in ["/container/undeploy", "/docker/undeploy/"] {
        let (status, body) = h.post(path, UNDEPLOY).await;
        assert_eq!((status, body.as_str()), (200, ""), "{path}");
    }
    let (status, _) = h
        .post("/container/undeploy", r#"{"serviceName": "a.b.c"}"#)
        .await;
    assert_eq!(status, 400);
    for path in ["/unikernel/deploy", "/unikernel/undeploy/"] {
        let (status, body) = h.post(path, DEPLOY).await;
        assert_eq!(status, 501, "{path}");
        assert!(body.contains("unikernels"), "{body}");
    }
    let (status, _) = h.post("/container", DEPLOY).await;
    assert_eq!(status, 404);
    let r = h.engine.handle("GET", "/register", b"").await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn served_on_a_socket_that_is_removed_on_stop() {
    let h = Harness::new();
    let socket = h.dir.path().join("run/netmanager/netmanager.sock");
    let listener = bind(&socket).expect("bind");
    let engine = Arc::new(h.engine);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let socket = socket.clone();
        async move {
            serve_on(listener, &socket, engine, Default::default(), async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let body = json!({"client_id": "w1"}).to_string();
    let mut s = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let req = format!(
        "POST /register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = stop.send(());
    server.await.expect("join");
    assert!(!socket.exists(), "the socket is removed on stop");
}
