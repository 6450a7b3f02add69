//! The `proxytun` command: the node daemon (`run`) and the CLI that talks to it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxytun::cli::ClientCommand;
use proxytun::config::DEFAULT_SOCKET;

/// A service-networking dataplane for container and edge clusters.
#[derive(Debug, Parser)]
#[command(name = "proxytun", version, about)]
struct Cli {
    /// The daemon's management socket (for the client commands).
    #[arg(long, global = true, env = "PROXYTUN_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Command,
}

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
