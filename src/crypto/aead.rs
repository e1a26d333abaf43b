//! XChaCha20-Poly1305 with random nonces, stored as `nonce || ciphertext`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::CryptoError;

const NONCE_LEN: usize = 24;

/// Bytes that sealing adds to a plaintext: the nonce and the Poly1305 tag.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// Encrypts `plaintext` under `key`, binding it to `associated_data`.
pub fn seal(key: &[u8; 32], associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);

    let payload = Payload {
        msg: plaintext,
        aad: associated_data,
    };
    // Encryption fails only for plaintexts beyond 256 GiB, far above any
    // block or document syn seals.
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), payload)
        .expect("XChaCha20-Poly1305 accepts every plaintext below 256 GiB");

    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Decrypts what [`seal`] produced; `kind` names the object in the error.
pub fn open(
    key: &[u8; 32],
    associated_data: &[u8],
    sealed: &[u8],
    kind: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < OVERHEAD {
        return Err(CryptoError::Tampered { kind });
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    let payload = Payload {
        msg: ciphertext,
        aad: associated_data,
    };
    cipher
        .decrypt(XNonce::from_slice(nonce), payload)
        .map_err(|_| CryptoError::Tampered { kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_bit_fails_to_open() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"ad", b"some plaintext");
        for bit in 0..sealed.len() * 8 {
            let mut altered = sealed.clone();
            altered[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&key, b"ad", &altered, "test").is_err(), "bit {bit}");
        }
    }

    #[test]
    fn other_associated_data_fails_to_open() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"node 1", b"x");
        assert!(open(&key, b"node 2", &sealed, "test").is_err());
        assert_eq!(open(&key, b"node 1", &sealed, "test").unwrap(), b"x");
    }

    #[test]
    fn truncated_ciphertext_fails_to_open() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"", b"x");
        assert!(open(&key, b"", &sealed[..10], "test").is_err());
    }
}
