//! The Grafana dashboard (`dist/grafana/proxytun.json`) and the Prometheus
//! alert rules (`dist/prometheus/`): promtool accepts the rules and their
//! unit tests pass; the dashboard is well-formed and its queries parse; and
//! every series the dashboard and the rules name is in the `/metrics` of a
//! real two-node cluster that carried traffic and answered DNS.
//!
//! promtool is Debian's `prometheus` package (`scripts/test.sh` installs
//! it); without it these tests fail and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use testbed::dig::dig;
use testbed::{eventually, workspace_root, Cluster, DnsConfig, Node};

const ALERTS: &str = "dist/prometheus/alerts.yml";
const ALERTS_TEST: &str = "dist/prometheus/alerts_test.yml";
const DASHBOARD: &str = "dist/grafana/proxytun.json";

fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Runs promtool; a missing promtool fails the test with what to install.
fn promtool(args: &[&str], dir: &Path) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's prometheus package \
             (`apt-get install prometheus`; scripts/test.sh installs it)"
        ),
        Err(e) => panic!("run promtool {args:?}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the rules and their tests to a scratch directory, with `edit`
/// applied to the rules, for the checks that must catch a bad rule.
fn scratch_rules(edit: impl Fn(&str) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("alerts.yml"), edit(&read(ALERTS))).expect("write rules");
    std::fs::write(dir.path().join("alerts_test.yml"), read(ALERTS_TEST)).expect("write tests");
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// The rules: (alert name, its lines), one per `- alert:` item.
fn alert_blocks(yaml: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for l in yaml.lines() {
        if let Some(name) = l.trim().strip_prefix("- alert:") {
            blocks.push((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, lines)) = blocks.last_mut() {
            lines.push(l.to_owned());
        }
    }
    blocks
}

/// The PromQL of one rule: an `expr:` written inline (quotes removed) or
/// as a block scalar (the lines indented under it).
fn rule_expr(lines: &[String]) -> Option<String> {
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("expr:"))?;
    let indent = lines[at].len() - lines[at].trim_start().len();
    let inline = lines[at].trim_start()["expr:".len()..].trim();
    if !inline.starts_with('|') && !inline.starts_with('>') {
        return Some(inline.trim_matches(|c| c == '"' || c == '\'').to_owned());
    }
    let body: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(|l| l.trim())
        .collect();
    Some(body.join("\n"))
}

/// Every alert's PromQL, by name; each alert must have one.
fn alert_exprs() -> BTreeMap<String, String> {
    alert_blocks(&read(ALERTS))
        .into_iter()
        .map(|(name, lines)| {
            let e = rule_expr(&lines).unwrap_or_else(|| panic!("alert {name} has no expr"));
            assert!(!e.trim().is_empty(), "alert {name} has an empty expr");
            (name, e)
        })
        .collect()
}

/// The metric names a PromQL expression uses: identifiers starting with
/// `proxytun_`, outside string literals (label values).
fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quote = None;
    let mut word = String::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for c in expr.chars().chain(std::iter::once(' ')) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if ident(c) => word.push(c),
            None => {
                if word.starts_with("proxytun_") {
                    names.insert(std::mem::take(&mut word));
                }
                word.clear();
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                }
            }
        }
    }
    names
}

/// Every panel, rows' nested panels included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The dashboard's PromQL: every target's `expr` and every query variable's query.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut out: Vec<String> = all_panels(dash)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.extend(q.map(str::to_owned));
        }
    }
    out
}

/// What is wrong with a dashboard (empty when nothing is): the schema
/// version, the `datasource` and node variables, unique panel ids, a
/// target with a query on every panel, every query on the `datasource`.
fn dashboard_problems(dash: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if dash["schemaVersion"].as_u64().unwrap_or(0) < 36 {
        bad.push(format!("schemaVersion {} < 36", dash["schemaVersion"]));
    }
    let vars: Vec<&Value> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !vars.iter().any(|v| {
        v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
    }) {
        bad.push("no `datasource` variable of type prometheus".into());
    }
    let node_query = vars
        .iter()
        .find(|v| v["name"] == "node" && v["type"] == "query")
        .and_then(|v| v["query"]["query"].as_str().or(v["query"].as_str()));
    if !node_query.is_some_and(|q| q.starts_with("label_values(") && q.contains("instance")) {
        bad.push(format!(
            "no `node` variable from label_values(…, instance): {node_query:?}"
        ));
    }
    let mut ids = BTreeSet::new();
    for p in all_panels(dash) {
        let title = p["title"].as_str().unwrap_or("?");
        match p["id"].as_u64() {
            Some(id) if !ids.insert(id) => bad.push(format!("panel id {id} twice ({title})")),
            Some(_) => {}
            None => bad.push(format!("panel {title} has no id")),
        }
        if p["type"] == "row" {
            continue;
        }
        let targets: Vec<&Value> = p["targets"].as_array().into_iter().flatten().collect();
        if targets.is_empty() {
            bad.push(format!("panel {title} has no target"));
        }
        for t in targets {
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                bad.push(format!("panel {title}: a target without a query"));
            }
            if t["datasource"]["uid"] != "${datasource}" {
                bad.push(format!("panel {title}: a target not on ${{datasource}}"));
            }
        }
    }
    bad
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is not valid JSON")
}

/// `promtool check rules` accepts the alert rules, every alert has a `for:`,
/// a severity, a summary and a description, and the same check refuses a
/// rule with broken PromQL.
#[test]
fn alert_rules_pass_promtool_check() {
    let root = workspace_root();
    let out = promtool(&["check", "rules", ALERTS], &root);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );

    let blocks = alert_blocks(&read(ALERTS));
    assert!(!blocks.is_empty(), "no alert in {ALERTS}");
    for (name, lines) in &blocks {
        for key in ["for:", "severity:", "summary:", "description:"] {
            assert!(
                lines.iter().any(|l| l.trim_start().starts_with(key)),
                "alert {name} has no {key}"
            );
        }
    }

    let (_dir, path) = scratch_rules(|y| y.replacen("expr: ", "expr: sum(", 1));
    let out = promtool(&["check", "rules", "alerts.yml"], &path);
    assert!(!out.status.success(), "promtool accepted broken PromQL");
}

/// The alerts a promtool test file expects firing at some evaluation, and
/// those it expects quiet (`exp_alerts: []`) at some evaluation.
fn evaluations(yaml: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for eval in yaml.split("- eval_time:").skip(1) {
        let name = eval
            .lines()
            .find_map(|l| l.trim().strip_prefix("alertname:"))
            .map(|n| n.trim().to_owned());
        let Some(name) = name else { continue };
        if eval.contains("exp_alerts: []") {
            quiet.insert(name);
        } else if eval.contains("- exp_labels:") {
            fires.insert(name);
        }
    }
    (fires, quiet)
}

/// `promtool test rules` passes: each alert fires for its synthetic input
/// and stays quiet for the rest; every alert is tested; the same tests fail
/// once the rules' conditions change.
#[test]
fn alert_rule_unit_tests_pass() {
    let root = workspace_root();
    let out = promtool(&["test", "rules", ALERTS_TEST], &root);
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));

    let (fires, quiet) = evaluations(&read(ALERTS_TEST));
    for name in alert_exprs().keys() {
        assert!(
            fires.contains(name),
            "{ALERTS_TEST} never expects {name} to fire"
        );
        assert!(
            quiet.contains(name),
            "{ALERTS_TEST} never expects {name} quiet"
        );
    }

    let (_dir, path) = scratch_rules(|y| y.replace("== 0", "== 2"));
    let out = promtool(&["test", "rules", "alerts_test.yml"], &path);
    assert!(
        !out.status.success() && text(&out).contains("FAILED"),
        "the unit tests passed for rules that cannot fire:\n{}",
        text(&out)
    );
}

/// The dashboard parses, has its variables, unique panel ids and a query
/// on every panel, and promtool parses every query (the Grafana variables
/// replaced by values); a dashboard with a duplicated id or an empty panel
/// is reported.
#[test]
fn dashboard_is_well_formed_and_its_queries_parse() {
    let dash = dashboard();
    let bad = dashboard_problems(&dash);
    assert!(bad.is_empty(), "{DASHBOARD}:\n{}", bad.join("\n"));

    let mut broken = dash.clone();
    let panels = broken["panels"].as_array_mut().expect("panels");
    let first = panels
        .iter()
        .position(|p| p["type"] != "row")
        .expect("a panel");
    panels[first]["targets"] = Value::Array(Vec::new());
    let id = panels[first]["id"].clone();
    panels.push(serde_json::json!({"id": id, "type": "stat", "title": "dup"}));
    let bad = dashboard_problems(&broken);
    assert!(
        bad.iter().any(|b| b.contains("twice")) && bad.iter().any(|b| b.contains("no target")),
        "a broken dashboard passed: {bad:?}"
    );

    // Each query as a recording rule, which `promtool check rules` parses.
    let exprs = dashboard_exprs(&dash);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
    {
        let promql = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$node", ".+");
        assert!(!promql.contains('$'), "an unknown Grafana variable in {e}");
        let json = serde_json::to_string(&promql).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {json}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dash.yml"), &rules).expect("write");
    let out = promtool(&["check", "rules", "dash.yml"], dir.path());
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}\n{rules}",
        text(&out)
    );
}

const CURL_TIMEOUT: Duration = Duration::from_secs(5);

/// One scrape of the node's `/metrics`, from inside its host namespace.
fn scrape(node: &Node) -> anyhow::Result<String> {
    let out = node.host().exec(
        "curl",
        &["-sf", "--max-time", "3", "http://127.0.0.1:9110/metrics"],
        CURL_TIMEOUT,
    )?;
    anyhow::ensure!(
        out.status.success(),
        "curl /metrics: {:?} {}",
        out.status,
        out.stderr
    );
    anyhow::ensure!(out.stdout.ends_with("# EOF\n"), "no # EOF:\n{}", out.stdout);
    Ok(out.stdout)
}

/// The series names of an exposition (a sample's name, before its labels):
/// the names PromQL selects, `_total`, `_bucket`, `_sum` or `_count`
/// included. With them, each family (`# TYPE`) by name.
fn exposition_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    (samples, families)
}

/// The names used that no sample has, each with a hint when it is a family
/// named without the suffix its samples carry.
fn missing(
    used: &BTreeSet<String>,
    samples: &BTreeSet<String>,
    families: &BTreeSet<String>,
) -> Vec<String> {
    used.iter()
        .filter(|n| !samples.contains(*n))
        .map(|n| {
            let with: Vec<&String> = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{n}{s}"))
                .filter_map(|s| samples.get(&s))
                .collect();
            match (families.contains(n), with.is_empty()) {
                (true, false) => format!("{n} (a family: its samples are {with:?})"),
                (true, true) => format!("{n} (declared, but no sample)"),
                _ => n.clone(),
            }
        })
        .collect()
}

/// Every series the dashboard's queries and the alert rules name is in the
/// real `/metrics` of a node that forwarded traffic through a ServiceIP,
/// answered DNS and measured its peer; `proxytun_ready`, `proxytun_live`
/// and `proxytun_store_connected` are 1 on it. A name without its
/// exposition suffix is reported.
#[test]
fn every_series_named_is_exported() {
    let dash = dashboard();
    let mut used = BTreeMap::<String, BTreeSet<String>>::new();
    for e in dashboard_exprs(&dash) {
        for n in promql_names(&e) {
            used.entry(n).or_default().insert(DASHBOARD.into());
        }
    }
    for (alert, e) in alert_exprs() {
        for n in promql_names(&e) {
            used.entry(n)
                .or_default()
                .insert(format!("{ALERTS} {alert}"));
        }
    }
    assert!(!used.is_empty(), "no proxytun_ series found in the queries");

    let c = Cluster::two_nodes_with("dash", |cfg| cfg.dns = Some(DnsConfig::default()))
        .expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    for _ in 0..3 {
        client
            .tcp_hello(d.rr.v4)
            .expect("hello through the ServiceIP");
    }
    client
        .tcp_send(d.rr.v4, 100_000, Duration::from_secs(20))
        .expect("bulk send through the ServiceIP");
    dig(
        client.ns(),
        &["@10.18.1.1", "web.shop.svc.cluster.internal", "A"],
    )
    .expect("dig");
    // The RTT series appears with the first pong.
    let text = eventually(Duration::from_secs(10), || {
        let t = scrape(&c.a)?;
        anyhow::ensure!(t.contains("proxytun_peer_rtt_seconds{"), "no RTT yet");
        Ok(t)
    })
    .expect("a scrape with the peer's RTT");

    let (samples, families) = exposition_names(&text);
    let names: BTreeSet<String> = used.keys().cloned().collect();
    let gone = missing(&names, &samples, &families);
    let detail: Vec<String> = gone
        .iter()
        .map(|g| {
            let n = g.split(' ').next().unwrap_or(g);
            format!("{g}, used by {:?}", used.get(n))
        })
        .collect();
    assert!(
        gone.is_empty(),
        "not in /metrics:\n{}\n\n{text}",
        detail.join("\n")
    );

    // The check sees a family named without its suffix.
    let family = BTreeSet::from(["proxytun_bytes".to_owned()]);
    let hint = missing(&family, &samples, &families);
    assert!(
        hint.len() == 1 && hint[0].contains("proxytun_bytes_total"),
        "{hint:?}"
    );

    for g in [
        "proxytun_ready",
        "proxytun_live",
        "proxytun_store_connected",
    ] {
        let line = text.lines().find(|l| l.starts_with(&format!("{g} ")));
        assert_eq!(line, Some(format!("{g} 1").as_str()), "{text}");
    }
}
