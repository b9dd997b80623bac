//! The Workers runtime glue: the only module that imports `worker`.
//!
//! - this file        — the fetch handler and the request path
//! - `accounting`     — admission (leases, the key's object) and batched
//!   settlement: the I/O for [`crate::limits::local`]
//! - `admin`          — `/admin/*`: config and virtual keys
//! - `alerts_object`  — the alerts Durable Object: cooldown, signed webhook
//!   deliveries and their retries
//! - `analytics_object` — one Durable Object per UTC day of analytics
//! - `config_cache`   — routing config: isolate cache -> KV -> bundled default
//! - `driven`         — requests whose provider calls the entry module's
//!   JavaScript makes, the Rust future polled from JavaScript
//! - `key_client`     — calls to the per-key Durable Objects
//! - `key_object`     — the per-key Durable Object (a shell over `limits`),
//!   which also sends its budget alerts and analytics corrections
//! - `objects`        — calls to the analytics and alerts objects
//! - `observe`        — the isolate's analytics rollups, Analytics Engine
//!   points, request-log capture and batches, alerts raised: all sent by
//!   the accounting flusher
//! - `observe_admin`  — `/admin/analytics`, `/admin/logs`, `/admin/health`,
//!   `/admin/alerts`, `/admin/config/validate`
//! - `pipe`           — streamed bodies as native byte streams: the rest of a
//!   committed pass-through stream, piped by a small JavaScript reader (no
//!   chunk crosses into wasm), and the chunks of a stream Rust produces
//! - `response_cache` — response cache entries in the location's Cache API
//! - `shared_health`  — target health shared by a location's isolates (Cache API)
//! - `upstream`       — [`crate::http::Upstream`] over the runtime's `fetch`
//!   (and the Workers AI binding)
//! - `webcrypto`      — RS256 signatures (Google service-account JWTs)
//! - `workers_ai`     — Workers AI through the Worker's binding

mod accounting;
mod admin;
mod alerts_object;
mod analytics_object;
mod config_cache;
mod driven;
mod key_client;
mod key_object;
mod objects;
mod observe;
mod observe_admin;
mod pipe;
mod response_cache;
mod shared_health;
mod upstream;
mod webcrypto;
mod workers_ai;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use futures::StreamExt;
use futures::channel::oneshot;
use futures::future::{Either, select};
use serde::Serialize;
use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys;
use worker::{Context, Env, event};

use crate::cache::{self, Plan};
use crate::config::{Config, Location};
use crate::error::GatewayError;
use crate::gateway::continuation::{self, Continued};
use crate::gateway::{
    self, Accounting, Caller, Ctx, Reply, ReplyBody, Route, Served, StreamEnd, StreamOutcome,
    TestHook,
};
use crate::ingress::Ingress;
use crate::keys::{self, KeyRef};
use crate::limits::local::{Routing, Ticket};
use crate::limits::{Command, Money, Reply as KeyReply};
use crate::observe::analytics::RequestEvent;
use crate::observe::logs::LogMeta;
use crate::routing::{self, Health, Origin};
use crate::trust;

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
///    ([`gateway::route`]); a CORS preflight from a configured origin is
///    answered here ([`preflight`]).
/// 2. **auth** — the key from `Authorization: Bearer` or `x-api-key`:
///    a static key checked in constant time against the isolate's parsed
///    list, or a virtual key whose lease or object will verify it
///    ([`authenticate`]). `/admin/*` checks `ADMIN_TOKEN` instead
///    ([`admin::handle`]).
/// 3. **config and body, concurrently** — the routing config from the
///    isolate cache or KV ([`config_cache::current`]), the body with the
///    config's size limit ([`read_body`]).
/// 4. **parse** — the request, its model checked, its worst-case cost over
///    every target it could reach ([`gateway::prepare`],
///    [`gateway::Prepared::worst_case`]).
/// 5. **admit** — a virtual key's request is admitted from the isolate's
///    lease on the key's limits with no call at all; without a lease with
///    room, its Durable Object decides (and grants the next lease), either
///    first, or — when the key's last known headroom is ample — while the
///    upstream request is already on its way, the client seeing nothing
///    until it says yes. A static key has no limits: nothing to decide
///    ([`accounting::admit`]).
/// 6. **trust, route** — the data class (header, metadata, key) and PII
///    redaction, the request prepared again from its redacted body
///    ([`gateway::screen`]); then candidates best-first for this caller:
///    rules, data residency from `request.cf` and the key, data classes,
///    capabilities, strategy, breakers ([`gateway::Prepared::route`],
///    [`origin`]).
/// 7. **cache** — for a model with a `cache` policy, the exact-match
///    response cache of the location, keyed with the targets this caller
///    may use and the redacted request (it never holds originals): a hit is
///    answered here, charged nothing; a miss goes on, and its complete
///    answer is stored ([`gateway::Prepared::cache_plan`],
///    [`response_cache`]).
/// 8. **translate, send, fail over** — each candidate until one answers,
///    within the timeouts, a slow one hedged by the next when the model
///    says so ([`gateway::dispatch`]), raced with an overlapped admission
///    ([`dispatch_admitted`]). A whole answer that nothing abandons early
///    is fetched by the entry module's JavaScript, which polls this path
///    between calls ([`driven`]); the rest, from Rust ([`upstream`]).
/// 9. **stream** — the answer passed to the client chunk by chunk (PII
///    originals restored on the way, [`gateway::Prepared::restore`]), with
///    the `x-ratelimit-*` headers and, for a configured origin, CORS
///    headers ([`into_response`]).
/// 10. **settle** — off the request path (`waitUntil`): one JSON log line,
///    and the actual cost added to the key's batch, which the isolate sends
///    to the key's object about once a second with the others
///    ([`settle`], [`accounting::settle`]). Breakers and cool-downs this
///    request changed reach the location's other isolates the same way
///    ([`shared_health::sync`]). The same settlement joins the isolate's
///    analytics rollups, in memory ([`observe::record`]); breakers opened
///    and models found down raise alerts ([`observe::note_health`],
///    [`observe::model_failed`]); a request the config logs has its answer
///    copied as it passes ([`observe::capture`]). All of it is sent by the
///    same flusher, in batches.
///
/// The entry module (`entry.mjs`) drives this path through
/// [`driven::drive`]; this export is worker-build's own entry, which serves
/// the same path with wasm-bindgen's executor.
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    let (reply, request_id) = serve(req, env, ctx, None).await;
    into_response(reply, &request_id)
}

/// The request path above, to the reply and its request id. `body`: the
/// request's body when the entry module read it (a driven request,
/// [`driven`]); `None` reads it here.
async fn serve(
    req: web_sys::Request,
    env: Env,
    ctx: Context,
    body: Option<Vec<u8>>,
) -> (Reply, String) {
    // Trust: a client's request id in a safe format is kept; the Origin is
    // read only while CORS may be on (trust::headers).
    let (request_id, origin) = request_id_and_origin(&req);
    let url = req.url();
    let path = crate::http::url::path(&url);
    // Errors speak the client's protocol (Anthropic's shape on /v1/messages).
    let ingress = Ingress::of_path(path);
    let reply = match handle(req, path, &env, &ctx, &request_id, body).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e),
    };
    let mut reply = reply.for_client(ingress);
    if let Some(origin) = origin.filter(|o| config_cache::cors_allows(o)) {
        reply.headers.extend(trust::headers::cors_headers(&origin));
    }
    (reply, request_id)
}

/// The request id (the client's `x-request-id` when it is in a safe
/// format, else a new one) and, while CORS may be on, the `Origin`.
fn request_id_and_origin(req: &RawRequest) -> (String, Option<String>) {
    let headers = req.headers();
    let id = headers
        .get("x-request-id")
        .ok()
        .flatten()
        .and_then(|v| trust::headers::client_request_id(&v).map(str::to_owned))
        .unwrap_or_else(new_request_id);
    let origin = if config_cache::cors_may_be_on() {
        headers.get("origin").ok().flatten()
    } else {
        None
    };
    (id, origin)
}

/// A CORS preflight (`OPTIONS`) from an origin the config lists, for a
/// path that exists: 200 with the `Access-Control-Allow-*` headers. Any
/// other `OPTIONS` is routed as before (405 or 404): CORS is off by default.
async fn preflight(req: &RawRequest, env: &Env, path: &str) -> Option<Reply> {
    let config = config_cache::current(env).await;
    if config.cors.origins.is_empty() {
        return None;
    }
    let headers = req.headers();
    let origin = headers.get("origin").ok().flatten()?;
    if !config.cors.allows(&origin) {
        return None;
    }
    let method = headers
        .get("access-control-request-method")
        .ok()
        .flatten()
        .unwrap_or_else(|| "POST".to_owned());
    gateway::route(&method, path).ok()?;
    let requested = headers.get("access-control-request-headers").ok().flatten();
    let mut reply = Reply::json(200, Vec::new());
    reply.headers =
        trust::headers::preflight_headers(&origin, requested.as_deref(), config.cors.max_age_s);
    Some(reply)
}

/// The request as the runtime gives it: the raw `web_sys` object, not
/// `worker::Request`, whose conversion reads `cf`, the URL and the headers
/// whether the route needs them or not.
type RawRequest = web_sys::Request;

async fn handle(
    req: RawRequest,
    path: &str,
    env: &Env,
    ctx: &Context,
    request_id: &str,
    body: Option<Vec<u8>>,
) -> Result<Reply, GatewayError> {
    // 1. route
    let method = req.method();
    // CORS preflight (trust): answered only for the config's origins.
    if method == "OPTIONS"
        && let Some(reply) = preflight(&req, env, path).await
    {
        return Ok(reply);
    }
    let route = gateway::route(&method, path)?;
    match route {
        Route::Health => return Ok(Reply::json(200, br#"{"status":"ok"}"#.to_vec())),
        Route::Admin(admin) => {
            let mut req = worker::Request::from(req);
            return admin::handle(&mut req, env, admin, &method).await;
        }
        Route::Test(hook) => {
            if !test_hooks(env) {
                return Err(GatewayError::NotFound {
                    path: path.to_owned(),
                });
            }
            return test_hook(&worker::Request::from(req), env, hook).await;
        }
        Route::ChatCompletions
        | Route::Embeddings
        | Route::Messages
        | Route::CountTokens
        | Route::Responses
        | Route::Models
        | Route::Model(_)
        | Route::Usage => {}
    }
    // 2. auth
    let key = authenticate(&req, env)?;
    let prepare: Option<gateway::Prepare> = match route {
        Route::ChatCompletions => Some(gateway::prepare),
        Route::Messages => Some(gateway::prepare_messages),
        Route::CountTokens => Some(gateway::prepare_count_tokens),
        Route::Responses => Some(gateway::prepare_responses),
        Route::Embeddings => Some(gateway::prepare_embeddings),
        _ => None,
    };
    if let Some(prepare) = prepare {
        let body = Body {
            req: &req,
            read: body,
        };
        return Ok(chat(&req, env, ctx, &key, request_id, body, prepare).await);
    }
    match route {
        Route::Models | Route::Model(_) => models(env, &key, &route).await,
        Route::Usage => {
            let object = key.object_name();
            accounting::before_report(env, &object).await;
            match key_client::call(env, &object, &Command::Usage { auth: key.auth() }).await? {
                KeyReply::Usage(report) => Ok(Reply::json_value(200, &report)),
                KeyReply::Denied(d) => Err(gateway::denial_to_error(&d, "")),
                other => Err(key_client::unexpected(other)),
            }
        }
        Route::Health
        | Route::Admin(_)
        | Route::Test(_)
        | Route::ChatCompletions
        | Route::Messages
        | Route::CountTokens
        | Route::Responses
        | Route::Embeddings => Err(GatewayError::Internal {
            message: "route handled earlier".into(),
        }),
    }
}

/// `POST /v1/chat/completions`, and `POST /v1/embeddings` (by `prepare`),
/// steps 3 to 10.
async fn chat(
    req: &RawRequest,
    env: &Env,
    ctx: &Context,
    key: &KeyRef,
    request_id: &str,
    body: Body<'_>,
    prepare: gateway::Prepare,
) -> Reply {
    let started = now_ms();
    // 3. config and body, concurrently
    let (config, body) = futures::join!(config_cache::current(env), body.read());
    let body = match body {
        Ok(b) => b,
        Err(e) => return Reply::error(&e),
    };
    if body.len() as u64 > config.limits.max_body_bytes {
        return Reply::error(&GatewayError::BodyTooLarge {
            limit: config.limits.max_body_bytes,
        });
    }
    accounting::configure(&config);
    observe::configure(&config, env);
    let secret = |name: &str| secret(env, name);
    let gctx = Ctx {
        now_ms: started,
        clock: &now_ms,
        secret: &secret,
        health: HEALTH.with(|h| *h),
    };
    // 4. parse
    let prepared = match prepare(&config, &gctx, &body) {
        Ok(p) => p,
        Err(e) => return Reply::error(&e),
    };
    let (reserve, tokens) = prepared.worst_case();
    // 5. admit
    let (mut admitted, mut overlap) =
        match accounting::admit(env, ctx, key, prepared.model(), reserve, tokens).await {
            accounting::Decision::Go(a) => (Some(a), None),
            accounting::Decision::Overlap {
                routing,
                object,
                admit,
            } => (None, Some((routing, object, admit))),
            accounting::Decision::Refused(reply) => return reply,
        };
    let routing = match (&admitted, &overlap) {
        (Some(a), _) => a.routing.clone(),
        (None, Some((r, _, _))) => r.clone(),
        (None, None) => Default::default(),
    };
    let headers = req.headers();
    let header = |name: &str| headers.get(name).ok().flatten();
    // 6. trust, then route — data class and PII redaction (gateway::screen); a
    //    redacted request is prepared again from its redacted body, before
    //    routing and the cache: the cache key is the redacted request, and
    //    the cache never holds originals
    let key_trust = gateway::KeyTrust {
        data_class: routing.data_class.as_deref(),
        pii: routing.pii.as_ref(),
    };
    let mut redacted = Vec::new();
    let (mut prepared, screened) = gateway::screen(
        &config,
        &gctx,
        prepared,
        prepare,
        &mut redacted,
        &header,
        key_trust,
    );
    // Request logs: `None` (nothing copied) unless the config logs this
    // key or model. They keep what leaves the gateway: the redacted body,
    // and no body for a request refused for the personal data it carries.
    let logged: &[u8] = match &screened {
        Err(_) if !prepared.trust.pii_found.is_empty() => &[],
        _ => prepared.body(),
    };
    let log = observe::draft(&config, key.id(), prepared.model(), logged);
    // route (`request.cf` read only when routing needs it)
    let origin = if config.needs_origin(prepared.model()) {
        origin(req, env)
    } else {
        Origin::default()
    };
    let caller = Caller {
        origin: &origin,
        header: &header,
        key_id: key.id(),
        tier: routing.tier.as_deref(),
        jurisdictions: routing.regions.as_deref(),
        random: random_unit(),
    };
    let routed = screened.and_then(|()| prepared.route(&gctx, &caller));
    // 7. cache (a model with a `cache` policy, once routed): a hit is
    // answered here
    let scope = key.object_name();
    let asker = cache::Asker {
        key_id: &scope,
        team: routing.team.as_deref(),
        targets: "",
    };
    // (A request the trust step or routing refused has no targets to key
    // with: it bypasses the cache.)
    let (cache_state, store_at) = match prepared.cache_plan(&header, asker) {
        Plan::Off => (None, None),
        Plan::Bypass => (Some("bypass"), None),
        Plan::Use {
            key: k,
            ttl_s,
            lookup,
        } => {
            let url = response_cache::url(req, &k);
            if lookup && let Some(url) = &url {
                // An overlapped admission is decided beside the lookup.
                let hit = match overlap.take() {
                    Some((_, object, admit)) => {
                        let (hit, decided) = futures::join!(
                            response_cache::lookup(url),
                            accounting::decide_overlapped(env, ctx, &object, admit)
                        );
                        match decided {
                            Ok(a) => admitted = Some(a),
                            Err(refused) => return refused,
                        }
                        hit
                    }
                    None => response_cache::lookup(url).await,
                };
                if let Some(entry) = hit {
                    let mut reply = prepared.cached_reply(&entry);
                    let a = admitted.take();
                    if let Some(a) = &a {
                        reply.headers.extend(gateway::rate_headers(&a.rate));
                    }
                    let observed = Observed {
                        config: config.clone(),
                        location: observe::location(req, &origin),
                        log: log.clone(),
                    };
                    settle_hit(
                        a.map(|a| a.ticket),
                        &prepared,
                        key,
                        request_id,
                        started,
                        observed,
                    );
                    accounting::kick(env, ctx);
                    let reply = match &log {
                        Some(draft) => observe::capture(reply, draft),
                        None => reply,
                    };
                    // Cached (and logged) with placeholders: restored for
                    // this request.
                    return prepared.restore(reply);
                }
            }
            // A miss's stream stays in Rust, to be kept as it passes.
            prepared.keep_stream();
            (Some("miss"), url.map(|u| (u, ttl_s)))
        }
    };
    // 8. translate, send, fail over (the admission alongside, if overlapped)
    let (end_tx, end_rx) = oneshot::channel::<StreamOutcome>();
    let report: StreamEnd = Box::new(move |outcome| {
        let _ = end_tx.send(outcome);
    });
    let streaming = prepared.stream();
    // A stream that may be continued stays in Rust; its first leg reports
    // to the continuation, which reports the whole.
    let continued = streaming
        && matches!(prepared.req, gateway::Request::Chat(_))
        && config
            .models
            .get(prepared.model())
            .is_some_and(|m| m.continuation);
    let (on_end, mut report) = if continued {
        prepared.keep_stream();
        let cell = Rc::new(RefCell::new(None));
        let first_leg = cell.clone();
        let on_end: StreamEnd = Box::new(move |o| *cell.borrow_mut() = Some(o));
        (on_end, Some((first_leg, report)))
    } else {
        (report, None)
    };
    // An answer that may be abandoned early (an overlapped admission may
    // refuse; a hedged attempt may lose) needs an abort controller.
    let hedged = config
        .models
        .get(prepared.model())
        .is_some_and(|m| m.hedge.is_some());
    let fetch = upstream::FetchUpstream::new(env, overlap.is_some() || hedged);
    let dispatched = gateway::dispatch(&fetch, &gctx, &prepared, Some(on_end));
    let (admitted, result) = match (routed, admitted, overlap) {
        (Err(e), admitted, _) => (admitted, Err(e)),
        (Ok(()), Some(a), _) => (Some(a), dispatched.await),
        (Ok(()), None, Some((_, object, admit))) => {
            let admission = accounting::decide_overlapped(env, ctx, &object, admit);
            match dispatch_admitted(admission, dispatched).await {
                Ok((a, result)) => (Some(a), result),
                Err(refused) => return refused,
            }
        }
        (Ok(()), None, None) => (
            None,
            Err(GatewayError::Internal {
                message: "no admission".into(),
            }),
        ),
    };
    // Shared health (regional): background only, a flag and a comparison here.
    shared_health::sync(req, ctx, started);
    let rate = admitted
        .as_ref()
        .map(|a| a.rate.clone())
        .unwrap_or_default();
    // 10. settle (a refused route settles as an error); a miss's complete
    // answer is stored
    let env_for_flush = env.clone();
    let mut pending = Settlement::new(
        admitted.map(|a| a.ticket),
        &prepared,
        key,
        request_id,
        started,
        cache_state,
        Observed {
            config: config.clone(),
            location: observe::location(req, &origin),
            log: log.clone(),
        },
    );
    let reply = match result {
        Ok(mut reply) => {
            pending.served = reply.served.clone();
            if let (Some((first_leg, report)), ReplyBody::Stream(_)) = (report.take(), &reply.body)
                && let ReplyBody::Stream(first) =
                    std::mem::replace(&mut reply.body, ReplyBody::Full(Vec::new()))
            {
                // The second leg sends what the first sent: the redacted
                // body, to targets of the same data class.
                let start = second_leg_starter(
                    env,
                    config.clone(),
                    Rc::from(prepared.body()),
                    SecondLegCaller {
                        origin: origin.clone(),
                        headers: req.headers(),
                        key_id: key.id().to_owned(),
                        routing: routing.clone(),
                        trust: prepared.trust.clone(),
                    },
                    reply.served.clone(),
                    started,
                );
                let input_estimate = pending.accounting.input_estimate;
                reply.body = ReplyBody::Stream(continuation::continuable(
                    first,
                    first_leg,
                    input_estimate,
                    start,
                    report,
                ));
            }
            let captured = match (store_at.is_some(), reply.body) {
                (true, ReplyBody::Stream(body)) => {
                    let (body, kept) = cache::capture(body);
                    reply.body = ReplyBody::Stream(body);
                    Some(kept)
                }
                (_, body) => {
                    reply.body = body;
                    None
                }
            };
            if matches!(reply.body, ReplyBody::Stream(_) | ReplyBody::Native(_)) {
                ctx.wait_until(async move {
                    let outcome = end_rx.await.ok();
                    let complete = outcome.as_ref().is_some_and(|o| o.complete);
                    let whole = outcome.as_ref().is_some_and(|o| o.continued.is_none());
                    let (usage, events) = match outcome {
                        Some(o) => {
                            pending.continued = o.continued;
                            (o.usage, o.events)
                        }
                        None => (None, 0),
                    };
                    settle(pending, usage, events, !complete);
                    // A continued answer is not stored: only one that one
                    // provider gave whole.
                    if let (true, true, Some(kept), Some((url, ttl_s))) =
                        (complete, whole, captured, store_at)
                        && let Ok(sse) = kept.await
                        && let Some(entry) = cache::Entry::from_stream(&sse)
                    {
                        let entry = entry.with_usage(usage.as_ref());
                        response_cache::store(url, entry, ttl_s).await;
                    }
                    accounting::flush_here(env_for_flush).await;
                });
            } else {
                // Known now: settled here, with no task of its own; only the
                // batch waits (one flusher per isolate, not per request).
                // No usage from the provider: the output is estimated
                // from the answer, as a cut stream's is from what it sent.
                let output = match (&reply.usage, &reply.body) {
                    (None, ReplyBody::Full(body)) => prepared.whole_output_estimate(body),
                    _ => 0,
                };
                settle(pending, reply.usage, output, false);
                if let (Some((url, ttl_s)), ReplyBody::Full(body)) = (store_at, &reply.body)
                    && let Some(entry) = cache::Entry::from_completion(body)
                {
                    ctx.wait_until(response_cache::store(url, entry, ttl_s));
                }
                accounting::kick(env, ctx);
            }
            match &log {
                Some(draft) => observe::capture(reply, draft),
                None => reply,
            }
        }
        Err(e) => {
            observe::model_failed(&e, prepared.model());
            pending.status = e.status();
            settle(pending, None, 0, true);
            accounting::kick(env, ctx);
            let reply = Reply::error(&e);
            match &log {
                Some(draft) => observe::capture(reply, draft),
                None => reply,
            }
        }
    };
    // (trust) a `restore` request's answer gets its originals back, after
    // the cache kept it with placeholders
    let mut reply = prepared.restore(reply);
    // 9. stream (the caller turns the reply into a response)
    reply.headers.extend(gateway::rate_headers(&rate));
    if let Some(state) = cache_state {
        reply.headers.push(("x-gateway-cache", state.to_owned()));
    }
    reply
}

/// Step 8 with an overlapped admission: the upstream answer and the key's
/// decision race. Nothing reaches the client until the key is admitted; on
/// a refusal the upstream request is dropped, which aborts its fetch (and a
/// stream already committed is dropped unsent).
async fn dispatch_admitted<A, D>(
    admission: A,
    dispatched: D,
) -> Result<(accounting::Admitted, Result<Reply, GatewayError>), Reply>
where
    A: Future<Output = Result<accounting::Admitted, Reply>>,
    D: Future<Output = Result<Reply, GatewayError>>,
{
    let admission = std::pin::pin!(admission);
    let dispatched = std::pin::pin!(dispatched);
    match select(admission, dispatched).await {
        Either::Left((Ok(a), dispatched)) => Ok((a, dispatched.await)),
        Either::Left((Err(refused), _dropped)) => Err(refused),
        Either::Right((result, admission)) => match admission.await {
            Ok(a) => Ok((a, result)),
            Err(refused) => {
                drop(result);
                Err(refused)
            }
        },
    }
}

/// What settling one request needs, owned so it can outlive the request.
struct Settlement {
    /// How it was admitted; `None` when it never was (a route refused
    /// before an overlapped admission was asked).
    ticket: Option<Ticket>,
    accounting: Accounting,
    key_id: String,
    request_id: String,
    served: Option<Served>,
    status: u16,
    started_ms: u64,
    first_byte_ms: u64,
    stream: bool,
    /// `x-gateway-cache`: `hit`, `miss` or `bypass`; `None` for a model
    /// with no cache.
    cache: Option<&'static str>,
    /// The second leg of a continued stream.
    continued: Option<Continued>,
    /// The request's data class.
    data_class: Option<String>,
    /// Personal data redacted or refused, by kind (counts, never values).
    pii: BTreeMap<String, u32>,
    /// What analytics and request logs need of it.
    observed: Observed,
}

/// What analytics and request logs need of a request beyond its charge.
struct Observed {
    /// The config it was served under (jurisdictions for analytics).
    config: Rc<Config>,
    /// Where it was served.
    location: Option<Rc<str>>,
    /// Its request-log draft, when the config logs it.
    log: Option<observe::Draft>,
}

impl Settlement {
    /// A request's settlement, its answer still to come (a 200 until told
    /// otherwise).
    fn new(
        ticket: Option<Ticket>,
        prepared: &gateway::Prepared<'_>,
        key: &KeyRef,
        request_id: &str,
        started: u64,
        cache: Option<&'static str>,
        observed: Observed,
    ) -> Settlement {
        Settlement {
            ticket,
            accounting: prepared.accounting(),
            key_id: key.id().to_owned(),
            request_id: request_id.to_owned(),
            served: None,
            status: 200,
            started_ms: started,
            first_byte_ms: now_ms() - started,
            stream: prepared.stream(),
            cache,
            continued: None,
            data_class: prepared.trust.class_label().map(str::to_owned),
            pii: prepared.trust.pii_found.clone(),
            observed,
        }
    }
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
    /// A hedge started another target beside a slow one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    hedged: bool,
    /// Hedged attempts that lost, `provider/model`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hedge_lost: Vec<String>,
    status: u16,
    stream: bool,
    error: bool,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    cost_usd: Money,
    latency_ms: u64,
    first_byte_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    /// The target that finished a continued stream, `provider/model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    continued_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_class: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pii: &'a BTreeMap<String, u32>,
}

/// Logs the request, adds its actual cost to its key's batch and the same
/// figures to the isolate's analytics: one settlement feeds both, so
/// analytics totals equal the keys' usage by construction.
fn settle(s: Settlement, usage: Option<crate::api::Usage>, events: u64, error: bool) {
    let (cost, event) = if s.cache == Some("hit") {
        (Money::ZERO, gateway::cache_hit_event(&s.accounting))
    } else {
        // A continued answer's first leg was cut: its usage is partial.
        let first_whole = !error && s.continued.is_none();
        gateway::settlement(
            &s.accounting,
            s.served.as_ref(),
            usage,
            events,
            first_whole,
            error,
        )
    };
    let (mut cost, mut event) = (cost, event);
    if let Some(leg) = &s.continued {
        gateway::add_continued(&s.accounting, leg, !error, &mut cost, &mut event);
    }
    let latency_ms = now_ms().saturating_sub(s.started_ms);
    let log = UsageLog {
        event: "request",
        request_id: &s.request_id,
        key: &s.key_id,
        model: &s.accounting.model,
        provider: s.served.as_ref().map(|x| x.provider.as_str()),
        target_model: s.served.as_ref().map(|x| x.model.as_str()),
        attempts: s.served.as_ref().map_or(0, |x| x.attempts),
        hedged: s.served.as_ref().is_some_and(|x| x.hedged),
        hedge_lost: s.served.as_ref().map_or_else(Vec::new, |x| {
            x.hedge_losers
                .iter()
                .map(|l| format!("{}/{}", l.provider, l.model))
                .collect()
        }),
        status: s.status,
        stream: s.stream,
        error,
        input_tokens: event.input_tokens,
        output_tokens: event.output_tokens,
        cached_tokens: event.cached_tokens,
        cost_usd: cost,
        latency_ms,
        first_byte_ms: s.first_byte_ms,
        cache: s.cache,
        continued_by: s
            .continued
            .as_ref()
            .map(|c| format!("{}/{}", c.served.provider, c.served.model)),
        data_class: s.data_class.as_deref(),
        pii: &s.pii,
    };
    if let Ok(line) = serde_json::to_string(&log) {
        accounting::log_request(&line);
    }
    let served = s.served.as_ref();
    let attempts = served.map_or(0, |x| u32::try_from(x.attempts).unwrap_or(u32::MAX));
    if let Some(ticket) = &s.ticket {
        accounting::settle(ticket, cost, &event);
        let jurisdiction = served
            .and_then(|x| s.observed.config.providers.get(&x.provider))
            .and_then(|p| p.jurisdiction.as_deref());
        accounting::with_team(ticket.object(), |team| {
            observe::record(&RequestEvent {
                at_ms: ticket.admitted_ms(),
                key: &s.key_id,
                team,
                model: &s.accounting.model,
                provider: served.map(|x| x.provider.as_str()),
                target_model: served.map(|x| x.model.as_str()),
                location: s.observed.location.as_deref(),
                jurisdiction,
                status: s.status,
                error,
                attempts,
                cache_hit: event.cache_hit,
                hedged: served.is_some_and(|x| x.hedged),
                stream: s.stream,
                input_tokens: event.input_tokens,
                output_tokens: event.output_tokens,
                cached_tokens: event.cached_tokens,
                cost,
                latency_ms,
                ttft_ms: s.first_byte_ms,
            });
            if let Some(draft) = &s.observed.log {
                let meta = LogMeta {
                    request_id: s.request_id.clone(),
                    at_ms: ticket.admitted_ms(),
                    key: s.key_id.clone(),
                    team: team.map(str::to_owned),
                    model: s.accounting.model.clone(),
                    provider: served.map(|x| x.provider.clone()),
                    target_model: served.map(|x| x.model.clone()),
                    status: s.status,
                    error,
                    stream: s.stream,
                    attempts,
                    latency_ms,
                    ttft_ms: s.first_byte_ms,
                    input_tokens: event.input_tokens,
                    output_tokens: event.output_tokens,
                    cached_tokens: event.cached_tokens,
                    cost_pico: cost.0,
                };
                observe::settled(draft, meta);
            }
        });
    }
    observe::note_health(HEALTH.with(|h| *h));
}

/// Who asked, owned: what routing a second leg needs.
struct SecondLegCaller {
    origin: Origin,
    headers: web_sys::Headers,
    key_id: String,
    routing: Routing,
    /// The first leg's data class (and PII decisions).
    trust: gateway::Trust,
}

/// How a continued stream's second leg starts ([`continuation::StartLeg`]):
/// the request prepared again from its body, routed again for the same
/// caller, and sent to its candidates but the one that broke, within what
/// is left of the request's total time.
fn second_leg_starter(
    env: &Env,
    config: Rc<Config>,
    body: Rc<[u8]>,
    caller: SecondLegCaller,
    broken: Option<Served>,
    started: u64,
) -> continuation::StartLeg {
    let env = env.clone();
    Box::new(move |prefix: String, used: u64| {
        Box::pin(async move {
            let broken = broken?;
            if now_ms() >= started + config.failover.total_timeout_ms {
                return None;
            }
            let secret = |name: &str| secret(&env, name);
            let gctx = Ctx {
                now_ms: started,
                clock: &now_ms,
                secret: &secret,
                health: HEALTH.with(|h| *h),
            };
            let mut prepared = gateway::prepare(&config, &gctx, &body).ok()?;
            prepared.trust = caller.trust.clone();
            let header = |name: &str| caller.headers.get(name).ok().flatten();
            let who = Caller {
                origin: &caller.origin,
                header: &header,
                key_id: &caller.key_id,
                tier: caller.routing.tier.as_deref(),
                jurisdictions: caller.routing.regions.as_deref(),
                random: random_unit(),
            };
            prepared.route(&gctx, &who).ok()?;
            let outcome = Rc::new(RefCell::new(None));
            let cell = outcome.clone();
            let on_end: StreamEnd = Box::new(move |o| *cell.borrow_mut() = Some(o));
            let fetch = upstream::FetchUpstream::new(&env, false);
            let reply = continuation::second_leg(
                &fetch,
                &gctx,
                &prepared,
                &broken,
                (&prefix, used),
                on_end,
            )
            .await
            .ok()?;
            let served = reply.served.clone()?;
            match reply.body {
                ReplyBody::Stream(body) => Some(continuation::Leg {
                    body,
                    served,
                    outcome,
                }),
                _ => None,
            }
        })
    })
}

/// Settles an answer from the response cache: logged and counted as a
/// hit, charged nothing.
fn settle_hit(
    ticket: Option<Ticket>,
    prepared: &gateway::Prepared<'_>,
    key: &KeyRef,
    request_id: &str,
    started: u64,
    observed: Observed,
) {
    let s = Settlement::new(
        ticket,
        prepared,
        key,
        request_id,
        started,
        Some("hit"),
        observed,
    );
    settle(s, None, 0, false);
}

/// `/__test/*` (test hooks on only).
async fn test_hook(
    req: &worker::Request,
    env: &Env,
    hook: TestHook,
) -> Result<Reply, GatewayError> {
    match hook {
        // Proves a panic costs one request, not the isolate.
        TestHook::Panic => panic!("panic requested by the test hook"),
        TestHook::Flush => {
            accounting::flush_due(env, true).await;
            observe::flush(env, true).await;
            Ok(Reply::json(200, br#"{"flushed":true}"#.to_vec()))
        }
        TestHook::Stats => {
            /// What this isolate asked of key objects, and how many
            /// provider calls the entry module made.
            #[derive(Serialize)]
            struct IsolateStats {
                #[serde(flatten)]
                keys: accounting::Stats,
                driven_calls: u64,
            }
            let stats = IsolateStats {
                keys: accounting::stats(),
                driven_calls: driven::calls(),
            };
            Ok(Reply::json_value(200, &stats))
        }
        TestHook::Forget => {
            accounting::forget();
            Ok(Reply::json(200, br#"{"forgotten":true}"#.to_vec()))
        }
        TestHook::Seed => {
            let url = req.inner().url();
            let q = |name: &str| crate::http::url::query_param(&url, name);
            let n = |name: &str| q(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            let id = q("key").unwrap_or_default();
            let command = Command::Seed {
                days: n("days"),
                models: n("models"),
                rpm: n("rpm"),
            };
            key_client::call(env, &keys::virtual_object_name(&id), &command).await?;
            Ok(Reply::json(200, br#"{"seeded":true}"#.to_vec()))
        }
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
    let secret = |name: &str| secret(env, name);
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
fn authenticate(req: &RawRequest, env: &Env) -> Result<KeyRef, GatewayError> {
    let h = req.headers();
    let authorization = h.get("authorization").ok().flatten();
    // Anthropic's SDKs send `x-api-key`; OpenAI's, `Authorization`.
    let x_api_key = match authorization {
        Some(_) => None,
        None => h.get("x-api-key").ok().flatten(),
    };
    let Some(key) = keys::presented_key(authorization.as_deref(), x_api_key.as_deref()) else {
        return Err(GatewayError::Unauthorized {
            message: "You didn't provide an API key. Send it as `Authorization: Bearer <key>` \
                      (or `x-api-key: <key>`, as Anthropic's SDKs do)."
                .into(),
        });
    };
    static_keys(env)
        .resolve(key)
        .ok_or_else(|| GatewayError::Unauthorized {
            message: "Incorrect API key provided.".into(),
        })
}

/// `GATEWAY_KEYS`, parsed once per isolate (secrets are fixed for its life).
fn static_keys(env: &Env) -> &'static keys::StaticKeys {
    thread_local! {
        static KEYS: std::cell::OnceCell<&'static keys::StaticKeys> =
            const { std::cell::OnceCell::new() };
    }
    KEYS.with(|k| {
        *k.get_or_init(|| {
            let list = secret(env, GATEWAY_KEYS).unwrap_or_default();
            Box::leak(Box::new(keys::StaticKeys::parse(&list)))
        })
    })
}

fn js_error(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// The most a request body may hold before the config is known (its own
/// limit is checked after): bounds memory.
const BODY_CAP: u64 = 64 * 1024 * 1024;

/// A request's body: already read by the entry module (a declared length
/// within [`BODY_CAP`]), or to read.
struct Body<'r> {
    req: &'r RawRequest,
    read: Option<Vec<u8>>,
}

impl Body<'_> {
    async fn read(self) -> Result<Vec<u8>, GatewayError> {
        match self.read {
            Some(body) => Ok(body),
            None => read_body(self.req).await,
        }
    }
}

/// Reads the whole body. The config's limit is checked by the caller; this
/// cap bounds memory before the config is known.
async fn read_body(req: &RawRequest) -> Result<Vec<u8>, GatewayError> {
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_CAP) {
        return Err(GatewayError::BodyTooLarge { limit: BODY_CAP });
    }
    let failed = |e: JsValue| GatewayError::InvalidRequest {
        message: format!("Reading the request body failed: {}", js_error(e)),
        param: None,
    };
    if declared.is_some() {
        // One copy across the JS boundary: reading through a stream costs a
        // reader, a promise and a copy per chunk.
        let buf = JsFuture::from(req.array_buffer().map_err(failed)?)
            .await
            .map_err(failed)?;
        let body = Uint8Array::new(&buf).to_vec();
        if body.len() as u64 > BODY_CAP {
            return Err(GatewayError::BodyTooLarge { limit: BODY_CAP });
        }
        return Ok(body);
    }
    // No length given (chunked, or no body): read incrementally so the cap
    // holds.
    let Some(raw) = req.body() else {
        return Ok(Vec::new());
    };
    let mut stream = wasm_streams::ReadableStream::from_raw(raw.unchecked_into()).into_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = Uint8Array::new(&chunk.map_err(failed)?);
        if body.len() as u64 + u64::from(chunk.length()) > BODY_CAP {
            return Err(GatewayError::BodyTooLarge { limit: BODY_CAP });
        }
        body.extend_from_slice(&chunk.to_vec());
    }
    Ok(body)
}

/// The JSON 500 of a response the runtime could not build.
fn failed_response(message: &str) -> web_sys::Response {
    worker::console_error!("response: {message}");
    let body = br#"{"error":{"message":"Internal gateway error: the response could not be built.","type":"server_error","code":"internal_error","param":null}}"#;
    let init = web_sys::ResponseInit::new();
    init.set_status(500);
    if let Ok(headers) = web_sys::Headers::new() {
        let _ = headers.set("content-type", "application/json");
        init.set_headers(&headers);
    }
    let mut body = body.to_vec();
    web_sys::Response::new_with_opt_u8_array_and_init(Some(&mut body), &init)
        .unwrap_or_else(|_| web_sys::Response::error())
}

/// Turns a [`Reply`] into a runtime response, streams passed through.
fn into_response(reply: Reply, request_id: &str) -> worker::Result<web_sys::Response> {
    let headers = web_sys::Headers::new()?;
    for (name, value) in &reply.headers {
        headers.set(name, value)?;
    }
    headers.set("x-request-id", request_id)?;
    let init = web_sys::ResponseInit::new();
    init.set_status(reply.status);
    init.set_headers(&headers);
    let response = match reply.body {
        ReplyBody::Full(mut bytes) => {
            web_sys::Response::new_with_opt_u8_array_and_init(Some(&mut bytes), &init)?
        }
        ReplyBody::Stream(stream) => {
            let raw = pipe::write(stream);
            web_sys::Response::new_with_opt_readable_stream_and_init(Some(&raw), &init)?
        }
        ReplyBody::Native(native) => {
            let raw = pipe::pipe(native).ok_or_else(|| {
                worker::Error::RustError("a stream was handed over in a foreign form".into())
            })?;
            web_sys::Response::new_with_opt_readable_stream_and_init(Some(&raw), &init)?
        }
    };
    Ok(response)
}

/// Where the request comes from (step 6), read defensively from
/// `request.cf`: any field may be missing. With test hooks on, the
/// `x-gateway-test-geo` header stands in for it; production never reads it.
fn origin(req: &RawRequest, env: &Env) -> Origin {
    if test_hooks(env)
        && let Some(json) = req.headers().get(GEO_OVERRIDE).ok().flatten()
    {
        return origin_from_json(&json);
    }
    let cf = js_sys::Reflect::get(req, &"cf".into()).unwrap_or_default();
    let field = |name: &str| {
        js_sys::Reflect::get(&cf, &name.into())
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

/// 64 random bits from the runtime's CSPRNG, drawn 32 at a time: one
/// crossing of the JS boundary per 32 draws instead of one per draw.
fn random_u64() -> u64 {
    thread_local! {
        static POOL: RefCell<(usize, [u64; 32])> = const { RefCell::new((32, [0; 32])) };
    }
    POOL.with_borrow_mut(|(used, pool)| {
        if *used == pool.len() {
            let mut bytes = [0u8; 256];
            // crypto.getRandomValues does not fail on Workers.
            let _ = getrandom::fill(&mut bytes);
            for (slot, chunk) in pool.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                *slot = u64::from_le_bytes(b);
            }
            *used = 0;
        }
        *used += 1;
        pool[*used - 1]
    })
}

/// A uniform draw in `[0, 1)` (weighted routing).
fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether test-only behaviour is on. Vars are fixed for an isolate's life,
/// so this is read once, not on every request.
fn test_hooks(env: &Env) -> bool {
    thread_local! {
        static ON: std::cell::OnceCell<bool> = const { std::cell::OnceCell::new() };
    }
    ON.with(|on| *on.get_or_init(|| var(env, TEST_HOOKS).as_deref() == Some("1")))
}

/// A secret or var by name, read once per isolate: secrets and vars are
/// fixed for an isolate's life (a change deploys new isolates), and each
/// read is two lookups across the JS boundary.
fn secret(env: &Env, name: &str) -> Option<String> {
    thread_local! {
        static SECRETS: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
    }
    if let Some(v) = SECRETS.with_borrow(|s| s.get(name).cloned()) {
        return v;
    }
    let v = var(env, name);
    SECRETS.with_borrow_mut(|s| s.insert(name.to_owned(), v.clone()));
    v
}

/// A secret or plain var by name.
fn var(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
}

thread_local! {
    /// While a driven poll runs ([`driven`]): the clock, once read. The
    /// runtime's clock stands still while JavaScript runs (it moves between
    /// I/O events), so one read serves every `now_ms` of one synchronous
    /// poll instead of a dozen calls into the runtime.
    static POLL_CLOCK: std::cell::Cell<Option<Option<u64>>> = const { std::cell::Cell::new(None) };
}

/// Unix ms: one static call, no `Date` object (one per driven poll).
fn now_ms() -> u64 {
    match POLL_CLOCK.get() {
        None => js_sys::Date::now() as u64,
        Some(Some(now)) => now,
        Some(None) => {
            let now = js_sys::Date::now() as u64;
            POLL_CLOCK.set(Some(Some(now)));
            now
        }
    }
}

/// Runs one synchronous poll with the clock read at most once.
fn with_poll_clock<T>(poll: impl FnOnce() -> T) -> T {
    POLL_CLOCK.set(Some(None));
    let out = poll();
    POLL_CLOCK.set(None);
    out
}

/// `req_` + 24 hex digits from the runtime's CSPRNG.
fn new_request_id() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!("req_{a:016x}{:08x}", b as u32)
}
