//! The sliding minute window of `rpm` and `tpm`, in one-second buckets.
//!
//! A log of every admission is exact to the millisecond, but its size grows
//! with the limit (a key at rpm 50,000 keeps 50,000 entries) and so does the
//! cost of each decision that stores it. Buckets bound both: at most 61 live
//! buckets of the past minute, plus a few in the near future where leases
//! count their slots ("at the latest instant they could be used").
//!
//! The window is conservative: a bucket counts until its *last* possible
//! entry has left the window, so the limit is never exceeded in any 60-second
//! window, and a request may wait up to one bucket (1 s) longer than an exact
//! log would make it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::MINUTE_MS;

/// Width of one bucket.
pub const BUCKET_MS: u64 = 1_000;

/// What one bucket holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Admissions (or leased slots) counted in it.
    pub requests: u64,
    /// Tokens counted in it.
    pub tokens: u64,
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.requests == 0 && self.tokens == 0
    }
}

/// Buckets by index (`ms / BUCKET_MS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteWindow {
    buckets: BTreeMap<u64, Bucket>,
}

/// The bucket index of a time.
pub fn bucket_of(ms: u64) -> u64 {
    ms / BUCKET_MS
}

/// The first time at which nothing in bucket `idx` is in the window any
/// more: its last possible entry, at `(idx + 1) × BUCKET_MS − 1`, plus a minute.
fn leaves_at(idx: u64) -> u64 {
    (idx + 1) * BUCKET_MS - 1 + MINUTE_MS
}

impl MinuteWindow {
    /// A window of stored buckets.
    pub fn from_buckets(buckets: impl IntoIterator<Item = (u64, Bucket)>) -> Self {
        MinuteWindow {
            buckets: buckets.into_iter().filter(|(_, b)| !b.is_empty()).collect(),
        }
    }

    /// Drops the buckets that have left the window at `now_ms`; returns
    /// their indices (for storage).
    pub fn prune(&mut self, now_ms: u64) -> Vec<u64> {
        let gone: Vec<u64> = self
            .buckets
            .keys()
            .take_while(|&&idx| leaves_at(idx) <= now_ms)
            .copied()
            .collect();
        for idx in &gone {
            self.buckets.remove(idx);
        }
        gone
    }

    /// Requests and tokens in the window (call [`MinuteWindow::prune`] first;
    /// future buckets count: they hold leased slots).
    pub fn totals(&self) -> Bucket {
        self.buckets
            .values()
            .fold(Bucket::default(), |acc, b| Bucket {
                requests: acc.requests.saturating_add(b.requests),
                tokens: acc.tokens.saturating_add(b.tokens),
            })
    }

    /// Counts `requests` and `tokens` at `at_ms`; returns the bucket index.
    pub fn add(&mut self, at_ms: u64, requests: u64, tokens: u64) -> u64 {
        let idx = bucket_of(at_ms);
        let b = self.buckets.entry(idx).or_default();
        b.requests = b.requests.saturating_add(requests);
        b.tokens = b.tokens.saturating_add(tokens);
        idx
    }

    /// Uncounts from bucket `idx` (never below zero); an emptied bucket is
    /// dropped.
    pub fn remove(&mut self, idx: u64, requests: u64, tokens: u64) {
        if let Some(b) = self.buckets.get_mut(&idx) {
            b.requests = b.requests.saturating_sub(requests);
            b.tokens = b.tokens.saturating_sub(tokens);
            if b.is_empty() {
                self.buckets.remove(&idx);
            }
        }
    }

    /// A bucket's content (empty when absent).
    pub fn get(&self, idx: u64) -> Bucket {
        self.buckets.get(&idx).copied().unwrap_or_default()
    }

    /// Every bucket, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Bucket)> + '_ {
        self.buckets.iter().map(|(i, b)| (*i, *b))
    }

    /// Ms from `now_ms` until the window holds at most `limit − need` of
    /// what `amount` measures, so that `need` more fit; `None` if it never
    /// will (`need > limit`).
    pub fn wait_for(
        &self,
        now_ms: u64,
        limit: u64,
        need: u64,
        amount: impl Fn(&Bucket) -> u64,
    ) -> Option<u64> {
        if need > limit {
            return None;
        }
        let mut used: u64 = self.buckets.values().map(&amount).sum();
        if used + need <= limit {
            return Some(0);
        }
        for (&idx, b) in &self.buckets {
            used = used.saturating_sub(amount(b));
            if used + need <= limit {
                return Some(leaves_at(idx).saturating_sub(now_ms));
            }
        }
        Some(MINUTE_MS)
    }

    /// Ms until the oldest bucket leaves the window.
    pub fn oldest_reset_ms(&self, now_ms: u64) -> Option<u64> {
        self.buckets
            .keys()
            .next()
            .map(|&idx| leaves_at(idx).saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_counts_until_its_last_possible_entry_leaves() {
        let mut w = MinuteWindow::default();
        w.add(10_000, 1, 5); // bucket 10: entries up to 10,999
        assert!(w.prune(70_998).is_empty());
        assert_eq!(w.totals().requests, 1);
        assert_eq!(w.prune(70_999), vec![10]);
        assert_eq!(w.totals(), Bucket::default());
    }

    #[test]
    fn future_buckets_count_now_and_for_a_minute_after() {
        let mut w = MinuteWindow::default();
        w.add(20_500, 10, 0); // a lease usable until 20.5 s
        w.prune(5_000);
        assert_eq!(w.totals().requests, 10);
        w.prune(80_998);
        assert_eq!(w.totals().requests, 10);
        w.prune(80_999);
        assert_eq!(w.totals().requests, 0);
    }

    #[test]
    fn wait_is_until_enough_buckets_leave() {
        let mut w = MinuteWindow::default();
        w.add(1_000, 2, 100);
        w.add(2_000, 3, 100);
        // rpm 5: full; one more fits when bucket 1 (2 requests) leaves.
        assert_eq!(
            w.wait_for(30_000, 5, 1, |b| b.requests),
            Some(61_999 - 30_000)
        );
        assert_eq!(w.wait_for(30_000, 6, 1, |b| b.requests), Some(0));
        // 200 tokens used: 150 more fit a 250 window once bucket 1 leaves.
        assert_eq!(
            w.wait_for(30_000, 250, 150, |b| b.tokens),
            Some(61_999 - 30_000)
        );
        assert_eq!(
            w.wait_for(30_000, 250, 250, |b| b.tokens),
            Some(62_999 - 30_000)
        );
        assert_eq!(w.wait_for(30_000, 250, 251, |b| b.tokens), None);
    }

    #[test]
    fn removing_never_goes_below_zero_and_drops_empty_buckets() {
        let mut w = MinuteWindow::default();
        let idx = w.add(5_000, 3, 30);
        w.remove(idx, 5, 10);
        assert_eq!(
            w.get(idx),
            Bucket {
                requests: 0,
                tokens: 20
            }
        );
        w.remove(idx, 0, 20);
        assert_eq!(w.iter().count(), 0);
    }
}
