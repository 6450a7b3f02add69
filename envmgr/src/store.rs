//! Where the node's state survives a restart.
//!
//! [`Store`] is the seam for backends: [`LocalStore`] (one JSON file, the
//! default for a single node or a static cluster) today, etcd later. The
//! manager only ever loads the whole [`State`] at start and saves the whole
//! new state after each accepted change.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::model::{Instance, Peer, Policy, Service};
use crate::plan::AddressPlan;

/// The on-disk format version written by this build. Bumped on any change
/// that an older build could misread; a file with another version is refused
/// rather than guessed at.
pub const FORMAT_VERSION: u32 = 1;

/// The name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// The lock file a daemon holds while it uses the state directory.
pub const LOCK_FILE: &str = "lock";

/// How long [`LocalStore::open_exclusive`] waits for a lock that is taken.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything the node must remember across restarts.
///
/// Lists rather than maps: JSON object keys must be strings, and lists keep
/// the file readable for an operator. The manager keeps them sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`FORMAT_VERSION`] of the build that wrote it.
    pub format: u32,
    /// The snapshot version last published, so versions keep increasing
    /// across restarts.
    pub version: u64,
    /// The node this state belongs to; a daemon configured with another name
    /// refuses it.
    pub node_name: String,
    /// The address plan the addresses were allocated from; a daemon
    /// configured with another plan refuses it.
    pub plan: AddressPlan,
    /// Every known service.
    pub services: Vec<Service>,
    /// Every known instance, local and remote.
    pub instances: Vec<Instance>,
    /// Every registered peer node.
    pub peers: Vec<Peer>,
    /// The isolation policy (absent in a state written before policies:
    /// the default, which isolates nothing).
    #[serde(default)]
    pub policy: Policy,
    /// External clients (docs/join.md; absent in older states: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<crate::model::Client>,
}

impl State {
    /// An empty state for a fresh node.
    pub fn empty(node_name: &str, plan: &AddressPlan) -> Self {
        Self {
            format: FORMAT_VERSION,
            version: 0,
            node_name: node_name.to_owned(),
            plan: plan.clone(),
            services: Vec::new(),
            instances: Vec::new(),
            peers: Vec::new(),
            policy: Policy::default(),
            clients: Vec::new(),
        }
    }
}

/// Why the state could not be read or written; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `write`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file exists but is not a valid state file; it is left alone so
    /// an operator can inspect or remove it.
    #[error("{} is corrupt ({source}); fix or move it away to start empty", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// The file was written by a build with another format version.
    #[error("{} has format version {found}, this build reads version {expected}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build understands.
        expected: u32,
    },
    /// The state could not be encoded (a bug, not an operator error).
    #[error("encode state for {}: {source}", path.display())]
    Encode {
        /// The file it was meant for.
        path: PathBuf,
        /// The serialiser's error.
        source: serde_json::Error,
    },
    /// Another process holds the state directory's lock.
    #[error("{} is locked by another process (is another proxytun daemon running with this state directory?)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Any other backend failure (used by other backends and by tests).
    #[error("{0}")]
    Other(String),
}

/// A place the node's [`State`] is kept.
///
/// Synchronous on purpose: the manager calls it under its write lock, and a
/// small file write is cheaper than a thread hop. A networked backend can
/// block on its own client inside.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The stored state, or `None` when nothing was stored yet.
    fn load(&self) -> Result<Option<State>, StoreError>;
    /// Replaces the stored state, atomically: after a crash the old or the
    /// new state is found, never a mix.
    fn save(&self, state: &State) -> Result<(), StoreError>;
    /// Where the state lives, for messages (e.g. the file's path).
    fn location(&self) -> String;
}

/// The embedded file-backed store: `<dir>/state.json`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    /// Held while the store lives when opened with [`Self::open_exclusive`].
    _lock: Option<Arc<Flock<File>>>,
}

impl LocalStore {
    /// A store in `dir`; the directory is created (mode 0700) on first save.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            _lock: None,
        }
    }

    /// A store in `dir` that creates the directory (0700) now and holds an
    /// exclusive lock on `<dir>/lock` until dropped, so a second daemon on
    /// the same directory is refused instead of both overwriting the file.
    pub fn open_exclusive(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        create_dir(&dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        // A daemon killed while it was starting a child (`nft`) may leave
        // the lock with that child for a moment after its own death: wait
        // a bounded while before calling the directory taken.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut file = file;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((f, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Locked { path }),
                Err((_, errno)) => {
                    return Err(StoreError::Io {
                        action: "lock",
                        path,
                        source: errno.into(),
                    })
                }
            }
        };
        Ok(Self {
            dir,
            _lock: Some(Arc::new(lock)),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Where [`write_atomic`] writes before the rename.
    #[cfg(test)]
    fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!("{STATE_FILE}.tmp"))
    }

    /// Loads the state; `Ok(None)` when the file does not exist.
    pub fn load(&self) -> Result<Option<State>, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        // Check the version before the shape, so a newer file gets the
        // version message rather than a confusing field error.
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if header.format != FORMAT_VERSION {
            return Err(StoreError::Format {
                path,
                found: header.format,
                expected: FORMAT_VERSION,
            });
        }
        let state = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Corrupt { path, source })?;
        Ok(Some(state))
    }

    /// Writes the state atomically: `state.json.tmp`, fsync, rename over
    /// `state.json`, fsync the directory.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        create_dir(&self.dir)?;
        let path = self.path();
        let mut json = serde_json::to_vec_pretty(state).map_err(|source| StoreError::Encode {
            path: path.clone(),
            source,
        })?;
        json.push(b'\n');
        write_atomic(&path, &json).map_err(|e| StoreError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        })
    }
}

/// A step of [`write_atomic`] that failed.
#[derive(Debug)]
pub struct WriteError {
    /// What was being done, e.g. `fsync`.
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

/// Replaces `path` with `bytes` so that pulling the power at any point
/// leaves the old file or the new one, never a mix: `<path>.tmp` (mode
/// 0600), fsync, rename over `path`, fsync the directory. A failed write
/// removes its temp file; the real file is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| WriteError {
            action,
            path,
            source,
        }
    };
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let write = || -> Result<(), WriteError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(bytes).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(err("rename into place", path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync directory", &dir))
    };
    let result = write();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates the state directory (mode 0700) if it is missing: what the
/// store does on open, and what the daemon does before anything else
/// saves there (the NodeEngine's registration, the Oakestra subnet).
pub fn create_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })
}

impl Store for LocalStore {
    fn load(&self) -> Result<Option<State>, StoreError> {
        LocalStore::load(self)
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        LocalStore::save(self, state)
    }

    fn location(&self) -> String {
        self.path().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::model::{DualAddr, InstanceKey, Placement, ServiceName};

    fn plan() -> AddressPlan {
        AddressPlan::with_default_ranges(1)
    }

    fn sample() -> State {
        let p = plan();
        let name = ServiceName::new("shop", "web").expect("name");
        let mut s = State::empty("n1", &p);
        s.version = 7;
        s.services.push(Service {
            name: name.clone(),
            rr_ip: p.service_pair("10.30.1.1".parse().expect("ip")),
            closest_ip: Some(p.service_pair("10.30.1.3".parse().expect("ip"))),
            affinity: Default::default(),
        });
        s.instances.push(Instance {
            key: InstanceKey { name, number: 0 },
            ns_addr: p.cluster_pair("10.18.1.2".parse().expect("ip")),
            instance_ip: DualAddr {
                v4: "10.30.1.2".parse().expect("ip"),
                v6: "fdff:30::102".parse().expect("ip"),
            },
            placement: Placement::Local {
                netns: "/run/netns/c1".into(),
                pid: None,
                host_veth: "pt01234567".into(),
                ifname: "eth0".into(),
                container_id: None,
                ports: Vec::new(),
                default_route: true,
            },
        });
        s.peers.push(Peer {
            name: "n2".into(),
            endpoint: "192.0.2.2:50103".parse().expect("sa"),
            public_key: None,
        });
        s
    }

    #[test]
    fn missing_file_is_none_and_save_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("sub/state"));
        assert!(store.load().expect("load").is_none());
        let s = sample();
        store.save(&s).expect("save");
        assert_eq!(store.load().expect("load"), Some(s.clone()));
        let mode = fs::metadata(dir.path().join("sub/state"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!store.tmp_path().exists(), "temp file renamed away");
        // Overwrite.
        let mut s2 = s;
        s2.version = 8;
        s2.peers.clear();
        store.save(&s2).expect("save");
        assert_eq!(store.load().expect("load"), Some(s2));
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        fs::write(store.path(), b"{\"format\": 1, \"version\": ").expect("write");
        let err = store.load().expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains(&store.path().display().to_string()));
        // A valid JSON document with a wrong shape is corrupt too.
        fs::write(store.path(), b"{\"format\": 1, \"nodes\": []}").expect("write");
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn other_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        fs::write(store.path(), b"{\"format\": 99, \"whatever\": true}").expect("write");
        let err = store.load().expect_err("format");
        assert!(
            matches!(
                err,
                StoreError::Format {
                    found: 99,
                    expected: FORMAT_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_second_exclusive_store_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("state");
        let first = LocalStore::open_exclusive(&sub).expect("first");
        let mode = fs::metadata(&sub).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let err = LocalStore::open_exclusive(&sub).expect_err("second");
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("lock"), "{err}");
        drop(first);
        LocalStore::open_exclusive(&sub).expect("free again");
    }

    #[test]
    fn failed_save_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let s = sample();
        store.save(&s).expect("save");
        // A directory where the temp file should go makes the write fail,
        // even as root (permissions would not).
        fs::create_dir(store.tmp_path()).expect("mkdir");
        let mut s2 = s.clone();
        s2.version = 99;
        let err = store.save(&s2).expect_err("must fail");
        assert!(err.to_string().contains("state.json.tmp"), "{err}");
        assert_eq!(store.load().expect("load"), Some(s));
    }
}
