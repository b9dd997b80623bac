//! Gateway keys: reading them from a request, checking them, naming them.
//!
//! Clients send `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key`
//! (Anthropic SDKs). A key is never logged or stored in clear: the gateway
//! refers to it by its [`fingerprint`], which also names its Durable Object.

use sha2::{Digest, Sha256};

/// The key from `Authorization: Bearer` or `x-api-key`, if any.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer
        .or(x_api_key.map(str::trim))
        .filter(|k| !k.is_empty())
}

/// Whether `key` is one of the comma-separated `allowed` keys. Compares in
/// constant time per candidate, so timing does not reveal a prefix.
pub fn is_allowed(key: &str, allowed: &str) -> bool {
    let mut found = false;
    for candidate in allowed.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        found |= constant_time_eq(key.as_bytes(), candidate.as_bytes());
    }
    found
}

/// Equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stable, non-reversible name for a key: `key_` + 32 hex digits of SHA-256.
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("key_{}", hex(&digest[..16]))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_or_x_api_key() {
        assert_eq!(presented_key(Some("Bearer sk-1"), None), Some("sk-1"));
        assert_eq!(
            presented_key(Some("bearer   sk-1 "), Some("other")),
            Some("sk-1")
        );
        assert_eq!(presented_key(None, Some("sk-2")), Some("sk-2"));
        assert_eq!(presented_key(Some("Basic abc"), None), None);
        assert_eq!(presented_key(Some("Bearer "), None), None);
        assert_eq!(presented_key(Some("Bearer"), None), None);
        assert_eq!(presented_key(None, None), None);
    }

    #[test]
    fn allowed_keys_match_exactly() {
        assert!(is_allowed("sk-a", "sk-a, sk-b"));
        assert!(is_allowed("sk-b", "sk-a,sk-b"));
        assert!(!is_allowed("sk-", "sk-a,sk-b"));
        assert!(!is_allowed("sk-ab", "sk-a,sk-b"));
        assert!(!is_allowed("", ",,"));
    }

    #[test]
    fn fingerprint_is_stable_and_hides_the_key() {
        let f = fingerprint("sk-secret");
        assert_eq!(f.len(), 36);
        assert_eq!(f, fingerprint("sk-secret"));
        assert_ne!(f, fingerprint("sk-secreT"));
        assert!(!f.contains("secret"));
        // SHA-256("abc") starts ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(fingerprint("abc"), "key_ba7816bf8f01cfea414140de5dae2223");
    }
}
