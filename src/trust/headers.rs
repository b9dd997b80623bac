//! Headers at the gateway's edges: what a provider request may carry, which
//! client request ids are taken, and CORS for browser clients.
//!
//! Provider requests are built from nothing (the adapters add what their
//! wire format needs), so no client header reaches a provider unless an
//! adapter forwards it on purpose (`anthropic-version` and `anthropic-beta`
//! on Anthropic pass-through). [`allow_listed`] enforces that as a last
//! step before every send: an allow-list of the headers the wire formats
//! use, plus the operator's configured headers, never a hop-by-hop header,
//! a cookie or a host. Provider response headers never reach the client:
//! replies carry only the gateway's own headers.

use crate::config::Provider;
use crate::http::UpstreamRequest;

/// Headers the adapters send: content negotiation, each wire format's
/// credential header, Anthropic's version and beta flags, and what AWS
/// SigV4 signs for Bedrock (a signed header must never be dropped: the
/// signature covers it).
const UPSTREAM_ALLOWED: [&str; 11] = [
    "content-type",
    "accept",
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "anthropic-version",
    "anthropic-beta",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

/// Never sent to a provider, whoever set them: hop-by-hop headers (RFC
/// 9110 §7.6.1), what the runtime computes itself, and cookies.
const NEVER_UPSTREAM: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
    "set-cookie",
    "forwarded",
];

/// Whether an operator may configure this (lower-case) header for a
/// provider.
pub fn configurable_upstream_header(name: &str) -> bool {
    let prefixed = |p: &str| {
        name.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    !NEVER_UPSTREAM.iter().any(|n| n.eq_ignore_ascii_case(name))
        && !prefixed("cf-")
        && !prefixed("x-forwarded-")
}

/// The request with only allowed headers: the adapters' own
/// (`UPSTREAM_ALLOWED`) and the provider's configured ones. Anything
/// else is dropped, however it got there.
pub fn allow_listed(mut req: UpstreamRequest, provider: &Provider) -> UpstreamRequest {
    req.headers.retain(|(name, _)| {
        configurable_upstream_header(name)
            && (UPSTREAM_ALLOWED
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name))
                || provider
                    .headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case(name)))
    });
    req
}

/// A client's `x-request-id`, when it is safe to log and echo: 1 to 128
/// ASCII letters, digits, `-`, `_`, `.` or `:`. Anything else is ignored
/// (the gateway makes its own), never an error.
pub fn client_request_id(value: &str) -> Option<&str> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(value)
}

/// Response headers a browser may read (CORS `Access-Control-Expose-Headers`).
pub const CORS_EXPOSED: &str = "x-request-id, x-gateway-provider, x-gateway-model, x-gateway-attempts, x-gateway-region, x-gateway-cache, x-gateway-hedge, x-should-retry, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, retry-after";

/// Request headers allowed on a preflight when the browser names none.
pub const CORS_DEFAULT_HEADERS: &str = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta, x-gateway-data-class, x-request-id";

/// The headers of a CORS preflight answer for an allowed origin: the
/// requested headers are allowed as asked (the SDKs send their own
/// `x-stainless-*` family), if they are well-formed header names.
pub fn preflight_headers(
    origin: &str,
    requested: Option<&str>,
    max_age_s: u64,
) -> Vec<(&'static str, String)> {
    let requested = requested
        .map(str::trim)
        .filter(|r| {
            !r.is_empty()
                && r.len() <= 2048
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' '))
        })
        .unwrap_or(CORS_DEFAULT_HEADERS);
    vec![
        ("access-control-allow-origin", origin.to_owned()),
        (
            "access-control-allow-methods",
            "GET, POST, OPTIONS".to_owned(),
        ),
        ("access-control-allow-headers", requested.to_owned()),
        ("access-control-max-age", max_age_s.to_string()),
        ("vary", "Origin".to_owned()),
    ]
}

/// The headers an answer to an allowed origin carries.
pub fn cors_headers(origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", origin.to_owned()),
        ("access-control-expose-headers", CORS_EXPOSED.to_owned()),
        ("vary", "Origin".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    fn provider(headers: &[(&str, &str)]) -> Provider {
        let json = serde_json::json!({
            "kind": "openai",
            "headers": headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        let p: Provider = serde_json::from_value(json).unwrap();
        assert_eq!(p.kind, ProviderKind::Openai);
        p
    }

    #[test]
    fn upstream_requests_keep_only_allow_listed_and_configured_headers() {
        let req = UpstreamRequest {
            method: "POST",
            url: "https://x".into(),
            headers: [
                ("content-type", "application/json"),
                ("authorization", "Bearer provider-key"),
                ("Cookie", "session=1"),
                ("connection", "keep-alive"),
                ("x-forwarded-for", "1.2.3.4"),
                ("HTTP-Referer", "https://app"),
                ("user-agent", "client/1"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            body: vec![],
        };
        let out = allow_listed(req, &provider(&[("HTTP-Referer", "https://app")]));
        let names: Vec<&str> = out.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["content-type", "authorization", "HTTP-Referer"]);
    }

    #[test]
    fn hop_by_hop_and_cookies_are_never_configurable() {
        for h in [
            "connection",
            "cookie",
            "host",
            "transfer-encoding",
            "cf-connecting-ip",
            "x-forwarded-for",
        ] {
            assert!(!configurable_upstream_header(h), "{h}");
        }
        assert!(configurable_upstream_header("http-referer"));
    }

    #[test]
    fn client_request_ids_are_taken_only_in_a_safe_format() {
        assert_eq!(
            client_request_id("req-123_abc.def:9"),
            Some("req-123_abc.def:9")
        );
        for bad in [
            "",
            "a b",
            "x\r\nset-cookie: y",
            "é",
            &"a".repeat(129),
            "<script>",
        ] {
            assert_eq!(client_request_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn preflight_allows_the_requested_headers_when_well_formed() {
        let h = preflight_headers("https://app", Some("authorization, x-stainless-os"), 600);
        assert!(h.contains(&(
            "access-control-allow-headers",
            "authorization, x-stainless-os".to_owned()
        )));
        let h = preflight_headers("https://app", Some("bad\nvalue"), 600);
        assert!(h.contains(&(
            "access-control-allow-headers",
            CORS_DEFAULT_HEADERS.to_owned()
        )));
    }

    /// Every adapter's own headers survive the allow-list, streams and
    /// whole answers alike: a header it drops would break a provider (a
    /// SigV4 signature covers the headers it signs).
    #[test]
    fn no_adapter_header_is_dropped() {
        let config = crate::config::Config::from_json(
            r#"{"version":1,"providers":{
              "openai":{"kind":"openai"},"azure":{"kind":"azure","base_url":"https://a.example","api_version":"2024-10-21"},
              "groq":{"kind":"groq"},"compat":{"kind":"openai-compatible","base_url":"http://127.0.0.1:1/v1"},
              "anthropic":{"kind":"anthropic","headers":{"anthropic-beta":"x"}},"gemini":{"kind":"gemini"},
              "bedrock":{"kind":"bedrock","region":"eu-central-1"},"vertex":{"kind":"vertex","project":"p","region":"europe-west4"},
              "workers-ai":{"kind":"workers-ai","account_id":"acc"}},
              "models":{"m":{"targets":[{"provider":"openai","model":"m"}]}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let secret = |_: &str| Some("secret-value".to_owned());
        let signing = crate::providers::Signing {
            now_s: 1_700_000_000,
            secret: &secret,
        };
        for stream in [false, true] {
            let body = format!(
                r#"{{"model":"m","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
            );
            let req = crate::api::ChatRequest::parse(body.as_bytes()).unwrap();
            for (name, provider) in &config.providers {
                let target = crate::providers::Target {
                    name,
                    provider,
                    model: "m",
                };
                let built =
                    crate::providers::build_chat_request(&target, &req, Some("key"), signing)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                let before: Vec<String> = built.headers.iter().map(|(k, _)| k.clone()).collect();
                let after: Vec<String> = allow_listed(built, provider)
                    .headers
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                assert_eq!(after, before, "{name} (stream: {stream})");
            }
        }
    }
}
