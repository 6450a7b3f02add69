//! A node's static X25519 key pair (`tunnel.node_key_file`) and the public
//! keys the membership lists for each node.

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::seal::{KeyError, SealError};

/// Bytes of an X25519 key, private or public.
pub const NODE_KEY_LEN: usize = 32;

/// A node's public key as the membership lists it (64 hex characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; NODE_KEY_LEN]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl PublicKey {
    /// Parses 64 hex characters (surrounding whitespace allowed).
    pub fn parse_hex(text: &str) -> Result<PublicKey, KeyError> {
        parse_hex32(text).map(PublicKey)
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex32(&self.0)
    }
}

/// This node's static private key and its public half.
#[derive(Clone)]
pub struct NodeKey {
    private: [u8; NODE_KEY_LEN],
    public: PublicKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        write!(f, "NodeKey(public {})", self.public)
    }
}

impl NodeKey {
    /// The key pair of a private key (X25519 clamps it, so any 32 bytes do).
    pub fn from_private(private: [u8; NODE_KEY_LEN]) -> Result<NodeKey, SealError> {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or(SealError::Crypto)?;
        dh.set(&private);
        let mut public = [0u8; NODE_KEY_LEN];
        public.copy_from_slice(dh.pubkey());
        Ok(NodeKey {
            private,
            public: PublicKey(public),
        })
    }

    /// Parses a key file's content: the private key as 64 hex characters.
    pub fn parse_hex(text: &str) -> Result<NodeKey, NodeKeyError> {
        let private = parse_hex32(text).map_err(NodeKeyError::Format)?;
        NodeKey::from_private(private).map_err(NodeKeyError::Crypto)
    }

    /// A new key pair from the OS RNG (`proxytun keygen --node`).
    pub fn generate() -> Result<NodeKey, SealError> {
        let mut private = [0u8; NODE_KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut private)
            .map_err(|_| SealError::Rng)?;
        NodeKey::from_private(private)
    }

    /// The private key as the key file holds it.
    pub fn private_hex(&self) -> String {
        hex32(&self.private)
    }

    /// The public half, for the membership.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(super) fn private(&self) -> &[u8; NODE_KEY_LEN] {
        &self.private
    }
}

/// Why a node key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeKeyError {
    /// Not 64 hex characters.
    #[error(transparent)]
    Format(KeyError),
    /// The X25519 code refused it (not expected).
    #[error(transparent)]
    Crypto(SealError),
}

fn parse_hex32(text: &str) -> Result<[u8; NODE_KEY_LEN], KeyError> {
    let k = crate::seal::ClusterKey::parse_hex(text)?;
    Ok(*k.as_bytes())
}

fn hex32(b: &[u8; NODE_KEY_LEN]) -> String {
    crate::seal::ClusterKey::from_bytes(*b).to_hex()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_key_follows_from_the_private_one() {
        let a = NodeKey::generate().unwrap();
        let again = NodeKey::parse_hex(&a.private_hex()).unwrap();
        assert_eq!(a.public(), again.public());
        let b = NodeKey::generate().unwrap();
        assert_ne!(a.public(), b.public());
        let p = PublicKey::parse_hex(&a.public().to_hex()).unwrap();
        assert_eq!(p, a.public());
        assert!(PublicKey::parse_hex("zz").is_err());
        assert!(!format!("{a:?}").contains(&a.private_hex()));
    }
}
