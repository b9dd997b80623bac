//! Gateway keys: reading them from a request, checking them, naming them.
//!
//! Clients send `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key`
//! (Anthropic SDKs). Two kinds of key exist:
//!
//! - **Virtual keys**, made by the admin API: `sk-gw-<id>_<secret>`. The id
//!   names the key's Durable Object, which stores the SHA-256 of the whole
//!   key and decides every admission, so revoking is immediate everywhere
//!   and rotating (new secret, same id) keeps the key's budget and usage.
//! - **Static keys** from the `GATEWAY_KEYS` secret (bootstrap and local
//!   development): checked in constant time, no limits, their object named
//!   by the key's [`fingerprint`].
//!
//! A key is never logged or stored in clear.

use sha2::{Digest, Sha256};

use crate::limits::Auth;

/// The prefix of virtual keys.
pub const VIRTUAL_PREFIX: &str = "sk-gw-";

/// Who a presented key claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// One of `GATEWAY_KEYS`.
    Static {
        /// Its Durable Object's name.
        object: String,
    },
    /// A virtual key, still to be verified by its object.
    Virtual {
        /// The public id.
        id: String,
        /// SHA-256 of the whole key, hex.
        secret_hash: String,
    },
}

impl KeyRef {
    /// How the key's object is to check it.
    pub fn auth(&self) -> Auth {
        match self {
            KeyRef::Static { .. } => Auth::Static,
            KeyRef::Virtual { secret_hash, .. } => Auth::Virtual {
                secret_hash: secret_hash.clone(),
            },
        }
    }

    /// The key's id in usage records and logs (`static` for static keys).
    pub fn id(&self) -> &str {
        match self {
            KeyRef::Static { .. } => "static",
            KeyRef::Virtual { id, .. } => id,
        }
    }

    /// The name of the key's Durable Object.
    pub fn object_name(&self) -> String {
        match self {
            KeyRef::Static { object } => object.clone(),
            KeyRef::Virtual { id, .. } => virtual_object_name(id),
        }
    }
}

/// The Durable Object name of a virtual key's id.
pub fn virtual_object_name(id: &str) -> String {
    format!("vk:{id}")
}

/// The object that lists every virtual key for the admin API.
pub const REGISTRY_OBJECT: &str = "registry";

/// The static keys (`GATEWAY_KEYS`, comma-separated), parsed once, each
/// with its object's name: the secret is fixed for an isolate's life, so
/// a request pays neither the parsing nor a SHA-256.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    keys: Vec<(String, String)>,
}

impl StaticKeys {
    /// The keys of a comma-separated list (blanks around them ignored).
    pub fn parse(list: &str) -> StaticKeys {
        let keys = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_owned(), format!("sk:{}", fingerprint(k))))
            .collect();
        StaticKeys { keys }
    }

    /// Classifies a presented key: a static key if it is one of these
    /// (compared in constant time with every one of them), else a virtual
    /// key if it has the virtual form; `None` otherwise.
    pub fn resolve(&self, key: &str) -> Option<KeyRef> {
        let mut found = None;
        for (candidate, object) in &self.keys {
            if constant_time_eq(key.as_bytes(), candidate.as_bytes()) {
                found = Some(object);
            }
        }
        if let Some(object) = found {
            return Some(KeyRef::Static {
                object: object.clone(),
            });
        }
        let id = parse_virtual_id(key)?;
        Some(KeyRef::Virtual {
            id: id.to_owned(),
            secret_hash: hash_key(key),
        })
    }
}

/// The id of a well-formed virtual key.
pub fn parse_virtual_id(key: &str) -> Option<&str> {
    let (id, secret) = key.strip_prefix(VIRTUAL_PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 48)).then_some(id)
}

/// A new virtual key from 32 random bytes: its id and the key itself.
pub fn new_virtual_key(random: &[u8; 32]) -> (String, String) {
    let id = hex(&random[..8]);
    let key = format!("{VIRTUAL_PREFIX}{id}_{}", hex(&random[8..]));
    (id, key)
}

/// A secret from 24 random bytes for an existing id (rotation).
pub fn rotated_key(id: &str, random: &[u8; 24]) -> String {
    format!("{VIRTUAL_PREFIX}{id}_{}", hex(random))
}

/// SHA-256 of a key, hex: what a virtual key's object stores.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// A recognisable, non-secret rendering: `sk-gw-<id>_…<last 4>`.
pub fn hint(key: &str) -> String {
    match (
        parse_virtual_id(key),
        key.get(key.len().saturating_sub(4)..),
    ) {
        (Some(id), Some(tail)) => format!("{VIRTUAL_PREFIX}{id}_…{tail}"),
        _ => "…".to_owned(),
    }
}

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
        let is_static = |key: &str, list: &str| {
            matches!(
                StaticKeys::parse(list).resolve(key),
                Some(KeyRef::Static { .. })
            )
        };
        assert!(is_static("sk-a", "sk-a, sk-b"));
        assert!(is_static("sk-b", "sk-a,sk-b"));
        assert!(!is_static("sk-", "sk-a,sk-b"));
        assert!(!is_static("sk-ab", "sk-a,sk-b"));
        assert!(!is_static("", ",,"));
        // Each key's object is its own, named once at parsing.
        let keys = StaticKeys::parse("sk-a, sk-b");
        let object = |key| keys.resolve(key).unwrap().object_name();
        assert_eq!(object("sk-a"), format!("sk:{}", fingerprint("sk-a")));
        assert_eq!(object("sk-b"), format!("sk:{}", fingerprint("sk-b")));
    }

    #[test]
    fn virtual_keys_carry_their_id_and_verify_by_hash() {
        let (id, key) = new_virtual_key(&[7u8; 32]);
        assert_eq!(id, "0707070707070707");
        assert_eq!(key.len(), VIRTUAL_PREFIX.len() + 16 + 1 + 48);
        assert_eq!(parse_virtual_id(&key), Some(id.as_str()));
        match StaticKeys::parse("sk-static").resolve(&key) {
            Some(KeyRef::Virtual {
                id: got,
                secret_hash,
            }) => {
                assert_eq!(got, id);
                assert_eq!(secret_hash, hash_key(&key));
                assert_eq!(secret_hash.len(), 64);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hint(&key), format!("sk-gw-{id}_…0707"));
        let rotated = rotated_key(&id, &[9u8; 24]);
        assert_eq!(parse_virtual_id(&rotated), Some(id.as_str()));
        assert_ne!(hash_key(&rotated), hash_key(&key));
    }

    #[test]
    fn malformed_and_static_keys_resolve_as_such() {
        assert!(matches!(
            StaticKeys::parse("sk-static").resolve("sk-static"),
            Some(KeyRef::Static { .. })
        ));
        assert_eq!(StaticKeys::parse("sk-static").resolve("sk-other"), None);
        for bad in [
            "sk-gw-",
            "sk-gw-abc_def",
            "sk-gw-zzzzzzzzzzzzzzzz_000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(parse_virtual_id(bad), None, "{bad}");
        }
        let static_ref = StaticKeys::parse("sk-static").resolve("sk-static").unwrap();
        assert!(static_ref.object_name().starts_with("sk:key_"));
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
