//! The pieces of Google Cloud's protocols the Vertex AI adapter needs, each
//! sans-IO (the RSA signature itself is the runtime's WebCrypto, behind
//! [`crate::http::Upstream::sign_rs256`]).
//!
//! - [`oauth`]   — service-account credentials: the RS256 JWT's claims and
//!   encoding, the token exchange's request and answer, and the per-isolate
//!   token cache's policy (time passed in).
//! - [`regions`] — Vertex AI locations: each one's endpoint host, and the
//!   jurisdiction and coordinates a deployment there gets by default.

pub mod oauth;
pub mod regions;

const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (RFC 7515's `BASE64URL`), as JWTs encode
/// their parts.
pub fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for shift in [18, 12, 6, 0].into_iter().take(group.len() + 1) {
            out.push(char::from(BASE64_URL[(n >> shift) as usize & 63]));
        }
    }
    out
}

/// Decodes standard base64 (PEM bodies): whitespace is skipped, padding is
/// optional; `None` for any other character or a dangling sextet.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            break;
        }
        let v = BASE64_STANDARD.iter().position(|&a| a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 6 leftover bits cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors_without_padding() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8", "the URL alphabet");
    }

    #[test]
    fn base64_decodes_pem_bodies_and_refuses_garbage() {
        assert_eq!(base64_decode("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm9vYmE").unwrap(), b"fooba");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("Zm9v*").is_none());
        assert!(base64_decode("Z").is_none(), "a dangling sextet");
    }
}
