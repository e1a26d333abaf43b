//! Bearer tokens: 32 random bytes in lowercase hex, stored only as BLAKE3
//! hashes.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use rand::RngCore;
use rand::rngs::OsRng;

use super::storage::TokenHash;
use crate::protocol::is_hex_id;

/// Number of random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// Creates a new random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.fill_bytes(&mut bytes);
    to_hex(&bytes)
}

pub fn hash_token(token: &str) -> TokenHash {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// Extracts the token from an `Authorization: Bearer` header.
///
/// Returns `None` when the header is missing, uses another scheme, or does
/// not contain a well-formed token, so a malformed token costs no database
/// lookup.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    // RFC 9110 makes the scheme name case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    is_hex_id(token, TOKEN_BYTES).then_some(token)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn generated_token_is_hex_id() {
        let token = generate_token();
        assert!(is_hex_id(&token, TOKEN_BYTES), "{token}");
        assert_ne!(token, generate_token());
    }

    #[test]
    fn bearer_token_rejects_malformed_headers() {
        let token = generate_token();
        let cases = [
            (format!("Bearer {token}"), true),
            (format!("bearer {token}"), true),
            (format!("Basic {token}"), false),
            ("Bearer abc".to_string(), false),
            (format!("Bearer {}", token.to_uppercase()), false),
            (token.clone(), false),
        ];
        for (value, valid) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            assert_eq!(bearer_token(&headers).is_some(), valid, "{value}");
        }
        assert!(bearer_token(&HeaderMap::new()).is_none());
    }
}
