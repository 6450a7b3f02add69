//! `proxytun policy`: show the cluster's isolation policy, or change it
//! (`isolate`, `allow`, `revoke`).

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Subcommand;
use envmgr::model::{AllowRule, Policy, PortRange};
use serde_json::Value;

use super::api::Api;
use super::render::Output;

/// `proxytun policy …`: each one reads the policy, changes it and puts
/// it back whole, so a concurrent writer's change in between is lost.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Turn isolation on (each app its own network) or off (all reach all).
    Isolate {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Let clients of app FROM open flows to TO (an app or APP/SERVICE);
    /// replaces the ports of an existing rule FROM -> TO.
    Allow {
        /// The client app.
        from: String,
        /// The destination: APP or APP/SERVICE.
        to: String,
        /// A destination port or range LO-HI (repeatable); every port when absent.
        #[arg(long = "port", value_name = "P|LO-HI")]
        ports: Vec<PortRange>,
    },
    /// Remove the rule FROM -> TO; flows it allowed are cut.
    Revoke {
        /// The client app.
        from: String,
        /// The destination: APP or APP/SERVICE.
        to: String,
    },
}

/// `isolate: on` and the rules as a table.
pub(super) fn format_policy(v: &Value) -> anyhow::Result<String> {
    let p: Policy =
        serde_json::from_value(v.clone()).context("the daemon's answer is not a policy")?;
    let mut out = format!("isolate: {}\n", if p.isolate { "on" } else { "off" });
    if p.allow.is_empty() {
        out.push_str("allow: none\n");
        return Ok(out);
    }
    let rows: Vec<[String; 3]> = p
        .allow
        .iter()
        .map(|r| {
            let ports = if r.ports.is_empty() {
                "all".to_owned()
            } else {
                r.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [r.from.clone(), r.to.clone(), ports]
        })
        .collect();
    let w = |i: usize, head: &str| {
        rows.iter()
            .map(|r| r[i].len())
            .max()
            .unwrap_or(0)
            .max(head.len())
    };
    let (w0, w1) = (w(0, "FROM"), w(1, "TO"));
    let _ = writeln!(out, "allow ({}):", rows.len());
    let _ = writeln!(out, "{:w0$}  {:w1$}  PORTS", "FROM", "TO");
    for r in &rows {
        let _ = writeln!(out, "{:w0$}  {:w1$}  {}", r[0], r[1], r[2]);
    }
    Ok(out)
}

/// `proxytun policy isolate|allow|revoke`: read, change, put whole.
pub(super) async fn policy(
    api: &Api,
    action: PolicyCommand,
    out: Output,
) -> anyhow::Result<String> {
    let mut p: Policy = serde_json::from_value(api.get("/v1/policy").await?)
        .context("the daemon's answer is not a policy")?;
    let msg = match action {
        PolicyCommand::Isolate { state } => {
            p.isolate = state == "on";
            format!("isolation {state}")
        }
        PolicyCommand::Allow { from, to, ports } => {
            let rule = AllowRule { from, to, ports };
            let msg = format!("allowed {} -> {}", rule.from, rule.to);
            match p
                .allow
                .iter_mut()
                .find(|r| r.from == rule.from && r.to == rule.to)
            {
                Some(r) => *r = rule,
                None => p.allow.push(rule),
            }
            msg
        }
        PolicyCommand::Revoke { from, to } => {
            let before = p.allow.len();
            p.allow.retain(|r| !(r.from == from && r.to == to));
            if p.allow.len() == before {
                anyhow::bail!("no rule allows {from} -> {to} (see `proxytun policy`)");
            }
            format!("revoked {from} -> {to}")
        }
    };
    let v = api.put("/v1/policy", &p).await?;
    if out.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(format!("{msg}\n{}", format_policy(&v)?))
}
