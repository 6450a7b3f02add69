//! The `proxytun` command: the node daemon (`run`) and the CLI that talks to it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use proxytun::cli::ClientCommand;
use proxytun::config::DEFAULT_SOCKET;

/// A service-networking dataplane for container and edge clusters.
#[derive(Debug, Parser)]
#[command(name = "proxytun", version, about, after_long_help = FILES)]
struct Cli {
    /// The daemon's management socket (for the client commands).
    #[arg(long, global = true, env = "PROXYTUN_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Command,
}

/// The end of `proxytun --help` and of `man proxytun`: where things live.
const FILES: &str = "\
Files:
  /etc/proxytun/proxytun.toml   the node's config (every key: docs/operations.md)
  /etc/proxytun/cluster.key     the cluster key (proxytun keygen --out FILE)
  /run/proxytun/api.sock        the management API the client commands use
  /var/lib/proxytun             attachments and allocations, kept across restarts
  /usr/lib/cni/proxytun-cni     the CNI plugin (also in /opt/cni/bin)

The unit is proxytun.service; logs: journalctl -u proxytun.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node stack (dataplane, environment manager, API) in the foreground.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file the way `run` would, without starting anything
    /// (like `nginx -t`): every error names its key.
    CheckConfig {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the completion script of SHELL on stdout, e.g.
    /// `proxytun completions bash > /etc/bash_completion.d/proxytun`
    /// (the package installs bash, zsh and fish scripts).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages, one per command, into DIR (the package build
    /// runs this; `man proxytun` reads them).
    #[command(hide = true)]
    Manpages {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Join the service network from a machine that is no worker, through
    /// a gateway node (`proxytun client add` there prints this line;
    /// docs/join.md). Runs until SIGINT or SIGTERM.
    Join(proxytun::join::JoinArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Run { config } => proxytun::daemon::main(&config),
        Command::CheckConfig { config } => proxytun::config::Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                // The key file too, as `run` reads it first.
                c.tunnel.load_key()?;
                println!("{}: ok (node {})", config.display(), c.node.name);
                Ok(())
            }),
        Command::Completions { shell } => {
            proxytun::cli::generate::completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { out } => {
            proxytun::cli::generate::manpages(Cli::command(), &out).map(|pages| {
                println!("{} man pages in {}", pages.len(), out.display());
            })
        }
        Command::Join(args) => proxytun::join::main(&args),
        Command::Client(cmd) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(proxytun::cli::run(cmd, &cli.socket))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
