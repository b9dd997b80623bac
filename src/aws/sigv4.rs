//! AWS Signature Version 4, for requests the gateway sends to AWS (Bedrock).
//!
//! [`sign`] adds `x-amz-date`, optionally `x-amz-content-sha256` and
//! `x-amz-security-token`, and the `authorization` header to a request, in
//! four steps:
//!
//! 1. the **canonical request**: method, canonical URI, canonical query,
//!    canonical headers, signed header names, hex SHA-256 of the body;
//! 2. the **string to sign**: `AWS4-HMAC-SHA256`, the time, the credential
//!    scope (`date/region/service/aws4_request`), hex SHA-256 of step 1;
//! 3. the **signing key**: HMAC-SHA256 chained over `AWS4` + secret, date,
//!    region, service and `aws4_request`;
//! 4. the **signature**: hex HMAC-SHA256 of step 2 under the key of step 3,
//!    sent as `authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
//!
//! The time is passed in (Unix seconds): the core never reads a clock.
//!
//! Choices, and why:
//!
//! - Every header of the request is signed (as botocore does), plus `host`
//!   from the URL when the request carries none: the runtime's `fetch` sets
//!   `Host` itself, and it is the one header AWS always requires signed.
//! - The canonical URI encodes each path segment of the URL **again**: AWS
//!   services other than S3 verify against the doubly encoded path, so a
//!   Bedrock model id `...-v1:0`, sent as `...-v1%3A0`, is signed as
//!   `...-v1%253A0`. Paths are not normalised (`.`/`..`/`//`): the gateway
//!   builds its own paths and sends them as signed.
//! - Query parameters are decoded then re-encoded strictly, so a query
//!   written raw or already percent-encoded signs the same way.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::http::UpstreamRequest;

/// The signing algorithm's name, first in the string to sign.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// An access key, with the session token temporary credentials carry.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// `AKIA...` (long-term) or `ASIA...` (temporary).
    pub access_key_id: &'a str,
    /// The secret key; never sent, only signed with.
    pub secret_access_key: &'a str,
    /// STS session token, sent as `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    /// The key id only: secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where a signature is valid: region and service (`bedrock` for Bedrock
/// Runtime, whose host is `bedrock-runtime`).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `eu-central-1`, ...
    pub region: &'a str,
    /// The signing name of the service.
    pub service: &'a str,
}

/// The intermediate results of a signature, for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Step 1.
    pub canonical_request: String,
    /// Step 2.
    pub string_to_sign: String,
    /// The `authorization` header's value.
    pub authorization: String,
}

/// Signs `req` in place at `now_s` (Unix seconds). With `content_sha256`
/// the body's hash is also sent (and signed) as `x-amz-content-sha256`.
/// A header the signature adds replaces one of the same name.
pub fn sign(
    req: &mut UpstreamRequest,
    creds: &Credentials<'_>,
    scope: Scope<'_>,
    now_s: u64,
    content_sha256: bool,
) -> Signed {
    let amz_date = amz_date(now_s);
    let payload_hash = hex(&Sha256::digest(&req.body));
    let mut set = |name: &str, value: &str| {
        req.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        req.headers.push((name.to_owned(), value.to_owned()));
    };
    set("x-amz-date", &amz_date);
    if content_sha256 {
        set("x-amz-content-sha256", &payload_hash);
    }
    if let Some(token) = creds.session_token {
        set("x-amz-security-token", token);
    }
    req.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));

    let url = Url::parse(&req.url);
    let (canonical_headers, signed_headers) = canonical_headers(&req.headers, &url.host);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(url.path),
        canonical_query(url.query),
        canonical_headers,
        signed_headers,
        payload_hash
    );
    let date = &amz_date[..8];
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{credential_scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(creds.secret_access_key, date, scope);
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id
    );
    req.headers
        .push(("authorization".to_owned(), authorization.clone()));
    Signed {
        canonical_request,
        string_to_sign,
        authorization,
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` (ISO 8601 basic, UTC) for Unix seconds.
pub fn amz_date(now_s: u64) -> String {
    let days = now_s / 86_400;
    let secs = now_s % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The key for one day, region and service.
fn signing_key(secret: &str, date: &str, scope: Scope<'_>) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The parts of a URL a signature reads.
struct Url<'a> {
    /// `host[:port]`, the default port dropped (as `Host` is sent).
    host: String,
    path: &'a str,
    query: &'a str,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Url<'a> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let rest = rest.split('#').next().unwrap_or_default();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let default_port = if scheme.eq_ignore_ascii_case("http") {
            ":80"
        } else {
            ":443"
        };
        let host = authority
            .strip_suffix(default_port)
            .unwrap_or(authority)
            .to_ascii_lowercase();
        Url { host, path, query }
    }
}

/// Each path segment encoded (again); `/` when empty.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len() + 16);
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        uri_encode(&mut out, segment.as_bytes());
    }
    out
}

/// Parameters decoded, re-encoded strictly and sorted by name, then value.
fn canonical_query(query: &str) -> String {
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut key = String::new();
            let mut value = String::new();
            uri_encode(&mut key, &percent_decode(k));
            uri_encode(&mut value, &percent_decode(v));
            (key, value)
        })
        .collect();
    params.sort();
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The canonical headers block (each `name:value\n`) and the signed names:
/// names lower-cased and sorted, values trimmed with inner runs of spaces
/// collapsed, repeated names joined by commas in the order sent.
fn canonical_headers(headers: &[(String, String)], url_host: &str) -> (String, String) {
    let mut list: Vec<(String, String)> = Vec::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match list.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => list.push((name, value)),
        }
    }
    if !list.iter().any(|(k, _)| k == "host") {
        list.push(("host".to_owned(), url_host.to_owned()));
    }
    // A stable sort: equal names were merged above, so order is by name only.
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut block = String::new();
    let mut names = String::new();
    for (i, (k, v)) in list.iter().enumerate() {
        block.push_str(k);
        block.push(':');
        block.push_str(v);
        block.push('\n');
        if i > 0 {
            names.push(';');
        }
        names.push_str(k);
    }
    (block, names)
}

/// Percent-encodes every byte but the unreserved `A-Z a-z 0-9 - _ . ~`, in
/// upper-case hex (RFC 3986, as SigV4 requires).
pub(crate) fn uri_encode(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// `%XX` escapes decoded (a malformed one is kept as written).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published Signature Version 4 test suite (AWS General Reference,
    /// "Signature Version 4 test suite", `aws-sig-v4-test-suite`): these
    /// credentials, region `us-east-1`, service `service`, at 2015-08-30
    /// 12:36:00 UTC.
    const SUITE_CREDS: Credentials<'static> = Credentials {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };
    const SUITE_SCOPE: Scope<'static> = Scope {
        region: "us-east-1",
        service: "service",
    };
    const SUITE_NOW_S: u64 = 1_440_938_160;
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    /// One suite case: name, method, path and query, extra headers (beside
    /// `Host` and `X-Amz-Date`), body, expected signature.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );

    const SUITE: &[Case] = &[
        (
            "get-vanilla",
            "GET",
            "/",
            &[],
            "",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "get-vanilla-empty-query-key",
            "GET",
            "/?Param1=value1",
            &[],
            "",
            "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb",
        ),
        (
            "get-vanilla-query-order-key",
            "GET",
            "/?Param1=value2&Param1=Value1",
            &[],
            "",
            "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "/?Param2=value2&Param1=value1",
            &[],
            "",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "get-vanilla-query-order-value",
            "GET",
            "/?Param1=value2&Param1=value1",
            &[],
            "",
            "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
        ),
        (
            "get-vanilla-query-unreserved",
            "GET",
            "/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            &[],
            "",
            "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
        ),
        (
            "get-vanilla-utf8-query",
            "GET",
            "/?ሴ=bar",
            &[],
            "",
            "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        ),
        (
            "get-unreserved",
            "GET",
            "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            &[],
            "",
            "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        ),
        (
            "get-space",
            "GET",
            "/example space/",
            &[],
            "",
            "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
        ),
        (
            "get-header-key-duplicate",
            "GET",
            "/",
            &[
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            "",
            "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        ),
        (
            "get-header-value-order",
            "GET",
            "/",
            &[
                ("My-Header1", "value4"),
                ("My-Header1", "value1"),
                ("My-Header1", "value3"),
                ("My-Header1", "value2"),
            ],
            "",
            "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
        ),
        (
            "get-header-value-trim",
            "GET",
            "/",
            &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            "",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        ),
        (
            "post-vanilla",
            "POST",
            "/",
            &[],
            "",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "post-vanilla-query",
            "POST",
            "/?Param1=value1",
            &[],
            "",
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        ),
        (
            "post-header-key-sort",
            "POST",
            "/",
            &[("My-Header1", "value1")],
            "",
            "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
        ),
        (
            "post-header-value-case",
            "POST",
            "/",
            &[("My-Header1", "VALUE1")],
            "",
            "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
        ),
        (
            "post-x-www-form-urlencoded",
            "POST",
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "Param1=value1",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
        (
            "post-x-www-form-urlencoded-parameters",
            "POST",
            "/",
            // As in the suite's original request file (`charset=utf8`): its
            // published string to sign (hash 2e1cf7ed...) is of this value.
            &[(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf8",
            )],
            "Param1=value1",
            "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe",
        ),
    ];

    fn suite_request(
        method: &'static str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> UpstreamRequest {
        let mut headers = vec![("Host".to_owned(), "example.amazonaws.com".to_owned())];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        headers.push(("X-Amz-Date".to_owned(), "20150830T123600Z".to_owned()));
        UpstreamRequest {
            method,
            url: format!("https://example.amazonaws.com{path}"),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn signature_of(authorization: &str) -> &str {
        authorization.rsplit("Signature=").next().unwrap()
    }

    #[test]
    fn aws_test_suite_signatures_match() {
        for &(name, method, path, extra, body, want) in SUITE {
            let mut req = suite_request(method, path, extra, body);
            let signed = sign(&mut req, &SUITE_CREDS, SUITE_SCOPE, SUITE_NOW_S, false);
            assert_eq!(signature_of(&signed.authorization), want, "{name}");
            let header = req.headers.iter().find(|(k, _)| k == "authorization");
            assert_eq!(header.map(|(_, v)| v), Some(&signed.authorization));
        }
    }

    #[test]
    fn aws_test_suite_intermediate_steps_match() {
        let mut req = suite_request("GET", "/", &[], "");
        let signed = sign(&mut req, &SUITE_CREDS, SUITE_SCOPE, SUITE_NOW_S, false);
        assert_eq!(
            signed.canonical_request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            signed.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );

        let mut req = suite_request("GET", "/?Param2=value2&Param1=value1", &[], "");
        let signed = sign(&mut req, &SUITE_CREDS, SUITE_SCOPE, SUITE_NOW_S, false);
        assert!(
            signed
                .canonical_request
                .starts_with("GET\n/\nParam1=value1&Param2=value2\n")
        );
        assert!(
            signed
                .string_to_sign
                .ends_with("\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0")
        );

        let mut req = suite_request("GET", "/", &[("My-Header2", " \"a   b   c\"")], "");
        let signed = sign(&mut req, &SUITE_CREDS, SUITE_SCOPE, SUITE_NOW_S, false);
        assert!(
            signed
                .canonical_request
                .contains("\nmy-header2:\"a b c\"\n"),
            "{}",
            signed.canonical_request
        );
    }

    #[test]
    fn aws_test_suite_session_token_is_sent_and_signed() {
        // post-sts-header-before: the token is one of the signed headers.
        let creds = Credentials {
            session_token: Some(SUITE_TOKEN),
            ..SUITE_CREDS
        };
        let mut req = suite_request("POST", "/", &[], "");
        let signed = sign(&mut req, &creds, SUITE_SCOPE, SUITE_NOW_S, false);
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
        );
        assert!(
            req.headers
                .contains(&("x-amz-security-token".into(), SUITE_TOKEN.into()))
        );
    }

    #[test]
    fn amz_dates_are_utc_calendar_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(SUITE_NOW_S), "20150830T123600Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z"); // leap day
        assert_eq!(amz_date(1_767_225_599), "20251231T235959Z");
        assert_eq!(amz_date(4_107_542_400), "21000301T000000Z"); // 2100 is not leap
    }

    /// A Bedrock Converse request signed by hand: each step below was worked
    /// out from the definitions (doubly encoded model id in the canonical
    /// URI, host from the URL, every header signed, the body's hash sent),
    /// and the hashes and signature computed from them with an independent
    /// implementation (Python's `hashlib` and `hmac`).
    #[test]
    fn a_bedrock_request_signs_as_worked_out_by_hand() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#;
        let mut req = UpstreamRequest {
            method: "POST",
            url: "https://bedrock-runtime.eu-central-1.amazonaws.com/model/eu.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse".into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("accept".into(), "application/json".into()),
            ],
            body: body.to_vec(),
        };
        let creds = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            session_token: Some("FwoGZXIvYXdzEXAMPLETOKEN"),
        };
        let scope = Scope {
            region: "eu-central-1",
            service: "bedrock",
        };
        // 2026-11-21 09:30:15 UTC.
        let signed = sign(&mut req, &creds, scope, 1_795_253_415, true);
        let body_hash = "7421da8d1a0949a481724fee62d5886aacde03836bf58248adb73e8b61ac0d54";
        assert_eq!(hex(&Sha256::digest(body)), body_hash);
        assert_eq!(
            signed.canonical_request,
            format!(
                "POST\n\
                 /model/eu.anthropic.claude-3-7-sonnet-20250219-v1%253A0/converse\n\
                 \n\
                 accept:application/json\n\
                 content-type:application/json\n\
                 host:bedrock-runtime.eu-central-1.amazonaws.com\n\
                 x-amz-content-sha256:{body_hash}\n\
                 x-amz-date:20261121T093015Z\n\
                 x-amz-security-token:FwoGZXIvYXdzEXAMPLETOKEN\n\
                 \n\
                 accept;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token\n\
                 {body_hash}"
            )
        );
        assert_eq!(
            signed.string_to_sign,
            "AWS4-HMAC-SHA256\n20261121T093015Z\n20261121/eu-central-1/bedrock/aws4_request\nad9b1d4a633cc44072e4e0efff49e0555590c2e5ee2c397819adb57a5defb9dc"
        );
        // The key chain, step by step.
        let k_date = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", b"20261121");
        let k_region = hmac(&k_date, b"eu-central-1");
        let k_service = hmac(&k_region, b"bedrock");
        let k_signing = hmac(&k_service, b"aws4_request");
        assert_eq!(
            k_signing,
            signing_key(creds.secret_access_key, "20261121", scope)
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261121/eu-central-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=5fbc5632e75d319a5065d2580b57661fe0ec6b6ef1a471831b84bce4aaf53065"
        );
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "accept",
                "x-amz-date",
                "x-amz-content-sha256",
                "x-amz-security-token",
                "authorization"
            ]
        );
    }

    #[test]
    fn arn_model_ids_and_ports_canonicalise() {
        let url = Url::parse(
            "http://127.0.0.1:8787/_mock/x/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.m/converse-stream",
        );
        assert_eq!(url.host, "127.0.0.1:8787");
        assert_eq!(
            canonical_uri(url.path),
            "/_mock/x/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123%253Ainference-profile%252Fus.m/converse-stream"
        );
        assert_eq!(Url::parse("https://Example.com:443/a").host, "example.com");
        assert_eq!(Url::parse("http://h:80").host, "h");
        assert_eq!(canonical_uri(Url::parse("https://h").path), "/");
        assert_eq!(canonical_query("b=%2f&a&c=x%20y"), "a=&b=%2F&c=x%20y");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }
}
