//! VERSION, and the rule that the 1.1-only commands (STATUS, GC) refuse a
//! 1.0.0 netconf.

use serde_json::Value;

use crate::spec::{code, CniError, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS};

/// VERSION: the versions we speak, answered in the version asked (or the
/// latest when none was named).
pub(super) fn version(asked: Option<String>) -> Value {
    version_json(asked.as_deref().unwrap_or(LATEST_VERSION))
}

/// The VERSION answer, written in version `asked`.
pub(super) fn version_json(asked: &str) -> Value {
    serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// 1.1-only commands refuse a 1.0.0 netconf, as the spec says runtimes
/// must not send one.
pub(super) fn require_1_1(conf: &NetConf, what: &str) -> Result<(), CniError> {
    if conf.cni_version == "1.0.0" {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{what} exists from CNI 1.1.0 on: set \"cniVersion\": \"1.1.0\" to use it"),
        ));
    }
    Ok(())
}
