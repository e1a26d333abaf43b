//! The master key wrapped under a passphrase with Argon2id.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::keys::{MasterKey, VaultId};
use super::{CryptoError, aead};

/// Memory floor of real vaults, in KiB: the server keeps the wrapped key, so
/// a guess at the passphrase must stay expensive for whoever holds it.
const MIN_MEMORY_KIB: u32 = 64 * 1024;

const WRAPPED_KEY_FORMAT: u8 = 1;

/// A passphrase, zeroized when dropped and never printed.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct Passphrase(String);

impl Passphrase {
    pub fn new(text: String) -> Self {
        Passphrase(text)
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The passphrase text, for comparing two entries of it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Argon2id cost parameters and salt, stored beside the wrapped key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: [u8; 16],
}

impl KdfParams {
    /// Parameters for a new vault: 64 MiB and 3 passes, about 0.3 s on a
    /// 2-core x86-64 machine of 2026 (an estimate, measured by hand).
    pub fn recommended() -> Self {
        KdfParams {
            memory_kib: MIN_MEMORY_KIB,
            iterations: 3,
            parallelism: 1,
            salt: random_salt(),
        }
    }

    /// Cheap parameters for tests only; a vault made with them is easy to
    /// brute-force, and `syn status` says so.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: random_salt(),
        }
    }

    pub fn is_below_floor(&self) -> bool {
        self.memory_kib < MIN_MEMORY_KIB
    }

    fn derive(&self, passphrase: &Passphrase) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|error| CryptoError::Kdf(error.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon2
            .hash_password_into(passphrase.as_bytes(), &self.salt, key.as_mut())
            .map_err(|error| CryptoError::Kdf(error.to_string()))?;
        Ok(key)
    }
}

fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// The master key sealed under a key derived from the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    format: u8,
    pub vault_id: VaultId,
    pub kdf: KdfParams,
    sealed: Vec<u8>,
}

impl WrappedKey {
    pub fn wrap(
        master: &MasterKey,
        vault_id: VaultId,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<Self, CryptoError> {
        let wrapping_key = kdf.derive(passphrase)?;
        let sealed = aead::seal(&wrapping_key, &associated_data(vault_id), master.as_bytes());
        Ok(WrappedKey {
            format: WRAPPED_KEY_FORMAT,
            vault_id,
            kdf,
            sealed,
        })
    }

    /// Unlocks the master key; a wrong passphrase gives
    /// [`CryptoError::WrongPassphrase`].
    pub fn unwrap_key(&self, passphrase: &Passphrase) -> Result<MasterKey, CryptoError> {
        let wrapping_key = self.kdf.derive(passphrase)?;
        let opened = aead::open(
            &wrapping_key,
            &associated_data(self.vault_id),
            &self.sealed,
            "wrapped key",
        )
        .map_err(|_| CryptoError::WrongPassphrase)?;
        let bytes: [u8; 32] = opened
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::MalformedWrappedKey("wrong key length".into()))?;
        Ok(MasterKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain fields into a Vec cannot fail.
        postcard::to_stdvec(self).expect("a wrapped key always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let wrapped: WrappedKey = postcard::from_bytes(bytes)
            .map_err(|error| CryptoError::MalformedWrappedKey(error.to_string()))?;
        if wrapped.format != WRAPPED_KEY_FORMAT {
            return Err(CryptoError::MalformedWrappedKey(format!(
                "unknown format {}",
                wrapped.format
            )));
        }
        Ok(wrapped)
    }
}

fn associated_data(vault_id: VaultId) -> Vec<u8> {
    let mut ad = vault_id.0.to_vec();
    ad.extend_from_slice(b"master key");
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_passphrase_unwraps_the_key() {
        let master = MasterKey::generate();
        let passphrase = Passphrase::new("correct horse".into());
        let vault_id = VaultId::random();
        let wrapped = WrappedKey::wrap(
            &master,
            vault_id,
            &passphrase,
            KdfParams::insecure_for_tests(),
        )
        .unwrap();
        let parsed = WrappedKey::from_bytes(&wrapped.to_bytes()).unwrap();
        let unwrapped = parsed.unwrap_key(&passphrase).unwrap();
        assert_eq!(unwrapped.as_bytes(), master.as_bytes());
    }

    #[test]
    fn wrong_passphrase_is_rejected() {
        let master = MasterKey::generate();
        let wrapped = WrappedKey::wrap(
            &master,
            VaultId::random(),
            &Passphrase::new("right".into()),
            KdfParams::insecure_for_tests(),
        )
        .unwrap();
        let result = wrapped.unwrap_key(&Passphrase::new("wrong".into()));
        assert!(matches!(result, Err(CryptoError::WrongPassphrase)));
    }

    #[test]
    fn garbage_is_a_malformed_key_not_a_panic() {
        assert!(matches!(
            WrappedKey::from_bytes(b"\xff\x00garbage"),
            Err(CryptoError::MalformedWrappedKey(_))
        ));
    }

    #[test]
    fn test_parameters_are_below_the_floor() {
        assert!(KdfParams::insecure_for_tests().is_below_floor());
        assert!(!KdfParams::recommended().is_below_floor());
    }
}
