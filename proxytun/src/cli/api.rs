//! The CLI's side of the management API: the client, and error answers
//! turned into [`ApiFailure`] so the caller prints the server's message.

use anyhow::Context as _;
use envmgr::api::Client;
use envmgr::model::{Instance, InstanceKey};
use serde_json::Value;

/// An error answer of the API, carrying the server's message so the caller
/// prints `error: <message>`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The API's error code, e.g. `invalid`.
    pub code: String,
    /// The API's message.
    pub message: String,
}

/// The client plus the mapping of error answers to [`ApiFailure`].
pub(super) struct Api(pub(super) Client);

impl Api {
    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        check(self.0.get(path).await?).map(|(_, v)| v)
    }
    pub(super) async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Value> {
        self.post_status(path, body).await.map(|(_, v)| v)
    }
    pub(super) async fn post_status(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<(u16, Value)> {
        check(self.0.post(path, body).await?)
    }
    pub(super) async fn put(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Value> {
        check(self.0.put(path, body).await?).map(|(_, v)| v)
    }
    pub(super) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        check(self.0.delete(path).await?).map(|(_, v)| v)
    }
}

pub(super) fn check((status, body): (u16, Value)) -> anyhow::Result<(u16, Value)> {
    if (200..300).contains(&status) {
        return Ok((status, body));
    }
    let err = &body["error"];
    let message = match err["message"].as_str() {
        Some(m) => m.to_owned(),
        None => format!("the daemon answered {status}: {body}"),
    };
    Err(ApiFailure {
        status,
        code: err["code"].as_str().unwrap_or("unknown").to_owned(),
        message,
    }
    .into())
}

pub(super) fn key_path(k: &InstanceKey) -> String {
    format!("{}/{}/{}", k.name.app, k.name.service, k.number)
}

pub(super) fn parse_instance(v: Value) -> anyhow::Result<Instance> {
    serde_json::from_value(v).context("the daemon's answer is not an instance")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_errors_carry_the_server_message() {
        let body = json!({"error": {"code": "not_found", "message": "no instance shop/web/9"}});
        let err = check((404, body)).expect_err("404 is an error");
        assert_eq!(err.to_string(), "no instance shop/web/9");
        let f = err.downcast_ref::<ApiFailure>().expect("typed");
        assert_eq!((f.status, f.code.as_str()), (404, "not_found"));
    }
}
