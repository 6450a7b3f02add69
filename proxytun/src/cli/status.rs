//! `proxytun status`, `peers`, `peer add|remove` and `counters`: the node,
//! its peers with their health, and the packet counters.

use anyhow::Context as _;
use clap::Subcommand;
use envmgr::model::check_label;
use envmgr::requests::PeerRequest;
use serde_json::Value;

use super::api::Api;
use super::render::{flatten, format_kv, show, table, text, Output};

/// `proxytun peer …`.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Register a peer node, or move it to a new endpoint.
    Add {
        /// The node's name.
        name: String,
        /// Its tunnel endpoint: IP, IP:PORT or [IPv6]:PORT.
        endpoint: String,
        /// Its public key, with `tunnel.keys = "node"` (`proxytun pubkey`
        /// on that node prints it); a new key replaces the old one.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
    /// Remove a peer node (it must have no instances left).
    Remove {
        /// The node's name.
        name: String,
    },
}

/// `proxytun status`: one view of the node, the status plus the peers'
/// health and the counters (under `peer_table` and `counters` in the JSON).
pub(super) async fn status(api: &Api, o: Output) -> anyhow::Result<String> {
    let mut v = api.get("/v1/status").await?;
    let peers = api.get("/v1/peers").await?;
    let counters = api.get("/v1/counters").await?;
    if let Value::Object(m) = &mut v {
        m.insert("peer_table".into(), peers);
        m.insert("counters".into(), counters);
    }
    show(v, o, format_status)
}

/// `proxytun peer add|remove`.
pub(super) async fn peer(api: &Api, cmd: PeerCommand) -> anyhow::Result<String> {
    Ok(match cmd {
        PeerCommand::Add {
            name,
            endpoint,
            public_key,
        } => {
            let req = PeerRequest {
                name,
                endpoint,
                public_key,
            };
            let (status, v) = api.post_status("/v1/peers", &req).await?;
            let what = if status == 201 { "added" } else { "updated" };
            format!(
                "{what} peer {} at {}\n",
                text(&v["name"]),
                text(&v["endpoint"])
            )
        }
        PeerCommand::Remove { name } => {
            check_label("node", &name)?;
            let v = api.delete(&format!("/v1/peers/{name}")).await?;
            format!(
                "removed peer {} (was at {})\n",
                text(&v["name"]),
                text(&v["endpoint"])
            )
        }
    })
}

/// `proxytun counters`: every counter as a dotted key.
pub(super) fn format_counters(v: &Value) -> anyhow::Result<String> {
    Ok(format_kv(&flatten(v), ""))
}

pub(super) fn format_status(v: &Value) -> anyhow::Result<String> {
    let node = &v["node"];
    let pairs = vec![
        ("node".to_owned(), text(&node["name"])),
        (
            "subnet".to_owned(),
            format!("{}  {}", text(&node["subnet"]), text(&node["subnet6"])),
        ),
        (
            "service range".to_owned(),
            format!(
                "{}  {}",
                text(&node["service_range"]),
                text(&node["service_range6"])
            ),
        ),
        ("table version".to_owned(), text(&v["table_version"])),
        ("services".to_owned(), text(&v["services"])),
        (
            "instances".to_owned(),
            format!(
                "{} ({} local)",
                text(&v["instances"]),
                text(&v["local_instances"])
            ),
        ),
        ("peers".to_owned(), text(&v["peers"])),
        ("policy".to_owned(), describe_policy(v)),
        ("store".to_owned(), describe_store(&v["store"])),
        ("dns".to_owned(), describe_dns(&v["dns"])),
    ];
    let dp = flatten(&v["dataplane"]);
    let mut out = format_kv(&pairs, "");
    if !dp.is_empty() {
        out.push_str("dataplane:\n");
        out.push_str(&format_kv(&dp, "  "));
    }
    if let Some(list) = v["peer_table"].as_array().filter(|l| !l.is_empty()) {
        out.push_str("peers:\n");
        for line in format_peers(&Value::Array(list.clone()))?.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let c = &v["counters"];
    if c.is_object() {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let drops: u64 = c["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let rows = vec![
            (
                "packets".to_owned(),
                format!(
                    "from containers {}, to containers {}, to peers {}, from peers {}",
                    n("tun_rx"),
                    n("tun_tx_tun"),
                    n("tun_tx_peer"),
                    n("tunnel_rx")
                ),
            ),
            (
                "flows".to_owned(),
                format!(
                    "{} active, {} created",
                    n("flows_active"),
                    n("flows_created")
                ),
            ),
            (
                "drops".to_owned(),
                format!("{drops} (see `proxytun counters`)"),
            ),
        ];
        out.push_str("counters:\n");
        out.push_str(&format_kv(&rows, "  "));
    }
    Ok(out)
}

/// One line on isolation: `isolate on, 2 rules, 5 denied, 1 flow cut`.
fn describe_policy(v: &Value) -> String {
    let p = &v["policy"];
    let dp = &v["dataplane"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    format!(
        "isolate {}, {} rules, {} denied, {} flows cut",
        if p["isolate"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        n(&p["rules"]),
        n(&dp["policy_denied"]),
        n(&dp["flows_cut_by_policy"])
    )
}

/// One line on the store: `local (/var/lib/proxytun/state.json)` or
/// `etcd connected (lease 7587…, revision 42)`.
fn describe_store(v: &Value) -> String {
    match v["backend"].as_str() {
        Some("local") => format!("local ({})", text(&v["location"])),
        Some(backend) => {
            let state = match v["connected"].as_bool() {
                Some(true) => "connected",
                Some(false) => "UNREACHABLE (using the last known table)",
                None => "",
            };
            let mut details = Vec::new();
            for key in [
                "lease",
                "revision",
                "client_id",
                "broker",
                "subnet",
                "interests",
            ] {
                if !v[key].is_null() {
                    details.push(format!("{key} {}", text(&v[key])));
                }
            }
            // The oakestra backend's dropped broker messages, when any.
            if let Some(d) = v["dropped"].as_object() {
                let n: Vec<String> = d
                    .iter()
                    .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                if !n.is_empty() {
                    details.push(format!("dropped {}", n.join(" ")));
                }
            }
            if details.is_empty() {
                format!("{backend} {state}")
            } else {
                format!("{backend} {state} ({})", details.join(", "))
            }
        }
        None => "-".to_owned(),
    }
}

/// One line on the resolver: where it listens, its domain, its upstreams
/// and what it answered.
fn describe_dns(v: &Value) -> String {
    if v.is_null() {
        return "off".to_owned();
    }
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".to_owned())
    };
    let st = &v["stats"];
    let num = |k: &str| st[k].as_u64().unwrap_or(0);
    format!(
        "{} on {} (upstream {}); queries {}, nxdomain {}, servfail {}, forwarded {}",
        text(&v["domain"]),
        list(&v["listen"]),
        list(&v["upstreams"]),
        num("queries_udp") + num("queries_tcp"),
        num("nxdomain"),
        num("servfail"),
        num("forwarded"),
    )
}

pub(super) fn format_peers(v: &Value) -> anyhow::Result<String> {
    let list = v.as_array().context("the daemon's answer is not a list")?;
    if list.is_empty() {
        return Ok("no peers\n".to_owned());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let state = match p["alive"].as_bool() {
                Some(true) => "up",
                Some(false) => "DOWN",
                None => "-",
            };
            let rtt = p["rtt_us"]
                .as_u64()
                .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                .unwrap_or_else(|| "-".to_owned());
            let heard = p["last_heard_ms"]
                .as_u64()
                .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".to_owned());
            vec![
                text(&p["name"]),
                text(&p["endpoint"]),
                state.to_owned(),
                rtt,
                heard,
            ]
        })
        .collect();
    Ok(table(
        &["NAME", "ENDPOINT", "STATE", "RTT", "LAST HEARD"],
        &rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_shows_peers_path_and_counters() {
        let v = json!({
            "node": {"name": "a", "subnet": "10.18.1.0/24", "subnet6": "fdff:18::100/120"},
            "peers": 1,
            "dataplane": {"path": "offload (vnet header, UDP GSO/GRO)"},
            "peer_table": [
                {"name": "b", "endpoint": "192.0.2.2:50103", "alive": true, "rtt_us": 1250, "last_heard_ms": 300}
            ],
            "counters": {"tun_rx": 10, "tun_tx_tun": 9, "tun_tx_peer": 8, "tunnel_rx": 7,
                         "flows_active": 2, "flows_created": 3, "drops": {"no_flow": 4, "malformed": 1}}
        });
        let out = format_status(&v).expect("format");
        assert!(
            out.contains("  path  offload (vnet header, UDP GSO/GRO)\n"),
            "{out}"
        );
        assert!(
            out.contains("peers:\n  NAME  ENDPOINT         STATE  RTT      LAST HEARD\n"),
            "{out}"
        );
        assert!(
            out.contains("  b     192.0.2.2:50103  up     1.25 ms  0.3 s ago\n"),
            "{out}"
        );
        assert!(
            out.contains("packets  from containers 10, to containers 9, to peers 8, from peers 7"),
            "{out}"
        );
        assert!(out.contains("flows    2 active, 3 created"), "{out}");
        assert!(out.contains("drops    5 "), "{out}");
    }

    #[test]
    fn oakestra_store_line_names_the_worker_and_drops() {
        let v = json!({"backend": "oakestra", "connected": true, "client_id": "w1",
                       "broker": "10.0.0.1:10003", "subnet": "10.18.0.64/26", "interests": 2,
                       "dropped": {"bad_json": 2, "unknown_service": 0, "own_subnet": 1}});
        assert_eq!(
            describe_store(&v),
            "oakestra connected (client_id w1, broker 10.0.0.1:10003, subnet 10.18.0.64/26, \
             interests 2, dropped bad_json 2 own_subnet 1)"
        );
    }
}
