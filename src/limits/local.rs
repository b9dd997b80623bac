//! The isolate's side of the key objects: admission from leases, and
//! settlements gathered into batches.
//!
//! [`LocalLimits`] lives once per isolate. For each key it keeps the leases
//! the key's object granted ([`super::lease`]), the key as last seen
//! ([`KeySnapshot`]), and the settled requests not yet reported. Nothing
//! here does I/O: the edge asks it what to do ([`LocalLimits::admit`],
//! [`LocalLimits::take_sync`], [`LocalLimits::next_wakeup`]), does it, and
//! tells it what came back ([`LocalLimits::on_reply`]). Time is passed in.
//!
//! The request path:
//!
//! 1. [`LocalLimits::admit`]: a lease with room admits the request with no
//!    call at all ([`Local::Admitted`]). Otherwise the object must decide
//!    ([`Local::Ask`]), with a lease ask to piggyback, and whether the
//!    key's last known headroom is ample enough to send the upstream
//!    request while the object decides.
//! 2. [`LocalLimits::settle`]: the request's cost joins the key's batch.
//! 3. Off the request path, about once a flush interval:
//!    [`LocalLimits::take_sync`] gives the batch to send (with a lease ask
//!    when the current lease runs low), and leases past their time with
//!    nothing in flight are returned in it.

use std::collections::{BTreeMap, HashMap};

use super::lease::{Charge, Grant, KeySnapshot, LeaseAsk, LeaseDone, Source, Sync};
use super::{Auth, DAY_MS, Money, RateInfo, Reply, UsageEvent};
use crate::keys::constant_time_eq;

/// A key's last known headroom is trusted for overlapping admission with
/// the upstream call for this long.
const SNAPSHOT_FRESH_MS: u64 = 60_000;
/// After an ask that got no lease, this long before the next.
const NO_LEASE_BACKOFF_MS: u64 = 1_000;
/// How long the settlement of a request the object admitted itself waits
/// for the key's next admission to carry it before it is sent alone.
pub const RESERVATION_FLUSH_MS: u64 = 50;
/// A key unused this long, holding nothing, is forgotten by the isolate
/// (the next request asks its object again, as a new isolate would).
pub const FORGET_IDLE_MS: u64 = 10 * 60_000;
/// A batch on its way this long without an answer is sent again.
pub const SYNC_LOST_MS: u64 = 30_000;
/// The longest wait before a failed batch is sent again.
pub const MAX_RETRY_MS: u64 = 30_000;

/// Settings of the isolate's side (from the routing config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalConfig {
    /// How long a lease may be admitted from; `0` turns leases off (every
    /// request asks the object).
    pub lease_ttl_ms: u64,
    /// The longest a request may run (money stays held that long).
    pub hold_ms: u64,
    /// How long a settled request may wait before its batch is sent.
    pub flush_ms: u64,
    /// A batch this large is sent at once.
    pub max_batch: usize,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            lease_ttl_ms: 10_000,
            hold_ms: 600_000,
            flush_ms: 1_000,
            max_batch: 256,
        }
    }
}

/// How one request is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// From a lease: go ahead.
    Admitted(Admission),
    /// The object must decide.
    Ask {
        /// Send the upstream request while the object decides, routed for
        /// the key as last seen: set when its last known headroom is ample
        /// and it is not strict.
        overlap: Option<Routing>,
        /// A lease to ask for along with the admission.
        lease: Option<LeaseAsk>,
    },
}

/// A local admission: what settling needs, and what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Settle with this.
    pub ticket: Ticket,
    /// How to route for the key.
    pub routing: Routing,
    /// For the `x-ratelimit-*` headers (approximate: as of the lease).
    pub rate: RateInfo,
}

/// What routing needs of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// The key's tier.
    pub tier: Option<String>,
    /// The key's team (the response cache's `team` scope).
    pub team: Option<String>,
    /// The key's jurisdictions.
    pub regions: Option<Vec<String>>,
    /// The key's data class.
    pub data_class: Option<String>,
    /// The key's PII policy.
    pub pii: Option<crate::config::PiiPolicy>,
}

impl Routing {
    /// What routing needs of a key's snapshot.
    pub fn of(snap: &KeySnapshot) -> Routing {
        Routing {
            tier: snap.tier.clone(),
            team: snap.team.clone(),
            regions: snap.regions.clone(),
            data_class: snap.data_class.clone(),
            pii: snap.pii.clone(),
        }
    }
}

/// How a request was admitted, so it settles the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ticket {
    /// From a lease.
    Lease {
        /// The key's object.
        object: String,
        /// The lease.
        lease: u64,
        /// Its worst-case cost.
        reserve: Money,
        /// Its worst-case tokens.
        tokens: u64,
        /// When.
        admitted_ms: u64,
    },
    /// By the object: a reservation.
    Reservation {
        /// The key's object.
        object: String,
        /// The reservation.
        id: u64,
        /// When.
        admitted_ms: u64,
    },
    /// Not admitted at all (a key with no limits): only recorded.
    Record {
        /// The key's object.
        object: String,
        /// When.
        admitted_ms: u64,
    },
}

impl Ticket {
    /// When it was admitted: the day and hour its usage counts in.
    pub fn admitted_ms(&self) -> u64 {
        match self {
            Ticket::Lease { admitted_ms, .. }
            | Ticket::Reservation { admitted_ms, .. }
            | Ticket::Record { admitted_ms, .. } => *admitted_ms,
        }
    }

    /// The key's object.
    pub fn object(&self) -> &str {
        match self {
            Ticket::Lease { object, .. }
            | Ticket::Reservation { object, .. }
            | Ticket::Record { object, .. } => object,
        }
    }
}

/// One lease as the isolate holds it; `None` limits are unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    id: u64,
    admit_until_ms: u64,
    requests_left: Option<u64>,
    tokens_left: Option<u64>,
    money_left: Option<Money>,
    slots_left: Option<u64>,
    /// Full size, to tell when it runs low.
    requests: Option<u64>,
    money: Option<Money>,
    used_requests: u64,
    used_tokens: u64,
    in_flight: u64,
}

impl Held {
    fn from_grant(g: &Grant) -> Held {
        Held {
            id: g.lease,
            admit_until_ms: g.admit_until_ms,
            requests_left: g.requests,
            tokens_left: g.tokens,
            money_left: g.money,
            slots_left: g.slots,
            requests: g.requests,
            money: g.money,
            used_requests: 0,
            used_tokens: 0,
            in_flight: 0,
        }
    }

    fn fits(&self, now_ms: u64, reserve: Money, tokens: u64) -> bool {
        now_ms < self.admit_until_ms
            && self.requests_left.is_none_or(|n| n >= 1)
            && self.tokens_left.is_none_or(|n| n >= tokens)
            && self.money_left.is_none_or(|m| m >= reserve)
            && self.slots_left.is_none_or(|n| n >= 1)
    }

    /// Less than half left of its requests, its money or its time.
    fn running_low(&self, now_ms: u64, granted_ms: u64) -> bool {
        let half = |left: Option<u64>, full: Option<u64>| match (left, full) {
            (Some(l), Some(f)) => l * 2 < f,
            _ => false,
        };
        half(self.requests_left, self.requests)
            || half(self.money_left.map(|m| m.0), self.money.map(|m| m.0))
            || now_ms.saturating_sub(granted_ms) * 2
                > self.admit_until_ms.saturating_sub(granted_ms)
    }

    /// Nothing in flight and nothing more to admit from it.
    fn is_done(&self, now_ms: u64) -> bool {
        self.in_flight == 0 && (now_ms >= self.admit_until_ms || self.requests_left == Some(0))
    }
}

/// Requests per second, from counts over fixed periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rate {
    period_start_ms: u64,
    current: u64,
    previous: u64,
}

impl Rate {
    const PERIOD_MS: u64 = 10_000;

    fn note(&mut self, now_ms: u64) {
        let periods = now_ms.saturating_sub(self.period_start_ms) / Self::PERIOD_MS;
        if periods >= 1 {
            self.previous = if periods == 1 { self.current } else { 0 };
            self.current = 0;
            self.period_start_ms = now_ms - now_ms % Self::PERIOD_MS;
        }
        self.current += 1;
    }

    /// Requests expected over `ms`, from the busier of the two periods.
    fn expected(&self, ms: u64) -> u64 {
        self.current.max(self.previous).saturating_mul(ms) / Self::PERIOD_MS
    }
}

/// What one isolate knows and owes for one key.
#[derive(Debug, Clone, Default)]
struct KeyLocal {
    snapshot: Option<KeySnapshot>,
    seen_ms: u64,
    /// Rate state as of the last reply, for headers.
    rate_info: RateInfo,
    /// Oldest first; admissions take from the oldest that fits.
    leases: Vec<(u64, Held)>,
    rate: Rate,
    /// The largest recent worst cases, to size the next ask.
    typical_tokens: u64,
    typical_money: Money,
    peak_in_flight: u64,
    /// A lease ask is on its way.
    asking: bool,
    /// The id of the last ask made, and the highest answered (or given up).
    ask_seq: u64,
    answered: u64,
    /// The last ask got no lease (the key is near a limit): ask again only
    /// after this.
    no_lease_until_ms: u64,
    /// Settled requests not yet sent, by (source, model, day).
    pending: BTreeMap<(Source, String, u64), Charge>,
    pending_since_ms: Option<u64>,
    /// Since when `pending` settles a request the object admitted itself:
    /// its reservation holds the key's budget at the object until the
    /// batch arrives (near a budget, the next request would be refused for
    /// it), so the batch goes with the key's next admission, no call of its
    /// own, or [`RESERVATION_FLUSH_MS`] later if none comes.
    reservation_since_ms: Option<u64>,
    /// A batch sent and not yet acknowledged: resent as is (same `seq`).
    unacked: Option<Sync>,
    /// A batch is on its way.
    syncing: bool,
    /// When a request of the key was last admitted or settled here.
    used_ms: u64,
    /// Since when (Unix ms): a batch whose answer never came (its request
    /// was cancelled with the call out) is taken for lost after
    /// [`SYNC_LOST_MS`] and sent again (a batch is applied once).
    syncing_since_ms: u64,
    /// After failed sends, the next waits until this (backing off).
    retry_at_ms: u64,
    failures: u32,
    seq: u64,
}

/// The isolate's leases and batches, for every key it has seen.
#[derive(Debug, Clone)]
pub struct LocalLimits {
    holder: String,
    config: LocalConfig,
    keys: HashMap<String, KeyLocal>,
    /// When idle keys are next looked for ([`FORGET_IDLE_MS`]).
    next_sweep_ms: u64,
    /// Above every batch and ask number a forgotten key used: a key seen
    /// again numbers on from here, so its object (which applies a batch
    /// only if its number is new for this isolate) never takes a new batch
    /// for an old one.
    numbered: u64,
}

impl LocalLimits {
    /// An isolate's state; `holder` is its random id.
    pub fn new(holder: String) -> Self {
        LocalLimits {
            holder,
            config: LocalConfig::default(),
            keys: HashMap::new(),
            next_sweep_ms: 0,
            numbered: 0,
        }
    }

    /// Applies the routing config's settings.
    pub fn configure(&mut self, config: LocalConfig) {
        self.config = config;
    }

    /// This isolate's id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The key's team as its object last said (for analytics; `None` for
    /// static keys and keys not yet heard of).
    pub fn team(&self, object: &str) -> Option<&str> {
        self.keys.get(object)?.snapshot.as_ref()?.team.as_deref()
    }

    /// Admits a virtual key's request from a lease, or says how to ask the
    /// object. `object` names the key's object, `secret_hash` is the
    /// presented secret's hash.
    pub fn admit(
        &mut self,
        object: &str,
        secret_hash: &str,
        model: &str,
        reserve: Money,
        tokens: u64,
        now_ms: u64,
    ) -> Local {
        let config = self.config;
        let holder = self.holder.clone();
        self.forget_idle(now_ms);
        let k = self.key(object);
        k.used_ms = now_ms;
        k.rate.note(now_ms);
        k.typical_tokens = tokens.max(k.typical_tokens * 7 / 8);
        k.typical_money = reserve.max(Money(k.typical_money.0 / 8 * 7));
        let auth = Auth::Virtual {
            secret_hash: secret_hash.to_owned(),
        };
        let Some(snap) = &k.snapshot else {
            let lease = k.lease_ask(&config, holder, auth, reserve, tokens, now_ms);
            return Local::Ask {
                overlap: None,
                lease,
            };
        };
        // The snapshot only speaks for a key presented with its secret, in
        // scope and unexpired; anything else is the object's to refuse.
        let valid = constant_time_eq(secret_hash.as_bytes(), snap.secret_hash.as_bytes())
            && snap.expires_at_ms.is_none_or(|t| now_ms < t)
            && snap
                .allowed_models
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x == model));
        if !valid || snap.strict {
            return Local::Ask {
                overlap: None,
                lease: None,
            };
        }
        if let Some(pos) = k
            .leases
            .iter()
            .position(|(_, h)| h.fits(now_ms, reserve, tokens))
        {
            let held = &mut k.leases[pos].1;
            take(held, reserve, tokens);
            let lease = held.id;
            let in_flight: u64 = k.leases.iter().map(|(_, h)| h.in_flight).sum();
            k.peak_in_flight = k.peak_in_flight.max(in_flight);
            // As of the last reply, plus what this isolate still holds.
            let mut rate = k.rate_info.clone();
            if let Some(r) = rate.remaining_requests.as_mut() {
                *r += k
                    .leases
                    .iter()
                    .filter_map(|(_, h)| h.requests_left)
                    .sum::<u64>();
            }
            return Local::Admitted(Admission {
                ticket: Ticket::Lease {
                    object: object.to_owned(),
                    lease,
                    reserve,
                    tokens,
                    admitted_ms: now_ms,
                },
                routing: Routing::of(snap),
                rate,
            });
        }
        let fresh = now_ms.saturating_sub(k.seen_ms) < SNAPSHOT_FRESH_MS;
        let overlap = (fresh && ample(snap, reserve, tokens)).then(|| Routing::of(snap));
        let lease = k.lease_ask(&config, holder, auth, reserve, tokens, now_ms);
        Local::Ask { overlap, lease }
    }

    /// What the object answered an admission, a lease ask or a batch.
    /// `seq` is the batch's (0 for an admission).
    pub fn on_reply(&mut self, object: &str, seq: u64, reply: &Reply, now_ms: u64) {
        let Some(k) = self.keys.get_mut(object) else {
            return;
        };
        if seq != 0 && k.unacked.as_ref().is_some_and(|u| u.seq == seq) {
            k.unacked = None;
        }
        if seq != 0 {
            k.syncing = false;
            k.failures = 0;
            k.retry_at_ms = 0;
        }
        let (grant, key, rate) = match reply {
            Reply::Admitted {
                grant, key, rate, ..
            } => (grant.as_ref(), Some(key.as_ref()), Some(rate)),
            Reply::Synced {
                grant,
                key,
                refused,
            } => {
                if refused.is_some() {
                    // The key itself is refused: forget what it held.
                    k.snapshot = None;
                }
                (grant.as_ref(), key.as_deref(), None)
            }
            Reply::Denied(d) => {
                if d.reason.is_key_refused() {
                    k.snapshot = None;
                }
                (None, None, Some(&d.rate))
            }
            _ => (None, None, None),
        };
        if k.asking {
            if grant.is_none() {
                k.no_lease_until_ms = now_ms + NO_LEASE_BACKOFF_MS;
            }
            k.answered = k.ask_seq;
        }
        k.asking = false;
        if let Some(key) = key {
            k.snapshot = Some(key.clone());
            k.seen_ms = now_ms;
        }
        if let Some(rate) = rate {
            k.rate_info = rate.clone();
        }
        if let Some(g) = grant {
            k.leases.push((now_ms, Held::from_grant(g)));
        }
    }

    /// The object could not be reached for a batch or an ask: the batch is
    /// resent as is, after a back-off (a flush interval, doubling up to
    /// [`MAX_RETRY_MS`]); the ask may be made again.
    pub fn on_failure(&mut self, object: &str, seq: u64, now_ms: u64) {
        let flush_ms = self.config.flush_ms;
        if let Some(k) = self.keys.get_mut(object) {
            if k.asking {
                k.answered = k.ask_seq;
                k.no_lease_until_ms = now_ms + NO_LEASE_BACKOFF_MS;
            }
            k.asking = false;
            if seq != 0 {
                k.syncing = false;
                k.failures = k.failures.saturating_add(1);
                let wait = flush_ms
                    .saturating_mul(1 << k.failures.min(8))
                    .min(MAX_RETRY_MS);
                k.retry_at_ms = now_ms + wait;
            }
        }
    }

    /// Records a settled request for the key's next batch.
    pub fn settle(&mut self, ticket: &Ticket, cost: Money, usage: &UsageEvent, now_ms: u64) {
        let k = self.key(ticket.object());
        k.used_ms = now_ms;
        let actual_tokens = usage.input_tokens + usage.output_tokens;
        let (source, admitted_ms) = match ticket {
            Ticket::Lease {
                lease,
                reserve,
                tokens,
                admitted_ms,
                ..
            } => {
                if let Some((_, h)) = k.leases.iter_mut().find(|(_, h)| h.id == *lease) {
                    h.in_flight = h.in_flight.saturating_sub(1);
                    h.used_tokens += actual_tokens;
                    h.slots_left = h.slots_left.map(|n| n + 1);
                    // What was reserved and not spent can be admitted again.
                    h.money_left = h.money_left.map(|m| m.plus(*reserve).minus(cost));
                    h.tokens_left = h
                        .tokens_left
                        .map(|t| (t + tokens).saturating_sub(actual_tokens));
                }
                (Source::Lease { id: *lease }, *admitted_ms)
            }
            Ticket::Reservation {
                id, admitted_ms, ..
            } => {
                k.reservation_since_ms.get_or_insert(now_ms);
                (Source::Reservation { id: *id }, *admitted_ms)
            }
            Ticket::Record { admitted_ms, .. } => (Source::Record, *admitted_ms),
        };
        let c = k
            .pending
            .entry((source, usage.model.clone(), admitted_ms / DAY_MS))
            .or_insert_with(|| Charge {
                source,
                admitted_ms,
                model: usage.model.clone(),
                requests: 0,
                errors: 0,
                input_tokens: 0,
                output_tokens: 0,
                cached_tokens: 0,
                cache_hits: 0,
                cost: Money::ZERO,
            });
        c.requests += 1;
        c.errors += u64::from(usage.error);
        c.input_tokens += usage.input_tokens;
        c.output_tokens += usage.output_tokens;
        c.cached_tokens += usage.cached_tokens;
        c.cache_hits += u64::from(usage.cache_hit);
        c.cost = c.cost.plus(cost);
        k.pending_since_ms.get_or_insert(now_ms);
    }

    /// The key's next batch to send now, if it has one due (settled
    /// requests waiting a flush interval or more than a batch's worth,
    /// leases to return, a lease to ask for, a batch to resend); `None`
    /// while another is on its way. `force` sends whatever is pending.
    pub fn take_sync(&mut self, object: &str, now_ms: u64, force: bool) -> Option<Sync> {
        let config = self.config;
        let holder = self.holder.clone();
        let k = self.keys.get_mut(object)?;
        if k.in_flight(now_ms) || (!force && now_ms < k.retry_at_ms) {
            return None;
        }
        if let Some(u) = &k.unacked {
            k.syncing = true;
            k.syncing_since_ms = now_ms;
            return Some(u.clone());
        }
        let due = k.pending_since_ms.is_some_and(|t| {
            force
                || now_ms >= t + config.flush_ms
                || k.pending.len() >= config.max_batch
                || k.reservation_since_ms
                    .is_some_and(|r| now_ms >= r + RESERVATION_FLUSH_MS)
        });
        let done = k.done_leases(now_ms);
        let ask = k.refill(&config, &holder, now_ms);
        if !due && done.is_empty() && ask.is_none() {
            return None;
        }
        Some(k.batch(holder, done, ask, now_ms))
    }

    /// The key's settled requests and returned leases, to go with an
    /// admission the isolate is about to ask of the object (one call for
    /// both: a settlement never waits behind the next request, and costs
    /// no call of its own); `None` when there is nothing, or a batch is on
    /// its way. A lost batch is resent this way too. No lease is asked
    /// here: the admission asks its own.
    pub fn take_for_admit(&mut self, object: &str, now_ms: u64) -> Option<Sync> {
        let holder = self.holder.clone();
        let k = self.keys.get_mut(object)?;
        if k.in_flight(now_ms) {
            return None;
        }
        if let Some(u) = &k.unacked {
            k.syncing = true;
            k.syncing_since_ms = now_ms;
            return Some(u.clone());
        }
        let done = k.done_leases(now_ms);
        if k.pending.is_empty() && done.is_empty() {
            return None;
        }
        Some(k.batch(holder, done, None, now_ms))
    }

    /// Every key with something to send now.
    pub fn due(&self, now_ms: u64) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(_, k)| {
                !k.in_flight(now_ms) && k.wakeup(&self.config, now_ms).is_some_and(|t| t <= now_ms)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Stops admitting from the key's leases (they are returned as their
    /// requests settle) and forgets the key as last seen, so the next
    /// request asks the object: after an admin change to the key, this
    /// isolate applies it at once.
    pub fn invalidate(&mut self, object: &str) {
        if let Some(k) = self.keys.get_mut(object) {
            k.snapshot = None;
            k.no_lease_until_ms = 0;
            for (_, h) in &mut k.leases {
                h.requests_left = Some(0);
            }
        }
    }

    /// Returns the key's leases that have nothing in flight (with the next
    /// batch): before a usage report, so that what it shows is not held.
    pub fn release_idle(&mut self, object: &str) {
        if let Some(k) = self.keys.get_mut(object) {
            for (_, h) in k.leases.iter_mut().filter(|(_, h)| h.in_flight == 0) {
                h.requests_left = Some(0);
            }
        }
    }

    /// Every key this isolate holds anything for.
    pub fn objects(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// When something next falls due (a batch, a lease to return or to
    /// renew).
    pub fn next_wakeup(&self, now_ms: u64) -> Option<u64> {
        self.keys
            .values()
            .filter_map(|k| k.wakeup(&self.config, now_ms))
            .min()
    }

    /// Drops what the isolate knows of keys it has not used for
    /// [`FORGET_IDLE_MS`] and holds nothing of (no lease, nothing to send
    /// or waiting for an answer): an isolate that serves many keys over its
    /// life keeps memory for the ones in use. Looks at most once a minute.
    fn forget_idle(&mut self, now_ms: u64) {
        if now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms + 60_000;
        let mut numbered = self.numbered;
        self.keys.retain(|_, k| {
            let keep = now_ms < k.used_ms.saturating_add(FORGET_IDLE_MS)
                || !k.leases.is_empty()
                || !k.pending.is_empty()
                || k.unacked.is_some()
                || k.syncing
                || k.asking;
            if !keep {
                numbered = numbered.max(k.seq).max(k.ask_seq);
            }
            keep
        });
        self.numbered = numbered;
    }

    /// The key's state, new (numbering on from [`Self::numbered`]) if the
    /// isolate does not know it.
    fn key(&mut self, object: &str) -> &mut KeyLocal {
        let numbered = self.numbered;
        self.keys
            .entry(object.to_owned())
            .or_insert_with(|| KeyLocal {
                seq: numbered,
                ask_seq: numbered,
                answered: numbered,
                ..KeyLocal::default()
            })
    }

    /// Test support: how many keys the isolate knows.
    pub fn known_keys(&self) -> usize {
        self.keys.len()
    }

    /// Test support: what this isolate holds of a key (leases, pending).
    pub fn held(&self, object: &str) -> (usize, usize) {
        self.keys
            .get(object)
            .map_or((0, 0), |k| (k.leases.len(), k.pending.len()))
    }

    /// Test support: forget every lease and batch, as an isolate that dies
    /// would (the object charges its leases when they expire).
    pub fn forget(&mut self) {
        self.keys.clear();
    }
}

fn take(h: &mut Held, reserve: Money, tokens: u64) {
    h.requests_left = h.requests_left.map(|n| n - 1);
    h.tokens_left = h.tokens_left.map(|n| n - tokens);
    h.money_left = h.money_left.map(|m| m.minus(reserve));
    h.slots_left = h.slots_left.map(|n| n - 1);
    h.used_requests += 1;
    h.in_flight += 1;
}

/// Whether the key's last known headroom leaves this request a wide margin
/// (four times what it needs of each limit), so that admitting it while
/// the upstream request is already on its way is almost never refused.
fn ample(snap: &KeySnapshot, reserve: Money, tokens: u64) -> bool {
    let h = &snap.headroom;
    h.requests.is_none_or(|n| n >= 4)
        && h.tokens.is_none_or(|n| n >= tokens.saturating_mul(4))
        && h.money.is_none_or(|m| m.0 >= reserve.0.saturating_mul(4))
        && h.slots.is_none_or(|n| n >= 2)
}

impl KeyLocal {
    /// Whether a batch is on its way and not yet taken for lost.
    fn in_flight(&self, now_ms: u64) -> bool {
        self.syncing && now_ms < self.syncing_since_ms.saturating_add(SYNC_LOST_MS)
    }

    /// The leases that are over, for the next batch.
    fn done_leases(&self, now_ms: u64) -> Vec<LeaseDone> {
        self.leases
            .iter()
            .filter(|(_, h)| h.is_done(now_ms))
            .map(|(_, h)| LeaseDone {
                lease: h.id,
                used_requests: h.used_requests,
                used_tokens: h.used_tokens,
            })
            .collect()
    }

    /// Takes everything pending into a batch (numbered when it carries
    /// charges or returns, and kept until acknowledged), with `ask`.
    fn batch(
        &mut self,
        holder: String,
        done: Vec<LeaseDone>,
        ask: Option<LeaseAsk>,
        now_ms: u64,
    ) -> Sync {
        self.leases.retain(|(_, h)| !h.is_done(now_ms));
        let charges: Vec<Charge> = std::mem::take(&mut self.pending).into_values().collect();
        self.pending_since_ms = None;
        self.reservation_since_ms = None;
        let seq = if charges.is_empty() && done.is_empty() {
            0
        } else {
            self.seq += 1;
            self.seq
        };
        let sync = Sync {
            holder,
            seq,
            charges,
            done,
            answered: self.answered,
            in_flight: self.leases.iter().map(|(_, h)| h.in_flight).sum(),
            held: self.leases.iter().map(|(_, h)| h.id).collect(),
            ask,
        };
        if seq != 0 {
            self.syncing = true;
            self.syncing_since_ms = now_ms;
            self.unacked = Some(Sync {
                ask: None,
                ..sync.clone()
            });
        }
        if sync.ask.is_some() {
            self.asking = true;
        }
        sync
    }

    /// A lease ask sized from this isolate's recent rate for the key, or
    /// `None` when leases are off or one is already on its way.
    fn lease_ask(
        &mut self,
        config: &LocalConfig,
        holder: String,
        auth: Auth,
        min_money: Money,
        min_tokens: u64,
        now_ms: u64,
    ) -> Option<LeaseAsk> {
        if config.lease_ttl_ms == 0
            || self.asking
            || now_ms < self.no_lease_until_ms
            || self.snapshot.as_ref().is_some_and(|s| s.strict)
        {
            return None;
        }
        // Enough for twice the recent rate over the lease's life.
        let requests = (self.rate.expected(config.lease_ttl_ms) * 2).clamp(8, 100_000);
        let slots = (self.peak_in_flight * 2).clamp(8, 1_024);
        self.asking = true;
        self.ask_seq += 1;
        Some(LeaseAsk {
            auth,
            holder,
            ask_id: self.ask_seq,
            requests,
            tokens: self.typical_tokens.max(min_tokens).saturating_mul(requests),
            money: Money(self.typical_money.max(min_money).0.saturating_mul(requests)),
            slots,
            min_tokens,
            min_money,
            ttl_ms: config.lease_ttl_ms,
            hold_ms: config.hold_ms,
        })
    }

    /// Whether the newest lease runs low and the next may be asked for now.
    fn wants_refill(&self, config: &LocalConfig, now_ms: u64) -> bool {
        let Some((granted, newest)) = self.leases.last() else {
            return false;
        };
        newest.running_low(now_ms, *granted)
            && now_ms < newest.admit_until_ms
            && config.lease_ttl_ms > 0
            && !self.asking
            && now_ms >= self.no_lease_until_ms
            && self.snapshot.as_ref().is_some_and(|s| !s.strict)
    }

    /// A background ask for the next lease when the newest one runs low,
    /// so the isolate never waits for the object in steady state.
    fn refill(&mut self, config: &LocalConfig, holder: &str, now_ms: u64) -> Option<LeaseAsk> {
        if !self.wants_refill(config, now_ms) {
            return None;
        }
        let auth = Auth::Virtual {
            secret_hash: self.snapshot.as_ref()?.secret_hash.clone(),
        };
        let (money, tokens) = (self.typical_money, self.typical_tokens);
        self.lease_ask(config, holder.to_owned(), auth, money, tokens, now_ms)
    }

    /// When this key next needs a batch sent. While one is on its way,
    /// the next is looked at a flush interval later.
    fn wakeup(&self, config: &LocalConfig, now_ms: u64) -> Option<u64> {
        let reservation = self.reservation_since_ms.map(|r| r + RESERVATION_FLUSH_MS);
        let flush = self.pending_since_ms.map(|t| {
            if self.pending.len() >= config.max_batch {
                t
            } else {
                t + config.flush_ms
            }
        });
        let resend = self.unacked.as_ref().map(|_| now_ms);
        let returns = self
            .leases
            .iter()
            .filter(|(_, h)| h.in_flight == 0)
            .map(|(_, h)| {
                if h.requests_left == Some(0) {
                    now_ms
                } else {
                    h.admit_until_ms
                }
            });
        let refill = self.wants_refill(config, now_ms).then_some(now_ms);
        let next = flush
            .into_iter()
            .chain(reservation)
            .chain(resend)
            .chain(returns)
            .chain(refill)
            .min()?;
        Some(if self.syncing {
            next.max(now_ms + config.flush_ms)
        } else {
            next.max(self.retry_at_ms)
        })
    }
}

#[cfg(test)]
mod tests;
