//! One refresh: the six GETs `top` needs, at once, under one deadline, and
//! the answer or the reason there is none.

use std::time::Duration;

use envmgr::api::ClientError;

use super::model::{Answers, Failure};
use crate::cli::api::Api;

/// How long one refresh may take before the daemon counts as unreachable:
/// the flow dump waits up to 2 s for the dataplane thread.
pub(super) const DEADLINE: Duration = Duration::from_secs(5);

/// Fetches everything one screen needs.
pub(super) async fn fetch(api: &Api) -> Result<Answers, Failure> {
    let all = async {
        let (status, peers, services, instances, flows, counters) = tokio::try_join!(
            api.get("/v1/status"),
            api.get("/v1/peers"),
            api.get("/v1/services"),
            api.get("/v1/instances"),
            api.get("/v1/flows"),
            api.get("/v1/counters"),
        )?;
        anyhow::Ok(Answers {
            status,
            peers,
            services,
            instances,
            flows,
            counters,
        })
    };
    match tokio::time::timeout(DEADLINE, all).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Failure::Unreachable(format!(
            "no answer within {} s",
            DEADLINE.as_secs()
        ))),
    }
}

/// No connection or no answer is `Unreachable`; an answer that is an API
/// error or not JSON is `Refused`.
fn classify(e: &anyhow::Error) -> Failure {
    match e.downcast_ref::<ClientError>() {
        // Its message already ends with its cause: no `{:#}` chain.
        Some(ce @ (ClientError::NotJson { .. } | ClientError::Request { .. })) => {
            Failure::Refused(ce.to_string())
        }
        Some(ce) => Failure::Unreachable(ce.to_string()),
        None => Failure::Refused(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envmgr::api::Client;

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("nothing.sock");
        let api = Api(Client::new(&sock));
        match fetch(&api).await {
            Err(Failure::Unreachable(m)) => {
                assert!(m.contains("cannot connect to"), "{m}");
                assert!(m.contains("nothing.sock"), "{m}");
                assert_eq!(m.matches("os error").count(), 1, "the cause once: {m}");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[test]
    fn api_errors_are_refusals() {
        let e = crate::cli::api::check((
            404,
            serde_json::json!({"error": {"code": "not_found", "message": "no such endpoint"}}),
        ))
        .expect_err("404");
        assert_eq!(classify(&e), Failure::Refused("no such endpoint".into()));
    }
}
