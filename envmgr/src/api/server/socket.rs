//! The control socket's file: made bindable (a stale one removed, a live
//! one or a non-socket refused), restricted to its owner (and a group), and
//! removed on shutdown. The CNM plugin socket follows the same rules.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::Context as _;

/// Binds the API socket (see [`super::serve`] for the rules), so the caller knows
/// the API accepts connections before it tells a supervisor it is ready.
///
/// The socket is the node's control: whoever can connect can attach
/// containers into any namespace. So it is `0600` (root only), or `0660`
/// owned by `group` when one is configured for operators.
pub fn bind(socket: &Path, group: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    prepare_socket_path(socket)?;
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    restrict_socket(socket, group)?;
    tracing::info!(socket = %socket.display(), ?group, "management API listening");
    Ok(listener)
}

/// Gives a freshly bound control socket its access rule: `0600` for the
/// owner alone, or `0660` with group `group`. Connecting needs write
/// permission, so nobody else can talk to it.
pub(crate) fn restrict_socket(socket: &Path, group: Option<u32>) -> anyhow::Result<()> {
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(socket, None, Some(gid))
                .with_context(|| format!("chgrp {gid} {}", socket.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", socket.display()))
}

/// Makes `socket` bindable: creates its directory, removes a stale socket
/// file, refuses a live one or a non-socket file.
pub(crate) fn prepare_socket_path(socket: &Path) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                anyhow::bail!(
                    "another process is serving on {}; stop it or pick another socket path",
                    socket.display()
                );
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale socket {}", socket.display()))
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", socket.display())),
    }
}

/// Removes a socket file on shutdown; one already gone is fine, any other
/// failure is logged (`what` names the socket: `API`, `CNM`).
pub(crate) fn remove_socket(socket: &Path, what: &str) {
    if let Err(e) = std::fs::remove_file(socket) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(socket = %socket.display(), "removing the {what} socket: {e}");
        }
    }
}
