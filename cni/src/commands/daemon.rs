//! Talking to the daemon: the API calls the commands share, and the
//! daemon's answers (or its silence) turned into CNI errors.

use std::path::Path;

use envmgr::api::client::{Client, ClientError};
use envmgr::model::Instance;
use serde_json::Value;

use crate::spec::{code, CniError};

pub(super) async fn detach(
    client: &Client,
    socket: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let path = format!(
        "/v1/attachments?container_id={}&ifname={}",
        encode(container_id),
        encode(ifname)
    );
    let (st, body) = client
        .delete(&path)
        .await
        .map_err(|e| unreachable(socket, &e, code::TRY_AGAIN_LATER))?;
    match st {
        200..=299 | 404 => Ok(()),
        _ => Err(refused("detaching", st, &body)),
    }
}

/// `GET /v1/status`.
pub(super) async fn get_status(client: &Client, socket: &Path) -> Result<Value, CniError> {
    let (st, body) = client
        .get("/v1/status")
        .await
        .map_err(|e| unreachable(socket, &e, code::TRY_AGAIN_LATER))?;
    if st != 200 {
        return Err(refused("reading the status", st, &body));
    }
    Ok(body)
}

/// `GET /v1/instances`, as instances.
pub(super) async fn list_instances(
    client: &Client,
    socket: &Path,
) -> Result<Vec<Instance>, CniError> {
    let (st, body) = client
        .get("/v1/instances")
        .await
        .map_err(|e| unreachable(socket, &e, code::TRY_AGAIN_LATER))?;
    if st != 200 {
        return Err(refused("listing the instances", st, &body));
    }
    serde_json::from_value(body).map_err(|e| {
        CniError::new(
            code::IO,
            "the daemon's instance list is not what this plugin expects",
        )
        .with_details(e.to_string())
    })
}

/// The instance attached for `container_id` on `ifname`, if any.
pub(super) async fn find_container(
    client: &Client,
    socket: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Instance>, CniError> {
    Ok(list_instances(client, socket)
        .await?
        .into_iter()
        .find(|i| i.placement.runtime_attachment() == Some((container_id, ifname))))
}

/// The daemon could not be asked: `code` (11 for ADD/DEL, so the runtime
/// retries), with what to do.
pub(super) fn unreachable(socket: &Path, e: &ClientError, code_: u32) -> CniError {
    let code_ = match e {
        ClientError::PermissionDenied { .. } => code::IO,
        _ => code_,
    };
    CniError::new(
        code_,
        format!(
            "the proxytun daemon does not answer on {}: start it (systemctl start proxytun) or set \
             `socket` in the network config to its [api] socket",
            socket.display()
        ),
    )
    .with_details(e.to_string())
}

/// The daemon answered with an error: its message, and a code by status.
pub(super) fn refused(doing: &str, status: u16, body: &Value) -> CniError {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    let code_ = match status {
        400 => code::INVALID_NETCONF,
        422 => code::CONTAINER_UNKNOWN,
        503 => code::TRY_AGAIN_LATER,
        _ => code::DAEMON_REFUSED,
    };
    CniError::new(code_, format!("the daemon refused {doing}: {message}"))
        .with_details(format!("HTTP {status}: {body}"))
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved
/// characters), so any container id survives the URL.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("abc-1.2_~"), "abc-1.2_~");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
