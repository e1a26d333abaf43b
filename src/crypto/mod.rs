//! Keys and encryption: the master key and its subkeys, the passphrase
//! wrapping, and the sealed formats of blocks and documents.
//!
//! Every ciphertext is XChaCha20-Poly1305 with a random 192-bit nonce, and its
//! associated data names the vault, the kind of object and the object's id, so
//! a ciphertext moved to another place fails to open.

mod aead;
mod keys;
mod wrap;

pub use keys::{BlockId, MasterKey, NodeId, Tag, VaultId, VaultKeys};
pub use wrap::{KdfParams, Passphrase, WrappedKey};

/// Failures of the cryptographic layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("wrong passphrase: the master key could not be unlocked")]
    WrongPassphrase,

    #[error("a {kind} failed authentication: it was altered, damaged or belongs elsewhere")]
    Tampered { kind: &'static str },

    #[error("a block's content does not match its id: it was swapped or altered")]
    BlockMismatch,

    #[error("the wrapped master key is malformed: {0}")]
    MalformedWrappedKey(String),

    #[error("the passphrase key derivation failed: {0}")]
    Kdf(String),
}
