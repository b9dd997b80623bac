//! The routing config as the request path sees it.
//!
//! Each isolate keeps the last good config and re-reads KV at most once per
//! `CONFIG_CACHE_TTL_MS` (default 10 s), so a KV change takes effect within
//! that time without a deploy, and most requests cost no KV read. A document
//! that fails validation never replaces the last good one: the gateway keeps
//! serving and reports the rejection at `GET /admin/config`. With no document
//! in KV, the bundled default applies.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use serde::Serialize;
use worker::{Env, console_error};

use crate::config::{Config, ConfigError};
use crate::error::GatewayError;

/// The KV namespace binding.
const KV_BINDING: &str = "GATEWAY_CONFIG";
/// The key of the config document in it.
const KV_KEY: &str = "config";
/// Var overriding the cache time.
const TTL_VAR: &str = "CONFIG_CACHE_TTL_MS";
const DEFAULT_TTL_MS: u64 = 10_000;

/// Where the live config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    Bundled,
    Kv,
}

struct Cached {
    config: Rc<Config>,
    source: Source,
    /// The KV text last read, to skip re-parsing an unchanged value.
    text: Option<String>,
    checked_ms: u64,
    rejected: Option<Rejection>,
}

/// The last document KV held that failed validation.
#[derive(Debug, Clone, Serialize)]
struct Rejection {
    at_ms: u64,
    errors: Vec<String>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
    static TTL: OnceCell<u64> = const { OnceCell::new() };
}

/// Whether CORS may be on: the cached config lists origins, or nothing is
/// cached yet (the isolate's first request). No KV read: a sync check the
/// fetch handler can make before it knows which route it serves.
pub(super) fn cors_may_be_on() -> bool {
    CACHE.with_borrow(|c| c.as_ref().is_none_or(|c| !c.config.cors.origins.is_empty()))
}

/// Whether the cached config lets `origin` call from a browser.
pub(super) fn cors_allows(origin: &str) -> bool {
    CACHE.with_borrow(|c| c.as_ref().is_some_and(|c| c.config.cors.allows(origin)))
}

/// The config to serve now.
pub(super) async fn current(env: &Env) -> Rc<Config> {
    let now = super::now_ms();
    // Vars are fixed for an isolate's life: read the TTL once, not per request.
    let ttl = TTL.with(|t| {
        *t.get_or_init(|| {
            super::var(env, TTL_VAR)
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_TTL_MS)
        })
    });
    let fresh = CACHE.with_borrow(|c| {
        c.as_ref()
            .filter(|c| now.saturating_sub(c.checked_ms) < ttl)
            .map(|c| c.config.clone())
    });
    if let Some(config) = fresh {
        return config;
    }
    refresh(env, now).await
}

/// Re-reads KV and updates the cache; returns the config to serve.
async fn refresh(env: &Env, now: u64) -> Rc<Config> {
    let text = match read_kv(env).await {
        Ok(text) => text,
        Err(e) => {
            // KV unreachable: keep serving what we have.
            console_error!("config: KV read failed, keeping the current config: {e}");
            return CACHE.with_borrow_mut(|c| match c {
                Some(c) => {
                    c.checked_ms = now;
                    c.config.clone()
                }
                None => install(c, Rc::new(Config::bundled()), Source::Bundled, None, now),
            });
        }
    };
    let Some(text) = text else {
        return CACHE.with_borrow_mut(|c| {
            install(c, Rc::new(Config::bundled()), Source::Bundled, None, now)
        });
    };
    let unchanged = CACHE.with_borrow_mut(|c| match c {
        Some(c) if c.text.as_deref() == Some(text.as_str()) => {
            c.checked_ms = now;
            Some(c.config.clone())
        }
        _ => None,
    });
    if let Some(config) = unchanged {
        return config;
    }
    match Config::from_json(&text) {
        Ok(config) => CACHE.with_borrow_mut(|c| {
            let served = install(c, Rc::new(config), Source::Kv, Some(text), now);
            if let Some(c) = c {
                c.rejected = None;
            }
            served
        }),
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ConfigError::to_string).collect();
            console_error!(
                "config: rejected the KV document, keeping the last good one: {errors:?}"
            );
            CACHE.with_borrow_mut(|c| {
                let c = c.get_or_insert_with(|| Cached {
                    config: Rc::new(Config::bundled()),
                    source: Source::Bundled,
                    text: None,
                    checked_ms: now,
                    rejected: None,
                });
                // Remember the bad text so it is not re-parsed every TTL.
                c.text = Some(text);
                c.checked_ms = now;
                c.rejected = Some(Rejection { at_ms: now, errors });
                c.config.clone()
            })
        }
    }
}

fn install(
    slot: &mut Option<Cached>,
    config: Rc<Config>,
    source: Source,
    text: Option<String>,
    now: u64,
) -> Rc<Config> {
    let rejected = slot.take().and_then(|c| c.rejected);
    *slot = Some(Cached {
        config: config.clone(),
        source,
        text,
        checked_ms: now,
        rejected,
    });
    config
}

async fn read_kv(env: &Env) -> Result<Option<String>, String> {
    let kv = env.kv(KV_BINDING).map_err(|e| e.to_string())?;
    kv.get(KV_KEY).text().await.map_err(|e| e.to_string())
}

/// Stores a validated document in KV and makes this isolate use it now
/// (other isolates pick it up within their TTL, KV's propagation allowing).
pub(super) async fn store(env: &Env, text: &str) -> Result<(), GatewayError> {
    let internal = |e: String| GatewayError::Internal {
        message: format!("storing the config in KV: {e}"),
    };
    let kv = env.kv(KV_BINDING).map_err(|e| internal(e.to_string()))?;
    kv.put(KV_KEY, text)
        .map_err(|e| internal(e.to_string()))?
        .execute()
        .await
        .map_err(|e| internal(e.to_string()))?;
    CACHE.with_borrow_mut(|c| *c = None);
    Ok(())
}

/// What `GET /admin/config` shows.
#[derive(Serialize)]
pub(super) struct Status {
    source: Source,
    revision: String,
    checked_ms: u64,
    rejected: Option<Rejection>,
    config: Config,
}

/// The live config and the last rejection, freshly checked against KV.
pub(super) async fn status(env: &Env) -> Status {
    let config = refresh(env, super::now_ms()).await;
    CACHE.with_borrow(|c| {
        let (source, checked_ms, rejected) = match c {
            Some(c) => (c.source, c.checked_ms, c.rejected.clone()),
            None => (Source::Bundled, 0, None),
        };
        Status {
            source,
            revision: config.revision.clone(),
            checked_ms,
            rejected,
            config: (*config).clone(),
        }
    })
}
