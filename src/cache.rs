//! The exact-match response cache: which requests it may answer, under
//! which key, what an entry holds, and how an entry is replayed.
//!
//! An entry is stored once per distinct request and answers both ways: as a
//! `chat.completion` to a client that does not stream, and as the original
//! chunks (or chunks made from the completion, when the answer that filled
//! the entry was not streamed) to one that does. The edge keeps entries in
//! the Workers Cache API of the caller's location; this module is pure.
//!
//! The key is a SHA-256 of the scope (the key's id, its team, or nothing)
//! and the request's canonical form: every top-level field except those
//! that do not change the answer ([`IGNORED_FIELDS`]), with object keys in
//! order, so two requests that differ only in field order or spacing share
//! an entry, and no prompt text appears in a cache key.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::oneshot;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::api::ChatRequest;
use crate::config::{CachePolicy, CacheScope};
use crate::http::ByteStream;
use crate::sse::{SseParser, encode_data};

/// Top-level fields that do not change the answer: who asks, how it is
/// delivered, how it is logged or billed.
pub const IGNORED_FIELDS: [&str; 8] = [
    "user",
    "stream",
    "stream_options",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
];

/// The largest answer stored (a longer one is served, not cached).
pub const MAX_ENTRY_BYTES: usize = 2 * 1024 * 1024;

/// Who is asking, for the cache's scope.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The key's id.
    pub key_id: &'a str,
    /// The key's team, if it has one.
    pub team: Option<&'a str>,
    /// The targets routing lets it use ([`crate::routing::fingerprint`]):
    /// requests routed to other targets never share an answer.
    pub targets: &'a str,
}

/// The cache key of a request, or `None` when the policy does not let it
/// be cached: it samples (a `temperature` above 0, or none: the providers'
/// default is 1) and the policy does not cache sampled requests, or it asks
/// for several answers (`n` above 1).
pub fn key(req: &ChatRequest<'_>, policy: &CachePolicy, asker: Asker<'_>) -> Option<String> {
    let temperature = req
        .get("temperature")
        .and_then(|raw| raw.get().parse::<f64>().ok());
    if !policy.sampled && temperature.is_none_or(|t| t > 0.0) {
        return None;
    }
    if req
        .get("n")
        .and_then(|raw| raw.get().parse::<u64>().ok())
        .is_some_and(|n| n > 1)
    {
        return None;
    }
    let mut canonical = serde_json::Map::new();
    for (name, raw) in req.fields() {
        if IGNORED_FIELDS.contains(&name) {
            continue;
        }
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        canonical.insert(name.to_owned(), value);
    }
    // serde_json's map keeps keys sorted, nested objects included: the text
    // is canonical.
    let text = serde_json::to_string(&canonical).ok()?;
    let scope = match policy.scope {
        CacheScope::Key => format!("key:{}", asker.key_id),
        CacheScope::Team => match asker.team {
            Some(team) => format!("team:{team}"),
            None => format!("key:{}", asker.key_id),
        },
        CacheScope::Global => "global".to_owned(),
    };
    let mut h = Sha256::new();
    h.update(b"gateway-cache-v1\n");
    h.update(scope.as_bytes());
    h.update(b"\n");
    h.update(asker.targets.as_bytes());
    h.update(b"\n\n");
    h.update(text.as_bytes());
    Some(crate::keys::hex(&h.finalize()))
}

/// What the client's `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Look up, and store a miss's answer.
    Normal,
    /// Do not look up, but store the fresh answer (`no-cache`).
    Refresh,
    /// Neither look up nor store (`no-store`).
    Bypass,
}

/// Reads a request's `Cache-Control` header.
pub fn directive(cache_control: Option<&str>) -> Directive {
    let has = |d: &str| {
        cache_control.is_some_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(d)))
    };
    if has("no-store") {
        Directive::Bypass
    } else if has("no-cache") {
        Directive::Refresh
    } else {
        Directive::Normal
    }
}

/// What the cache does for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The model has no cache: nothing to say (no `x-gateway-cache`).
    Off,
    /// The request may not be cached (it samples, asks for several
    /// answers, says `no-store`, or is not a chat completion): neither
    /// looked up nor stored.
    Bypass,
    /// Looked up unless `lookup` is false (`no-cache`); a miss's complete
    /// answer is stored for `ttl_s`.
    Use {
        /// The entry's key ([`key`]).
        key: String,
        /// Its lifetime in seconds.
        ttl_s: u64,
        /// Whether to look it up first.
        lookup: bool,
    },
}

/// What the cache does for a request under its model's `policy` (`None`:
/// the model has none), with the client's `Cache-Control`. `req` is `None`
/// for requests of another protocol, which the cache does not answer.
pub fn plan(
    policy: Option<&CachePolicy>,
    req: Option<&ChatRequest<'_>>,
    cache_control: Option<&str>,
    asker: Asker<'_>,
) -> Plan {
    let Some(policy) = policy else {
        return Plan::Off;
    };
    let lookup = match directive(cache_control) {
        Directive::Bypass => return Plan::Bypass,
        Directive::Refresh => false,
        Directive::Normal => true,
    };
    match req.and_then(|r| key(r, policy, asker)) {
        Some(key) => Plan::Use {
            key,
            ttl_s: policy.ttl_s,
            lookup,
        },
        None => Plan::Bypass,
    }
}

/// The client's stream, its bytes kept as they pass: when it ends (not
/// when it is dropped first) the receiver gets all of them, unless they
/// grew past [`MAX_ENTRY_BYTES`].
pub fn capture(stream: ByteStream) -> (ByteStream, oneshot::Receiver<Vec<u8>>) {
    let (tx, rx) = oneshot::channel();
    let tee = Capture {
        inner: stream,
        kept: Vec::new(),
        overflow: false,
        done: Some(tx),
    };
    (Box::pin(tee), rx)
}

struct Capture {
    inner: ByteStream,
    kept: Vec<u8>,
    overflow: bool,
    done: Option<oneshot::Sender<Vec<u8>>>,
}

impl Stream for Capture {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = this.inner.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(bytes))) if !this.overflow => {
                if this.kept.len() + bytes.len() > MAX_ENTRY_BYTES {
                    this.overflow = true;
                    this.kept = Vec::new();
                } else {
                    this.kept.extend_from_slice(bytes);
                }
            }
            Poll::Ready(Some(Err(_))) => this.overflow = true,
            Poll::Ready(None) => {
                if let Some(tx) = this.done.take()
                    && !this.overflow
                {
                    let _ = tx.send(std::mem::take(&mut this.kept));
                }
            }
            _ => {}
        }
        next
    }
}

/// A stored answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The `chat.completion`, as the provider wrote it (or as it was
    /// assembled from a stream's chunks).
    pub completion: Box<RawValue>,
    /// The chunks it was streamed as (each a `chat.completion.chunk`'s
    /// JSON, usage-only chunks left out), when it was streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<String>>,
    /// What it cost to make, as the provider said it (every detail kept),
    /// for the usage chunk of a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Box<RawValue>>,
}

impl Entry {
    /// The entry of a whole answer (a `chat.completion` with a finish
    /// reason), or `None` if it is not one worth storing.
    pub fn from_completion(body: &[u8]) -> Option<Entry> {
        if body.len() > MAX_ENTRY_BYTES {
            return None;
        }
        let parsed: Value = serde_json::from_slice(body).ok()?;
        let choice = parsed.get("choices")?.as_array()?.first()?;
        choice.get("finish_reason")?.as_str()?;
        let usage = usage_of(body);
        let completion = RawValue::from_string(String::from_utf8(body.to_vec()).ok()?).ok()?;
        Some(Entry {
            completion,
            chunks: None,
            usage,
        })
    }

    /// The entry of a whole stream as the client got it (OpenAI chunks,
    /// ending in `[DONE]`), or `None` if it is not a complete answer.
    pub fn from_stream(sse: &[u8]) -> Option<Entry> {
        if sse.len() > MAX_ENTRY_BYTES {
            return None;
        }
        let mut parser = SseParser::new();
        parser.push(sse);
        let mut chunks = Vec::new();
        let mut done = false;
        let mut usage = None;
        let mut acc = Assembler::default();
        while let Some(ev) = parser.finish() {
            if ev.data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(&ev.data).ok()?;
            if chunk.get("error").is_some() {
                return None;
            }
            if chunk.get("usage").is_some_and(Value::is_object) {
                usage = usage_of(ev.data.as_bytes());
            }
            let choices = chunk.get("choices")?.as_array()?;
            if choices.is_empty() {
                continue; // the usage chunk: replayed from `usage`
            }
            acc.add(&chunk);
            chunks.push(ev.data);
        }
        if !done || acc.finish_reason.is_none() {
            return None;
        }
        Some(Entry {
            completion: RawValue::from_string(acc.completion(usage.as_deref()).to_string()).ok()?,
            chunks: Some(chunks),
            usage,
        })
    }

    /// The entry with `usage` (what the provider reported, as settled) when
    /// the answer as the client got it carried none: a stream whose client
    /// did not ask for the usage chunk, which a later client may.
    /// A completion assembled from such a stream gets it too: a later
    /// client that does not stream is owed its `usage` like any other.
    pub fn with_usage(mut self, usage: Option<&crate::api::Usage>) -> Entry {
        if self.usage.is_none()
            && let Some(u) = usage
            && let Ok(json) = serde_json::to_string(u)
        {
            if self.chunks.is_some()
                && let Ok(Value::Object(mut completion)) =
                    serde_json::from_str::<Value>(self.completion.get())
                && !completion.contains_key("usage")
                && let Ok(value) = serde_json::from_str::<Value>(&json)
            {
                completion.insert("usage".into(), value);
                if let Ok(raw) = RawValue::from_string(Value::Object(completion).to_string()) {
                    self.completion = raw;
                }
            }
            self.usage = RawValue::from_string(json).ok();
        }
        self
    }

    /// The answer for a client that does not stream.
    pub fn to_completion(&self) -> Vec<u8> {
        self.completion.get().as_bytes().to_vec()
    }

    /// The answer for a client that streams: the original chunks (or
    /// chunks made from the completion), a usage chunk if `include_usage`,
    /// and `[DONE]`.
    pub fn to_stream(&self, include_usage: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks = match &self.chunks {
            Some(c) => c.clone(),
            None => chunks_of(&serde_json::from_str(self.completion.get()).unwrap_or(Value::Null)),
        };
        for c in &chunks {
            encode_data(&mut out, c.as_bytes());
        }
        if include_usage && let Some(u) = &self.usage {
            /// The usage chunk, its fields in OpenAI's order.
            #[derive(Serialize)]
            struct UsageChunk<'a> {
                id: Option<Value>,
                object: &'static str,
                created: Option<Value>,
                model: Option<Value>,
                choices: [u8; 0],
                usage: &'a RawValue,
            }
            let first = chunks
                .first()
                .and_then(|c| serde_json::from_str::<Value>(c).ok());
            let field = |name: &str| first.as_ref().and_then(|f| f.get(name).cloned());
            let chunk = UsageChunk {
                id: field("id"),
                object: "chat.completion.chunk",
                created: field("created"),
                model: field("model"),
                choices: [],
                usage: u,
            };
            if let Ok(json) = serde_json::to_vec(&chunk) {
                encode_data(&mut out, &json);
            }
        }
        out.extend_from_slice(crate::sse::DONE);
        out
    }
}

/// The `usage` object of a completion or chunk, as it was written.
fn usage_of(json: &[u8]) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct WithUsage {
        usage: Option<Box<RawValue>>,
    }
    let usage = serde_json::from_slice::<WithUsage>(json).ok()?.usage?;
    usage.get().starts_with('{').then_some(usage)
}

/// Builds a `chat.completion` from the chunks of one stream (one choice).
#[derive(Debug, Default)]
struct Assembler {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    system_fingerprint: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    /// By index: id, name, arguments.
    tool_calls: Vec<(Value, String, String)>,
    finish_reason: Option<Value>,
}

impl Assembler {
    fn add(&mut self, chunk: &Value) {
        self.id = self.id.take().or_else(|| chunk.get("id").cloned());
        self.created = self
            .created
            .take()
            .or_else(|| chunk.get("created").cloned());
        self.model = self.model.take().or_else(|| chunk.get("model").cloned());
        self.system_fingerprint = self.system_fingerprint.take().or_else(|| {
            chunk
                .get("system_fingerprint")
                .cloned()
                .filter(|v| !v.is_null())
        });
        let Some(choice) = chunk
            .get("choices")
            .and_then(|c| c.as_array())
            .and_then(|c| c.first())
        else {
            return;
        };
        if let Some(f) = choice.get("finish_reason").filter(|f| !f.is_null()) {
            self.finish_reason = Some(f.clone());
        }
        let Some(delta) = choice.get("delta") else {
            return;
        };
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.content.get_or_insert_with(String::new).push_str(text);
        }
        if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
            self.refusal.get_or_insert_with(String::new).push_str(text);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            while self.tool_calls.len() <= index {
                self.tool_calls
                    .push((Value::Null, String::new(), String::new()));
            }
            let slot = &mut self.tool_calls[index];
            if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
                slot.0 = id.clone();
            }
            if let Some(f) = call.get("function") {
                if let Some(name) = f.get("name").and_then(Value::as_str) {
                    slot.1.push_str(name);
                }
                if let Some(args) = f.get("arguments").and_then(Value::as_str) {
                    slot.2.push_str(args);
                }
            }
        }
    }

    fn completion(self, usage: Option<&RawValue>) -> Value {
        let mut message = serde_json::json!({
            "role": "assistant",
            "content": self.content,
            "refusal": self.refusal,
        });
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .into_iter()
                .map(|(id, name, arguments)| {
                    serde_json::json!({
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    })
                })
                .collect();
        }
        let mut completion = serde_json::json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
        });
        if let Some(f) = self.system_fingerprint {
            completion["system_fingerprint"] = f;
        }
        if let Some(u) = usage {
            completion["usage"] = serde_json::from_str(u.get()).unwrap_or(Value::Null);
        }
        completion
    }
}

/// The chunks a whole answer streams as: the role and text, the tool calls,
/// then the finish.
fn chunks_of(completion: &Value) -> Vec<String> {
    let field = |name: &str| completion.get(name).cloned().unwrap_or(Value::Null);
    let chunk = |delta: Value, finish: Value| {
        serde_json::json!({
            "id": field("id"),
            "object": "chat.completion.chunk",
            "created": field("created"),
            "model": field("model"),
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
        .to_string()
    };
    let choice = completion
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or(Value::Null);
    let message = choice.get("message").cloned().unwrap_or(Value::Null);
    let mut out = vec![chunk(
        serde_json::json!({"role": "assistant", "content": message.get("content").cloned().unwrap_or(Value::Null)}),
        Value::Null,
    )];
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c["index"] = Value::from(i);
                c
            })
            .collect();
        out.push(chunk(serde_json::json!({"tool_calls": calls}), Value::Null));
    }
    out.push(chunk(
        serde_json::json!({}),
        choice.get("finish_reason").cloned().unwrap_or(Value::Null),
    ));
    out
}

#[cfg(test)]
mod tests;
