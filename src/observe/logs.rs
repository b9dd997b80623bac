//! Request logs: opt-in records of requests (metadata, or full bodies with
//! optional redaction) written to R2 as JSON lines, in batches.
//!
//! Whether a request is logged is decided once, from the routing config
//! (`request_logs.keys`, `request_logs.models`); a request that is not
//! logged costs one look at two short lists and copies nothing. A logged
//! one keeps its request body and a copy of its answer (streams are copied
//! as they pass, up to `max_body_bytes`), and becomes one line ([`line()`])
//! in the isolate's batch ([`LogBatch`]), written as one R2 object per
//! flush interval under `requests/YYYY-MM-DD/HH/` ([`object_key`]), so a
//! day's or an hour's logs are one prefix to list, and retention deletes
//! whole days ([`expired`]).
//!
//! **Redaction** keeps the structure and drops the text: every string is
//! replaced by `"[redacted]"` except the values of a short list of
//! structural fields (`role`, `model`, `type`, `finish_reason`, ids, ...;
//! [`KEPT`]). An allow-list rather than a deny-list, so a field no one
//! thought of (a new content part, a tool's arguments, a stop sequence)
//! cannot leak message text.

use serde::Serialize;
use serde_json::Value;

use crate::limits::{DAY_MS, date_string};

/// Fields whose string values survive redaction: structure, never text.
pub const KEPT: &[&str] = &[
    "role",
    "model",
    "id",
    "object",
    "type",
    "finish_reason",
    "stop_reason",
    "tool_call_id",
    "system_fingerprint",
    "service_tier",
    "encoding_format",
    "reasoning_effort",
    "status",
    "event",
];

/// What replaces a string under redaction.
pub const REDACTED: &str = "[redacted]";
/// The prefix every log object is written under.
pub const PREFIX: &str = "requests/";
/// A batch is written at once past this size.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Replaces every string not under a [`KEPT`] field by `"[redacted]"`.
pub fn redact(value: &mut Value) {
    redact_under(value, None);
}

fn redact_under(value: &mut Value, field: Option<&str>) {
    match value {
        Value::String(s) => {
            if !field.is_some_and(|f| KEPT.contains(&f)) {
                *s = REDACTED.to_owned();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_under(v, field)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact_under(v, Some(k));
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The facts of one logged request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogMeta {
    /// `x-request-id`.
    pub request_id: String,
    /// Admission time, Unix ms.
    pub at_ms: u64,
    /// Key id.
    pub key: String,
    /// Team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Public model.
    pub model: String,
    /// Provider that answered.
    pub provider: Option<String>,
    /// Provider-side model.
    pub target_model: Option<String>,
    /// HTTP status.
    pub status: u16,
    /// Whether it failed.
    pub error: bool,
    /// Streamed.
    pub stream: bool,
    /// Targets tried.
    pub attempts: u32,
    /// ms to the end.
    pub latency_ms: u64,
    /// ms to the first byte.
    pub ttft_ms: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Cost, exact picodollars.
    pub cost_pico: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    meta: &'a LogMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
    redacted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// A body as stored: JSON (an SSE stream as the list of its events' data),
/// redacted if asked; a body over `max_bytes` (or unparsable when
/// redacting) is cut or left out, and says so.
fn body_value(
    bytes: &[u8],
    sse: bool,
    redacting: bool,
    max_bytes: usize,
    cut: bool,
) -> (Value, bool) {
    let mut value = if sse {
        let text = String::from_utf8_lossy(bytes);
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                (!data.is_empty()).then(|| data.join("\n"))
            })
            .map(|data| match serde_json::from_str::<Value>(&data) {
                Ok(v) => v,
                Err(_) if data == "[DONE]" => Value::String(data),
                Err(_) if redacting => Value::Null,
                Err(_) => Value::String(data),
            })
            .collect();
        Value::Array(events)
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v,
            Err(_) if redacting => return (Value::Null, cut),
            Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        }
    };
    if redacting {
        redact(&mut value);
    }
    let size = serde_json::to_string(&value).map_or(0, |s| s.len());
    if size > max_bytes {
        if redacting {
            return (Value::Null, true);
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max_bytes)]).into_owned();
        return (Value::String(text), true);
    }
    (value, cut)
}

/// What a log line carries of the bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPolicy {
    /// Keep the bodies (`false`: metadata only).
    pub bodies: bool,
    /// Redact message content.
    pub redact: bool,
    /// Largest body stored.
    pub max_bytes: usize,
}

/// One JSON line: the facts, and the bodies as the policy says.
/// `response_cut` says the capture stopped at its cap.
pub fn line(
    meta: &LogMeta,
    request: Option<&[u8]>,
    response: Option<&[u8]>,
    response_cut: bool,
    policy: BodyPolicy,
) -> String {
    let (mut truncated, mut req, mut resp) = (false, None, None);
    if policy.bodies {
        if let Some(b) = request {
            let (v, t) = body_value(b, false, policy.redact, policy.max_bytes, false);
            truncated |= t;
            req = Some(v);
        }
        if let Some(b) = response {
            let (v, t) = body_value(
                b,
                meta.stream,
                policy.redact,
                policy.max_bytes,
                response_cut,
            );
            truncated |= t;
            resp = Some(v);
        }
    }
    let line = Line {
        meta,
        request: req,
        response: resp,
        redacted: policy.bodies && policy.redact,
        truncated,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// `requests/YYYY-MM-DD/HH/<first ms>-<holder>-<seq>.jsonl`: listed by day
/// or hour, in time order.
pub fn object_key(first_ms: u64, holder: &str, seq: u64) -> String {
    let hour = first_ms % DAY_MS / 3_600_000;
    format!(
        "{PREFIX}{}/{hour:02}/{first_ms}-{holder}-{seq:06}.jsonl",
        date_string(first_ms)
    )
}

/// The day prefix of a date: `requests/YYYY-MM-DD/`.
pub fn day_prefix(date: &str) -> String {
    format!("{PREFIX}{date}/")
}

/// Whether a log object is older than `retention_days` whole days.
pub fn expired(object_key: &str, now_ms: u64, retention_days: u32) -> bool {
    let Some(date) = object_key
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.get(..10))
    else {
        return false;
    };
    let Some(day) = crate::limits::day_start_ms(date) else {
        return false;
    };
    let keep_from = (now_ms / DAY_MS).saturating_sub(u64::from(retention_days)) * DAY_MS;
    day < keep_from
}

/// An isolate's lines not yet written.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    buf: String,
    first_ms: Option<u64>,
    since_ms: Option<u64>,
    seq: u64,
}

impl LogBatch {
    /// Adds one line.
    pub fn push(&mut self, line: &str, at_ms: u64, now_ms: u64) {
        self.buf.push_str(line);
        self.buf.push('\n');
        self.first_ms.get_or_insert(at_ms);
        self.since_ms.get_or_insert(now_ms);
    }

    /// When it is due (`flush_ms` after the first line; at once when
    /// large).
    pub fn due(&self, flush_ms: u64) -> Option<u64> {
        let since = self.since_ms?;
        Some(if self.buf.len() >= BATCH_BYTES {
            since
        } else {
            since + flush_ms
        })
    }

    /// The object to write now (its key and body), if due or `force`d.
    pub fn take(
        &mut self,
        holder: &str,
        flush_ms: u64,
        now_ms: u64,
        force: bool,
    ) -> Option<(String, String)> {
        let due = self.due(flush_ms)?;
        if !force && now_ms < due {
            return None;
        }
        self.seq += 1;
        let key = object_key(self.first_ms.unwrap_or(now_ms), holder, self.seq);
        self.first_ms = None;
        self.since_ms = None;
        Some((key, std::mem::take(&mut self.buf)))
    }

    /// A write failed: the lines go back in front, unless that would hold
    /// more than `max` bytes (they are then dropped, and `false` says so).
    pub fn put_back(&mut self, body: String, now_ms: u64, max: usize) -> bool {
        if body.len() + self.buf.len() > max {
            return false;
        }
        self.buf.insert_str(0, &body);
        self.since_ms = Some(self.since_ms.map_or(now_ms, |t| t.min(now_ms)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"{"model":"m","messages":[{"role":"system","content":"be secret"},{"role":"user","content":[{"type":"text","text":"my SSN is 123"},{"type":"image_url","image_url":{"url":"data:x"}}]}],"tools":[{"type":"function","function":{"name":"f","description":"looks up secrets","parameters":{"type":"object"}}}],"stop":["STOPWORD"],"max_tokens":5}"#;

    fn policy(redact: bool) -> BodyPolicy {
        BodyPolicy {
            bodies: true,
            redact,
            max_bytes: 64 * 1024,
        }
    }

    #[test]
    fn redaction_leaves_no_message_text_but_keeps_structure() {
        let meta = LogMeta {
            model: "m".into(),
            ..LogMeta::default()
        };
        let answer = br#"{"id":"c1","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"the secret answer","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"q\":\"secret arg\"}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":3}}"#;
        let out = line(
            &meta,
            Some(CHAT.as_bytes()),
            Some(answer),
            false,
            policy(true),
        );
        for text in ["secret", "SSN", "STOPWORD", "data:x"] {
            assert!(!out.contains(text), "{text} leaked: {out}");
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["request"]["messages"][1]["role"], "user");
        assert_eq!(v["request"]["messages"][1]["content"][0]["type"], "text");
        assert_eq!(v["request"]["max_tokens"], 5);
        assert_eq!(v["response"]["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["response"]["usage"]["prompt_tokens"], 3);
        assert_eq!(v["redacted"], true);
    }

    #[test]
    fn streams_are_stored_as_their_events_and_redacted_too() {
        let meta = LogMeta {
            stream: true,
            ..LogMeta::default()
        };
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let plain: Value =
            serde_json::from_str(&line(&meta, None, Some(sse), false, policy(false))).unwrap();
        assert_eq!(
            plain["response"][0]["choices"][0]["delta"]["content"],
            "Hel"
        );
        assert_eq!(plain["response"][2], "[DONE]");
        let out = line(&meta, None, Some(sse), false, policy(true));
        assert!(!out.contains("Hel") && !out.contains("lo\""), "{out}");
        assert!(out.contains("\"finish_reason\":\"stop\""));
    }

    #[test]
    fn metadata_only_stores_no_body() {
        let meta = LogMeta {
            request_id: "req_1".into(),
            ..LogMeta::default()
        };
        let p = BodyPolicy {
            bodies: false,
            ..policy(false)
        };
        let out = line(&meta, Some(CHAT.as_bytes()), Some(b"{}"), false, p);
        assert!(
            !out.contains("request\"") && !out.contains("response"),
            "{out}"
        );
        assert!(out.contains("req_1"));
    }

    #[test]
    fn oversized_bodies_are_cut_or_left_out_when_redacting() {
        let meta = LogMeta::default();
        let small = BodyPolicy {
            max_bytes: 40,
            ..policy(false)
        };
        let v: Value =
            serde_json::from_str(&line(&meta, Some(CHAT.as_bytes()), None, false, small)).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["request"].as_str().unwrap().len(), 40);
        let redacting = BodyPolicy {
            redact: true,
            max_bytes: 40,
            ..small
        };
        let v: Value =
            serde_json::from_str(&line(&meta, Some(CHAT.as_bytes()), None, false, redacting))
                .unwrap();
        assert_eq!(v["request"], Value::Null);
        // A cut capture cannot be parsed: with redaction it is not kept.
        let v: Value = serde_json::from_str(&line(
            &meta,
            None,
            Some(b"{\"choices\":[{\"mess"),
            true,
            policy(true),
        ))
        .unwrap();
        assert_eq!(
            (v["response"].clone(), v["truncated"].clone()),
            (Value::Null, Value::Bool(true))
        );
    }

    #[test]
    fn objects_are_keyed_by_day_and_hour_and_expire_by_day() {
        let t = 20_419 * DAY_MS + 13 * 3_600_000 + 5; // 2025-11-27 13:00
        let key = object_key(t, "iso-ab", 7);
        assert_eq!(
            key,
            format!("requests/2025-11-27/13/{t}-iso-ab-000007.jsonl")
        );
        assert!(key.starts_with(&day_prefix("2025-11-27")));
        assert!(!expired(&key, t + 30 * DAY_MS, 30));
        assert!(expired(&key, t + 31 * DAY_MS, 30));
        assert!(!expired("elsewhere/x", t + 99 * DAY_MS, 1));
    }

    #[test]
    fn a_batch_is_due_after_the_interval_and_a_failed_write_is_kept() {
        let mut b = LogBatch::default();
        assert_eq!(b.due(1_000), None);
        b.push("{\"a\":1}", 50, 100);
        assert_eq!(b.due(1_000), Some(1_100));
        assert!(b.take("iso", 1_000, 1_099, false).is_none());
        let (key, body) = b.take("iso", 1_000, 1_100, false).unwrap();
        assert!(key.ends_with("-iso-000001.jsonl"));
        assert_eq!(body, "{\"a\":1}\n");
        assert!(b.put_back(body, 1_200, 1 << 20));
        let (_, again) = b.take("iso", 1_000, 0, true).unwrap();
        assert_eq!(again, "{\"a\":1}\n");
        assert!(!b.put_back("x".repeat(10), 0, 5));
    }
}
