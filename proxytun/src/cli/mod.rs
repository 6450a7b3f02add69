//! The people-facing subcommands (`proxytun status`, `attach`, …).
//!
//! Each one is a thin call to the management API socket: the daemon holds
//! the state and does the checking, the CLI only builds requests and prints
//! answers, as aligned tables by default or as the raw JSON with `--json`.
//!
//! One file per command group: `status` (status, peers, counters),
//! `instances` (services, instances, attach, detach, remote), `affinity`, `flows`,
//! `policy`, `log_level`, `keygen`; `top` (the live terminal view, a loop
//! of its own rather than one request); `generate` makes the man pages and
//! completions from the command line; `api` is the client and its
//! error mapping, `render` the tables. This module holds the command
//! line and the dispatch; the groups never import it.

mod affinity;
mod api;
mod client;
mod flows;
pub mod generate;
mod instances;
mod keygen;
mod log_level;
mod node;
mod policy;
mod render;
mod status;
#[cfg(test)]
mod tests;
mod top;

use std::path::{Path, PathBuf};

use clap::Subcommand;
use envmgr::api::Client;
use envmgr::model::InstanceKey;

pub use affinity::AffinityArgs;
use api::Api;
pub use api::ApiFailure;
pub use client::ClientsCommand;
use instances::parse_instance_key;
pub use instances::{AttachArgs, RemoteCommand};
pub use keygen::keygen;
pub use node::NodeCommand;
pub use policy::PolicyCommand;
use render::show;
pub use render::Output;
pub use status::PeerCommand;
pub use top::TopArgs;

/// The commands that talk to a running daemon.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show this node, its peers with RTT and liveness, the packet path and
    /// the main counters (like `wg show`).
    Status(Output),
    /// List services with their round-robin ServiceIP and instances.
    Services(Output),
    /// List instances, local and remote, with their addresses.
    Instances(Output),
    /// List active flows and the reply-address cache.
    Flows(Output),
    /// List peer nodes and their tunnel endpoints.
    Peers(Output),
    /// Generate a new cluster key (32 random bytes as hex) for
    /// `tunnel.key_file`; needs no daemon. Copy the file to every node.
    Keygen {
        /// Write the key to this new file (mode 0600; an existing file is
        /// never overwritten) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// A node key pair (`tunnel.keys = "node"`) instead of a cluster
        /// key: the private key is written, the public key printed.
        #[arg(long)]
        node: bool,
    },
    /// Print the public key of a node key file (for other nodes' `[[peer]] public_key`).
    Pubkey {
        /// The node key file.
        #[arg(long, value_name = "FILE", default_value = "/etc/proxytun/node.key")]
        key_file: PathBuf,
    },
    /// Show the dataplane's packet counters.
    Counters(Output),
    /// Show the cluster's isolation policy, or change it (see docs/isolation.md).
    Policy {
        /// What to change; without one, the policy is shown.
        #[command(subcommand)]
        action: Option<PolicyCommand>,
        /// Output options for showing the policy.
        #[command(flatten)]
        out: Output,
    },
    /// Attach a container (a network namespace) as an instance of APP/SERVICE.
    Attach(AttachArgs),
    /// Set a service's client affinity: `client` sends every new flow from
    /// one client address to the instance of its previous flow (iperf3,
    /// FTP, several gRPC channels land together); `none` balances each.
    Affinity(AffinityArgs),
    /// Detach a local instance: removes its veth and its table entry.
    Detach {
        /// The instance, written APP/SERVICE/N.
        #[arg(value_name = "APP/SERVICE/N", value_parser = parse_instance_key)]
        instance: InstanceKey,
    },
    /// Add, move or remove a peer node.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Register or remove an instance that runs on a peer node.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Add, remove or list external clients (`proxytun join`, docs/join.md).
    #[command(subcommand)]
    Client(ClientsCommand),
    /// Remove a dead node's records from the cluster store (etcd).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the daemon's log filter, or change it without a restart.
    LogLevel {
        /// A `tracing` filter: `debug`, `info,proxytun=trace`, …
        level: Option<String>,
    },
    /// Watch this node live in the terminal: peers with RTT and liveness,
    /// flows per service, drop counters with their rates (q quits).
    Top(TopArgs),
}

/// Runs one client command against the daemon's socket and prints the
/// answer on stdout. An API error comes back as an [`ApiFailure`] whose
/// message is the server's; the caller prints it as `error: <message>`
/// and exits non-zero.
pub async fn run(cmd: ClientCommand, socket: &Path) -> anyhow::Result<()> {
    // A loop on the terminal until a quit key, not one answer to print.
    if let ClientCommand::Top(args) = cmd {
        return top::run(socket, args).await;
    }
    let out = execute(cmd, socket).await?;
    print!("{out}");
    Ok(())
}

/// [`run`] without the printing: the text it would print.
pub async fn execute(cmd: ClientCommand, socket: &Path) -> anyhow::Result<String> {
    let api = Api(Client::new(socket));
    let out = match cmd {
        ClientCommand::Keygen { out, node } => keygen(out.as_deref(), node)?,
        ClientCommand::Pubkey { key_file } => keygen::pubkey(&key_file)?,
        ClientCommand::Status(o) => status::status(&api, o).await?,
        ClientCommand::LogLevel { level } => log_level::log_level(&api, level).await?,
        ClientCommand::Services(o) => show(
            api.get("/v1/services").await?,
            o,
            instances::format_services,
        )?,
        ClientCommand::Instances(o) => show(
            api.get("/v1/instances").await?,
            o,
            instances::format_instances,
        )?,
        ClientCommand::Flows(o) => show(api.get("/v1/flows").await?, o, |v| {
            Ok(flows::format_flows(v))
        })?,
        ClientCommand::Policy { action: None, out } => {
            show(api.get("/v1/policy").await?, out, policy::format_policy)?
        }
        ClientCommand::Policy {
            action: Some(action),
            out,
        } => policy::policy(&api, action, out).await?,
        ClientCommand::Peers(o) => show(api.get("/v1/peers").await?, o, status::format_peers)?,
        ClientCommand::Counters(o) => {
            show(api.get("/v1/counters").await?, o, status::format_counters)?
        }
        ClientCommand::Attach(a) => instances::attach(&api, a).await?,
        ClientCommand::Affinity(a) => affinity::affinity(&api, a).await?,
        ClientCommand::Detach { instance } => instances::detach(&api, &instance).await?,
        ClientCommand::Peer(cmd) => status::peer(&api, cmd).await?,
        ClientCommand::Remote(cmd) => instances::remote(&api, cmd).await?,
        ClientCommand::Client(cmd) => client::client(&api, cmd).await?,
        ClientCommand::Node(cmd) => node::node(&api, cmd).await?,
        ClientCommand::Top(_) => anyhow::bail!(
            "`proxytun top` draws on a terminal and has no text to return; use `proxytun status`"
        ),
    };
    Ok(out)
}
