//! The isolate's side of the key objects: admission (from a lease with no
//! call, or by the key's object, serially or overlapped with the upstream
//! request), settlement into batches, and the flusher that sends them.
//!
//! The decisions are [`crate::limits::local`]'s; this module only does the
//! I/O it asks for. One [`LocalLimits`] per isolate, in a thread-local (a
//! Worker isolate is single-threaded); no borrow of it is held across an
//! await.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use worker::{Context, Delay, Env};

use super::{key_client, now_ms};
use crate::config::{Config, RequestLog};
use crate::gateway::{self, Reply};
use crate::keys::{self, KeyRef};
use crate::limits::local::{Local, LocalConfig, LocalLimits, Routing, Ticket};
use crate::limits::{Admit, Auth, Command, Money, RateInfo, Reply as KeyReply, UsageEvent};

/// A flusher keeps going while work falls due within this long of its start:
/// within the 30 s the runtime lets `waitUntil` run after a response.
const FLUSHER_BUDGET_MS: u64 = 25_000;
/// Rounds of one flusher are at least this far apart: work that cannot be
/// done yet (its key's batch still on its way) never spins the isolate.
const MIN_ROUND_MS: u64 = 20;

/// What this isolate asked of key objects, for `GET /__test/stats` (test
/// hooks only): benchmarks count the requests that needed no call.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct Stats {
    /// Requests of virtual keys admitted from a lease (no call).
    pub(super) from_lease: u64,
    /// Admitted by a call made before the upstream request.
    pub(super) serial: u64,
    /// Admitted by a call overlapped with the upstream request.
    pub(super) overlapped: u64,
    /// Batches sent (settlements, lease returns and asks).
    pub(super) syncs: u64,
}

thread_local! {
    static STATS: Cell<Stats> = const { Cell::new(Stats { from_lease: 0, serial: 0, overlapped: 0, syncs: 0 }) };
    /// This isolate's leases and batches.
    static LOCAL: RefCell<LocalLimits> = RefCell::new(LocalLimits::new(holder_id()));
    /// When the next scheduled flusher wakes, if one is.
    static FLUSHER_AT: Cell<Option<u64>> = const { Cell::new(None) };
    /// Request events not yet written (`logging.requests: batched`): when
    /// the first was added, and the events joined by commas.
    static LOG: RefCell<(Option<u64>, String)> = const { RefCell::new((None, String::new())) };
    /// How per-request events are logged, and how long a batch may wait.
    static LOG_MODE: Cell<(RequestLog, u64)> = const { Cell::new((RequestLog::Batched, 1_000)) };
}

/// A batch of request events is written at once past this size.
const LOG_BATCH_BYTES: usize = 64 * 1024;

/// A random id for this isolate (its leases' holder).
fn holder_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("iso-{}", keys::hex(&bytes))
}

/// This isolate's id (its leases' holder; its analytics batches' too).
pub(super) fn holder() -> String {
    LOCAL.with(|l| l.borrow().holder().to_owned())
}

/// Runs `f` with the key's team as its object last said (for analytics).
pub(super) fn with_team<R>(object: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
    LOCAL.with(|l| f(l.borrow().team(object)))
}

/// Applies the routing config's settings (cheap: a few integers).
pub(super) fn configure(config: &Config) {
    let local = LocalConfig {
        lease_ttl_ms: config.limits.lease_ttl_ms,
        hold_ms: config.failover.total_timeout_ms,
        flush_ms: config.limits.flush_ms,
        ..LocalConfig::default()
    };
    LOCAL.with(|l| l.borrow_mut().configure(local));
    LOG_MODE.set((config.logging.requests, config.limits.flush_ms));
}

/// Logs one request's event (a JSON object) the configured way.
pub(super) fn log_request(event: &str) {
    match LOG_MODE.get().0 {
        RequestLog::Off => {}
        RequestLog::Each => worker::console_log!("{event}"),
        RequestLog::Batched => {
            let full = LOG.with_borrow_mut(|(since, buf)| {
                if buf.is_empty() {
                    *since = Some(now_ms());
                } else {
                    buf.push(',');
                }
                buf.push_str(event);
                buf.len() >= LOG_BATCH_BYTES
            });
            if full {
                write_log();
            }
        }
    }
}

/// Writes the pending request events as one line.
fn write_log() {
    let batch = LOG.with_borrow_mut(|(since, buf)| {
        *since = None;
        std::mem::take(buf)
    });
    if !batch.is_empty() {
        worker::console_log!("{{\"event\":\"requests\",\"requests\":[{batch}]}}");
    }
}

/// When the pending request events are due to be written.
fn log_due() -> Option<u64> {
    LOG.with_borrow(|(since, _)| since.map(|t| t + LOG_MODE.get().1))
}

/// A request allowed to proceed.
pub(super) struct Admitted {
    /// How it settles.
    pub(super) ticket: Ticket,
    /// How to route for its key.
    pub(super) routing: Routing,
    /// For the `x-ratelimit-*` headers.
    pub(super) rate: RateInfo,
}

/// Step 5's outcome.
pub(super) enum Decision {
    /// Go ahead.
    Go(Admitted),
    /// Ask the object while the upstream request is already on its way.
    Overlap {
        /// How to route meanwhile.
        routing: Routing,
        /// The key's object.
        object: String,
        /// What to ask it.
        admit: Admit,
    },
    /// Refused, with the client's reply.
    Refused(Reply),
}

/// Step 5: admits a request from a lease, or asks the key's object (now,
/// or alongside the upstream request when the key's headroom is ample).
/// A static key has no limits: it is only recorded when it settles.
pub(super) async fn admit(
    env: &Env,
    ctx: &Context,
    key: &KeyRef,
    model: &str,
    reserve: Money,
    tokens: u64,
) -> Decision {
    let now = now_ms();
    let object = key.object_name();
    let KeyRef::Virtual { secret_hash, .. } = key else {
        return Decision::Go(Admitted {
            ticket: Ticket::Record {
                object,
                admitted_ms: now,
            },
            routing: Routing::default(),
            rate: RateInfo::default(),
        });
    };
    let local = LOCAL.with(|l| {
        l.borrow_mut()
            .admit(&object, secret_hash, model, reserve, tokens, now)
    });
    let (overlap, lease) = match local {
        Local::Admitted(a) => {
            count(|s| s.from_lease += 1);
            // A renewal may now be due: ask off the request path.
            ensure_flusher(env, Some(ctx));
            return Decision::Go(Admitted {
                ticket: a.ticket,
                routing: a.routing,
                rate: a.rate,
            });
        }
        Local::Ask { overlap, lease } => (overlap, lease),
    };
    let admit = Admit {
        auth: Auth::Virtual {
            secret_hash: secret_hash.clone(),
        },
        model: model.to_owned(),
        reserve,
        tokens,
        lease,
        settle: None,
    };
    match overlap {
        Some(routing) => {
            count(|s| s.overlapped += 1);
            Decision::Overlap {
                routing,
                object,
                admit,
            }
        }
        None => match decide(env, &object, admit).await {
            Ok(a) => {
                count(|s| s.serial += 1);
                ensure_flusher(env, Some(ctx));
                Decision::Go(a)
            }
            Err(reply) => Decision::Refused(reply),
        },
    }
}

/// Asks the key's object to admit one request (and perhaps to grant a
/// lease); a denial becomes the client's error reply.
pub(super) async fn decide(env: &Env, object: &str, mut admit: Admit) -> Result<Admitted, Reply> {
    // What this isolate settled for the key goes with it, applied first:
    // a request it settled still holds its reservation at the object until
    // then, and this one must not be refused for that.
    admit.settle = LOCAL
        .with(|l| l.borrow_mut().take_for_admit(object, now_ms()))
        .map(Box::new);
    let seq = admit.settle.as_ref().map_or(0, |s| s.seq);
    let model = admit.model.clone();
    let asked = admit.lease.is_some();
    let result = key_client::call(env, object, &Command::Admit(admit)).await;
    let now = now_ms();
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            if asked || seq != 0 {
                LOCAL.with(|l| l.borrow_mut().on_failure(object, seq, now_ms()));
            }
            return Err(Reply::error(&e));
        }
    };
    LOCAL.with(|l| l.borrow_mut().on_reply(object, seq, &reply, now));
    match reply {
        KeyReply::Admitted {
            reservation,
            rate,
            key,
            ..
        } => Ok(Admitted {
            ticket: Ticket::Reservation {
                object: object.to_owned(),
                id: reservation,
                admitted_ms: now,
            },
            routing: Routing::of(&key),
            rate,
        }),
        KeyReply::Denied(d) => {
            let mut reply = Reply::error(&gateway::denial_to_error(&d, &model));
            reply.headers.extend(gateway::rate_headers(&d.rate));
            Err(reply)
        }
        other => Err(Reply::error(&key_client::unexpected(other))),
    }
}

/// Step 9: the request's cost joins its key's batch; a flusher sends it
/// ([`kick`], [`flush_here`]).
pub(super) fn settle(ticket: &Ticket, cost: Money, usage: &UsageEvent) {
    LOCAL.with(|l| l.borrow_mut().settle(ticket, cost, usage, now_ms()));
}

/// Starts a flusher in the request's `waitUntil` if work is due and no
/// flusher wakes for it already: about one per flush interval per isolate,
/// not one per request.
pub(super) fn kick(env: &Env, ctx: &Context) {
    ensure_flusher(env, Some(ctx));
}

/// From inside a task that is already in a `waitUntil` (a stream's end):
/// becomes the flusher if one is needed.
pub(super) async fn flush_here(env: Env) {
    if let Some(at) = claim_flusher() {
        flusher(env, at).await;
    }
}

/// Starts a flusher for the next work due (in `ctx`'s `waitUntil`), unless
/// one already wakes for it.
fn ensure_flusher(env: &Env, ctx: Option<&Context>) {
    if let (Some(at), Some(ctx)) = (claim_flusher(), ctx) {
        ctx.wait_until(flusher(env.clone(), at));
    }
}

/// When a flusher has work: a batch, a lease, the log, analytics.
fn next_work() -> Option<u64> {
    let batches = LOCAL.with(|l| l.borrow().next_wakeup(now_ms()));
    batches
        .into_iter()
        .chain(log_due())
        .chain(super::observe::next_work())
        .min()
}

/// The time a new flusher should wake, if none wakes by then; claims it.
fn claim_flusher() -> Option<u64> {
    let at = next_work()?;
    if FLUSHER_AT.get().is_some_and(|t| t <= at) {
        return None;
    }
    FLUSHER_AT.set(Some(at));
    Some(at)
}

/// Wakes at `at`, sends every batch due, and goes on while more falls due
/// within its budget and no other flusher wakes sooner.
async fn flusher(env: Env, mut at: u64) {
    let started = now_ms();
    let mut last_round = 0;
    loop {
        let now = now_ms();
        let wake = at.max(last_round + MIN_ROUND_MS);
        if wake > now {
            Delay::from(Duration::from_millis(wake - now)).await;
        }
        last_round = now_ms();
        if log_due().is_some_and(|t| t <= last_round) {
            write_log();
        }
        flush_due(&env, false).await;
        super::observe::flush(&env, false).await;
        let next = next_work();
        let mine = FLUSHER_AT.get() == Some(at);
        match next {
            Some(n)
                if n <= started + FLUSHER_BUDGET_MS
                    && (mine || FLUSHER_AT.get().is_none_or(|t| n < t)) =>
            {
                FLUSHER_AT.set(Some(n));
                at = n;
            }
            _ => {
                if mine {
                    FLUSHER_AT.set(None);
                }
                return;
            }
        }
    }
}

/// Sends every key's due batch (all pending ones with `force`), one call
/// per key, concurrently.
pub(super) async fn flush_due(env: &Env, force: bool) {
    if force {
        write_log();
    }
    let now = now_ms();
    let objects = LOCAL.with(|l| {
        let l = l.borrow();
        if force { l.objects() } else { l.due(now) }
    });
    futures::future::join_all(objects.iter().map(|o| flush_key(env, o, force))).await;
}

/// Sends one key's batch, if it has one due (or any, with `force`).
async fn flush_key(env: &Env, object: &str, force: bool) {
    let Some(sync) = LOCAL.with(|l| l.borrow_mut().take_sync(object, now_ms(), force)) else {
        return;
    };
    let seq = sync.seq;
    count(|s| s.syncs += 1);
    match key_client::call(env, object, &Command::Sync(sync)).await {
        Ok(reply) => LOCAL.with(|l| l.borrow_mut().on_reply(object, seq, &reply, now_ms())),
        Err(e) => {
            worker::console_error!("batch for {object} not sent (resent next time): {e}");
            LOCAL.with(|l| l.borrow_mut().on_failure(object, seq, now_ms()));
        }
    }
}

/// Before a key's usage report: this isolate sends what it has settled and
/// returns the leases it is not using, so the report shows both.
pub(super) async fn before_report(env: &Env, object: &str) {
    LOCAL.with(|l| l.borrow_mut().release_idle(object));
    flush_key(env, object, true).await;
}

/// After an admin change to a key (revoked, rotated, limits changed): this
/// isolate stops admitting from its leases at once; other isolates do when
/// their leases end (`limits.lease_ttl_ms`).
pub(super) async fn after_change(env: &Env, object: &str) {
    LOCAL.with(|l| l.borrow_mut().invalidate(object));
    flush_key(env, object, true).await;
}

fn count(f: impl FnOnce(&mut Stats)) {
    STATS.with(|s| {
        let mut v = s.get();
        f(&mut v);
        s.set(v);
    });
}

/// Test hook: what this isolate asked of key objects so far.
pub(super) fn stats() -> Stats {
    STATS.with(Cell::get)
}

/// Test hook: this isolate forgets its leases and batches, as if it died.
pub(super) fn forget() {
    LOCAL.with(|l| l.borrow_mut().forget());
}

/// Overlapped admission's answer, for a request already sent upstream.
pub(super) async fn decide_overlapped(
    env: &Env,
    ctx: &Context,
    object: &str,
    admit: Admit,
) -> Result<Admitted, Reply> {
    let decided = decide(env, object, admit).await;
    if decided.is_ok() {
        ensure_flusher(env, Some(ctx));
    }
    decided
}
