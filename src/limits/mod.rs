//! Per-key limits and budgets: the state machine one Durable Object per key
//! runs, and the isolate's side of it.
//!
//! The Durable Object in `edge` is a thin shell: it decodes a [`Command`],
//! calls [`KeyState::apply`] with the current time, writes the rows the
//! command changed ([`KeyState::take_changes`]) in the same synchronous
//! step, and encodes the [`Reply`]. Everything that decides is here, with
//! time passed in, so it is tested exactly.
//!
//! Money is **reserved, then settled**. Admission reserves the worst case of
//! the request (an upper bound of its input tokens and its output cap, at the
//! dearest candidate's price) and admits only if, for every budget window,
//! `spent + reserved + held by leases + this reservation <= budget`. After
//! the answer, settlement replaces the reservation with the actual cost.
//! Because one object serialises every decision for its key, no two requests
//! can both take the last dollar, and a settlement that arrives twice (or
//! after its reservation expired) is charged once. Reservations never
//! settled (a crashed isolate) expire and are charged at the reserved amount.
//!
//! Most requests do not ask the object at all: an isolate holds a **lease**
//! ([`lease`]), a slice of each limit it admits from locally ([`local`]),
//! and reports settled requests in batches ([`Sync`]).
//!
//! Windows: requests and tokens per minute are a sliding 60-second window of
//! one-second buckets ([`window`]), never exceeded in any 60 seconds;
//! requests per day and the daily and monthly budgets follow the UTC
//! calendar. State is stored as rows ([`Row`]): a decision rewrites a few
//! small rows whatever the key's traffic or history.

mod calendar;
pub mod lease;
pub mod local;
pub mod money;
mod record;
mod store;
pub mod window;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use calendar::{date_string, day_start_ms, month_index};
pub use lease::{
    Charge, Grant, Headroom, KeySnapshot, LeaseAsk, LeaseDone, MAX_LEASE_TTL_MS, Source, Sync,
};
pub use money::{CACHE_WRITE_MARKUP, MAX_PRICE_PER_MTOK, Money, Pricing, Tokens};
pub use record::{
    Budgets, KeyPatch, KeyRecord, KeySettings, KeyView, RateLimits, check_name, check_trust,
};
pub use store::Row;

use crate::keys::constant_time_eq;
use calendar::{next_day_ms, next_month_ms};
use lease::{LEASE_SHARE, MIN_SLICE_REQUESTS, REPORT_SLACK_MS, SLOT_SHARE, is_zero, slice};
use window::MinuteWindow;

/// Length of the sliding rate windows.
pub const MINUTE_MS: u64 = 60_000;
/// Length of a UTC day.
pub const DAY_MS: u64 = 86_400_000;
/// How long a reservation waits for its settlement before it is charged as
/// reserved: longer than any request may run.
pub const RESERVATION_TTL_MS: u64 = 15 * 60_000;
/// Days of per-model usage kept.
pub const USAGE_DAYS: usize = 92;
/// Holders (isolates) not heard from for this long are forgotten.
const HOLDER_TTL_MS: u64 = DAY_MS;
/// The model name under which an expired lease's held money is recorded.
pub const UNREPORTED_MODEL: &str = "(unreported lease)";

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Auth {
    /// A key from the `GATEWAY_KEYS` secret, checked by the worker; it has
    /// no record and no limits.
    Static,
    /// A virtual key; the object compares the hash with its record.
    Virtual {
        /// SHA-256 of the presented secret, hex.
        secret_hash: String,
    },
    /// The admin token, checked by the worker.
    Admin,
}

/// What the gateway asks a key's Durable Object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Admit one request and reserve its worst-case cost; optionally grant
    /// a lease for the requests that follow.
    Admit(Admit),
    /// An isolate's batch: settled requests, returned leases, a lease ask.
    Sync(Sync),
    /// Charge reservations and leases whose time is up (the object's alarm).
    Expire,
    /// Verify the key and return its model scope (no request is counted).
    Check {
        /// Who asks.
        auth: Auth,
    },
    /// The key's usage report.
    Usage {
        /// Who asks.
        auth: Auth,
    },
    /// Admin: create the key's record.
    Create {
        /// The new record.
        record: KeyRecord,
    },
    /// Admin: read the record.
    Get,
    /// Admin: change settings.
    Update {
        /// The changes.
        patch: KeyPatch,
    },
    /// Admin: refuse the key from now on.
    Revoke,
    /// Admin: replace the secret, keeping id, settings and usage.
    Rotate {
        /// SHA-256 of the new secret.
        secret_hash: String,
        /// Its hint.
        secret_hint: String,
    },
    /// Registry object: remember a key's view for listing.
    RegistryPut {
        /// The key as listed.
        key: KeyView,
    },
    /// Registry object: list every key.
    RegistryList,
    /// The key's object sent these outgoing messages ([`KeyState::outbox`]):
    /// they are forgotten.
    OutboxSent {
        /// Their ids.
        ids: Vec<u64>,
    },
    /// Test and benchmark support (the object refuses it unless test hooks
    /// are on): fills the key with `days` × `models` of usage history and a
    /// minute window of `rpm` admissions.
    Seed {
        /// Days of history.
        days: u64,
        /// Models per day.
        models: u64,
        /// Admissions spread over the past minute.
        rpm: u64,
    },
}

/// An admission request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admit {
    /// Who asks.
    pub auth: Auth,
    /// The public model name asked for.
    pub model: String,
    /// The worst-case cost to reserve.
    #[serde(with = "money::pico")]
    pub reserve: Money,
    /// The worst-case token count (input bound + output cap), for the TPM window.
    pub tokens: u64,
    /// A lease for the requests that follow, if the isolate wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseAsk>,
    /// The isolate's batch for the key (settled requests, returned
    /// leases), applied before this request is decided: a settlement rides
    /// on the next admission instead of a call of its own, and never
    /// arrives behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<Box<Sync>>,
}

/// One request's outcome, as accounted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// The public model name.
    pub model: String,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Whether the answer failed.
    pub error: bool,
    /// Whether the response cache answered it (nothing was sent upstream).
    pub cache_hit: bool,
}

/// The object's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// The request may proceed.
    Admitted {
        /// Settle it with [`Source::Reservation`] of this id.
        reservation: u64,
        /// For the `x-ratelimit-*` headers.
        rate: RateInfo,
        /// The key, for routing (tier, regions) and for the isolate's cache.
        key: Box<KeySnapshot>,
        /// A lease, when one was asked for and granted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
    },
    /// The request is refused.
    Denied(Box<Denial>),
    /// A batch was applied (once; a repeated batch is ignored).
    Synced {
        /// The lease asked for, if granted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
        /// The key, when a lease was asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<Box<KeySnapshot>>,
        /// Why the key itself was refused (revoked, wrong secret, expired).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<Box<Denial>>,
    },
    /// Reservations and leases were expired; the next alarm time, if any.
    Expired {
        /// Unix ms of the next expiry.
        next_alarm_ms: Option<u64>,
    },
    /// The key is valid; the models it may use (`None`: all).
    Allowed {
        /// Its model scope.
        allowed_models: Option<Vec<String>>,
    },
    /// A key record.
    Key(Box<KeyView>),
    /// The registry's keys.
    Keys {
        /// Every key, by id.
        keys: Vec<KeyView>,
    },
    /// A usage report.
    Usage(Box<UsageReport>),
    /// Test data was written.
    Seeded,
    /// Done; nothing to report.
    Done,
    /// The command does not apply (no such key, key exists, ...).
    Rejected {
        /// HTTP-like status: 404 or 409.
        status: u16,
        /// Why.
        message: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The kind of refusal.
    pub reason: DenialReason,
    /// A sentence for the client.
    pub message: String,
    /// When trying again can succeed, in ms from now.
    pub retry_after_ms: Option<u64>,
    /// For the `x-ratelimit-*` headers.
    pub rate: RateInfo,
}

/// The kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialReason {
    /// No such key, or the secret does not match.
    UnknownKey,
    /// Revoked by an admin.
    Revoked,
    /// Past its expiry.
    Expired,
    /// The key may not use this model.
    ModelNotAllowed,
    /// Requests per minute or per day.
    RequestLimit,
    /// Tokens per minute.
    TokenLimit,
    /// Requests in flight.
    ConcurrencyLimit,
    /// A budget would be exceeded.
    BudgetExceeded,
}

impl DenialReason {
    /// Whether the key itself is refused (as opposed to this request).
    pub fn is_key_refused(self) -> bool {
        matches!(
            self,
            DenialReason::UnknownKey | DenialReason::Revoked | DenialReason::Expired
        )
    }
}

/// Rate-limit state for the `x-ratelimit-*` headers (minute windows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateInfo {
    /// Requests per minute allowed.
    pub limit_requests: Option<u64>,
    /// Left in the current window (after this request, when admitted).
    pub remaining_requests: Option<u64>,
    /// Ms until the window has room for one more request.
    pub reset_requests_ms: Option<u64>,
    /// Tokens per minute allowed.
    pub limit_tokens: Option<u64>,
    /// Left in the current window.
    pub remaining_tokens: Option<u64>,
    /// Ms until the oldest token charge leaves the window.
    pub reset_tokens_ms: Option<u64>,
}

/// `GET /v1/usage` and `GET /admin/usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Always `usage`.
    pub object: String,
    /// The key's id (`None` for static keys).
    pub key: Option<String>,
    /// Requests over the key's life (admitted here, or reported from leases).
    pub requests: u64,
    /// Unix ms of the first request (0 before any).
    pub first_request_ms: u64,
    /// Unix ms of the last request.
    pub last_request_ms: u64,
    /// Requests not yet settled: admitted here, or from leases as their
    /// isolates last reported.
    pub in_flight: u64,
    /// Leases isolates hold.
    #[serde(default)]
    pub leases: u64,
    /// Spent today (UTC), settled only.
    pub spent_today_usd: Money,
    /// Spent this month (UTC).
    pub spent_this_month_usd: Money,
    /// Spent over the key's life.
    pub spent_total_usd: Money,
    /// Reserved by requests in flight and held by leases.
    pub reserved_usd: Money,
    /// The key's budgets.
    pub budgets: Budgets,
    /// Per day and model, oldest first.
    pub by_day: Vec<DayUsage>,
}

/// One day's use of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    /// The public model name.
    pub model: String,
    /// Requests settled.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Of the requests, those the response cache answered.
    #[serde(default)]
    pub cache_hits: u64,
    /// Cost in USD.
    pub cost_usd: Money,
    /// Cost in exact picodollars (what analytics totals are compared with).
    #[serde(default)]
    pub cost_pico: u64,
}

/// What a key's object sends out by itself, from its alarm, until it is
/// acknowledged: recorded in the same step as the charge that caused it,
/// so neither a lost reply nor a crashed isolate loses one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outgoing {
    /// A budget threshold crossed (`budget_80`, `budget_100`), for the
    /// alerts object.
    Alert(crate::observe::alerts::Alert),
    /// A change to the key's usage that no isolate reported to analytics:
    /// a reservation or lease charged at its expiry (positive), or a
    /// settlement that arrived after its reservation or lease had been
    /// charged (negative, as it was not charged again). With these,
    /// analytics totals equal the key's usage exactly.
    Correction(Correction),
}

/// A signed change to a day's usage of one model (see [`Outgoing`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    /// The admission time it counts at (its day and hour).
    pub at_ms: u64,
    /// The key id (`static` for static keys).
    pub key: String,
    /// The key's team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The public model name (or [`UNREPORTED_MODEL`]).
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Failed requests.
    pub errors: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Answered from the response cache.
    #[serde(default)]
    pub cache_hits: i64,
    /// Cost, picodollars.
    pub cost_pico: i64,
}

impl Correction {
    /// The correction for a charge, positive (`sign` 1) or negative (-1).
    fn of(key: &str, team: Option<String>, c: &Charge, sign: i64) -> Correction {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX) * sign;
        Correction {
            at_ms: c.admitted_ms,
            key: key.to_owned(),
            team,
            model: c.model.clone(),
            requests: n(c.requests),
            errors: n(c.errors),
            input_tokens: n(c.input_tokens),
            output_tokens: n(c.output_tokens),
            cached_tokens: n(c.cached_tokens),
            cache_hits: n(c.cache_hits),
            cost_pico: n(c.cost.0),
        }
    }
}

/// Counters and calendar windows: one small row, rewritten by most commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    requests: u64,
    first_request_ms: u64,
    last_request_ms: u64,
    day_requests: Count,
    spent_day: Spend,
    spent_month: Spend,
    #[serde(with = "money::pico")]
    spent_total: Money,
    next_id: u64,
}

/// An admitted request awaiting settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    #[serde(with = "money::pico")]
    amount: Money,
    model: String,
    admitted_ms: u64,
    expires_ms: u64,
    /// Tokens counted for it in the minute window, and where.
    #[serde(default)]
    tokens: u64,
    #[serde(default)]
    bucket: Option<u64>,
}

/// A lease some isolate holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    holder: String,
    #[serde(default)]
    ask_id: u64,
    granted_ms: u64,
    admit_until_ms: u64,
    /// Past this, the isolate is presumed gone and `money` is charged.
    hold_until_ms: u64,
    /// Requests and tokens counted in the minute window at `bucket`.
    window_requests: u64,
    window_tokens: u64,
    bucket: Option<u64>,
    /// Requests counted against `rpd` on `day`.
    day: u64,
    day_requests: u64,
    /// Money held (granted, less what reports charged).
    #[serde(with = "money::pico")]
    money: Money,
    /// Concurrency slots held.
    slots: u64,
}

/// The last batch applied from one isolate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    seq: u64,
    seen_ms: u64,
    /// Requests it had admitted from leases and not settled, as of its
    /// last batch (for usage reports; limits use the leases' slots).
    #[serde(default)]
    in_flight: u64,
}

/// Spend in one calendar window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Spend {
    /// The window's index (UTC day number or `year × 12 + month`).
    window: u64,
    #[serde(with = "money::pico")]
    amount: Money,
}

/// Requests in one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Count {
    day: u64,
    count: u64,
}

/// Counters kept per day and model; the money is stored exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Rollup {
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    cache_hits: u64,
    #[serde(with = "money::pico")]
    cost: Money,
}

/// The kinds of stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Record,
    Meta,
    Bucket,
    Reservation,
    Lease,
    Holder,
    Usage,
    Registry,
    Outbox,
}

/// Everything a key's Durable Object stores, and which rows changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyState {
    /// The virtual key's record; `None` for static keys (and the registry).
    record: Option<KeyRecord>,
    meta: Meta,
    window: MinuteWindow,
    reservations: BTreeMap<u64, Reservation>,
    leases: BTreeMap<u64, Lease>,
    holders: BTreeMap<String, Holder>,
    /// `"YYYY-MM-DD\tmodel"` -> counters; sorted, so the oldest day is first.
    usage: BTreeMap<String, Rollup>,
    /// On the registry object only: every key, by id.
    registry: BTreeMap<String, KeyView>,
    /// What the object must send out ([`Outgoing`]), by id.
    outbox: BTreeMap<u64, Outgoing>,
    /// Rows changed since the last [`KeyState::take_changes`].
    dirty: BTreeSet<(Table, String)>,
}

impl KeyState {
    /// Applies a command at `now_ms`. The rows it changed are then
    /// returned by [`KeyState::take_changes`].
    pub fn apply(&mut self, command: Command, now_ms: u64) -> Reply {
        match command {
            Command::Admit(mut a) => {
                if let Some(batch) = a.settle.take() {
                    self.sync(*batch, now_ms);
                }
                self.admit(a, now_ms)
            }
            Command::Sync(s) => self.sync(s, now_ms),
            Command::Expire => {
                self.expire(now_ms);
                Reply::Expired {
                    next_alarm_ms: self.next_alarm_ms(),
                }
            }
            Command::Check { auth } => match self.check_auth(&auth, now_ms) {
                Err(d) => Reply::Denied(d),
                Ok(()) => Reply::Allowed {
                    allowed_models: self
                        .record
                        .as_ref()
                        .and_then(|r| r.settings.allowed_models.clone()),
                },
            },
            Command::Usage { auth } => match self.check_auth(&auth, now_ms) {
                Err(d) => Reply::Denied(d),
                Ok(()) => Reply::Usage(Box::new(self.report(now_ms))),
            },
            Command::Create { record } => {
                if self.record.is_some() {
                    return rejected(409, "a key with this id exists");
                }
                let view = KeyView::from(&record);
                self.record = Some(record);
                self.touch(Table::Record, "");
                Reply::Key(Box::new(view))
            }
            Command::Get => match &self.record {
                Some(r) => Reply::Key(Box::new(r.into())),
                None => rejected(404, "no such key"),
            },
            Command::Update { patch } => self.edit(now_ms, |r| r.settings.apply(patch)),
            Command::Revoke => self.edit(now_ms, |r| r.revoked = true),
            // A revoked key stays revoked: a new secret for it would never work.
            Command::Rotate { .. } if self.record.as_ref().is_some_and(|r| r.revoked) => {
                rejected(409, "The key is revoked; a revoked key cannot be rotated.")
            }
            Command::Rotate {
                secret_hash,
                secret_hint,
            } => self.edit(now_ms, |r| {
                r.secret_hash = secret_hash;
                r.secret_hint = secret_hint;
            }),
            Command::RegistryPut { key } => {
                self.touch(Table::Registry, &key.id);
                self.registry.insert(key.id.clone(), key);
                Reply::Keys { keys: vec![] }
            }
            Command::RegistryList => Reply::Keys {
                keys: self.registry.values().cloned().collect(),
            },
            Command::OutboxSent { ids } => {
                for id in ids {
                    if self.outbox.remove(&id).is_some() {
                        self.touch(Table::Outbox, &id.to_string());
                    }
                }
                Reply::Done
            }
            Command::Seed { days, models, rpm } => {
                self.seed_history(now_ms, days, models, rpm);
                Reply::Seeded
            }
        }
    }

    fn touch(&mut self, table: Table, key: &str) {
        self.dirty.insert((table, key.to_owned()));
    }

    fn touch_bucket(&mut self, idx: u64) {
        self.dirty.insert((Table::Bucket, idx.to_string()));
    }

    fn edit(&mut self, now_ms: u64, change: impl FnOnce(&mut KeyRecord)) -> Reply {
        match &mut self.record {
            None => rejected(404, "no such key"),
            Some(r) => {
                change(r);
                r.updated_ms = now_ms;
                let view = KeyView::from(&*r);
                self.touch(Table::Record, "");
                Reply::Key(Box::new(view))
            }
        }
    }

    /// The earliest time a reservation or a lease expires, for the alarm.
    pub fn next_alarm_ms(&self) -> Option<u64> {
        let reservations = self.reservations.values().map(|r| r.expires_ms);
        let leases = self.leases.values().map(|l| l.hold_until_ms);
        reservations.chain(leases).min()
    }

    fn check_auth(&self, auth: &Auth, now_ms: u64) -> Result<(), Box<Denial>> {
        let deny =
            |reason, message: &str| Err(self.denial(reason, message.to_owned(), None, now_ms));
        match (auth, &self.record) {
            (Auth::Static | Auth::Admin, _) => Ok(()),
            (Auth::Virtual { .. }, None) => {
                deny(DenialReason::UnknownKey, "Incorrect API key provided.")
            }
            (Auth::Virtual { secret_hash }, Some(r)) => {
                if !constant_time_eq(secret_hash.as_bytes(), r.secret_hash.as_bytes()) {
                    deny(DenialReason::UnknownKey, "Incorrect API key provided.")
                } else if r.revoked {
                    deny(DenialReason::Revoked, "This API key has been revoked.")
                } else if r.settings.expires_at_ms.is_some_and(|t| now_ms >= t) {
                    deny(DenialReason::Expired, "This API key has expired.")
                } else {
                    Ok(())
                }
            }
        }
    }

    fn admit(&mut self, a: Admit, now_ms: u64) -> Reply {
        if let Err(d) = self.check_auth(&a.auth, now_ms) {
            return Reply::Denied(d);
        }
        self.prune(now_ms);
        if let Err(d) = self.check_limits(&a, now_ms) {
            return Reply::Denied(d);
        }
        let id = self.next_id();
        // The minute window exists for the per-minute limits; a key without
        // them keeps none (limits set later count from then on).
        let bucket = self
            .windowed()
            .then(|| self.window.add(now_ms, 1, a.tokens));
        if let Some(idx) = bucket {
            self.touch_bucket(idx);
        }
        self.reservations.insert(
            id,
            Reservation {
                amount: a.reserve,
                model: a.model,
                admitted_ms: now_ms,
                expires_ms: now_ms + RESERVATION_TTL_MS,
                tokens: a.tokens,
                bucket,
            },
        );
        self.touch(Table::Reservation, &id.to_string());
        self.count_day_requests(now_ms, 1);
        self.count_request(now_ms, 1);
        let grant = a.lease.and_then(|ask| self.grant(&ask, now_ms));
        Reply::Admitted {
            reservation: id,
            rate: self.rate_info(now_ms),
            key: Box::new(self.snapshot(now_ms)),
            grant,
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.meta.next_id;
        self.meta.next_id += 1;
        self.touch(Table::Meta, "");
        id
    }

    /// Whether the key keeps a minute window (it has `rpm` or `tpm`).
    fn windowed(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| r.settings.limits.rpm.is_some() || r.settings.limits.tpm.is_some())
    }

    fn count_day_requests(&mut self, now_ms: u64, n: u64) {
        let today = now_ms / DAY_MS;
        if self.meta.day_requests.day != today {
            self.meta.day_requests = Count {
                day: today,
                count: 0,
            };
        }
        self.meta.day_requests.count += n;
        self.touch(Table::Meta, "");
    }

    fn day_requests(&self, now_ms: u64) -> u64 {
        if self.meta.day_requests.day == now_ms / DAY_MS {
            self.meta.day_requests.count
        } else {
            0
        }
    }

    /// Requests in flight: reservations here, slots held by leases.
    fn in_flight(&self) -> u64 {
        self.reservations.len() as u64 + self.leases.values().map(|l| l.slots).sum::<u64>()
    }

    /// Money promised but not yet spent: reservations and lease holds.
    fn reserved(&self) -> Money {
        self.reserved_by_requests().plus(self.reserved_by_leases())
    }

    /// What requests in flight hold (their worst case, until they settle).
    fn reserved_by_requests(&self) -> Money {
        self.reservations
            .values()
            .map(|r| r.amount)
            .fold(Money::ZERO, Money::plus)
    }

    /// What leases hold (until they are returned).
    fn reserved_by_leases(&self) -> Money {
        self.leases
            .values()
            .map(|l| l.money)
            .fold(Money::ZERO, Money::plus)
    }

    fn check_limits(&self, a: &Admit, now_ms: u64) -> Result<(), Box<Denial>> {
        let Some(record) = &self.record else {
            return Ok(());
        };
        let s = &record.settings;
        if let Some(models) = &s.allowed_models
            && !models.contains(&a.model)
        {
            let msg = format!(
                "The model `{}` does not exist or you do not have access to it.",
                a.model
            );
            return Err(self.denial(DenialReason::ModelNotAllowed, msg, None, now_ms));
        }
        let l = &s.limits;
        // Leases hold part of each limit; what they do not use comes back
        // when they are returned, at most a lease's life from now.
        let lease_wait = self
            .leases
            .values()
            .map(|l| l.admit_until_ms.saturating_sub(now_ms) + 2_000)
            .min();
        if let Some(max) = l.max_concurrent
            && self.in_flight() >= max
        {
            let msg = format!("Too many requests in flight for this key (limit {max}).");
            let wait = lease_wait.unwrap_or(1_000).min(1_000);
            return Err(self.denial(DenialReason::ConcurrencyLimit, msg, Some(wait), now_ms));
        }
        let used = self.window.totals();
        if let Some(rpm) = l.rpm
            && used.requests >= rpm
        {
            let msg = format!("Rate limit reached: {rpm} requests per minute.");
            let wait = self.window.wait_for(now_ms, rpm, 1, |b| b.requests);
            return Err(self.denial(DenialReason::RequestLimit, msg, wait, now_ms));
        }
        if let Some(rpd) = l.rpd
            && self.day_requests(now_ms) >= rpd
        {
            let msg = format!("Rate limit reached: {rpd} requests per day.");
            let wait = lease_wait
                .unwrap_or(u64::MAX)
                .min(next_day_ms(now_ms) - now_ms);
            return Err(self.denial(DenialReason::RequestLimit, msg, Some(wait), now_ms));
        }
        if let Some(tpm) = l.tpm
            && used.tokens.saturating_add(a.tokens) > tpm
        {
            let msg = format!(
                "Rate limit reached: {tpm} tokens per minute ({} used, this request may use up to {}).",
                used.tokens, a.tokens
            );
            // A request larger than the whole window can never pass.
            let wait = self.window.wait_for(now_ms, tpm, a.tokens, |b| b.tokens);
            return Err(self.denial(DenialReason::TokenLimit, msg, wait, now_ms));
        }
        let reserved = self.reserved();
        for (budget, spent, name, reset) in self.budget_windows(now_ms) {
            let Some(budget) = budget else { continue };
            if spent.plus(reserved).plus(a.reserve) <= budget {
                continue;
            }
            let (msg, wait) = if a.reserve > budget {
                // No window will ever have room for it: say so, and that a
                // retry cannot help (no `Retry-After`).
                let msg = format!(
                    "This request may cost up to {}, more than your whole {name} budget of {budget}; lower `max_tokens` or ask for a larger budget.",
                    a.reserve
                );
                (msg, None)
            } else if spent.plus(self.reserved_by_requests()).plus(a.reserve) > budget
                && spent.plus(a.reserve) <= budget
            {
                // It fits but for what requests in flight hold: they settle
                // at what they cost within moments, so retry soon, not
                // when the window resets.
                let msg = format!(
                    "Your {name} budget of {budget} is held by requests in flight: {spent} spent, {reserved} reserved until they finish, this request may cost up to {}. Retry in a moment.",
                    a.reserve
                );
                (msg, Some(1_000))
            } else {
                let msg = if spent >= budget {
                    format!("You exceeded your {name} budget of {budget}: {spent} spent.")
                } else {
                    format!(
                        "Your {name} budget of {budget} has no room for this request: {spent} spent, {reserved} reserved by requests in flight, and it may cost up to {}.",
                        a.reserve
                    )
                };
                let wait = match (reset, lease_wait) {
                    (Some(r), Some(l)) => Some(r.min(l)),
                    (r, l) => r.or(l),
                };
                (msg, wait)
            };
            return Err(self.denial(DenialReason::BudgetExceeded, msg, wait, now_ms));
        }
        Ok(())
    }

    /// Each budget with what was spent in its window and ms until it resets.
    fn budget_windows(
        &self,
        now_ms: u64,
    ) -> [(Option<Money>, Money, &'static str, Option<u64>); 3] {
        let b = self
            .record
            .as_ref()
            .map(|r| r.settings.budgets.clone())
            .unwrap_or_default();
        [
            (
                b.daily_usd,
                spent_in(&self.meta.spent_day, now_ms / DAY_MS),
                "daily",
                Some(next_day_ms(now_ms) - now_ms),
            ),
            (
                b.monthly_usd,
                spent_in(&self.meta.spent_month, month_index(now_ms)),
                "monthly",
                Some(next_month_ms(now_ms) - now_ms),
            ),
            (b.total_usd, self.meta.spent_total, "total", None),
        ]
    }

    /// What is left of each limit (after [`KeyState::prune`]).
    fn headroom(&self, now_ms: u64) -> Headroom {
        let Some(record) = &self.record else {
            return Headroom::default();
        };
        let l = &record.settings.limits;
        let used = self.window.totals();
        let rpm = l.rpm.map(|rpm| rpm.saturating_sub(used.requests));
        let rpd = l
            .rpd
            .map(|rpd| rpd.saturating_sub(self.day_requests(now_ms)));
        let reserved = self.reserved();
        let money = self
            .budget_windows(now_ms)
            .into_iter()
            .filter_map(|(budget, spent, _, _)| Some(budget?.minus(spent.plus(reserved))))
            .min();
        Headroom {
            requests: match (rpm, rpd) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            tokens: l.tpm.map(|tpm| tpm.saturating_sub(used.tokens)),
            money,
            slots: l
                .max_concurrent
                .map(|max| max.saturating_sub(self.in_flight())),
        }
    }

    /// What an isolate may cache of the key.
    fn snapshot(&self, now_ms: u64) -> KeySnapshot {
        let Some(r) = &self.record else {
            return KeySnapshot::default();
        };
        let s = &r.settings;
        KeySnapshot {
            secret_hash: r.secret_hash.clone(),
            expires_at_ms: s.expires_at_ms,
            allowed_models: s.allowed_models.clone(),
            tier: s.tier.clone(),
            team: s.team.clone(),
            regions: s.allowed_regions.clone(),
            data_class: s.data_class.clone(),
            pii: s.pii.clone(),
            strict: s.strict_admission,
            headroom: self.headroom(now_ms),
        }
    }

    /// Grants a lease if every limit the key has leaves a slice worth
    /// holding ([`lease`]); the caller has checked the key.
    fn grant(&mut self, ask: &LeaseAsk, now_ms: u64) -> Option<Grant> {
        let settings = &self.record.as_ref()?.settings;
        if settings.strict_admission {
            return None;
        }
        // Never across midnight: `rpd` and the daily budget count by day.
        let mut admit_until =
            (now_ms + ask.ttl_ms.clamp(1, MAX_LEASE_TTL_MS)).min(next_day_ms(now_ms));
        if let Some(t) = settings.expires_at_ms {
            admit_until = admit_until.min(t);
        }
        if admit_until <= now_ms {
            return None;
        }
        let (rpm, rpd, tpm) = (
            settings.limits.rpm.is_some(),
            settings.limits.rpd.is_some(),
            settings.limits.tpm.is_some(),
        );
        let head = self.headroom(now_ms);
        let take = |headroom: Option<u64>, want: u64, share: u64, least: u64| match headroom {
            None => Ok(None),
            Some(h) => slice(want, h, share, least).map(Some).ok_or(()),
        };
        let least = MIN_SLICE_REQUESTS;
        let requests = take(head.requests, ask.requests, LEASE_SHARE, least).ok()?;
        let tokens = take(
            head.tokens,
            ask.tokens,
            LEASE_SHARE,
            ask.min_tokens.saturating_mul(least),
        )
        .ok()?;
        let money = take(
            head.money.map(|m| m.0),
            ask.money.0,
            LEASE_SHARE,
            ask.min_money.0.saturating_mul(least),
        )
        .ok()?
        .map(Money);
        let slots = take(head.slots, ask.slots, SLOT_SHARE, 1).ok()?;
        // Counted at the last instant the slice can be used: wherever in the
        // lease's life the isolate uses it, no minute window can hold more.
        let window_requests = if rpm { requests.unwrap_or(0) } else { 0 };
        let window_tokens = if tpm { tokens.unwrap_or(0) } else { 0 };
        let bucket = (window_requests > 0 || window_tokens > 0).then(|| {
            self.window
                .add(admit_until - 1, window_requests, window_tokens)
        });
        if let Some(idx) = bucket {
            self.touch_bucket(idx);
        }
        let day_requests = if rpd { requests.unwrap_or(0) } else { 0 };
        self.count_day_requests(now_ms, day_requests);
        let id = self.next_id();
        self.leases.insert(
            id,
            Lease {
                holder: ask.holder.clone(),
                ask_id: ask.ask_id,
                granted_ms: now_ms,
                admit_until_ms: admit_until,
                hold_until_ms: admit_until + ask.hold_ms.min(RESERVATION_TTL_MS) + REPORT_SLACK_MS,
                window_requests,
                window_tokens,
                bucket,
                day: now_ms / DAY_MS,
                day_requests,
                money: money.unwrap_or(Money::ZERO),
                slots: slots.unwrap_or(0),
            },
        );
        self.touch(Table::Lease, &id.to_string());
        Some(Grant {
            lease: id,
            admit_until_ms: admit_until,
            requests,
            tokens,
            money,
            slots,
        })
    }

    fn sync(&mut self, s: Sync, now_ms: u64) -> Reply {
        self.prune(now_ms);
        let fresh = s.seq == 0 || self.holders.get(&s.holder).is_none_or(|h| s.seq > h.seq);
        if fresh {
            if !self.holders.contains_key(&s.holder) {
                self.forget_idle_holders(now_ms);
            }
            let h = self.holders.entry(s.holder.clone()).or_default();
            h.seq = h.seq.max(s.seq);
            h.seen_ms = now_ms;
            h.in_flight = s.in_flight;
            self.touch(Table::Holder, &s.holder);
        }
        if fresh {
            for c in &s.charges {
                self.apply_charge(c);
            }
            for d in &s.done {
                self.release(d, now_ms);
            }
            self.release_orphans(&s, now_ms);
        }
        let Some(ask) = s.ask else {
            return Reply::Synced {
                grant: None,
                key: None,
                refused: None,
            };
        };
        if let Err(d) = self.check_auth(&ask.auth, now_ms) {
            return Reply::Synced {
                grant: None,
                key: None,
                refused: Some(d),
            };
        }
        let grant = self.grant(&ask, now_ms);
        Reply::Synced {
            grant,
            key: Some(Box::new(self.snapshot(now_ms))),
            refused: None,
        }
    }

    /// Leases granted to this holder for an ask it has had its answer to
    /// (or given up on), yet does not hold: the grant was lost on the way,
    /// so nothing was admitted from them.
    fn release_orphans(&mut self, s: &Sync, now_ms: u64) {
        let orphans: Vec<u64> = self
            .leases
            .iter()
            .filter(|(id, l)| {
                l.holder == s.holder && l.ask_id <= s.answered && !s.held.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for lease in orphans {
            let done = LeaseDone {
                lease,
                used_requests: 0,
                used_tokens: 0,
            };
            self.release(&done, now_ms);
        }
    }

    /// Requests in flight from leases, as the holders last reported; a
    /// holder that no longer holds a lease has none.
    fn lease_in_flight(&self) -> u64 {
        self.holders
            .iter()
            .filter(|(name, _)| self.leases.values().any(|l| &l.holder == *name))
            .map(|(_, h)| h.in_flight)
            .sum()
    }

    fn forget_idle_holders(&mut self, now_ms: u64) {
        let idle: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| h.seen_ms + HOLDER_TTL_MS < now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            self.holders.remove(&k);
            self.touch(Table::Holder, &k);
        }
    }

    /// Applies settled requests. A reservation settles once; a charge against
    /// a lease that already expired was charged in full then, so it is not
    /// charged again.
    fn apply_charge(&mut self, c: &Charge) {
        match c.source {
            Source::Reservation { id } => {
                let Some(r) = self.reservations.remove(&id) else {
                    // Charged at its expiry already: not charged again.
                    self.correct(c, -1);
                    return;
                };
                self.touch(Table::Reservation, &id.to_string());
                // Its tokens count as used from now on, not as reserved.
                if let Some(idx) = r.bucket
                    && self.window.get(idx) != Default::default()
                {
                    self.window.remove(idx, 0, r.tokens);
                    self.window
                        .add(idx * window::BUCKET_MS, 0, c.input_tokens + c.output_tokens);
                    self.touch_bucket(idx);
                }
                self.charge(c.cost, r.admitted_ms);
                self.record_usage(r.admitted_ms, c);
            }
            Source::Lease { id } => {
                let Some(lease) = self.leases.get_mut(&id) else {
                    self.correct(c, -1);
                    return;
                };
                lease.money = lease.money.minus(c.cost);
                self.touch(Table::Lease, &id.to_string());
                self.count_request(c.admitted_ms, c.requests);
                self.charge(c.cost, c.admitted_ms);
                self.record_usage(c.admitted_ms, c);
            }
            Source::Record => {
                self.count_request(c.admitted_ms, c.requests);
                self.charge(c.cost, c.admitted_ms);
                self.record_usage(c.admitted_ms, c);
            }
        }
    }

    /// A lease given back: what it did not use returns to the key's limits.
    /// Used slots move to the time of the report (every use was before it),
    /// so they leave the minute window no later than they would have.
    fn release(&mut self, d: &LeaseDone, now_ms: u64) {
        let Some(l) = self.leases.remove(&d.lease) else {
            return;
        };
        self.touch(Table::Lease, &d.lease.to_string());
        if let Some(idx) = l.bucket {
            self.window.remove(idx, l.window_requests, l.window_tokens);
            self.touch_bucket(idx);
            let used_requests = d.used_requests.min(l.window_requests);
            let used_tokens = if l.window_tokens > 0 {
                d.used_tokens
            } else {
                0
            };
            if used_requests > 0 || used_tokens > 0 {
                let at = now_ms.min(l.admit_until_ms - 1);
                let idx = self.window.add(at, used_requests, used_tokens);
                self.touch_bucket(idx);
            }
        }
        if l.day_requests > 0 && self.meta.day_requests.day == l.day {
            let unused = l.day_requests - d.used_requests.min(l.day_requests);
            self.meta.day_requests.count = self.meta.day_requests.count.saturating_sub(unused);
            self.touch(Table::Meta, "");
        }
    }

    /// Charges what is due: reservations never settled at their reserved
    /// amount, leases never returned at the money they still hold.
    fn expire(&mut self, now_ms: u64) {
        let due: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(r) = self.reservations.remove(&id) {
                self.touch(Table::Reservation, &id.to_string());
                self.charge(r.amount, r.admitted_ms);
                let c = Charge {
                    source: Source::Reservation { id },
                    admitted_ms: r.admitted_ms,
                    model: r.model,
                    requests: 1,
                    errors: 1,
                    input_tokens: 0,
                    output_tokens: 0,
                    cached_tokens: 0,
                    cache_hits: 0,
                    cost: r.amount,
                };
                self.record_usage(r.admitted_ms, &c);
                self.correct(&c, 1);
            }
        }
        let due: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.hold_until_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(l) = self.leases.remove(&id) {
                // Its slots in the minute window stay counted until they age
                // out: they may have been used.
                self.touch(Table::Lease, &id.to_string());
                self.charge(l.money, l.granted_ms);
                let c = Charge {
                    source: Source::Lease { id },
                    admitted_ms: l.granted_ms,
                    model: UNREPORTED_MODEL.to_owned(),
                    requests: 0,
                    errors: 0,
                    input_tokens: 0,
                    output_tokens: 0,
                    cached_tokens: 0,
                    cache_hits: 0,
                    cost: l.money,
                };
                self.record_usage(l.granted_ms, &c);
                self.correct(&c, 1);
            }
        }
    }

    fn count_request(&mut self, at_ms: u64, n: u64) {
        if n == 0 {
            return;
        }
        let m = &mut self.meta;
        m.requests += n;
        if m.first_request_ms == 0 {
            m.first_request_ms = at_ms;
        }
        // Clocks can step backwards between isolates; never go back.
        m.last_request_ms = m.last_request_ms.max(at_ms);
        self.touch(Table::Meta, "");
    }

    /// Adds settled spend to the windows of the day and month the request
    /// was admitted in (a request admitted before midnight belongs to the
    /// day it was admitted).
    fn charge(&mut self, amount: Money, admitted_ms: u64) {
        let day = admitted_ms / DAY_MS;
        let month = month_index(admitted_ms);
        let before = [
            spent_in(&self.meta.spent_day, day),
            spent_in(&self.meta.spent_month, month),
            self.meta.spent_total,
        ];
        let current = [
            self.meta.spent_day.window <= day,
            self.meta.spent_month.window <= month,
            true,
        ];
        let m = &mut self.meta;
        for (spend, window) in [(&mut m.spent_day, day), (&mut m.spent_month, month)] {
            if spend.window < window {
                *spend = Spend {
                    window,
                    amount: Money::ZERO,
                };
            }
            if spend.window == window {
                spend.amount = spend.amount.plus(amount);
            }
        }
        m.spent_total = m.spent_total.plus(amount);
        self.touch(Table::Meta, "");
        self.raise_crossings(before, current, amount, admitted_ms);
    }

    /// Budget thresholds the spend just crossed, into the outbox. Only a
    /// charge to the current window can cross its budget.
    fn raise_crossings(
        &mut self,
        before: [Money; 3],
        current: [bool; 3],
        amount: Money,
        at_ms: u64,
    ) {
        use crate::observe::alerts::{Alert, budget_crossings};
        let Some(record) = &self.record else { return };
        let b = &record.settings.budgets;
        let windows = [
            ("daily", b.daily_usd, date_string(at_ms)),
            ("monthly", b.monthly_usd, date_string(at_ms)[..7].to_owned()),
            ("total", b.total_usd, String::new()),
        ];
        let mut alerts = vec![];
        for (i, (name, budget, window)) in windows.into_iter().enumerate() {
            let Some(budget) = budget.filter(|_| current[i]) else {
                continue;
            };
            let after = before[i].plus(amount);
            for event in budget_crossings(before[i], after, budget) {
                let mut details = serde_json::Map::new();
                let mut put = |k: &str, v: serde_json::Value| {
                    details.insert(k.to_owned(), v);
                };
                put("key", record.id.clone().into());
                put("name", record.settings.name.clone().into());
                if let Some(team) = &record.settings.team {
                    put("team", team.clone().into());
                }
                put("budget", name.into());
                put("window", window.clone().into());
                put("budget_usd", budget.usd().into());
                put("spent_usd", after.usd().into());
                alerts.push(Alert {
                    event,
                    target: format!("key:{}:{name}", record.id),
                    at_ms,
                    details,
                });
            }
        }
        for alert in alerts {
            self.send(Outgoing::Alert(alert));
        }
    }

    /// Queues an outgoing message.
    fn send(&mut self, item: Outgoing) {
        let id = self.next_id();
        self.outbox.insert(id, item);
        self.touch(Table::Outbox, &id.to_string());
    }

    /// A change to the key's usage analytics did not see from an isolate.
    fn correct(&mut self, c: &Charge, sign: i64) {
        let (key, team) = match &self.record {
            Some(r) => (r.id.clone(), r.settings.team.clone()),
            None => ("static".to_owned(), None),
        };
        self.send(Outgoing::Correction(Correction::of(&key, team, c, sign)));
    }

    /// What the object must send, oldest first (in order: analytics
    /// applies a holder's batches only in increasing order).
    pub fn outbox(&self) -> Vec<(u64, Outgoing)> {
        self.outbox.iter().map(|(id, o)| (*id, o.clone())).collect()
    }

    fn record_usage(&mut self, admitted_ms: u64, c: &Charge) {
        let key = format!("{}\t{}", date_string(admitted_ms), c.model);
        let is_new = !self.usage.contains_key(&key);
        let r = self.usage.entry(key.clone()).or_default();
        r.requests += c.requests;
        r.errors += c.errors;
        r.input_tokens += c.input_tokens;
        r.output_tokens += c.output_tokens;
        r.cached_tokens += c.cached_tokens;
        r.cache_hits += c.cache_hits;
        r.cost = r.cost.plus(c.cost);
        self.touch(Table::Usage, &key);
        // Keep the newest USAGE_DAYS days; only a new entry can add a day.
        if is_new {
            self.trim_usage();
        }
    }

    /// Drops the oldest days of usage beyond [`USAGE_DAYS`].
    fn trim_usage(&mut self) {
        loop {
            let mut days: Vec<&str> = self.usage.keys().map(|k| &k[..10]).collect();
            days.dedup();
            if days.len() <= USAGE_DAYS {
                return;
            }
            let oldest = days[0].to_owned();
            let gone: Vec<String> = self
                .usage
                .keys()
                .take_while(|k| k.starts_with(&oldest))
                .cloned()
                .collect();
            for k in gone {
                self.usage.remove(&k);
                self.touch(Table::Usage, &k);
            }
        }
    }

    fn prune(&mut self, now_ms: u64) {
        for idx in self.window.prune(now_ms) {
            self.touch_bucket(idx);
        }
    }

    fn rate_info(&self, now_ms: u64) -> RateInfo {
        let Some(record) = &self.record else {
            return RateInfo::default();
        };
        let l = &record.settings.limits;
        let used = self.window.totals();
        let oldest_reset = self.window.oldest_reset_ms(now_ms);
        RateInfo {
            limit_requests: l.rpm,
            remaining_requests: l.rpm.map(|r| r.saturating_sub(used.requests)),
            reset_requests_ms: l.rpm.and(oldest_reset),
            limit_tokens: l.tpm,
            remaining_tokens: l.tpm.map(|t| t.saturating_sub(used.tokens)),
            reset_tokens_ms: l.tpm.and(oldest_reset),
        }
    }

    fn denial(
        &self,
        reason: DenialReason,
        message: String,
        retry_after_ms: Option<u64>,
        now_ms: u64,
    ) -> Box<Denial> {
        Box::new(Denial {
            reason,
            message,
            retry_after_ms,
            rate: self.rate_info(now_ms),
        })
    }

    fn report(&self, now_ms: u64) -> UsageReport {
        let by_day = self
            .usage
            .iter()
            .map(|(k, r)| {
                let (date, model) = k.split_once('\t').unwrap_or((k, ""));
                DayUsage {
                    date: date.to_owned(),
                    model: model.to_owned(),
                    requests: r.requests,
                    errors: r.errors,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cached_tokens: r.cached_tokens,
                    cache_hits: r.cache_hits,
                    cost_usd: r.cost,
                    cost_pico: r.cost.0,
                }
            })
            .collect();
        UsageReport {
            object: "usage".to_owned(),
            key: self.record.as_ref().map(|r| r.id.clone()),
            requests: self.meta.requests,
            first_request_ms: self.meta.first_request_ms,
            last_request_ms: self.meta.last_request_ms,
            in_flight: self.reservations.len() as u64 + self.lease_in_flight(),
            leases: self.leases.len() as u64,
            spent_today_usd: spent_in(&self.meta.spent_day, now_ms / DAY_MS),
            spent_this_month_usd: spent_in(&self.meta.spent_month, month_index(now_ms)),
            spent_total_usd: self.meta.spent_total,
            reserved_usd: self.reserved(),
            budgets: self
                .record
                .as_ref()
                .map(|r| r.settings.budgets.clone())
                .unwrap_or_default(),
            by_day,
        }
    }
}

fn spent_in(spend: &Spend, window: u64) -> Money {
    if spend.window == window {
        spend.amount
    } else {
        Money::ZERO
    }
}

fn rejected(status: u16, message: &str) -> Reply {
    Reply::Rejected {
        status,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
