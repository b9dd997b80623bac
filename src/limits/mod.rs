//! Per-key limits and budgets: the state machine one Durable Object per key
//! runs.
//!
//! The Durable Object in `edge` is a thin shell: it decodes a [`Command`],
//! calls [`KeyState::apply`] with the current time, saves the state in the
//! same synchronous step, and encodes the [`Reply`]. Everything that decides
//! is here, with time passed in, so it is tested exactly.
//!
//! Money is **reserved, then settled**. Admission reserves the worst case of
//! the request (an upper bound of its input tokens and its output cap, at the
//! dearest candidate's price) and admits only if, for every budget window,
//! `spent + outstanding reservations + this reservation <= budget`. After the
//! answer, settlement replaces the reservation with the actual cost. Because
//! one object serialises every decision for its key, no two requests can both
//! take the last dollar, and a settlement that arrives twice (or after its
//! reservation expired) is charged once. Reservations never settled (a
//! crashed isolate) expire and are charged at the reserved amount.
//!
//! Windows: requests and tokens per minute are sliding 60-second windows
//! (a log of admissions, pruned as it ages), exact at the boundary; requests
//! per day and the daily and monthly budgets follow the UTC calendar.

pub mod money;
mod record;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

pub use money::{Money, Pricing};
pub use record::{Budgets, KeyPatch, KeyRecord, KeySettings, KeyView, RateLimits};

use crate::keys::constant_time_eq;

/// Length of the sliding rate windows.
pub const MINUTE_MS: u64 = 60_000;
/// Length of a UTC day.
pub const DAY_MS: u64 = 86_400_000;
/// How long a reservation waits for its settlement before it is charged as
/// reserved: longer than any request may run.
pub const RESERVATION_TTL_MS: u64 = 15 * 60_000;
/// Days of per-model usage kept.
pub const USAGE_DAYS: usize = 92;

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
    /// Admit one request and reserve its worst-case cost (the one call on
    /// the request path).
    Admit(Admit),
    /// Replace a reservation with the actual usage (off the request path).
    Settle(Settle),
    /// Count and charge a request that was never admitted here (a static
    /// key: no limits, so nothing to decide on the request path).
    Record {
        /// What it cost.
        #[serde(with = "money::pico")]
        cost: Money,
        /// What happened.
        usage: UsageEvent,
    },
    /// Charge reservations whose time is up (the object's alarm).
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
}

/// A settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settle {
    /// The reservation admission returned.
    pub reservation: u64,
    /// The actual cost.
    #[serde(with = "money::pico")]
    pub cost: Money,
    /// What happened, for the usage record.
    pub usage: UsageEvent,
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
}

/// The object's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// The request may proceed.
    Admitted {
        /// Pass it back in [`Settle`].
        reservation: u64,
        /// For the `x-ratelimit-*` headers.
        rate: RateInfo,
        /// The key's tier, for routing rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<String>,
        /// The key's allowed jurisdictions, for routing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regions: Option<Vec<String>>,
    },
    /// The request is refused.
    Denied(Box<Denial>),
    /// A settlement was applied (`duplicate`: it had been already, or its
    /// reservation had expired and was charged as reserved).
    Settled {
        /// Whether nothing was charged this time.
        duplicate: bool,
    },
    /// Reservations were expired; the next alarm time, if any remain.
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
    /// Requests admitted over the key's life.
    pub requests: u64,
    /// Unix ms of the first admitted request (0 before any).
    pub first_request_ms: u64,
    /// Unix ms of the last admitted request.
    pub last_request_ms: u64,
    /// Requests in flight (reservations not yet settled).
    pub in_flight: u64,
    /// Spent today (UTC), settled only.
    pub spent_today_usd: Money,
    /// Spent this month (UTC).
    pub spent_this_month_usd: Money,
    /// Spent over the key's life.
    pub spent_total_usd: Money,
    /// Reserved by requests in flight.
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
    /// Cost in USD.
    pub cost_usd: Money,
}

/// One admission in the sliding minute window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WindowEntry {
    at_ms: u64,
    tokens: u64,
    reservation: u64,
}

/// An admitted request awaiting settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    #[serde(with = "money::pico")]
    amount: Money,
    model: String,
    admitted_ms: u64,
    expires_ms: u64,
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
    #[serde(with = "money::pico")]
    cost: Money,
}

/// Everything a key's Durable Object stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// The virtual key's record; `None` for static keys (and the registry).
    #[serde(default)]
    record: Option<KeyRecord>,
    requests: u64,
    first_request_ms: u64,
    last_request_ms: u64,
    #[serde(default)]
    minute: VecDeque<WindowEntry>,
    #[serde(default)]
    day_requests: Count,
    #[serde(default)]
    spent_day: Spend,
    #[serde(default)]
    spent_month: Spend,
    #[serde(default, with = "money::pico")]
    spent_total: Money,
    #[serde(default)]
    reservations: BTreeMap<u64, Reservation>,
    #[serde(default)]
    next_reservation: u64,
    /// `"YYYY-MM-DD\tmodel"` -> counters; sorted, so the oldest day is first.
    #[serde(default)]
    usage: BTreeMap<String, Rollup>,
    /// On the registry object only: every key, by id.
    #[serde(default)]
    registry: BTreeMap<String, KeyView>,
}

impl KeyState {
    /// Applies a command at `now_ms`. Returns the reply and whether the
    /// state changed (and so must be saved).
    pub fn apply(&mut self, command: Command, now_ms: u64) -> (Reply, bool) {
        match command {
            Command::Admit(a) => self.admit(a, now_ms),
            Command::Settle(s) => (self.settle(s), true),
            Command::Record { cost, usage } => {
                self.count_request(now_ms);
                self.charge(cost, now_ms);
                self.record_usage(now_ms, &usage, cost);
                (Reply::Settled { duplicate: false }, true)
            }
            Command::Expire => {
                let changed = self.expire(now_ms);
                (
                    Reply::Expired {
                        next_alarm_ms: self.next_alarm_ms(),
                    },
                    changed,
                )
            }
            Command::Check { auth } => match self.check_auth(&auth, now_ms) {
                Err(d) => (Reply::Denied(d), false),
                Ok(()) => {
                    let allowed_models = self
                        .record
                        .as_ref()
                        .and_then(|r| r.settings.allowed_models.clone());
                    (Reply::Allowed { allowed_models }, false)
                }
            },
            Command::Usage { auth } => match self.check_auth(&auth, now_ms) {
                Err(d) => (Reply::Denied(d), false),
                Ok(()) => (Reply::Usage(Box::new(self.report(now_ms))), false),
            },
            Command::Create { record } => {
                if self.record.is_some() {
                    return (rejected(409, "a key with this id exists"), false);
                }
                let view = KeyView::from(&record);
                self.record = Some(record);
                (Reply::Key(Box::new(view)), true)
            }
            Command::Get => match &self.record {
                Some(r) => (Reply::Key(Box::new(r.into())), false),
                None => (rejected(404, "no such key"), false),
            },
            Command::Update { patch } => self.edit(now_ms, |r| r.settings.apply(patch)),
            Command::Revoke => self.edit(now_ms, |r| r.revoked = true),
            Command::Rotate {
                secret_hash,
                secret_hint,
            } => self.edit(now_ms, |r| {
                r.secret_hash = secret_hash;
                r.secret_hint = secret_hint;
            }),
            Command::RegistryPut { key } => {
                self.registry.insert(key.id.clone(), key);
                (Reply::Keys { keys: vec![] }, true)
            }
            Command::RegistryList => (
                Reply::Keys {
                    keys: self.registry.values().cloned().collect(),
                },
                false,
            ),
        }
    }

    fn edit(&mut self, now_ms: u64, change: impl FnOnce(&mut KeyRecord)) -> (Reply, bool) {
        match &mut self.record {
            None => (rejected(404, "no such key"), false),
            Some(r) => {
                change(r);
                r.updated_ms = now_ms;
                (Reply::Key(Box::new(KeyView::from(&*r))), true)
            }
        }
    }

    /// The earliest time a reservation expires, for the object's alarm.
    pub fn next_alarm_ms(&self) -> Option<u64> {
        self.reservations.values().map(|r| r.expires_ms).min()
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

    fn admit(&mut self, a: Admit, now_ms: u64) -> (Reply, bool) {
        if let Err(d) = self.check_auth(&a.auth, now_ms) {
            return (Reply::Denied(d), false);
        }
        // Aging the windows changes state only in ways a later call would
        // redo, so a denial need not be saved.
        self.prune(now_ms);
        if let Err(d) = self.check_limits(&a, now_ms) {
            return (Reply::Denied(d), false);
        }
        let id = self.next_reservation;
        self.next_reservation += 1;
        self.reservations.insert(
            id,
            Reservation {
                amount: a.reserve,
                model: a.model,
                admitted_ms: now_ms,
                expires_ms: now_ms + RESERVATION_TTL_MS,
            },
        );
        // The minute log exists for the per-minute limits; a key without
        // them keeps none (limits set later count from then on).
        let windowed = self
            .record
            .as_ref()
            .is_some_and(|r| r.settings.limits.rpm.is_some() || r.settings.limits.tpm.is_some());
        if windowed {
            self.minute.push_back(WindowEntry {
                at_ms: now_ms,
                tokens: a.tokens,
                reservation: id,
            });
        }
        let today = now_ms / DAY_MS;
        if self.day_requests.day != today {
            self.day_requests = Count {
                day: today,
                count: 0,
            };
        }
        self.day_requests.count += 1;
        self.count_request(now_ms);
        let rate = self.rate_info(now_ms);
        let settings = self.record.as_ref().map(|r| &r.settings);
        let reply = Reply::Admitted {
            reservation: id,
            rate,
            tier: settings.and_then(|s| s.tier.clone()),
            regions: settings.and_then(|s| s.allowed_regions.clone()),
        };
        (reply, true)
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
        if let Some(max) = l.max_concurrent
            && self.reservations.len() as u64 >= max
        {
            let msg = format!("Too many requests in flight for this key (limit {max}).");
            return Err(self.denial(DenialReason::ConcurrencyLimit, msg, Some(1_000), now_ms));
        }
        if let Some(rpm) = l.rpm
            && self.minute.len() as u64 >= rpm
        {
            let msg = format!("Rate limit reached: {rpm} requests per minute.");
            let wait = self.requests_reset_ms(rpm, now_ms);
            return Err(self.denial(DenialReason::RequestLimit, msg, wait, now_ms));
        }
        if let Some(rpd) = l.rpd {
            let today = now_ms / DAY_MS;
            let used = if self.day_requests.day == today {
                self.day_requests.count
            } else {
                0
            };
            if used >= rpd {
                let msg = format!("Rate limit reached: {rpd} requests per day.");
                let wait = (today + 1) * DAY_MS - now_ms;
                return Err(self.denial(DenialReason::RequestLimit, msg, Some(wait), now_ms));
            }
        }
        if let Some(tpm) = l.tpm {
            let used: u64 = self.minute.iter().map(|e| e.tokens).sum();
            if used.saturating_add(a.tokens) > tpm {
                let msg = format!(
                    "Rate limit reached: {tpm} tokens per minute ({used} used, this request may use up to {}).",
                    a.tokens
                );
                // A request larger than the whole window can never pass.
                let wait = (a.tokens <= tpm).then(|| self.tokens_reset_ms(tpm, a.tokens, now_ms));
                return Err(self.denial(DenialReason::TokenLimit, msg, wait, now_ms));
            }
        }
        let reserved = self.reserved();
        let b = &s.budgets;
        let windows = [
            (
                b.daily_usd,
                self.spent_in(&self.spent_day, now_ms / DAY_MS),
                "daily",
                next_day_ms(now_ms),
            ),
            (
                b.monthly_usd,
                self.spent_in(&self.spent_month, month_index(now_ms)),
                "monthly",
                next_month_ms(now_ms),
            ),
            (b.total_usd, self.spent_total, "total", None),
        ];
        for (budget, spent, name, reset) in windows {
            if let Some(budget) = budget
                && spent.plus(reserved).plus(a.reserve) > budget
            {
                let msg = format!(
                    "You exceeded your {name} budget of {budget}: {spent} spent, {reserved} reserved by requests in flight, this request may cost up to {}.",
                    a.reserve
                );
                let wait = reset.map(|t| t - now_ms);
                return Err(self.denial(DenialReason::BudgetExceeded, msg, wait, now_ms));
            }
        }
        Ok(())
    }

    fn count_request(&mut self, now_ms: u64) {
        self.requests += 1;
        if self.first_request_ms == 0 {
            self.first_request_ms = now_ms;
        }
        // Clocks can step backwards between isolates; never go back.
        self.last_request_ms = self.last_request_ms.max(now_ms);
    }

    fn settle(&mut self, s: Settle) -> Reply {
        let Some(r) = self.reservations.remove(&s.reservation) else {
            return Reply::Settled { duplicate: true };
        };
        if let Some(e) = self
            .minute
            .iter_mut()
            .find(|e| e.reservation == s.reservation)
        {
            e.tokens = s.usage.input_tokens + s.usage.output_tokens;
        }
        self.charge(s.cost, r.admitted_ms);
        self.record_usage(r.admitted_ms, &s.usage, s.cost);
        Reply::Settled { duplicate: false }
    }

    fn expire(&mut self, now_ms: u64) -> bool {
        let due: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            if let Some(r) = self.reservations.remove(id) {
                self.charge(r.amount, r.admitted_ms);
                let usage = UsageEvent {
                    model: r.model.clone(),
                    error: true,
                    ..UsageEvent::default()
                };
                self.record_usage(r.admitted_ms, &usage, r.amount);
            }
        }
        !due.is_empty()
    }

    /// Adds settled spend to the windows of the day and month the request
    /// was admitted in (a request admitted before midnight belongs to the
    /// day it was admitted).
    fn charge(&mut self, amount: Money, admitted_ms: u64) {
        let day = admitted_ms / DAY_MS;
        let month = month_index(admitted_ms);
        for (spend, window) in [(&mut self.spent_day, day), (&mut self.spent_month, month)] {
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
        self.spent_total = self.spent_total.plus(amount);
    }

    fn record_usage(&mut self, admitted_ms: u64, u: &UsageEvent, cost: Money) {
        let key = format!("{}\t{}", date_string(admitted_ms), u.model);
        let is_new = !self.usage.contains_key(&key);
        let r = self.usage.entry(key).or_default();
        r.requests += 1;
        r.errors += u64::from(u.error);
        r.input_tokens += u.input_tokens;
        r.output_tokens += u.output_tokens;
        r.cached_tokens += u.cached_tokens;
        r.cost = r.cost.plus(cost);
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
            self.usage.retain(|k, _| !k.starts_with(&oldest));
        }
    }

    fn prune(&mut self, now_ms: u64) {
        while self
            .minute
            .front()
            .is_some_and(|e| e.at_ms + MINUTE_MS <= now_ms)
        {
            self.minute.pop_front();
        }
    }

    fn reserved(&self) -> Money {
        self.reservations
            .values()
            .fold(Money::ZERO, |acc, r| acc.plus(r.amount))
    }

    fn spent_in(&self, spend: &Spend, window: u64) -> Money {
        if spend.window == window {
            spend.amount
        } else {
            Money::ZERO
        }
    }

    /// Ms until the minute window has room for one more request.
    fn requests_reset_ms(&self, rpm: u64, now_ms: u64) -> Option<u64> {
        let over = (self.minute.len() as u64 + 1).saturating_sub(rpm) as usize;
        let e = self.minute.get(over.checked_sub(1)?)?;
        Some((e.at_ms + MINUTE_MS).saturating_sub(now_ms))
    }

    /// Ms until enough tokens leave the window for `need` more.
    fn tokens_reset_ms(&self, tpm: u64, need: u64, now_ms: u64) -> u64 {
        let mut used: u64 = self.minute.iter().map(|e| e.tokens).sum();
        for e in &self.minute {
            used -= e.tokens;
            if used + need <= tpm {
                return (e.at_ms + MINUTE_MS).saturating_sub(now_ms);
            }
        }
        MINUTE_MS
    }

    fn rate_info(&self, now_ms: u64) -> RateInfo {
        let Some(record) = &self.record else {
            return RateInfo::default();
        };
        let l = &record.settings.limits;
        let count = self.minute.len() as u64;
        let used: u64 = self.minute.iter().map(|e| e.tokens).sum();
        let oldest_reset = self
            .minute
            .front()
            .map(|e| (e.at_ms + MINUTE_MS).saturating_sub(now_ms));
        RateInfo {
            limit_requests: l.rpm,
            remaining_requests: l.rpm.map(|r| r.saturating_sub(count)),
            reset_requests_ms: l.rpm.and(oldest_reset),
            limit_tokens: l.tpm,
            remaining_tokens: l.tpm.map(|t| t.saturating_sub(used)),
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
                    cost_usd: r.cost,
                }
            })
            .collect();
        UsageReport {
            object: "usage".to_owned(),
            key: self.record.as_ref().map(|r| r.id.clone()),
            requests: self.requests,
            first_request_ms: self.first_request_ms,
            last_request_ms: self.last_request_ms,
            in_flight: self.reservations.len() as u64,
            spent_today_usd: self.spent_in(&self.spent_day, now_ms / DAY_MS),
            spent_this_month_usd: self.spent_in(&self.spent_month, month_index(now_ms)),
            spent_total_usd: self.spent_total,
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

fn rejected(status: u16, message: &str) -> Reply {
    Reply::Rejected {
        status,
        message: message.to_owned(),
    }
}

/// Civil date (year, month 1-12, day 1-31) of a day number since 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day number of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `year × 12 + month - 1` of a Unix ms time (UTC).
pub fn month_index(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    (y * 12 + i64::from(m) - 1) as u64
}

/// `YYYY-MM-DD` of a Unix ms time (UTC).
pub fn date_string(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn next_day_ms(ms: u64) -> Option<u64> {
    Some((ms / DAY_MS + 1) * DAY_MS)
}

fn next_month_ms(ms: u64) -> Option<u64> {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some(days_from_civil(y, m, 1) as u64 * DAY_MS)
}

#[cfg(test)]
mod tests;
