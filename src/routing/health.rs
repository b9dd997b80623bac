//! What an isolate has learned about each target: a circuit breaker, a
//! cooling period after a 429, and an EWMA of time to first byte with the
//! number of samples behind it.
//!
//! State lives per isolate (no coordination cost on the request path); each
//! isolate learns from its own traffic. Time is passed in.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use crate::config::Breaker;

/// Weight of the newest sample in the time-to-first-byte average.
const EWMA_ALPHA: f64 = 0.3;
/// Samples an estimate needs before it may reorder targets: one slow answer
/// is noise, five in a row (weighted by the EWMA) are a pattern.
pub const MIN_SAMPLES: u32 = 5;
/// An estimate older than this is forgotten: a target that lost its place
/// for being slow gets no traffic to show it recovered, so after a minute
/// it is measured afresh (a few requests a minute at most).
pub const STALE_AFTER_MS: u64 = 60_000;

/// Whether a target may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Closed breaker, not cooling.
    Ready,
    /// The breaker's cooldown is over: one probe may go.
    Probe,
    /// Skipped until the given time (breaker open, or cooling after a 429).
    Until(u64),
}

#[derive(Debug, Default)]
struct TargetHealth {
    ewma_ms: Option<f64>,
    /// Samples in the EWMA since it was last started afresh.
    samples: u32,
    /// When the last sample was taken.
    sampled_at: u64,
    /// Nearest-first hysteresis: this target is currently ranked behind a
    /// farther one for being slower (see `routing::nearest`).
    slow: bool,
    failures: VecDeque<u64>,
    open_until: Option<u64>,
    probing: bool,
    cooling_until: Option<u64>,
}

/// Per-target health, keyed by `provider/model`.
#[derive(Debug, Default)]
pub struct Health {
    targets: RefCell<HashMap<String, TargetHealth>>,
}

/// The health key of a target.
pub fn target_key(provider: &str, model: &str) -> String {
    format!("{provider}/{model}")
}

impl Health {
    /// Empty: every target ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the target may be tried at `now_ms` (without taking a probe).
    pub fn availability(&self, key: &str, now_ms: u64) -> Availability {
        let targets = self.targets.borrow();
        let Some(t) = targets.get(key) else {
            return Availability::Ready;
        };
        let mut until = t.cooling_until.filter(|&c| c > now_ms);
        match t.open_until {
            Some(open) if open > now_ms => until = Some(until.map_or(open, |c| c.max(open))),
            Some(_) if t.probing => until = Some(until.unwrap_or(now_ms + 1)),
            Some(_) if until.is_none() => return Availability::Probe,
            _ => {}
        }
        until.map_or(Availability::Ready, Availability::Until)
    }

    /// Claims the right to try the target now: always when ready; for a
    /// half-open breaker, only the first caller gets the probe.
    pub fn acquire(&self, key: &str, now_ms: u64) -> bool {
        match self.availability(key, now_ms) {
            Availability::Ready => true,
            Availability::Until(_) => false,
            Availability::Probe => {
                if let Some(t) = self.targets.borrow_mut().get_mut(key) {
                    t.probing = true;
                }
                true
            }
        }
    }

    /// The target answered at `now_ms`; `first_byte_ms` is its time to
    /// first byte. An estimate gone stale starts afresh.
    pub fn record_success(&self, key: &str, now_ms: u64, first_byte_ms: u64) {
        let mut targets = self.targets.borrow_mut();
        let t = targets.entry(key.to_owned()).or_default();
        let x = first_byte_ms as f64;
        let fresh = now_ms.saturating_sub(t.sampled_at) < STALE_AFTER_MS;
        t.ewma_ms = match t.ewma_ms {
            Some(prev) if fresh => Some(EWMA_ALPHA * x + (1.0 - EWMA_ALPHA) * prev),
            _ => {
                t.samples = 0;
                Some(x)
            }
        };
        t.samples = t.samples.saturating_add(1);
        t.sampled_at = t.sampled_at.max(now_ms);
        t.failures.clear();
        t.open_until = None;
        t.probing = false;
    }

    /// The target failed in a retryable way at `now_ms`. `cool_for_ms`
    /// (from a 429's `Retry-After`) skips it for that long.
    pub fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        cool_for_ms: Option<u64>,
        breaker: &Breaker,
    ) {
        let mut targets = self.targets.borrow_mut();
        let t = targets.entry(key.to_owned()).or_default();
        if let Some(ms) = cool_for_ms {
            t.cooling_until = Some(t.cooling_until.unwrap_or(0).max(now_ms + ms));
        }
        if t.probing {
            // The probe failed: open again for a full cooldown.
            t.probing = false;
            t.open_until = Some(now_ms + breaker.cooldown_ms);
            return;
        }
        t.failures.push_back(now_ms);
        while t
            .failures
            .front()
            .is_some_and(|&f| f + breaker.window_ms <= now_ms)
        {
            t.failures.pop_front();
        }
        if t.failures.len() >= breaker.failures as usize {
            t.failures.clear();
            t.open_until = Some(now_ms + breaker.cooldown_ms);
        }
    }

    /// The average time to first byte, once observed.
    pub fn ewma_ms(&self, key: &str) -> Option<f64> {
        self.targets.borrow().get(key).and_then(|t| t.ewma_ms)
    }

    /// The average time to first byte when it is worth acting on: at least
    /// [`MIN_SAMPLES`] samples, the last within [`STALE_AFTER_MS`].
    pub fn settled_ewma_ms(&self, key: &str, now_ms: u64) -> Option<f64> {
        let targets = self.targets.borrow();
        let t = targets.get(key)?;
        let fresh = now_ms.saturating_sub(t.sampled_at) < STALE_AFTER_MS;
        t.ewma_ms.filter(|_| fresh && t.samples >= MIN_SAMPLES)
    }

    /// Whether nearest-first ordering last ranked the target behind a
    /// farther one for being slower (its hysteresis state).
    pub fn is_slow(&self, key: &str) -> bool {
        self.targets.borrow().get(key).is_some_and(|t| t.slow)
    }

    /// Records nearest-first ordering's verdict on the target.
    pub fn set_slow(&self, key: &str, slow: bool) {
        let mut targets = self.targets.borrow_mut();
        match targets.get_mut(key) {
            Some(t) => t.slow = slow,
            None if slow => {
                targets.entry(key.to_owned()).or_default().slow = true;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Breaker = Breaker {
        failures: 3,
        window_ms: 10_000,
        cooldown_ms: 5_000,
    };

    #[test]
    fn breaker_opens_after_failures_in_the_window_and_half_opens_for_one_probe() {
        let h = Health::new();
        h.record_failure("t", 0, None, &B);
        h.record_failure("t", 1_000, None, &B);
        assert_eq!(h.availability("t", 1_000), Availability::Ready);
        h.record_failure("t", 2_000, None, &B);
        assert_eq!(h.availability("t", 2_000), Availability::Until(7_000));
        assert!(!h.acquire("t", 6_999));
        // Cooldown over: exactly one probe goes.
        assert_eq!(h.availability("t", 7_000), Availability::Probe);
        assert!(h.acquire("t", 7_000));
        assert!(!h.acquire("t", 7_001), "only one probe at a time");
        // The probe fails: open again.
        h.record_failure("t", 7_100, None, &B);
        assert_eq!(h.availability("t", 7_100), Availability::Until(12_100));
        // The next probe succeeds: closed.
        assert!(h.acquire("t", 12_100));
        h.record_success("t", 12_100, 80);
        assert_eq!(h.availability("t", 12_101), Availability::Ready);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let h = Health::new();
        h.record_failure("t", 0, None, &B);
        h.record_failure("t", 5_000, None, &B);
        h.record_failure("t", 10_000, None, &B); // the first one has aged out
        assert_eq!(h.availability("t", 10_000), Availability::Ready);
        h.record_failure("t", 11_000, None, &B);
        assert!(matches!(
            h.availability("t", 11_000),
            Availability::Until(_)
        ));
    }

    #[test]
    fn retry_after_cools_the_target() {
        let h = Health::new();
        h.record_failure("t", 1_000, Some(3_000), &B);
        assert_eq!(h.availability("t", 1_000), Availability::Until(4_000));
        assert_eq!(h.availability("t", 4_000), Availability::Ready);
        assert_eq!(h.availability("other", 1_000), Availability::Ready);
    }

    #[test]
    fn ewma_follows_time_to_first_byte() {
        let h = Health::new();
        assert_eq!(h.ewma_ms("t"), None);
        h.record_success("t", 1_000, 100);
        h.record_success("t", 2_000, 200);
        assert!((h.ewma_ms("t").unwrap() - 130.0).abs() < 1e-9);
    }

    #[test]
    fn an_estimate_is_settled_after_enough_fresh_samples_and_restarts_when_stale() {
        let h = Health::new();
        for i in 0..MIN_SAMPLES - 1 {
            h.record_success("t", 1_000 + u64::from(i), 300);
        }
        assert_eq!(h.settled_ewma_ms("t", 2_000), None, "too few samples");
        h.record_success("t", 2_000, 300);
        assert_eq!(h.settled_ewma_ms("t", 2_000), Some(300.0));
        let later = 2_000 + STALE_AFTER_MS;
        assert_eq!(h.settled_ewma_ms("t", later), None, "stale");
        // A sample after a long silence starts a new estimate, not a blend.
        h.record_success("t", later, 900);
        assert_eq!(h.ewma_ms("t"), Some(900.0));
        assert_eq!(h.settled_ewma_ms("t", later), None, "one sample again");
    }
}
