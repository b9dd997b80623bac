//! The parts of a request's URL the gateway reads: its path, its host and
//! its query's pairs.
//!
//! The runtime hands the gateway a URL it has already parsed and
//! serialized (`scheme://host[:port]/path[?query][#fragment]`,
//! percent-encoded), so splitting that string is exact; a general URL
//! parser (the `url` crate, with its IDNA tables) would add tens of KB of
//! wasm for nothing.

/// The path, `/` when there is none (never the query or fragment).
pub fn path(url: &str) -> &str {
    let rest = after_scheme(url);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

/// The host, without user info or port (`[::1]` keeps its brackets).
pub fn host(url: &str) -> Option<&str> {
    let rest = after_scheme(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.rfind(':') {
        // A port follows the last `:` unless it is inside `[...]`.
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    (!host.is_empty()).then_some(host)
}

/// The query's `name=value` pairs in order, decoded as a form
/// (`application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte,
/// invalid UTF-8 replaced).
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// The first value of `name` in the query.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_pairs(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn after_scheme(url: &str) -> &str {
    url.find("://").map_or(url, |i| &url[i + 3..])
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex_pair(*high, *low),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 2;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_host() {
        let url = "https://user:pw@gw.example.com:8443/v1/chat/completions?x=1#f";
        assert_eq!(path(url), "/v1/chat/completions");
        assert_eq!(host(url), Some("gw.example.com"));
        assert_eq!(path("http://127.0.0.1:8787"), "/");
        assert_eq!(path("http://127.0.0.1:8787?a=b"), "/");
        assert_eq!(host("http://127.0.0.1:8787?a=b"), Some("127.0.0.1"));
        assert_eq!(host("http://[::1]:8787/x"), Some("[::1]"));
        assert_eq!(host("http://[::1]/x"), Some("[::1]"));
        assert_eq!(host("https://example.com/a:b"), Some("example.com"));
        assert_eq!(host("file:///x"), None);
    }

    #[test]
    fn query_pairs_decode_as_a_form() {
        let url = "https://h/admin/usage?key=vk_a%2Bb&&empty=&flag&name=two+words&pct=%e2%9c%93&bad=%zz%4#frag=1";
        assert_eq!(
            query_pairs(url),
            [
                ("key", "vk_a+b"),
                ("empty", ""),
                ("flag", ""),
                ("name", "two words"),
                ("pct", "✓"),
                ("bad", "%zz%4"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(query_param(url, "key").as_deref(), Some("vk_a+b"));
        assert_eq!(query_param(url, "missing"), None);
        assert_eq!(query_pairs("https://h/x"), []);
        assert_eq!(
            query_param("https://h/x?a=%ff", "a").as_deref(),
            Some("\u{fffd}")
        );
    }
}
