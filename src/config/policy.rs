//! Routing policy in the config: where deployments are, how a model's
//! targets are ordered, which origins must stay in which jurisdictions, and
//! how failover behaves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A point on Earth, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, -90 to 90.
    pub lat: f64,
    /// Longitude, -180 to 180.
    pub lon: f64,
}

/// How a model's targets are ordered (before failover walks them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// The config's order.
    #[default]
    Priority,
    /// Nearest deployment first (great-circle distance from the caller); a
    /// target is ranked behind a farther one only when its observed time to
    /// first byte is consistently slower by more than 200 ms and 50 %
    /// (`routing::nearest`).
    Nearest,
    /// One target drawn by `weight`, the rest in priority order. `sticky`
    /// makes the draw a function of the key or the request's `user`, for
    /// A/B tests that keep a caller on one arm.
    Weighted {
        /// What the draw sticks to, if anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sticky: Option<Sticky>,
    },
    /// Lowest observed time to first byte (an EWMA kept per isolate) first.
    Latency,
    /// Cheapest target able to serve the request first.
    Cost,
}

/// What a sticky weighted draw follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// The gateway key.
    Key,
    /// The request's `user` field (the key when absent).
    User,
}

/// A conditional route: when every given condition holds, these targets
/// (with this strategy) replace the model's own. The first matching rule wins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The conditions.
    pub when: Condition,
    /// The targets to use instead.
    pub targets: Vec<super::Target>,
    /// Their order; the model's strategy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// Conditions on a request; all given ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Request headers (names lower-case) with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `metadata` fields of the request body with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The key's tier is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// The estimated input is at least this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_input_tokens: Option<u64>,
    /// The estimated input is at most this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
}

/// Data residency: requests from these origins are served only by
/// deployments in these jurisdictions, failover included.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Residency {
    /// Which origins the rule covers.
    pub origin: OriginMatch,
    /// The jurisdictions allowed to serve them (e.g. `["eu"]`).
    pub jurisdictions: Vec<String>,
}

/// A set of request origins; any given criterion matching is enough.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OriginMatch {
    /// Requests from EU member states (`request.cf.isEUCountry`).
    #[serde(default)]
    pub eu: bool,
    /// ISO 3166-1 alpha-2 country codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Continent codes (`EU`, `NA`, `AS`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub continents: Vec<String>,
}

/// Timeouts, retries and the circuit breaker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    /// Longest wait for a streamed answer's response headers (providers
    /// send them at once). Moves to the next target.
    pub connect_timeout_ms: u64,
    /// Longest wait for the first token of a stream, and for the whole of a
    /// non-streamed answer, headers included (providers send those only
    /// when the answer is ready). Moves to the next target.
    pub first_byte_timeout_ms: u64,
    /// Longest a whole answer may take; a stream past it ends with an error.
    pub total_timeout_ms: u64,
    /// A 429's `Retry-After` cools the target for at most this long.
    pub retry_after_cap_s: u64,
    /// Most targets tried for one request.
    pub max_attempts: usize,
    /// The per-target circuit breaker.
    pub breaker: Breaker,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            connect_timeout_ms: 15_000,
            first_byte_timeout_ms: 60_000,
            total_timeout_ms: 600_000,
            retry_after_cap_s: 60,
            max_attempts: 4,
            breaker: Breaker::default(),
        }
    }
}

/// Opens after `failures` failures within `window_ms`; skips the target for
/// `cooldown_ms`; then lets one probe through (half-open): its success
/// closes the breaker, its failure opens it again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Failures that open the breaker.
    pub failures: u32,
    /// The window they are counted in.
    pub window_ms: u64,
    /// How long an open breaker skips the target.
    pub cooldown_ms: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: 5,
            window_ms: 30_000,
            cooldown_ms: 30_000,
        }
    }
}
