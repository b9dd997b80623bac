//! The Workers runtime glue: the only module that imports `worker`.
//!
//! - this file        — the fetch handler and the request path
//! - `config_cache`   — routing config: isolate cache -> KV -> bundled default
//! - `key_object`     — the per-key Durable Object (a shell over `limits`)
//! - `upstream`       — [`crate::http::Upstream`] over the Workers `fetch`

mod config_cache;
mod key_object;
mod upstream;

use futures::StreamExt;
use worker::{Context, Date, Env, Headers, Request, Response, event};

use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::{self, Ctx, Reply, ReplyBody, Route};
use crate::keys;
use crate::limits::{self, Command};

/// Secret with the accepted gateway keys, comma-separated.
const GATEWAY_KEYS: &str = "GATEWAY_KEYS";
/// Secret that guards `/admin/*`.
const ADMIN_TOKEN: &str = "ADMIN_TOKEN";
/// Var that enables test-only routes; never set it in production.
const TEST_HOOKS: &str = "GATEWAY_TEST_HOOKS";
/// The per-key Durable Object namespace.
const KEY_OBJECTS: &str = "KEY_OBJECTS";

/// The fetch handler. The request path, step by step:
///
/// 1. **route** — method + path to an endpoint, 404/405 otherwise
///    ([`gateway::route`]).
/// 2. **auth** — the gateway key from `Authorization: Bearer` or `x-api-key`,
///    checked in constant time ([`authenticate`]); admin routes check
///    `ADMIN_TOKEN` instead ([`admin_config`]).
/// 3. **config, body, admission — concurrently** — the routing config from
///    the isolate cache or KV ([`config_cache::current`]), the body read with
///    the config's size limit ([`read_body`]), and the per-key Durable Object's
///    admission ([`admit`]).
/// 4. **route, translate, send, fail over** — candidates best-first, each
///    tried until one answers ([`gateway::chat_completions`]).
/// 5. **stream** — the reply passed to the client chunk by chunk
///    ([`into_response`]); every error is OpenAI-shaped JSON.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let request_id = new_request_id();
    let reply = match handle(req, &env).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e),
    };
    into_response(reply, &request_id)
}

async fn handle(mut req: Request, env: &Env) -> Result<Reply, GatewayError> {
    // 1. route
    let method = req.method().to_string();
    let path = req.path();
    let route = gateway::route(&method, &path)?;
    match route {
        Route::Health => return Ok(Reply::json(200, br#"{"status":"ok"}"#.to_vec())),
        Route::AdminConfig => return admin_config(&mut req, env, &method).await,
        Route::TestPanic => {
            if var(env, TEST_HOOKS).as_deref() == Some("1") {
                // Proves a panic costs one request, not the isolate.
                panic!("panic requested by the test hook");
            }
            return Err(GatewayError::NotFound { path });
        }
        Route::ChatCompletions | Route::Models | Route::Model(_) | Route::Usage => {}
    }

    // 2. auth
    let key_id = authenticate(&req, env)?;

    let secret = |name: &str| var(env, name);
    let ctx = |now_ms| Ctx {
        now_ms,
        secret: &secret,
    };
    match route {
        Route::ChatCompletions => {
            // 3. config, body and admission, concurrently
            let (config, body, admission) = futures::join!(
                config_cache::current(env),
                read_body(&mut req),
                admit(env, &key_id, Command::Admit)
            );
            let (config, body, _admission) = (config, body?, admission?);
            if body.len() as u64 > config.limits.max_body_bytes {
                return Err(GatewayError::BodyTooLarge {
                    limit: config.limits.max_body_bytes,
                });
            }
            // 4. route, translate, send, fail over
            gateway::chat_completions(&upstream::FetchUpstream, &config, &ctx(now_ms()), &body)
                .await
        }
        Route::Models | Route::Model(_) => {
            let (config, admission) = futures::join!(
                config_cache::current(env),
                admit(env, &key_id, Command::Admit)
            );
            admission?;
            match &route {
                Route::Model(id) => gateway::model(&config, id, &secret),
                _ => Ok(gateway::models(&config, &secret)),
            }
        }
        Route::Usage => {
            let reply = admit(env, &key_id, Command::Usage).await?;
            Ok(Reply::json_value(200, &UsageBody::from(reply)))
        }
        Route::Health | Route::AdminConfig | Route::TestPanic => Err(GatewayError::Internal {
            message: "route handled earlier".into(),
        }),
    }
}

/// `GET /v1/usage`, in the caller's terms.
#[derive(serde::Serialize)]
struct UsageBody {
    object: &'static str,
    requests: u64,
    first_request_ms: u64,
    last_request_ms: u64,
}

impl From<limits::Reply> for UsageBody {
    fn from(r: limits::Reply) -> Self {
        UsageBody {
            object: "usage",
            requests: r.state.requests,
            first_request_ms: r.state.first_request_ms,
            last_request_ms: r.state.last_request_ms,
        }
    }
}

/// Checks the gateway key; returns its fingerprint.
fn authenticate(req: &Request, env: &Env) -> Result<String, GatewayError> {
    let h = req.headers();
    let authorization = h.get("authorization").ok().flatten();
    let x_api_key = h.get("x-api-key").ok().flatten();
    let Some(key) = keys::presented_key(authorization.as_deref(), x_api_key.as_deref()) else {
        return Err(GatewayError::Unauthorized {
            message: "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
                .into(),
        });
    };
    let allowed = var(env, GATEWAY_KEYS).unwrap_or_default();
    if !keys::is_allowed(key, &allowed) {
        return Err(GatewayError::Unauthorized {
            message: "Incorrect API key provided.".into(),
        });
    }
    Ok(keys::fingerprint(key))
}

/// `GET /admin/config` shows the live config and the last rejection;
/// `PUT /admin/config` validates a document and stores it in KV (a rejected
/// one is never stored).
async fn admin_config(req: &mut Request, env: &Env, method: &str) -> Result<Reply, GatewayError> {
    let token = req.headers().get("authorization").ok().flatten();
    let presented = keys::presented_key(token.as_deref(), None).unwrap_or_default();
    let expected = var(env, ADMIN_TOKEN).unwrap_or_default();
    if expected.is_empty() || !keys::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return Err(GatewayError::Unauthorized {
            message: "The admin API needs `Authorization: Bearer <ADMIN_TOKEN>`.".into(),
        });
    }
    if method == "PUT" {
        let body = read_body(req).await?;
        let text = String::from_utf8(body).map_err(|e| GatewayError::InvalidJson {
            message: e.to_string(),
        })?;
        if let Err(errors) = Config::from_json(&text) {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(GatewayError::InvalidRequest {
                message: format!("The config was rejected: {message}"),
                param: errors.first().map(|e| e.path.clone()),
            });
        }
        config_cache::store(env, &text).await?;
    }
    let status = config_cache::status(env).await;
    Ok(Reply::json_value(200, &status))
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
    let mut stream = match req.stream() {
        Ok(s) => s,
        Err(_) => return Ok(Vec::new()), // no body
    };
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| GatewayError::InvalidRequest {
            message: format!("Reading the request body failed: {e}"),
            param: None,
        })?;
        if (body.len() + chunk.len()) as u64 > HARD_CAP {
            return Err(GatewayError::BodyTooLarge { limit: HARD_CAP });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sends a command to the key's Durable Object.
async fn admit(env: &Env, key_id: &str, command: Command) -> Result<limits::Reply, GatewayError> {
    let internal = |what: &str, e: worker::Error| GatewayError::Internal {
        message: format!("key state {what}: {e}"),
    };
    let stub = env
        .durable_object(KEY_OBJECTS)
        .and_then(|ns| ns.get_by_name(key_id))
        .map_err(|e| internal("binding", e))?;
    let body = serde_json::to_string(&command).map_err(|e| GatewayError::Internal {
        message: e.to_string(),
    })?;
    let mut init = worker::RequestInit::new();
    init.with_method(worker::Method::Post)
        .with_body(Some(body.into()));
    let request =
        Request::new_with_init("https://key-object/", &init).map_err(|e| internal("request", e))?;
    let mut resp = stub
        .fetch_with_request(request)
        .await
        .map_err(|e| internal("call", e))?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(GatewayError::Internal {
            message: format!("key state answered {}: {text}", resp.status_code()),
        });
    }
    resp.json::<limits::Reply>()
        .await
        .map_err(|e| internal("reply", e))
}

/// Turns a [`Reply`] into a runtime response, streams passed through.
fn into_response(reply: Reply, request_id: &str) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in &reply.headers {
        let _ = headers.set(name, value);
    }
    let _ = headers.set("x-request-id", request_id);
    let response = match reply.body {
        ReplyBody::Full(bytes) => Response::from_bytes(bytes),
        ReplyBody::Stream(stream) => {
            Response::from_stream(stream.map(|item| item.map_err(worker::Error::RustError)))
        }
    };
    Ok(response?.with_status(reply.status).with_headers(headers))
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
