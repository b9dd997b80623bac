//! The request path as plain async Rust.
//!
//! [`route`] maps method and path to an endpoint (404/405 otherwise).
//! [`chat_completions`] parses the request, asks [`crate::routing`] for the
//! ordered candidates, and walks them: build the provider request, send it
//! through the [`Upstream`] seam, and on a retryable failure move to the next
//! candidate. A stream is committed only once its first translated bytes
//! exist, so a provider that fails before answering costs the client nothing
//! but the time of that attempt. Every attempt's error is kept, so when all
//! fail the client learns why.

mod stream;

use futures::StreamExt;

pub use stream::{Translated, error_event, into_client_stream};

use crate::api::{ChatRequest, Usage};
use crate::config::{Config, ProviderKind};
use crate::error::{Attempt, GatewayError};
use crate::http::{ByteStream, Upstream, UpstreamRequest, UpstreamResponse};
use crate::providers::{self, Target, mock};
use crate::routing::{self, Candidate, SecretLookup};

/// Largest provider error body read (the rest is not needed for a message).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Largest non-streamed provider answer accepted.
const RESPONSE_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`.
    Model(String),
    /// `GET /v1/usage`: the caller's own key.
    Usage,
    /// `GET /` and `GET /health`: liveness, no auth.
    Health,
    /// `GET|PUT /admin/config`.
    AdminConfig,
    /// `GET /__test/panic`: panics on purpose; served only when test hooks
    /// are enabled (never in production).
    TestPanic,
}

/// Maps a method and path to an endpoint.
pub fn route(method: &str, path: &str) -> Result<Route, GatewayError> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let (route, allowed) = match path {
        "/v1/chat/completions" => (Route::ChatCompletions, "POST"),
        "/v1/models" => (Route::Models, "GET"),
        "/v1/usage" => (Route::Usage, "GET"),
        "/" | "/health" => (Route::Health, "GET"),
        "/admin/config" => (Route::AdminConfig, "GET, PUT"),
        "/__test/panic" => (Route::TestPanic, "GET"),
        p => match p.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() => (Route::Model(percent_decode(id)), "GET"),
            _ => {
                return Err(GatewayError::NotFound {
                    path: path.to_owned(),
                });
            }
        },
    };
    let ok =
        allowed.split(", ").any(|m| m == method) || (method == "HEAD" && allowed.contains("GET"));
    if ok {
        Ok(route)
    } else {
        Err(GatewayError::MethodNotAllowed {
            method: method.to_owned(),
            allowed,
        })
    }
}

/// Decodes `%XX` escapes (model ids may contain `/`, sent as `%2F`).
fn percent_decode(s: &str) -> String {
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
    String::from_utf8_lossy(&out).into_owned()
}

/// What the edge turns into an HTTP response.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers beyond the defaults.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: ReplyBody,
    /// Usage known when the reply was built (non-streamed answers).
    pub usage: Option<Usage>,
}

/// A whole body or a stream.
pub enum ReplyBody {
    /// A complete body.
    Full(Vec<u8>),
    /// A body sent as it is produced.
    Stream(ByteStream),
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: ReplyBody::Full(body),
            usage: None,
        }
    }

    /// A JSON reply of any serializable value.
    pub fn json_value<T: serde::Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::json(status, body),
            Err(e) => Reply::error(&GatewayError::Internal {
                message: format!("serializing a reply: {e}"),
            }),
        }
    }

    /// The OpenAI-shaped error reply, with `Retry-After` and `Allow` where due.
    pub fn error(e: &GatewayError) -> Reply {
        let mut reply = Reply::json(e.status(), e.to_body());
        if let Some(secs) = e.retry_after() {
            reply.headers.push(("retry-after", secs.to_string()));
        }
        if let GatewayError::MethodNotAllowed { allowed, .. } = e {
            reply.headers.push(("allow", (*allowed).to_owned()));
        }
        reply
    }
}

/// What the request path needs from its surroundings.
pub struct Ctx<'a> {
    /// Unix milliseconds now.
    pub now_ms: u64,
    /// Secret lookup (provider keys).
    pub secret: SecretLookup<'a>,
}

/// `POST /v1/chat/completions`: route, send, fail over, translate.
pub async fn chat_completions<U: Upstream>(
    upstream: &U,
    config: &Config,
    ctx: &Ctx<'_>,
    body: &[u8],
) -> Result<Reply, GatewayError> {
    let req = ChatRequest::parse(body)?;
    let candidates = routing::candidates(config, &req.model, ctx.secret)?;
    let mut attempts: Vec<(Attempt, GatewayError)> = Vec::new();
    for cand in &candidates {
        let tried = attempts.len() + 1;
        match try_candidate(upstream, ctx, &req, cand).await {
            Ok(mut reply) => {
                reply
                    .headers
                    .push(("x-gateway-provider", cand.target.name.to_owned()));
                reply
                    .headers
                    .push(("x-gateway-model", cand.target.model.to_owned()));
                reply
                    .headers
                    .push(("x-gateway-attempts", tried.to_string()));
                return Ok(reply);
            }
            Err(e) if e.is_retryable() => {
                attempts.push((e.to_attempt(cand.target.name, cand.target.model), e));
            }
            Err(e) => return Err(e),
        }
    }
    // One failed target: its own error says the most (a 429 stays a 429
    // with its Retry-After). Several: list them all.
    if attempts.len() == 1 {
        return Err(attempts.remove(0).1);
    }
    Err(GatewayError::AllTargetsFailed {
        attempts: attempts.into_iter().map(|(a, _)| a).collect(),
    })
}

/// One attempt at one candidate.
async fn try_candidate<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    req: &ChatRequest<'_>,
    cand: &Candidate<'_>,
) -> Result<Reply, GatewayError> {
    let target = &cand.target;
    let up_req = providers::build_chat_request(target, req, cand.api_key.as_deref())?;
    let resp = send(upstream, target, up_req, ctx.now_ms).await?;
    if !(200..300).contains(&resp.status) {
        let status = resp.status;
        let retry_after = resp.retry_after_secs();
        let body = resp.collect(ERROR_BODY_LIMIT).await.unwrap_or_default();
        let e = providers::error_from_response(target, status, retry_after, &body);
        return Err(redact(e, cand.api_key.as_deref()));
    }
    if req.stream {
        let translator = providers::stream_translator(target, req, ctx.now_ms / 1000);
        let mut translated = Translated::new(target.name, resp.body, translator);
        return match translated.next().await {
            Some(Ok(first)) => Ok(stream_reply(into_client_stream(first, translated))),
            Some(Err(e)) => Err(redact(e, cand.api_key.as_deref())),
            None => Err(GatewayError::UpstreamInvalidResponse {
                provider: target.name.to_owned(),
                message: "empty stream".into(),
            }),
        };
    }
    let body = resp.collect(RESPONSE_BODY_LIMIT).await.map_err(|message| {
        GatewayError::UpstreamUnreachable {
            provider: target.name.to_owned(),
            message,
        }
    })?;
    let (body, usage) = providers::chat_response(target, body, ctx.now_ms / 1000)?;
    let mut reply = Reply::json(200, body);
    reply.usage = usage;
    Ok(reply)
}

/// Sends through the upstream, or to the in-worker demo model.
async fn send<U: Upstream>(
    upstream: &U,
    target: &Target<'_>,
    req: UpstreamRequest,
    now_ms: u64,
) -> Result<UpstreamResponse, GatewayError> {
    if target.provider.kind == ProviderKind::Mock {
        return Ok(mock::respond(&req, now_ms / 1000));
    }
    upstream
        .send(req)
        .await
        .map_err(|message| GatewayError::UpstreamUnreachable {
            provider: target.name.to_owned(),
            message,
        })
}

fn stream_reply(body: ByteStream) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            (
                "content-type",
                "text/event-stream; charset=utf-8".to_owned(),
            ),
            ("cache-control", "no-cache".to_owned()),
        ],
        body: ReplyBody::Stream(body),
        usage: None,
    }
}

/// Removes a provider key from an error message, should a provider echo it.
fn redact(e: GatewayError, key: Option<&str>) -> GatewayError {
    let Some(key) = key.filter(|k| k.len() >= 8) else {
        return e;
    };
    let clean = |s: String| {
        if s.contains(key) {
            s.replace(key, "[redacted]")
        } else {
            s
        }
    };
    match e {
        GatewayError::Upstream {
            provider,
            status,
            message,
            retry_after,
        } => GatewayError::Upstream {
            provider,
            status,
            message: clean(message),
            retry_after,
        },
        GatewayError::UpstreamUnreachable { provider, message } => {
            GatewayError::UpstreamUnreachable {
                provider,
                message: clean(message),
            }
        }
        GatewayError::UpstreamInvalidResponse { provider, message } => {
            GatewayError::UpstreamInvalidResponse {
                provider,
                message: clean(message),
            }
        }
        other => other,
    }
}

/// `GET /v1/models`.
pub fn models(config: &Config, secret: SecretLookup<'_>) -> Reply {
    Reply::json_value(200, &routing::list_models(config, secret))
}

/// `GET /v1/models/{id}`.
pub fn model(config: &Config, id: &str, secret: SecretLookup<'_>) -> Result<Reply, GatewayError> {
    Ok(Reply::json_value(
        200,
        &routing::get_model(config, id, secret)?,
    ))
}

#[cfg(test)]
mod tests;
