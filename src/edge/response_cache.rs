//! The response cache's I/O: entries in the Cache API of the caller's
//! location, for [`crate::cache`].
//!
//! An entry is the JSON of a [`crate::cache::Entry`] under
//! `https://{host}/__gateway/cache/{key}` (the Cache API keys by URL; the
//! key is a hash, so no prompt text is in it), stored with
//! `Cache-Control: max-age` = the model's `ttl_s`. The Cache API is per
//! location: a location answers from what was asked there. It works on
//! custom domains and in `wrangler dev`; on `*.workers.dev` it stores
//! nothing, and every request is a miss.

use std::cell::Cell;

use worker::{Cache, Headers, Response, console_warn};

use super::RawRequest;
use crate::cache::Entry;

/// Where entries live on the gateway's own host.
const ENTRY_PATH: &str = "/__gateway/cache/";

thread_local! {
    /// A failure was logged (once per isolate).
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

/// The entry's URL for a key, on the request's host.
pub(super) fn url(req: &RawRequest, key: &str) -> Option<String> {
    let url = req.url();
    Some(format!(
        "https://{}{ENTRY_PATH}{key}",
        crate::http::url::host(&url)?
    ))
}

/// The stored entry, if there is one (an unreadable entry or a Cache API
/// failure is a miss).
pub(super) async fn lookup(url: &str) -> Option<Entry> {
    let found = match Cache::default().get(url, true).await {
        Ok(found) => found,
        Err(e) => {
            warn_once(&e);
            return None;
        }
    };
    let text = found?.text().await.ok()?;
    serde_json::from_str(&text).ok()
}

/// Stores an entry for `ttl_s` seconds (off the request path).
pub(super) async fn store(url: String, entry: Entry, ttl_s: u64) {
    if let Err(e) = put(&url, &entry, ttl_s).await {
        warn_once(&e);
    }
}

async fn put(url: &str, entry: &Entry, ttl_s: u64) -> worker::Result<()> {
    let body = serde_json::to_string(entry).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", &format!("max-age={ttl_s}"))?;
    Cache::default()
        .put(url, Response::ok(body)?.with_headers(headers))
        .await
}

fn warn_once(e: &worker::Error) {
    if !WARNED.replace(true) {
        console_warn!(
            "response cache: the Cache API is unavailable here ({e}); every request is a miss"
        );
    }
}
