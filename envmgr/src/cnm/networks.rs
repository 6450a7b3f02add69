//! The Docker networks this driver was asked to create, persisted to
//! `<state dir>/cnm-networks.json`: Docker sends `CreateNetwork` once and
//! never again, not even after the plugin restarts, so forgetting a network
//! would break every later `docker run --network` on it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::write_atomic;

/// The file name inside the manager's state directory.
pub const NETWORKS_FILE: &str = "cnm-networks.json";

/// The on-disk format version; another one is refused, not guessed at.
pub const NETWORKS_FORMAT: u32 = 1;

/// What one Docker network stands for: one `app/service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `-o app=`.
    pub app: String,
    /// `-o service=`.
    pub service: String,
    /// `-o ifname=`: the interface name inside containers (default `eth0`).
    pub ifname: String,
    /// `-o service_ip=`: pins the service's round-robin ServiceIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ip: Option<Ipv4Addr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File1 {
    format: u32,
    networks: BTreeMap<String, Network>,
}

/// Why the networks file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    /// Reading, writing or renaming failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not ours or is damaged.
    #[error("{} is not a valid proxytun CNM networks file ({reason}); fix it or move it away (Docker's networks on this driver must then be recreated)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The persisted map NetworkID → [`Network`]. Every change is written
/// (temp file, fsync, rename) before it is visible, so a crash leaves
/// either the old or the new file.
#[derive(Debug)]
pub struct Networks {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Network>>,
}

impl Networks {
    /// Loads `<dir>/cnm-networks.json`, or starts empty when it does not exist.
    pub fn open(dir: &Path) -> Result<Self, NetworksError> {
        let path = dir.join(NETWORKS_FILE);
        let map = match fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| NetworksError::Corrupt {
                    path: path.clone(),
                    reason,
                };
                let file: File1 =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.format != NETWORKS_FORMAT {
                    return Err(corrupt(format!(
                        "format {} where this build reads {NETWORKS_FORMAT}",
                        file.format
                    )));
                }
                file.networks
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(NetworksError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        Ok(Self {
            path,
            map: Mutex::new(map),
        })
    }

    /// The file the networks are kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The network `id`, if Docker created it through us.
    pub fn get(&self, id: &str) -> Option<Network> {
        self.lock().get(id).cloned()
    }

    /// Every network, by id.
    pub fn all(&self) -> BTreeMap<String, Network> {
        self.lock().clone()
    }

    /// Adds (or replaces) network `id`, on disk first.
    pub fn insert(&self, id: &str, net: Network) -> Result<(), NetworksError> {
        let mut map = self.lock();
        let mut next = map.clone();
        next.insert(id.to_owned(), net);
        self.write(&next)?;
        *map = next;
        Ok(())
    }

    /// Removes network `id`, on disk first; the removed one, if it existed.
    pub fn remove(&self, id: &str) -> Result<Option<Network>, NetworksError> {
        let mut map = self.lock();
        if !map.contains_key(id) {
            return Ok(None);
        }
        let mut next = map.clone();
        let old = next.remove(id);
        self.write(&next)?;
        *map = next;
        Ok(old)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Network>> {
        // A panic while holding the lock cannot leave the map half-changed
        // (it is replaced whole), so a poisoned lock is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, map: &BTreeMap<String, Network>) -> Result<(), NetworksError> {
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| NetworksError::Io {
                action,
                path,
                source,
            }
        };
        let dir = self
            .path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let file = File1 {
            format: NETWORKS_FORMAT,
            networks: map.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|e| NetworksError::Corrupt {
            path: self.path.clone(),
            reason: format!("encoding: {e}"),
        })?;
        json.push(b'\n');
        write_atomic(&self.path, &json).map_err(|e| NetworksError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Network {
        Network {
            app: "shop".into(),
            service: "web".into(),
            ifname: "eth0".into(),
            service_ip: None,
        }
    }

    #[test]
    fn survives_reopen_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = Networks::open(dir.path()).expect("open empty");
        assert!(n.all().is_empty());
        n.insert("n1", web()).expect("insert");
        let pinned = Network {
            service_ip: Some(Ipv4Addr::new(10, 30, 0, 9)),
            ..web()
        };
        n.insert("n2", pinned.clone()).expect("insert");
        drop(n);
        let n = Networks::open(dir.path()).expect("reopen");
        assert_eq!(n.get("n1"), Some(web()));
        assert_eq!(n.get("n2"), Some(pinned));
        assert_eq!(n.remove("n1").expect("remove"), Some(web()));
        assert_eq!(n.remove("n1").expect("remove again"), None);
        drop(n);
        let n = Networks::open(dir.path()).expect("reopen");
        assert_eq!(n.all().keys().collect::<Vec<_>>(), ["n2"]);
        assert!(!dir.path().join("cnm-networks.json.tmp").exists());
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(NETWORKS_FILE);
        for bad in [
            "not json",
            r#"{"format": 2, "networks": {}}"#,
            r#"{"format": 1, "networks": {}, "extra": 1}"#,
            r#"{"format": 1, "networks": {"x": {"app": "a"}}}"#,
        ] {
            fs::write(&path, bad).expect("write");
            let err = Networks::open(dir.path()).expect_err(bad).to_string();
            assert!(err.contains("cnm-networks.json"), "{err}");
        }
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = Networks::open(dir.path()).expect("open");
        n.insert("n1", web()).expect("insert");
        // A directory where the temp file must go makes the write fail.
        fs::create_dir(dir.path().join("cnm-networks.json.tmp")).expect("mkdir");
        assert!(n.insert("n2", web()).is_err());
        assert!(n.remove("n1").is_err());
        assert_eq!(n.all().keys().collect::<Vec<_>>(), ["n1"]);
    }
}
