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
    /// Cached input tokens; the input price when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
}

impl Pricing {
    /// The exact cost of a request's tokens. Cached tokens are part of the
    /// input count and are charged at the cached price.
    pub fn cost(&self, input: u64, output: u64, cached: u64) -> Money {
        // $p per 1M tokens is p × 10⁶ picodollars per token: one rounding.
        let per_token = |usd_per_mtok: f64| {
            let pico = (usd_per_mtok * 1e6).round();
            if pico.is_finite() && pico >= 0.0 && pico < u64::MAX as f64 {
                pico as u64
            } else {
                0
            }
        };
        let cached = cached.min(input);
        let input_price = per_token(self.input_per_mtok);
        let cached_price = self.cached_input_per_mtok.map_or(input_price, per_token);
        Money(
            (input - cached)
                .saturating_mul(input_price)
                .saturating_add(cached.saturating_mul(cached_price))
                .saturating_add(output.saturating_mul(per_token(self.output_per_mtok))),
        )
    }

    /// Whether the prices are usable (finite, not negative).
    pub fn is_valid(&self) -> bool {
        let ok = |p: f64| p.is_finite() && p >= 0.0;
        ok(self.input_per_mtok)
            && ok(self.output_per_mtok)
            && self.cached_input_per_mtok.is_none_or(ok)
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
        };
        let one = p.cost(7, 3, 0);
        let total = (0..1_000_000).fold(Money::ZERO, |acc, _| acc.plus(one));
        assert_eq!(total, Money(one.0 * 1_000_000));
        assert_eq!(total, Money::from_usd(2.85).unwrap());
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
