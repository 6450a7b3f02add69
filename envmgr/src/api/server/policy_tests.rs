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
    assert_eq!(body, json!({"isolate": false, "allow": []}));

    let good = json!({"isolate": true, "allow": [
        {"from": "shop", "to": "bank/api", "ports": [8080, "9000-9100"]},
        {"from": "shop", "to": "auth"},
    ]});
    let (st, body) = client.put("/v1/policy", &good).await.expect("put");
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, good);
    let version = mgr.snapshot().version;

    // Each bad field: 400, a message naming it, and nothing changes.
    let bad: [(Value, &str); 10] = [
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

    // Putting the same policy again publishes nothing.
    let (st, _) = client.put("/v1/policy", &good).await.expect("put");
    assert_eq!(st, 200);
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
    assert_eq!(mgr.snapshot().policy, want);
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}
