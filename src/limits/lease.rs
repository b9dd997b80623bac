//! Leases: slices of a key's limits that an isolate admits from locally.
//!
//! A key's object is the one place that knows the key's limits exactly, but
//! calling it on every request puts a round trip to wherever it lives on
//! every request's path, and caps the key at one object's throughput. So an
//! isolate asks for a **lease** ([`LeaseAsk`]) and the object grants a slice
//! ([`Grant`]) of each limit the key has:
//!
//! - requests of the `rpm` and `rpd` windows, counted in the minute window
//!   at the lease's last usable instant (`admit_until`), so that whenever the
//!   isolate uses them, no 60-second window can hold more than `rpm`;
//! - tokens of `tpm`, counted the same way;
//! - dollars of every budget, held like one big reservation;
//! - concurrency slots, held until the lease is returned.
//!
//! The isolate admits from the lease with no call (`super::local`) and
//! reports what it used in batches ([`Sync`]). Each slice is at most
//! [`LEASE_SHARE`]⁻¹ of the headroom left, so many isolates cannot strand a
//! limit; when a slice would cover fewer than [`MIN_SLICE_REQUESTS`]
//! requests, no lease is granted and the isolate admits each request with
//! the object, exactly.
//!
//! A lease ends when its isolate returns it ([`LeaseDone`]: unused slots,
//! tokens and money go back) or, if the isolate vanished, at `hold_until`:
//! its held money is then charged in full (never undercharged).

use serde::{Deserialize, Serialize};

use super::money::{self, Money};
use super::{Auth, RateInfo};

/// A lease takes at most this fraction (1/n) of a limit's headroom.
pub const LEASE_SHARE: u64 = 4;
/// Concurrency slots are scarcer: at most half the free ones.
pub const SLOT_SHARE: u64 = 2;
/// A lease is granted only when every limited slice covers at least this
/// many requests (of the key's requests, tokens and money, at the asking
/// request's worst case): a small limit, or one nearly used up, is decided
/// request by request, exactly, with nothing stranded in other isolates.
pub const MIN_SLICE_REQUESTS: u64 = 8;
/// The longest a lease may be admitted from, whatever is asked. Short
/// enough that the isolate can return it from within the `waitUntil` of
/// the request that received it (the runtime allows 30 s after a response).
pub const MAX_LEASE_TTL_MS: u64 = 20_000;
/// Held money waits this long past `admit_until` + the request time limit
/// for the isolate's report before it is charged (reports are sent about a
/// second after each settlement).
pub const REPORT_SLACK_MS: u64 = 15_000;

/// What an isolate asks a key's object for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAsk {
    /// The key, as presented (the lease is refused to a wrong secret).
    pub auth: Auth,
    /// The isolate asking.
    pub holder: String,
    /// Increasing per holder and key: tells a lease whose grant never
    /// reached the isolate ([`Sync::answered`]).
    #[serde(default)]
    pub ask_id: u64,
    /// Requests it expects to admit in the lease's life.
    pub requests: u64,
    /// Worst-case tokens those requests may take.
    pub tokens: u64,
    /// Worst-case money those requests may reserve.
    #[serde(with = "money::pico")]
    pub money: Money,
    /// Concurrency slots.
    pub slots: u64,
    /// The least tokens worth a lease (one request's worst case).
    pub min_tokens: u64,
    /// The least money worth a lease (one request's worst case).
    #[serde(with = "money::pico")]
    pub min_money: Money,
    /// How long it wants to admit from it (clamped to [`MAX_LEASE_TTL_MS`]).
    pub ttl_ms: u64,
    /// The longest a request may run (the gateway's total timeout): money
    /// stays held this long past `admit_until` for requests in flight.
    pub hold_ms: u64,
}

/// A slice of the key's limits; `None` where the key has no such limit
/// (unlimited locally too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lease's id, for reports.
    pub lease: u64,
    /// Admissions from it must happen before this Unix ms.
    pub admit_until_ms: u64,
    /// Requests it may admit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Tokens (worst case, then actual as requests settle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Money (worst case, then actual as requests settle).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_pico")]
    pub money: Option<Money>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u64>,
}

/// What an isolate needs to know of a key to admit its requests locally
/// and to judge whether an admission can overlap the upstream call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySnapshot {
    /// SHA-256 of the secret, hex (checked in constant time).
    pub secret_hash: String,
    /// Unix ms after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Models it may use; `None` is all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// Its tier, for routing rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Its team, for the response cache's `team` scope and analytics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Its allowed jurisdictions, for routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Its data class, for routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_class: Option<String>,
    /// Its PII policy, for redaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<crate::config::PiiPolicy>,
    /// Every request goes to the object, serially (no lease, no overlap).
    #[serde(default)]
    pub strict: bool,
    /// What was left when this was taken.
    #[serde(default)]
    pub headroom: Headroom,
}

/// What is left of each limit; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headroom {
    /// Requests (the tighter of `rpm` and `rpd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Tokens of `tpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Money (the tightest budget).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_pico")]
    pub money: Option<Money>,
    /// Concurrency slots free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u64>,
}

/// Where a [`Charge`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// One request the object admitted (settles its reservation).
    Reservation {
        /// The reservation's id.
        id: u64,
    },
    /// Requests admitted from a lease (moves money from held to spent).
    Lease {
        /// The lease's id.
        id: u64,
    },
    /// Requests of a key with no limits (a static key): only counted.
    Record,
}

/// Settled requests of one source, model and day, summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Where they were admitted.
    pub source: Source,
    /// Unix ms of the (first) admission: the day and month charged.
    pub admitted_ms: u64,
    /// The public model name.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Of the requests, those the response cache answered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_hits: u64,
    /// What they cost.
    #[serde(with = "money::pico")]
    pub cost: Money,
}

/// A lease given back: nothing in flight, no more admissions from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDone {
    /// The lease.
    pub lease: u64,
    /// Requests admitted from it.
    pub used_requests: u64,
    /// Tokens its requests used (actual).
    pub used_tokens: u64,
}

/// An isolate's batch for one key: settled requests, returned leases and,
/// optionally, a new lease to grant. Batches carry a sequence number per
/// holder, so one that is sent twice (a retry whose reply was lost) is
/// applied once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The isolate.
    pub holder: String,
    /// Increasing per holder; `0` carries nothing to apply (a lease ask only).
    pub seq: u64,
    /// Settled requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<Charge>,
    /// Returned leases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<LeaseDone>,
    /// A new lease, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<LeaseAsk>,
    /// Every ask up to this id was answered, or its answer given up for.
    #[serde(default)]
    pub answered: u64,
    /// Requests admitted from the holder's leases and not yet settled.
    #[serde(default)]
    pub in_flight: u64,
    /// The leases the isolate holds. A lease of this holder granted for an
    /// answered ask and not held here never reached it (a lost reply): the
    /// object takes it back unused.
    #[serde(default)]
    pub held: Vec<u64>,
}

/// `Option<Money>` as optional integer picodollars.
pub mod opt_pico {
    use super::Money;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as an integer (or null).
    pub fn serialize<S: Serializer>(m: &Option<Money>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_some(&m.0),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from an integer (or null).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Money>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Money))
    }
}

/// The reply fields a lease-aware admission adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// The new lease, if one was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// The key as the isolate may cache it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySnapshot>,
    /// Rate state after the grant, for headers.
    #[serde(default)]
    pub rate: RateInfo,
}

/// `min(want, floor(headroom / share))`, or `None` when that is below
/// `least` (a slice too small to be worth holding). A `least` of zero
/// accepts an empty slice: money for requests that cost nothing (an
/// unpriced model) is no money at all.
pub fn slice(want: u64, headroom: u64, share: u64, least: u64) -> Option<u64> {
    let g = want.min(headroom / share);
    (g >= least).then_some(g)
}

/// For `skip_serializing_if`: a counter that has not counted leaves no
/// field (older rows and batches have none).
pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}
