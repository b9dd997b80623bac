//! Mid-stream continuation: a chat stream whose provider breaks after the
//! client has seen output is finished by the next candidate, as one stream.
//!
//! The first leg's client bytes (OpenAI chunks) pass through
//! [`continuable`], which keeps what the client has been told: the
//! answer's id, `created` and model, and its text. When the leg ends in its
//! error event, and it broke in plain text (not inside a tool call, before
//! any finish), the error event is held back and [`StartLeg`] is asked for
//! a second leg: the original request with the text so far as a trailing
//! assistant turn ([`continuation_body`]), which Anthropic, Gemini and
//! Bedrock continue as a prefill, and to which OpenAI-compatible targets
//! get [`CONTINUATION_PROMPT`] as one more user turn. The second leg's
//! chunks are rewritten on their way (`Splice`): the first leg's id,
//! `created` and model; no second role; any words it repeats from the end
//! of the first leg cut (the overlap); its usage chunk the sum of both
//! legs. The client sees one stream, one `finish_reason`, one `[DONE]`.
//! Without a second leg (no candidate left, none answered), the held error
//! event ends the stream as it would have.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use serde_json::Value;

use super::{Ctx, Prepared, Reply, Request, Served, StreamEnd, StreamOutcome, failover, try_chat};
use crate::api::{ChatRequest, Usage};
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::http::{ByteStream, Upstream};
use crate::ingress::Call;
use crate::limits::Tokens;
use crate::routing::Candidate;
use crate::sse::{SseParser, encode_data};

/// The user turn that asks an OpenAI-compatible target to go on from the
/// assistant turn it is given (these APIs have no prefill: a trailing
/// assistant turn alone starts a new answer).
pub const CONTINUATION_PROMPT: &str = "Your previous message was cut off. Continue it from exactly where it stopped, mid-word if need be: do not repeat any of it, do not comment, write only the rest.";

/// The longest overlap looked for: the second leg's text is held back
/// while it still repeats the end of the first's, up to this much.
const MAX_OVERLAP: usize = 1_024;

/// Whether a provider kind continues a trailing assistant turn itself.
pub fn prefills(kind: ProviderKind) -> bool {
    matches!(
        kind,
        ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Bedrock
            | ProviderKind::Vertex
    )
}

/// The continuation of `req` after `prefix`: its messages with the text so
/// far as a trailing assistant turn (trailing whitespace trimmed, which
/// Anthropic refuses in a prefill), and, unless the target `prefill`s, the
/// continuation prompt after it; an output cap (`max_tokens`,
/// `max_completion_tokens`) less the `used` output of the first leg (at
/// least 1). Every other field is kept.
pub fn continuation_body(
    req: &ChatRequest<'_>,
    prefix: &str,
    prefill: bool,
    used: u64,
) -> Option<Vec<u8>> {
    let assistant = serde_json::json!({"role": "assistant", "content": prefix.trim_end()});
    let mut turns = assistant.to_string();
    if !prefill {
        let user = serde_json::json!({"role": "user", "content": CONTINUATION_PROMPT});
        turns.push(',');
        turns.push_str(&user.to_string());
    }
    let mut out = String::from("{");
    for (i, (name, raw)) in req.fields().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).ok()?);
        out.push(':');
        if name == "messages" {
            let list = raw.get().trim();
            let inner = list.strip_prefix('[')?.strip_suffix(']')?.trim();
            out.push('[');
            if !inner.is_empty() {
                out.push_str(inner);
                out.push(',');
            }
            out.push_str(&turns);
            out.push(']');
        } else if let ("max_tokens" | "max_completion_tokens", Ok(cap)) =
            (name, raw.get().parse::<u64>())
        {
            out.push_str(&cap.saturating_sub(used).max(1).to_string());
        } else {
            out.push_str(raw.get());
        }
    }
    out.push('}');
    Some(out.into_bytes())
}

/// Sends the second leg: the continuation of `prepared`'s chat request
/// after `prefix` (the first leg having written `used` output tokens), to
/// its routed candidates but the one that broke and those that failed
/// before it, in order and within the timeouts as the failover loop does
/// (the total counted from the request's start, `ctx.now_ms`). The stream
/// stays in Rust, to be rewritten; `on_end` gets its end.
pub async fn second_leg<U: Upstream>(
    upstream: &U,
    ctx: &Ctx<'_>,
    prepared: &Prepared<'_>,
    broken: &Served,
    (prefix, used): (&str, u64),
    on_end: StreamEnd,
) -> Result<Reply, GatewayError> {
    let Request::Chat(req) = &prepared.req else {
        return Err(GatewayError::Internal {
            message: "only chat completions are continued".into(),
        });
    };
    let malformed = || GatewayError::Internal {
        message: "the continuation's body".into(),
    };
    let prefill_body = continuation_body(req, prefix, true, used).ok_or_else(malformed)?;
    let prompted_body = continuation_body(req, prefix, false, used).ok_or_else(malformed)?;
    let mut prefill = ChatRequest::parse(&prefill_body)?;
    let mut prompted = ChatRequest::parse(&prompted_body)?;
    prefill.native_pipe = false;
    prompted.native_pipe = false;
    let candidates: Vec<Candidate<'_>> = prepared
        .candidates
        .iter()
        .filter(|c| {
            let this = |(p, m): (&str, &str)| c.target.name == p && c.target.model == m;
            !this((&broken.provider, &broken.model))
                && !broken.failed.iter().any(|(p, m)| this((p, m)))
        })
        .cloned()
        .collect();
    let policy = &prepared.config.failover;
    let on_end = Cell::new(Some(on_end));
    failover(ctx, policy, prepared.model(), &candidates, None, |cand| {
        let req = if prefills(cand.target.provider.kind) {
            &prefill
        } else {
            &prompted
        };
        try_chat(upstream, ctx, policy, Call::Chat(req), cand, &on_end)
    })
    .await
}

/// A second leg, started: its client bytes (OpenAI chunks), the target
/// that answered, and where its stream reports its end.
pub struct Leg {
    /// The second leg's client stream.
    pub body: ByteStream,
    /// Who answered.
    pub served: Served,
    /// Filled when its stream ends.
    pub outcome: LegOutcome,
}

/// Where a leg's stream reports its end.
pub type LegOutcome = Rc<RefCell<Option<StreamOutcome>>>;

/// Starts a second leg with the text the client has so far and the output
/// tokens the first leg used; `None` when no target could.
pub type StartLeg = Box<dyn FnOnce(String, u64) -> Pin<Box<dyn Future<Output = Option<Leg>>>>>;

/// A second leg that ran, for settlement: its target and what it used.
#[derive(Debug, Clone, PartialEq)]
pub struct Continued {
    /// Who answered it.
    pub served: Served,
    /// Usage it reported.
    pub usage: Option<Usage>,
    /// Upstream events it had.
    pub events: u64,
    /// The length of the text it was given to continue.
    pub prefix_bytes: u64,
}

/// The tokens of one leg: what its provider reported, else an estimate
/// (the input estimate, and an output token an event). A leg that did not
/// end whole (`finished` false) is charged at least that estimate's output
/// even with usage: what a provider reports before its end can be partial
/// (Anthropic's first event carries a placeholder output, the total comes
/// at the end). Settlement and the client's summed usage use the same.
pub fn leg_tokens(
    usage: Option<&Usage>,
    input_estimate: u64,
    events: u64,
    finished: bool,
) -> Tokens {
    match usage {
        Some(u) => Tokens {
            input: u.prompt_tokens,
            output: if finished {
                u.completion_tokens
            } else {
                u.completion_tokens.max(events)
            },
            cache_read: u.cache_read_tokens(),
            cache_write: u.cache_write_tokens,
        },
        None => Tokens {
            input: input_estimate,
            output: events,
            ..Tokens::default()
        },
    }
}

/// What the client has been told so far.
#[derive(Debug, Default)]
struct Seam {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    text: String,
    /// Continuation is off: a tool call, a finish, a second choice or
    /// something unreadable came.
    closed: bool,
}

impl Seam {
    /// Takes in one chunk of the first leg.
    fn observe(&mut self, chunk: &Value) {
        let first = |v: &mut Option<Value>, name: &str| {
            if v.is_none() {
                *v = chunk.get(name).cloned();
            }
        };
        first(&mut self.id, "id");
        first(&mut self.created, "created");
        first(&mut self.model, "model");
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for choice in choices {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0
                || choice.get("finish_reason").is_some_and(|f| !f.is_null())
            {
                self.closed = true;
            }
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            if delta.get("tool_calls").is_some_and(|t| !t.is_null())
                || delta.get("function_call").is_some_and(|t| !t.is_null())
            {
                self.closed = true;
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                self.text.push_str(text);
            }
        }
    }
}

/// The first leg's stream, continued by a second leg when it breaks (see
/// the module doc). `first_outcome` is where the first leg reports its
/// end; `report` gets the whole answer's outcome once, the second leg in
/// [`StreamOutcome::continued`].
pub fn continuable(
    first: ByteStream,
    first_outcome: LegOutcome,
    input_estimate: u64,
    start: StartLeg,
    report: StreamEnd,
) -> ByteStream {
    Box::pin(Continuable {
        state: State::First(first),
        parser: SseParser::new(),
        seam: Seam::default(),
        held_error: None,
        start: Some(start),
        splice: None,
        first_outcome,
        input_estimate,
        report: Some(report),
    })
}

enum State {
    First(ByteStream),
    Starting(Pin<Box<dyn Future<Output = Option<Leg>>>>),
    Second(ByteStream),
    Done,
}

struct Continuable {
    state: State,
    /// The first leg's events.
    parser: SseParser,
    seam: Seam,
    /// The first leg's error event, held back.
    held_error: Option<Vec<u8>>,
    start: Option<StartLeg>,
    /// The second leg's rewriting, and who answered it.
    splice: Option<(Splice, Served, LegOutcome)>,
    first_outcome: LegOutcome,
    input_estimate: u64,
    report: Option<StreamEnd>,
}

impl Continuable {
    /// The first leg's bytes: passed on, except an error event, held.
    fn pass_first(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.parser.push(bytes);
        let mut out = Vec::new();
        while let Some(ev) = self.parser.next_event() {
            let chunk = serde_json::from_str::<Value>(&ev.data).ok();
            match &chunk {
                Some(c) if c.get("error").is_some() && self.held_error.is_none() => {
                    let mut held = Vec::new();
                    encode_data(&mut held, ev.data.as_bytes());
                    self.held_error = Some(held);
                    continue;
                }
                Some(c) => self.seam.observe(c),
                None if ev.data == "[DONE]" => {}
                None => self.seam.closed = true,
            }
            encode_data(&mut out, ev.data.as_bytes());
        }
        out
    }

    /// Reports the whole answer once.
    fn finish(&mut self, complete: bool) {
        let Some(report) = self.report.take() else {
            return;
        };
        let first = self.first_outcome.borrow_mut().take();
        let (usage, events) = first.map_or((None, 0), |o| (o.usage, o.events));
        let continued = self.splice.take().map(|(_, served, outcome)| {
            let o = outcome.borrow_mut().take();
            Continued {
                served,
                usage: o.as_ref().and_then(|o| o.usage),
                events: o.map_or(0, |o| o.events),
                prefix_bytes: self.seam.text.len() as u64,
            }
        });
        report(StreamOutcome {
            usage,
            events,
            complete,
            continued,
        });
    }
}

impl Stream for Continuable {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::First(body) => match body.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(bytes))) => {
                        let out = this.pass_first(&bytes);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(out)));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        let start = this.start.take();
                        match (this.held_error.is_some(), this.seam.closed, start) {
                            (true, false, Some(start)) if !this.seam.text.is_empty() => {
                                let used = this.first_usage().output;
                                this.state = State::Starting(start(this.seam.text.clone(), used));
                            }
                            _ => {
                                this.state = State::Done;
                                let complete = this.held_error.is_none();
                                this.finish(complete);
                                if let Some(e) = this.held_error.take() {
                                    return Poll::Ready(Some(Ok(e)));
                                }
                                return Poll::Ready(None);
                            }
                        }
                    }
                },
                State::Starting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(leg)) => {
                        let splice = Splice::new(&this.seam, this.first_usage());
                        this.splice = Some((splice, leg.served, leg.outcome));
                        this.state = State::Second(leg.body);
                    }
                    Poll::Ready(None) => {
                        this.state = State::Done;
                        this.finish(false);
                        return Poll::Ready(this.held_error.take().map(Ok));
                    }
                },
                State::Second(body) => {
                    let next = body.poll_next_unpin(cx);
                    let Some((splice, _, outcome)) = &mut this.splice else {
                        return Poll::Ready(None);
                    };
                    match next {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(bytes))) => {
                            let out = splice.rewrite(&bytes);
                            if !out.is_empty() {
                                return Poll::Ready(Some(Ok(out)));
                            }
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                        Poll::Ready(None) => {
                            let out = splice.end();
                            let complete = outcome.borrow().as_ref().is_some_and(|o| o.complete);
                            this.state = State::Done;
                            this.finish(complete);
                            if !out.is_empty() {
                                return Poll::Ready(Some(Ok(out)));
                            }
                            return Poll::Ready(None);
                        }
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl Continuable {
    /// The first leg's tokens as the client's usage counts them.
    fn first_usage(&self) -> Tokens {
        let first = self.first_outcome.borrow();
        let (usage, events, complete) = first
            .as_ref()
            .map_or((None, 0, false), |o| (o.usage, o.events, o.complete));
        leg_tokens(usage.as_ref(), self.input_estimate, events, complete)
    }
}

impl Drop for Continuable {
    /// The client went away: the legs' own streams settle as cut (the
    /// second dropped first, so that its outcome is in).
    fn drop(&mut self) {
        self.state = State::Done;
        self.finish(false);
    }
}

/// Rewrites the second leg's chunks into the first leg's stream.
struct Splice {
    parser: SseParser,
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    /// The first leg's text, for the overlap.
    before: String,
    /// The first leg's tokens, added to the second's usage.
    first: Tokens,
    /// Text held while the seam is undecided, and the chunk it came in.
    held: String,
    held_chunk: Option<Value>,
    decided: bool,
}

impl Splice {
    fn new(seam: &Seam, first: Tokens) -> Splice {
        Splice {
            parser: SseParser::new(),
            id: seam.id.clone(),
            created: seam.created.clone(),
            model: seam.model.clone(),
            before: seam.text.clone(),
            first,
            held: String::new(),
            held_chunk: None,
            decided: false,
        }
    }

    fn rewrite(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.parser.push(bytes);
        let mut out = Vec::new();
        while let Some(ev) = self.parser.next_event() {
            self.event(&ev.data, &mut out);
        }
        out
    }

    /// The second leg ended: what is still held.
    fn end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(ev) = self.parser.finish() {
            self.event(&ev.data, &mut out);
        }
        self.release(&mut out);
        out
    }

    fn event(&mut self, data: &str, out: &mut Vec<u8>) {
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            // `[DONE]`, or something unreadable: after the held text.
            self.release(out);
            encode_data(out, data.as_bytes());
            return;
        };
        if chunk.get("error").is_some() {
            self.release(out);
            encode_data(out, data.as_bytes());
            return;
        }
        for (name, value) in [
            ("id", &self.id),
            ("created", &self.created),
            ("model", &self.model),
        ] {
            if let Some(v) = value {
                chunk[name] = v.clone();
            }
        }
        if let Some(usage) = chunk.get_mut("usage").filter(|u| u.is_object()) {
            self.add_first(usage);
        }
        let mut text = None;
        if let Some(delta) = chunk
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.first_mut())
            .and_then(|c| c.get_mut("delta"))
            .and_then(Value::as_object_mut)
        {
            delta.remove("role");
            if !self.decided
                && let Some(t) = delta.get("content").and_then(Value::as_str)
            {
                text = Some(t.to_owned());
            }
        }
        if let Some(t) = text {
            self.held.push_str(&t);
            if self.held_chunk.is_none() {
                self.held_chunk = Some(chunk.clone());
            }
            let finish = chunk_finishes(&chunk);
            if !self.all_overlap() || finish {
                self.release(out);
                if finish {
                    set_content(&mut chunk, None);
                    write(out, &chunk);
                }
            }
            return;
        }
        // Nothing said yet, and this says nothing that fixes the seam (a
        // role-only chunk, a filter report): passed on, the seam still open.
        let neutral = self.held_chunk.is_none()
            && !chunk_finishes(&chunk)
            && chunk.get("usage").is_none_or(Value::is_null)
            && !has_tool_calls(&chunk);
        if !neutral {
            self.release(out);
        }
        if is_empty_delta(&chunk) {
            return;
        }
        write(out, &chunk);
    }

    /// Whether all the held text may still be overlap (it begins some
    /// suffix of the first leg's text, within the longest overlap looked
    /// for: it occurs in that tail): then hold on.
    fn all_overlap(&self) -> bool {
        if self.held.len() >= MAX_OVERLAP {
            return false;
        }
        let mut from = self.before.len().saturating_sub(MAX_OVERLAP);
        while !self.before.is_char_boundary(from) {
            from += 1;
        }
        self.before[from..].contains(self.held.as_str())
    }

    /// Decides the seam: the held text, its overlap cut, in one chunk.
    fn release(&mut self, out: &mut Vec<u8>) {
        if self.decided {
            return;
        }
        self.decided = true;
        let Some(mut chunk) = self.held_chunk.take() else {
            return;
        };
        let cut = overlap(&self.before, &self.held);
        let rest = &self.held[cut..];
        if rest.is_empty() {
            return;
        }
        set_content(&mut chunk, Some(rest));
        if let Some(choice) = chunk
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.first_mut())
        {
            choice["finish_reason"] = Value::Null;
        }
        write(out, &chunk);
    }

    /// Adds the first leg's tokens to the second leg's usage object.
    fn add_first(&self, usage: &mut Value) {
        let add = |usage: &mut Value, name: &str, n: u64| {
            let v = usage.get(name).and_then(Value::as_u64).unwrap_or(0);
            usage[name] = Value::from(v + n);
        };
        add(usage, "prompt_tokens", self.first.input);
        add(usage, "completion_tokens", self.first.output);
        add(usage, "total_tokens", self.first.input + self.first.output);
    }
}

/// The overlap of a continuation with what came before: the longest start
/// of `after` that is also the end of `before`, beginning at a word
/// boundary of `before` (so a word's last letters that happen to begin the
/// continuation are not taken for a repeat). 0 when there is none.
pub fn overlap(before: &str, after: &str) -> usize {
    let max = after.len().min(before.len()).min(MAX_OVERLAP);
    (1..=max)
        .rev()
        .filter(|&k| after.is_char_boundary(k) && before.is_char_boundary(before.len() - k))
        .find(|&k| {
            let start = before.len() - k;
            before[start..] == after[..k] && {
                let prev = before[..start].chars().next_back();
                let first = after[..k].chars().next();
                prev.is_none_or(|c| !c.is_alphanumeric())
                    || first.is_some_and(|c| !c.is_alphanumeric())
            }
        })
        .unwrap_or(0)
}

fn has_tool_calls(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("delta"))
        .and_then(|d| d.get("tool_calls"))
        .is_some_and(|t| !t.is_null())
}

fn chunk_finishes(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("finish_reason"))
        .is_some_and(|f| !f.is_null())
}

fn set_content(chunk: &mut Value, text: Option<&str>) {
    if let Some(delta) = chunk
        .get_mut("choices")
        .and_then(Value::as_array_mut)
        .and_then(|c| c.first_mut())
        .and_then(|c| c.get_mut("delta"))
        .and_then(Value::as_object_mut)
    {
        match text {
            Some(t) => {
                delta.insert("content".into(), Value::from(t));
            }
            None => {
                delta.remove("content");
            }
        }
    }
}

/// A chunk with nothing left to say: one choice, an empty delta, no finish,
/// no usage.
fn is_empty_delta(chunk: &Value) -> bool {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return false;
    };
    chunk.get("usage").is_none_or(Value::is_null)
        && choices.len() == 1
        && !chunk_finishes(chunk)
        && choices[0]
            .get("delta")
            .and_then(Value::as_object)
            .is_some_and(|d| d.values().all(Value::is_null))
}

fn write(out: &mut Vec<u8>, chunk: &Value) {
    if let Ok(json) = serde_json::to_vec(chunk) {
        encode_data(out, &json);
    }
}

#[cfg(test)]
mod tests;
