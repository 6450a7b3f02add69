//! The NodeEngine's `/register`: which Oakestra worker this node is, and
//! where its cluster manager is.
//!
//! The NodeEngine registers once per worker start; the NetManager then
//! connects to the cluster's MQTT broker as `client_id` and asks for its
//! subnet. proxytun keeps the registration in the state directory
//! (`oakestra.json`), so a restart reconnects with the same identity, and
//! its subnet, without waiting for the NodeEngine again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{write_atomic, WriteError};

/// The file in the state directory that holds the registration.
pub const FILE: &str = "oakestra.json";

/// One worker's registration, as the NodeEngine's `/register` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The worker's id in the cluster: the MQTT client id and the `{id}`
    /// of every `nodes/{id}/net/...` topic.
    pub client_id: String,
    /// The cluster manager's address (NodeEngine v0.4.302 and later send
    /// it); the broker is this host on `store.broker_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_address: Option<String>,
}

/// Why the saved registration could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The file exists but cannot be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a registration.
    #[error("{path} is not a saved Oakestra registration ({source}); remove it to register again")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Writing it failed.
    #[error("{} {}: {}", .0.action, .0.path.display(), .0.source)]
    Write(WriteError),
}

/// Checks a worker id: it is the MQTT client id and one topic level
/// (`nodes/{id}/net/...`), so 1 to 128 characters without `/`, `+`, `#`,
/// white space or control characters. The message says so. The one rule
/// for `/register`, `store.client_id` and the MQTT client.
pub fn check_client_id(id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.len())
        && !id.contains(['/', '+', '#'])
        && !id.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1 to 128 characters without '/', '+', '#' or spaces (the worker id the NodeEngine registers: its MQTT client id and topic level)"
        ))
    }
}

impl Registration {
    /// The registration saved in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, RegistrationError> {
        let path = state_dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RegistrationError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RegistrationError::Parse { path, source })
    }

    /// Saves it in `state_dir`, never half-written.
    pub fn save(&self, state_dir: &Path) -> Result<(), RegistrationError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| RegistrationError::Parse {
            path: state_dir.join(FILE),
            source,
        })?;
        write_atomic(&state_dir.join(FILE), &bytes).map_err(RegistrationError::Write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_and_loaded() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            Registration::load(dir.path()).expect("no file is fine"),
            None
        );
        let r = Registration {
            client_id: "worker-1".into(),
            cluster_address: Some("10.0.0.1".into()),
        };
        r.save(dir.path()).expect("save");
        assert_eq!(Registration::load(dir.path()).expect("load"), Some(r));
        std::fs::write(dir.path().join(FILE), b"{").expect("write");
        let e = Registration::load(dir.path()).expect_err("garbage refused");
        assert!(e.to_string().contains("oakestra.json"), "{e}");
    }
}
