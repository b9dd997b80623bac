//! A key's state as rows: what the Durable Object stores and loads.
//!
//! One SQLite table of `(kind, k, v)` rows: the record, a small row of
//! counters, one row per minute bucket, reservation, lease, holder, usage
//! rollup and (on the registry object) key. A command marks the rows it
//! changed; [`KeyState::take_changes`] hands exactly those to the object, so
//! a decision writes a handful of small rows whether the key is fresh or has
//! a full window and 92 days of history.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::window::{Bucket, MinuteWindow};
use super::{
    Count, KeyRecord, KeyState, KeyView, Meta, Money, Reservation, Rollup, Spend, Table, money,
};

/// One changed row: `value` is the row's JSON, `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The kind of row.
    pub kind: &'static str,
    /// Its key within the kind.
    pub key: String,
    /// Its JSON, or `None` to delete it.
    pub value: Option<String>,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Record => "record",
            Table::Meta => "meta",
            Table::Bucket => "bucket",
            Table::Reservation => "res",
            Table::Lease => "lease",
            Table::Holder => "holder",
            Table::Usage => "usage",
            Table::Registry => "registry",
            Table::Outbox => "outbox",
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

fn parse<T: DeserializeOwned>(kind: &str, key: &str, value: &str) -> Result<T, String> {
    serde_json::from_str(value).map_err(|e| format!("stored {kind} row {key:?}: {e}"))
}

fn number(kind: &str, key: &str) -> Result<u64, String> {
    key.parse()
        .map_err(|_| format!("stored {kind} row has a bad key {key:?}"))
}

impl KeyState {
    /// The rows changed since the last call, and forgets them.
    pub fn take_changes(&mut self) -> Vec<Row> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|(table, key)| {
                let value = match table {
                    Table::Record => self.record.as_ref().map(json),
                    Table::Meta => Some(json(&self.meta)),
                    Table::Bucket => {
                        let b = key
                            .parse()
                            .map(|idx| self.window.get(idx))
                            .unwrap_or_default();
                        (b != Bucket::default()).then(|| json(&b))
                    }
                    Table::Reservation => key
                        .parse()
                        .ok()
                        .and_then(|id| self.reservations.get(&id))
                        .map(json),
                    Table::Lease => key
                        .parse()
                        .ok()
                        .and_then(|id| self.leases.get(&id))
                        .map(json),
                    Table::Holder => self.holders.get(&key).map(json),
                    Table::Usage => self.usage.get(&key).map(json),
                    Table::Registry => self.registry.get(&key).map(json),
                    Table::Outbox => key
                        .parse()
                        .ok()
                        .and_then(|id| self.outbox.get(&id))
                        .map(json),
                };
                Row {
                    kind: table.name(),
                    key,
                    value,
                }
            })
            .collect()
    }

    /// Whether a command left rows to save.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Rebuilds the state from its stored `(kind, key, value)` rows.
    pub fn load(
        rows: impl IntoIterator<Item = (String, String, String)>,
    ) -> Result<KeyState, String> {
        let mut s = KeyState::default();
        let mut buckets = Vec::new();
        for (kind, key, value) in rows {
            match kind.as_str() {
                "record" => s.record = Some(parse(&kind, &key, &value)?),
                "meta" => s.meta = parse(&kind, &key, &value)?,
                "bucket" => buckets.push((number(&kind, &key)?, parse(&kind, &key, &value)?)),
                "res" => {
                    s.reservations
                        .insert(number(&kind, &key)?, parse(&kind, &key, &value)?);
                }
                "lease" => {
                    s.leases
                        .insert(number(&kind, &key)?, parse(&kind, &key, &value)?);
                }
                "holder" => {
                    s.holders.insert(key.clone(), parse(&kind, &key, &value)?);
                }
                "usage" => {
                    s.usage.insert(key.clone(), parse(&kind, &key, &value)?);
                }
                "registry" => {
                    s.registry.insert(key.clone(), parse(&kind, &key, &value)?);
                }
                "outbox" => {
                    s.outbox
                        .insert(number(&kind, &key)?, parse(&kind, &key, &value)?);
                }
                // A row of a later version's kind: leave it alone.
                _ => {}
            }
        }
        s.window = MinuteWindow::from_buckets(buckets);
        Ok(s)
    }

    /// Converts the first version's single JSON document; every row of the
    /// result is marked changed, so the caller stores it in the new form.
    pub fn from_legacy_json(text: &str) -> Result<KeyState, String> {
        let old: Legacy = serde_json::from_str(text).map_err(|e| format!("stored state: {e}"))?;
        let mut s = KeyState {
            record: old.record,
            meta: Meta {
                requests: old.requests,
                first_request_ms: old.first_request_ms,
                last_request_ms: old.last_request_ms,
                day_requests: old.day_requests,
                spent_day: old.spent_day,
                spent_month: old.spent_month,
                spent_total: old.spent_total,
                next_id: old.next_reservation,
            },
            usage: old.usage,
            registry: old.registry,
            ..KeyState::default()
        };
        let mut bucket_of_reservation = BTreeMap::new();
        for e in old.minute {
            let idx = s.window.add(e.at_ms, 1, e.tokens);
            bucket_of_reservation.insert(e.reservation, (idx, e.tokens));
        }
        for (id, r) in old.reservations {
            let (bucket, tokens) = bucket_of_reservation
                .get(&id)
                .map_or((None, 0), |&(idx, t)| (Some(idx), t));
            s.reservations.insert(
                id,
                Reservation {
                    amount: r.amount,
                    model: r.model,
                    admitted_ms: r.admitted_ms,
                    expires_ms: r.expires_ms,
                    tokens,
                    bucket,
                },
            );
        }
        s.touch(Table::Meta, "");
        if s.record.is_some() {
            s.touch(Table::Record, "");
        }
        let touched: Vec<(Table, String)> = s
            .window
            .iter()
            .map(|(i, _)| (Table::Bucket, i.to_string()))
            .chain(
                s.reservations
                    .keys()
                    .map(|i| (Table::Reservation, i.to_string())),
            )
            .chain(s.usage.keys().map(|k| (Table::Usage, k.clone())))
            .chain(s.registry.keys().map(|k| (Table::Registry, k.clone())))
            .collect();
        s.dirty.extend(touched);
        Ok(s)
    }

    /// Test and benchmark support: fills a key with `days` days of history
    /// for `models` models and a full minute window of `rpm` admissions at
    /// `now_ms`, as a busy old key would have.
    pub fn seed_history(&mut self, now_ms: u64, days: u64, models: u64, rpm: u64) {
        for d in 0..days {
            let at = now_ms.saturating_sub(d * super::DAY_MS);
            for m in 0..models {
                let key = format!("{}\tmodel-{m}", super::date_string(at));
                self.usage.insert(
                    key.clone(),
                    Rollup {
                        requests: 1_000,
                        input_tokens: 100_000,
                        output_tokens: 50_000,
                        cost: Money(1_000_000_000),
                        ..Rollup::default()
                    },
                );
                self.touch(Table::Usage, &key);
            }
        }
        // Spread over the past minute, a bucket a second.
        for i in 0..60 {
            let at = now_ms.saturating_sub(59_000) + i * 1_000;
            let idx = self.window.add(at, rpm / 60, rpm / 60 * 100);
            self.touch_bucket(idx);
        }
    }
}

/// The first version's document (one JSON row per key).
#[derive(Deserialize)]
struct Legacy {
    #[serde(default)]
    record: Option<KeyRecord>,
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    first_request_ms: u64,
    #[serde(default)]
    last_request_ms: u64,
    #[serde(default)]
    minute: Vec<LegacyEntry>,
    #[serde(default)]
    day_requests: Count,
    #[serde(default)]
    spent_day: Spend,
    #[serde(default)]
    spent_month: Spend,
    #[serde(default, with = "money::pico")]
    spent_total: Money,
    #[serde(default)]
    reservations: BTreeMap<u64, LegacyReservation>,
    #[serde(default)]
    next_reservation: u64,
    #[serde(default)]
    usage: BTreeMap<String, Rollup>,
    #[serde(default)]
    registry: BTreeMap<String, KeyView>,
}

#[derive(Deserialize)]
struct LegacyEntry {
    at_ms: u64,
    tokens: u64,
    reservation: u64,
}

#[derive(Deserialize)]
struct LegacyReservation {
    #[serde(with = "money::pico")]
    amount: Money,
    model: String,
    admitted_ms: u64,
    expires_ms: u64,
}
