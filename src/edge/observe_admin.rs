//! The admin API's windows on what the gateway did: analytics, request
//! logs, live health, alerts, and config validation for the dashboard.

use std::collections::BTreeMap;

use serde::Serialize;
use worker::{Env, Request};

use super::objects::{self, ALERTS, ALERTS_OBJECT, ANALYTICS};
use super::observe::{self, REQUEST_LOGS};
use super::{HEALTH, config_cache, now_ms, shared_health};
use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::Reply;
use crate::limits::date_string;
use crate::observe::alerts::{AlertCommand, AlertReply};
use crate::observe::analytics::{DayCommand, DayReply, Query, answer};
use crate::observe::logs;
use crate::routing::target_key;

/// Most log objects one `GET /admin/logs` reads.
const MAX_OBJECTS_READ: usize = 200;

fn query_pairs(req: &Request) -> Vec<(String, String)> {
    crate::http::url::query_pairs(&req.inner().url())
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One problem, at its path.
#[derive(Serialize)]
struct Problem {
    path: String,
    message: String,
}

/// `POST /admin/config/validate`: the same validation `PUT /admin/config`
/// applies, every problem at its path; nothing is stored.
pub(super) fn validate_config(body: &[u8]) -> Result<Reply, GatewayError> {
    #[derive(Serialize)]
    struct Validation {
        valid: bool,
        errors: Vec<Problem>,
        #[serde(skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
    }
    let text = String::from_utf8_lossy(body);
    let v = match Config::from_json(&text) {
        Ok(c) => Validation {
            valid: true,
            errors: vec![],
            revision: Some(c.revision),
        },
        Err(errors) => Validation {
            valid: false,
            errors: errors
                .into_iter()
                .map(|e| Problem {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
            revision: None,
        },
    };
    Ok(Reply::json_value(200, &v))
}

fn not_bound(what: &str, binding: &str) -> GatewayError {
    GatewayError::Unavailable {
        message: format!("{what} needs the `{binding}` binding (see wrangler.toml)."),
        retry_after: None,
        rate_limited: false,
    }
}

/// `GET /admin/analytics`: this isolate's figures are sent first, then
/// every day of the period is asked in parallel and the answers merged.
pub(super) async fn analytics(req: &Request, env: &Env) -> Result<Reply, GatewayError> {
    if !observe::analytics_bound(env) {
        return Err(not_bound("Analytics", ANALYTICS));
    }
    let pairs = query_pairs(req);
    let q = Query::parse(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        now_ms(),
    )
    .map_err(|e| GatewayError::InvalidRequest {
        message: e.message,
        param: Some(e.param.to_owned()),
    })?;
    observe::flush_analytics(env).await;
    let days = q.days();
    let asks = days.iter().map(|d| {
        let command = DayCommand::Query(q.clone());
        async move {
            objects::call::<_, DayReply>(env, ANALYTICS, &objects::day_object(d), &command).await
        }
    });
    let mut partials = vec![];
    for reply in futures::future::join_all(asks).await {
        match reply? {
            DayReply::Partial(p) => partials.push(p),
            DayReply::Ingested { .. } => {
                return Err(GatewayError::Internal {
                    message: "unexpected analytics reply".into(),
                });
            }
        }
    }
    Ok(Reply::json_value(
        200,
        &answer(&q, &partials).to_json(&q.metrics),
    ))
}

/// `GET /admin/logs`: `object=<key>` reads one object; otherwise the day's
/// objects (`date`, default today) are listed and read, newest first, and
/// their records filtered by `key`, `model`, `request_id`, up to `limit`.
pub(super) async fn logs(req: &Request, env: &Env) -> Result<Reply, GatewayError> {
    #[derive(Serialize)]
    struct Listed {
        key: String,
        size: u64,
        uploaded_ms: u64,
    }
    #[derive(Serialize)]
    struct Logs {
        object: &'static str,
        date: String,
        objects: Vec<Listed>,
        data: Vec<serde_json::Value>,
        truncated: bool,
    }
    let bucket = env
        .bucket(REQUEST_LOGS)
        .map_err(|_| not_bound("Request logs", REQUEST_LOGS))?;
    let pairs = query_pairs(req);
    let failed = |e: worker::Error| GatewayError::Internal {
        message: format!("request logs: {e}"),
    };
    observe::flush_logs(env).await;
    let limit: usize = param(&pairs, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(1000);
    let date = param(&pairs, "date").map_or_else(|| date_string(now_ms()), str::to_owned);
    if crate::limits::day_start_ms(&date).is_none() {
        return Err(GatewayError::InvalidRequest {
            message: format!("date: a date YYYY-MM-DD, got {date:?}"),
            param: Some("date".into()),
        });
    }
    let (names, listed, truncated) = match param(&pairs, "object") {
        Some(object) => (vec![object.to_owned()], vec![], false),
        None => {
            let list = bucket
                .list()
                .prefix(logs::day_prefix(&date))
                .limit(1000)
                .execute()
                .await
                .map_err(failed)?;
            let listed: Vec<Listed> = list
                .objects()
                .iter()
                .map(|o| Listed {
                    key: o.key(),
                    size: o.size(),
                    uploaded_ms: o.uploaded().as_millis(),
                })
                .collect();
            let names = listed
                .iter()
                .rev()
                .take(MAX_OBJECTS_READ)
                .map(|o| o.key.clone())
                .collect();
            (names, listed, list.truncated())
        }
    };
    let wanted = |r: &serde_json::Value| {
        ["key", "model", "request_id"]
            .iter()
            .all(|f| param(&pairs, f).is_none_or(|v| r.get(*f).and_then(|x| x.as_str()) == Some(v)))
    };
    let mut data = vec![];
    let mut more = false;
    'objects: for name in names {
        let Some(object) = bucket.get(&name).execute().await.map_err(failed)? else {
            continue;
        };
        let Some(body) = object.body() else { continue };
        let text = body.text().await.map_err(failed)?;
        for line in text.lines().rev() {
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(line)
                && wanted(&record)
            {
                // One more than asked for: the answer is cut, say so.
                if data.len() >= limit {
                    more = true;
                    break 'objects;
                }
                data.push(record);
            }
        }
    }
    let truncated = truncated || more;
    Ok(Reply::json_value(
        200,
        &Logs {
            object: "list",
            date,
            objects: listed,
            data,
            truncated,
        },
    ))
}

/// `GET /admin/health`: every configured target with its breaker and
/// cooling, as this isolate and its location know them.
pub(super) async fn health(req: &Request, env: &Env) -> Result<Reply, GatewayError> {
    #[derive(Serialize)]
    struct TargetState {
        target: String,
        provider: String,
        model: String,
        /// Public models it serves.
        models: Vec<String>,
        /// `closed`, `open`, `half_open` (a probe may go), `cooling`.
        state: &'static str,
        open_until_ms: Option<u64>,
        cooling_until_ms: Option<u64>,
        ttfb_ewma_ms: Option<f64>,
        samples: u32,
    }
    #[derive(Serialize)]
    struct HealthView {
        object: &'static str,
        at_ms: u64,
        breaker: crate::config::Breaker,
        /// Whether the location's shared view was read.
        location_view: bool,
        targets: Vec<TargetState>,
    }
    let now = now_ms();
    let config = config_cache::current(env).await;
    let mut view = HEALTH.with(|h| h.snapshot(now));
    let url = req.inner().url();
    let host = crate::http::url::host(&url).map(str::to_owned);
    let location = match host {
        Some(h) => shared_health::location_view(&h).await,
        None => None,
    };
    if let Some(l) = &location {
        view.merge(l);
    }
    let mut served: BTreeMap<String, (String, String, Vec<String>)> = BTreeMap::new();
    for (name, m) in &config.models {
        for t in &m.targets {
            let e = served
                .entry(target_key(&t.provider, &t.model))
                .or_insert_with(|| (t.provider.clone(), t.model.clone(), vec![]));
            e.2.push(name.clone());
        }
    }
    let targets = served
        .into_iter()
        .map(|(key, (provider, model, models))| {
            let t = view.targets.get(&key).cloned().unwrap_or_default();
            let open = t.open_until.filter(|&u| u > now);
            let cooling = t.cooling_until.filter(|&u| u > now);
            let state = match (open, t.open_until, cooling) {
                (Some(_), _, _) => "open",
                (None, Some(_), _) => "half_open",
                (None, None, Some(_)) => "cooling",
                (None, None, None) => "closed",
            };
            TargetState {
                target: key,
                provider,
                model,
                models,
                state,
                open_until_ms: t.open_until,
                cooling_until_ms: cooling,
                ttfb_ewma_ms: t.ewma_ms,
                samples: t.samples,
            }
        })
        .collect();
    Ok(Reply::json_value(
        200,
        &HealthView {
            object: "health",
            at_ms: now,
            breaker: config.failover.breaker.clone(),
            location_view: location.is_some(),
            targets,
        },
    ))
}

/// `GET /admin/alerts`: recent deliveries, the queue, and whether a
/// webhook is configured.
pub(super) async fn alerts(env: &Env) -> Result<Reply, GatewayError> {
    if !objects::bound(env, ALERTS) {
        return Err(not_bound("Alerts", ALERTS));
    }
    observe::flush_analytics(env).await;
    let config = config_cache::current(env).await;
    let reply: AlertReply =
        objects::call(env, ALERTS, ALERTS_OBJECT, &AlertCommand::Recent).await?;
    let AlertReply::Recent {
        history,
        queue,
        suppressed,
    } = reply
    else {
        return Err(GatewayError::Internal {
            message: "unexpected alerts reply".into(),
        });
    };
    Ok(Reply::json_value(
        200,
        &serde_json::json!({
            "object": "list",
            "webhook": config.alerts.webhook.as_ref().map(|w| serde_json::json!({
                "url": w.url, "signed": w.secret.is_some(), "events": w.events,
            })),
            "cooldown_ms": config.alerts.cooldown_ms,
            "data": history,
            "queue": queue,
            "suppressed": suppressed,
        }),
    ))
}
