//! Policy versions against real daemons: `GET /v1/policy` gives the
//! version (`ETag` and `version`); of two writers that read the same
//! version, one wins and the other gets 409 and changes nothing; the CLI's
//! `policy allow`, run several at once, re-reads on 409 so every command's
//! rule ends up in the policy. With etcd the version is the cluster's: a
//! version read on node a is stale on node b once a has written.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use testbed::{eventually, Cluster, Cluster3, Node};

/// How long a change may take to go through etcd to another node.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Rounds of concurrent CLI writers, and writers per round.
const ROUNDS: usize = 8;
const WRITERS: usize = 3;

/// An answer of curl: status, ETag (if any) and the JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Value,
}

/// `curl` on the API's unix socket (from here: a socket file, not the
/// network), with extra headers and an optional JSON body.
fn curl(socket: &Path, method: &str, headers: &[String], body: Option<&str>) -> Result<Answer> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "10", "--unix-socket"])
        .arg(socket)
        .args(["-X", method]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg("http://proxytun/v1/policy");
    let out = cmd.output().context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl failed: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(text: &str) -> Result<Answer> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no head in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let etag = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.trim().to_owned());
    let body = serde_json::from_str(body).with_context(|| format!("body {body:?}"))?;
    Ok(Answer { status, etag, body })
}

/// The version a node shows, from both its ETag and its body (they agree).
fn version(node: &Node) -> Result<u64> {
    let a = curl(node.socket(), "GET", &[], None)?;
    let v = a.body["version"].as_u64().context("no version")?;
    if a.etag != Some(format!("\"{v}\"")) {
        bail!("ETag {:?} and version {v} disagree", a.etag);
    }
    Ok(v)
}

/// The rules `from -> to` a node's policy holds.
fn rules(node: &Node) -> Result<BTreeSet<(String, String)>> {
    let p = node.get("/v1/policy")?;
    let allow = p["allow"].as_array().context("allow")?;
    Ok(allow
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap_or("").to_owned(),
                r["to"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// Two writers with the same If-Match at once: exactly one 200, one 409
/// whose message gives the current version; the loser changed nothing.
fn two_writers_one_wins(node: &Node) -> Result<()> {
    let v = version(node)?;
    let socket = node.socket().to_owned();
    let tag = vec![format!("If-Match: \"{v}\"")];
    // Both differ from the policy in force (the same rules again would
    // change nothing and keep the version).
    let bodies = ["w1", "w2"]
        .map(|w| format!(r#"{{"isolate": false, "allow": [{{"from": "{w}", "to": "v{v}"}}]}}"#));
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let hs: Vec<_> = bodies
            .iter()
            .map(|b| s.spawn(|| curl(&socket, "PUT", &tag, Some(b.as_str()))))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect::<Result<_>>()
    })?;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    if statuses != [200, 409] {
        bail!("two writers on version {v}: {answers:?}");
    }
    let (won, lost) = if answers[0].status == 200 {
        (&answers[0], &answers[1])
    } else {
        (&answers[1], &answers[0])
    };
    let msg = lost.body["error"]["message"].as_str().unwrap_or("");
    let current = v + 1;
    if lost.body["error"]["code"] != "conflict"
        || !msg.contains("changed since it was read")
        || !msg.contains(&format!("current version is {current}"))
    {
        bail!("the 409 does not say what happened: {:?}", lost.body);
    }
    if won.body["version"] != current || won.etag != Some(format!("\"{current}\"")) {
        bail!("the winner's answer: {won:?}");
    }
    let now = node.get("/v1/policy")?;
    if now != won.body {
        bail!("the policy is {now}, not the winner's {}", won.body);
    }
    Ok(())
}

/// `WRITERS` CLI commands `policy allow app<i> round<r>` at once, `ROUNDS`
/// times: every command succeeds and every rule ends up in the policy.
fn concurrent_cli_writers(nodes: &[&Node]) -> Result<BTreeSet<(String, String)>> {
    let mut want = BTreeSet::new();
    for round in 0..ROUNDS {
        let to = format!("round{round}");
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = (0..WRITERS)
                .map(|i| {
                    let node = nodes[i % nodes.len()];
                    let from = format!("app{i}");
                    let to = to.clone();
                    s.spawn(move || node.cli_ok(&["policy", "allow", &from, &to]))
                })
                .collect();
            for h in hs {
                h.join().expect("cli thread")?;
            }
            Ok(())
        })
        .with_context(|| format!("round {round}"))?;
        want.extend((0..WRITERS).map(|i| (format!("app{i}"), to.clone())));
    }
    Ok(want)
}

#[test]
fn local_versions_and_the_cli_retry() {
    let c = Cluster::two_nodes("localver").expect("cluster");
    assert_eq!(version(&c.a).expect("version"), 0, "never written");
    two_writers_one_wins(&c.a).expect("two writers");
    for _ in 0..3 {
        two_writers_one_wins(&c.a).expect("two writers, again");
    }
    // The version moved on once per win: 4 wins.
    assert_eq!(version(&c.a).expect("version"), 4);

    // Clear the rules (no version: last writer wins), then the CLI.
    let r =
        c.a.api(
            "PUT",
            "/v1/policy",
            Some(&serde_json::json!({"isolate": false})),
        )
        .expect("put");
    assert_eq!(r.status, 200, "{}", r.body);
    let want = concurrent_cli_writers(&[&c.a]).expect("concurrent CLI writers");
    assert_eq!(
        rules(&c.a).expect("rules"),
        want,
        "no command's rule is lost"
    );
    // Every CLI change moved the version on by one.
    assert_eq!(
        version(&c.a).expect("version"),
        5 + (ROUNDS * WRITERS) as u64
    );
    let log = c.a.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn etcd_versions_are_cluster_wide() {
    let c = Cluster3::start("etcdver").expect("cluster");
    let v = version(&c.a).expect("version on a");
    eventually(PROPAGATION, || {
        let vb = version(&c.b)?;
        anyhow::ensure!(vb == v, "b shows {vb}, a {v}");
        Ok(())
    })
    .expect("a and b show the same version");

    // Written on a from version v: a version v read on b is stale now,
    // whether or not b's watch has told it yet.
    let tag = |v: u64| vec![format!("If-Match: \"{v}\"")];
    let won = curl(
        c.a.socket(),
        "PUT",
        &tag(v),
        Some(r#"{"isolate": false, "allow": [{"from": "a", "to": "x"}]}"#),
    )
    .expect("put on a");
    assert_eq!(won.status, 200, "{won:?}");
    assert_eq!(won.body["version"], v + 1);
    let lost = curl(
        c.b.socket(),
        "PUT",
        &tag(v),
        Some(r#"{"isolate": false, "allow": [{"from": "b", "to": "x"}]}"#),
    )
    .expect("put on b");
    assert_eq!(lost.status, 409, "{lost:?}");
    let msg = lost.body["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&format!("current version is {}", v + 1)),
        "{msg}"
    );
    eventually(PROPAGATION, || {
        let r = rules(&c.b)?;
        anyhow::ensure!(
            r == BTreeSet::from([("a".into(), "x".into())]),
            "b has {r:?}"
        );
        anyhow::ensure!(version(&c.b)? == v + 1, "b's version");
        Ok(())
    })
    .expect("b follows a's write, not its own stale one");
    // The current version goes through on b, and a follows.
    let ok = curl(
        c.b.socket(),
        "PUT",
        &tag(v + 1),
        Some(r#"{"isolate": false}"#),
    )
    .expect("put on b");
    assert_eq!(
        (ok.status, &ok.body["version"]),
        (200, &Value::from(v + 2)),
        "{ok:?}"
    );
    eventually(PROPAGATION, || {
        anyhow::ensure!(version(&c.a)? == v + 2, "a's version");
        Ok(())
    })
    .expect("a follows b's write");

    // CLI writers on a, b and c at once: every rule everywhere.
    let want = concurrent_cli_writers(&[&c.a, &c.b, &c.c]).expect("concurrent CLI writers");
    for n in c.nodes() {
        eventually(PROPAGATION, || {
            let r = rules(n)?;
            anyhow::ensure!(r == want, "node {}: {r:?}", n.name);
            Ok(())
        })
        .expect("no command's rule is lost, on any node");
    }
}
