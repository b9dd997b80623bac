//! Gateway-wide usage: per-request events rolled up in the isolate, sent in
//! batches to one store per UTC day, and queried across days.
//!
//! The numbers that must agree with the per-key usage reports (requests,
//! errors, tokens, cost) come from the very settlement that is charged to
//! the key: the edge hands the same [`RequestEvent`] to the key's batch and
//! to [`Rollups::add`], keyed by the same admission time, so a day's totals
//! here equal the sum of the keys' `by_day` rows of that day by
//! construction. What only a key's object knows — a reservation or a lease
//! charged at its expiry, a settlement that came too late to be charged —
//! it sends itself, as a signed [`Counters`] correction (see
//! `limits::Outgoing`).
//!
//! The path:
//!
//! 1. [`Rollups::add`]: a settled request joins its hour's cell (key, team,
//!    model, provider, target, location, jurisdiction, status class) and
//!    its minute in the gateway-wide series. Plain Rust memory, no I/O.
//! 2. [`Rollups::take`]: about once a flush interval, one [`Batch`] per day
//!    touched; a batch not acknowledged is resent as is (same `seq`).
//! 3. [`DayStore::ingest`]: the day's object adds it once (a batch seen
//!    before is ignored) and marks the rows it changed.
//! 4. [`DayStore::query`] answers a [`Query`] with a [`Partial`] of
//!    mergeable counters; [`answer`] merges the days' partials and reads the
//!    percentiles off the merged sketches.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::sketch::Sketch;
use crate::limits::{DAY_MS, Money, date_string};

/// One hour, the resolution of grouped figures.
pub const HOUR_MS: u64 = 3_600_000;
/// One minute, the resolution of the gateway-wide series.
pub const MINUTE_MS: u64 = 60_000;
/// The longest period one query may span.
pub const MAX_QUERY_DAYS: u64 = 92;

/// One settled request, as analytics sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEvent<'a> {
    /// When it was admitted (Unix ms): the hour and day it counts in, the
    /// same day its key's usage report counts it in.
    pub at_ms: u64,
    /// The key's id (`static` for static keys).
    pub key: &'a str,
    /// The key's team.
    pub team: Option<&'a str>,
    /// The public model name.
    pub model: &'a str,
    /// The provider that answered.
    pub provider: Option<&'a str>,
    /// The provider-side model.
    pub target_model: Option<&'a str>,
    /// Where it was served (the Cloudflare location, `colo`).
    pub location: Option<&'a str>,
    /// The serving provider's jurisdiction.
    pub jurisdiction: Option<&'a str>,
    /// HTTP status of the answer.
    pub status: u16,
    /// Whether it failed (an error, or a stream cut short).
    pub error: bool,
    /// Targets tried (1: no failover).
    pub attempts: u32,
    /// Answered from the response cache.
    pub cache_hit: bool,
    /// A hedged request was sent.
    pub hedged: bool,
    /// Streamed.
    pub stream: bool,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// What it cost.
    pub cost: Money,
    /// Admission to the end of the answer, ms.
    pub latency_ms: u64,
    /// Admission to the first byte of the answer, ms.
    pub ttft_ms: u64,
}

/// The class of an HTTP status, as analytics groups it.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=399 => "2xx",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// What a cell is keyed by besides its hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dims {
    /// Key id.
    pub key: String,
    /// Team (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// Public model.
    pub model: String,
    /// Provider (empty: none answered).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Provider-side model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_model: String,
    /// Location.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// Jurisdiction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jurisdiction: String,
    /// Status class (`2xx`, `4xx`, `429`, `5xx`; `adjusted` for a key
    /// object's correction).
    pub status: String,
}

impl Dims {
    fn of(e: &RequestEvent<'_>) -> Dims {
        let s = |v: Option<&str>| v.unwrap_or_default().to_owned();
        Dims {
            key: e.key.to_owned(),
            team: s(e.team),
            model: e.model.to_owned(),
            provider: s(e.provider),
            target_model: s(e.target_model),
            location: s(e.location),
            jurisdiction: s(e.jurisdiction),
            status: status_class(e.status).to_owned(),
        }
    }

    /// Whether these are `e`'s dimensions ([`Dims::of`] without building
    /// them).
    fn describes(&self, e: &RequestEvent<'_>) -> bool {
        fn s(v: Option<&str>) -> &str {
            v.unwrap_or_default()
        }
        self.key == e.key
            && self.team == s(e.team)
            && self.model == e.model
            && self.provider == s(e.provider)
            && self.target_model == s(e.target_model)
            && self.location == s(e.location)
            && self.jurisdiction == s(e.jurisdiction)
            && self.status == status_class(e.status)
    }

    /// The value of one dimension.
    pub fn get(&self, dim: Dim) -> &str {
        match dim {
            Dim::Key => &self.key,
            Dim::Team => &self.team,
            Dim::Model => &self.model,
            Dim::Provider => &self.provider,
            Dim::TargetModel => &self.target_model,
            Dim::Location => &self.location,
            Dim::Jurisdiction => &self.jurisdiction,
            Dim::Status => &self.status,
        }
    }
}

/// Mergeable figures of a set of requests. Signed, so that a key object's
/// correction (a settlement it could not charge) can take away.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Requests settled.
    pub requests: i64,
    /// Of which failed.
    pub errors: i64,
    /// Answered by another target than the first.
    pub failovers: i64,
    /// Targets tried, summed.
    pub attempts: i64,
    /// Answered from the cache.
    pub cache_hits: i64,
    /// Hedged.
    pub hedged: i64,
    /// Streamed.
    pub streams: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Cost in picodollars.
    pub cost_pico: i64,
    /// Latency, ms.
    #[serde(skip_serializing_if = "Sketch::is_empty")]
    pub latency: Sketch,
    /// Time to first byte, ms.
    #[serde(skip_serializing_if = "Sketch::is_empty")]
    pub ttft: Sketch,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Counters {
    /// Counts one request.
    pub fn add_event(&mut self, e: &RequestEvent<'_>) {
        self.requests += 1;
        self.errors += i64::from(e.error);
        self.failovers += i64::from(e.attempts > 1);
        self.attempts += i64::from(e.attempts);
        self.cache_hits += i64::from(e.cache_hit);
        self.hedged += i64::from(e.hedged);
        self.streams += i64::from(e.stream);
        self.input_tokens += signed(e.input_tokens);
        self.output_tokens += signed(e.output_tokens);
        self.cached_tokens += signed(e.cached_tokens);
        self.cost_pico = self.cost_pico.saturating_add(signed(e.cost.0));
        self.latency.add(e.latency_ms);
        self.ttft.add(e.ttft_ms);
    }

    /// Adds another set's figures.
    pub fn merge(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.failovers += o.failovers;
        self.attempts += o.attempts;
        self.cache_hits += o.cache_hits;
        self.hedged += o.hedged;
        self.streams += o.streams;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cost_pico = self.cost_pico.saturating_add(o.cost_pico);
        self.latency.merge(&o.latency);
        self.ttft.merge(&o.ttft);
    }
}

/// One hour of one combination of dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Start of the hour, Unix ms.
    pub hour_ms: u64,
    /// The dimensions.
    pub dims: Dims,
    /// The figures.
    pub counters: Counters,
}

/// An isolate's rollups for one day, sent to that day's object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Who sends it (an isolate, or `key:<object>` for a key's corrections).
    pub holder: String,
    /// Increasing per holder: a batch seen before is ignored.
    pub seq: u64,
    /// `YYYY-MM-DD`: the day object it goes to.
    pub day: String,
    /// Hourly cells.
    #[serde(default)]
    pub cells: Vec<Cell>,
    /// The gateway-wide series: minute start -> figures.
    #[serde(default)]
    pub minutes: Vec<(u64, Counters)>,
}

#[derive(Debug, Clone, Default)]
struct Pending {
    cells: HashMap<(u64, Dims), Counters>,
    minutes: BTreeMap<u64, Counters>,
}

/// The isolate's rollups not yet acknowledged, per day.
#[derive(Debug, Clone, Default)]
pub struct Rollups {
    holder: String,
    seq: u64,
    pending: BTreeMap<String, Pending>,
    /// When the oldest pending figure was added.
    since_ms: Option<u64>,
    /// Sent and not acknowledged, per day: resent as is.
    unacked: BTreeMap<String, Batch>,
    in_flight: BTreeSet<String>,
    retry_at_ms: u64,
    failures: u32,
    /// The day of the last request counted, and its `YYYY-MM-DD`: formatted
    /// once a day, not once a request.
    day: Option<(u64, String)>,
    /// The last cell counted (hour and dimensions): consecutive requests of
    /// an isolate mostly share it, and reusing it spares the eight strings
    /// a cell key is made of (`tests/bench/README.md`, "What settling
    /// costs").
    last_cell: Option<(u64, Dims)>,
}

impl Rollups {
    /// An isolate's rollups; `holder` is its id.
    pub fn new(holder: String) -> Self {
        Rollups {
            holder,
            ..Rollups::default()
        }
    }

    /// Counts one settled request.
    pub fn add(&mut self, e: &RequestEvent<'_>, now_ms: u64) {
        let day_number = e.at_ms / DAY_MS;
        if self.day.as_ref().is_none_or(|(n, _)| *n != day_number) {
            self.day = Some((day_number, date_string(e.at_ms)));
        }
        let Some((_, day)) = &self.day else {
            return;
        };
        if !self.pending.contains_key(day.as_str()) {
            self.pending.insert(day.clone(), Pending::default());
        }
        let Some(p) = self.pending.get_mut(day.as_str()) else {
            return;
        };
        let hour = e.at_ms - e.at_ms % HOUR_MS;
        if !self
            .last_cell
            .as_ref()
            .is_some_and(|(h, d)| *h == hour && d.describes(e))
        {
            self.last_cell = Some((hour, Dims::of(e)));
        }
        let Some(cell) = &self.last_cell else {
            return;
        };
        if let Some(counters) = p.cells.get_mut(cell) {
            counters.add_event(e);
        } else {
            let mut counters = Counters::default();
            counters.add_event(e);
            p.cells.insert(cell.clone(), counters);
        }
        p.minutes
            .entry(e.at_ms - e.at_ms % MINUTE_MS)
            .or_default()
            .add_event(e);
        self.since_ms.get_or_insert(now_ms);
    }

    /// When a batch is next due (`flush_ms` after the oldest pending
    /// figure, or a resend), if anything waits.
    pub fn wakeup(&self, flush_ms: u64, now_ms: u64) -> Option<u64> {
        let resend = self
            .unacked
            .keys()
            .any(|d| !self.in_flight.contains(d))
            .then_some(now_ms);
        let flush = self.since_ms.map(|t| t + flush_ms);
        resend
            .into_iter()
            .chain(flush)
            .min()
            .map(|t| t.max(self.retry_at_ms))
    }

    /// The batches to send now: an unacknowledged one again, else what is
    /// pending for a day (when due, or whatever is pending with `force`).
    /// At most one batch per day is on its way at a time.
    pub fn take(&mut self, flush_ms: u64, now_ms: u64, force: bool) -> Vec<Batch> {
        if !force && now_ms < self.retry_at_ms {
            return vec![];
        }
        let due = force || self.since_ms.is_some_and(|t| now_ms >= t + flush_ms);
        let mut out = vec![];
        let mut days: BTreeSet<String> = self.unacked.keys().cloned().collect();
        if due {
            days.extend(self.pending.keys().cloned());
        }
        for day in days {
            if self.in_flight.contains(&day) {
                continue;
            }
            let batch = match self.unacked.get(&day) {
                Some(b) => b.clone(),
                None => {
                    let Some(p) = self.pending.remove(&day) else {
                        continue;
                    };
                    self.seq += 1;
                    let mut cells: Vec<Cell> = p
                        .cells
                        .into_iter()
                        .map(|((hour_ms, dims), counters)| Cell {
                            hour_ms,
                            dims,
                            counters,
                        })
                        .collect();
                    cells.sort_by(|a, b| (a.hour_ms, &a.dims).cmp(&(b.hour_ms, &b.dims)));
                    let b = Batch {
                        holder: self.holder.clone(),
                        seq: self.seq,
                        day: day.clone(),
                        cells,
                        minutes: p.minutes.into_iter().collect(),
                    };
                    self.unacked.insert(day.clone(), b.clone());
                    b
                }
            };
            self.in_flight.insert(day);
            out.push(batch);
        }
        if self.pending.is_empty() {
            self.since_ms = None;
        }
        out
    }

    /// The day's object applied (or had already applied) the batch.
    pub fn on_ack(&mut self, day: &str, seq: u64) {
        self.in_flight.remove(day);
        if self.unacked.get(day).is_some_and(|b| b.seq == seq) {
            self.unacked.remove(day);
        }
        self.failures = 0;
        self.retry_at_ms = 0;
    }

    /// The day's object could not be reached: the batch is resent after a
    /// back-off (`flush_ms`, doubling, at most 60 s).
    pub fn on_failure(&mut self, day: &str, flush_ms: u64, now_ms: u64) {
        self.in_flight.remove(day);
        self.failures = self.failures.saturating_add(1);
        let wait = flush_ms
            .saturating_mul(1 << self.failures.min(6))
            .min(60_000);
        self.retry_at_ms = now_ms + wait;
    }

    /// Whether anything is pending or unacknowledged (test support).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.unacked.is_empty()
    }
}

/// A key object's correction as a batch for its day's object: its own
/// holder (`key:<object>`), its outbox id as the sequence number.
pub fn correction_batch(holder: &str, seq: u64, c: &crate::limits::Correction) -> Batch {
    let counters = Counters {
        requests: c.requests,
        errors: c.errors,
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        cached_tokens: c.cached_tokens,
        cache_hits: c.cache_hits,
        cost_pico: c.cost_pico,
        ..Counters::default()
    };
    Batch {
        holder: holder.to_owned(),
        seq,
        day: date_string(c.at_ms),
        cells: vec![Cell {
            hour_ms: c.at_ms - c.at_ms % HOUR_MS,
            dims: Dims {
                key: c.key.clone(),
                team: c.team.clone().unwrap_or_default(),
                model: c.model.clone(),
                status: "adjusted".into(),
                ..Dims::default()
            },
            counters: counters.clone(),
        }],
        minutes: vec![(c.at_ms - c.at_ms % MINUTE_MS, counters)],
    }
}

/// What the edge asks a day's object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DayCommand {
    /// Apply a batch (once).
    Ingest(Batch),
    /// Answer a query for this day.
    Query(Query),
}

/// A day object's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DayReply {
    /// The batch is in (`applied: false`: it was already).
    Ingested {
        /// Whether this call applied it.
        applied: bool,
    },
    /// This day's share of a query.
    Partial(Partial),
}

/// A dimension to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// Key id.
    Key,
    /// Team.
    Team,
    /// Public model.
    Model,
    /// Provider.
    Provider,
    /// Provider-side model.
    TargetModel,
    /// Location (colo).
    Location,
    /// Jurisdiction.
    Jurisdiction,
    /// Status class.
    Status,
}

impl Dim {
    /// From its query-string name.
    pub fn parse(s: &str) -> Option<Dim> {
        Some(match s {
            "key" => Dim::Key,
            "team" => Dim::Team,
            "model" => Dim::Model,
            "provider" => Dim::Provider,
            "target_model" => Dim::TargetModel,
            "location" => Dim::Location,
            "jurisdiction" => Dim::Jurisdiction,
            "status" => Dim::Status,
            _ => return None,
        })
    }
}

/// The time resolution of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Per minute (gateway-wide only: no grouping, no filter).
    Minute,
    /// Per hour.
    Hour,
    /// Per UTC day.
    Day,
}

impl Interval {
    fn ms(self) -> u64 {
        match self {
            Interval::Minute => MINUTE_MS,
            Interval::Hour => HOUR_MS,
            Interval::Day => DAY_MS,
        }
    }
}

/// What `GET /admin/analytics` asks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Start, Unix ms (inclusive; whole hours, or minutes for the minute
    /// series).
    pub from_ms: u64,
    /// End, Unix ms (exclusive).
    pub to_ms: u64,
    /// Group by this dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Dim>,
    /// A series at this resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    /// Only cells whose dimension has this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<(Dim, String)>,
    /// The figures to answer (`metric=cost_usd,requests`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// The figures a query can ask for by name (`metric=`).
pub const METRICS: &[&str] = &[
    "requests",
    "errors",
    "error_rate",
    "failovers",
    "cache_hits",
    "hedged",
    "streams",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_pico",
    "latency_ms",
    "ttft_ms",
];

/// A malformed query, with the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The parameter.
    pub param: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Query {
    /// From query-string pairs: `from`, `to` (`YYYY-MM-DD`, which for `to`
    /// means the end of that day; or Unix ms), `group_by`, `interval`, and
    /// filters by dimension name (`key=...`, `model=...`). Without `from`,
    /// today; without `to`, the end of `from`'s day.
    pub fn parse<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) -> Result<Query, QueryError> {
        let mut q = Query::default();
        let (mut from, mut to) = (None, None);
        for (k, v) in pairs {
            let bad = |param: &'static str, what: &str| QueryError {
                param,
                message: format!("{param}: {what}, got {v:?}"),
            };
            match k {
                "from" => from = Some(time(v, false).ok_or_else(|| bad("from", TIME_FORMS))?),
                "to" => to = Some(time(v, true).ok_or_else(|| bad("to", TIME_FORMS))?),
                "group_by" => {
                    q.group_by = Some(Dim::parse(v).ok_or_else(|| bad("group_by", DIMS))?);
                }
                "interval" => {
                    q.interval = Some(match v {
                        "minute" => Interval::Minute,
                        "hour" => Interval::Hour,
                        "day" => Interval::Day,
                        _ => return Err(bad("interval", "one of minute, hour, day")),
                    });
                }
                "metric" | "metrics" => {
                    for m in v.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                        if !METRICS.contains(&m) {
                            return Err(QueryError {
                                param: "metric",
                                message: format!(
                                    "metric: one or more of {}, got {m:?}",
                                    METRICS.join(", ")
                                ),
                            });
                        }
                        q.metrics.push(m.to_owned());
                    }
                }
                other => match Dim::parse(other) {
                    Some(d) => q.filters.push((d, v.to_owned())),
                    None => {
                        return Err(QueryError {
                            param: "query",
                            message: format!("unknown parameter {other:?}"),
                        });
                    }
                },
            }
        }
        q.from_ms = from.unwrap_or(now_ms - now_ms % DAY_MS);
        q.to_ms = to.unwrap_or(q.from_ms - q.from_ms % DAY_MS + DAY_MS);
        if q.to_ms <= q.from_ms {
            return Err(QueryError {
                param: "to",
                message: "to: must be after from".into(),
            });
        }
        if q.to_ms - q.from_ms > MAX_QUERY_DAYS * DAY_MS {
            return Err(QueryError {
                param: "to",
                message: format!("to: a query spans at most {MAX_QUERY_DAYS} days"),
            });
        }
        if q.interval == Some(Interval::Minute) && (q.group_by.is_some() || !q.filters.is_empty()) {
            return Err(QueryError {
                param: "interval",
                message: "interval: the minute series is gateway-wide (no group_by, no filter); use hour or day".into(),
            });
        }
        Ok(q)
    }

    /// The day objects the period touches (`YYYY-MM-DD`).
    pub fn days(&self) -> Vec<String> {
        let first = self.from_ms / DAY_MS;
        let last = (self.to_ms - 1) / DAY_MS;
        (first..=last).map(|d| date_string(d * DAY_MS)).collect()
    }
}

const TIME_FORMS: &str = "a date YYYY-MM-DD or Unix milliseconds";
const DIMS: &str =
    "one of key, team, model, provider, target_model, location, jurisdiction, status";

/// `YYYY-MM-DD` (its start, or with `end` its end) or Unix ms.
fn time(v: &str, end: bool) -> Option<u64> {
    if let Ok(ms) = v.parse::<u64>() {
        return Some(ms);
    }
    let start = crate::limits::day_start_ms(v)?;
    Some(if end { start + DAY_MS } else { start })
}

/// Figures per (time bucket, group), mergeable across days.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// `(bucket start or 0, group or "")` -> figures.
    pub rows: Vec<((u64, String), Counters)>,
}

/// One day's stored figures: what its Durable Object holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayStore {
    cells: BTreeMap<(u64, Dims), Counters>,
    minutes: BTreeMap<u64, Counters>,
    /// The last batch applied per holder.
    holders: BTreeMap<String, u64>,
    dirty: BTreeSet<(&'static str, String)>,
}

/// A changed row of a day's store: `(kind, key, JSON)`.
pub type DayRow = (&'static str, String, String);

impl DayStore {
    /// Applies a batch once: `false` when it was seen before.
    pub fn ingest(&mut self, b: &Batch) -> bool {
        if self.holders.get(&b.holder).is_some_and(|&s| b.seq <= s) {
            return false;
        }
        self.holders.insert(b.holder.clone(), b.seq);
        self.dirty.insert(("holder", b.holder.clone()));
        for c in &b.cells {
            let key = (c.hour_ms, c.dims.clone());
            self.cells.entry(key).or_default().merge(&c.counters);
            self.dirty.insert(("cell", cell_key(c.hour_ms, &c.dims)));
        }
        for (minute, counters) in &b.minutes {
            self.minutes.entry(*minute).or_default().merge(counters);
            self.dirty.insert(("minute", minute.to_string()));
        }
        true
    }

    /// The figures the query asks of this day.
    pub fn query(&self, q: &Query) -> Partial {
        let mut rows: BTreeMap<(u64, String), Counters> = BTreeMap::new();
        if q.interval == Some(Interval::Minute) {
            for (minute, c) in self
                .minutes
                .range(q.from_ms - q.from_ms % MINUTE_MS..q.to_ms)
            {
                rows.entry((*minute, String::new())).or_default().merge(c);
            }
        } else {
            let from = q.from_ms - q.from_ms % HOUR_MS;
            for ((hour, dims), c) in &self.cells {
                if *hour < from || *hour >= q.to_ms {
                    continue;
                }
                if !q.filters.iter().all(|(d, v)| dims.get(*d) == v) {
                    continue;
                }
                let bucket = q.interval.map_or(0, |i| hour - hour % i.ms());
                let group = q.group_by.map_or("", |d| dims.get(d)).to_owned();
                rows.entry((bucket, group)).or_default().merge(c);
            }
        }
        Partial {
            rows: rows.into_iter().collect(),
        }
    }

    /// The rows changed since the last call, as `(kind, key, JSON)`.
    pub fn take_changes(&mut self) -> Vec<DayRow> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|(kind, key)| {
                let value = match kind {
                    "holder" => self.holders.get(&key).map(|s| s.to_string()),
                    "minute" => key
                        .parse()
                        .ok()
                        .and_then(|m| self.minutes.get(&m))
                        .map(json),
                    _ => {
                        let (hour, dims) = parse_cell_key(&key)?;
                        self.cells.get(&(hour, dims)).map(json)
                    }
                }?;
                Some((kind, key, value))
            })
            .collect()
    }

    /// Loads stored rows.
    pub fn load(rows: impl Iterator<Item = (String, String, String)>) -> Result<DayStore, String> {
        let mut s = DayStore::default();
        for (kind, key, value) in rows {
            let bad = |e: String| format!("stored {kind} row {key:?}: {e}");
            match kind.as_str() {
                "holder" => {
                    s.holders
                        .insert(key.clone(), value.parse().map_err(|_| bad("seq".into()))?);
                }
                "minute" => {
                    let m = key.parse().map_err(|_| bad("minute".into()))?;
                    s.minutes.insert(
                        m,
                        serde_json::from_str(&value).map_err(|e| bad(e.to_string()))?,
                    );
                }
                "cell" => {
                    let k = parse_cell_key(&key).ok_or_else(|| bad("key".into()))?;
                    s.cells.insert(
                        k,
                        serde_json::from_str(&value).map_err(|e| bad(e.to_string()))?,
                    );
                }
                _ => return Err(bad("unknown kind".into())),
            }
        }
        Ok(s)
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn cell_key(hour: u64, dims: &Dims) -> String {
    format!("{hour}\t{}", json(dims))
}

fn parse_cell_key(key: &str) -> Option<(u64, Dims)> {
    let (hour, dims) = key.split_once('\t')?;
    Some((hour.parse().ok()?, serde_json::from_str(dims).ok()?))
}

/// Figures as `GET /admin/analytics` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Requests settled.
    pub requests: i64,
    /// Of which failed.
    pub errors: i64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Answered by another target than the first.
    pub failovers: i64,
    /// Answered from the cache.
    pub cache_hits: i64,
    /// Hedged.
    pub hedged: i64,
    /// Streamed.
    pub streams: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Cost in USD (for display).
    pub cost_usd: f64,
    /// Cost in exact picodollars.
    pub cost_pico: i64,
    /// Latency percentiles, ms.
    pub latency_ms: Percentiles,
    /// Time-to-first-byte percentiles, ms.
    pub ttft_ms: Percentiles,
}

/// p50, p95, p99 (`None` without samples).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<u64>,
    /// 95th percentile.
    pub p95: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
}

impl From<&Sketch> for Percentiles {
    fn from(s: &Sketch) -> Self {
        Percentiles {
            p50: s.quantile(0.5),
            p95: s.quantile(0.95),
            p99: s.quantile(0.99),
        }
    }
}

impl From<&Counters> for Figures {
    fn from(c: &Counters) -> Self {
        Figures {
            requests: c.requests,
            errors: c.errors,
            error_rate: if c.requests > 0 {
                c.errors as f64 / c.requests as f64
            } else {
                0.0
            },
            failovers: c.failovers,
            cache_hits: c.cache_hits,
            hedged: c.hedged,
            streams: c.streams,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cached_tokens: c.cached_tokens,
            cost_usd: c.cost_pico as f64 / 1e12,
            cost_pico: c.cost_pico,
            latency_ms: (&c.latency).into(),
            ttft_ms: (&c.ttft).into(),
        }
    }
}

/// One group's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The dimension's value (empty: none, e.g. no provider answered).
    pub group: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// One point of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Bucket start, Unix ms.
    pub t: u64,
    /// The group, when grouped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// `GET /admin/analytics`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// Always `analytics`.
    pub object: &'static str,
    /// The period, Unix ms.
    pub from_ms: u64,
    /// End (exclusive).
    pub to_ms: u64,
    /// Grouped by.
    pub group_by: Option<Dim>,
    /// Series resolution.
    pub interval: Option<Interval>,
    /// Filters applied.
    pub filters: BTreeMap<String, String>,
    /// The whole period.
    pub totals: Figures,
    /// Per group, by cost then requests, descending (when grouped).
    pub groups: Vec<Group>,
    /// The series, oldest first (with an interval).
    pub series: Vec<Point>,
}

impl Answer {
    /// As JSON, with only the figures `metrics` names (all when empty).
    pub fn to_json(&self, metrics: &[String]) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if metrics.is_empty() {
            return v;
        }
        let keep = |figures: &mut serde_json::Value| {
            if let Some(map) = figures.as_object_mut() {
                map.retain(|k, _| {
                    matches!(k.as_str(), "group" | "t") || metrics.iter().any(|m| m == k)
                });
            }
        };
        keep(&mut v["totals"]);
        for list in ["groups", "series"] {
            if let Some(items) = v[list].as_array_mut() {
                items.iter_mut().for_each(keep);
            }
        }
        v
    }
}

/// Merges the days' partials into the answer.
pub fn answer(q: &Query, partials: &[Partial]) -> Answer {
    let mut merged: BTreeMap<(u64, String), Counters> = BTreeMap::new();
    for p in partials {
        for (k, c) in &p.rows {
            merged.entry(k.clone()).or_default().merge(c);
        }
    }
    let mut totals = Counters::default();
    let mut groups: BTreeMap<&str, Counters> = BTreeMap::new();
    for ((_, g), c) in &merged {
        totals.merge(c);
        if q.group_by.is_some() {
            groups.entry(g).or_default().merge(c);
        }
    }
    let mut groups: Vec<Group> = groups
        .into_iter()
        .map(|(g, c)| Group {
            group: g.to_owned(),
            figures: (&c).into(),
        })
        .collect();
    groups.sort_by(|a, b| {
        (b.figures.cost_pico, b.figures.requests).cmp(&(a.figures.cost_pico, a.figures.requests))
    });
    let series = match q.interval {
        None => vec![],
        Some(_) => merged
            .iter()
            .map(|((t, g), c)| Point {
                t: *t,
                group: q.group_by.map(|_| g.clone()),
                figures: c.into(),
            })
            .collect(),
    };
    Answer {
        object: "analytics",
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        group_by: q.group_by,
        interval: q.interval,
        filters: q
            .filters
            .iter()
            .map(|(d, v)| (json(d).trim_matches('"').to_owned(), v.clone()))
            .collect(),
        totals: (&totals).into(),
        groups,
        series,
    }
}

#[cfg(test)]
mod tests;
