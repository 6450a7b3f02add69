//! Is this path a container's network namespace?
//!
//! The manager asks before it attaches anything, so a typo'd path, a plain
//! file, a mount namespace or the daemon's own namespace is refused with a
//! clear message instead of half-configuring the host. A trait so the
//! manager's rules can be tested without root.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::statfs::{statfs, NSFS_MAGIC};

/// Identifies a namespace: two paths to the same namespace have the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NsId {
    /// Device of the nsfs inode.
    pub dev: u64,
    /// The nsfs inode number (what `ip netns identify` compares).
    pub ino: u64,
}

/// Why a path is not usable as a container's network namespace.
#[derive(Debug)]
pub(crate) enum NsProblem {
    /// Nothing at that path (the container is gone, or a typo).
    Missing,
    /// Something is there, but not a network namespace.
    NotNetns(&'static str),
    /// It is the daemon's own network namespace (the host's, usually).
    Own,
    /// It could not be inspected.
    Io(io::Error),
}

/// Inspects namespace paths.
pub(crate) trait NetnsProbe: Send + Sync + std::fmt::Debug + 'static {
    /// The namespace's identity if `path` is a network namespace other than
    /// the daemon's own.
    fn identify(&self, path: &Path) -> Result<NsId, NsProblem>;
}

/// The real probe: `statfs` says nsfs, `NS_GET_NSTYPE` says network, and
/// dev+inode differ from `/proc/self/ns/net`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SysNetns;

impl NetnsProbe for SysNetns {
    fn identify(&self, path: &Path) -> Result<NsId, NsProblem> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NsProblem::Missing),
            Err(e) => return Err(NsProblem::Io(e)),
        };
        let fs = statfs(path).map_err(|e| NsProblem::Io(e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NsProblem::NotNetns(
                "it is not a namespace file (not on nsfs)",
            ));
        }
        // nsfs holds every kind of namespace; make sure this is a network one.
        let file = File::open(path).map_err(NsProblem::Io)?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd,
        // which `file` keeps open for the duration of the call.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind < 0 {
            return Err(NsProblem::Io(io::Error::last_os_error()));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(NsProblem::NotNetns(
                "it is a namespace, but not a network namespace",
            ));
        }
        let id = NsId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let own = fs::metadata("/proc/self/ns/net").map_err(NsProblem::Io)?;
        if own.dev() == id.dev && own.ino() == id.ino {
            return Err(NsProblem::Own);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_probe_refuses_what_is_not_a_container_netns() {
        let p = SysNetns;
        assert!(matches!(
            p.identify(Path::new("/proc/self/ns/net")),
            Err(NsProblem::Own)
        ));
        assert!(matches!(
            p.identify(Path::new("/etc/hostname")),
            Err(NsProblem::NotNetns(_))
        ));
        assert!(matches!(
            p.identify(Path::new("/proc/self/ns/mnt")),
            Err(NsProblem::NotNetns(_))
        ));
        assert!(matches!(
            p.identify(Path::new("/nonexistent/ns/net")),
            Err(NsProblem::Missing)
        ));
    }
}
