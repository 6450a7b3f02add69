//! `proxytun client add|remove|list`: external clients this node is the
//! gateway of (docs/join.md). `add` prints the `proxytun join` line to run
//! on the client.

use clap::Subcommand;
use envmgr::model::check_label;
use envmgr::requests::ClientRequest;
use serde_json::Value;

use super::api::Api;
use super::render::{show, table, text, Output};

/// The `client` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register an external client and print its `proxytun join` line.
    Add {
        /// The client's name.
        name: String,
        /// The address (IP or IP:PORT) its datagrams come from.
        #[arg(long)]
        endpoint: String,
        /// Its public key with `tunnel.keys = "node"` (the client's
        /// `proxytun keygen --node` printed it).
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
        /// This node's address as the client reaches it, for the printed
        /// line (default: a placeholder to fill in).
        #[arg(long, value_name = "IP")]
        gateway: Option<String>,
        /// This node's cluster key file, for the printed line (copy it to
        /// the client).
        #[arg(long, value_name = "FILE", default_value = "/etc/proxytun/cluster.key")]
        key_file: String,
    },
    /// Remove an external client.
    Remove {
        /// The client's name.
        name: String,
    },
    /// List the external clients.
    List(Output),
}

/// The `proxytun join` command line for client `v` (the API's answer).
pub(super) fn join_line(v: &Value, gateway: Option<&str>, key_file: &str) -> String {
    let j = &v["join"];
    let key = if v["public_key"].is_string() {
        "--node-key <the client's key file> --gateway-key <`proxytun pubkey` here>".to_owned()
    } else {
        format!("--key-file {key_file}")
    };
    let gw = gateway.unwrap_or("<this-node-ip>");
    let bind = text(&v["endpoint"]);
    format!(
        "proxytun join --gateway {gw}:{port} --address {addr} --resolver {res} \\\n    --services {s4} --services6 {s6} {key} --bind {bind}\n",
        port = text(&j["tunnel_port"]),
        addr = text(&v["address"]),
        res = text(&j["resolver"]),
        s4 = text(&j["services"]),
        s6 = text(&j["services6"]),
    )
}

fn format_clients(v: &Value) -> anyhow::Result<String> {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| vec![text(&c["name"]), text(&c["address"]), text(&c["endpoint"])])
                .collect()
        })
        .unwrap_or_default();
    Ok(table(&["NAME", "ADDRESS", "ENDPOINT"], &rows))
}

/// Runs one `client` subcommand.
pub(super) async fn client(api: &Api, cmd: ClientsCommand) -> anyhow::Result<String> {
    Ok(match cmd {
        ClientsCommand::Add {
            name,
            endpoint,
            public_key,
            gateway,
            key_file,
        } => {
            let req = ClientRequest {
                name,
                endpoint,
                public_key,
            };
            let (_, v) = api.post_status("/v1/clients", &req).await?;
            format!(
                "added client {} at {}, address {}\nrun on the client:\n  {}",
                text(&v["name"]),
                text(&v["endpoint"]),
                text(&v["address"]),
                join_line(&v, gateway.as_deref(), &key_file)
            )
        }
        ClientsCommand::Remove { name } => {
            check_label("client", &name)?;
            let v = api.delete(&format!("/v1/clients/{name}")).await?;
            format!(
                "removed client {} (address {})\n",
                text(&v["name"]),
                text(&v["address"])
            )
        }
        ClientsCommand::List(o) => show(api.get("/v1/clients").await?, o, format_clients)?,
    })
}
