//! Target health shared by the isolates of one location, through the Cache
//! API: the I/O for [`crate::routing::health::Snapshot`].
//!
//! A location (a Cloudflare data centre) runs many isolates of the gateway,
//! and each learns of an outage only by sending requests into it unless
//! they talk. The Cache API is per location and costs no cross-region call,
//! so one small cache entry per location carries what its isolates know:
//! breaker openings and closings, 429 cool-downs, latency estimates.
//!
//! Nothing here is on the request path. [`sync`] runs after a request was
//! dispatched and only compares a timestamp and a flag; when there is
//! something to do it hands the work to `waitUntil`:
//!
//! - **publish** at once when this isolate's breaker opened or closed or a
//!   cool-down started ([`Health::take_changed`]), and every
//!   [`LATENCY_PUBLISH_MS`] for latency estimates: read the entry, join this
//!   isolate's view into it ([`crate::routing::health::Snapshot::merge`]),
//!   write it back;
//! - **refresh** at most every [`REFRESH_MS`]: read the entry and take it in
//!   ([`Health::absorb`]).
//!
//! So a busy isolate hears of another's outage within about [`REFRESH_MS`]
//! plus a cache round trip, well within a second. An isolate that has been
//! idle routes its first request on what it knew, and refreshes right after
//! it (failover covers that one request should the target be down).
//! Concurrent writers may overwrite each other's entry; the next write of
//! either repairs it, since each writes its whole view joined with what it
//! read.
//!
//! The Cache API works on custom domains and in `wrangler dev` (Miniflare's
//! cache, shared by every worker of the dev session); on `*.workers.dev` and
//! on plain `workerd` without a cache service it does nothing or fails, and
//! each isolate then keeps its own health, as before.

use std::cell::RefCell;

use worker::{Cache, Context, Headers, Response, console_warn};

use super::{HEALTH, RawRequest, now_ms};
use crate::routing::Health;
use crate::routing::health::Snapshot;

/// Longest an isolate that is serving requests goes without reading what
/// its location knows.
const REFRESH_MS: u64 = 500;
/// How often an isolate shares its latency estimates (breaker and cooling
/// changes go at once).
const LATENCY_PUBLISH_MS: u64 = 5_000;
/// A background exchange that has not finished after this long is presumed
/// lost (its isolate's `waitUntil` was cut short) and no longer blocks the
/// next one.
const STUCK_AFTER_MS: u64 = 5_000;
/// The entry's lifetime in the cache: a location whose isolates stop
/// writing forgets after this long (nothing in it lasts longer).
const ENTRY_MAX_AGE_S: u32 = 60;
/// The entry's path on the gateway's own host (the Cache API keys by URL;
/// Cloudflare advises the worker's own hostname).
const ENTRY_PATH: &str = "/__gateway/location-health";

/// When this isolate last exchanged, and what is in flight.
#[derive(Default)]
struct Exchange {
    /// The entry's URL, from the first request's host.
    key: Option<String>,
    last_refresh_ms: u64,
    last_publish_ms: u64,
    /// When the exchange in flight started, if one is.
    busy_since: Option<u64>,
    /// A failure was logged (once per isolate: on a host without the Cache
    /// API every exchange fails the same way).
    warned: bool,
}

thread_local! {
    static EXCHANGE: RefCell<Exchange> = RefCell::new(Exchange::default());
}

/// After a request: starts a background exchange with the location when
/// one is due (see the module doc). Costs a flag and a comparison
/// otherwise; never waits.
pub(super) fn sync(req: &RawRequest, ctx: &Context, now_ms: u64) {
    let health: &'static Health = HEALTH.with(|h| *h);
    let job = EXCHANGE.with_borrow_mut(|x| {
        if x.busy_since
            .is_some_and(|t| now_ms.saturating_sub(t) < STUCK_AFTER_MS)
        {
            // The exchange in flight looks for changes again when it ends.
            return None;
        }
        let publish =
            health.take_changed() || now_ms.saturating_sub(x.last_publish_ms) >= LATENCY_PUBLISH_MS;
        if !publish && now_ms.saturating_sub(x.last_refresh_ms) < REFRESH_MS {
            return None;
        }
        if x.key.is_none() {
            // Read once per isolate: the URL is a crossing of the boundary.
            let url = req.url();
            x.key = Some(format!(
                "https://{}{ENTRY_PATH}",
                crate::http::url::host(&url)?
            ));
        }
        x.busy_since = Some(now_ms);
        x.last_refresh_ms = now_ms;
        if publish {
            x.last_publish_ms = now_ms;
        }
        Some((x.key.clone()?, publish))
    });
    if let Some((key, publish)) = job {
        ctx.wait_until(exchange(health, key, publish));
    }
}

/// Reads the location's entry and takes it in; when `publish`, writes back
/// this isolate's view joined with it. Repeats (publishing) while requests
/// meanwhile changed a breaker or a cooling.
async fn exchange(health: &'static Health, key: String, mut publish: bool) {
    let cache = Cache::default();
    loop {
        if let Err(e) = exchange_once(&cache, health, &key, publish).await {
            warn_once(&e);
        }
        if !health.take_changed() {
            break;
        }
        publish = true;
    }
    EXCHANGE.with_borrow_mut(|x| x.busy_since = None);
}

async fn exchange_once(
    cache: &Cache,
    health: &Health,
    key: &str,
    publish: bool,
) -> worker::Result<()> {
    let seen = match cache.get(key, true).await? {
        Some(mut entry) => serde_json::from_str::<Snapshot>(&entry.text().await?).ok(),
        None => None,
    };
    let now = now_ms();
    if let Some(seen) = &seen {
        health.absorb(seen, now);
    }
    if !publish {
        return Ok(());
    }
    let mut view = health.snapshot(now);
    if let Some(seen) = &seen {
        view.merge(seen);
    }
    view.prune(now);
    if seen.as_ref() == Some(&view) {
        return Ok(()); // nothing new to say
    }
    let body = serde_json::to_string(&view).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", &format!("max-age={ENTRY_MAX_AGE_S}"))?;
    cache
        .put(key, Response::ok(body)?.with_headers(headers))
        .await
}

/// What the location's entry holds now (for `GET /admin/health`); `None`
/// where the Cache API is unavailable or nothing was shared.
pub(super) async fn location_view(host: &str) -> Option<Snapshot> {
    let key = format!("https://{host}{ENTRY_PATH}");
    let mut entry = Cache::default().get(&key, true).await.ok()??;
    serde_json::from_str(&entry.text().await.ok()?).ok()
}

fn warn_once(e: &worker::Error) {
    let first = EXCHANGE.with_borrow_mut(|x| !std::mem::replace(&mut x.warned, true));
    if first {
        console_warn!(
            "shared health: the Cache API is unavailable here ({e}); each isolate keeps its own"
        );
    }
}
