//! The command line as clap parses it, and every command against a live
//! API server.

use super::*;
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: ClientCommand,
}

fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
    let mut all = vec!["proxytun"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).map(|c| c.cmd)
}

#[test]
fn attach_needs_exactly_one_of_netns_and_pid() {
    assert!(parse(&["attach", "shop/web"]).is_err());
    assert!(parse(&[
        "attach",
        "shop/web",
        "--netns",
        "/run/netns/a",
        "--pid",
        "1"
    ])
    .is_err());
    let ClientCommand::Attach(a) =
        parse(&["attach", "shop/web", "--pid", "42", "--instance", "3"]).expect("parses")
    else {
        panic!("not attach");
    };
    assert_eq!(a.service.to_string(), "shop/web");
    assert_eq!((a.pid, a.instance), (Some(42), Some(3)));
}

#[test]
fn names_are_checked_before_sending() {
    assert!(parse(&["attach", "Shop/web", "--pid", "1"]).is_err());
    assert!(parse(&["detach", "shop/web"]).is_err());
    assert!(parse(&["detach", "shop/web/x"]).is_err());
    let ClientCommand::Detach { instance } = parse(&["detach", "shop/web/7"]).expect("ok") else {
        panic!("not detach");
    };
    assert_eq!(instance.to_string(), "shop/web/7");
}

#[test]
fn log_level_parses_with_and_without_a_level() {
    assert!(matches!(
        parse(&["log-level"]).expect("parses"),
        ClientCommand::LogLevel { level: None }
    ));
    let ClientCommand::LogLevel { level } =
        parse(&["log-level", "info,proxytun=debug"]).expect("parses")
    else {
        panic!("not log-level");
    };
    assert_eq!(level.as_deref(), Some("info,proxytun=debug"));
}

/// The commands against a real API server (a real `Manager` over a
/// kernel that does nothing), so the CLI and the server agree on the JSON.
mod live {
    use super::*;
    use envmgr::api::serve;
    use envmgr::manager::Manager;
    use std::sync::Arc;
    use std::time::Duration;

    use envmgr::testing::{FixedDataplane, NetnsChild, RecordingKernel};

    async fn exec(socket: &Path, args: &[&str]) -> anyhow::Result<String> {
        execute(parse(args).expect("parses"), socket).await
    }

    #[tokio::test]
    async fn cli_against_a_live_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let settings = envmgr::testing::settings(dir.path().join("state"));
        let mgr = Arc::new(
            Manager::open(settings, RecordingKernel::default())
                .await
                .expect("open"),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let socket = socket.clone();
            async move {
                serve(&socket, mgr, Arc::new(FixedDataplane), async {
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
        let s = socket.as_path();

        let out = exec(s, &["status"]).await.expect("status");
        assert!(out.starts_with("node           n1\n"), "{out}");
        assert!(
            out.contains(
                "\ndataplane:\n  flows_active  1\n  mtu           1400\n  tun           ptun0\n"
            ),
            "{out}"
        );

        let out = exec(s, &["peer", "add", "n2", "192.0.2.2"])
            .await
            .expect("peer");
        assert_eq!(out, "added peer n2 at 192.0.2.2:50103\n");
        let out = exec(s, &["peer", "add", "n2", "192.0.2.3"])
            .await
            .expect("peer");
        assert_eq!(out, "updated peer n2 at 192.0.2.3:50103\n");

        let ns = NetnsChild::start();
        let pid = ns.pid().to_string();
        let out = exec(
            s,
            &[
                "attach",
                "shop/web",
                "--pid",
                &pid,
                "--service-ip",
                "10.30.1.10",
            ],
        )
        .await
        .expect("attach");
        assert!(out.starts_with("attached           shop/web/0\n"), "{out}");
        assert!(
            out.contains("service IP         10.30.1.10  fdff:30::10a\n"),
            "{out}"
        );
        assert!(out.contains("namespace address  10.18.1."), "{out}");

        let out = exec(
            s,
            &[
                "remote",
                "add",
                "shop/db/1",
                "--node",
                "n2",
                "--ns-addr",
                "10.18.2.5",
                "--instance-ip",
                "10.30.2.7",
            ],
        )
        .await
        .expect("remote add");
        assert!(out.starts_with("registered shop/db/1 on node n2"), "{out}");

        let out = exec(s, &["services"]).await.expect("services");
        assert!(out.starts_with("SERVICE   RR_IP"), "{out}");
        assert!(out.contains("shop/web  10.30.1.10"), "{out}");
        let out = exec(s, &["instances"]).await.expect("instances");
        assert!(out.contains("shop/db/1   n2     10.18.2.5"), "{out}");
        assert!(out.contains(&format!("/proc/{pid}/ns/net")), "{out}");
        let out = exec(s, &["peers"]).await.expect("peers");
        assert_eq!(
            out,
            "NAME  ENDPOINT         STATE  RTT  LAST HEARD\nn2    192.0.2.3:50103  -      -    never\n"
        );
        // A measured peer shows its state and RTT (the fixed view knows 192.0.2.9).
        exec(s, &["peer", "add", "n9", "192.0.2.9"])
            .await
            .expect("peer add");
        let out = exec(s, &["peers"]).await.expect("peers");
        assert!(
            out.contains("n9    192.0.2.9:50103  DOWN   1.50 ms  4.2 s ago"),
            "{out}"
        );
        exec(s, &["peer", "remove", "n9"])
            .await
            .expect("peer remove");
        let out = exec(s, &["flows"]).await.expect("flows");
        assert!(
            out.contains("PROTO  CLIENT           VIP           INSTANCE    PEER  PACKETS"),
            "{out}"
        );
        let out = exec(s, &["counters"]).await.expect("counters");
        assert_eq!(out, "drops.no_service  2\ntun_rx            10\n");
        let out = exec(s, &["counters", "--json"]).await.expect("json");
        let v: Value = serde_json::from_str(&out).expect("json output");
        assert_eq!(v["tun_rx"], 10);

        // API errors carry the server's message.
        let err = exec(s, &["detach", "shop/web/9"])
            .await
            .expect_err("no such");
        assert_eq!(err.to_string(), "no instance shop/web/9");
        let err = exec(s, &["peer", "remove", "n2"])
            .await
            .expect_err("in use");
        assert_eq!(
            err.downcast_ref::<ApiFailure>().map(|f| f.status),
            Some(409),
            "{err}"
        );

        let out = exec(s, &["detach", "shop/web/0"]).await.expect("detach");
        assert!(out.starts_with("detached shop/web/0"), "{out}");
        let out = exec(s, &["remote", "remove", "shop/db/1"])
            .await
            .expect("remove");
        assert_eq!(out, "removed remote instance shop/db/1\n");
        let out = exec(s, &["peer", "remove", "n2"])
            .await
            .expect("peer remove");
        assert_eq!(out, "removed peer n2 (was at 192.0.2.3:50103)\n");

        let _ = stop.send(());
        server.await.expect("join").expect("serve");
        let err = exec(s, &["status"]).await.expect_err("daemon gone");
        assert!(err.to_string().contains("is the daemon running?"), "{err}");
    }
}
