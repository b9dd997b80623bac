//! Between the key's Durable Object and the client: a denial becomes the
//! right OpenAI error, and rate state becomes OpenAI's `x-ratelimit-*`
//! headers (on denials and on successful answers alike).

use crate::error::GatewayError;
use crate::limits::{Denial, DenialReason, RateInfo};

/// The client's error for a denial.
pub fn denial_to_error(d: &Denial, model: &str) -> GatewayError {
    let retry_after = d.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
    match d.reason {
        DenialReason::UnknownKey | DenialReason::Revoked | DenialReason::Expired => {
            GatewayError::Unauthorized {
                message: d.message.clone(),
            }
        }
        // Not a 403: like OpenAI, a model the key may not use does not exist
        // for that key, and it is never silently rerouted.
        DenialReason::ModelNotAllowed => GatewayError::ModelNotFound {
            model: model.to_owned(),
        },
        DenialReason::RequestLimit | DenialReason::TokenLimit | DenialReason::ConcurrencyLimit => {
            GatewayError::RateLimited {
                message: d.message.clone(),
                retry_after,
            }
        }
        DenialReason::BudgetExceeded => GatewayError::BudgetExceeded {
            message: d.message.clone(),
            retry_after,
        },
    }
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits
/// the key has.
pub fn rate_headers(r: &RateInfo) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    let mut put = |name, value: Option<String>| {
        if let Some(v) = value {
            h.push((name, v));
        }
    };
    put(
        "x-ratelimit-limit-requests",
        r.limit_requests.map(|v| v.to_string()),
    );
    put(
        "x-ratelimit-remaining-requests",
        r.remaining_requests.map(|v| v.to_string()),
    );
    put(
        "x-ratelimit-reset-requests",
        r.reset_requests_ms.map(format_duration),
    );
    put(
        "x-ratelimit-limit-tokens",
        r.limit_tokens.map(|v| v.to_string()),
    );
    put(
        "x-ratelimit-remaining-tokens",
        r.remaining_tokens.map(|v| v.to_string()),
    );
    put(
        "x-ratelimit-reset-tokens",
        r.reset_tokens_ms.map(format_duration),
    );
    h
}

/// A duration the way OpenAI writes it in these headers: `20ms`, `1.5s`,
/// `6m0s`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let secs = ms.div_ceil(1000);
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(reason: DenialReason, retry_after_ms: Option<u64>) -> Denial {
        Denial {
            reason,
            message: "m".into(),
            retry_after_ms,
            rate: RateInfo::default(),
        }
    }

    #[test]
    fn denials_map_to_openai_errors() {
        let e = denial_to_error(&denial(DenialReason::BudgetExceeded, Some(1_500)), "x");
        assert_eq!((e.status(), e.retry_after()), (429, Some(2)));
        assert!(
            String::from_utf8(e.to_body())
                .unwrap()
                .contains("\"code\":\"insufficient_quota\"")
        );
        let e = denial_to_error(&denial(DenialReason::RequestLimit, Some(10)), "x");
        assert_eq!((e.status(), e.retry_after()), (429, Some(1)));
        assert!(
            String::from_utf8(e.to_body())
                .unwrap()
                .contains("\"code\":\"rate_limit_exceeded\"")
        );
        assert_eq!(
            denial_to_error(&denial(DenialReason::Revoked, None), "x").status(),
            401
        );
        let e = denial_to_error(&denial(DenialReason::ModelNotAllowed, None), "gpt-4o");
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains("gpt-4o"));
    }

    #[test]
    fn rate_headers_cover_the_limits_the_key_has() {
        let h = rate_headers(&RateInfo {
            limit_requests: Some(60),
            remaining_requests: Some(59),
            reset_requests_ms: Some(1_500),
            ..RateInfo::default()
        });
        assert_eq!(
            h,
            [
                ("x-ratelimit-limit-requests", "60".to_owned()),
                ("x-ratelimit-remaining-requests", "59".to_owned()),
                ("x-ratelimit-reset-requests", "1.5s".to_owned()),
            ]
        );
        assert!(rate_headers(&RateInfo::default()).is_empty());
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(format_duration(20), "20ms");
        assert_eq!(format_duration(1_000), "1s");
        assert_eq!(format_duration(59_999), "59.999s");
        assert_eq!(format_duration(360_000), "6m0s");
    }
}
