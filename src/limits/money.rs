//! Money as integers: picodollars (10⁻¹² USD).
//!
//! Floating point cannot hold a budget exactly, and a gateway that sums a
//! million small charges in `f64` drifts. Prices are configured per million
//! tokens in USD; a price of `p` USD per 1M tokens is `p × 10⁶` picodollars
//! per token, so every charge is an exact integer product. A `u64` holds up
//! to about $18 million, far beyond any one key's budget; arithmetic
//! saturates rather than wraps.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of money in picodollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub u64);

/// Picodollars in one dollar.
const PER_USD: f64 = 1e12;

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// From a USD amount as configured (rounded to the nearest picodollar);
    /// `None` for negative, NaN or absurdly large values.
    pub fn from_usd(usd: f64) -> Option<Money> {
        let pico = (usd * PER_USD).round();
        (usd.is_finite() && usd >= 0.0 && pico < u64::MAX as f64).then_some(Money(pico as u64))
    }

    /// The amount in USD, for display.
    pub fn usd(self) -> f64 {
        self.0 as f64 / PER_USD
    }

    /// Saturating sum.
    pub fn plus(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// Saturating difference.
    pub fn minus(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.6}", self.usd())
    }
}

/// USD amounts in the admin API and config are JSON numbers of dollars.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.usd())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let usd = f64::deserialize(d)?;
        Money::from_usd(usd)
            .ok_or_else(|| serde::de::Error::custom(format!("{usd} is not a valid USD amount")))
    }
}

/// Exact integer picodollars in storage, where no float may round.
pub mod pico {
    use super::Money;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as an integer.
    pub fn serialize<S: Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(m.0)
    }

    /// Deserializes from an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        u64::deserialize(d).map(Money)
    }
}

/// A model's prices in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Input (prompt) tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// Output (completion) tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Cached input tokens (cache reads); the input price when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// Input tokens written to the provider's prompt cache; the input price
    /// when not given (an Anthropic target's default is
    /// [`CACHE_WRITE_MARKUP`] times it: see `config::Provider::model_info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
}

/// An Anthropic model's cache-write price as a multiple of its input price
/// when none is configured: Anthropic's five-minute writes cost 1.25 times
/// the base input price (one-hour writes cost 2 times: configure
/// `cache_write_per_mtok` for a model used with one-hour caching). Only
/// Anthropic reports cache writes (`cache_creation_input_tokens`), so other
/// providers keep the input price and their reservations do not grow.
pub const CACHE_WRITE_MARKUP: f64 = 1.25;

/// The tokens of one answer, as they are priced. `cache_read` and
/// `cache_write` are parts of `input` (OpenAI counts cached tokens inside
/// `prompt_tokens`, and the gateway's usage does the same for writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Every input token, cache reads and writes included.
    pub input: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
}

/// The highest price the config accepts, USD per million tokens (a
/// thousand times the dearest model listed today).
pub const MAX_PRICE_PER_MTOK: f64 = 1_000_000.0;

/// Picodollars per token for a price in USD per million tokens: $p per 1M
/// tokens is p × 10⁶ picodollars per token, one rounding.
fn per_token(usd_per_mtok: f64) -> u64 {
    let pico = (usd_per_mtok * 1e6).round();
    if pico.is_finite() && pico >= 0.0 && pico < u64::MAX as f64 {
        pico as u64
    } else {
        0
    }
}

impl Pricing {
    /// The exact cost of a request's tokens. Cached tokens are part of the
    /// input count and are charged at the cached price.
    pub fn cost(&self, input: u64, output: u64, cached: u64) -> Money {
        self.cost_of(Tokens {
            input,
            output,
            cache_read: cached,
            cache_write: 0,
        })
    }

    /// The exact cost of an answer's tokens: cache reads at the cached
    /// price, cache writes at the cache-write price, the rest of the input
    /// at the input price, output at the output price. Reads and writes
    /// beyond the input count are capped to it (reads first).
    pub fn cost_of(&self, t: Tokens) -> Money {
        let read = t.cache_read.min(t.input);
        let write = t.cache_write.min(t.input - read);
        let input_price = per_token(self.input_per_mtok);
        Money(
            (t.input - read - write)
                .saturating_mul(input_price)
                .saturating_add(read.saturating_mul(self.cache_read_price()))
                .saturating_add(write.saturating_mul(self.cache_write_price()))
                .saturating_add(t.output.saturating_mul(per_token(self.output_per_mtok))),
        )
    }

    /// The most `input` input tokens and `output` output tokens can cost,
    /// whichever way the input splits between fresh tokens, cache reads
    /// and cache writes: a reservation's bound.
    pub fn worst_cost(&self, input: u64, output: u64) -> Money {
        let dearest = per_token(self.input_per_mtok)
            .max(self.cache_read_price())
            .max(self.cache_write_price());
        Money(
            input
                .saturating_mul(dearest)
                .saturating_add(output.saturating_mul(per_token(self.output_per_mtok))),
        )
    }

    /// Picodollars per cache-read token.
    fn cache_read_price(&self) -> u64 {
        per_token(self.cached_input_per_mtok.unwrap_or(self.input_per_mtok))
    }

    /// Picodollars per cache-write token.
    fn cache_write_price(&self) -> u64 {
        per_token(self.cache_write_per_mtok.unwrap_or(self.input_per_mtok))
    }

    /// Whether the prices are usable: each from 0 to
    /// [`MAX_PRICE_PER_MTOK`], so that every price has an exact per-token
    /// figure (one past u64 picodollars per token would count as free).
    pub fn is_valid(&self) -> bool {
        let ok = |p: f64| (0.0..=MAX_PRICE_PER_MTOK).contains(&p);
        ok(self.input_per_mtok)
            && ok(self.output_per_mtok)
            && self.cached_input_per_mtok.is_none_or(ok)
            && self.cache_write_per_mtok.is_none_or(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_per_million_tokens_are_exact_per_token() {
        let gpt4o = Pricing {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: Some(1.25),
            cache_write_per_mtok: None,
        };
        // 1,000 input (200 cached) + 500 output:
        // 800 × $2.5/M + 200 × $1.25/M + 500 × $10/M = $0.002 + $0.00025 + $0.005
        assert_eq!(
            gpt4o.cost(1_000, 500, 200),
            Money::from_usd(0.00725).unwrap()
        );
        let flash = Pricing {
            input_per_mtok: 0.075,
            output_per_mtok: 0.3,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
        };
        assert_eq!(flash.cost(1, 0, 0), Money(75_000));
        assert_eq!(
            flash.cost(1_000_000, 1_000_000, 0),
            Money::from_usd(0.375).unwrap()
        );
    }

    #[test]
    fn a_million_small_charges_sum_exactly() {
        let p = Pricing {
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
        };
        let one = p.cost(7, 3, 0);
        let total = (0..1_000_000).fold(Money::ZERO, |acc, _| acc.plus(one));
        assert_eq!(total, Money(one.0 * 1_000_000));
        assert_eq!(total, Money::from_usd(2.85).unwrap());
    }

    #[test]
    fn cache_reads_and_writes_are_charged_at_their_own_prices() {
        // Claude Sonnet 4.5: $3 input, $15 output, $0.30 cache reads, $3.75
        // five-minute cache writes (1.25 × $3).
        let sonnet = Pricing {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
            cache_write_per_mtok: Some(3.75),
        };
        // 10,000 input = 1,000 fresh + 6,000 read + 3,000 written; 500 output:
        // 1,000 × 3,000,000 + 6,000 × 300,000 + 3,000 × 3,750,000
        //   + 500 × 15,000,000 pico = 3e9 + 1.8e9 + 11.25e9 + 7.5e9.
        let t = Tokens {
            input: 10_000,
            output: 500,
            cache_read: 6_000,
            cache_write: 3_000,
        };
        assert_eq!(sonnet.cost_of(t), Money(23_550_000_000));
        // A configured write price wins (one-hour writes: 2 × input).
        let hour = Pricing {
            cache_write_per_mtok: Some(6.0),
            ..sonnet
        };
        assert_eq!(hour.cost_of(t), Money(23_550_000_000 + 3_000 * 2_250_000));
        // Without cache prices, reads and writes cost the input price.
        let plain = Pricing {
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            ..sonnet
        };
        assert_eq!(
            plain.cost_of(t),
            Money(23_550_000_000 + 6_000 * 2_700_000 - 3_000 * 750_000)
        );
        // Reads and writes beyond the input are capped to it, reads first.
        let over = Tokens {
            input: 100,
            output: 0,
            cache_read: 80,
            cache_write: 80,
        };
        assert_eq!(sonnet.cost_of(over), Money(80 * 300_000 + 20 * 3_750_000));
        // `cost` is `cost_of` without writes.
        assert_eq!(
            sonnet.cost(10_000, 500, 6_000),
            Money(4_000 * 3_000_000 + 6_000 * 300_000 + 500 * 15_000_000)
        );
    }

    #[test]
    fn the_worst_case_prices_every_input_token_at_the_dearest_input_price() {
        let sonnet = Pricing {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
            cache_write_per_mtok: Some(3.75),
        };
        // 1,000 input at the write price ($3.75/M) + 100 output at $15/M.
        assert_eq!(
            sonnet.worst_cost(1_000, 100),
            Money(1_000 * 3_750_000 + 100 * 15_000_000)
        );
        for (input, read, write) in [(1_000, 0, 0), (1_000, 1_000, 0), (1_000, 0, 1_000)] {
            let t = Tokens {
                input,
                output: 100,
                cache_read: read,
                cache_write: write,
            };
            assert!(sonnet.cost_of(t) <= sonnet.worst_cost(1_000, 100));
        }
        // Without cache prices the worst case is the plain cost.
        let plain = Pricing {
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            ..sonnet
        };
        assert_eq!(plain.worst_cost(1_000, 100), plain.cost(1_000, 100, 0));
    }

    #[test]
    fn usd_round_trips_and_rejects_nonsense() {
        assert_eq!(Money::from_usd(0.1), Some(Money(100_000_000_000)));
        assert_eq!(Money::from_usd(-1.0), None);
        assert_eq!(Money::from_usd(f64::NAN), None);
        assert_eq!(Money::from_usd(1e30), None);
        let m: Money = serde_json::from_str("12.5").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "12.5");
        assert!(serde_json::from_str::<Money>("-3").is_err());
        assert_eq!(Money(1_500_000_000_000).to_string(), "$1.500000");
    }
}
