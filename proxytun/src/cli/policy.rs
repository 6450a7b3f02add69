//! `proxytun policy`: show the cluster's isolation policy, or change it
//! (`isolate`, `allow`, `revoke`).

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Subcommand;
use envmgr::model::{AllowRule, Policy, PortRange};
use serde_json::Value;

use super::api::{Api, ApiFailure};
use super::render::Output;

/// `proxytun policy …`: each one reads the policy, changes it and puts it
/// back whole with the version it read; when another writer changed it in
/// between (409), it reads again and re-applies its change, so neither
/// change is lost (at most [`ATTEMPTS`] times).
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

/// How often `isolate`, `allow` and `revoke` read, change and put the
/// policy before giving up on a policy that other writers keep changing.
pub(super) const ATTEMPTS: u32 = 5;

/// Applies `action` to the policy read; the message to print.
fn apply(p: &mut Policy, action: &PolicyCommand) -> anyhow::Result<String> {
    Ok(match action {
        PolicyCommand::Isolate { state } => {
            p.isolate = state == "on";
            format!("isolation {state}")
        }
        PolicyCommand::Allow { from, to, ports } => {
            let rule = AllowRule {
                from: from.clone(),
                to: to.clone(),
                ports: ports.clone(),
            };
            let msg = format!("allowed {from} -> {to}");
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
            p.allow.retain(|r| !(&r.from == from && &r.to == to));
            if p.allow.len() == before {
                anyhow::bail!("no rule allows {from} -> {to} (see `proxytun policy`)");
            }
            format!("revoked {from} -> {to}")
        }
    })
}

/// True for the answer to a write based on a stale version.
fn is_stale(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == 409)
}

/// `proxytun policy isolate|allow|revoke`: read, change, put whole with
/// the version read; on a 409 (someone wrote in between) again, with a
/// short pause that grows, at most [`ATTEMPTS`] times.
pub(super) async fn policy(
    api: &Api,
    action: PolicyCommand,
    out: Output,
) -> anyhow::Result<String> {
    let mut attempt = 1;
    let (msg, v) = loop {
        let mut p: Policy = serde_json::from_value(api.get("/v1/policy").await?)
            .context("the daemon's answer is not a policy")?;
        let msg = apply(&mut p, &action)?;
        // `p.version` is the version read: the daemon refuses the write
        // with 409 if the policy moved on since.
        match api.put("/v1/policy", &p).await {
            Ok(v) => break (msg, v),
            Err(e) if is_stale(&e) && attempt < ATTEMPTS => {
                // A pause that grows, and differs between processes, so
                // writers that collided do not collide again in lockstep.
                let jitter = u64::from(std::process::id() % 16);
                tokio::time::sleep(std::time::Duration::from_millis((20 << attempt) + jitter))
                    .await;
                attempt += 1;
            }
            Err(e) if is_stale(&e) => {
                anyhow::bail!(
                    "the policy kept changing while this command ran: {ATTEMPTS} attempts each \
                     found another writer's change first (last: {e}); nothing was changed by \
                     this command, run it again"
                )
            }
            Err(e) => return Err(e),
        }
    };
    if out.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(format!("{msg}\n{}", format_policy(&v)?))
}
