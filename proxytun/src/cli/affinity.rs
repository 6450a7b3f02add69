//! `proxytun affinity APP/SERVICE client|none`: a service's client
//! affinity, set through the API (cluster-wide with etcd).

use clap::{Args, ValueEnum};
use envmgr::model::{Affinity, AffinityMode, ServiceName, DEFAULT_AFFINITY_TIMEOUT_S};
use serde_json::Value;

use super::api::Api;
use super::instances::format_services;

/// `proxytun affinity`.
#[derive(Debug, Args)]
pub struct AffinityArgs {
    /// The service, written APP/SERVICE.
    #[arg(value_name = "APP/SERVICE", value_parser = super::instances::parse_service_name)]
    pub service: ServiceName,
    /// `client`: a client's new flows go to the instance of its previous
    /// one (multi-connection protocols land together); `none`: every new
    /// flow is balanced (the default).
    #[arg(value_enum)]
    pub mode: Mode,
    /// How long a client stays with its instance after its last new flow,
    /// in seconds (1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_AFFINITY_TIMEOUT_S)]
    pub timeout: u32,
    /// Print the API's raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// The affinity modes on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Every new flow is balanced on its own.
    None,
    /// A client's new flows stick to one instance.
    Client,
}

/// Sends the setting; prints the service as `proxytun services` does.
pub(super) async fn affinity(api: &Api, a: AffinityArgs) -> anyhow::Result<String> {
    let body = Affinity {
        mode: match a.mode {
            Mode::None => AffinityMode::None,
            Mode::Client => AffinityMode::Client,
        },
        timeout_s: a.timeout,
    };
    let path = format!(
        "/v1/services/{}/{}/affinity",
        a.service.app, a.service.service
    );
    let svc = api.put(&path, &body).await?;
    if a.json {
        return Ok(format!("{svc:#}\n"));
    }
    format_services(&Value::Array(vec![svc]))
}
