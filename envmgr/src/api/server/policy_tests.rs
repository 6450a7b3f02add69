//! `GET`/`PUT /v1/policy` end to end over a socket: validation names the
//! field, a refused policy changes nothing, and the local store keeps the
//! policy across a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::api::{serve, Client};
use crate::manager::Manager;
use crate::model::Policy;
use crate::testing::{FixedDataplane, RecordingKernel};

async fn start(
    state: std::path::PathBuf,
    socket: std::path::PathBuf,
) -> (
    Arc<Manager<RecordingKernel>>,
    Client,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let settings = crate::testing::settings(state);
    let mgr = Arc::new(
        Manager::open(settings, RecordingKernel::default())
            .await
            .expect("open"),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let (mgr, socket) = (Arc::clone(&mgr), socket.clone());
        async move {
            serve(&socket, mgr, Arc::new(FixedDataplane), async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let client = Client::new(&socket);
    for _ in 0..200 {
        if client.get("/v1/status").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (mgr, client, stop, server)
}

#[tokio::test]
async fn policy_put_get_validation_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, socket) = (dir.path().join("state"), dir.path().join("api.sock"));
    let (mgr, client, stop, server) = start(state.clone(), socket.clone()).await;

    let (st, body) = client.get("/v1/policy").await.expect("get");
    assert_eq!(st, 200);
    assert_eq!(body, json!({"isolate": false, "allow": [], "version": 0}));

    let good = json!({"isolate": true, "allow": [
        {"from": "shop", "to": "bank/api", "ports": [8080, "9000-9100"]},
        {"from": "shop", "to": "auth"},
    ]});
    let (st, body) = client.put("/v1/policy", &good).await.expect("put");
    assert_eq!(st, 200, "{body}");
    let mut good = good;
    good["version"] = json!(1);
    assert_eq!(body, good);
    let version = mgr.snapshot().version;

    // Each bad field: 400, a message naming it, and nothing changes.
    let bad: [(Value, &str); 12] = [
        (json!({"isolate": true, "version": -1}), "version"),
        (json!({"isolate": true, "version": "1"}), "version"),
        (json!({"isolate": "yes"}), "isolate"),
        (
            json!({"isolate": true, "allow": [{"from": "Shop", "to": "bank"}]}),
            "allow[0].from",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "bank/"}]}),
            "allow[0].to",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "../etc"}]}),
            "allow[0].to",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "bank", "ports": [0]}]}),
            "ports",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "bank", "ports": [65536]}]}),
            "ports",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "bank", "ports": ["90-80"]}]}),
            "ports",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "bank"}, {"from": "shop", "to": "bank"}]}),
            "allow[1]",
        ),
        (
            json!({"isolate": true, "allow": [{"from": "shop", "to": "bank", "port": 1}]}),
            "port",
        ),
        (
            json!({"isolate": true, "allow": (0..1025).map(|i| json!({"from": "shop", "to": format!("a{i}")})).collect::<Vec<_>>()}),
            "allow",
        ),
    ];
    for (body, field) in bad {
        let (st, resp) = client.put("/v1/policy", &body).await.expect("put");
        assert_eq!(st, 400, "{body} -> {resp}");
        assert_eq!(resp["error"]["code"], "invalid", "{resp}");
        let msg = resp["error"]["message"].as_str().expect("message");
        assert!(msg.contains(field), "{msg:?} should name {field}");
        assert_eq!(mgr.snapshot().version, version, "{body} changed the state");
        let (_, now) = client.get("/v1/policy").await.expect("get");
        assert_eq!(now, good, "{body} changed the policy");
    }

    // Putting the same policy again publishes nothing (the version stays).
    let (st, body) = client.put("/v1/policy", &good).await.expect("put");
    assert_eq!((st, &body), (200, &good));
    assert_eq!(mgr.snapshot().version, version);

    let _ = stop.send(());
    server.await.expect("join").expect("serve");
    drop(client);
    drop(mgr);

    // A restart on the same state directory keeps the policy.
    let (mgr, client, stop, server) = start(state, socket).await;
    let (_, body) = client.get("/v1/policy").await.expect("get");
    assert_eq!(body, good);
    let want: Policy = serde_json::from_value(good).expect("policy");
    assert_eq!(mgr.snapshot().policy, want, "the version too");
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}

/// One raw request on the socket: the status line's code, the headers
/// (lower-cased names) and the body, for what [`Client`] does not show.
async fn raw(
    socket: &std::path::Path,
    head: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let req = format!(
        "{head}\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8(buf).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (
        status,
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn etag(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.as_str())
}

/// Versions: the ETag and the `version` field agree; a PUT based on a
/// stale version (If-Match or the body) is 409 with the current version
/// and changes nothing; the current one goes through and moves it on; no
/// version at all is accepted (last writer wins).
#[tokio::test]
async fn policy_versions_refuse_stale_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, socket) = (dir.path().join("state"), dir.path().join("api.sock"));
    let (mgr, client, stop, server) = start(state, socket.clone()).await;

    let (st, h, body) = raw(&socket, "GET /v1/policy HTTP/1.1", "").await;
    assert_eq!(
        (st, etag(&h), &body["version"]),
        (200, Some("\"0\""), &json!(0))
    );

    // Two writers read version 0; the first wins, the second is stale.
    let (st, h, body) = raw(
        &socket,
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: \"0\"",
        r#"{"isolate":true}"#,
    )
    .await;
    assert_eq!((st, etag(&h)), (200, Some("\"1\"")), "{body}");
    assert_eq!(body["version"], 1);
    let table = mgr.snapshot().version;
    let stale = [
        (
            "PUT /v1/policy HTTP/1.1\r\nIf-Match: \"0\"",
            r#"{"isolate":false}"#.to_owned(),
        ),
        (
            "PUT /v1/policy HTTP/1.1",
            r#"{"isolate":false,"version":0}"#.to_owned(),
        ),
        (
            "PUT /v1/policy HTTP/1.1\r\nIf-Match: 9",
            r#"{"isolate":false}"#.to_owned(),
        ),
    ];
    for (head, body) in &stale {
        let (st, _, resp) = raw(&socket, head, body).await;
        assert_eq!(st, 409, "{head} {body}: {resp}");
        assert_eq!(resp["error"]["code"], "conflict", "{resp}");
        let msg = resp["error"]["message"].as_str().expect("message");
        assert!(
            msg.contains("changed since it was read") && msg.contains("current version is 1"),
            "{msg}"
        );
        assert_eq!(
            mgr.snapshot().version,
            table,
            "{head} {body} changed the table"
        );
        assert_eq!(mgr.policy().version, 1);
        assert!(mgr.policy().isolate);
    }
    // Bad If-Match headers, or one that disagrees with the body: 400.
    for head in [
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: W/\"1\"",
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: \"1\", \"2\"",
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: one",
    ] {
        let (st, _, resp) = raw(&socket, head, r#"{"isolate":false}"#).await;
        assert_eq!(st, 400, "{head}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .expect("message")
                .contains("If-Match"),
            "{resp}"
        );
    }
    let (st, _, resp) = raw(
        &socket,
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: \"1\"",
        r#"{"isolate":false,"version":0}"#,
    )
    .await;
    assert_eq!(st, 400, "{resp}");
    assert_eq!(mgr.snapshot().version, table);

    // The current version, by either form, goes through and moves it on.
    let (st, h, body) = raw(
        &socket,
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: \"1\"",
        r#"{"isolate":false}"#,
    )
    .await;
    assert_eq!(
        (st, etag(&h), &body["version"]),
        (200, Some("\"2\""), &json!(2))
    );
    let (st, body) = client
        .put("/v1/policy", &json!({"isolate": true, "version": 2}))
        .await
        .expect("put");
    assert_eq!((st, &body["version"]), (200, &json!(3)), "{body}");
    // `If-Match: *` and no version: no check.
    let (st, _, body) = raw(
        &socket,
        "PUT /v1/policy HTTP/1.1\r\nIf-Match: *",
        r#"{"isolate":false}"#,
    )
    .await;
    assert_eq!((st, &body["version"]), (200, &json!(4)), "{body}");
    let (st, body) = client
        .put("/v1/policy", &json!({"isolate": true}))
        .await
        .expect("put");
    assert_eq!((st, &body["version"]), (200, &json!(5)), "{body}");
    let (_, status) = client.get("/v1/status").await.expect("status");
    assert_eq!(status["policy"]["version"], 5, "{status}");

    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}
