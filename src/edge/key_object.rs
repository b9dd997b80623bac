//! The per-key Durable Object: a thin shell over [`crate::limits`].
//!
//! One object per gateway key, SQLite-backed. Each call decodes a
//! [`Command`], applies it to the pure [`KeyState`] with the current time,
//! and saves the state in the same synchronous step. The SQL API is
//! synchronous, so no other request can interleave between the read, the
//! decision and the write: admissions are exact under any concurrency. An
//! alarm charges reservations that were never settled (a crashed isolate).

use std::cell::{Cell, RefCell};

use worker::{
    Date, DurableObject, Env, Request, Response, Result, SqlStorage, State, durable_object,
};

use crate::limits::{Command, KeyState, Reply};

/// The Durable Object class (`KEY_OBJECTS` binding).
#[durable_object]
pub struct KeyObject {
    state: State,
    /// The state as last saved; loaded on first use.
    cache: RefCell<Option<KeyState>>,
    /// The alarm this instance has set, if any.
    alarm_at: Cell<Option<u64>>,
}

impl DurableObject for KeyObject {
    fn new(state: State, _env: Env) -> Self {
        KeyObject {
            state,
            cache: RefCell::new(None),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let command: Command = match req.json().await {
            Ok(c) => c,
            Err(e) => return Response::error(format!("bad command: {e}"), 400),
        };
        let (reply, next_alarm) = self.apply(command)?;
        self.ensure_alarm(next_alarm).await?;
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let (_, next_alarm) = self.apply(Command::Expire)?;
        self.ensure_alarm(next_alarm).await?;
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
        let (reply, changed) = state.apply(command, Date::now().as_millis());
        if changed {
            save(&sql, state)?;
        }
        Ok((reply, state.next_alarm_ms()))
    }

    /// Sets the alarm for the earliest reservation expiry, unless an
    /// earlier one is already set.
    async fn ensure_alarm(&self, next: Option<u64>) -> Result<()> {
        let Some(at) = next else { return Ok(()) };
        if self.alarm_at.get().is_some_and(|set| set <= at) {
            return Ok(());
        }
        let offset = at.saturating_sub(Date::now().as_millis());
        self.state.storage().set_alarm(offset as i64).await?;
        self.alarm_at.set(Some(at));
        Ok(())
    }
}

fn load(sql: &SqlStorage) -> Result<KeyState> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS key_state (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL)",
        None,
    )?;
    #[derive(serde::Deserialize)]
    struct Row {
        json: String,
    }
    let rows: Vec<Row> = sql
        .exec("SELECT json FROM key_state WHERE id = 1", None)?
        .to_array()?;
    match rows.first() {
        Some(row) => {
            serde_json::from_str(&row.json).map_err(|e| worker::Error::RustError(e.to_string()))
        }
        None => Ok(KeyState::default()),
    }
}

fn save(sql: &SqlStorage, state: &KeyState) -> Result<()> {
    let json = serde_json::to_string(state).map_err(|e| worker::Error::RustError(e.to_string()))?;
    sql.exec(
        "INSERT INTO key_state (id, json) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json",
        vec![json.into()],
    )?;
    Ok(())
}
