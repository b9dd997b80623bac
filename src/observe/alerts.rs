//! Failover and budget alerts: what is raised, how often it may be sent,
//! and how a webhook delivery is signed and retried.
//!
//! Who raises what, all off the request path:
//!
//! - `breaker_open` — an isolate whose breaker for a target opened
//!   ([`crate::routing::Health::take_opened`]); `model_down` — an isolate
//!   whose request found every target of a model failing. Each isolate
//!   keeps its own cooldown ([`LocalAlerts`]), so an outage costs it one
//!   call per target per cooldown, sent by its flusher.
//! - `budget_80`, `budget_100` — a key's Durable Object, which alone knows
//!   exactly when settled spend crosses a threshold ([`budget_crossings`]);
//!   it records the crossing in the same step as the charge and sends it
//!   from its alarm until it is acknowledged, so a lost reply loses nothing.
//!
//! All of them go to one alerts object, whose [`AlertBook`] applies the
//! gateway-wide cooldown — at most one delivery per event and target per
//! `alerts.cooldown_ms` — and delivers from its alarm: signed with
//! HMAC-SHA256 ([`signature`]), retried with back-off ([`retry_delay_ms`])
//! up to [`MAX_ATTEMPTS`] times. A slow or failing webhook delays only
//! that alarm, never a request.

use std::collections::{BTreeMap, HashMap, VecDeque};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::keys::hex;
use crate::limits::Money;

/// Attempts at one delivery before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Deliveries kept for `GET /admin/alerts`.
pub const HISTORY: usize = 100;
/// Header with the HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-gateway-signature";
/// Header with the Unix seconds the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-gateway-timestamp";
/// Header with the event name.
pub const EVENT_HEADER: &str = "x-gateway-event";

/// The events a webhook can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A target's circuit breaker opened (it is skipped for its cooldown).
    BreakerOpen,
    /// Every target of a model failed a request.
    ModelDown,
    /// A key's settled spend crossed 80 % of a budget.
    #[serde(rename = "budget_80")]
    Budget80,
    /// A key's settled spend reached its budget.
    #[serde(rename = "budget_100")]
    Budget100,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 4] = [
        AlertKind::BreakerOpen,
        AlertKind::ModelDown,
        AlertKind::Budget80,
        AlertKind::Budget100,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::BreakerOpen => "breaker_open",
            AlertKind::ModelDown => "model_down",
            AlertKind::Budget80 => "budget_80",
            AlertKind::Budget100 => "budget_100",
        }
    }
}

/// One alert: the webhook's JSON body (with `id` and `gateway` added).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What happened.
    pub event: AlertKind,
    /// What it happened to: `provider/model` for a breaker, the public
    /// model for `model_down`, `key:<id>:<budget>` for a budget.
    pub target: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Facts for the receiver (provider, model, key, budget, spent, ...).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Alert {
    /// The cooldown's key: one per event and target.
    pub fn dedup_key(&self) -> String {
        format!("{}\t{}", self.event.name(), self.target)
    }
}

/// Which thresholds (80, 100) settled spend crossed going from `before` to
/// `after` against `budget`: each is crossed once as spend only grows, so
/// a key's object raises each at most once per budget window (and again
/// only if the budget is changed).
pub fn budget_crossings(before: Money, after: Money, budget: Money) -> Vec<AlertKind> {
    if budget.0 == 0 {
        return vec![];
    }
    let at = |spent: Money, pct: u128| u128::from(spent.0) * 100 >= u128::from(budget.0) * pct;
    [(80, AlertKind::Budget80), (100, AlertKind::Budget100)]
        .into_iter()
        .filter(|(pct, _)| !at(before, *pct) && at(after, *pct))
        .map(|(_, k)| k)
        .collect()
}

/// `hex(HMAC-SHA256(secret, "{timestamp}.{body}"))`: the receiver recomputes
/// it over the raw body and the timestamp header, and refuses an old
/// timestamp (replays).
pub fn signature(secret: &[u8], timestamp_s: u64, body: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Wait before attempt `attempts + 1`: 2 s, 4 s, 8 s, ... at most 5 minutes.
pub fn retry_delay_ms(attempts: u32) -> u64 {
    (2_000u64 << attempts.min(8)).min(300_000)
}

/// An isolate's side: its own cooldown, and what its flusher should send.
#[derive(Debug, Clone, Default)]
pub struct LocalAlerts {
    sent: HashMap<String, u64>,
    queue: Vec<Alert>,
}

impl LocalAlerts {
    /// Queues an alert unless this isolate raised the same event for the
    /// same target within `cooldown_ms`. Returns whether it was queued.
    pub fn raise(&mut self, alert: Alert, cooldown_ms: u64) -> bool {
        let key = alert.dedup_key();
        if self
            .sent
            .get(&key)
            .is_some_and(|&t| alert.at_ms < t.saturating_add(cooldown_ms))
        {
            return false;
        }
        // Entries past their cooldown are dropped as new ones come.
        let now = alert.at_ms;
        self.sent
            .retain(|_, t| now < t.saturating_add(cooldown_ms.max(1)));
        self.sent.insert(key, alert.at_ms);
        self.queue.push(alert);
        true
    }

    /// Whether alerts wait to be sent.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The queued alerts, to send.
    pub fn take(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.queue)
    }

    /// They could not be sent: queued again (at the front), at most 100.
    pub fn requeue(&mut self, mut alerts: Vec<Alert>) {
        alerts.append(&mut self.queue);
        alerts.truncate(100);
        self.queue = alerts;
    }
}

/// One delivery in the alerts object's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Its id (`x-gateway-delivery`).
    pub id: u64,
    /// The alert.
    pub alert: Alert,
    /// Attempts made.
    pub attempts: u32,
    /// Not before this, Unix ms.
    pub next_try_ms: u64,
}

/// A delivery's end, for `GET /admin/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// The delivery id.
    pub id: u64,
    /// The alert.
    pub alert: Alert,
    /// Attempts made.
    pub attempts: u32,
    /// `delivered`, `failed` (gave up), `no_webhook`.
    pub outcome: String,
    /// The receiver's last status, or the transport error.
    pub detail: String,
    /// When it ended, Unix ms.
    pub at_ms: u64,
}

/// What the alerts object holds: the cooldown, the queue, recent history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertBook {
    last: BTreeMap<String, u64>,
    queue: BTreeMap<u64, Delivery>,
    history: VecDeque<Delivered>,
    next_id: u64,
    suppressed: u64,
    dirty: bool,
}

/// What `raise` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raised {
    /// Queued for delivery.
    pub queued: u64,
    /// Dropped: the same event and target within the cooldown, or an
    /// event the webhook does not take.
    pub suppressed: u64,
}

/// What the edge (or a key's object) asks the alerts object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AlertCommand {
    /// Queue these (subject to the cooldown and the webhook's events).
    Raise {
        /// The alerts.
        alerts: Vec<Alert>,
    },
    /// Recent deliveries and the queue.
    Recent,
}

/// The alerts object's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AlertReply {
    /// What `Raise` did.
    Raised(Raised),
    /// `GET /admin/alerts`.
    Recent {
        /// Ended deliveries, newest first.
        history: Vec<Delivered>,
        /// Deliveries still to be attempted.
        queue: Vec<Delivery>,
        /// Alerts dropped by the cooldown or the event filter so far.
        suppressed: u64,
    },
}

/// The stored form of an [`AlertBook`] (one small document).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    last: BTreeMap<String, u64>,
    queue: Vec<Delivery>,
    history: Vec<Delivered>,
    next_id: u64,
    suppressed: u64,
}

impl AlertBook {
    /// Queues each alert the webhook takes (`events`) unless the same
    /// event and target was queued within `cooldown_ms`.
    pub fn raise(
        &mut self,
        alerts: Vec<Alert>,
        events: &[AlertKind],
        cooldown_ms: u64,
        now_ms: u64,
    ) -> Raised {
        let mut r = Raised::default();
        self.last
            .retain(|_, t| now_ms < t.saturating_add(cooldown_ms.max(1)));
        for alert in alerts {
            let key = alert.dedup_key();
            let cooling = self
                .last
                .get(&key)
                .is_some_and(|&t| now_ms < t.saturating_add(cooldown_ms));
            if cooling || !events.contains(&alert.event) {
                r.suppressed += 1;
                continue;
            }
            self.last.insert(key, now_ms);
            self.next_id += 1;
            self.queue.insert(
                self.next_id,
                Delivery {
                    id: self.next_id,
                    alert,
                    attempts: 0,
                    next_try_ms: now_ms,
                },
            );
            r.queued += 1;
        }
        self.suppressed += r.suppressed;
        self.dirty = true;
        r
    }

    /// Deliveries to attempt now.
    pub fn due(&self, now_ms: u64) -> Vec<Delivery> {
        self.queue
            .values()
            .filter(|d| d.next_try_ms <= now_ms)
            .cloned()
            .collect()
    }

    /// The outcome of an attempt: `Ok(status)` for a 2xx answer, `Err`
    /// with the status or error otherwise. Failed attempts are retried
    /// until [`MAX_ATTEMPTS`].
    pub fn attempted(&mut self, id: u64, outcome: Result<u16, String>, now_ms: u64) {
        let Some(d) = self.queue.get_mut(&id) else {
            return;
        };
        d.attempts += 1;
        self.dirty = true;
        let (end, detail) = match &outcome {
            Ok(status) => (Some("delivered"), status.to_string()),
            Err(e) if d.attempts >= MAX_ATTEMPTS => (Some("failed"), e.clone()),
            Err(_) => (None, String::new()),
        };
        match end {
            None => d.next_try_ms = now_ms + retry_delay_ms(d.attempts - 1),
            Some(outcome) => {
                if let Some(d) = self.queue.remove(&id) {
                    self.record(d, outcome, detail, now_ms);
                }
            }
        }
    }

    /// Drops what is queued without a webhook to send it to.
    pub fn drop_all(&mut self, now_ms: u64) {
        for (_, d) in std::mem::take(&mut self.queue) {
            self.record(d, "no_webhook", String::new(), now_ms);
        }
        self.dirty = true;
    }

    fn record(&mut self, d: Delivery, outcome: &str, detail: String, now_ms: u64) {
        self.history.push_front(Delivered {
            id: d.id,
            alert: d.alert,
            attempts: d.attempts,
            outcome: outcome.to_owned(),
            detail,
            at_ms: now_ms,
        });
        self.history.truncate(HISTORY);
    }

    /// When the next attempt is due.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.queue.values().map(|d| d.next_try_ms).min()
    }

    /// Recent deliveries, newest first, and what waits.
    pub fn recent(&self) -> (Vec<Delivered>, Vec<Delivery>, u64) {
        (
            self.history.iter().cloned().collect(),
            self.queue.values().cloned().collect(),
            self.suppressed,
        )
    }

    /// Its stored form, when it changed since the last call.
    pub fn take_changes(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let stored = Stored {
            last: self.last.clone(),
            queue: self.queue.values().cloned().collect(),
            history: self.history.iter().cloned().collect(),
            next_id: self.next_id,
            suppressed: self.suppressed,
        };
        serde_json::to_string(&stored).ok()
    }

    /// From its stored form.
    pub fn load(json: &str) -> Result<AlertBook, String> {
        let s: Stored = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Ok(AlertBook {
            last: s.last,
            queue: s.queue.into_iter().map(|d| (d.id, d)).collect(),
            history: s.history.into(),
            next_id: s.next_id,
            suppressed: s.suppressed,
            dirty: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(event: AlertKind, target: &str, at_ms: u64) -> Alert {
        Alert {
            event,
            target: target.into(),
            at_ms,
            details: Default::default(),
        }
    }

    #[test]
    fn crossings_fire_once_per_threshold_as_spend_grows() {
        let b = Money(1_000);
        assert_eq!(budget_crossings(Money(0), Money(799), b), vec![]);
        assert_eq!(
            budget_crossings(Money(799), Money(800), b),
            [AlertKind::Budget80]
        );
        assert_eq!(budget_crossings(Money(800), Money(999), b), vec![]);
        assert_eq!(
            budget_crossings(Money(999), Money(1_000), b),
            [AlertKind::Budget100]
        );
        assert_eq!(
            budget_crossings(Money(10), Money(5_000), b),
            [AlertKind::Budget80, AlertKind::Budget100],
            "one big charge crosses both"
        );
        assert_eq!(budget_crossings(Money(1_000), Money(2_000), b), vec![]);
        assert_eq!(budget_crossings(Money(0), Money(5), Money(0)), vec![]);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, r#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn an_isolate_raises_each_event_and_target_once_per_cooldown() {
        let mut l = LocalAlerts::default();
        assert!(l.raise(alert(AlertKind::BreakerOpen, "p/m", 1_000), 60_000));
        assert!(!l.raise(alert(AlertKind::BreakerOpen, "p/m", 30_000), 60_000));
        assert!(l.raise(alert(AlertKind::BreakerOpen, "p/other", 30_000), 60_000));
        assert!(l.raise(alert(AlertKind::ModelDown, "p/m", 30_000), 60_000));
        assert!(l.raise(alert(AlertKind::BreakerOpen, "p/m", 61_000), 60_000));
        assert_eq!(l.take().len(), 4);
        assert!(!l.has_queued());
    }

    #[test]
    fn the_book_suppresses_repeats_and_unwanted_events() {
        let mut b = AlertBook::default();
        let events = [AlertKind::BreakerOpen, AlertKind::Budget80];
        let r = b.raise(
            vec![
                alert(AlertKind::BreakerOpen, "p/m", 0),
                alert(AlertKind::BreakerOpen, "p/m", 0),
                alert(AlertKind::Budget100, "key:k:daily", 0),
            ],
            &events,
            600_000,
            10,
        );
        assert_eq!(
            r,
            Raised {
                queued: 1,
                suppressed: 2
            }
        );
        // Another isolate raises the same a minute later: still cooling.
        let r = b.raise(
            vec![alert(AlertKind::BreakerOpen, "p/m", 0)],
            &events,
            600_000,
            60_000,
        );
        assert_eq!(r.queued, 0);
        let r = b.raise(
            vec![alert(AlertKind::BreakerOpen, "p/m", 0)],
            &events,
            600_000,
            700_000,
        );
        assert_eq!(r.queued, 1);
    }

    #[test]
    fn failed_deliveries_are_retried_with_backoff_then_given_up() {
        let mut b = AlertBook::default();
        b.raise(
            vec![alert(AlertKind::ModelDown, "m", 0)],
            &AlertKind::ALL,
            0,
            0,
        );
        let mut now = 0;
        for attempt in 0..MAX_ATTEMPTS {
            let due = b.due(now);
            assert_eq!(due.len(), 1, "attempt {attempt}");
            b.attempted(due[0].id, Err("500".into()), now);
            if attempt + 1 < MAX_ATTEMPTS {
                let next = b.next_wakeup().unwrap();
                assert_eq!(next - now, retry_delay_ms(attempt));
                assert!(b.due(next - 1).is_empty());
                now = next;
            }
        }
        assert_eq!(b.next_wakeup(), None);
        let (history, queue, _) = b.recent();
        assert!(queue.is_empty());
        assert_eq!(history[0].outcome, "failed");
        assert_eq!(history[0].attempts, MAX_ATTEMPTS);
    }

    #[test]
    fn a_delivery_ends_at_the_first_success_and_survives_a_reload() {
        let mut b = AlertBook::default();
        b.raise(
            vec![alert(AlertKind::Budget80, "key:k:total", 5)],
            &AlertKind::ALL,
            1_000,
            5,
        );
        let json = b.take_changes().unwrap();
        let mut b = AlertBook::load(&json).unwrap();
        assert!(b.take_changes().is_none());
        let d = b.due(5).remove(0);
        b.attempted(d.id, Ok(204), 6);
        assert_eq!(b.recent().0[0].outcome, "delivered");
        assert!(b.due(u64::MAX).is_empty());
        let again = b.raise(
            vec![alert(AlertKind::Budget80, "key:k:total", 7)],
            &AlertKind::ALL,
            1_000,
            7,
        );
        assert_eq!(again.queued, 0, "the cooldown survives the reload");
    }

    #[test]
    fn event_names_are_the_wire_names() {
        for k in AlertKind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
        }
    }
}
