//! Seeing what the gateway does: usage analytics, request logs and alerts.
//! Sans-IO like the rest of the core: the edge feeds it settled requests
//! and sends what it hands back, off the request path.
//!
//! - [`sketch`]    — a mergeable latency sketch (fixed log-linear buckets),
//!   so percentiles survive rolling up across isolates, hours and days.
//! - [`analytics`] — per-request events rolled up per hour and dimension in
//!   the isolate, batches to one store per UTC day (applied once), queries
//!   grouped by key, team, model, provider or location.
//! - [`logs`]      — opt-in request logs: JSON lines with redaction, batched
//!   into R2 objects by day and hour, retention by day.
//! - [`alerts`]    — breaker, model and budget alerts: crossings, cooldowns,
//!   HMAC-signed webhook deliveries with retries.

pub mod alerts;
pub mod analytics;
pub mod logs;
pub mod sketch;
