//! The error object a plugin prints, and the spec's error codes.

use serde_json::Value;

/// The error codes of the spec (1-99 are the spec's, 100+ are ours). A
/// runtime reacts to some of them (11: retry; 50/51: the plugin is not
/// ready), so they are chosen with care.
pub mod code {
    /// The netconf's `cniVersion` is not one we speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The netconf holds a field we do not support (e.g. `ipam`).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its netns or its attachment) is unknown.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// A required `CNI_*` variable is missing or invalid (also `CNI_ARGS`).
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or talking to the daemon failed at the I/O level.
    pub const IO: u32 = 5;
    /// The netconf is not JSON.
    pub const DECODE: u32 = 6;
    /// The netconf is JSON but wrong (a missing or bad key).
    pub const INVALID_NETCONF: u32 = 7;
    /// Transient: the daemon is not reachable; the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs right now (the daemon is down).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The daemon refused the request; its message is in `msg`.
    pub const DAEMON_REFUSED: u32 = 100;
    /// CHECK: the container's network is not what the result says.
    pub const CHECK_MISMATCH: u32 = 101;
}

/// A CNI error object (`{"cniVersion","code","msg","details"}`), printed
/// on stdout with a non-zero exit. `msg` says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// A one-line message for people.
    pub msg: String,
    /// More context (the daemon's answer, the serde path), may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON object the spec wants on stdout, for netconf version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "later").with_details("d");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":11,"msg":"later","details":"d"})
        );
        assert_eq!(
            CniError::new(4, "x").to_json("1.1.0"),
            json!({"cniVersion":"1.1.0","code":4,"msg":"x"})
        );
    }
}
