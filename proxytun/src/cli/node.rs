//! `proxytun node remove NODE`: removes a dead node's records from the
//! cluster store (`DELETE /v1/nodes/{name}`); refused while it is alive.

use clap::Subcommand;
use envmgr::model::check_label;

use super::api::Api;

/// `proxytun node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a dead node's records from etcd now: its membership and
    /// subnet lease, its instances and their addresses. Refused while the
    /// node is alive (its lease held): stop its daemon first.
    Remove {
        /// The node's name.
        name: String,
    },
}

/// Runs a `node` subcommand.
pub(super) async fn node(api: &Api, cmd: NodeCommand) -> anyhow::Result<String> {
    match cmd {
        NodeCommand::Remove { name } => {
            check_label("node", &name)?;
            let v = api.delete(&format!("/v1/nodes/{name}")).await?;
            let n = v["removed"].as_array().map_or(0, Vec::len);
            let index = v["index"]
                .as_u64()
                .map(|i| format!(", index {i}"))
                .unwrap_or_default();
            Ok(format!(
                "removed node {name}{index}: {n} key{} deleted from the cluster store\n",
                if n == 1 { "" } else { "s" }
            ))
        }
    }
}
