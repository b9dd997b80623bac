//! The `nearest` strategy: nearest first, and it holds.
//!
//! Targets are ranked by their network distance from the caller (the
//! round trip of the great-circle distance, [`super::network_ms`]). Observed
//! time to first byte changes that order only when a target is
//! **significantly and consistently slower than a farther one**:
//!
//! - *consistently*: both targets have a settled estimate — an EWMA of at
//!   least [`MIN_SAMPLES`](super::health::MIN_SAMPLES) samples, the last
//!   within [`STALE_AFTER_MS`](super::health::STALE_AFTER_MS);
//! - *significantly*: the nearer one's estimate exceeds the farther one's
//!   by more than [`SLOWER_BY_MS`] **and** by more than
//!   [`SLOWER_BY_FRACTION`] of it;
//! - *hysteresis*: once ranked back, a target keeps that place until its
//!   excess falls to [`RECOVERY_FRACTION`] of that margin, so an estimate
//!   hovering at the margin does not flip the order request by request.
//!
//! A slow target is ranked as if it were farther by as much as it is
//! slower: its place is the distance of the fastest farther target plus
//! its excess over it. Since the excess is at least 200 ms and the far
//! side of the Earth 200 ms away, that is behind every target without a
//! settled estimate of its own. A target with no
//! settled estimate — never tried, or not for a minute — is ranked by its
//! distance alone: its prior is "as fast as the others, plus the network
//! time of its distance", so it never wins for not having been tried, and
//! never loses for it either. Between targets the same distance away, the
//! config's order counts as the nearer.
//!
//! Why these numbers: a model's time to first byte is typically 200 ms to
//! 2 s, and differs from request to request by tens of percent; a network
//! detour across an ocean costs 70–150 ms. A margin of 200 ms and 50 %
//! means "clearly slower, beyond the noise of one model's answers", and the
//! distance to a farther deployment is then always worth crossing.

use super::health::Health;
use super::{Candidate, Origin, target_key};

/// A target must be slower than a farther one by more than this ...
pub const SLOWER_BY_MS: f64 = 200.0;
/// ... and by more than this fraction of the farther one's time.
pub const SLOWER_BY_FRACTION: f64 = 0.5;
/// A target ranked back for being slow returns to its place once its excess
/// is at most this fraction of the margin that ranked it back.
pub const RECOVERY_FRACTION: f64 = 0.5;

/// Orders `list` nearest first for a caller at `origin`, reordered only by
/// significant, consistent slowness (module doc). Stable: equal scores keep
/// the config's order. Records each target's slow verdict in `health` (the
/// hysteresis state).
pub fn order(list: &mut Vec<Candidate<'_>>, origin: &Origin, health: &Health, now_ms: u64) {
    let keys: Vec<String> = list
        .iter()
        .map(|c| target_key(c.target.name, c.target.model))
        .collect();
    let distance: Vec<f64> = list
        .iter()
        .map(|c| super::network_ms(origin, c.target.provider))
        .collect();
    let settled: Vec<Option<f64>> = keys
        .iter()
        .map(|k| health.settled_ewma_ms(k, now_ms))
        .collect();
    let scores: Vec<f64> = (0..list.len())
        .map(|i| {
            let verdict = settled[i].and_then(|mine| {
                let (r, theirs) = fastest_farther(i, &distance, &settled)?;
                let excess = mine - theirs;
                let margin = SLOWER_BY_MS.max(SLOWER_BY_FRACTION * theirs);
                let bar = if health.is_slow(&keys[i]) {
                    margin * RECOVERY_FRACTION
                } else {
                    margin
                };
                (excess > bar).then_some((r, excess))
            });
            health.set_slow(&keys[i], verdict.is_some());
            match verdict {
                // As far as the faster, farther target, plus the excess.
                Some((r, excess)) => distance[r] + excess,
                None => distance[i],
            }
        })
        .collect();
    let mut indexed: Vec<(f64, Candidate<'_>)> = scores.into_iter().zip(list.drain(..)).collect();
    indexed.sort_by(|a, b| a.0.total_cmp(&b.0));
    list.extend(indexed.into_iter().map(|(_, c)| c));
}

/// Among the targets at least as far as `i` (later in the config when as
/// far), the one with the lowest settled estimate, and that estimate.
fn fastest_farther(i: usize, distance: &[f64], settled: &[Option<f64>]) -> Option<(usize, f64)> {
    (0..distance.len())
        .filter(|&j| distance[j] > distance[i] || (distance[j] == distance[i] && j > i))
        .filter_map(|j| settled[j].map(|e| (j, e)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}
