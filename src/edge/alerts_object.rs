//! The one alerts Durable Object: the gateway-wide cooldown and the webhook
//! deliveries, a thin shell over [`crate::observe::alerts::AlertBook`].
//!
//! Isolates (breakers, failing models) and key objects (budget crossings)
//! raise alerts here, off the request path; a raise only queues and sets
//! the alarm, so a slow or failing webhook never holds up whoever raised
//! it. The alarm delivers what is due — signed, each attempt bounded by
//! [`ATTEMPT_TIMEOUT_MS`] — and sets itself for the next retry.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use futures::future::{Either, select};
use worker::{
    Date, Delay, DurableObject, Env, Fetch, Headers, Method, Request, RequestInit, Response,
    Result, SqlStorage, State, durable_object,
};

use super::{config_cache, secret};
use crate::observe::alerts::{
    AlertBook, AlertCommand, AlertReply, Delivery, EVENT_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER, signature,
};

/// One delivery attempt may take this long.
const ATTEMPT_TIMEOUT_MS: u64 = 10_000;

/// The Durable Object class (`ALERTS` binding).
#[durable_object]
pub struct AlertsObject {
    state: State,
    env: Env,
    book: RefCell<Option<AlertBook>>,
    alarm_at: Cell<Option<u64>>,
}

impl DurableObject for AlertsObject {
    fn new(state: State, env: Env) -> Self {
        AlertsObject {
            state,
            env,
            book: RefCell::new(None),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let text = req.text().await?;
        let command: AlertCommand = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => return Response::error(format!("bad command: {e}"), 400),
        };
        let reply = match command {
            AlertCommand::Raise { alerts } => {
                let config = config_cache::current(&self.env).await;
                let events = config
                    .alerts
                    .webhook
                    .as_ref()
                    .map(|w| w.events.clone())
                    .unwrap_or_else(|| crate::observe::alerts::AlertKind::ALL.to_vec());
                let now = Date::now().as_millis();
                let raised =
                    self.with_book(|b| b.raise(alerts, &events, config.alerts.cooldown_ms, now))?;
                self.schedule().await?;
                AlertReply::Raised(raised)
            }
            AlertCommand::Recent => {
                let (history, queue, suppressed) = self.with_book(|b| b.recent())?;
                AlertReply::Recent {
                    history,
                    queue,
                    suppressed,
                }
            }
        };
        let body =
            serde_json::to_string(&reply).map_err(|e| worker::Error::RustError(e.to_string()))?;
        Response::ok(body)
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let config = config_cache::current(&self.env).await;
        let now = Date::now().as_millis();
        match &config.alerts.webhook {
            None => self.with_book(|b| b.drop_all(now))?,
            Some(webhook) => {
                let key = webhook.secret.as_deref().and_then(|n| secret(&self.env, n));
                let due = self.with_book(|b| b.due(now))?;
                for d in due {
                    let outcome = deliver(&webhook.url, key.as_deref(), &d).await;
                    if let Err(e) = &outcome {
                        worker::console_warn!("alert {} to webhook failed: {e}", d.id);
                    }
                    let at = Date::now().as_millis();
                    self.with_book(|b| b.attempted(d.id, outcome, at))?;
                }
            }
        }
        self.schedule().await?;
        Response::ok("")
    }
}

impl AlertsObject {
    /// Runs `f` on the book (loaded on first use) and saves it if changed.
    fn with_book<R>(&self, f: impl FnOnce(&mut AlertBook) -> R) -> Result<R> {
        let sql = self.state.storage().sql();
        let mut cache = self.book.borrow_mut();
        let book = match cache.as_mut() {
            Some(b) => b,
            None => cache.insert(load(&sql)?),
        };
        let r = f(book);
        if let Some(json) = book.take_changes() {
            sql.exec(
                "INSERT INTO book (id, v) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
                vec![json.into()],
            )?;
        }
        Ok(r)
    }

    /// Sets the alarm for the next delivery due, unless one is set sooner.
    async fn schedule(&self) -> Result<()> {
        let Some(at) = self.with_book(|b| b.next_wakeup())? else {
            return Ok(());
        };
        super::key_object::alarm_by(&self.state, &self.alarm_at, at).await
    }
}

fn load(sql: &SqlStorage) -> Result<AlertBook> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS book (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
        None,
    )?;
    #[derive(serde::Deserialize)]
    struct Stored {
        v: String,
    }
    let rows: Vec<Stored> = sql
        .exec("SELECT v FROM book WHERE id = 1", None)?
        .to_array()?;
    match rows.first() {
        Some(r) => AlertBook::load(&r.v).map_err(worker::Error::RustError),
        None => Ok(AlertBook::default()),
    }
}

/// POSTs one alert; `Ok(status)` for a 2xx answer.
async fn deliver(url: &str, key: Option<&str>, d: &Delivery) -> std::result::Result<u16, String> {
    let mut body = serde_json::to_value(&d.alert).map_err(|e| e.to_string())?;
    if let Some(map) = body.as_object_mut() {
        map.insert("id".into(), format!("alrt_{}", d.id).into());
        map.insert("gateway".into(), "edge-llm-gateway".into());
    }
    let body = body.to_string();
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| e.to_string());
    set("content-type", "application/json")?;
    set(EVENT_HEADER, d.alert.event.name())?;
    set("x-gateway-delivery", &format!("alrt_{}", d.id))?;
    if let Some(key) = key {
        let ts = Date::now().as_millis() / 1000;
        set(TIMESTAMP_HEADER, &ts.to_string())?;
        set(SIGNATURE_HEADER, &signature(key.as_bytes(), ts, &body))?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let req = Request::new_with_init(url, &init).map_err(|e| e.to_string())?;
    let fetch = Fetch::Request(req);
    let send = std::pin::pin!(fetch.send());
    let timeout = std::pin::pin!(Delay::from(Duration::from_millis(ATTEMPT_TIMEOUT_MS)));
    match select(send, timeout).await {
        Either::Left((Ok(resp), _)) if (200..300).contains(&resp.status_code()) => {
            Ok(resp.status_code())
        }
        Either::Left((Ok(resp), _)) => Err(format!("status {}", resp.status_code())),
        Either::Left((Err(e), _)) => Err(e.to_string()),
        Either::Right(_) => Err(format!("no answer in {ATTEMPT_TIMEOUT_MS} ms")),
    }
}
