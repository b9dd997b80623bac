//! The request path as plain async Rust.
//!
//! [`route`] maps method and path to an endpoint (404/405 otherwise).
//! [`prepare`] (chat completions), [`prepare_embeddings`], or for the other
//! client protocols [`prepare_messages`], [`prepare_count_tokens`] and
//! [`prepare_responses`] parses a request and prices its worst case;
//! [`Prepared::route`] asks [`crate::routing`] for the ordered candidates;
//! [`dispatch`] walks them with the one failover loop (`failover`): build
//! the provider request (an [`crate::ingress::Call`] per attempt), send it
//! through the [`Upstream`] seam within the policy's timeouts, and on a
//! retryable failure move to the next candidate, recording each target's
//! health. A stream is
//! committed only at its first token, so a provider that fails before it
//! costs the client nothing but the time of that attempt. Every attempt's
//! error is kept, so when all fail the client learns why.

mod admission;
pub mod continuation;
mod stream;
mod trust;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::pin::Pin;

use futures::StreamExt;
use futures::future::Either;

pub use admission::{denial_to_error, format_duration, rate_headers};
pub use stream::{
    Detached, NativeStream, RenderError, StreamEnd, StreamOutcome, Translated, carries_output,
    error_event, into_client_stream, native_stream,
};
pub use trust::{KeyTrust, Trust, screen};

use crate::api::{ChatRequest, EmbeddingsRequest, Usage};
use crate::cache;
use crate::config::{Config, Failover, Hedge, ProviderKind};
use crate::error::{Attempt, GatewayError};
use crate::http::{
    ByteStream, DEADLINE_PASSED, Sleep, Upstream, UpstreamRequest, UpstreamResponse,
};
use crate::ingress::{Call, ClientRequest, Ingress};
use crate::limits::{Money, Pricing, Tokens, UsageEvent};
use crate::providers::{self, Target, mock};
use crate::routing::{
    self, Candidate, Health, Needs, Origin, RouteInput, SecretLookup, target_key,
};

/// Largest provider error body read (the rest is not needed for a message).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Largest non-streamed provider answer accepted.
const RESPONSE_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages`: Anthropic Messages.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `POST /v1/responses`: OpenAI Responses (stateless).
    Responses,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`.
    Model(String),
    /// `GET /v1/usage`: the caller's own key.
    Usage,
    /// `GET /` and `GET /health`: liveness, no auth.
    Health,
    /// `/admin/*`, guarded by `ADMIN_TOKEN`.
    Admin(AdminRoute),
    /// `/__test/*`: served only when test hooks are enabled (never in
    /// production).
    Test(TestHook),
}

/// Test-only endpoints (`GATEWAY_TEST_HOOKS=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHook {
    /// `GET /__test/panic`: panics on purpose.
    Panic,
    /// `POST /__test/flush`: sends every pending batch of this isolate now.
    Flush,
    /// `POST /__test/forget`: this isolate drops its leases and batches
    /// unreported, as an isolate that dies would.
    Forget,
    /// `POST /__test/seed?key={id}&days=&models=&rpm=`: fills a key with
    /// history (benchmarks of a busy key's decisions).
    Seed,
    /// `GET /__test/stats`: this isolate's admissions by kind and its calls
    /// to key objects.
    Stats,
}

/// The admin API's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    /// `GET|PUT /admin/config`: the live routing config; store a new one.
    Config,
    /// `GET|POST /admin/keys`: list keys; create one.
    Keys,
    /// `GET|PATCH|DELETE /admin/keys/{id}`: read, change, revoke.
    Key(String),
    /// `POST /admin/keys/{id}/rotate`: a new secret, same key.
    RotateKey(String),
    /// `POST /admin/keys/{id}/revoke`.
    RevokeKey(String),
    /// `GET /admin/usage?key={id}`.
    Usage,
    /// `POST /admin/config/validate`: check a config, store nothing.
    ValidateConfig,
    /// `GET /admin/analytics?from=&to=&group_by=&interval=`.
    Analytics,
    /// `GET /admin/logs?date=&key=&model=&object=`.
    Logs,
    /// `GET /admin/health`: breakers and cooling targets.
    Health,
    /// `GET /admin/alerts`: recent alert deliveries.
    Alerts,
}

/// The paths whose POST body the gateway reads whole: the client
/// protocols' endpoints. The edge's entry module reads these bodies itself.
pub const BODY_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
];

/// Maps a method and path to an endpoint.
pub fn route(method: &str, path: &str) -> Result<Route, GatewayError> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let (route, allowed) = match path {
        "/v1/chat/completions" => (Route::ChatCompletions, "POST"),
        "/v1/embeddings" => (Route::Embeddings, "POST"),
        "/v1/messages" => (Route::Messages, "POST"),
        "/v1/messages/count_tokens" => (Route::CountTokens, "POST"),
        "/v1/responses" => (Route::Responses, "POST"),
        "/v1/models" => (Route::Models, "GET"),
        "/v1/usage" => (Route::Usage, "GET"),
        "/" | "/health" => (Route::Health, "GET"),
        "/admin/config" => (Route::Admin(AdminRoute::Config), "GET, PUT"),
        "/admin/keys" => (Route::Admin(AdminRoute::Keys), "GET, POST"),
        "/admin/usage" => (Route::Admin(AdminRoute::Usage), "GET"),
        "/admin/config/validate" => (Route::Admin(AdminRoute::ValidateConfig), "POST"),
        "/admin/analytics" => (Route::Admin(AdminRoute::Analytics), "GET"),
        "/admin/logs" => (Route::Admin(AdminRoute::Logs), "GET"),
        "/admin/health" => (Route::Admin(AdminRoute::Health), "GET"),
        "/admin/alerts" => (Route::Admin(AdminRoute::Alerts), "GET"),
        "/__test/panic" => (Route::Test(TestHook::Panic), "GET"),
        "/__test/flush" => (Route::Test(TestHook::Flush), "POST"),
        "/__test/forget" => (Route::Test(TestHook::Forget), "POST"),
        "/__test/seed" => (Route::Test(TestHook::Seed), "POST"),
        "/__test/stats" => (Route::Test(TestHook::Stats), "GET"),
        p => {
            let not_found = || GatewayError::NotFound {
                path: path.to_owned(),
            };
            if let Some(id) = p.strip_prefix("/v1/models/") {
                (Route::Model(percent_decode(id)), "GET")
            } else if let Some(rest) = p.strip_prefix("/admin/keys/") {
                match rest.split_once('/') {
                    None => (
                        Route::Admin(AdminRoute::Key(rest.to_owned())),
                        "GET, PATCH, DELETE",
                    ),
                    Some((id, "rotate")) => {
                        (Route::Admin(AdminRoute::RotateKey(id.to_owned())), "POST")
                    }
                    Some((id, "revoke")) => {
                        (Route::Admin(AdminRoute::RevokeKey(id.to_owned())), "POST")
                    }
                    Some(_) => return Err(not_found()),
                }
            } else {
                return Err(not_found());
            }
        }
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
    /// The target that answered (proxied answers).
    pub served: Option<Served>,
    /// The error an error reply stands for, so that it can be rendered
    /// again in another client protocol ([`Reply::for_client`]).
    pub error: Option<GatewayError>,
}

/// A whole body or a stream.
pub enum ReplyBody {
    /// A complete body.
    Full(Vec<u8>),
    /// A body sent as it is produced.
    Stream(ByteStream),
    /// A stream whose rest the runtime pipes ([`NativeStream`]).
    Native(Box<NativeStream>),
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: ReplyBody::Full(body),
            usage: None,
            served: None,
            error: None,
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

    /// The OpenAI-shaped error reply, with `Retry-After`, `x-should-retry`
    /// and `Allow` where due.
    pub fn error(e: &GatewayError) -> Reply {
        let mut reply = Reply::json(e.status(), e.to_body());
        if let Some(secs) = e.retry_after() {
            reply.headers.push(("retry-after", secs.to_string()));
        }
        if let Some(retry) = e.should_retry() {
            reply.headers.push(("x-should-retry", retry.to_string()));
        }
        match e {
            GatewayError::MethodNotAllowed { allowed, .. } => {
                reply.headers.push(("allow", (*allowed).to_owned()));
            }
            // As on an answer: how many targets were tried.
            GatewayError::AllTargetsFailed { attempts } => {
                reply
                    .headers
                    .push(("x-gateway-attempts", attempts.len().to_string()));
            }
            _ => {}
        }
        reply.error = Some(e.clone());
        reply
    }

    /// The reply in the client's protocol: an error reply of an Anthropic
    /// Messages request takes Anthropic's shape and status
    /// ([`Ingress::error`]), its headers kept; anything else is unchanged.
    /// The edge calls it once, on every reply of a request, whichever step
    /// refused it.
    pub fn for_client(mut self, ingress: Ingress) -> Reply {
        if ingress == Ingress::Chat {
            return self;
        }
        if let Some(e) = &self.error {
            let (status, body) = ingress.error(e);
            self.status = status;
            self.body = ReplyBody::Full(body);
        }
        self
    }
}

/// What the request path needs from its surroundings.
pub struct Ctx<'a> {
    /// Unix milliseconds when the request arrived.
    pub now_ms: u64,
    /// The current time in Unix ms (for first-byte times and timeouts).
    pub clock: &'a dyn Fn() -> u64,
    /// Secret lookup (provider keys).
    pub secret: SecretLookup<'a>,
    /// What this isolate knows of each target.
    pub health: &'a Health,
}

/// A parsed request of one of the proxied endpoints.
pub enum Request<'a> {
    /// `POST /v1/chat/completions`.
    Chat(ChatRequest<'a>),
    /// `POST /v1/embeddings`.
    Embeddings(EmbeddingsRequest<'a>),
    /// `POST /v1/messages`, `/v1/messages/count_tokens`, `/v1/responses`:
    /// another client protocol, passed through to targets that speak it and
    /// translated for the others ([`crate::ingress`]).
    Ingress(ClientRequest<'a>),
}

/// A parsed request, ready to be admitted, routed and sent.
pub struct Prepared<'a> {
    config: &'a Config,
    /// The request.
    pub req: Request<'a>,
    /// Every target the model could use (any rule), for the worst case.
    all: Vec<Candidate<'a>>,
    /// Where it goes, best first, once routed.
    pub candidates: Vec<Candidate<'a>>,
    /// The body as parsed (the client's, or its redaction).
    body: &'a [u8],
    /// The body's size, an upper bound of its input tokens.
    body_len: usize,
    /// Image parts, whose tokens the bytes do not bound.
    images: usize,
    /// The targets this caller may be answered by, once routed, for a
    /// model with a response cache ([`routing::fingerprint`]).
    fingerprint: Option<String>,
    /// What the trust step decided ([`screen`]): data class, PII.
    pub trust: Trust,
}

/// Output tokens assumed for a request that sets no `max_tokens` on a model
/// whose cap is not configured.
pub const DEFAULT_OUTPUT_CAP: u64 = 4_096;
/// Input tokens assumed per image (OpenAI's largest high-detail image is
/// under 3,000).
const TOKENS_PER_IMAGE: u64 = 3_000;

/// How an endpoint's body becomes a [`Prepared`] request: [`prepare`]
/// (chat completions), [`prepare_embeddings`], [`prepare_messages`],
/// [`prepare_count_tokens`] or [`prepare_responses`].
pub type Prepare = for<'a> fn(&'a Config, &Ctx<'_>, &'a [u8]) -> Result<Prepared<'a>, GatewayError>;

/// Parses a chat-completions request and checks its model exists (404
/// otherwise).
pub fn prepare<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    body: &'a [u8],
) -> Result<Prepared<'a>, GatewayError> {
    crate::trust::check_shape(&config.limits, body, Ingress::Chat)?;
    let req = ChatRequest::parse(body)?;
    let all = routing::all_candidates(config, &req.model, ctx.secret);
    if all.is_empty() {
        return Err(GatewayError::ModelNotFound {
            model: req.model.to_string(),
        });
    }
    let images = req
        .get("messages")
        .map_or(0, |raw| count_keys(raw.get(), "\"image_url\""));
    Ok(Prepared {
        config,
        req: Request::Chat(req),
        all,
        candidates: vec![],
        body,
        body_len: body.len(),
        images,
        fingerprint: None,
        trust: Trust::default(),
    })
}

/// Parses an embeddings request and checks its model exists (404) and has
/// a target that embeds (400 naming `model` otherwise: Anthropic has no
/// embeddings). Routing later skips the targets that do not embed.
pub fn prepare_embeddings<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    body: &'a [u8],
) -> Result<Prepared<'a>, GatewayError> {
    // Depth only: an embeddings body has no messages or tools.
    crate::trust::check_depth(&config.limits, body)?;
    let req = EmbeddingsRequest::parse(body)?;
    let mut all = routing::all_candidates(config, &req.model, ctx.secret);
    if all.is_empty() {
        return Err(GatewayError::ModelNotFound {
            model: req.model.to_string(),
        });
    }
    all.retain(|c| providers::supports_embeddings(c.target.provider.kind));
    if all.is_empty() {
        return Err(providers::no_embeddings(&req.model));
    }
    Ok(Prepared {
        config,
        req: Request::Embeddings(req),
        all,
        candidates: vec![],
        body,
        body_len: body.len(),
        images: 0,
        fingerprint: None,
        trust: Trust::default(),
    })
}

/// Parses an Anthropic Messages request (`POST /v1/messages`; 400s in
/// Anthropic's words) and checks its model exists.
pub fn prepare_messages<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    body: &'a [u8],
) -> Result<Prepared<'a>, GatewayError> {
    crate::trust::check_shape(&config.limits, body, Ingress::Messages)?;
    prepare_client(config, ctx, body, ClientRequest::parse_messages(body)?)
}

/// Parses an Anthropic token count (`POST /v1/messages/count_tokens`): free,
/// exact from an Anthropic target, estimated for the others.
pub fn prepare_count_tokens<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    body: &'a [u8],
) -> Result<Prepared<'a>, GatewayError> {
    crate::trust::check_shape(&config.limits, body, Ingress::Messages)?;
    prepare_client(config, ctx, body, ClientRequest::parse_count_tokens(body)?)
}

/// Parses an OpenAI Responses request (`POST /v1/responses`).
pub fn prepare_responses<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    body: &'a [u8],
) -> Result<Prepared<'a>, GatewayError> {
    crate::trust::check_shape(&config.limits, body, Ingress::Responses)?;
    prepare_client(config, ctx, body, ClientRequest::parse_responses(body)?)
}

fn prepare_client<'a>(
    config: &'a Config,
    ctx: &Ctx<'_>,
    body: &'a [u8],
    req: ClientRequest<'a>,
) -> Result<Prepared<'a>, GatewayError> {
    let all = routing::all_candidates(config, req.model(), ctx.secret);
    if all.is_empty() {
        return Err(GatewayError::ModelNotFound {
            model: req.model().to_owned(),
        });
    }
    Ok(Prepared {
        config,
        images: req.images(),
        req: Request::Ingress(req),
        all,
        candidates: vec![],
        body,
        body_len: body.len(),
        fingerprint: None,
        trust: Trust::default(),
    })
}

/// How often `key` (quoted) occurs as an object key in JSON text: followed
/// by a colon, unlike the same string as a value.
fn count_keys(json: &str, key: &str) -> usize {
    json.match_indices(key)
        .filter(|(i, _)| json[i + key.len()..].trim_start().starts_with(':'))
        .count()
}

/// Who is asking and from where: what routing needs beyond the request.
pub struct Caller<'a> {
    /// Where the request comes from.
    pub origin: &'a Origin,
    /// Request headers by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The key's id.
    pub key_id: &'a str,
    /// The key's tier.
    pub tier: Option<&'a str>,
    /// The key's allowed jurisdictions.
    pub jurisdictions: Option<&'a [String]>,
    /// A uniform draw in `[0, 1)`.
    pub random: f64,
}

impl<'a> Prepared<'a> {
    /// The model name the client asked for.
    pub fn model(&self) -> &str {
        match &self.req {
            Request::Chat(r) => &r.model,
            Request::Embeddings(r) => &r.model,
            Request::Ingress(r) => r.model(),
        }
    }

    /// The body as parsed and sent: the client's, or its redaction.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Output tokens to charge for a whole answer whose provider reported
    /// no usage: a token per four bytes of the answer as the client got it
    /// (its text is in there, so never less than what was delivered), at
    /// most the request's output cap; none for embeddings. Without it such
    /// an answer's output would cost nothing against the key's budget.
    pub fn whole_output_estimate(&self, answer: &[u8]) -> u64 {
        let estimate = (answer.len() as u64).div_ceil(4);
        let cap = match &self.req {
            Request::Embeddings(_) => Some(0),
            Request::Chat(r) => r.max_tokens,
            Request::Ingress(r) => r.max_output_tokens(),
        };
        cap.map_or(estimate, |cap| estimate.min(cap))
    }

    /// A string field of the request's `metadata`.
    pub fn metadata_field(&self, name: &str) -> Option<String> {
        match &self.req {
            Request::Chat(r) => r
                .parse_field::<Option<BTreeMap<String, serde_json::Value>>>("metadata")
                .ok()
                .flatten()?
                .get(name)?
                .as_str()
                .map(str::to_owned),
            Request::Ingress(r) => r.metadata().get(name).cloned(),
            Request::Embeddings(_) => None,
        }
    }

    /// Whether the answer is streamed.
    pub fn stream(&self) -> bool {
        match &self.req {
            Request::Chat(r) => r.stream,
            Request::Embeddings(_) => false,
            Request::Ingress(r) => r.stream(),
        }
    }

    /// The most this request can cost on any target it could reach, and the
    /// most tokens it can use. Input is bounded by the body's bytes (a token
    /// is at least one byte of text) plus an allowance per image; output by
    /// `max_tokens`, else the model's configured cap (embeddings write none).
    pub fn worst_case(&self) -> (Money, u64) {
        if let Request::Ingress(r) = &self.req
            && r.is_free()
        {
            return (Money::ZERO, 0);
        }
        let input = self.body_len as u64 + self.images as u64 * TOKENS_PER_IMAGE;
        let mut cost = Money::ZERO;
        let mut tokens = 0;
        // A continued stream's second leg reads the input again with the
        // text so far (at most the output), and writes within what is left
        // of the output cap.
        let mut second_leg = (Money::ZERO, 0);
        for c in &self.all {
            let info = c.target.provider.model_info(c.target.model);
            let output = match &self.req {
                Request::Chat(r) => r
                    .max_tokens
                    .or(info.max_output_tokens)
                    .unwrap_or(DEFAULT_OUTPUT_CAP),
                Request::Embeddings(_) => 0,
                Request::Ingress(r) => r
                    .max_output_tokens()
                    .or(info.max_output_tokens)
                    .unwrap_or(DEFAULT_OUTPUT_CAP),
            };
            cost = cost.max(info.pricing().worst_cost(input, output));
            tokens = tokens.max(input + output);
            second_leg = (
                second_leg
                    .0
                    .max(info.pricing().worst_cost(input + output, 0)),
                second_leg.1.max(input + output),
            );
        }
        let model = self.config.models.get(self.model());
        if self.stream()
            && matches!(self.req, Request::Chat(_))
            && model.is_some_and(|m| m.continuation)
        {
            cost = cost.plus(second_leg.0);
            tokens += second_leg.1;
        }
        // A hedged request may have more than one target read its input:
        // each attempt started beside the first is reserved for as well.
        if let Some(h) = model.and_then(|m| m.hedge.as_ref()) {
            let extra = self
                .all
                .iter()
                .map(|c| {
                    let info = c.target.provider.model_info(c.target.model);
                    info.pricing().worst_cost(input, 0)
                })
                .max()
                .unwrap_or(Money::ZERO);
            for _ in 0..h.max_extra {
                cost = cost.plus(extra);
            }
            tokens += input * u64::from(h.max_extra);
        }
        (cost, tokens)
    }

    /// Orders the candidates for this caller ([`routing::plan`]).
    pub fn route(&mut self, ctx: &Ctx<'_>, caller: &Caller<'_>) -> Result<(), GatewayError> {
        let input_tokens = self.accounting().input_estimate;
        let (metadata, user, needs) = match &self.req {
            Request::Chat(req) => {
                let metadata: BTreeMap<String, String> = req
                    .parse_field::<Option<BTreeMap<String, serde_json::Value>>>("metadata")
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                    .collect();
                let user: Option<String> = req.parse_field::<Option<String>>("user").ok().flatten();
                let has = |field: &str| {
                    req.get(field)
                        .is_some_and(|raw| !matches!(raw.get(), "null" | "[]"))
                };
                let json = req
                    .get("response_format")
                    .is_some_and(|raw| raw.get().contains("json"));
                let needs = Needs {
                    input_tokens,
                    output_tokens: req.max_tokens.unwrap_or(0),
                    tools: has("tools"),
                    vision: self.images > 0,
                    json,
                    embeddings: false,
                };
                (metadata, user, needs)
            }
            Request::Embeddings(req) => {
                let user: Option<String> = req.parse_field::<Option<String>>("user").ok().flatten();
                let needs = Needs {
                    input_tokens,
                    embeddings: true,
                    ..Needs::default()
                };
                (BTreeMap::new(), user, needs)
            }
            Request::Ingress(req) => {
                let needs = Needs {
                    input_tokens,
                    output_tokens: req.max_output_tokens().unwrap_or(0),
                    tools: req.has_tools(),
                    vision: self.images > 0,
                    json: req.wants_json(),
                    embeddings: false,
                };
                (req.metadata(), req.user(), needs)
            }
        };
        let input = RouteInput {
            origin: caller.origin,
            header: caller.header,
            metadata: &metadata,
            tier: caller.tier,
            key_jurisdictions: caller.jurisdictions,
            key_id: caller.key_id,
            user: user.as_deref(),
            needs,
            random: caller.random,
            now_ms: ctx.now_ms,
            health: ctx.health,
            data_class: self.trust.class.as_ref(),
        };
        self.candidates = routing::plan(self.config, self.model(), ctx.secret, &input)?;
        let cached = self
            .config
            .models
            .get(self.model())
            .is_some_and(|m| m.cache.is_some());
        if cached && matches!(self.req, Request::Chat(_)) {
            self.fingerprint = Some(routing::fingerprint(
                self.config,
                self.model(),
                ctx.secret,
                &input,
            )?);
        }
        if let Request::Ingress(req) = &mut self.req {
            // Targets that speak the client's protocol get its headers; the
            // others its translation, made once, and none when it cannot be
            // made (their 400 is the answer only when no target is left).
            req.keep_headers(caller.header);
            if self
                .candidates
                .iter()
                .any(|c| !req.is_native_to(c.target.provider.kind))
            {
                req.translate();
            }
            if let Some(e) = req.translation_error() {
                let e = e.clone();
                self.candidates
                    .retain(|c| req.is_native_to(c.target.provider.kind));
                if self.candidates.is_empty() {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// What the response cache does for this request, once routed
    /// ([`cache::plan`]): chat completions of a model with a `cache` policy
    /// only, keyed with the targets routing let this caller use (an answer
    /// is never served to a caller whose routing would not have allowed
    /// its target: another jurisdiction, tier or rule). `header` (the
    /// client's `Cache-Control`) is read only for such a model.
    pub fn cache_plan(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        asker: cache::Asker<'_>,
    ) -> cache::Plan {
        let Some(policy) = self
            .config
            .models
            .get(self.model())
            .and_then(|m| m.cache.as_ref())
        else {
            return cache::Plan::Off;
        };
        let req = match &self.req {
            Request::Chat(r) => Some(r),
            _ => None,
        };
        let Some(targets) = &self.fingerprint else {
            return cache::Plan::Bypass;
        };
        let asker = cache::Asker { targets, ..asker };
        cache::plan(Some(policy), req, header("cache-control").as_deref(), asker)
    }

    /// Keeps a committed stream in Rust to its end (no native pipe), so
    /// that what the client gets can be kept (the response cache).
    pub fn keep_stream(&mut self) {
        if let Request::Chat(r) = &mut self.req {
            r.native_pipe = false;
        }
    }

    /// The reply of a cache hit, in the client's form: the stored chunks
    /// (with a usage chunk if asked for) to a client that streams, the
    /// stored completion to one that does not.
    pub fn cached_reply(&self, entry: &cache::Entry) -> Reply {
        let mut reply = match &self.req {
            Request::Chat(r) if r.stream => {
                stream_reply(ReplyBody::Full(entry.to_stream(r.include_usage)))
            }
            _ => Reply::json(200, entry.to_completion()),
        };
        reply.headers.push(("x-gateway-cache", "hit".to_owned()));
        reply
    }

    /// What settlement needs to know of the request, owned, so that it can
    /// outlive the request (a stream settles when it ends).
    pub fn accounting(&self) -> Accounting {
        let free = matches!(&self.req, Request::Ingress(r) if r.is_free());
        Accounting {
            model: self.model().to_owned(),
            // Four bytes a token, the usual average, for answers whose
            // usage never arrived.
            input_estimate: if free {
                0
            } else {
                (self.body_len as u64).div_ceil(4) + self.images as u64 * TOKENS_PER_IMAGE
            },
        }
    }
}

/// The request facts settlement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    /// The public model name.
    pub model: String,
    /// Input tokens to assume when the provider reported none.
    pub input_estimate: u64,
}

/// `POST /v1/chat/completions` in one call, for a caller with no key scope
/// and no location: prepare, route, dispatch.
pub async fn chat_completions<U: Upstream>(
    upstream: &U,
    config: &Config,
    ctx: &Ctx<'_>,
    body: &[u8],
) -> Result<Reply, GatewayError> {
    let mut prepared = prepare(config, ctx, body)?;
    route_anonymous(&mut prepared, ctx)?;
    dispatch(upstream, ctx, &prepared, None).await
}

/// `POST /v1/embeddings` in one call, for a caller with no key scope and no
/// location: prepare, route, dispatch.
pub async fn embeddings<U: Upstream>(
    upstream: &U,
    config: &Config,
    ctx: &Ctx<'_>,
    body: &[u8],
) -> Result<Reply, GatewayError> {
    let mut prepared = prepare_embeddings(config, ctx, body)?;
    route_anonymous(&mut prepared, ctx)?;
    dispatch(upstream, ctx, &prepared, None).await
}

/// Routes for a caller with no key scope, no location and no headers.
fn route_anonymous(prepared: &mut Prepared<'_>, ctx: &Ctx<'_>) -> Result<(), GatewayError> {
    let no_headers = |_: &str| None;
    let caller = Caller {
        origin: &Origin::default(),
        header: &no_headers,
        key_id: "",
        tier: None,
        jurisdictions: None,
        random: 0.0,
    };
    prepared.route(ctx, &caller)
}

/// Walks the candidates: send, and on a retryable failure move to the next,
/// recording each target's health on the way. `on_stream_end` is given to
/// the stream that is committed to the client (dropped uncalled when the
/// answer is not a stream).
pub async fn dispatch<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    prepared: &Prepared<'_>,
    on_stream_end: Option<StreamEnd>,
) -> Result<Reply, GatewayError> {
    let policy = &prepared.config.failover;
    let (model, candidates) = (prepared.model(), &prepared.candidates);
    let sleep = |ms: u64| upstream.sleep(ms);
    let hedge = prepared
        .config
        .models
        .get(model)
        .and_then(|m| m.hedge.as_ref())
        .filter(|_| candidates.len() > 1)
        .map(|h| Hedging {
            hedge: h,
            sleep: &sleep,
            streamed: prepared.stream(),
        });
    match &prepared.req {
        Request::Chat(req) => {
            // A cell, not a `&mut`: each attempt borrows it, and only the
            // attempt whose stream is committed takes the callback out.
            let on_stream_end = Cell::new(on_stream_end);
            failover(ctx, policy, model, candidates, hedge, |cand| {
                try_chat(upstream, ctx, policy, Call::Chat(req), cand, &on_stream_end)
            })
            .await
        }
        Request::Ingress(req) => {
            // Per candidate: passed through when the target speaks the
            // client's protocol, else the translation made at routing.
            let chat = req.chat_request()?;
            let (chat, on_stream_end) = (chat.as_ref(), &Cell::new(on_stream_end));
            failover(ctx, policy, model, candidates, hedge, |cand| async move {
                let call = Call::for_target(req, chat, cand.target.provider.kind)?;
                try_chat(upstream, ctx, policy, call, cand, on_stream_end).await
            })
            .await
        }
        Request::Embeddings(req) => {
            failover(ctx, policy, model, candidates, None, |cand| {
                try_embeddings(upstream, ctx, policy, req, cand)
            })
            .await
        }
    }
}

/// The failover loop every endpoint uses: `attempt` each candidate in
/// order, recording its health; stop at the first answer or the first
/// failure not worth another target ([`GatewayError::is_retryable`]). The
/// answer is labelled with the target that gave it.
///
/// With a `hedge`, an attempt that has not answered (for a stream: not
/// produced its first token) after the hedge's delay gets the next
/// candidate started beside it; the first to answer wins and the others
/// are dropped, which aborts their fetches. A failure of one of them, of
/// any kind, waits for the rest: another may still answer.
async fn failover<'s, 'c, F, Fut>(
    ctx: &Ctx<'_>,
    policy: &Failover,
    model: &str,
    candidates: &'s [Candidate<'c>],
    hedge: Option<Hedging<'_>>,
    attempt: F,
) -> Result<Reply, GatewayError>
where
    F: Fn(&'s Candidate<'c>) -> Fut,
    Fut: Future<Output = Result<Reply, GatewayError>>,
{
    /// One attempt under way.
    struct Running<'s, 'c> {
        cand: &'s Candidate<'c>,
        key: String,
        started: u64,
        /// It holds its half-open breaker's probe.
        probe: bool,
    }
    let mut failed: Vec<(Attempt, GatewayError)> = Vec::new();
    // A failure no other target would fix (a 400...): returned once no
    // other attempt is running.
    let mut fatal: Option<GatewayError> = None;
    let mut rest = candidates.iter();
    let mut running: Vec<Running<'s, 'c>> = Vec::new();
    let mut futures: Vec<Pin<Box<Fut>>> = Vec::new();
    let mut started_count = 0;
    let mut hedged = false;
    let mut hedges_left = hedge.as_ref().map_or(0, |h| usize::from(h.hedge.max_extra));
    // The next candidate whose breaker lets it be tried (taking a half-open
    // breaker's probe); `None` when none is left.
    let mut start = |running: &mut Vec<Running<'s, 'c>>, futures: &mut Vec<Pin<Box<Fut>>>| {
        for cand in rest.by_ref() {
            let key = target_key(cand.target.name, cand.target.model);
            let now = (ctx.clock)();
            let Some(probe) = ctx.health.claim(&key, now) else {
                // Another request holds this half-open breaker's probe.
                continue;
            };
            running.push(Running {
                cand,
                key,
                started: now,
                probe,
            });
            futures.push(Box::pin(attempt(cand)));
            return true;
        }
        false
    };
    loop {
        if futures.is_empty() {
            if let Some(e) = fatal {
                return Err(e);
            }
            if !start(&mut running, &mut futures) {
                break;
            }
            started_count += 1;
        }
        // When to start the next candidate beside the newest attempt.
        let hedge_at = match &hedge {
            Some(h) if hedges_left > 0 && fatal.is_none() => {
                running.last().map(|r| r.started + h.delay(ctx, &r.key))
            }
            _ => None,
        };
        let done = match (hedge_at, &hedge) {
            (Some(at), Some(Hedging { sleep, .. })) => {
                let wait = at.saturating_sub((ctx.clock)()).max(1);
                match futures::future::select(
                    futures::future::select_all(std::mem::take(&mut futures)),
                    sleep(wait),
                )
                .await
                {
                    Either::Left(((out, i, others), _)) => {
                        futures = others;
                        Some((out, i))
                    }
                    Either::Right(((), all)) => {
                        futures = all.into_inner();
                        None
                    }
                }
            }
            _ => {
                let (out, i, others) =
                    futures::future::select_all(std::mem::take(&mut futures)).await;
                futures = others;
                Some((out, i))
            }
        };
        let Some((out, i)) = done else {
            // No answer yet: the next candidate runs beside.
            hedges_left -= 1;
            if start(&mut running, &mut futures) {
                started_count += 1;
                hedged = true;
            } else {
                hedges_left = 0;
            }
            continue;
        };
        // `select_all` took the finished future out with `swap_remove`.
        let r = running.swap_remove(i);
        let t = &r.cand.target;
        match out {
            Ok(mut reply) => {
                // The others lose: dropped, their fetches aborted; they
                // leave no verdict on their targets' health, only (for a
                // stream) how long they had waited for a first token, a
                // lower bound of their time to first byte.
                drop(futures);
                let now = (ctx.clock)();
                let stream = matches!(reply.body, ReplyBody::Stream(_) | ReplyBody::Native(_));
                let losers: Vec<HedgeLoser> = running
                    .iter()
                    .map(|l| {
                        if l.probe {
                            ctx.health.release(&l.key);
                        }
                        if stream {
                            ctx.health.record_unanswered(
                                &l.key,
                                now,
                                now.saturating_sub(l.started),
                            );
                        }
                        HedgeLoser {
                            provider: l.cand.target.name.to_owned(),
                            model: l.cand.target.model.to_owned(),
                            pricing: l
                                .cand
                                .target
                                .provider
                                .model_info(l.cand.target.model)
                                .pricing(),
                        }
                    })
                    .collect();
                let first_byte = now.saturating_sub(r.started);
                ctx.health.record_success(&r.key, now, first_byte);
                if stream {
                    ctx.health.record_first_token(&r.key, first_byte);
                }
                let served = Served {
                    provider: t.name.to_owned(),
                    model: t.model.to_owned(),
                    pricing: t.provider.model_info(t.model).pricing(),
                    attempts: started_count,
                    hedged,
                    hedge_losers: losers,
                    failed: failed
                        .iter()
                        .map(|(a, _)| (a.provider.clone(), a.model.clone()))
                        .collect(),
                };
                label(&mut reply, t, &served);
                reply.served = Some(served);
                return Ok(reply);
            }
            Err(e) if e.is_retryable() => {
                // A 429 cools the target for its Retry-After, within the cap.
                let cool = match &e {
                    GatewayError::Upstream {
                        status: 429,
                        retry_after,
                        ..
                    } => Some(retry_after.unwrap_or(1).min(policy.retry_after_cap_s) * 1000),
                    _ => None,
                };
                ctx.health
                    .record_failure(&r.key, (ctx.clock)(), cool, &policy.breaker);
                failed.push((e.to_attempt(t.name, t.model), e));
            }
            Err(e) => {
                if r.probe {
                    ctx.health.release(&r.key);
                }
                // No other target is started for it; one already running
                // may still answer.
                fatal.get_or_insert(e);
            }
        }
    }
    // One failed target: its own error says the most (a 429 stays a 429
    // with its Retry-After). Several: list them all.
    match failed.len() {
        0 => Err(GatewayError::Unavailable {
            message: format!(
                "Every target of `{model}` is being probed after failures; retry shortly."
            ),
            retry_after: Some(1),
            rate_limited: false,
        }),
        1 => Err(failed.remove(0).1),
        _ => Err(GatewayError::AllTargetsFailed {
            attempts: failed.into_iter().map(|(a, _)| a).collect(),
        }),
    }
}

/// A model's hedge, as one request runs it.
struct Hedging<'h> {
    hedge: &'h Hedge,
    sleep: &'h dyn Fn(u64) -> Sleep,
    /// The answer is streamed: the delay is to a first token.
    streamed: bool,
}

impl Hedging<'_> {
    /// How long an attempt runs alone before the next candidate is started
    /// beside it: for a stream, the configured percentile of its target's
    /// time to first token when this location has enough samples of it;
    /// else (a whole answer, whose time is its whole generation's, or too
    /// few samples) `after_ms`, else [`DEFAULT_HEDGE_AFTER_MS`].
    fn delay(&self, ctx: &Ctx<'_>, key: &str) -> u64 {
        let h = self.hedge;
        h.after_percentile
            .filter(|_| self.streamed)
            .and_then(|p| ctx.health.ttfb_percentile_ms(key, p, (ctx.clock)()))
            .or(h.after_ms)
            .unwrap_or(DEFAULT_HEDGE_AFTER_MS)
    }
}

/// A hedge's delay when its percentile is not known yet and no `after_ms`
/// is given.
pub const DEFAULT_HEDGE_AFTER_MS: u64 = 2_000;

/// The headers of a proxied answer: who served it, after how many attempts,
/// and whether a hedge ran (which attempts lost it).
fn label(reply: &mut Reply, t: &Target<'_>, served: &Served) {
    reply
        .headers
        .push(("x-gateway-provider", served.provider.clone()));
    reply
        .headers
        .push(("x-gateway-model", served.model.clone()));
    reply
        .headers
        .push(("x-gateway-attempts", served.attempts.to_string()));
    if let Some(region) = t
        .provider
        .region
        .as_ref()
        .or(t.provider.jurisdiction.as_ref())
    {
        reply.headers.push(("x-gateway-region", region.clone()));
    }
    if served.hedged {
        let lost: Vec<String> = served
            .hedge_losers
            .iter()
            .map(|l| format!("{}/{}", l.provider, l.model))
            .collect();
        let lost = if lost.is_empty() {
            "none".to_owned()
        } else {
            lost.join(",")
        };
        reply
            .headers
            .push(("x-gateway-hedge", format!("lost={lost}")));
    }
}

/// A hedged attempt that lost: aborted once another answered. Its input is
/// charged (a provider bills what it read).
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeLoser {
    /// Provider name from the config.
    pub provider: String,
    /// The provider-side model.
    pub model: String,
    /// Its prices.
    pub pricing: Pricing,
}

/// What to charge for an answer, and its usage record: the provider's
/// reported usage at the serving target's prices; when usage never arrived
/// (a cut stream, a client that went away), an estimate of what was sent;
/// for a leg that did not end whole (`finished` false: cut, failed, gone,
/// or continued by another target), never less than that estimate's output
/// ([`continuation::leg_tokens`]). Nothing is charged when no target
/// answered.
pub fn settlement(
    acc: &Accounting,
    served: Option<&Served>,
    usage: Option<Usage>,
    events: u64,
    finished: bool,
    error: bool,
) -> (Money, UsageEvent) {
    let tokens = match served {
        None => Tokens::default(),
        Some(_) => continuation::leg_tokens(usage.as_ref(), acc.input_estimate, events, finished),
    };
    let mut cost = served.map_or(Money::ZERO, |s| s.pricing.cost_of(tokens));
    // A hedged attempt that lost read the request before it was aborted:
    // its input is charged, at its own target's prices (the same input as
    // the winner's, or the estimate when the winner reported none), and
    // counted with the tokens used.
    let mut losers_input = 0;
    for loser in served.map_or(&[][..], |s| &s.hedge_losers) {
        let input = Tokens {
            input: if tokens.input > 0 {
                tokens.input
            } else {
                acc.input_estimate
            },
            ..Tokens::default()
        };
        losers_input += input.input;
        cost = cost.plus(loser.pricing.cost_of(input));
    }
    let event = UsageEvent {
        model: acc.model.clone(),
        input_tokens: tokens.input + losers_input,
        output_tokens: tokens.output,
        cached_tokens: tokens.cache_read,
        error,
        cache_hit: false,
    };
    (cost, event)
}

/// Adds a continued stream's second leg to its settlement: its tokens at
/// its own target's prices (an estimate when it reported no usage: the
/// input estimate plus the text it was given, an output token an event).
/// `finished`: the leg, and so the answer, ended whole.
pub fn add_continued(
    acc: &Accounting,
    leg: &continuation::Continued,
    finished: bool,
    cost: &mut Money,
    event: &mut UsageEvent,
) {
    let input = acc.input_estimate + leg.prefix_bytes.div_ceil(4);
    let t = continuation::leg_tokens(leg.usage.as_ref(), input, leg.events, finished);
    *cost = cost.plus(leg.served.pricing.cost_of(t));
    event.input_tokens += t.input;
    event.output_tokens += t.output;
    event.cached_tokens += t.cache_read;
}

/// The usage record of an answer from the response cache: a request that
/// cost nothing and used no tokens (no provider saw it).
pub fn cache_hit_event(acc: &Accounting) -> UsageEvent {
    UsageEvent {
        model: acc.model.clone(),
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        error: false,
        cache_hit: true,
    }
}

/// Which target answered, and at what prices.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// Provider name from the config.
    pub provider: String,
    /// The provider-side model.
    pub model: String,
    /// Its prices.
    pub pricing: Pricing,
    /// Attempts it took (1 = the first candidate answered), hedged ones
    /// included.
    pub attempts: usize,
    /// A hedge started another target beside a slow one.
    pub hedged: bool,
    /// Targets that failed before it answered, `(provider, model)`.
    pub failed: Vec<(String, String)>,
    /// Hedged attempts that lost to this one.
    pub hedge_losers: Vec<HedgeLoser>,
}

/// One attempt at one candidate, within the policy's timeouts: a chat
/// completion, or another client protocol's request ([`Call`] says, per
/// step, what the client's protocol and the target's wire format need).
async fn try_chat<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    policy: &Failover,
    call: Call<'_>,
    cand: &Candidate<'_>,
    on_stream_end: &Cell<Option<StreamEnd>>,
) -> Result<Reply, GatewayError> {
    let target = &cand.target;
    if let Some(answer) = call.local_answer() {
        let (body, usage) = answer?;
        let mut reply = Reply::json(200, body);
        reply.usage = Some(usage);
        return Ok(reply);
    }
    let attempt_start = (ctx.clock)();
    let signing = providers::Signing {
        now_s: attempt_start / 1000,
        secret: ctx.secret,
    };
    // The key, or (Vertex AI) an OAuth token obtained with it: a network
    // call within the connect timeout only when no token is cached.
    let api_key = cand.api_key.as_deref();
    let key = match providers::ready_credential(target, api_key, signing.now_s) {
        Some(key) => key,
        None => {
            let exchange = providers::credential(upstream, target, api_key, signing.now_s);
            within(upstream, policy.connect_timeout_ms, exchange)
                .await
                .ok_or_else(|| timeout(target, "access token", policy.connect_timeout_ms))??
        }
    };
    let up_req = call.build_request(target, key.as_deref(), signing)?;
    if !call.stream() {
        let body = answer_within(upstream, ctx, policy, cand, up_req).await?;
        let (body, usage) = call.answer(target, body, ctx.now_ms / 1000)?;
        let mut reply = Reply::json(200, body);
        reply.usage = usage;
        return Ok(reply);
    }
    // A stream's headers come at once: a provider silent past the connect
    // timeout is not answering.
    let resp = within(
        upstream,
        policy.connect_timeout_ms,
        send_for_success(upstream, ctx, policy, cand, up_req, None),
    )
    .await
    .ok_or_else(|| timeout(target, "response headers", policy.connect_timeout_ms))??;
    let translator = call.stream_translator(target, ctx.now_ms / 1000);
    let mut translated =
        Translated::new(target.name, resp.body, translator).with_native(resp.native);
    // Hold chunks until one carries output (time to first token), so a
    // provider that fails before its first token is replaced unseen.
    // Per attempt: a replacement target gets the whole allowance.
    let deadline = attempt_start + policy.first_byte_timeout_ms;
    let mut held: Vec<u8> = Vec::new();
    loop {
        let left = deadline.saturating_sub((ctx.clock)());
        let next = within(upstream, left, translated.next())
            .await
            .ok_or_else(|| timeout(target, "first token", policy.first_byte_timeout_ms))?;
        match next {
            Some(Ok(bytes)) => {
                held.extend_from_slice(&bytes);
                if translated.has_output() {
                    break;
                }
            }
            Some(Err(e)) => return Err(redact(e, cand.api_key.as_deref())),
            None if held.is_empty() => {
                return Err(GatewayError::UpstreamInvalidResponse {
                    provider: target.name.to_owned(),
                    message: "empty stream".into(),
                });
            }
            None => break,
        }
    }
    let elapsed = (ctx.clock)().saturating_sub(ctx.now_ms);
    let left = policy.total_timeout_ms.saturating_sub(elapsed);
    let limit = timeout(target, "end of stream", policy.total_timeout_ms);
    // Committed, and nothing left to translate (OpenAI to OpenAI): the rest
    // is piped by the runtime, not carried through here chunk by chunk.
    if let Some(detached) = translated.detach() {
        let (provider, key) = (target.name.to_owned(), cand.api_key.clone());
        let render_error = Box::new(move |data: &str| {
            let e = providers::openai::error_from_body(&provider, 500, None, data.as_bytes());
            error_event(&redact(e, key.as_deref()))
        });
        let native = native_stream(
            held,
            &mut translated,
            detached,
            on_stream_end.take(),
            (left, limit),
            render_error,
        );
        return Ok(stream_reply(ReplyBody::Native(Box::new(native))));
    }
    let total = upstream.sleep(left);
    let body = into_client_stream(held, translated, on_stream_end.take(), Some((total, limit)));
    Ok(stream_reply(ReplyBody::Stream(body)))
}

/// Sends a non-streamed request and reads its whole answer, both within
/// the first-byte timeout: providers write a whole answer's headers only
/// when the answer is ready, so a long generation is not a silent provider.
/// One timer for the attempt.
async fn answer_within<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    policy: &Failover,
    cand: &Candidate<'_>,
    up_req: UpstreamRequest,
) -> Result<Vec<u8>, GatewayError> {
    let target = &cand.target;
    let ms = policy.first_byte_timeout_ms;
    // The runtime's own timer when it has one (no task, no closure).
    let native = upstream.enforces_deadlines().then_some(ms);
    let answer = async {
        let resp = send_for_success(upstream, ctx, policy, cand, up_req, native).await?;
        resp.collect(RESPONSE_BODY_LIMIT)
            .await
            .map_err(|message| unreachable_or_late(target, message, ms))
    };
    if native.is_some() {
        return answer.await;
    }
    within(upstream, ms, answer)
        .await
        .ok_or_else(|| timeout(target, "complete answer", ms))?
}

/// A transport failure, or the runtime's deadline passing (a timeout).
fn unreachable_or_late(target: &Target<'_>, message: String, ms: u64) -> GatewayError {
    if message == DEADLINE_PASSED {
        timeout(target, "complete answer", ms)
    } else {
        GatewayError::UpstreamUnreachable {
            provider: target.name.to_owned(),
            message,
        }
    }
}

/// One embeddings attempt at one candidate, within the policy's timeouts.
async fn try_embeddings<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    policy: &Failover,
    req: &EmbeddingsRequest<'_>,
    cand: &Candidate<'_>,
) -> Result<Reply, GatewayError> {
    let target = &cand.target;
    let up_req = providers::build_embeddings_request(target, req, cand.api_key.as_deref())?;
    let body = answer_within(upstream, ctx, policy, cand, up_req).await?;
    let (body, usage) = providers::embeddings_response(target, req, body)?;
    let mut reply = Reply::json(200, body);
    reply.usage = usage;
    Ok(reply)
}

/// Sends a candidate's request; a non-2xx answer becomes the provider's
/// error, with its key redacted should the provider echo it. The caller
/// bounds the wait.
async fn send_for_success<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    policy: &Failover,
    cand: &Candidate<'_>,
    up_req: UpstreamRequest,
    deadline: Option<u64>,
) -> Result<UpstreamResponse, GatewayError> {
    let target = &cand.target;
    let mut resp = send(upstream, target, up_req, ctx.now_ms, deadline).await?;
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    let status = resp.status;
    let retry_after = resp.retry_after_secs();
    let headers = std::mem::take(&mut resp.headers);
    let read = resp.collect(ERROR_BODY_LIMIT);
    let body = match deadline {
        Some(_) => read.await.ok(),
        None => within(upstream, policy.first_byte_timeout_ms, read)
            .await
            .and_then(Result::ok),
    }
    .unwrap_or_default();
    let e = providers::error_from_response(target, status, &headers, retry_after, &body);
    Err(redact(e, cand.api_key.as_deref()))
}

/// The error of a phase that took longer than `ms`.
fn timeout(target: &Target<'_>, phase: &'static str, ms: u64) -> GatewayError {
    GatewayError::Timeout {
        provider: target.name.to_owned(),
        phase,
        ms,
    }
}

/// Runs `fut` unless `ms` pass first (`None` then). Dropping the losing
/// future cancels it; the edge aborts the fetch behind it.
async fn within<U: Upstream, T>(upstream: &U, ms: u64, fut: impl Future<Output = T>) -> Option<T> {
    if ms == 0 {
        return None; // the allowance is already spent
    }
    let fut = std::pin::pin!(fut);
    match futures::future::select(fut, upstream.sleep(ms)).await {
        futures::future::Either::Left((value, _)) => Some(value),
        futures::future::Either::Right(((), _)) => None,
    }
}

/// Sends through the upstream (with the runtime's own `deadline`, when
/// given), or to the in-worker demo model.
async fn send<U: Upstream>(
    upstream: &U,
    target: &Target<'_>,
    req: UpstreamRequest,
    now_ms: u64,
    deadline: Option<u64>,
) -> Result<UpstreamResponse, GatewayError> {
    if target.provider.kind == ProviderKind::Mock {
        return Ok(mock::respond(&req, now_ms / 1000));
    }
    // Trust (issue 14): only allow-listed headers leave for a provider.
    let req = crate::trust::headers::allow_listed(req, target.provider);
    let sent = match deadline {
        Some(ms) => upstream.send_until(req, ms).await,
        None => upstream.send(req).await,
    };
    sent.map_err(|message| match deadline {
        Some(ms) => unreachable_or_late(target, message, ms),
        None => GatewayError::UpstreamUnreachable {
            provider: target.name.to_owned(),
            message,
        },
    })
}

fn stream_reply(body: ReplyBody) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            (
                "content-type",
                "text/event-stream; charset=utf-8".to_owned(),
            ),
            ("cache-control", "no-cache".to_owned()),
        ],
        body,
        usage: None,
        served: None,
        error: None,
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
