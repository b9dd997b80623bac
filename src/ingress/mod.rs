//! Client protocols besides OpenAI chat completions: Anthropic Messages
//! ([`messages`]) and OpenAI Responses ([`responses`]), translated to and
//! from the gateway's one internal representation, the OpenAI
//! chat-completions request, `chat.completion` and `chat.completion.chunk`
//! stream that the provider adapters in [`crate::providers`] take and give.
//!
//! Everything here is sans-IO: bytes and values in, bytes and values out.
//! When the client's protocol is also the target's wire format (Messages to
//! an Anthropic target, Responses to OpenAI or Azure), the request is passed
//! through with only `model` rewritten ([`messages::MessagesRequest::to_anthropic_body`],
//! [`responses::ResponsesRequest::to_openai_body`]); otherwise it goes
//! through the chat format and back, never through a translator per pair.
//!
//! # How to integrate (translated targets)
//!
//! | step | Anthropic Messages (`POST /v1/messages`) | OpenAI Responses (`POST /v1/responses`) |
//! |------|------------------------------------------|-----------------------------------------|
//! | parse the body | [`messages::MessagesRequest::parse`] (400s in Anthropic's words) | [`responses::ResponsesRequest::parse`] |
//! | route and price | its `model`, `stream`, `max_tokens`, `images`, `has_tools`, [`messages::MessagesRequest::user_id`] | its `model`, `stream`, `max_output_tokens`, `images`, `has_tools`, [`responses::ResponsesRequest::user`] |
//! | the chat body | [`messages::messages_request_to_chat_body`] | [`responses::responses_request_to_chat_body`] |
//! | then | `ChatRequest::parse` of that body, and the usual prepare, route, dispatch | same |
//! | non-stream answer | [`messages::chat_response_to_message`] on the `chat.completion` that [`crate::providers::chat_response`] returned | [`responses::chat_response_to_response`] |
//! | stream | wrap the committed client stream: [`convert_stream`] with a [`messages::ChunksToMessageEvents`] | same with a [`responses::ChunksToResponseEvents`] |
//! | errors before the stream | [`messages::anthropic_error_status`] and [`messages::anthropic_error_body`] (same `Retry-After`) | `GatewayError::to_body` as today (OpenAI's shape) |
//! | `POST /v1/messages/count_tokens` | [`messages::MessagesRequest::parse_count_tokens`]; Anthropic target: same pass-through to [`messages::COUNT_TOKENS_PATH`]; others: [`messages::count_tokens_estimate`] and [`messages::count_tokens_body`] | — |
//!
//! The converters take the OpenAI SSE bytes the gateway already produces for
//! a chat-completions client, so they sit *after* the existing pipeline
//! ([`crate::gateway::Translated`], the first-token commit, and
//! [`crate::gateway::into_client_stream`]) without changing it: failover and
//! the commit decision still look at OpenAI chunks. The chat body these
//! modules build always asks for `stream_options.include_usage`, so the
//! usage chunk arrives and settlement reads usage from the provider's
//! translator as it does today ([`ChunkConverter::usage`] reads it too). An
//! error that `into_client_stream` renders as an OpenAI `data: {"error":...}`
//! event is recognised and re-rendered in the client's protocol (its status
//! read back from its code, or from a provider's message, so an overload
//! stays an overload); calling [`ChunkConverter::error`] with the
//! [`GatewayError`] itself is exact.
//!
//! `message_start` must carry an input token count before the upstream has
//! reported one: give [`messages::ChunksToMessageEvents::new`]
//! [`messages::count_tokens_estimate`], or the gateway's own
//! `Accounting::input_estimate`; the final `message_delta` carries the real
//! counts, which the SDKs adopt.
//!
//! Not here (pass-through targets): the `anthropic-version` and
//! `anthropic-beta` request headers must reach an Anthropic target as sent;
//! a pass-through stream needs a relaying `StreamTranslator` that reads
//! usage from `message_start`/`message_delta` (cache creation and reads
//! included) or from `response.completed`, a commit test that knows those
//! events (`carries_output` looks for OpenAI fields), and errors after the
//! commit rendered in the client's protocol rather than by
//! `into_client_stream`'s OpenAI `error_event`.
//!
//! Shared here: the reader that turns an OpenAI chunk stream into content
//! blocks opened, filled and closed one at a time (Anthropic's content
//! blocks and the Responses output items have that same shape), the parsed
//! `chat.completion`, usage, stop reasons and stable ids.

pub mod messages;
pub mod responses;

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::Usage;
use crate::error::GatewayError;
use crate::http::ByteStream;
use crate::providers::fnv1a;
use crate::sse::SseParser;

// ---- The stream converters' common interface -----------------------------------

/// Turns the gateway's OpenAI `chat.completion.chunk` stream into a client
/// protocol's events, incrementally.
pub trait ChunkConverter {
    /// Handles whatever bytes of the OpenAI SSE stream arrived (split
    /// anywhere), appending the client's bytes to `out`.
    fn push(&mut self, openai_sse: &[u8], out: &mut Vec<u8>);
    /// The OpenAI stream ended: closes the client's stream, or reports it
    /// cut short when the answer never finished.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Ends the client's stream with this error (nothing more is written).
    fn error(&mut self, e: &GatewayError, out: &mut Vec<u8>);
    /// Usage from the stream's usage chunk, once it has been seen.
    fn usage(&self) -> Option<Usage>;
}

/// Wraps a client stream of OpenAI chunk bytes (what
/// [`crate::gateway::into_client_stream`] returns) so that it yields the
/// converter's protocol instead. A transport error ends it with the
/// converter's error event.
pub fn convert_stream(stream: ByteStream, converter: Box<dyn ChunkConverter>) -> ByteStream {
    Box::pin(Converted {
        inner: stream,
        converter,
        done: false,
    })
}

struct Converted {
    inner: ByteStream,
    converter: Box<dyn ChunkConverter>,
    done: bool,
}

impl Stream for Converted {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => this.converter.push(&bytes, &mut out),
                Poll::Ready(Some(Err(message))) => {
                    this.done = true;
                    let e = GatewayError::UpstreamUnreachable {
                        provider: "upstream".to_owned(),
                        message,
                    };
                    this.converter.error(&e, &mut out);
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.converter.finish(&mut out);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out)));
            }
        }
    }
}

// ---- What the converters read from OpenAI -----------------------------------------

/// OpenAI usage as the converters read it (every count optional: servers
/// differ in what they send, and some send `null`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    completion_tokens_details: Option<TokenDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
struct TokenDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageIn {
    /// Input tokens, cached ones included (OpenAI's `prompt_tokens`).
    pub(crate) fn prompt(&self) -> u64 {
        self.prompt_tokens.unwrap_or(0)
    }

    /// Input tokens read from the provider's cache.
    pub(crate) fn cached(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }

    /// Output tokens, reasoning included.
    pub(crate) fn completion(&self) -> u64 {
        self.completion_tokens.unwrap_or(0)
    }

    /// Output tokens spent reasoning, when the provider says.
    pub(crate) fn reasoning(&self) -> Option<u64> {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
    }

    /// The gateway's usage type, for settlement.
    pub(crate) fn to_usage(self) -> Usage {
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens);
        Usage::new(self.prompt(), self.completion(), cached)
    }
}

/// Why the answer stopped, in the terms both client protocols need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A natural end (or an unknown reason).
    EndTurn,
    /// One of the request's stop sequences, when the upstream says which
    /// (vLLM's `stop_reason`); OpenAI's own format does not.
    Sequence(String),
    /// The token cap.
    MaxTokens,
    /// The model called tools.
    ToolUse,
    /// A content filter or a refusal.
    Refusal,
}

/// Reads a finish reason. A `stop` that came with tool calls is a tool
/// stop (some servers say `stop` there; agents loop on the tool stop).
pub(crate) fn finish_reason_to_stop(
    finish_reason: Option<&str>,
    stop_reason: Option<&serde_json::Value>,
    called_tools: bool,
) -> Stop {
    match finish_reason {
        Some("length") => Stop::MaxTokens,
        Some("content_filter") => Stop::Refusal,
        Some("tool_calls" | "function_call") => Stop::ToolUse,
        _ if called_tools => Stop::ToolUse,
        _ => match stop_reason.and_then(serde_json::Value::as_str) {
            Some(seq) => Stop::Sequence(seq.to_owned()),
            None => Stop::EndTurn,
        },
    }
}

/// A non-streamed `chat.completion`, reduced to what the client protocols
/// carry: the first choice's reasoning, text and tool calls.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// The upstream's completion id (may be empty).
    pub(crate) id: String,
    pub(crate) reasoning: Option<String>,
    pub(crate) text: Option<String>,
    /// `(call id, function name, JSON arguments)`.
    pub(crate) tool_calls: Vec<(String, String, String)>,
    pub(crate) stop: Option<Stop>,
    pub(crate) usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct CompletionIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Option<Vec<CompletionChoiceIn>>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct CompletionChoiceIn {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<CompletionMessageIn>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    stop_reason: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct CompletionMessageIn {
    #[serde(default)]
    content: Option<TextIn>,
    #[serde(default)]
    reasoning_content: Option<TextIn>,
    #[serde(default)]
    reasoning: Option<TextIn>,
    #[serde(default)]
    refusal: Option<TextIn>,
    #[serde(default)]
    tool_calls: Option<Vec<CompletionToolCallIn>>,
}

/// A text field that some servers send as a string and others as a list
/// of `{"type":"text","text"}` parts; anything else reads as no text.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextIn {
    Text(String),
    Parts(Vec<TextPartIn>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct TextPartIn {
    #[serde(default)]
    text: Option<String>,
}

impl TextIn {
    fn into_text(self) -> Option<String> {
        match self {
            TextIn::Text(s) => Some(s),
            TextIn::Parts(parts) => Some(parts.into_iter().filter_map(|p| p.text).collect()),
            TextIn::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct CompletionToolCallIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<CompletionFunctionIn>,
}

#[derive(Deserialize)]
struct CompletionFunctionIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Parses a `chat.completion` body; one that is not such an object is the
/// upstream's fault (and worth another target).
pub(crate) fn parse_completion(provider: &str, body: &[u8]) -> Result<Answer, GatewayError> {
    let invalid = |message: String| GatewayError::UpstreamInvalidResponse {
        provider: provider.to_owned(),
        message,
    };
    let completion: CompletionIn =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a chat completion: {e}")))?;
    let id = completion.id.unwrap_or_default();
    let choice = completion
        .choices
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0)
        .ok_or_else(|| invalid("a chat completion without choices".to_owned()))?;
    let mut answer = Answer {
        id,
        usage: completion.usage,
        ..Answer::default()
    };
    if let Some(m) = choice.message {
        let nonempty = |t: Option<TextIn>| t.and_then(TextIn::into_text).filter(|s| !s.is_empty());
        answer.reasoning = nonempty(m.reasoning_content).or_else(|| nonempty(m.reasoning));
        answer.text = match (nonempty(m.content), nonempty(m.refusal)) {
            (Some(text), _) => Some(text),
            (None, refusal) => refusal,
        };
        for (i, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let function = call.function.unwrap_or(CompletionFunctionIn {
                name: None,
                arguments: None,
            });
            let call_id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| generated_call_id(&answer.id, i));
            answer.tool_calls.push((
                call_id,
                function.name.unwrap_or_default(),
                function.arguments.unwrap_or_default(),
            ));
        }
    }
    answer.stop = Some(finish_reason_to_stop(
        choice.finish_reason.as_deref(),
        choice.stop_reason.as_ref(),
        !answer.tool_calls.is_empty(),
    ));
    Ok(answer)
}

// ---- The chunk reader ----------------------------------------------------------------

/// What the answer streams, one block at a time: Anthropic's content
/// blocks and the Responses API's output items alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// `reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter,
    /// Ollama) deltas.
    Reasoning,
    /// `content` (and `refusal`) deltas.
    Text,
    /// One tool call's argument fragments.
    Tool,
}

/// One step of the answer, in order.
#[derive(Debug)]
pub(crate) enum Part<'a> {
    /// The first chunk arrived; `id` is the upstream's (may be empty).
    Start { id: &'a str },
    /// Block `index` (0, 1, ... in order) opens. The previous one, if any,
    /// was closed first.
    Open {
        index: usize,
        kind: BlockKind,
        /// Tool blocks: the call id and the function's name.
        call_id: &'a str,
        name: &'a str,
    },
    /// Text for block `index`. Normally the open block; a fragment of a
    /// tool call that arrives after another block opened (no upstream the
    /// gateway knows does this) goes to its own, closed, block index.
    Delta { index: usize, text: &'a str },
    /// Block `index` is complete; `cut` when the token cap or a content
    /// filter ended it.
    Close { index: usize, cut: bool },
    /// The answer is complete (every block closed).
    End { stop: Stop, usage: Option<UsageIn> },
    /// The stream failed; nothing follows.
    Fail(Failure),
}

/// A failure to report in the client's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The HTTP status it stands for (529 for an overload, as
    /// [`messages::anthropic_error_status`] decides).
    pub(crate) status: u16,
    /// OpenAI's `error.code`.
    pub(crate) code: String,
    /// A sentence.
    pub(crate) message: String,
}

impl Failure {
    /// From the gateway's error.
    pub(crate) fn from_error(e: &GatewayError) -> Failure {
        let code = serde_json::from_slice::<ErrorBodyIn>(&e.to_body())
            .ok()
            .and_then(|b| b.error.code)
            .unwrap_or_else(|| "server_error".to_owned());
        Failure {
            status: messages::anthropic_error_status(e),
            code,
            message: e.to_string(),
        }
    }

    /// From the OpenAI error event `into_client_stream` writes. The status
    /// is read back from the code, and for a provider's error from its
    /// message (`Provider `x` returned 529: ...`), so an overload stays one.
    fn from_openai_error_event(data: &str) -> Failure {
        let Ok(ErrorBodyIn { error }) = serde_json::from_str::<ErrorBodyIn>(data) else {
            return Failure::invalid(format!("an unreadable error event: {data}"));
        };
        let message = error.message.unwrap_or_else(|| "stream error".to_owned());
        let code = error.code.unwrap_or_default();
        let status = match (code.as_str(), error.kind.as_deref()) {
            ("rate_limit_exceeded" | "insufficient_quota", _) | (_, Some("rate_limit_error")) => {
                429
            }
            ("upstream_timeout", _) => 504,
            ("no_target_available", _) => 503,
            ("invalid_api_key", _) | (_, Some("authentication_error")) => 401,
            (_, Some("invalid_request_error")) => 400,
            ("upstream_error", _) => provider_status_in(&message).unwrap_or(502),
            _ => 500,
        };
        let status = if matches!(status, 503 | 529) {
            529
        } else {
            status
        };
        Failure {
            status,
            code: if code.is_empty() {
                "server_error".to_owned()
            } else {
                code
            },
            message,
        }
    }

    /// The upstream sent what is not an OpenAI chunk stream.
    fn invalid(message: String) -> Failure {
        Failure {
            status: 502,
            code: "upstream_invalid_response".to_owned(),
            message,
        }
    }
}

/// The status in `Provider `name` returned 503: ...` ([`GatewayError`]'s
/// own wording).
fn provider_status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("` returned ")?;
    rest.get(..3)?.parse().ok()
}

#[derive(Deserialize)]
struct ErrorBodyIn {
    error: ErrorIn,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// One `chat.completion.chunk`, as the reader reads it. Text fields are
/// kept raw and read leniently: a server that sends an odd shape in one of
/// them must not break the stream.
#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChunkChoiceIn<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    delta: Option<ChunkDeltaIn<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    stop_reason: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkDeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ChunkToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct ChunkToolCallIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<ChunkFunctionIn<'a>>,
}

#[derive(Deserialize)]
struct ChunkFunctionIn<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// A raw JSON string's text (borrowed when it has no escapes); `None` for
/// null or any other value.
fn json_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let s = raw?.get();
    if !s.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(s) {
        Ok(text) => Some(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(s).ok().map(Cow::Owned),
    }
}

/// A tool call of the stream.
#[derive(Debug)]
struct ToolSlot {
    /// OpenAI's `index`.
    openai_index: u32,
    call_id: String,
    block: usize,
}

/// OpenAI chunk SSE -> [`Part`]s. Incremental: bytes may be split anywhere.
#[derive(Debug, Default)]
pub(crate) struct ChunkReader {
    parser: SseParser,
    started: bool,
    ended: bool,
    upstream_id: String,
    /// Kind of each block, by index.
    blocks: Vec<BlockKind>,
    /// The open block, if any.
    open: Option<usize>,
    tools: Vec<ToolSlot>,
    finish_reason: Option<String>,
    stop_reason: Option<serde_json::Value>,
    usage: Option<UsageIn>,
}

/// Where parts go.
pub(crate) type PartSink<'s> = dyn FnMut(Part<'_>) + 's;

impl ChunkReader {
    /// Usage from the usage chunk, once seen.
    pub(crate) fn usage(&self) -> Option<UsageIn> {
        self.usage
    }

    /// Reads the bytes that arrived.
    pub(crate) fn push(&mut self, bytes: &[u8], sink: &mut PartSink<'_>) {
        if self.ended {
            return;
        }
        self.parser.push(bytes);
        while let Some(ev) = self.parser.next_event() {
            self.on_data(&ev.data, sink);
            if self.ended {
                return;
            }
        }
    }

    /// The upstream ended. Without `[DONE]` the answer is complete only if
    /// a finish reason came (some servers omit the sentinel).
    pub(crate) fn finish(&mut self, sink: &mut PartSink<'_>) {
        if self.ended {
            return;
        }
        while let Some(ev) = self.parser.finish() {
            self.on_data(&ev.data, sink);
            if self.ended {
                return;
            }
        }
        if self.finish_reason.is_some() {
            self.end(sink);
        } else {
            self.fail(
                Failure {
                    status: 502,
                    code: "upstream_unreachable".to_owned(),
                    message: "The stream ended before the answer was complete.".to_owned(),
                },
                sink,
            );
        }
    }

    /// Ends the stream with a failure.
    pub(crate) fn fail(&mut self, failure: Failure, sink: &mut PartSink<'_>) {
        if self.ended {
            return;
        }
        self.ended = true;
        sink(Part::Fail(failure));
    }

    fn on_data(&mut self, data: &str, sink: &mut PartSink<'_>) {
        let data = data.trim();
        if data == "[DONE]" {
            self.end(sink);
            return;
        }
        if data.starts_with("{\"error\"") {
            self.fail(Failure::from_openai_error_event(data), sink);
            return;
        }
        let chunk: ChunkIn<'_> = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.fail(Failure::invalid(format!("invalid stream chunk: {e}")), sink);
                return;
            }
        };
        if !self.started {
            self.started = true;
            self.upstream_id = chunk.id.as_deref().unwrap_or_default().to_owned();
            sink(Part::Start {
                id: &self.upstream_id,
            });
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        // One answer per request: only the first choice is read.
        for choice in chunk.choices.iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = &choice.delta {
                let reasoning = json_text(delta.reasoning_content)
                    .filter(|t| !t.is_empty())
                    .or_else(|| json_text(delta.reasoning));
                for (kind, text) in [
                    (BlockKind::Reasoning, reasoning),
                    (BlockKind::Text, json_text(delta.content)),
                    (BlockKind::Text, json_text(delta.refusal)),
                ] {
                    if let Some(text) = text.filter(|t| !t.is_empty()) {
                        let index = self.ensure_open(kind, "", "", sink);
                        sink(Part::Delta { index, text: &text });
                    }
                }
                for (position, call) in delta.tool_calls.iter().flatten().enumerate() {
                    self.tool_fragment(position, call, sink);
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.to_string());
                self.stop_reason = choice.stop_reason.clone();
                self.close(sink);
            }
        }
    }

    /// The open block of `kind`, opening one (and closing another) if need be.
    fn ensure_open(
        &mut self,
        kind: BlockKind,
        call_id: &str,
        name: &str,
        sink: &mut PartSink<'_>,
    ) -> usize {
        if kind != BlockKind::Tool
            && let Some(index) = self.open
            && self.blocks.get(index) == Some(&kind)
        {
            return index;
        }
        self.close(sink);
        let index = self.blocks.len();
        self.blocks.push(kind);
        self.open = Some(index);
        sink(Part::Open {
            index,
            kind,
            call_id,
            name,
        });
        index
    }

    fn tool_fragment(
        &mut self,
        position: usize,
        call: &ChunkToolCallIn<'_>,
        sink: &mut PartSink<'_>,
    ) {
        let openai_index = call
            .index
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let id = call.id.as_deref().filter(|id| !id.is_empty());
        let args = call
            .function
            .as_ref()
            .and_then(|f| f.arguments.as_deref())
            .unwrap_or_default();
        // A known call, unless a new id reuses its index (some servers send
        // every call at index 0).
        let known = self
            .tools
            .iter()
            .rev()
            .find(|t| t.openai_index == openai_index)
            .filter(|t| id.is_none_or(|id| id == t.call_id))
            .map(|t| t.block);
        let block = match known {
            Some(block) => block,
            None => {
                let call_id = match id {
                    Some(id) => id.to_owned(),
                    None => generated_call_id(&self.upstream_id, self.tools.len()),
                };
                let name = call
                    .function
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or_default();
                let block = self.ensure_open(BlockKind::Tool, &call_id, name, sink);
                self.tools.push(ToolSlot {
                    openai_index,
                    call_id,
                    block,
                });
                block
            }
        };
        if !args.is_empty() {
            sink(Part::Delta {
                index: block,
                text: args,
            });
        }
    }

    fn close(&mut self, sink: &mut PartSink<'_>) {
        if let Some(index) = self.open.take() {
            let cut = matches!(
                self.finish_reason.as_deref(),
                Some("length" | "content_filter")
            );
            sink(Part::Close { index, cut });
        }
    }

    fn end(&mut self, sink: &mut PartSink<'_>) {
        if !self.started {
            // `[DONE]` with no chunk at all: nothing was answered.
            self.fail(
                Failure::invalid("The stream ended without any answer.".to_owned()),
                sink,
            );
            return;
        }
        self.close(sink);
        self.ended = true;
        let stop = finish_reason_to_stop(
            self.finish_reason.as_deref(),
            self.stop_reason.as_ref(),
            !self.tools.is_empty(),
        );
        sink(Part::End {
            stop,
            usage: self.usage,
        });
    }
}

// ---- Small shared helpers --------------------------------------------------------------

/// A stable id: `prefix` and 24 hex digits derived from `seed`, so the same
/// upstream answer always gets the same id and no randomness is needed.
pub(crate) fn stable_id(prefix: &str, seed: &str) -> String {
    let a = fnv1a(seed.as_bytes());
    let b = fnv1a(format!("{seed}#").as_bytes());
    format!("{prefix}{a:016x}{:08x}", b >> 32)
}

/// A call id for a tool call the upstream sent without one.
fn generated_call_id(upstream_id: &str, n: usize) -> String {
    stable_id("call_", &format!("{upstream_id}/{n}"))
}

/// How many objects in the JSON text have `"type": "<value>"`: a cheap count
/// of images or documents for routing and pricing, without a parse. A false
/// positive needs a string with escaped quotes, which never matches here.
pub(crate) fn count_type_values(json: &str, value: &str) -> usize {
    let bytes = json.as_bytes();
    let mut count = 0;
    let mut from = 0;
    while let Some(i) = json[from..].find("\"type\"") {
        let mut j = from + i + 6;
        from = j;
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if bytes.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let rest = &json[j..];
        if rest.starts_with('"')
            && rest[1..].starts_with(value)
            && rest[1 + value.len()..].starts_with('"')
        {
            count += 1;
        }
    }
    count
}

/// Removes the whitespace between JSON tokens (OpenAI's `arguments` are
/// compact); the order and spelling of everything else are kept.
pub(crate) fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// A 400 naming the parameter.
pub(crate) fn invalid(message: String, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: Some(param.to_owned()),
    }
}

/// Serializes a value the gateway built (plain strings, numbers and raw
/// JSON, which cannot fail to serialize).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part the reader emits for `input`, fed in `chunks`, as text.
    fn parts(chunks: &[&[u8]]) -> Vec<String> {
        let mut reader = ChunkReader::default();
        let mut seen = Vec::new();
        let mut sink = |p: Part<'_>| seen.push(format!("{p:?}"));
        for c in chunks {
            reader.push(c, &mut sink);
        }
        reader.finish(&mut sink);
        seen
    }

    #[test]
    fn blocks_open_one_at_a_time_in_order() {
        let input = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
            "data: [DONE]\n\n",
        );
        let got = parts(&[input.as_bytes()]);
        assert_eq!(
            got,
            [
                r#"Start { id: "c1" }"#,
                r#"Open { index: 0, kind: Reasoning, call_id: "", name: "" }"#,
                r#"Delta { index: 0, text: "hm" }"#,
                r#"Close { index: 0, cut: false }"#,
                r#"Open { index: 1, kind: Text, call_id: "", name: "" }"#,
                r#"Delta { index: 1, text: "Hi" }"#,
                r#"Close { index: 1, cut: false }"#,
                r#"Open { index: 2, kind: Tool, call_id: "t1", name: "f" }"#,
                r#"Delta { index: 2, text: "{\"a\"" }"#,
                r#"Delta { index: 2, text: ":1}" }"#,
                r#"Close { index: 2, cut: false }"#,
                "End { stop: ToolUse, usage: Some(UsageIn { prompt_tokens: Some(3), completion_tokens: Some(4), prompt_tokens_details: None, completion_tokens_details: None }) }",
            ]
        );
    }

    #[test]
    fn parallel_calls_at_one_index_with_new_ids_are_new_calls() {
        let input = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        );
        let got = parts(&[input.as_bytes()]);
        assert!(
            got.contains(&r#"Open { index: 1, kind: Tool, call_id: "b", name: "g" }"#.to_owned())
        );
        // `stop` with tool calls is a tool stop; no [DONE] after a finish is fine.
        assert!(
            got.last().unwrap().starts_with("End { stop: ToolUse"),
            "{got:?}"
        );
    }

    #[test]
    fn a_stream_cut_before_its_finish_fails_and_an_error_event_is_read() {
        let got = parts(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"]);
        assert!(
            got.last()
                .unwrap()
                .starts_with("Fail(Failure { status: 502"),
            "{got:?}"
        );
        let got = parts(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            b"data: {\"error\":{\"message\":\"Provider `anthropic` returned 529: Overloaded\",\"type\":\"server_error\",\"code\":\"upstream_error\",\"param\":null}}\n\n",
        ]);
        assert!(
            got.last()
                .unwrap()
                .starts_with("Fail(Failure { status: 529, code: \"upstream_error\""),
            "{got:?}"
        );
        let got = parts(&[b"data: {\"choices\":[{\"delta\":{\"content\":"]);
        assert!(
            got.last()
                .unwrap()
                .starts_with("Fail(Failure { status: 502"),
            "{got:?}"
        );
        let got = parts(&[b"data: {not json}\n\n"]);
        assert!(got[0].contains("invalid stream chunk"), "{got:?}");
    }

    #[test]
    fn odd_text_fields_are_read_leniently() {
        let input = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":null,\"reasoning\":{\"x\":1},\"refusal\":\"no\\u00e9\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let got = parts(&[input.as_bytes()]);
        assert_eq!(got[2], r#"Delta { index: 0, text: "noé" }"#);
        assert!(got.last().unwrap().starts_with("End { stop: Refusal"));
    }

    #[test]
    fn finish_reasons_map_to_stops() {
        let f = finish_reason_to_stop;
        assert_eq!(f(Some("stop"), None, false), Stop::EndTurn);
        assert_eq!(f(None, None, false), Stop::EndTurn);
        assert_eq!(f(Some("length"), None, true), Stop::MaxTokens);
        assert_eq!(f(Some("tool_calls"), None, false), Stop::ToolUse);
        assert_eq!(f(Some("stop"), None, true), Stop::ToolUse);
        assert_eq!(f(Some("content_filter"), None, false), Stop::Refusal);
        let seq = serde_json::json!("END");
        assert_eq!(
            f(Some("stop"), Some(&seq), false),
            Stop::Sequence("END".into())
        );
        // vLLM reports a stop token id as a number: not a stop sequence.
        let token = serde_json::json!(128_009);
        assert_eq!(f(Some("stop"), Some(&token), false), Stop::EndTurn);
    }

    #[test]
    fn type_values_are_counted_as_values_only() {
        let json = r#"[{"type":"image","source":{}},{"type" : "image"},{"type":"images"},{"text":"\"type\":\"image\""}]"#;
        assert_eq!(count_type_values(json, "image"), 2);
        assert_eq!(count_type_values("", "image"), 0);
    }

    #[test]
    fn stable_ids_are_stable_and_distinct() {
        assert_eq!(stable_id("msg_", "a"), stable_id("msg_", "a"));
        assert_ne!(stable_id("msg_", "a"), stable_id("msg_", "b"));
        assert_eq!(stable_id("msg_", "a").len(), 4 + 24);
    }

    #[test]
    fn compact_json_keeps_strings_and_order() {
        assert_eq!(
            compact_json("{ \"b\" : [1, 2],\n \"a\": \"x y \\\" }\" }"),
            r#"{"b":[1,2],"a":"x y \" }"}"#
        );
    }

    #[test]
    fn completions_are_read_with_reasoning_refusals_and_generated_ids() {
        let body = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't.","reasoning_content":"think","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":null}}}"#;
        let a = parse_completion("p", body).unwrap();
        assert_eq!(a.text.as_deref(), Some("I can't."));
        assert_eq!(a.reasoning.as_deref(), Some("think"));
        assert!(a.tool_calls[0].0.starts_with("call_"));
        assert_eq!(a.stop, Some(Stop::ToolUse));
        assert_eq!(a.usage.unwrap().cached(), 0);
        let e = parse_completion("p", br#"{"id":"c","choices":[]}"#).unwrap_err();
        assert!(matches!(e, GatewayError::UpstreamInvalidResponse { .. }));
        assert!(parse_completion("p", b"[]").is_err());
    }
}
