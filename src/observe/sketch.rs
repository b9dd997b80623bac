//! A mergeable latency sketch: counts in fixed log-linear buckets.
//!
//! Percentiles cannot be added up: the p95 of a day is not a sum of the
//! p95s of its hours, nor of its isolates. Counts per fixed bucket can: two
//! sketches merge by adding their counts, in any order and any grouping,
//! and a percentile is read off the merged counts at the end. So every
//! isolate, hour and day object keeps one of these per latency, and the
//! query merges them.
//!
//! Buckets: one per millisecond below 16 ms, then eight per power of two
//! (16–17, 18–19, ..., 1,024–1,151, ...): a value is reported to within
//! 1/16 of itself (the bucket's middle), at most 8 buckets per doubling, so
//! an hour of any traffic holds at most ~180 buckets up to ten minutes. The
//! index is integer arithmetic (a leading-zero count), no logarithm.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Values below this each have their own bucket.
const LINEAR: u64 = 16;
/// Buckets per power of two above [`LINEAR`] (a power of two).
const SUB: u64 = 8;
const SUB_BITS: u32 = SUB.trailing_zeros();

/// Counts of values (milliseconds) per bucket; sparse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(u16, u64)>", into = "Vec<(u16, u64)>")]
pub struct Sketch {
    counts: BTreeMap<u16, u64>,
}

impl From<Vec<(u16, u64)>> for Sketch {
    fn from(pairs: Vec<(u16, u64)>) -> Self {
        let mut s = Sketch::default();
        for (i, n) in pairs {
            *s.counts.entry(i).or_default() += n;
        }
        s
    }
}

impl From<Sketch> for Vec<(u16, u64)> {
    fn from(s: Sketch) -> Self {
        s.counts.into_iter().collect()
    }
}

/// The bucket of a value.
fn index(v: u64) -> u16 {
    if v < LINEAR {
        return v as u16;
    }
    let exp = 63 - v.leading_zeros(); // >= 4
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (LINEAR + u64::from(exp - LINEAR.trailing_zeros()) * SUB + sub) as u16
}

/// The smallest value of a bucket and its width.
fn bounds(i: u16) -> (u64, u64) {
    let i = u64::from(i);
    if i < LINEAR {
        return (i, 1);
    }
    let exp = (i - LINEAR) / SUB + u64::from(LINEAR.trailing_zeros());
    let sub = (i - LINEAR) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    ((SUB + sub) * width, width)
}

impl Sketch {
    /// Counts one value.
    pub fn add(&mut self, ms: u64) {
        *self.counts.entry(index(ms)).or_default() += 1;
    }

    /// Adds another sketch's counts.
    pub fn merge(&mut self, other: &Sketch) {
        for (i, n) in &other.counts {
            *self.counts.entry(*i).or_default() += n;
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `q`-quantile (0..=1), as the middle of its bucket; `None` when
    /// empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The smallest value with at least q of the values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in &self.counts {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(*i);
                return Some(low + width / 2);
            }
        }
        None
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_the_bucket_that_bounds_it() {
        for v in (0..5_000).chain([65_535, 65_536, 600_000, u64::from(u32::MAX)]) {
            let (low, width) = bounds(index(v));
            assert!(
                low <= v && v < low + width,
                "{v} not in [{low}, {})",
                low + width
            );
            // Within 1/16 of the value when read as the bucket's middle.
            let mid = low + width / 2;
            assert!(mid.abs_diff(v) * 16 <= v.max(16), "{v}: {mid}");
        }
    }

    #[test]
    fn buckets_are_ordered_like_their_values() {
        let mut last = 0;
        for v in 0..100_000u64 {
            let i = index(v);
            assert!(i >= last);
            last = i;
        }
        assert!(index(600_000) < 200, "ten minutes fits in ~180 buckets");
    }

    #[test]
    fn quantiles_read_off_exact_small_values() {
        let mut s = Sketch::default();
        for v in 1..=10 {
            s.add(v);
        }
        assert_eq!(s.quantile(0.5), Some(5));
        assert_eq!(s.quantile(0.95), Some(10));
        assert_eq!(s.quantile(0.0), Some(1));
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn merging_in_any_grouping_gives_the_same_sketch() {
        let values: Vec<u64> = (0..300).map(|i| (i * 7919) % 5_000).collect();
        let mut whole = Sketch::default();
        values.iter().for_each(|v| whole.add(*v));
        let mut parts = [Sketch::default(), Sketch::default(), Sketch::default()];
        for (n, v) in values.iter().enumerate() {
            parts[n % 3].add(*v);
        }
        let mut a = parts[0].clone();
        a.merge(&parts[1]);
        a.merge(&parts[2]);
        let mut b = parts[2].clone();
        b.merge(&parts[0]);
        b.merge(&parts[1]);
        assert_eq!(a, whole);
        assert_eq!(b, whole);
        assert_eq!(whole.count(), 300);
    }

    #[test]
    fn a_p95_is_within_a_sixteenth_of_the_exact_one() {
        let mut s = Sketch::default();
        let mut exact: Vec<u64> = (1..=1000).map(|i| i * 3 + 100).collect();
        exact.iter().for_each(|v| s.add(*v));
        exact.sort_unstable();
        let want = exact[949];
        let got = s.quantile(0.95).unwrap();
        assert!(got.abs_diff(want) * 16 <= want, "{got} vs {want}");
    }

    #[test]
    fn serializes_as_pairs() {
        let mut s = Sketch::default();
        s.add(3);
        s.add(3);
        s.add(100);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("[[3,2],[{},1]]", index(100)));
        assert_eq!(serde_json::from_str::<Sketch>(&json).unwrap(), s);
    }
}
