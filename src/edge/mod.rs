//! The Workers runtime glue: the only module that imports `worker`.
//!
//! - this file        — the fetch handler and the request path
//! - `admin`          — `/admin/*`: config and virtual keys
//! - `config_cache`   — routing config: isolate cache -> KV -> bundled default
//! - `key_client`     — calls to the per-key Durable Objects
//! - `key_object`     — the per-key Durable Object (a shell over `limits`)
//! - `upstream`       — [`crate::http::Upstream`] over the Workers `fetch`

mod admin;
mod config_cache;
mod key_client;
mod key_object;
mod upstream;

use futures::StreamExt;
use futures::channel::oneshot;
use serde::Serialize;
use worker::{Context, Date, Env, Headers, Request, Response, console_log, event};

use crate::config::Location;
use crate::error::GatewayError;
use crate::gateway::{
    self, Accounting, Caller, Ctx, Reply, ReplyBody, Route, Served, StreamEnd, StreamOutcome,
};
use crate::keys::{self, KeyRef};
use crate::limits::{Admit, Command, Money, Reply as KeyReply, Settle, UsageEvent};
use crate::routing::{self, Health, Origin};

/// Secret with the static gateway keys, comma-separated.
const GATEWAY_KEYS: &str = "GATEWAY_KEYS";
/// Var that enables test-only routes and the geo override; never set it in
/// production.
const TEST_HOOKS: &str = "GATEWAY_TEST_HOOKS";
/// With test hooks on, this header stands in for `request.cf`'s location
/// (local dev's `cf` is a fixed placeholder): JSON with `country`,
/// `continent`, `eu`, `lat`, `lon`, `colo`.
const GEO_OVERRIDE: &str = "x-gateway-test-geo";

thread_local! {
    /// What this isolate has learned about each target (breakers, cooling,
    /// time to first byte). Per isolate: nothing to coordinate per request.
    /// Leaked once per isolate so requests can hold a plain reference.
    static HEALTH: &'static Health = Box::leak(Box::new(Health::new()));
}

/// The fetch handler. The request path of a chat completion, step by step:
///
/// 1. **route** — method + path to an endpoint, 404/405 otherwise
///    ([`gateway::route`]).
/// 2. **auth** — the key from `Authorization: Bearer` or `x-api-key`:
///    a static key checked in constant time, or a virtual key whose object
///    will verify it ([`authenticate`]). `/admin/*` checks `ADMIN_TOKEN`
///    instead ([`admin::handle`]).
/// 3. **config and body, concurrently** — the routing config from the
///    isolate cache or KV ([`config_cache::current`]), the body with the
///    config's size limit ([`read_body`]).
/// 4. **parse** — the request, its model checked, its worst-case cost over
///    every target it could reach ([`gateway::prepare`],
///    [`gateway::Prepared::worst_case`]).
/// 5. **admit** — for a virtual key, one call to its Durable Object: key
///    valid, model in scope, rate limits, budget reserved; it returns the
///    key's tier and regions. A static key has no limits, so it skips this
///    call (`chat`).
/// 6. **route** — candidates best-first for this caller: rules, data
///    residency from `request.cf` and the key, capabilities, strategy,
///    breakers ([`gateway::Prepared::route`], [`origin`]).
/// 7. **translate, send, fail over** — each candidate until one answers,
///    within the timeouts ([`gateway::dispatch`]).
/// 8. **stream** — the answer passed to the client chunk by chunk, with the
///    `x-ratelimit-*` headers ([`into_response`]).
/// 9. **settle** — off the request path (`waitUntil`): the reservation
///    replaced by the actual cost when the answer (or the stream) ends (a
///    static key's request recorded), and one JSON log line ([`settle`]).
#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let request_id = new_request_id();
    let reply = match handle(req, &env, &ctx, &request_id).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e),
    };
    into_response(reply, &request_id)
}

async fn handle(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    request_id: &str,
) -> Result<Reply, GatewayError> {
    // 1. route
    let method = req.method().to_string();
    let path = req.path();
    let route = gateway::route(&method, &path)?;
    match route {
        Route::Health => return Ok(Reply::json(200, br#"{"status":"ok"}"#.to_vec())),
        Route::Admin(admin) => return admin::handle(&mut req, env, admin, &method).await,
        Route::TestPanic => {
            if test_hooks(env) {
                // Proves a panic costs one request, not the isolate.
                panic!("panic requested by the test hook");
            }
            return Err(GatewayError::NotFound { path });
        }
        Route::ChatCompletions
        | Route::Embeddings
        | Route::Models
        | Route::Model(_)
        | Route::Usage => {}
    }
    // 2. auth
    let key = authenticate(&req, env)?;
    match route {
        Route::ChatCompletions => {
            Ok(chat(&mut req, env, ctx, &key, request_id, gateway::prepare).await)
        }
        Route::Embeddings => Ok(chat(
            &mut req,
            env,
            ctx,
            &key,
            request_id,
            gateway::prepare_embeddings,
        )
        .await),
        Route::Models | Route::Model(_) => models(env, &key, &route).await,
        Route::Usage => match key_client::call(
            env,
            &key.object_name(),
            &Command::Usage { auth: key.auth() },
        )
        .await?
        {
            KeyReply::Usage(report) => Ok(Reply::json_value(200, &report)),
            KeyReply::Denied(d) => Err(gateway::denial_to_error(&d, "")),
            other => Err(key_client::unexpected(other)),
        },
        Route::Health | Route::Admin(_) | Route::TestPanic => Err(GatewayError::Internal {
            message: "route handled earlier".into(),
        }),
    }
}

/// `POST /v1/chat/completions`, and `POST /v1/embeddings` (by `prepare`),
/// steps 3 to 9.
async fn chat(
    req: &mut Request,
    env: &Env,
    ctx: &Context,
    key: &KeyRef,
    request_id: &str,
    prepare: gateway::Prepare,
) -> Reply {
    let started = now_ms();
    // 3. config and body, concurrently
    let (config, body) = futures::join!(config_cache::current(env), read_body(req));
    let body = match body {
        Ok(b) => b,
        Err(e) => return Reply::error(&e),
    };
    if body.len() as u64 > config.limits.max_body_bytes {
        return Reply::error(&GatewayError::BodyTooLarge {
            limit: config.limits.max_body_bytes,
        });
    }
    let secret = |name: &str| var(env, name);
    let gctx = Ctx {
        now_ms: started,
        clock: &now_ms,
        secret: &secret,
        health: HEALTH.with(|h| *h),
    };
    // 4. parse
    let mut prepared = match prepare(&config, &gctx, &body) {
        Ok(p) => p,
        Err(e) => return Reply::error(&e),
    };
    let (reserve, tokens) = prepared.worst_case();
    // 5. admit: a virtual key's object decides (key valid, scope, limits,
    // budget). A static key has no limits: nothing to decide, so no call on
    // the request path; its request is counted when it settles.
    let object = key.object_name();
    let mut admitted = Admitted::default();
    if let KeyRef::Virtual { .. } = key {
        let admit = Command::Admit(Admit {
            auth: key.auth(),
            model: prepared.model().to_owned(),
            reserve,
            tokens,
        });
        admitted = match key_client::call(env, &object, &admit).await {
            Ok(KeyReply::Admitted {
                reservation,
                rate,
                tier,
                regions,
            }) => Admitted {
                reservation: Some(reservation),
                rate,
                tier,
                regions,
            },
            Ok(KeyReply::Denied(d)) => {
                let mut reply = Reply::error(&gateway::denial_to_error(&d, prepared.model()));
                reply.headers.extend(gateway::rate_headers(&d.rate));
                return reply;
            }
            Ok(other) => return Reply::error(&key_client::unexpected(other)),
            Err(e) => return Reply::error(&e),
        };
    }
    let Admitted {
        reservation,
        rate,
        tier,
        regions,
    } = admitted;
    // 6. route
    let origin = origin(req, env);
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let caller = Caller {
        origin: &origin,
        header: &header,
        key_id: key.id(),
        tier: tier.as_deref(),
        jurisdictions: regions.as_deref(),
        random: random_unit(),
    };
    // 7. translate, send, fail over
    let (end_tx, end_rx) = oneshot::channel::<StreamOutcome>();
    let on_end: StreamEnd = Box::new(move |outcome| {
        let _ = end_tx.send(outcome);
    });
    let streaming = prepared.stream();
    let result = match prepared.route(&gctx, &caller) {
        Ok(()) => gateway::dispatch(&upstream::FetchUpstream, &gctx, &prepared, Some(on_end)).await,
        Err(e) => Err(e),
    };
    // 9. settle, off the request path (a refused route releases the reservation)
    let mut pending = Settlement {
        env: env.clone(),
        object,
        reservation,
        accounting: prepared.accounting(),
        key_id: key.id().to_owned(),
        request_id: request_id.to_owned(),
        served: None,
        status: 200,
        started_ms: started,
        first_byte_ms: now_ms() - started,
        stream: streaming,
    };
    let mut reply = match result {
        Ok(reply) => {
            pending.served = reply.served.clone();
            let usage = reply.usage;
            if matches!(reply.body, ReplyBody::Stream(_)) {
                ctx.wait_until(async move {
                    let outcome = end_rx.await.ok();
                    let complete = outcome.as_ref().is_some_and(|o| o.complete);
                    let (usage, events) = outcome.map_or((None, 0), |o| (o.usage, o.events));
                    settle(pending, usage, events, !complete).await;
                });
            } else {
                ctx.wait_until(settle(pending, usage, 0, false));
            }
            reply
        }
        Err(e) => {
            pending.status = e.status();
            ctx.wait_until(settle(pending, None, 0, true));
            Reply::error(&e)
        }
    };
    // 8. stream (the caller turns the reply into a response)
    reply.headers.extend(gateway::rate_headers(&rate));
    reply
}

/// What admission granted.
#[derive(Default)]
struct Admitted {
    /// The reservation to settle; `None` for a static key (recorded instead).
    reservation: Option<u64>,
    rate: crate::limits::RateInfo,
    tier: Option<String>,
    regions: Option<Vec<String>>,
}

/// What settling one request needs, owned so it can outlive the request.
struct Settlement {
    env: Env,
    object: String,
    reservation: Option<u64>,
    accounting: Accounting,
    key_id: String,
    request_id: String,
    served: Option<Served>,
    status: u16,
    started_ms: u64,
    first_byte_ms: u64,
    stream: bool,
}

/// One structured log line per request.
#[derive(Serialize)]
struct UsageLog<'a> {
    event: &'static str,
    request_id: &'a str,
    key: &'a str,
    model: &'a str,
    provider: Option<&'a str>,
    target_model: Option<&'a str>,
    attempts: usize,
    status: u16,
    stream: bool,
    error: bool,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    cost_usd: Money,
    latency_ms: u64,
    first_byte_ms: u64,
}

/// Replaces the reservation with the actual cost and logs the request.
async fn settle(s: Settlement, usage: Option<crate::api::Usage>, events: u64, error: bool) {
    let (cost, event): (Money, UsageEvent) =
        gateway::settlement(&s.accounting, s.served.as_ref(), usage, events, error);
    let log = UsageLog {
        event: "request",
        request_id: &s.request_id,
        key: &s.key_id,
        model: &s.accounting.model,
        provider: s.served.as_ref().map(|x| x.provider.as_str()),
        target_model: s.served.as_ref().map(|x| x.model.as_str()),
        attempts: s.served.as_ref().map_or(0, |x| x.attempts),
        status: s.status,
        stream: s.stream,
        error,
        input_tokens: event.input_tokens,
        output_tokens: event.output_tokens,
        cached_tokens: event.cached_tokens,
        cost_usd: cost,
        latency_ms: now_ms() - s.started_ms,
        first_byte_ms: s.first_byte_ms,
    };
    if let Ok(line) = serde_json::to_string(&log) {
        console_log!("{line}");
    }
    let command = match s.reservation {
        Some(reservation) => Command::Settle(Settle {
            reservation,
            cost,
            usage: event,
        }),
        None => Command::Record { cost, usage: event },
    };
    if let Err(e) = key_client::call(&s.env, &s.object, &command).await {
        // The reservation expires and is charged as reserved: never less.
        worker::console_error!("settle failed for {}: {e}", s.request_id);
    }
}

/// `GET /v1/models` and `/v1/models/{id}`: what the key may use.
async fn models(env: &Env, key: &KeyRef, route: &Route) -> Result<Reply, GatewayError> {
    let check = Command::Check { auth: key.auth() };
    let object = key.object_name();
    let (config, checked) = futures::join!(
        config_cache::current(env),
        key_client::call(env, &object, &check)
    );
    let scope = match checked? {
        KeyReply::Allowed { allowed_models } => allowed_models,
        KeyReply::Denied(d) => return Err(gateway::denial_to_error(&d, "")),
        other => return Err(key_client::unexpected(other)),
    };
    let in_scope = |id: &str| scope.as_ref().is_none_or(|m| m.iter().any(|x| x == id));
    let secret = |name: &str| var(env, name);
    match route {
        Route::Model(id) if in_scope(id) => Ok(Reply::json_value(
            200,
            &routing::get_model(&config, id, &secret)?,
        )),
        Route::Model(id) => Err(GatewayError::ModelNotFound { model: id.clone() }),
        _ => {
            let mut list = routing::list_models(&config, &secret);
            list.data.retain(|m| in_scope(&m.id));
            Ok(Reply::json_value(200, &list))
        }
    }
}

/// Classifies the presented key (step 2). Virtual keys are verified by
/// their object at admission.
fn authenticate(req: &Request, env: &Env) -> Result<KeyRef, GatewayError> {
    let h = req.headers();
    let authorization = h.get("authorization").ok().flatten();
    let x_api_key = h.get("x-api-key").ok().flatten();
    let Some(key) = keys::presented_key(authorization.as_deref(), x_api_key.as_deref()) else {
        return Err(GatewayError::Unauthorized {
            message: "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
                .into(),
        });
    };
    keys::resolve(key, &var(env, GATEWAY_KEYS).unwrap_or_default()).ok_or_else(|| {
        GatewayError::Unauthorized {
            message: "Incorrect API key provided.".into(),
        }
    })
}

/// Reads the whole body. The config's limit is checked by the caller; this
/// cap bounds memory before the config is known.
async fn read_body(req: &mut Request) -> Result<Vec<u8>, GatewayError> {
    const HARD_CAP: u64 = 64 * 1024 * 1024;
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > HARD_CAP) {
        return Err(GatewayError::BodyTooLarge { limit: HARD_CAP });
    }
    let failed = |e: worker::Error| GatewayError::InvalidRequest {
        message: format!("Reading the request body failed: {e}"),
        param: None,
    };
    if declared.is_some() {
        // One copy across the JS boundary: reading through a ByteStream
        // costs a reader, a promise and a copy per chunk (measured ~12 % of
        // the worker's CPU by scripts/bench).
        let body = req.bytes().await.map_err(failed)?;
        if body.len() as u64 > HARD_CAP {
            return Err(GatewayError::BodyTooLarge { limit: HARD_CAP });
        }
        return Ok(body);
    }
    // No length given (chunked): read incrementally so the cap holds.
    let mut stream = match req.stream() {
        Ok(s) => s,
        Err(_) => return Ok(Vec::new()), // no body
    };
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed)?;
        if (body.len() + chunk.len()) as u64 > HARD_CAP {
            return Err(GatewayError::BodyTooLarge { limit: HARD_CAP });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a [`Reply`] into a runtime response, streams passed through.
fn into_response(reply: Reply, request_id: &str) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in &reply.headers {
        headers.set(name, value)?;
    }
    headers.set("x-request-id", request_id)?;
    let response = match reply.body {
        ReplyBody::Full(bytes) => Response::from_bytes(bytes),
        ReplyBody::Stream(stream) => {
            Response::from_stream(stream.map(|item| item.map_err(worker::Error::RustError)))
        }
    };
    Ok(response?.with_status(reply.status).with_headers(headers))
}

/// Where the request comes from (step 6), read defensively from
/// `request.cf`: any field may be missing. With test hooks on, the
/// `x-gateway-test-geo` header stands in for it; production never reads it.
fn origin(req: &Request, env: &Env) -> Origin {
    if test_hooks(env)
        && let Some(json) = req.headers().get(GEO_OVERRIDE).ok().flatten()
    {
        return origin_from_json(&json);
    }
    let cf = worker::js_sys::Reflect::get(req.inner(), &"cf".into()).unwrap_or_default();
    let field = |name: &str| {
        worker::js_sys::Reflect::get(&cf, &name.into())
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    };
    let text = |name: &str| field(name).and_then(|v| v.as_string());
    let number =
        |name: &str| field(name).and_then(|v| v.as_f64().or_else(|| v.as_string()?.parse().ok()));
    let location = match (number("latitude"), number("longitude")) {
        (Some(lat), Some(lon)) => Some(Location { lat, lon }),
        _ => None,
    };
    Origin {
        colo: text("colo"),
        country: text("country"),
        continent: text("continent"),
        is_eu: text("isEUCountry").as_deref() == Some("1"),
        location,
    }
}

/// The geo override's JSON: `{"country","continent","eu","lat","lon","colo"}`.
fn origin_from_json(json: &str) -> Origin {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Geo {
        country: Option<String>,
        continent: Option<String>,
        eu: bool,
        lat: Option<f64>,
        lon: Option<f64>,
        colo: Option<String>,
    }
    let g: Geo = serde_json::from_str(json).unwrap_or_default();
    Origin {
        colo: g.colo,
        country: g.country,
        continent: g.continent,
        is_eu: g.eu,
        location: g.lat.zip(g.lon).map(|(lat, lon)| Location { lat, lon }),
    }
}

/// A uniform draw in `[0, 1)` from the runtime's CSPRNG (weighted routing).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether test-only behaviour is on. Vars are fixed for an isolate's life,
/// so this is read once, not on every request.
fn test_hooks(env: &Env) -> bool {
    thread_local! {
        static ON: std::cell::OnceCell<bool> = const { std::cell::OnceCell::new() };
    }
    ON.with(|on| *on.get_or_init(|| var(env, TEST_HOOKS).as_deref() == Some("1")))
}

/// A secret or plain var by name.
fn var(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
}

fn now_ms() -> u64 {
    Date::now().as_millis()
}

/// `req_` + 24 hex digits from the runtime's CSPRNG.
fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    // getrandom on Workers is crypto.getRandomValues, which does not fail;
    // a zero id would still be a valid (if unhelpful) id.
    let _ = getrandom::fill(&mut bytes);
    format!("req_{}", keys::hex(&bytes))
}
