//! `proxytun log-level`: show the daemon's log filter, or change it
//! without a restart.

use super::api::Api;
use super::render::text;

/// Shows the filter (`level` absent) or sets it.
pub(super) async fn log_level(api: &Api, level: Option<String>) -> anyhow::Result<String> {
    Ok(match level {
        None => format!("{}\n", text(&api.get("/v1/log").await?["level"])),
        Some(level) => {
            let v = api
                .put("/v1/log", &serde_json::json!({ "level": level }))
                .await?;
            format!("log level set to {}\n", text(&v["level"]))
        }
    })
}
