//! What an isolate has learned about each target: a circuit breaker, a
//! cooling period after a 429, and an EWMA of time to first byte with the
//! number of samples behind it.
//!
//! State lives per isolate (no coordination cost on the request path); each
//! isolate learns from its own traffic, and from the other isolates of its
//! location through a [`Snapshot`]: what a location knows, exported with
//! [`Health::snapshot`], joined with [`Snapshot::merge`] and taken in with
//! [`Health::absorb`]. The edge moves snapshots between isolates off the
//! request path (`edge::shared_health`). Time is passed in.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

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
/// How long a snapshot keeps a breaker's last change after it no longer
/// skips the target: long enough for every isolate to hear of a closing.
const RETAIN_CHANGE_MS: u64 = 60_000;

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

/// Upper bounds (ms) of the time-to-first-byte histogram's buckets: each
/// half again as wide as the last, from 25 ms to a minute; one more bucket
/// holds the rest.
const TTFB_BOUNDS_MS: [u64; 20] = [
    25, 38, 56, 84, 127, 190, 285, 427, 641, 961, 1_441, 2_162, 3_243, 4_865, 7_297, 10_946,
    16_419, 24_629, 36_943, 60_000,
];
/// Samples a histogram needs before its percentiles are used.
pub const MIN_QUANTILE_SAMPLES: u32 = 8;
/// Past this many samples the counts are halved, so the histogram follows
/// the target's recent behaviour.
const HISTOGRAM_DECAY_AT: u32 = 256;

/// Times to first byte in log-spaced buckets: a percentile is the upper
/// bound of the bucket it falls in (never earlier than the truth).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtfbHistogram {
    /// One count per bucket of `TTFB_BOUNDS_MS`, then the overflow.
    pub counts: Vec<u32>,
}

impl TtfbHistogram {
    fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// Adds one sample.
    pub fn record(&mut self, ms: u64) {
        if self.counts.len() != TTFB_BOUNDS_MS.len() + 1 {
            self.counts = vec![0; TTFB_BOUNDS_MS.len() + 1];
        }
        let i = TTFB_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(TTFB_BOUNDS_MS.len());
        self.counts[i] += 1;
        if self.total() > HISTOGRAM_DECAY_AT {
            for c in &mut self.counts {
                *c /= 2;
            }
        }
    }

    /// The `p`th percentile (0–100), once there are enough samples.
    pub fn quantile(&self, p: u8) -> Option<u64> {
        let total = self.total();
        if total < MIN_QUANTILE_SAMPLES {
            return None;
        }
        let rank = (u64::from(total) * u64::from(p)).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(TTFB_BOUNDS_MS.get(i).copied().unwrap_or(120_000));
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct TargetHealth {
    ewma_ms: Option<f64>,
    /// Times to first byte, for percentiles (hedging).
    ttfb: TtfbHistogram,
    /// Samples in the EWMA since it was last started afresh.
    samples: u32,
    /// When the last sample was taken.
    sampled_at: u64,
    /// Nearest-first hysteresis: this target is currently ranked behind a
    /// farther one for being slower (see `routing::nearest`).
    slow: bool,
    failures: VecDeque<u64>,
    open_until: Option<u64>,
    /// When the breaker last opened or closed (0: never), which orders this
    /// isolate's verdict against the ones it hears of.
    breaker_at: u64,
    probing: bool,
    cooling_until: Option<u64>,
}

/// Per-target health, keyed by `provider/model`.
#[derive(Debug, Default)]
pub struct Health {
    targets: RefCell<HashMap<String, TargetHealth>>,
    /// A breaker opened or closed, or a cooling started, since
    /// [`Health::take_changed`] last looked: worth telling the location.
    changed: Cell<bool>,
    /// Breakers this isolate opened (target, when) since
    /// [`Health::take_opened`] last looked: for `breaker_open` alerts. Only
    /// its own verdicts: one heard from the location is another isolate's
    /// to report.
    opened: RefCell<Vec<(String, u64)>>,
}

/// What the isolates of one location know of their targets, keyed like
/// [`Health`]. Snapshots form a join semilattice: [`Snapshot::merge`] is
/// commutative, associative and idempotent, so isolates may exchange them
/// in any order, lose some, or repeat them, and still agree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Each target's shared state.
    #[serde(default)]
    pub targets: BTreeMap<String, SharedTarget>,
}

/// One target's state as shared within a location.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedTarget {
    /// When the breaker last opened or closed (Unix ms; 0: never). The
    /// latest change wins.
    pub breaker_at: u64,
    /// Until when the breaker skips the target, as of that change (`None`:
    /// closed).
    pub open_until: Option<u64>,
    /// Until when a 429 cools the target (the latest deadline wins).
    pub cooling_until: Option<u64>,
    /// The time-to-first-byte EWMA, ms.
    pub ewma_ms: Option<f64>,
    /// Samples behind it.
    pub samples: u32,
    /// When its last sample was taken (the latest estimate wins).
    pub sampled_at: u64,
    /// Times to first byte, with the estimate they go with.
    pub ttfb: TtfbHistogram,
}

impl SharedTarget {
    /// Joins `other` into `self`, field group by field group.
    fn merge(&mut self, other: &SharedTarget) {
        if (other.breaker_at, other.open_until) > (self.breaker_at, self.open_until) {
            self.breaker_at = other.breaker_at;
            self.open_until = other.open_until;
        }
        self.cooling_until = self.cooling_until.max(other.cooling_until);
        let newer = (other.sampled_at, other.samples) > (self.sampled_at, self.samples)
            || ((other.sampled_at, other.samples) == (self.sampled_at, self.samples)
                && other.ewma_ms.unwrap_or(f64::MAX) < self.ewma_ms.unwrap_or(f64::MAX));
        if newer {
            self.ewma_ms = other.ewma_ms;
            self.samples = other.samples;
            self.sampled_at = other.sampled_at;
            self.ttfb = other.ttfb.clone();
        }
    }

    /// Whether any of it still matters at `now_ms`.
    fn current(&self, now_ms: u64) -> bool {
        self.open_until.is_some_and(|t| t > now_ms)
            || self.cooling_until.is_some_and(|t| t > now_ms)
            || (self.breaker_at > 0 && now_ms.saturating_sub(self.breaker_at) < RETAIN_CHANGE_MS)
            || (self.ewma_ms.is_some() && now_ms.saturating_sub(self.sampled_at) < STALE_AFTER_MS)
    }
}

impl Snapshot {
    /// Joins another location view into this one.
    pub fn merge(&mut self, other: &Snapshot) {
        for (key, theirs) in &other.targets {
            match self.targets.get_mut(key) {
                Some(mine) => mine.merge(theirs),
                None => {
                    self.targets.insert(key.clone(), theirs.clone());
                }
            }
        }
    }

    /// Drops what no longer matters at `now_ms` (expired deadlines, stale
    /// estimates, old breaker changes), so the shared entry stays small.
    pub fn prune(&mut self, now_ms: u64) {
        self.targets.retain(|_, t| t.current(now_ms));
    }
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

    /// Whether the target is skipped only because it is cooling after its
    /// provider's 429 (no open breaker, no probe out): a caller refused for
    /// it is rate limited, not facing an outage.
    pub fn rate_limited(&self, key: &str, now_ms: u64) -> bool {
        self.targets.borrow().get(key).is_some_and(|t| {
            t.cooling_until.is_some_and(|c| c > now_ms)
                && t.open_until.is_none_or(|open| open <= now_ms)
                && !t.probing
        })
    }

    /// Claims the right to try the target now: always when ready; for a
    /// half-open breaker, only the first caller gets the probe.
    pub fn acquire(&self, key: &str, now_ms: u64) -> bool {
        self.claim(key, now_ms).is_some()
    }

    /// [`Health::acquire`], saying whether the claim took the half-open
    /// breaker's probe (`Some(true)`), which only its holder may
    /// [`Health::release`]; `None` when the target may not be tried now.
    pub fn claim(&self, key: &str, now_ms: u64) -> Option<bool> {
        match self.availability(key, now_ms) {
            Availability::Ready => Some(false),
            Availability::Until(_) => None,
            Availability::Probe => {
                if let Some(t) = self.targets.borrow_mut().get_mut(key) {
                    t.probing = true;
                }
                Some(true)
            }
        }
    }

    /// The target answered at `now_ms`; `first_byte_ms` is its time to
    /// first byte (a whole answer's time, for one not streamed). An
    /// estimate gone stale starts afresh, its percentiles too.
    pub fn record_success(&self, key: &str, now_ms: u64, first_byte_ms: u64) {
        let mut targets = self.targets.borrow_mut();
        let t = targets.entry(key.to_owned()).or_default();
        let x = first_byte_ms as f64;
        let fresh = now_ms.saturating_sub(t.sampled_at) < STALE_AFTER_MS;
        t.ewma_ms = match t.ewma_ms {
            Some(prev) if fresh => Some(EWMA_ALPHA * x + (1.0 - EWMA_ALPHA) * prev),
            _ => {
                t.samples = 0;
                t.ttfb = TtfbHistogram::default();
                Some(x)
            }
        };
        t.samples = t.samples.saturating_add(1);
        t.sampled_at = t.sampled_at.max(now_ms);
        t.failures.clear();
        if t.open_until.take().is_some() {
            t.breaker_at = t.breaker_at.max(now_ms);
            self.changed.set(true);
        }
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
            self.changed.set(true);
        }
        if t.probing {
            // The probe failed: open again for a full cooldown.
            t.probing = false;
            t.open_until = Some(now_ms + breaker.cooldown_ms);
            t.breaker_at = t.breaker_at.max(now_ms);
            self.changed.set(true);
            self.opened.borrow_mut().push((key.to_owned(), now_ms));
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
            t.breaker_at = t.breaker_at.max(now_ms);
            self.changed.set(true);
            self.opened.borrow_mut().push((key.to_owned(), now_ms));
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

    /// Whether this isolate opened a breaker since [`Health::take_opened`]
    /// last looked (one borrow: cheap enough for every request).
    pub fn has_opened(&self) -> bool {
        !self.opened.borrow().is_empty()
    }

    /// The breakers this isolate opened since the last call: target key
    /// and when.
    pub fn take_opened(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.opened.borrow_mut())
    }

    /// Whether a breaker opened or closed, or a cooling started, since the
    /// last call: what the location should hear of at once.
    pub fn take_changed(&self) -> bool {
        self.changed.replace(false)
    }

    /// This isolate's view at `now_ms`, as shared within its location
    /// (only what still matters).
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let targets = self.targets.borrow();
        let targets = targets
            .iter()
            .map(|(key, t)| {
                let shared = SharedTarget {
                    breaker_at: t.breaker_at,
                    open_until: t.open_until,
                    cooling_until: t.cooling_until,
                    ewma_ms: t.ewma_ms,
                    samples: t.samples,
                    sampled_at: t.sampled_at,
                    ttfb: t.ttfb.clone(),
                };
                (key.clone(), shared)
            })
            .filter(|(_, t)| t.current(now_ms))
            .collect();
        Snapshot { targets }
    }

    /// Takes in what the location knows: a breaker change newer than this
    /// isolate's own is adopted (opened: skip the target; closed: use it),
    /// the later cooling deadline holds, and a newer latency estimate
    /// replaces this isolate's (later samples build on it).
    pub fn absorb(&self, snapshot: &Snapshot, now_ms: u64) {
        let mut targets = self.targets.borrow_mut();
        for (key, theirs) in &snapshot.targets {
            if !theirs.current(now_ms) {
                continue;
            }
            let t = targets.entry(key.clone()).or_default();
            if theirs.breaker_at > t.breaker_at {
                t.breaker_at = theirs.breaker_at;
                t.open_until = theirs.open_until;
                t.failures.clear();
                t.probing = false;
            }
            t.cooling_until = t.cooling_until.max(theirs.cooling_until);
            if theirs.ewma_ms.is_some()
                && (theirs.sampled_at, theirs.samples) > (t.sampled_at, t.samples)
            {
                t.ewma_ms = theirs.ewma_ms;
                t.samples = theirs.samples;
                t.sampled_at = theirs.sampled_at;
                t.ttfb = theirs.ttfb.clone();
            }
        }
    }

    /// The `p`th percentile of the target's time to first byte, as this
    /// isolate and its location have seen it lately; `None` until there are
    /// [`MIN_QUANTILE_SAMPLES`] samples, or once they are stale.
    pub fn ttfb_percentile_ms(&self, key: &str, p: u8, now_ms: u64) -> Option<u64> {
        let targets = self.targets.borrow();
        let t = targets.get(key)?;
        if now_ms.saturating_sub(t.sampled_at) >= STALE_AFTER_MS {
            return None;
        }
        t.ttfb.quantile(p)
    }

    /// A streamed answer's time to first token, for the percentiles
    /// hedging uses (after [`Health::record_success`]: whole answers'
    /// times, which include the whole generation, are kept out of them).
    pub fn record_first_token(&self, key: &str, ms: u64) {
        if let Some(t) = self.targets.borrow_mut().get_mut(key) {
            t.ttfb.record(ms);
        }
    }

    /// A streamed attempt abandoned at `now_ms` after `ms` without a first
    /// token (it lost a hedge): its time to first token is at least `ms`,
    /// counted as `ms` so that the percentiles do not forget the slow
    /// attempts hedging cuts short. No verdict on its health.
    pub fn record_unanswered(&self, key: &str, now_ms: u64, ms: u64) {
        let mut targets = self.targets.borrow_mut();
        let t = targets.entry(key.to_owned()).or_default();
        if now_ms.saturating_sub(t.sampled_at) >= STALE_AFTER_MS {
            t.ttfb = TtfbHistogram::default();
        }
        t.ttfb.record(ms);
    }

    /// An attempt that took the half-open probe was abandoned (it lost a
    /// hedge): neither a success nor a failure, and the probe is free again.
    pub fn release(&self, key: &str) {
        if let Some(t) = self.targets.borrow_mut().get_mut(key) {
            t.probing = false;
        }
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

    /// Two isolates of one location and the entry they share.
    fn exchange(from: &Health, to: &Health, shared: &mut Snapshot, now_ms: u64) {
        shared.merge(&from.snapshot(now_ms));
        shared.prune(now_ms);
        to.absorb(shared, now_ms);
    }

    #[test]
    fn a_breaker_opened_in_one_isolate_skips_the_target_in_another() {
        let (a, b) = (Health::new(), Health::new());
        let mut shared = Snapshot::default();
        for at in [1_000, 1_100, 1_200] {
            a.record_failure("t", at, None, &B);
        }
        assert!(a.take_changed(), "an opening is worth telling");
        assert!(!a.take_changed(), "once");
        exchange(&a, &b, &mut shared, 1_300);
        assert_eq!(b.availability("t", 1_300), Availability::Until(6_200));
        assert_eq!(b.availability("other", 1_300), Availability::Ready);
        // B probes after the cooldown and finds it healthy: A hears of the
        // closing, and the target is ready there, not just up for a probe.
        assert!(b.acquire("t", 6_200));
        b.record_success("t", 6_300, 100);
        assert!(b.take_changed(), "a closing is worth telling");
        let mut a_again = Snapshot::default();
        a_again.merge(&shared);
        exchange(&b, &a, &mut a_again, 6_400);
        assert_eq!(a.availability("t", 6_400), Availability::Ready);
    }

    #[test]
    fn an_older_breaker_change_never_overrides_a_newer_one() {
        let (a, b) = (Health::new(), Health::new());
        for at in [1_000, 1_100, 1_200] {
            a.record_failure("t", at, None, &B);
        }
        let old = a.snapshot(1_300);
        // B opened it later, on its own failures.
        for at in [2_000, 2_100, 2_200] {
            b.record_failure("t", at, None, &B);
        }
        b.absorb(&old, 2_300);
        assert_eq!(b.availability("t", 2_300), Availability::Until(7_200));
    }

    #[test]
    fn cooling_and_latency_are_shared() {
        let (a, b) = (Health::new(), Health::new());
        a.record_failure("t", 1_000, Some(5_000), &B);
        for i in 0..MIN_SAMPLES {
            a.record_success("u", 1_000 + u64::from(i), 400);
        }
        let mut shared = Snapshot::default();
        exchange(&a, &b, &mut shared, 1_500);
        assert_eq!(b.availability("t", 1_500), Availability::Until(6_000));
        assert_eq!(b.settled_ewma_ms("u", 1_500), Some(400.0));
        // B's own later samples build on the shared estimate.
        b.record_success("u", 1_600, 100);
        assert!((b.ewma_ms("u").unwrap() - 310.0).abs() < 1e-9);
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent() {
        let view = |breaker_at, open_until, cooling_until, ewma: f64, sampled_at| {
            let mut s = Snapshot::default();
            s.targets.insert(
                "t".into(),
                SharedTarget {
                    breaker_at,
                    open_until,
                    cooling_until,
                    ewma_ms: Some(ewma),
                    samples: 5,
                    sampled_at,
                    ttfb: TtfbHistogram::default(),
                },
            );
            s
        };
        let x = view(10, Some(100), None, 300.0, 50);
        let y = view(20, None, Some(70), 200.0, 40);
        let z = view(20, Some(90), Some(60), 250.0, 50);
        let join = |a: &Snapshot, b: &Snapshot| {
            let mut out = a.clone();
            out.merge(b);
            out
        };
        assert_eq!(join(&x, &y), join(&y, &x));
        assert_eq!(join(&join(&x, &y), &z), join(&x, &join(&y, &z)));
        assert_eq!(join(&x, &x), x);
        let all = join(&join(&x, &y), &z);
        let t = &all.targets["t"];
        assert_eq!((t.breaker_at, t.open_until), (20, Some(90)));
        assert_eq!(t.cooling_until, Some(70));
        assert_eq!((t.ewma_ms, t.sampled_at), (Some(250.0), 50));
    }

    #[test]
    fn prune_drops_what_no_longer_matters() {
        let h = Health::new();
        h.record_failure("cool", 1_000, Some(1_000), &B);
        h.record_success("fast", 1_000, 100);
        let mut s = h.snapshot(1_500);
        assert_eq!(s.targets.len(), 2);
        s.prune(2_500);
        assert_eq!(s.targets.len(), 1, "the cooling is over");
        s.prune(1_000 + STALE_AFTER_MS);
        assert!(s.targets.is_empty(), "the estimate is stale");
        let text = serde_json::to_string(&h.snapshot(1_500)).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, h.snapshot(1_500));
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

    #[test]
    fn only_breakers_this_isolate_opens_are_reported_for_alerts() {
        let b = Breaker {
            failures: 2,
            window_ms: 10_000,
            cooldown_ms: 1_000,
        };
        let h = Health::new();
        h.record_failure("p/m", 100, None, &b);
        assert!(!h.has_opened());
        h.record_failure("p/m", 200, None, &b);
        assert!(h.has_opened());
        assert_eq!(h.take_opened(), [("p/m".to_owned(), 200)]);
        assert!(!h.has_opened());
        // The probe fails: it opens again, reported again (the alert's
        // cooldown decides whether anyone is told).
        assert!(h.acquire("p/m", 1_300));
        h.record_failure("p/m", 1_300, None, &b);
        assert_eq!(h.take_opened(), [("p/m".to_owned(), 1_300)]);
        // A breaker heard of from the location is not this isolate's.
        let other = Health::new();
        other.absorb(&h.snapshot(1_400), 1_400);
        assert!(!other.has_opened());
    }
}
