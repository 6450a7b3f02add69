//! `proxytun keygen`: a new cluster key, the one command that needs no
//! daemon.

use std::path::Path;

use anyhow::Context as _;

/// `proxytun keygen`: a new cluster key from the OS RNG, printed, or written
/// to a new file `out` created with mode 0600 (never over an existing one,
/// so a working cluster key cannot be lost by a slip). Returns what to print.
pub fn keygen(out: Option<&Path>) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = proxytun_key()?;
    let text = format!("{}\n", key.to_hex());
    let Some(path) = out else {
        return Ok(text);
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (keygen never overwrites a file)", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(format!(
        "wrote a new cluster key to {} (mode 0600); copy it to every node and point tunnel.key_file at it\n",
        path.display()
    ))
}

fn proxytun_key() -> anyhow::Result<proxytun_core::seal::ClusterKey> {
    proxytun_core::seal::ClusterKey::generate(&ring::rand::SystemRandom::new())
        .context("generate a cluster key")
}
