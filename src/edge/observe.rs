//! The isolate's side of analytics, request logs and alerts: the I/O for
//! [`crate::observe`].
//!
//! Nothing here crosses into the runtime on the request path. A settled
//! request is added to Rust memory ([`record`]): its hour's cell and its
//! minute ([`Rollups`]), and — only when a Workers Analytics Engine dataset
//! is bound — one data point to a list. The accounting flusher, which
//! already wakes about once a second per isolate for the key batches
//! (`edge::accounting`), also calls [`flush`]: one call per day object per
//! `analytics.flush_ms` with the rollups, one crossing for all the data
//! points, one R2 write for the request logs, one call to the alerts object
//! for what was raised. A binding that is absent (plain `workerd`
//! configs) turns its part off for the isolate's life, checked once.
//!
//! Request logs copy bodies only for a request the config logs
//! ([`draft`]): the request's bytes, and the answer's as they pass to the
//! client ([`capture`]); the line is written when both the settlement and
//! the answer's end are known, whichever comes last.

use std::cell::{OnceCell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};

use futures::{Stream, StreamExt};
use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::prelude::*;
use worker::wasm_bindgen::{JsCast, JsValue};

use worker::{Env, console_error, console_warn};

use super::objects::{self, ALERTS, ALERTS_OBJECT, ANALYTICS};
use super::{RawRequest, now_ms, pipe};
use crate::config::{Config, LogBodies};
use crate::error::GatewayError;
use crate::gateway::{Reply, ReplyBody};
use crate::http::ByteStream;
use crate::observe::alerts::{Alert, AlertCommand, AlertKind, AlertReply, LocalAlerts};
use crate::observe::analytics::{DayCommand, DayReply, RequestEvent, Rollups, status_class};
use crate::observe::logs::{self, BodyPolicy, LogBatch, LogMeta};
use crate::routing::{Health, Origin};

/// The R2 bucket binding for request logs.
pub(super) const REQUEST_LOGS: &str = "REQUEST_LOGS";
/// The Workers Analytics Engine dataset binding.
const USAGE_EVENTS: &str = "USAGE_EVENTS";
/// Log lines waiting after failed writes are dropped past this size.
const MAX_HELD_LOG_BYTES: usize = 8 * 1024 * 1024;
/// An isolate sweeps expired log days at most this often.
const SWEEP_EVERY_MS: u64 = 3_600_000;

#[wasm_bindgen(inline_js = r#"
export function write_points(dataset, json) {
  for (const p of JSON.parse(json)) dataset.writeDataPoint(p);
}
"#)]
extern "C" {
    /// Writes every data point of a JSON array: one crossing per batch.
    #[wasm_bindgen(catch)]
    fn write_points(dataset: &JsValue, json: &str) -> Result<(), JsValue>;
}

/// Which bindings this isolate has (checked once).
#[derive(Debug, Clone, Copy)]
struct Bound {
    analytics: bool,
    alerts: bool,
    logs: bool,
    engine: bool,
}

/// The isolate's pending figures, lines and alerts.
struct Observe {
    rollups: Rollups,
    logs: LogBatch,
    alerts: LocalAlerts,
    /// Analytics Engine data points, JSON objects joined by commas.
    points: String,
    flush_ms: u64,
    cooldown_ms: u64,
    retention_days: u32,
    last_sweep_ms: u64,
    /// This isolate's location (`request.cf.colo`), read once.
    colo: Option<Option<Rc<str>>>,
}

thread_local! {
    static STATE: RefCell<Observe> = RefCell::new(Observe {
        rollups: Rollups::new(super::accounting::holder()),
        logs: LogBatch::default(),
        alerts: LocalAlerts::default(),
        points: String::new(),
        flush_ms: 5_000,
        cooldown_ms: 600_000,
        retention_days: 30,
        last_sweep_ms: 0,
        colo: None,
    });
    static BOUND: OnceCell<Bound> = const { OnceCell::new() };
}

/// Applies the config's settings, and on the isolate's first request
/// checks which bindings exist (a few integers after that).
pub(super) fn configure(config: &Config, env: &Env) {
    BOUND.with(|b| {
        b.get_or_init(|| Bound {
            analytics: objects::bound(env, ANALYTICS),
            alerts: objects::bound(env, ALERTS),
            logs: env.bucket(REQUEST_LOGS).is_ok(),
            engine: env.analytics_engine(USAGE_EVENTS).is_ok(),
        });
    });
    STATE.with_borrow_mut(|s| {
        s.flush_ms = config.analytics.flush_ms;
        s.cooldown_ms = config.alerts.cooldown_ms;
        s.retention_days = config.request_logs.retention_days;
    });
}

fn bound() -> Bound {
    BOUND.with(|b| {
        *b.get().unwrap_or(&Bound {
            analytics: false,
            alerts: false,
            logs: false,
            engine: false,
        })
    })
}

/// Where the request is served: the routing origin's location when routing
/// read it (the geo override in tests), else this isolate's, read from
/// `request.cf` once per isolate (an isolate runs in one location).
pub(super) fn location(req: &RawRequest, origin: &Origin) -> Option<Rc<str>> {
    if let Some(colo) = &origin.colo {
        return Some(Rc::from(colo.as_str()));
    }
    STATE.with_borrow_mut(|s| {
        s.colo
            .get_or_insert_with(|| {
                let cf = js_sys::Reflect::get(req, &"cf".into()).ok()?;
                let colo = js_sys::Reflect::get(&cf, &"colo".into()).ok()?;
                colo.as_string().map(|c| Rc::from(c.as_str()))
            })
            .clone()
    })
}

/// Counts one settled request (Rust memory only).
pub(super) fn record(e: &RequestEvent<'_>) {
    let b = bound();
    if !b.analytics && !b.engine {
        return;
    }
    let now = now_ms();
    STATE.with_borrow_mut(|s| {
        if b.analytics {
            s.rollups.add(e, now);
        }
        if b.engine {
            if !s.points.is_empty() {
                s.points.push(',');
            }
            engine_point(&mut s.points, e);
        }
    });
}

/// Appends one Analytics Engine data point as JSON, written directly (no
/// value tree per request). Blobs: key, team, model, provider, target
/// model, location, jurisdiction, status class. Doubles: requests (1),
/// status, attempts, error, cache hit, hedged, stream, input, output and
/// cached tokens, cost in USD, latency ms, TTFT ms. Index: the key.
fn engine_point(out: &mut String, e: &RequestEvent<'_>) {
    use std::fmt::Write;
    let blobs = [
        e.key,
        e.team.unwrap_or(""),
        e.model,
        e.provider.unwrap_or(""),
        e.target_model.unwrap_or(""),
        e.location.unwrap_or(""),
        e.jurisdiction.unwrap_or(""),
        status_class(e.status),
    ];
    out.push_str("{\"blobs\":[");
    for (i, b) in blobs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Strings from the config and key ids; escaped all the same.
        out.push_str(&serde_json::to_string(b).unwrap_or_default());
    }
    let _ = write!(
        out,
        "],\"doubles\":[1,{},{},{},{},{},{},{},{},{},{},{},{}],\"indexes\":[{}]}}",
        e.status,
        e.attempts,
        u8::from(e.error),
        u8::from(e.cache_hit),
        u8::from(e.hedged),
        u8::from(e.stream),
        e.input_tokens,
        e.output_tokens,
        e.cached_tokens,
        e.cost.usd(),
        e.latency_ms,
        e.ttft_ms,
        serde_json::to_string(e.key).unwrap_or_default(),
    );
}

/// Raises `breaker_open` for each breaker this isolate opened (a borrow
/// and a length check when none did).
pub(super) fn note_health(health: &Health) {
    if !health.has_opened() {
        return;
    }
    for (target, at_ms) in health.take_opened() {
        let (provider, model) = target.split_once('/').unwrap_or((&target, ""));
        let mut details = serde_json::Map::new();
        details.insert("provider".into(), provider.into());
        details.insert("model".into(), model.into());
        raise(Alert {
            event: AlertKind::BreakerOpen,
            target,
            at_ms,
            details,
        });
    }
}

/// Raises `model_down` when a request found every target of its model
/// failing (all tried and failed, or all skipped by breakers).
pub(super) fn model_failed(e: &GatewayError, model: &str) {
    let all_failed = match e {
        GatewayError::AllTargetsFailed { .. } => true,
        // Every target skipped by its breaker or cooling (expected back
        // after a while), not a residency rule that no target meets.
        GatewayError::Unavailable { retry_after, .. } => retry_after.is_some(),
        other => other.is_retryable(),
    };
    if !all_failed {
        return;
    }
    let mut details = serde_json::Map::new();
    details.insert("model".into(), model.into());
    details.insert("status".into(), e.status().into());
    details.insert("message".into(), e.to_string().into());
    raise(Alert {
        event: AlertKind::ModelDown,
        target: model.to_owned(),
        at_ms: now_ms(),
        details,
    });
}

fn raise(alert: Alert) {
    if !bound().alerts {
        return;
    }
    STATE.with_borrow_mut(|s| {
        let cooldown = s.cooldown_ms;
        s.alerts.raise(alert, cooldown);
    });
}

/// When the flusher has work here.
pub(super) fn next_work() -> Option<u64> {
    let now = now_ms();
    STATE.with_borrow(|s| {
        let rollups = s.rollups.wakeup(s.flush_ms, now);
        let logs = s.logs.due(s.flush_ms);
        let alerts = s.alerts.has_queued().then_some(now);
        let points = (!s.points.is_empty()).then_some(now + s.flush_ms);
        [rollups, logs, alerts, points].into_iter().flatten().min()
    })
}

/// Sends what is due (everything with `force`): rollups to their day
/// objects, data points to Analytics Engine, log lines to R2, alerts to
/// the alerts object. Called by the accounting flusher.
pub(super) async fn flush(env: &Env, force: bool) {
    let now = now_ms();
    let b = bound();
    let (batches, flush_ms) =
        STATE.with_borrow_mut(|s| (s.rollups.take(s.flush_ms, now, force), s.flush_ms));
    let sends = batches.into_iter().map(|batch| async move {
        let (day, seq) = (batch.day.clone(), batch.seq);
        let name = objects::day_object(&day);
        let reply: Result<DayReply, _> =
            objects::call(env, ANALYTICS, &name, &DayCommand::Ingest(batch)).await;
        // Errors are shown by their message: a `Debug` of the replies would
        // cost the wasm their whole formatting code.
        let failed = match reply {
            Ok(DayReply::Ingested { .. }) => None,
            Ok(DayReply::Partial(_)) => Some("an unexpected reply".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        STATE.with_borrow_mut(|s| match failed {
            None => s.rollups.on_ack(&day, seq),
            Some(why) => {
                console_error!("analytics batch for {day} not sent (resent later): {why}");
                s.rollups.on_failure(&day, flush_ms, now_ms());
            }
        });
    });
    futures::future::join_all(sends).await;
    if b.engine {
        write_engine(env, force);
    }
    if b.logs {
        write_logs(env, force).await;
    }
    if b.alerts {
        send_alerts(env).await;
    }
}

fn write_engine(env: &Env, force: bool) {
    let points = STATE.with_borrow_mut(|s| {
        // Data points go with the rollups' rhythm: about once an interval.
        let due = force || s.rollups.wakeup(s.flush_ms, now_ms()).is_none();
        if due {
            std::mem::take(&mut s.points)
        } else {
            String::new()
        }
    });
    if points.is_empty() {
        return;
    }
    let Ok(dataset) = env.analytics_engine(USAGE_EVENTS) else {
        return;
    };
    if let Err(e) = write_points(dataset.as_ref(), &format!("[{points}]")) {
        console_warn!(
            "analytics engine: data points dropped: {}",
            super::js_error(e)
        );
    }
}

async fn write_logs(env: &Env, force: bool) {
    let now = now_ms();
    let holder = super::accounting::holder();
    let Some((key, body)) = STATE.with_borrow_mut(|s| s.logs.take(&holder, s.flush_ms, now, force))
    else {
        return;
    };
    let Ok(bucket) = env.bucket(REQUEST_LOGS) else {
        return;
    };
    let size = body.len();
    match bucket.put(&key, body.clone()).execute().await {
        Ok(_) => sweep(env, now).await,
        Err(e) => {
            let kept = STATE.with_borrow_mut(|s| s.logs.put_back(body, now, MAX_HELD_LOG_BYTES));
            console_error!(
                "request logs: writing {key} ({size} bytes) failed: {e}; {}",
                if kept {
                    "kept for the next write"
                } else {
                    "dropped (too much held)"
                }
            );
        }
    }
}

/// Deletes log days past the retention, at most once an hour per isolate:
/// keys start with their date, so the oldest come first in a listing.
async fn sweep(env: &Env, now: u64) {
    let (due, days) = STATE.with_borrow_mut(|s| {
        let due = now >= s.last_sweep_ms + SWEEP_EVERY_MS;
        if due {
            s.last_sweep_ms = now;
        }
        (due, s.retention_days)
    });
    if !due {
        return;
    }
    let Ok(bucket) = env.bucket(REQUEST_LOGS) else {
        return;
    };
    let Ok(listed) = bucket
        .list()
        .prefix(logs::PREFIX)
        .limit(1000)
        .execute()
        .await
    else {
        return;
    };
    let old: Vec<String> = listed
        .objects()
        .iter()
        .map(|o| o.key())
        .take_while(|k| logs::expired(k, now, days))
        .collect();
    for key in old {
        if let Err(e) = bucket.delete(&key).await {
            console_warn!("request logs: deleting expired {key} failed: {e}");
        }
    }
}

async fn send_alerts(env: &Env) {
    let alerts = STATE.with_borrow_mut(|s| s.alerts.take());
    if alerts.is_empty() {
        return;
    }
    let command = AlertCommand::Raise {
        alerts: alerts.clone(),
    };
    let reply: Result<AlertReply, _> = objects::call(env, ALERTS, ALERTS_OBJECT, &command).await;
    if let Err(e) = reply {
        console_error!("alerts not raised (retried later): {e}");
        STATE.with_borrow_mut(|s| s.alerts.requeue(alerts));
    }
}

/// A logged request's record in the making.
pub(super) struct LogDraft {
    request: Vec<u8>,
    response: Vec<u8>,
    cut: bool,
    /// The answer has ended (or was never a stream).
    answered: bool,
    meta: Option<LogMeta>,
    policy: BodyPolicy,
}

/// A draft shared by the answer's capture and the settlement.
pub(super) type Draft = Rc<RefCell<LogDraft>>;

/// A draft for a request the config logs (`None` for every other: nothing
/// is copied). The request's bytes are kept only when bodies are.
pub(super) fn draft(config: &Config, key: &str, model: &str, body: &[u8]) -> Option<Draft> {
    let c = &config.request_logs;
    if !c.wants(key, model) || !bound().logs {
        return None;
    }
    let bodies = c.bodies == LogBodies::Full;
    Some(Rc::new(RefCell::new(LogDraft {
        request: if bodies { body.to_vec() } else { vec![] },
        response: vec![],
        cut: false,
        answered: !bodies,
        meta: None,
        policy: BodyPolicy {
            bodies,
            redact: c.redact,
            max_bytes: usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX),
        },
    })))
}

/// Copies the answer into the draft as it goes to the client: a whole body
/// at once, a stream chunk by chunk (a stream the runtime would pipe is
/// read through Rust instead, for logged requests only).
pub(super) fn capture(mut reply: Reply, draft: &Draft) -> Reply {
    if !draft.borrow().policy.bodies {
        return reply;
    }
    let body = std::mem::replace(&mut reply.body, ReplyBody::Full(vec![]));
    reply.body = match body {
        ReplyBody::Full(bytes) => {
            {
                let mut d = draft.borrow_mut();
                let max = d.policy.max_bytes;
                d.cut = bytes.len() > max;
                d.response = bytes[..bytes.len().min(max)].to_vec();
                d.answered = true;
            }
            // The settlement may have come first (an answer known at once).
            finish(draft);
            ReplyBody::Full(bytes)
        }
        ReplyBody::Stream(stream) => ReplyBody::Stream(Box::pin(Capture {
            inner: stream,
            draft: Some(draft.clone()),
        })),
        ReplyBody::Native(native) => match pipe::pipe(native) {
            Some(raw) => {
                let stream: ByteStream = Box::pin(
                    wasm_streams::ReadableStream::from_raw(raw.unchecked_into())
                        .into_stream()
                        .map(|chunk| {
                            chunk
                                .map(|c| Uint8Array::new(&c).to_vec())
                                .map_err(super::js_error)
                        }),
                );
                ReplyBody::Stream(Box::pin(Capture {
                    inner: stream,
                    draft: Some(draft.clone()),
                }))
            }
            None => {
                draft.borrow_mut().answered = true;
                finish(draft);
                ReplyBody::Full(vec![])
            }
        },
    };
    reply
}

/// A stream that copies what passes into a draft; its end (or its drop,
/// when the client leaves) completes the draft's answer.
struct Capture {
    inner: ByteStream,
    draft: Option<Draft>,
}

impl Stream for Capture {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(bytes))) => {
                if let Some(d) = &self.draft {
                    let mut d = d.borrow_mut();
                    let room = d.policy.max_bytes.saturating_sub(d.response.len());
                    if bytes.len() > room {
                        d.cut = true;
                    }
                    d.response
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }
}

impl Capture {
    fn end(&mut self) {
        if let Some(d) = self.draft.take() {
            d.borrow_mut().answered = true;
            finish(&d);
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.end();
    }
}

/// The settlement's facts for a logged request.
pub(super) fn settled(draft: &Draft, meta: LogMeta) {
    draft.borrow_mut().meta = Some(meta);
    finish(draft);
}

/// Writes the line once both the facts and the answer are in.
fn finish(draft: &Draft) {
    let line = {
        let d = draft.borrow();
        let Some(meta) = d.meta.as_ref().filter(|_| d.answered) else {
            return;
        };
        let request = (!d.request.is_empty()).then_some(d.request.as_slice());
        let response = d.policy.bodies.then_some(d.response.as_slice());
        (
            logs::line(meta, request, response, d.cut, d.policy),
            meta.at_ms,
        )
    };
    // Written once: the facts are taken.
    draft.borrow_mut().meta = None;
    let now = now_ms();
    STATE.with_borrow_mut(|s| s.logs.push(&line.0, line.1, now));
}

/// For `GET /admin/logs`: this isolate's own lines are written first.
pub(super) async fn flush_logs(env: &Env) {
    if bound().logs {
        write_logs(env, true).await;
    }
}

/// For `GET /admin/analytics`: this isolate's own figures are sent first.
pub(super) async fn flush_analytics(env: &Env) {
    flush(env, true).await;
}

/// Whether the analytics store is bound here.
pub(super) fn analytics_bound(env: &Env) -> bool {
    objects::bound(env, ANALYTICS)
}
