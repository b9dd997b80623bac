//! Restoring originals in answers (PII `restore` mode): whole bodies, and
//! streams in each client protocol.
//!
//! A whole answer holds whole placeholders: every string of the JSON is
//! restored in place ([`restore_body`]). A stream spells text out in
//! deltas, and a model writes a placeholder as several tokens (`[`,
//! `EMAIL`, `_`, `1`, `]`), so [`StreamRestorer`] keeps one incremental
//! [`Restorer`] per text channel (a choice's content, a tool call's
//! arguments, a content block, an output item's text) and rewrites the
//! delta events of the client's protocol: a possible placeholder start is
//! held back from one delta and written at the front of the next, and what
//! is still held when the channel closes is written in one more delta just
//! before the close (a Responses stream's sequence numbers are shifted to
//! match). Events that carry whole texts (`.done` events, the final
//! response) are restored whole. Tool arguments are JSON, so originals go
//! into them escaped ([`Escape::Json`]).

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use serde_json::{Map, Value};

use super::json::rewrite_strings;
use super::pii::{Escape, Restorer, Vault};
use crate::http::ByteStream;
use crate::ingress::Ingress;
use crate::sse::{SseEvent, SseParser, encode_data, encode_event};

/// How an original goes into a string under this key.
fn escape_for(key: Option<&str>) -> Escape {
    match key {
        Some("arguments" | "partial_json") => Escape::Json,
        _ => Escape::None,
    }
}

/// A whole JSON answer with every placeholder replaced; `None` when it has
/// none. Everything but the rewritten strings is kept byte for byte.
pub fn restore_body(body: &[u8], vault: &Vault) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains('[') {
        return None;
    }
    rewrite_strings(text, None, &mut |key, value| {
        vault.restore_all(value, escape_for(key))
    })
    .map(String::into_bytes)
}

/// Strings of a parsed event restored whole; whether any changed.
fn restore_value(v: &mut Value, vault: &Vault, key: Option<&str>) -> bool {
    match v {
        Value::String(s) => match vault.restore_all(s, escape_for(key)) {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        },
        Value::Array(items) => {
            let mut changed = false;
            for item in items {
                changed |= restore_value(item, vault, key);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for (k, item) in map.iter_mut() {
                changed |= restore_value(item, vault, Some(k));
            }
            changed
        }
        _ => false,
    }
}

/// One text channel of a stream.
#[derive(Debug)]
struct Channel {
    key: String,
    restorer: Restorer,
}

/// Restores a client-protocol SSE stream incrementally.
#[derive(Debug)]
pub struct StreamRestorer {
    vault: Rc<Vault>,
    protocol: Ingress,
    parser: SseParser,
    channels: Vec<Channel>,
    /// OpenAI: `id`, `object`, `created`, `model` of the last chunk, for a
    /// closing chunk of held text.
    envelope: Map<String, Value>,
    /// Anthropic: each open block's type, by index.
    blocks: Vec<(u64, String)>,
    /// Responses: events inserted so far (sequence numbers shift by it).
    shift: u64,
}

impl StreamRestorer {
    /// A restorer for a stream in the client's protocol.
    pub fn new(vault: Rc<Vault>, protocol: Ingress) -> Self {
        StreamRestorer {
            vault,
            protocol,
            parser: SseParser::new(),
            channels: Vec::new(),
            envelope: Map::new(),
            blocks: Vec::new(),
            shift: 0,
        }
    }

    /// Takes stream bytes (split anywhere); appends restored bytes.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.parser.push(bytes);
        while let Some(ev) = self.parser.next_event() {
            self.on_event(ev, out);
        }
    }

    /// The stream ended: the last event, and any held text.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        while let Some(ev) = self.parser.finish() {
            self.on_event(ev, out);
        }
        match self.protocol {
            Ingress::Chat => self.flush_openai(out),
            Ingress::Messages => {
                let open: Vec<u64> = self.blocks.iter().map(|(i, _)| *i).collect();
                for index in open {
                    self.flush_block(index, out);
                }
            }
            Ingress::Responses => {
                // A stream that ends mid-item has no `.done` to flush
                // before; what is held was never a placeholder.
                self.channels.clear();
            }
        }
    }

    /// Runs `fragment` through a channel's restorer; whether it changed.
    fn step(&mut self, key: &str, escape: Escape, fragment: &mut String) -> bool {
        let pos = self.channels.iter().position(|c| c.key == key);
        if pos.is_none_or(|p| !self.channels[p].restorer.holds()) && !fragment.contains('[') {
            return false;
        }
        let pos = pos.unwrap_or_else(|| {
            self.channels.push(Channel {
                key: key.to_owned(),
                restorer: Restorer::new(escape),
            });
            self.channels.len() - 1
        });
        let mut restored = String::with_capacity(fragment.len());
        self.channels[pos]
            .restorer
            .push(&self.vault, fragment, &mut restored);
        if restored == *fragment {
            return false;
        }
        *fragment = restored;
        true
    }

    /// The held text of a channel, which is closed.
    fn take(&mut self, key: &str) -> String {
        let mut held = String::new();
        if let Some(pos) = self.channels.iter().position(|c| c.key == key) {
            self.channels.remove(pos).restorer.finish(&mut held);
        }
        held
    }

    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) {
        let written = match self.protocol {
            Ingress::Chat => self.openai_event(&ev, out),
            Ingress::Messages => self.anthropic_event(&ev, out),
            Ingress::Responses => self.responses_event(&ev, out),
        };
        if !written {
            write_event(out, ev.event.as_deref(), ev.data.as_bytes());
        }
    }

    // ---- OpenAI chat chunks ----

    /// Returns whether it wrote the event itself.
    fn openai_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> bool {
        if ev.data == "[DONE]" {
            self.flush_openai(out);
            return false;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(&ev.data) else {
            return false;
        };
        let mut changed = false;
        if let Some(obj) = chunk.as_object() {
            for k in ["id", "object", "created", "model"] {
                if let Some(v) = obj.get(k) {
                    self.envelope.insert(k.to_owned(), v.clone());
                }
            }
        }
        let choices = chunk
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut new_choices = Vec::with_capacity(choices.len());
        for (pos, mut choice) in choices.into_iter().enumerate() {
            let idx = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                changed |= self.openai_delta(idx, delta, finished);
            }
            new_choices.push(choice);
        }
        if let Some(slot) = chunk.get_mut("choices") {
            *slot = Value::Array(new_choices);
        }
        if changed {
            let data = serde_json::to_vec(&chunk).unwrap_or_default();
            write_event(out, ev.event.as_deref(), &data);
        }
        changed
    }

    fn openai_delta(&mut self, idx: u64, delta: &mut Map<String, Value>, finished: bool) -> bool {
        let mut changed = false;
        for field in ["content", "reasoning_content", "reasoning", "refusal"] {
            if let Some(Value::String(s)) = delta.get_mut(field) {
                changed |= self.step(&format!("{idx}:{field}"), Escape::None, s);
            }
        }
        if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
            for (j, call) in calls.iter_mut().enumerate() {
                let k = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(j as u64);
                if let Some(Value::String(s)) = call.pointer_mut("/function/arguments") {
                    changed |= self.step(&format!("{idx}:tool{k}"), Escape::Json, s);
                }
            }
        }
        if finished {
            let prefix = format!("{idx}:");
            let keys: Vec<String> = self
                .channels
                .iter()
                .filter(|c| c.key.starts_with(&prefix))
                .map(|c| c.key.clone())
                .collect();
            for key in keys {
                let held = self.take(&key);
                if held.is_empty() {
                    continue;
                }
                changed = true;
                append_openai(delta, &key[prefix.len()..], &held);
            }
        }
        changed
    }

    /// Held text of every channel, in one closing chunk per choice.
    fn flush_openai(&mut self, out: &mut Vec<u8>) {
        let channels = std::mem::take(&mut self.channels);
        let mut by_choice: Vec<(u64, Map<String, Value>)> = Vec::new();
        for mut c in channels {
            let mut held = String::new();
            c.restorer.finish(&mut held);
            if held.is_empty() {
                continue;
            }
            let Some((idx, field)) = c.key.split_once(':') else {
                continue;
            };
            let idx: u64 = idx.parse().unwrap_or(0);
            let pos = match by_choice.iter().position(|(i, _)| *i == idx) {
                Some(p) => p,
                None => {
                    by_choice.push((idx, Map::new()));
                    by_choice.len() - 1
                }
            };
            append_openai(&mut by_choice[pos].1, field, &held);
        }
        for (idx, delta) in by_choice {
            let mut chunk = self.envelope.clone();
            chunk.insert(
                "choices".to_owned(),
                serde_json::json!([{"index": idx, "delta": delta, "finish_reason": null}]),
            );
            let data = serde_json::to_vec(&chunk).unwrap_or_default();
            encode_data(out, &data);
        }
    }

    // ---- Anthropic Messages events ----

    fn anthropic_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> bool {
        let name = ev.event.as_deref().unwrap_or("");
        if !matches!(
            name,
            "content_block_start" | "content_block_delta" | "content_block_stop"
        ) {
            return false;
        }
        let Ok(mut data) = serde_json::from_str::<Value>(&ev.data) else {
            return false;
        };
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match name {
            "content_block_start" => {
                let kind = data
                    .pointer("/content_block/type")
                    .and_then(Value::as_str)
                    .unwrap_or("text")
                    .to_owned();
                self.blocks.retain(|(i, _)| *i != index);
                self.blocks.push((index, kind));
                if ev.data.contains('[') && restore_value(&mut data, &self.vault, None) {
                    write_event(
                        out,
                        Some(name),
                        &serde_json::to_vec(&data).unwrap_or_default(),
                    );
                    return true;
                }
                false
            }
            "content_block_delta" => {
                let (field, escape) = match data.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => ("text", Escape::None),
                    Some("input_json_delta") => ("partial_json", Escape::Json),
                    Some("thinking_delta") => ("thinking", Escape::None),
                    _ => return false,
                };
                let key = index.to_string();
                let Some(Value::String(s)) = data.get_mut("delta").and_then(|d| d.get_mut(field))
                else {
                    return false;
                };
                let mut text = std::mem::take(s);
                let changed = self.step(&key, escape, &mut text);
                *s = text;
                if changed {
                    write_event(
                        out,
                        Some(name),
                        &serde_json::to_vec(&data).unwrap_or_default(),
                    );
                }
                changed
            }
            _ => {
                self.flush_block(index, out);
                false
            }
        }
    }

    /// Writes a block's held text as one more delta, and forgets the block.
    fn flush_block(&mut self, index: u64, out: &mut Vec<u8>) {
        let kind = self
            .blocks
            .iter()
            .position(|(i, _)| *i == index)
            .map(|p| self.blocks.remove(p).1)
            .unwrap_or_default();
        let held = self.take(&index.to_string());
        if held.is_empty() {
            return;
        }
        let delta = match kind.as_str() {
            "tool_use" | "server_tool_use" => {
                serde_json::json!({"type": "input_json_delta", "partial_json": held})
            }
            "thinking" => serde_json::json!({"type": "thinking_delta", "thinking": held}),
            _ => serde_json::json!({"type": "text_delta", "text": held}),
        };
        let event =
            serde_json::json!({"type": "content_block_delta", "index": index, "delta": delta});
        encode_event(
            out,
            "content_block_delta",
            &serde_json::to_vec(&event).unwrap_or_default(),
        );
    }

    // ---- OpenAI Responses events ----

    fn responses_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> bool {
        if self.shift == 0 && !ev.data.contains('[') && self.channels.is_empty() {
            return false;
        }
        let Ok(mut data) = serde_json::from_str::<Value>(&ev.data) else {
            return false;
        };
        let Some(kind) = data.get("type").and_then(Value::as_str).map(str::to_owned) else {
            return false;
        };
        let mut changed = false;
        if self.shift > 0
            && let Some(Value::Number(n)) = data.get_mut("sequence_number")
            && let Some(seq) = n.as_u64()
        {
            *n = (seq + self.shift).into();
            changed = true;
        }
        if let Some(stem) = kind.strip_suffix(".delta")
            && data.get("delta").is_some_and(Value::is_string)
        {
            let key = responses_key(stem, &data);
            let escape = if stem.contains("arguments") {
                Escape::Json
            } else {
                Escape::None
            };
            if let Some(Value::String(s)) = data.get_mut("delta") {
                let mut text = std::mem::take(s);
                changed |= self.step(&key, escape, &mut text);
                *s = text;
            }
        } else if let Some(stem) = kind.strip_suffix(".done") {
            let key = responses_key(stem, &data);
            let held = self.take(&key);
            if !held.is_empty() {
                self.insert_responses_delta(stem, &mut data, held, out);
                changed = true;
            }
            changed |= restore_value(&mut data, &self.vault, None);
        } else {
            changed |= restore_value(&mut data, &self.vault, None);
        }
        if changed {
            write_event(
                out,
                ev.event.as_deref(),
                &serde_json::to_vec(&data).unwrap_or_default(),
            );
        }
        changed
    }

    /// Writes a channel's held text as one more `.delta` event before its
    /// `.done` event, which (with all that follow) moves one number on.
    fn insert_responses_delta(
        &mut self,
        stem: &str,
        done: &mut Value,
        held: String,
        out: &mut Vec<u8>,
    ) {
        let name = format!("{stem}.delta");
        let mut delta = Map::new();
        delta.insert("type".to_owned(), Value::String(name.clone()));
        for k in [
            "item_id",
            "output_index",
            "content_index",
            "summary_index",
            "sequence_number",
        ] {
            if let Some(v) = done.get(k) {
                delta.insert(k.to_owned(), v.clone());
            }
        }
        delta.insert("delta".to_owned(), Value::String(held));
        write_event(
            out,
            Some(&name),
            &serde_json::to_vec(&delta).unwrap_or_default(),
        );
        self.shift += 1;
        if let Some(Value::Number(n)) = done.get_mut("sequence_number")
            && let Some(seq) = n.as_u64()
        {
            *n = (seq + 1).into();
        }
    }
}

/// Appends held text to a delta's field (`content`, ...) or to tool call
/// `k`'s arguments (`tool{k}`).
fn append_openai(delta: &mut Map<String, Value>, field: &str, held: &str) {
    if let Some(k) = field
        .strip_prefix("tool")
        .and_then(|k| k.parse::<u64>().ok())
    {
        let calls = delta
            .entry("tool_calls")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(calls) = calls.as_array_mut() else {
            return;
        };
        let pos = calls
            .iter()
            .position(|c| c.get("index").and_then(Value::as_u64) == Some(k));
        let call = match pos {
            Some(p) => &mut calls[p],
            None => {
                calls.push(serde_json::json!({"index": k, "function": {"arguments": ""}}));
                let last = calls.len() - 1;
                &mut calls[last]
            }
        };
        if let Some(Value::String(s)) = call.pointer_mut("/function/arguments") {
            s.push_str(held);
        } else if let Some(obj) = call.as_object_mut() {
            obj.insert(
                "function".to_owned(),
                serde_json::json!({"arguments": held}),
            );
        }
        return;
    }
    match delta.get_mut(field) {
        Some(Value::String(s)) => s.push_str(held),
        _ => {
            delta.insert(field.to_owned(), Value::String(held.to_owned()));
        }
    }
}

/// A Responses text channel: the event family and the ids it is for.
fn responses_key(stem: &str, data: &Value) -> String {
    let part = |k: &str| data.get(k).map(Value::to_string).unwrap_or_default();
    format!(
        "{stem}|{}|{}|{}|{}",
        part("item_id"),
        part("output_index"),
        part("content_index"),
        part("summary_index")
    )
}

fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &[u8]) {
    match name {
        Some(name) => encode_event(out, name, data),
        None => encode_data(out, data),
    }
}

/// A client stream with placeholders restored as it passes.
pub fn restore_stream(inner: ByteStream, restorer: StreamRestorer) -> ByteStream {
    Box::pin(RestoringStream {
        inner,
        restorer,
        ended: false,
    })
}

struct RestoringStream {
    inner: ByteStream,
    restorer: StreamRestorer,
    ended: bool,
}

impl Stream for RestoringStream {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => this.restorer.push(&bytes, &mut out),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.ended = true;
                    this.restorer.finish(&mut out);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Rc<Vault> {
        let mut v = Vault::new();
        v.placeholder("email", "EMAIL", "jane@corp.example");
        v.placeholder("card_number", "CARD", "4111 1111 1111 1111");
        v.placeholder("name", "NAME", "Ann \"A\" Lee");
        Rc::new(v)
    }

    /// Runs `sse` through a restorer in pieces split at `cuts`.
    fn run(protocol: Ingress, sse: &str, cuts: &[usize]) -> String {
        let mut r = StreamRestorer::new(vault(), protocol);
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&sse.len())) {
            r.push(&sse.as_bytes()[last..c], &mut out);
            last = c;
        }
        r.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn data_lines(sse: &str) -> Vec<Value> {
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn openai_chunk(content: &str, finish: Option<&str>) -> String {
        let v = serde_json::json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":content},"finish_reason":finish}]});
        format!("data: {v}\n\n")
    }

    fn openai_text(sse: &str) -> String {
        data_lines(sse)
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn openai_deltas_are_restored_across_token_and_byte_splits() {
        let pieces = [
            "Mail ",
            "[",
            "EMAIL",
            "_1",
            "] or pay with [CA",
            "RD_1]",
            " [x] [",
            "NAME_9]",
        ];
        let mut sse: String = pieces.iter().map(|p| openai_chunk(p, None)).collect();
        sse.push_str(&openai_chunk("", Some("stop")));
        sse.push_str("data: [DONE]\n\n");
        let want = "Mail jane@corp.example or pay with 4111 1111 1111 1111 [x] [NAME_9]";
        for cut in 0..=sse.len() {
            let out = run(Ingress::Chat, &sse, &[cut]);
            assert_eq!(openai_text(&out), want, "cut at {cut}");
            assert!(out.ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn held_text_is_written_before_the_finish_and_at_the_end() {
        // A trailing `[` that never becomes a placeholder still arrives.
        let sse = format!(
            "{}{}",
            openai_chunk("a [EMA", None),
            openai_chunk("", Some("stop"))
        );
        assert_eq!(openai_text(&run(Ingress::Chat, &sse, &[])), "a [EMA");
        let cut_off = openai_chunk("b [CARD_", None);
        assert_eq!(openai_text(&run(Ingress::Chat, &cut_off, &[])), "b [CARD_");
    }

    #[test]
    fn tool_arguments_get_json_escaped_originals() {
        let call = |args: &str, finish: Option<&str>| {
            let v = serde_json::json!({"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":args}}]},"finish_reason":finish}]});
            format!("data: {v}\n\n")
        };
        let sse = format!(
            "{}{}{}",
            call("{\"to\":\"[NA", None),
            call("ME_1]\"}", None),
            call("", Some("tool_calls"))
        );
        let out = run(Ingress::Chat, &sse, &[]);
        let args: String = data_lines(&out)
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        let parsed: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(parsed["to"], "Ann \"A\" Lee");
    }

    #[test]
    fn anthropic_text_deltas_are_restored_and_flushed_before_the_block_stops() {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let delta = |t: &str| {
            ev(
                "content_block_delta",
                serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}),
            )
        };
        let sse = [
            ev("message_start", serde_json::json!({"type":"message_start"})),
            ev("content_block_start", serde_json::json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})),
            delta("to [EM"),
            delta("AIL_1] and ["),
            ev("content_block_stop", serde_json::json!({"type":"content_block_stop","index":0})),
            ev("message_stop", serde_json::json!({"type":"message_stop"})),
        ]
        .concat();
        for cut in (0..=sse.len()).step_by(7) {
            let out = run(Ingress::Messages, &sse, &[cut]);
            let text: String = data_lines(&out)
                .iter()
                .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(text, "to jane@corp.example and [", "cut at {cut}");
            let stop = out.find("content_block_stop").unwrap();
            assert!(
                out[..stop].ends_with("event: "),
                "held text precedes the stop"
            );
        }
    }

    #[test]
    fn responses_deltas_are_restored_and_sequence_numbers_stay_consecutive() {
        let ev = |data: Value| {
            let name = data["type"].as_str().unwrap().to_owned();
            format!("event: {name}\ndata: {data}\n\n")
        };
        let sse = [
            ev(serde_json::json!({"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"hi [EMAIL_1","sequence_number":4})),
            ev(serde_json::json!({"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"] [","sequence_number":5})),
            ev(serde_json::json!({"type":"response.output_text.done","item_id":"m","output_index":0,"content_index":0,"text":"hi [EMAIL_1] [","sequence_number":6})),
            ev(serde_json::json!({"type":"response.completed","response":{"output":[{"content":[{"text":"hi [EMAIL_1] ["}]}]},"sequence_number":7})),
        ]
        .concat();
        let out = run(Ingress::Responses, &sse, &[]);
        let events = data_lines(&out);
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8]);
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, "hi jane@corp.example [");
        assert_eq!(events[3]["text"], "hi jane@corp.example [");
        assert_eq!(
            events[4]["response"]["output"][0]["content"][0]["text"],
            "hi jane@corp.example ["
        );
    }

    #[test]
    fn whole_bodies_are_restored_in_place() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"to [EMAIL_1]","tool_calls":[{"function":{"arguments":"{\"n\":\"[NAME_1]\"}"}}]}}],"n":1.50}"#;
        let out = String::from_utf8(restore_body(body, &vault()).unwrap()).unwrap();
        assert!(
            out.starts_with(
                r#"{"id":"x","choices":[{"message":{"content":"to jane@corp.example","#
            )
        );
        assert!(out.ends_with(r#""n":1.50}"#));
        let v: Value = serde_json::from_str(&out).unwrap();
        let args: Value = serde_json::from_str(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args["n"], "Ann \"A\" Lee");
        assert!(restore_body(br#"{"a":"no placeholders"}"#, &vault()).is_none());
    }
}
