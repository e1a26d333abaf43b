//! The master key, the subkeys derived from it, and the ids of a vault.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::CryptoError;
use super::aead;

/// Smallest padded plaintext: below it, every block or document looks alike.
const MIN_PADDED_LEN: usize = 256;

/// 32 random bytes shared by every device of a vault; never stored unwrapped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        MasterKey(bytes)
    }

    pub(super) fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    pub(super) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn derive(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(&format!("syn 2026-12 {purpose} key"), &self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn random() -> Self {
                let mut bytes = [0u8; $len];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                $name(bytes)
            }

            pub fn to_hex(&self) -> String {
                self.0.iter().map(|b| format!("{b:02x}")).collect()
            }

            /// Parses lowercase or uppercase hex of exactly the right length.
            pub fn from_hex(text: &str) -> Option<Self> {
                if text.len() != $len * 2 || !text.is_ascii() {
                    return None;
                }
                let mut bytes = [0u8; $len];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
                }
                Some($name(bytes))
            }

            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some($name(bytes.try_into().ok()?))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
    };
}

id_type!(
    /// Random id of a vault, the same on every device and on the server.
    VaultId,
    16
);
id_type!(
    /// Random, global id of a node (file, directory or symlink).
    NodeId,
    16
);
id_type!(
    /// Keyed hash of a block's plaintext, which names the block everywhere.
    BlockId,
    32
);
id_type!(
    /// Keyed hash used in place of a name or a directory in local indexes.
    Tag,
    32
);

impl NodeId {
    /// The root directory: implicit on every device and never synced.
    pub const ROOT: NodeId = NodeId([0; 16]);
}

/// The subkeys of one vault, derived once when the store is unlocked.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct VaultKeys {
    #[zeroize(skip)]
    vault_id: VaultId,
    content: [u8; 32],
    metadata: [u8; 32],
    block_ids: [u8; 32],
    names: [u8; 32],
    local: [u8; 32],
}

impl fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultKeys({:?}, <redacted>)", self.vault_id)
    }
}

impl VaultKeys {
    pub fn derive(vault_id: VaultId, master: &MasterKey) -> Self {
        VaultKeys {
            vault_id,
            content: master.derive("block content"),
            metadata: master.derive("document"),
            block_ids: master.derive("block id"),
            names: master.derive("name tag"),
            local: master.derive("local secret"),
        }
    }

    pub fn vault_id(&self) -> VaultId {
        self.vault_id
    }

    /// Seals a block of file content and returns its id and ciphertext.
    pub fn seal_block(&self, plaintext: &[u8]) -> (BlockId, Vec<u8>) {
        let id = BlockId(*blake3::keyed_hash(&self.block_ids, plaintext).as_bytes());
        let padded = pad(plaintext);
        let sealed = aead::seal(
            &self.content,
            &self.associated_data("block", &id.0),
            &padded,
        );
        (id, sealed)
    }

    /// Opens a block and checks that its content hashes to `id`, so a block
    /// served in place of another is rejected.
    pub fn open_block(&self, id: &BlockId, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ad = self.associated_data("block", &id.0);
        let padded = aead::open(&self.content, &ad, sealed, "block")?;
        let plaintext = unpad(padded).ok_or(CryptoError::Tampered { kind: "block" })?;
        let actual = blake3::keyed_hash(&self.block_ids, &plaintext);
        if actual.as_bytes() != &id.0 {
            return Err(CryptoError::BlockMismatch);
        }
        Ok(plaintext)
    }

    /// Seals the serialized document of node `id`.
    pub fn seal_document(&self, id: &NodeId, plaintext: &[u8]) -> Vec<u8> {
        let ad = self.associated_data("node", &id.0);
        aead::seal(&self.metadata, &ad, &pad(plaintext))
    }

    pub fn open_document(&self, id: &NodeId, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ad = self.associated_data("node", &id.0);
        let padded = aead::open(&self.metadata, &ad, sealed, "document")?;
        unpad(padded).ok_or(CryptoError::Tampered { kind: "document" })
    }

    /// Seals a secret that stays on this device, such as the device token.
    pub fn seal_local(&self, what: &str, plaintext: &[u8]) -> Vec<u8> {
        aead::seal(
            &self.local,
            &self.associated_data("local", what.as_bytes()),
            plaintext,
        )
    }

    pub fn open_local(&self, what: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ad = self.associated_data("local", what.as_bytes());
        aead::open(&self.local, &ad, sealed, "local secret")
    }

    /// Tag of the entry `name` in directory `parent`, the key of name lookups.
    pub fn name_tag(&self, parent: &NodeId, name: &[u8]) -> Tag {
        let mut hasher = blake3::Hasher::new_keyed(&self.names);
        hasher.update(b"entry");
        hasher.update(&parent.0);
        hasher.update(name);
        Tag(*hasher.finalize().as_bytes())
    }

    /// Tag of directory `parent`, shared by all its entries so that a
    /// directory can be listed without storing its id in plain text.
    pub fn directory_tag(&self, parent: &NodeId) -> Tag {
        let mut hasher = blake3::Hasher::new_keyed(&self.names);
        hasher.update(b"directory");
        hasher.update(&parent.0);
        Tag(*hasher.finalize().as_bytes())
    }

    fn associated_data(&self, kind: &str, object_id: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(16 + kind.len() + 1 + object_id.len());
        ad.extend_from_slice(&self.vault_id.0);
        ad.extend_from_slice(kind.as_bytes());
        ad.push(0);
        ad.extend_from_slice(object_id);
        ad
    }
}

/// Prefixes the length and pads to the next power of two, so ciphertext sizes
/// reveal only a rough size class.
fn pad(plaintext: &[u8]) -> Vec<u8> {
    let padded_len = plaintext.len().max(MIN_PADDED_LEN).next_power_of_two();
    let mut out = Vec::with_capacity(4 + padded_len);
    out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
    out.extend_from_slice(plaintext);
    out.resize(4 + padded_len, 0);
    out
}

fn unpad(mut padded: Vec<u8>) -> Option<Vec<u8>> {
    let header: [u8; 4] = padded.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(header) as usize;
    if len > padded.len() - 4 {
        return None;
    }
    padded.drain(..4);
    padded.truncate(len);
    Some(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> VaultKeys {
        VaultKeys::derive(VaultId::random(), &MasterKey::generate())
    }

    #[test]
    fn block_round_trips() {
        let keys = keys();
        let (id, sealed) = keys.seal_block(b"hello block");
        assert_eq!(keys.open_block(&id, &sealed).unwrap(), b"hello block");
    }

    #[test]
    fn block_served_in_place_of_another_is_rejected() {
        let keys = keys();
        let (id_a, _) = keys.seal_block(b"block a");
        let (_, sealed_b) = keys.seal_block(b"block b");
        assert!(keys.open_block(&id_a, &sealed_b).is_err());
    }

    #[test]
    fn block_with_flipped_bit_is_rejected() {
        let keys = keys();
        let (id, sealed) = keys.seal_block(&[42u8; 1000]);
        for position in [0, 24, sealed.len() / 2, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[position] ^= 0x01;
            assert!(keys.open_block(&id, &altered).is_err(), "byte {position}");
        }
    }

    #[test]
    fn block_from_another_vault_is_rejected() {
        let master = MasterKey::generate();
        let ours = VaultKeys::derive(VaultId::random(), &master);
        let theirs = VaultKeys::derive(VaultId::random(), &master);
        let (id, sealed) = theirs.seal_block(b"x");
        assert!(ours.open_block(&id, &sealed).is_err());
    }

    #[test]
    fn document_of_another_node_is_rejected() {
        let keys = keys();
        let sealed = keys.seal_document(&NodeId([1; 16]), b"doc");
        assert!(keys.open_document(&NodeId([2; 16]), &sealed).is_err());
        assert_eq!(
            keys.open_document(&NodeId([1; 16]), &sealed).unwrap(),
            b"doc"
        );
    }

    #[test]
    fn sizes_are_padded_to_power_of_two() {
        let keys = keys();
        let (_, small) = keys.seal_block(&[1u8; 5000]);
        let (_, larger) = keys.seal_block(&[1u8; 7000]);
        assert_eq!(small.len(), larger.len());
    }

    #[test]
    fn hex_ids_round_trip() {
        let id = NodeId::random();
        assert_eq!(NodeId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(NodeId::from_hex("zz"), None);
        assert_eq!(NodeId::from_hex(&"é".repeat(16)), None);
    }
}
