//! One Durable Object per UTC day of analytics: a thin shell over
//! [`crate::observe::analytics::DayStore`].
//!
//! Why one per day (and not per team and day): every isolate sends one
//! pre-aggregated batch per day touched per flush interval
//! (`analytics.flush_ms`), so a day's object receives about (busy
//! isolates) / (interval) calls a second whatever the request rate: 100 a
//! second for 500 busy isolates at 5 s. The dashboard's questions are
//! gateway-wide (today, this month, by model, by key): a day object answers
//! any of them for its day, and a month is at most 31 calls made in
//! parallel. Per team and day would spread writes thinner but make every
//! gateway-wide question fan out over every team (whose set the querier
//! does not know, and a key's team can change). Per-request events, for
//! unbounded scale and ad-hoc SQL, go to Workers Analytics Engine as well
//! when it is bound.
//!
//! Storage: SQLite rows `(kind, k, v)` like the key objects; an ingest
//! writes only the cells it changed.

use std::cell::RefCell;

use worker::{DurableObject, Env, Request, Response, Result, SqlStorage, State, durable_object};

use super::key_object::save;
use crate::limits::Row;
use crate::observe::analytics::{DayCommand, DayReply, DayStore};

/// The Durable Object class (`ANALYTICS` binding).
#[durable_object]
pub struct AnalyticsObject {
    state: State,
    /// The day as last saved; loaded on first use.
    cache: RefCell<Option<DayStore>>,
}

impl DurableObject for AnalyticsObject {
    fn new(state: State, _env: Env) -> Self {
        AnalyticsObject {
            state,
            cache: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let text = req.text().await?;
        let command: DayCommand = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => return Response::error(format!("bad command: {e}"), 400),
        };
        let reply = self.apply(command)?;
        let body =
            serde_json::to_string(&reply).map_err(|e| worker::Error::RustError(e.to_string()))?;
        Response::ok(body)
    }
}

impl AnalyticsObject {
    /// Load, apply, save: one synchronous step.
    fn apply(&self, command: DayCommand) -> Result<DayReply> {
        let sql = self.state.storage().sql();
        let mut cache = self.cache.borrow_mut();
        let store = match cache.as_mut() {
            Some(s) => s,
            None => cache.insert(load(&sql)?),
        };
        let reply = match command {
            DayCommand::Ingest(batch) => DayReply::Ingested {
                applied: store.ingest(&batch),
            },
            DayCommand::Query(q) => DayReply::Partial(store.query(&q)),
        };
        let rows: Vec<Row> = store
            .take_changes()
            .into_iter()
            .map(|(kind, key, value)| Row {
                kind,
                key,
                value: Some(value),
            })
            .collect();
        if !rows.is_empty() {
            save(&sql, rows)?;
        }
        Ok(reply)
    }
}

fn load(sql: &SqlStorage) -> Result<DayStore> {
    DayStore::load(super::key_object::read_rows(sql)?.into_iter()).map_err(worker::Error::RustError)
}
