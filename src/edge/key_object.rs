//! The per-key Durable Object: a thin shell over [`crate::limits`].
//!
//! One object per gateway key, SQLite-backed. Each call decodes a
//! [`Command`], applies it to the pure [`KeyState`] with the current time,
//! and writes the rows it changed in the same synchronous step. The SQL API
//! is synchronous, so no other request can interleave between the read, the
//! decision and the write: admissions are exact under any concurrency. An
//! alarm charges reservations that were never settled and leases that were
//! never returned (a crashed isolate), and sends the object's outbox: budget
//! crossings to the alerts object and analytics corrections to their day
//! object, each recorded in the step that caused it and deleted only once
//! acknowledged, in order ([`crate::limits::Outgoing`]).
//!
//! Storage is one table of `(kind, k, v)` rows ([`crate::limits::Row`]): a
//! decision writes the handful of rows it changed, so it costs the same for
//! a fresh key and for one with a full minute window and 92 days of usage.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use worker::{
    Date, Delay, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue, State,
    durable_object,
};

use super::objects::{self, ALERTS, ALERTS_OBJECT, ANALYTICS};
use crate::limits::{Command, KeyState, Outgoing, Reply, Row};
use crate::observe::alerts::{AlertCommand, AlertReply};
use crate::observe::analytics::{DayCommand, DayReply, correction_batch};

/// Test hook: every reply of the object waits this many ms, as an object far
/// away would (honoured only with `GATEWAY_TEST_HOOKS=1`).
const TEST_DELAY: &str = "GATEWAY_TEST_KEY_DELAY_MS";

/// Rows per statement: three bound values each, under SQLite's limit on
/// bound parameters per statement in Durable Objects.
const ROWS_PER_STATEMENT: usize = 30;

/// The Durable Object class (`KEY_OBJECTS` binding).
#[durable_object]
pub struct KeyObject {
    state: State,
    env: Env,
    /// Failed outbox sends in a row (the next waits 2^n seconds).
    outbox_failures: Cell<u32>,
    /// The state as last saved; loaded on first use.
    cache: RefCell<Option<KeyState>>,
    /// The alarm this instance has set, if any.
    alarm_at: Cell<Option<u64>>,
    /// Whether test commands and the reply delay are honoured.
    test_hooks: bool,
    /// The test reply delay, ms.
    delay_ms: u64,
}

impl DurableObject for KeyObject {
    fn new(state: State, env: Env) -> Self {
        let test_hooks = super::var(&env, super::TEST_HOOKS).as_deref() == Some("1");
        let delay_ms = if test_hooks {
            super::var(&env, TEST_DELAY)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        } else {
            0
        };
        KeyObject {
            state,
            env,
            outbox_failures: Cell::new(0),
            cache: RefCell::new(None),
            alarm_at: Cell::new(None),
            test_hooks,
            delay_ms,
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let text = req.text().await?;
        let command: Command = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => return Response::error(format!("bad command: {e}"), 400),
        };
        if matches!(command, Command::Seed { .. }) && !self.test_hooks {
            return Response::error("test hooks are off", 403);
        }
        let (reply, next_alarm) = self.apply(command)?;
        self.ensure_alarm(self.with_outbox(next_alarm)).await?;
        if self.delay_ms > 0 {
            Delay::from(Duration::from_millis(self.delay_ms)).await;
        }
        let body =
            serde_json::to_string(&reply).map_err(|e| worker::Error::RustError(e.to_string()))?;
        Response::ok(body)
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let (_, next_alarm) = self.apply(Command::Expire)?;
        self.send_outbox().await?;
        self.ensure_alarm(self.with_outbox(next_alarm)).await?;
        Response::ok("")
    }
}

impl KeyObject {
    /// Load, decide, save: one synchronous step (no await inside).
    fn apply(&self, command: Command) -> Result<(Reply, Option<u64>)> {
        let sql = self.state.storage().sql();
        let mut cache = self.cache.borrow_mut();
        let state = match cache.as_mut() {
            Some(s) => s,
            None => cache.insert(load(&sql)?),
        };
        let reply = state.apply(command, Date::now().as_millis());
        if state.has_changes() {
            save(&sql, state.take_changes())?;
        }
        Ok((reply, state.next_alarm_ms()))
    }

    /// The next alarm, brought forward for a waiting outbox (after the
    /// back-off of failed sends).
    fn with_outbox(&self, next: Option<u64>) -> Option<u64> {
        let waiting = self
            .cache
            .borrow()
            .as_ref()
            .is_some_and(|s| !s.outbox().is_empty());
        if !waiting {
            return next;
        }
        let backoff = match self.outbox_failures.get() {
            0 => 0,
            n => (1_000u64 << n.min(8)).min(300_000),
        };
        let at = Date::now().as_millis() + backoff;
        Some(next.map_or(at, |n| n.min(at)))
    }

    /// Sends the outbox oldest first, forgetting each item once its
    /// receiver acknowledged it; stops at the first failure (analytics
    /// applies one holder's batches in order only).
    async fn send_outbox(&self) -> Result<()> {
        let items = match self.cache.borrow().as_ref() {
            Some(s) => s.outbox(),
            None => return Ok(()),
        };
        let holder = format!("key:{}", self.state.id());
        for (id, item) in items {
            let sent = match item {
                Outgoing::Alert(alert) if objects::bound(&self.env, ALERTS) => {
                    let command = AlertCommand::Raise {
                        alerts: vec![alert],
                    };
                    objects::call::<_, AlertReply>(&self.env, ALERTS, ALERTS_OBJECT, &command)
                        .await
                        .map(|_| ())
                }
                Outgoing::Correction(c) if objects::bound(&self.env, ANALYTICS) => {
                    let batch = correction_batch(&holder, id, &c);
                    let name = objects::day_object(&batch.day);
                    objects::call::<_, DayReply>(
                        &self.env,
                        ANALYTICS,
                        &name,
                        &DayCommand::Ingest(batch),
                    )
                    .await
                    .map(|_| ())
                }
                // Nowhere to send it (a deploy without that binding).
                Outgoing::Alert(_) | Outgoing::Correction(_) => Ok(()),
            };
            if let Err(e) = sent {
                worker::console_error!("key object: outbox item {id} not sent (retried): {e}");
                self.outbox_failures
                    .set(self.outbox_failures.get().saturating_add(1));
                return Ok(());
            }
            self.outbox_failures.set(0);
            self.apply(Command::OutboxSent { ids: vec![id] })?;
        }
        Ok(())
    }

    /// Sets the alarm for the earliest expiry, unless an earlier one is set.
    async fn ensure_alarm(&self, next: Option<u64>) -> Result<()> {
        let Some(at) = next else { return Ok(()) };
        alarm_by(&self.state, &self.alarm_at, at).await
    }
}

fn storage_error(e: String) -> worker::Error {
    worker::Error::RustError(e)
}

/// Reads every row; converts the first version's single JSON document the
/// first time an object that has one is loaded.
fn load(sql: &SqlStorage) -> Result<KeyState> {
    let rows = read_rows(sql)?;
    if !rows.is_empty() {
        return KeyState::load(rows).map_err(storage_error);
    }
    #[derive(serde::Deserialize)]
    struct Legacy {
        json: String,
    }
    let legacy_table: Vec<serde_json::Value> = sql
        .exec(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'key_state'",
            None,
        )?
        .to_array()?;
    if legacy_table.is_empty() {
        return Ok(KeyState::default());
    }
    let old: Vec<Legacy> = sql
        .exec("SELECT json FROM key_state WHERE id = 1", None)?
        .to_array()?;
    let mut state = match old.first() {
        Some(row) => KeyState::from_legacy_json(&row.json).map_err(storage_error)?,
        None => KeyState::default(),
    };
    save(sql, state.take_changes())?;
    sql.exec("DROP TABLE key_state", None)?;
    Ok(state)
}

/// Every row of an object's `rows` table (created if missing), as
/// `(kind, k, v)`: the storage of the key and analytics objects.
pub(super) fn read_rows(sql: &SqlStorage) -> Result<Vec<(String, String, String)>> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS rows (kind TEXT NOT NULL, k TEXT NOT NULL, v TEXT NOT NULL, PRIMARY KEY (kind, k)) WITHOUT ROWID",
        None,
    )?;
    #[derive(serde::Deserialize)]
    struct Stored {
        kind: String,
        k: String,
        v: String,
    }
    let rows: Vec<Stored> = sql.exec("SELECT kind, k, v FROM rows", None)?.to_array()?;
    Ok(rows.into_iter().map(|r| (r.kind, r.k, r.v)).collect())
}

/// Sets an object's alarm for `at` (Unix ms), unless one it set is due
/// sooner (`alarm_at`, cleared by the alarm).
pub(super) async fn alarm_by(state: &State, alarm_at: &Cell<Option<u64>>, at: u64) -> Result<()> {
    if alarm_at.get().is_some_and(|set| set <= at) {
        return Ok(());
    }
    let offset = at.saturating_sub(Date::now().as_millis());
    state.storage().set_alarm(offset as i64).await?;
    alarm_at.set(Some(at));
    Ok(())
}

/// Writes changed rows: upserts and deletes, a few rows per statement.
pub(super) fn save(sql: &SqlStorage, rows: Vec<Row>) -> Result<()> {
    let (upserts, deletes): (Vec<Row>, Vec<Row>) =
        rows.into_iter().partition(|r| r.value.is_some());
    for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
        let placeholders = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let query = format!(
            "INSERT INTO rows (kind, k, v) VALUES {placeholders} ON CONFLICT(kind, k) DO UPDATE SET v = excluded.v"
        );
        let mut bindings: Vec<SqlStorageValue> = Vec::with_capacity(chunk.len() * 3);
        for r in chunk {
            bindings.push(r.kind.into());
            bindings.push(r.key.as_str().into());
            bindings.push(r.value.as_deref().unwrap_or_default().into());
        }
        sql.exec(&query, bindings)?;
    }
    for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
        let placeholders = vec!["(?, ?)"; chunk.len()].join(", ");
        let query = format!("DELETE FROM rows WHERE (kind, k) IN (VALUES {placeholders})");
        let mut bindings: Vec<SqlStorageValue> = Vec::with_capacity(chunk.len() * 2);
        for r in chunk {
            bindings.push(r.kind.into());
            bindings.push(r.key.as_str().into());
        }
        sql.exec(&query, bindings)?;
    }
    Ok(())
}
