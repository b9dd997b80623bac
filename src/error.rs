//! The gateway's one error type.
//!
//! Every failure the gateway reports is a [`GatewayError`]. Three questions
//! are answered in exactly one exhaustive `match` each: which HTTP status the
//! client sees ([`GatewayError::status`]), whether another target is worth a
//! try ([`GatewayError::is_retryable`]), and which side failed
//! ([`GatewayError::side`]). The client always receives OpenAI's error shape,
//! `{"error":{"message","type","code","param"}}`, so the official SDKs raise
//! their usual exception classes.

use std::fmt;

use serde::Serialize;

/// Which party a failure is attributed to; used in logs and attempt lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The caller sent something wrong.
    Client,
    /// A model provider failed or refused.
    Upstream,
    /// The gateway itself failed.
    Gateway,
}

/// One try at one target, kept so that an all-targets-failed error can tell
/// the client why each one failed. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// Provider name from the config (e.g. `openai-eu`).
    pub provider: String,
    /// The provider-side model name.
    pub model: String,
    /// HTTP status received, or `None` when no response arrived.
    pub status: Option<u16>,
    /// A short reason (the provider's error message, a timeout, a connect error).
    pub reason: String,
    /// Seconds from the provider's `Retry-After`, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// Every error the gateway can return.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// No route at this path.
    NotFound {
        /// The requested path.
        path: String,
    },
    /// No virtual key has this id (the admin API).
    KeyNotFound {
        /// The id asked for.
        id: String,
    },
    /// The path exists but not for this method.
    MethodNotAllowed {
        /// The method the client used.
        method: String,
        /// The methods this path accepts, for the `Allow` header.
        allowed: &'static str,
    },
    /// The body is not valid JSON, or not the JSON shape the endpoint takes.
    InvalidJson {
        /// The parser's message, with line and column.
        message: String,
    },
    /// A well-formed request with an invalid parameter.
    InvalidRequest {
        /// What is wrong, in a sentence.
        message: String,
        /// The offending parameter, when one is to blame.
        param: Option<String>,
    },
    /// The body exceeds the configured limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Missing, unknown, revoked or expired gateway key.
    Unauthorized {
        /// Why the key was refused (never echoes the key).
        message: String,
    },
    /// The request's data class may not go to any target of its model
    /// (the config's `data_classes` policy), or its key's class has no
    /// policy. Nothing was sent.
    DataClassDenied {
        /// Which class and what it needs.
        message: String,
    },
    /// Personal data was found where the PII policy says `block`. Nothing
    /// was sent.
    PiiDetected {
        /// The kinds found (`email`, `card_number`, ...), never the values.
        kinds: Vec<String>,
        /// The field they were found in (`messages`, `input`, ...).
        param: String,
    },
    /// The key's rate or concurrency limit is reached.
    RateLimited {
        /// Which limit, in a sentence.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after: Option<u64>,
    },
    /// The key's budget would be exceeded.
    BudgetExceeded {
        /// Which budget, in a sentence.
        message: String,
        /// Seconds until the budget window resets (none for a lifetime budget).
        retry_after: Option<u64>,
    },
    /// The model is not configured, or no provider for it is enabled.
    ModelNotFound {
        /// The model name the client asked for.
        model: String,
    },
    /// A provider answered with an error status. Its body is mapped to a
    /// message; its key is never echoed.
    Upstream {
        /// Provider name from the config.
        provider: String,
        /// The provider's HTTP status.
        status: u16,
        /// The provider's error message.
        message: String,
        /// Seconds from the provider's `Retry-After`, if any.
        retry_after: Option<u64>,
    },
    /// The provider could not be reached, or the connection broke.
    UpstreamUnreachable {
        /// Provider name from the config.
        provider: String,
        /// The transport's message.
        message: String,
    },
    /// The provider answered 2xx with a body the gateway cannot parse.
    UpstreamInvalidResponse {
        /// Provider name from the config.
        provider: String,
        /// What was wrong with it.
        message: String,
    },
    /// A provider took longer than the failover policy allows.
    Timeout {
        /// Provider name from the config.
        provider: String,
        /// What did not arrive in time (`response headers`, `first token`, ...).
        phase: &'static str,
        /// The limit that passed.
        ms: u64,
    },
    /// No target may serve the request now: all skipped by their circuit
    /// breaker or cooling after a rate limit, or none in the allowed
    /// jurisdictions.
    Unavailable {
        /// Why, target by target.
        message: String,
        /// Seconds until a target is expected back. Sent as `Retry-After`
        /// only for a rate limit: through an outage an SDK's own short
        /// backoff fails fast, where an open breaker's remaining cooldown
        /// (up to `cooldown_ms`, 30 s by default) would hold every retry.
        retry_after: Option<u64>,
        /// Every target skipped is cooling after its provider's 429: the
        /// client is rate limited (429), as it was when they answered it.
        rate_limited: bool,
    },
    /// Every candidate target failed in a retryable way.
    AllTargetsFailed {
        /// Each attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// The gateway's own misconfiguration or bug.
    Internal {
        /// What failed.
        message: String,
    },
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound { .. } | Self::KeyNotFound { .. } | Self::ModelNotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::InvalidJson { .. } | Self::InvalidRequest { .. } | Self::PiiDetected { .. } => {
                400
            }
            Self::DataClassDenied { .. } => 403,
            Self::BodyTooLarge { .. } => 413,
            Self::Unauthorized { .. } => 401,
            Self::RateLimited { .. } | Self::BudgetExceeded { .. } => 429,
            // A provider's 4xx is the caller's problem and is passed on as
            // is; its 5xx becomes 502 (the gateway got a bad answer) except
            // for statuses that carry meaning the SDKs act on.
            Self::Upstream { status, .. } => match *status {
                // The provider refused the gateway's own credentials: an
                // operator problem, not the caller's key, so not a 401/403
                // that would make an SDK blame the caller.
                401 | 403 => 502,
                400..=499 => *status,
                503 | 504 => *status,
                _ => 502,
            },
            Self::UpstreamUnreachable { .. } | Self::UpstreamInvalidResponse { .. } => 502,
            Self::Timeout { .. } => 504,
            Self::Unavailable { rate_limited, .. } => {
                if *rate_limited {
                    429
                } else {
                    503
                }
            }
            Self::AllTargetsFailed { attempts } => {
                // When every attempt was rate limited, say so: SDKs back off on 429.
                let all_429 =
                    !attempts.is_empty() && attempts.iter().all(|a| a.status == Some(429));
                if all_429 { 429 } else { 503 }
            }
            Self::Internal { .. } => 500,
        }
    }

    /// Whether trying another target (or the same one later) could succeed.
    /// This is the one rule failover consults.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NotFound { .. }
            | Self::KeyNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidJson { .. }
            | Self::InvalidRequest { .. }
            | Self::DataClassDenied { .. }
            | Self::PiiDetected { .. }
            | Self::BodyTooLarge { .. }
            | Self::Unauthorized { .. }
            | Self::RateLimited { .. }
            | Self::BudgetExceeded { .. }
            | Self::ModelNotFound { .. }
            | Self::AllTargetsFailed { .. }
            | Self::Unavailable { .. }
            | Self::Internal { .. } => false,
            Self::Upstream { status, .. } => is_retryable_status(*status),
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamInvalidResponse { .. }
            | Self::Timeout { .. } => true,
        }
    }

    /// Which side the failure is attributed to.
    pub fn side(&self) -> Side {
        match self {
            Self::NotFound { .. }
            | Self::KeyNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidJson { .. }
            | Self::InvalidRequest { .. }
            | Self::DataClassDenied { .. }
            | Self::PiiDetected { .. }
            | Self::BodyTooLarge { .. }
            | Self::Unauthorized { .. }
            | Self::RateLimited { .. }
            | Self::BudgetExceeded { .. }
            | Self::ModelNotFound { .. } => Side::Client,
            Self::Upstream { .. }
            | Self::UpstreamUnreachable { .. }
            | Self::UpstreamInvalidResponse { .. }
            | Self::Timeout { .. }
            | Self::Unavailable { .. }
            | Self::AllTargetsFailed { .. } => Side::Upstream,
            Self::Internal { .. } => Side::Gateway,
        }
    }

    /// OpenAI's `error.type` for this error.
    fn error_type(&self) -> &'static str {
        match self {
            Self::NotFound { .. }
            | Self::KeyNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidJson { .. }
            | Self::InvalidRequest { .. }
            | Self::PiiDetected { .. }
            | Self::BodyTooLarge { .. }
            | Self::ModelNotFound { .. } => "invalid_request_error",
            Self::DataClassDenied { .. } => "permission_error",
            // OpenAI's own type for a wrong key (its code says which).
            Self::Unauthorized { .. } => "invalid_request_error",
            Self::RateLimited { .. } => "rate_limit_error",
            Self::BudgetExceeded { .. } => "insufficient_quota",
            Self::Upstream { status, .. } => match status {
                429 => "rate_limit_error",
                // The gateway's own provider key refused: a 502, not the caller's request.
                401 | 403 => "server_error",
                400..=499 => "invalid_request_error",
                _ => "server_error",
            },
            Self::AllTargetsFailed { .. } | Self::Unavailable { .. } => {
                if self.status() == 429 {
                    "rate_limit_error"
                } else {
                    "server_error"
                }
            }
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamInvalidResponse { .. }
            | Self::Timeout { .. }
            | Self::Internal { .. } => "server_error",
        }
    }

    /// OpenAI's `error.code` for this error.
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "unknown_url",
            Self::KeyNotFound { .. } => "key_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidRequest { .. } => "invalid_value",
            Self::DataClassDenied { .. } => "data_class_denied",
            Self::PiiDetected { .. } => "pii_detected",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::Unauthorized { .. } => "invalid_api_key",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::BudgetExceeded { .. } => "insufficient_quota",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::Upstream { status, .. } => match status {
                429 => "rate_limit_exceeded",
                401 | 403 => "upstream_auth_failed",
                400..=499 => "upstream_rejected",
                _ => "upstream_error",
            },
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamInvalidResponse { .. } => "upstream_invalid_response",
            Self::Timeout { .. } => "upstream_timeout",
            Self::Unavailable { rate_limited, .. } => {
                if *rate_limited {
                    "rate_limit_exceeded"
                } else {
                    "no_target_available"
                }
            }
            Self::AllTargetsFailed { .. } => "all_targets_failed",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// The offending parameter, when one is to blame.
    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::PiiDetected { param, .. } => Some(param),
            Self::ModelNotFound { .. } => Some("model"),
            Self::NotFound { .. }
            | Self::KeyNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidJson { .. }
            | Self::DataClassDenied { .. }
            | Self::BodyTooLarge { .. }
            | Self::Unauthorized { .. }
            | Self::RateLimited { .. }
            | Self::BudgetExceeded { .. }
            | Self::Upstream { .. }
            | Self::UpstreamUnreachable { .. }
            | Self::UpstreamInvalidResponse { .. }
            | Self::Timeout { .. }
            | Self::Unavailable { .. }
            | Self::AllTargetsFailed { .. }
            | Self::Internal { .. } => None,
        }
    }

    /// Seconds the client should wait before retrying, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Upstream { retry_after, .. }
            | Self::Unavailable {
                retry_after,
                rate_limited: true,
                ..
            }
            | Self::RateLimited { retry_after, .. }
            | Self::BudgetExceeded { retry_after, .. } => *retry_after,
            // The soonest a rate-limited target said it takes requests again.
            Self::AllTargetsFailed { attempts } if self.status() == 429 => Some(
                attempts
                    .iter()
                    .filter_map(|a| a.retry_after)
                    .min()
                    .unwrap_or(1)
                    .max(1),
            ),
            _ => None,
        }
    }

    /// `x-should-retry: false` for what no retry of the same request can
    /// fix (the official SDKs honour it; without it they retry every 5xx
    /// and 429): the gateway's provider key refused, a budget that never
    /// resets exhausted, no target where the request may go (residency, a
    /// binding not configured). `None`: the SDK's own rules decide.
    pub fn should_retry(&self) -> Option<bool> {
        match self {
            Self::Upstream {
                status: 401 | 403, ..
            } => Some(false),
            Self::BudgetExceeded { retry_after, .. } | Self::Unavailable { retry_after, .. }
                if retry_after.is_none() =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    /// The OpenAI-shaped JSON body: `{"error":{"message","type","code","param"}}`,
    /// plus `attempts` when every target failed.
    pub fn to_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'static str,
            code: &'static str,
            param: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            attempts: Option<&'a [Attempt]>,
        }
        let attempts = match self {
            Self::AllTargetsFailed { attempts } => Some(attempts.as_slice()),
            _ => None,
        };
        let body = Body {
            error: Inner {
                message: self.to_string(),
                kind: self.error_type(),
                code: self.code(),
                param: self.param(),
                attempts,
            },
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// A short reason for an attempt list or a log line.
    pub fn to_attempt(&self, provider: &str, model: &str) -> Attempt {
        let (status, retry_after) = match self {
            Self::Upstream {
                status,
                retry_after,
                ..
            } => (Some(*status), *retry_after),
            _ => (None, None),
        };
        let reason = match self {
            Self::Upstream { message, .. }
            | Self::UpstreamUnreachable { message, .. }
            | Self::UpstreamInvalidResponse { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Attempt {
            provider: provider.to_owned(),
            model: model.to_owned(),
            status,
            reason,
            retry_after,
        }
    }
}

/// Statuses worth another target: rate limits, server errors, timeouts and
/// Anthropic's 529 overload. Never 400/401/403/404/413/422: those would fail
/// the same way anywhere.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429 | 500..=599)
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { path } => write!(f, "Unknown request URL: {path}."),
            Self::KeyNotFound { id } => write!(
                f,
                "No virtual key has the id `{id}` (keys from GATEWAY_KEYS are not virtual keys)."
            ),
            Self::MethodNotAllowed { method, allowed } => {
                write!(f, "Method {method} is not allowed here; use {allowed}.")
            }
            Self::InvalidJson { message } => {
                write!(f, "The request body is not valid JSON: {message}")
            }
            Self::InvalidRequest { message, .. } | Self::DataClassDenied { message } => {
                f.write_str(message)
            }
            Self::PiiDetected { kinds, param } => write!(
                f,
                "The request contains personal data this gateway may not forward ({}) in `{param}`; remove it or ask for a policy that redacts it.",
                kinds.join(", ")
            ),
            Self::BodyTooLarge { limit } => {
                write!(
                    f,
                    "The request body is larger than the limit of {limit} bytes."
                )
            }
            Self::Timeout {
                provider,
                phase,
                ms,
            } => {
                write!(f, "Provider `{provider}` sent no {phase} within {ms} ms")
            }
            Self::Unavailable { message, .. } => f.write_str(message),
            Self::Unauthorized { message }
            | Self::RateLimited { message, .. }
            | Self::BudgetExceeded { message, .. } => f.write_str(message),
            Self::ModelNotFound { model } => write!(
                f,
                "The model `{model}` does not exist or you do not have access to it."
            ),
            Self::Upstream {
                provider,
                status,
                message,
                ..
            } => write!(f, "Provider `{provider}` returned {status}: {message}"),
            Self::UpstreamUnreachable { provider, message } => {
                write!(f, "Provider `{provider}` could not be reached: {message}")
            }
            Self::UpstreamInvalidResponse { provider, message } => {
                write!(
                    f,
                    "Provider `{provider}` sent an invalid response: {message}"
                )
            }
            Self::AllTargetsFailed { attempts } => {
                write!(f, "All {} targets failed:", attempts.len())?;
                for a in attempts {
                    match a.status {
                        Some(s) => write!(f, " {}/{} ({s}: {});", a.provider, a.model, a.reason)?,
                        None => write!(f, " {}/{} ({});", a.provider, a.model, a.reason)?,
                    }
                }
                Ok(())
            }
            Self::Internal { message } => write!(f, "Internal gateway error: {message}"),
        }
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn body(e: &GatewayError) -> Value {
        serde_json::from_slice(&e.to_body()).unwrap()
    }

    #[test]
    fn body_has_openai_shape() {
        let e = GatewayError::InvalidRequest {
            message: "`messages` must not be empty.".into(),
            param: Some("messages".into()),
        };
        let v = body(&e);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_value");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["message"], "`messages` must not be empty.");
        assert_eq!(v.as_object().unwrap().len(), 1);
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn fails_over_on_429_and_5xx_not_on_4xx() {
        let up = |status| GatewayError::Upstream {
            provider: "p".into(),
            status,
            message: "m".into(),
            retry_after: None,
        };
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(up(s).is_retryable(), "{s} should be retryable");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!up(s).is_retryable(), "{s} should not be retryable");
        }
        for s in [400, 404, 413, 422] {
            assert_eq!(up(s).status(), s, "a provider's {s} is passed on");
        }
        // The provider refusing the gateway's key is not the caller's 401.
        assert_eq!(up(401).status(), 502);
        assert_eq!(body(&up(403))["error"]["code"], "upstream_auth_failed");
        assert_eq!(body(&up(401))["error"]["type"], "server_error");
        // ... and no retry of the same request can fix it.
        assert_eq!(up(401).should_retry(), Some(false));
        assert_eq!(up(503).should_retry(), None);
        assert_eq!(up(500).status(), 502);
        assert_eq!(up(529).status(), 502);
        assert_eq!(up(503).status(), 503);
    }

    #[test]
    fn all_targets_failed_lists_attempts_and_is_429_only_when_all_were() {
        let a = |status| Attempt {
            provider: "p".into(),
            model: "m".into(),
            status,
            reason: "r".into(),
            retry_after: None,
        };
        let mixed = GatewayError::AllTargetsFailed {
            attempts: vec![a(Some(429)), a(None)],
        };
        assert_eq!(mixed.status(), 503);
        assert_eq!(
            body(&mixed)["error"]["attempts"].as_array().unwrap().len(),
            2
        );
        let limited = GatewayError::AllTargetsFailed {
            attempts: vec![a(Some(429)), a(Some(429))],
        };
        assert_eq!(limited.status(), 429);
        assert_eq!(body(&limited)["error"]["type"], "rate_limit_error");
        assert_eq!(limited.retry_after(), Some(1), "no provider said when");
        // The soonest any of them said it takes requests again.
        let said = |secs| Attempt {
            retry_after: Some(secs),
            ..a(Some(429))
        };
        let limited = GatewayError::AllTargetsFailed {
            attempts: vec![said(9), said(7)],
        };
        assert_eq!(limited.retry_after(), Some(7));
        assert_eq!(body(&limited)["error"]["attempts"][1]["retry_after"], 7);
    }

    #[test]
    fn targets_cooling_after_a_rate_limit_are_a_429_and_open_breakers_a_503() {
        let skipped = |rate_limited| GatewayError::Unavailable {
            message: "m".into(),
            retry_after: Some(7),
            rate_limited,
        };
        assert_eq!(skipped(true).status(), 429);
        assert_eq!(body(&skipped(true))["error"]["type"], "rate_limit_error");
        assert_eq!(body(&skipped(true))["error"]["code"], "rate_limit_exceeded");
        assert_eq!(skipped(true).retry_after(), Some(7));
        assert_eq!(skipped(false).status(), 503);
        assert_eq!(skipped(false).retry_after(), None, "an outage: fail fast");
        assert_eq!(skipped(false).should_retry(), None, "the SDK may retry it");
        let nowhere = GatewayError::Unavailable {
            message: "No deployment of `m` is in the jurisdictions ...".into(),
            retry_after: None,
            rate_limited: false,
        };
        assert_eq!(
            nowhere.should_retry(),
            Some(false),
            "residency never changes"
        );
        assert_eq!(body(&skipped(false))["error"]["type"], "server_error");
        assert_eq!(
            body(&skipped(false))["error"]["code"],
            "no_target_available"
        );
    }

    #[test]
    fn an_unknown_key_id_is_a_404_naming_it() {
        let e = GatewayError::KeyNotFound {
            id: "static".into(),
        };
        assert_eq!(e.status(), 404);
        assert_eq!(body(&e)["error"]["code"], "key_not_found");
        assert!(e.to_string().contains("`static`"), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_wrong_key_has_openais_type_and_code() {
        let e = GatewayError::Unauthorized {
            message: "m".into(),
        };
        assert_eq!(e.status(), 401);
        assert_eq!(body(&e)["error"]["type"], "invalid_request_error");
        assert_eq!(body(&e)["error"]["code"], "invalid_api_key");
    }

    #[test]
    fn a_budget_that_never_resets_is_not_worth_a_retry() {
        let over = |retry_after| GatewayError::BudgetExceeded {
            message: "m".into(),
            retry_after,
        };
        assert_eq!(over(None).should_retry(), Some(false));
        assert_eq!(over(Some(1)).should_retry(), None);
    }

    #[test]
    fn client_errors_are_attributed_to_the_client() {
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.side(), Side::Client);
        assert_eq!(
            GatewayError::Internal {
                message: "x".into()
            }
            .side(),
            Side::Gateway
        );
    }
}
