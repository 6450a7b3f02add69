//! `proxytun keygen`: a new cluster key, the one command that needs no
//! daemon.

use std::path::Path;

use anyhow::Context as _;

/// `proxytun keygen`: a new cluster key from the OS RNG, printed, or written
/// to a new file `out` created with mode 0600 (never over an existing one,
/// so a working cluster key cannot be lost by a slip). Returns what to print.
pub fn keygen(out: Option<&Path>, node: bool) -> anyhow::Result<String> {
    if node {
        return node_keygen(out);
    }
    let key = proxytun_key()?;
    let text = format!("{}\n", key.to_hex());
    let Some(path) = out else {
        return Ok(text);
    };
    write_new(path, &text)?;
    Ok(format!(
        "wrote a new cluster key to {} (mode 0600); copy it to every node and point tunnel.key_file at it\n",
        path.display()
    ))
}

/// `proxytun keygen --node`: a node's own key pair. The private key goes
/// to `out` (or stdout); the public key is printed for the membership.
fn node_keygen(out: Option<&Path>) -> anyhow::Result<String> {
    let key = proxytun_core::handshake::NodeKey::generate().context("generate a node key")?;
    let Some(path) = out else {
        return Ok(format!("{}\n", key.private_hex()));
    };
    write_new(path, &format!("{}\n", key.private_hex()))?;
    Ok(format!(
        "wrote a new node key to {} (mode 0600); point tunnel.node_key_file at it\npublic key: {}\n",
        path.display(),
        key.public()
    ))
}

/// `proxytun pubkey`: the public half of a node key file, for the other
/// nodes' `[[peer]] public_key` (with etcd the node publishes it itself).
pub fn pubkey(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read the node key {}", file.display()))?;
    let key = proxytun_core::handshake::NodeKey::parse_hex(&text)
        .with_context(|| format!("{} is no node key", file.display()))?;
    Ok(format!("{}\n", key.public()))
}

/// Creates `path` with mode 0600 and `text`, never over an existing file.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (keygen never overwrites a file)", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn proxytun_key() -> anyhow::Result<proxytun_core::seal::ClusterKey> {
    proxytun_core::seal::ClusterKey::generate(&ring::rand::SystemRandom::new())
        .context("generate a cluster key")
}
