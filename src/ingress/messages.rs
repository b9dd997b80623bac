//! Anthropic Messages ingress: `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`, as Claude Code and the official
//! `anthropic` SDKs send them.
//!
//! To an Anthropic target the request is forwarded losslessly: only `model`
//! is rewritten and every other field is copied byte for byte
//! ([`MessagesRequest::to_anthropic_body`]), so `cache_control`, `thinking`,
//! `redacted_thinking`, documents, citations, server tools and `metadata`
//! all arrive as sent. To any other target it is translated into the
//! gateway's chat-completions body ([`messages_request_to_chat_body`]), and
//! the answer back ([`chat_response_to_message`], [`ChunksToMessageEvents`]).
//!
//! # Anthropic parameters and what happens to them (non-Anthropic targets)
//!
//! | Anthropic parameter | OpenAI chat request |
//! |---------------------|---------------------|
//! | `model` | `model` (the name given to [`messages_request_to_chat_body`]) |
//! | `max_tokens` | `max_tokens` (required, as Anthropic requires it: a 400 `max_tokens: Field required` when absent) |
//! | `system` (string or text blocks) | a first `system` message; blocks joined with `"\n\n"` (a string system message is what every OpenAI-compatible server takes); a non-text block is a 400 |
//! | `messages[]`, `user` | `user` messages: one text block (or a string) as a string, several blocks as `text`/`image_url` parts |
//! | `messages[]`, `assistant` | an `assistant` message: its text blocks joined as written (Anthropic splits one text at citations), `tool_use` blocks as `tool_calls` after it (`arguments` = the compact JSON of `input`), content `null` when there is no text; any other block is a 400 |
//! | `messages[]`, any other role | 400 naming `messages` (Anthropic takes only `user` and `assistant`) |
//! | `image` blocks | `image_url` parts: base64 sources as `data:<media_type>;base64,...` URLs, `url` sources as is; a `file` source is a 400 |
//! | `tool_result` blocks | `tool` messages (`tool_call_id` = `tool_use_id`) in block order, so they follow the assistant's `tool_calls`; the user's other blocks of that turn follow as a `user` message. Content: a string as is; text blocks as one string or as parts, with images as `image_url` parts. `is_error` has no chat equivalent: the content carries the error, and an empty error result reads `Error` |
//! | `thinking`, `redacted_thinking` blocks (history) | dropped: reasoning of earlier turns is not sent back to chat models (OpenAI's own guidance), and the signatures mean nothing elsewhere |
//! | `document`, `search_result`, `container_upload` blocks, `citations` | 400 naming `messages`: the content would be lost and the answer would change |
//! | server tool blocks in history (`server_tool_use`, `*_tool_result`) | 400 naming `messages` |
//! | `cache_control` (anywhere, top-level too) | dropped: caching changes cost, not the answer (OpenAI-compatible servers cache prefixes on their own) |
//! | `stop_sequences` | `stop` (at most 4; more: 400 naming `stop_sequences`, unless an Anthropic target serves it) |
//! | `stream` | `stream`, with `stream_options.include_usage: true` always (the usage chunk gives `message_delta` its counts) |
//! | `temperature`, `top_p` | the same, spelled as sent (Anthropic's 0–1 temperature is within OpenAI's 0–2) |
//! | `top_k` | `top_k` (read by the Anthropic and Gemini adapters and by open-model servers; OpenAI itself refuses it with a 400 that names it) |
//! | `metadata.user_id` | `user` |
//! | `tools`, custom tools (no `type`, or `custom`) | `function` tools: `input_schema` -> `parameters`, `strict` kept; `cache_control`, `input_examples`, `defer_loading`, `allowed_callers`, `eager_input_streaming` dropped |
//! | `tools`, server and Anthropic-defined tools (`web_search_*`, `web_fetch_*`, `code_execution_*`, `bash_*`, `text_editor_*`, `computer_*`, `memory_*`, `tool_search_*`, ...) | 400 naming `tools` and the tool type: only Anthropic runs or defines them |
//! | `tool_choice` | `auto` -> `"auto"`, `any` -> `"required"`, `tool` -> the named function, `none` -> `"none"`; left out when there are no tools |
//! | `tool_choice.disable_parallel_tool_use: true` | `parallel_tool_calls: false` |
//! | `thinking: {type: enabled, budget_tokens}` | `reasoning_effort` by [`thinking_budget_to_reasoning_effort`]: under 4,096 `low`, under 16,384 `medium`, else `high` (Claude Code's "think", "think hard" and "ultrathink" budgets land in the three levels). A target model that does not reason may refuse `reasoning_effort` |
//! | `thinking: {type: adaptive}` or `disabled` | nothing (the target's default) |
//! | `output_config.effort` | `reasoning_effort` (`low`/`medium`/`high` as is; `xhigh` and `max` as `high`, the highest level every reasoning API takes); wins over `thinking` |
//! | `output_config.format` (`json_schema`) | `response_format: {type: json_schema, json_schema: {name: "output", schema, strict: true}}` |
//! | `container`, `mcp_servers` | 400 naming them: Anthropic-hosted execution |
//! | `service_tier`, `inference_geo`, `speed`, `context_management`, `diagnostics`, `user_profile_id`, `workspace_id`, anything else | dropped: they tune Anthropic's service, not the answer (residency is the gateway's own routing) |
//!
//! # The answer, either way
//!
//! A `chat.completion` becomes a `message`: its id is `msg_` and a stable
//! hash of the upstream id (an upstream `msg_` id is kept); `model` is the
//! model the client asked for; content blocks are `thinking` (from
//! `reasoning_content` or `reasoning`, with an empty `signature`: there is
//! none to give), `text` (content, or a refusal), then one `tool_use` per
//! call (`input` = the parsed arguments, `{}` when they are not a JSON
//! object). Stop reasons: `stop` -> `end_turn` (`stop_sequence` when the
//! upstream names the sequence, as vLLM's `stop_reason` does; OpenAI's own
//! format cannot tell), `length` -> `max_tokens`, `tool_calls` (or `stop`
//! with calls) -> `tool_use`, `content_filter` -> `refusal`. Usage as
//! Anthropic reports it: `input_tokens` excludes cached tokens, which are
//! `cache_read_input_tokens`; `cache_creation_input_tokens` is 0 (OpenAI's
//! format does not report writes); reasoning tokens also appear as
//! `output_tokens_details.thinking_tokens` when reported.
//!
//! Streams: see [`ChunksToMessageEvents`] (translated) and
//! [`MessageEventsRelay`] (Anthropic targets). Errors:
//! [`anthropic_error_status`] and [`anthropic_error_body`].
//!
//! Order: constants, the request, request translation, response
//! translation, stream translation, errors, token counting, pass-through
//! to Anthropic targets, tests.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{Usage, field, parse_field, parse_object, write_object};
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::providers::{StreamTranslator, Target, anthropic};
use crate::sse::{SseEvent, encode_data, encode_event};

use super::{
    Answer, BlockKind, ChunkConverter, ChunkReader, Failure, Part, Stop, UsageIn, compact_json,
    count_type_values, invalid, parse_completion, stable_id, to_json,
};

// ---- Constants ---------------------------------------------------------------

/// The path of the Messages endpoint, on the gateway and on Anthropic.
pub const MESSAGES_PATH: &str = "/v1/messages";

/// The path of the token-counting endpoint, on the gateway and on Anthropic.
/// An Anthropic target receives the client's body with `model` rewritten
/// ([`MessagesRequest::to_anthropic_body`]) and answers `{"input_tokens":N}`.
pub const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";

/// Input tokens an image counts for in estimates: Anthropic's cost of an
/// image at its largest size before resizing (about 1.15 megapixels / 750).
pub const TOKENS_PER_IMAGE: u64 = 1_600;

/// How the client is named in messages about what a target cannot do.
const ELSEWHERE: &str = "a non-Anthropic target";
/// The most stop sequences a chat completion takes (OpenAI's `stop`).
const MAX_STOP_ELSEWHERE: usize = 4;

// ---- The request -------------------------------------------------------------

/// A parsed Messages request that borrows from the body: every top-level
/// field raw, in order, and what the gateway decides on.
#[derive(Debug)]
pub struct MessagesRequest<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The model name the client asked for (a public alias in the config).
    pub model: Cow<'a, str>,
    /// `stream: true`.
    pub stream: bool,
    /// `max_tokens` (0 for `count_tokens`, which takes none).
    pub max_tokens: u64,
    /// Image blocks anywhere in `messages` (tool results included), whose
    /// tokens the body's size does not bound.
    pub images: usize,
    /// Document blocks in `messages` (PDFs, text documents).
    pub documents: usize,
    /// `tools` is a non-empty list.
    pub has_tools: bool,
}

impl<'a> MessagesRequest<'a> {
    /// Parses a `POST /v1/messages` body. Errors are 400s in Anthropic's
    /// words (`max_tokens: Field required`), naming the parameter.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        Self::parse_with(body, true)
    }

    /// Parses a `POST /v1/messages/count_tokens` body (no `max_tokens`).
    pub fn parse_count_tokens(body: &'a [u8]) -> Result<Self, GatewayError> {
        Self::parse_with(body, false)
    }

    fn parse_with(body: &'a [u8], needs_max_tokens: bool) -> Result<Self, GatewayError> {
        let fields = parse_object(body)?;
        let required = |name: &str| invalid(format!("{name}: Field required"), name);
        let model = match field(&fields, "model") {
            None => return Err(required("model")),
            Some(raw) => match serde_json::from_str::<Cow<'a, str>>(raw.get()) {
                Ok(m) if !m.trim().is_empty() => m,
                Ok(_) => {
                    return Err(invalid(
                        "model: String should have at least 1 character".into(),
                        "model",
                    ));
                }
                Err(_) => {
                    return Err(invalid(
                        "model: Input should be a valid string".into(),
                        "model",
                    ));
                }
            },
        };
        let messages = match field(&fields, "messages") {
            None => return Err(required("messages")),
            Some(raw) if !raw.get().starts_with('[') => {
                return Err(invalid(
                    "messages: Input should be a valid list".into(),
                    "messages",
                ));
            }
            // As Anthropic answers it; a translation would have nothing to send.
            Some(raw) if raw.get()[1..].trim_start().starts_with(']') => {
                return Err(invalid(
                    "messages: at least one message is required".into(),
                    "messages",
                ));
            }
            Some(raw) => raw.get(),
        };
        let max_tokens = match field(&fields, "max_tokens") {
            None if needs_max_tokens => return Err(required("max_tokens")),
            None => 0,
            Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
                Ok(0) if needs_max_tokens => {
                    return Err(invalid(
                        "max_tokens: Input should be greater than or equal to 1".into(),
                        "max_tokens",
                    ));
                }
                Ok(n) => n,
                Err(_) => {
                    return Err(invalid(
                        "max_tokens: Input should be a valid integer".into(),
                        "max_tokens",
                    ));
                }
            },
        };
        let stream = match field(&fields, "stream") {
            None => false,
            Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
                .map_err(|_| invalid("stream: Input should be a valid boolean".into(), "stream"))?
                .unwrap_or(false),
        };
        let has_tools = field(&fields, "tools")
            .is_some_and(|raw| raw.get().starts_with('[') && raw.get()[1..].trim_start() != "]");
        crate::trust::params::check(crate::trust::params::Params::Messages, &fields)?;
        Ok(MessagesRequest {
            images: count_type_values(messages, "image"),
            documents: count_type_values(messages, "document"),
            fields,
            model,
            stream,
            max_tokens,
            has_tools,
        })
    }

    /// The raw JSON of a top-level field.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        field(&self.fields, key)
    }

    /// Parses one top-level field into `T`; a type mismatch is a 400 naming it.
    pub fn parse_field<T: Deserialize<'a> + Default>(&self, key: &str) -> Result<T, GatewayError> {
        parse_field(&self.fields, key)
    }

    /// `metadata.user_id`, the end user for routing rules and logs.
    pub fn user_id(&self) -> Option<String> {
        self.parse_field::<Option<MetadataIn>>("metadata")
            .ok()
            .flatten()
            .and_then(|m| m.user_id)
    }

    /// The body for an Anthropic target (`/v1/messages` or
    /// `/v1/messages/count_tokens`): the client's fields in their order,
    /// byte for byte, `model` replaced.
    pub fn to_anthropic_body(&self, upstream_model: &str) -> Vec<u8> {
        write_object(&self.fields, upstream_model, None, b"")
    }
}

// ---- Request translation ---------------------------------------------------------

/// A message of `messages`, its content kept raw (a string or blocks).
#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: &'a RawValue,
}

/// A content block. Flat rather than a tagged enum: a tagged enum buffers
/// its content, and a borrowed `RawValue` cannot come from a buffer.
#[derive(Deserialize)]
struct BlockIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    /// Kept raw: its shape depends on the block type (a string in
    /// `search_result`).
    #[serde(default, borrow)]
    source: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
}

#[derive(Deserialize)]
struct SourceIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    media_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    url: Option<Cow<'a, str>>,
}

/// A tool of `tools`.
#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    input_schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize, Default)]
struct ToolChoiceIn {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize, Default)]
struct ThinkingIn {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OutputConfigIn<'a> {
    #[serde(default)]
    effort: Option<String>,
    #[serde(default, borrow)]
    format: Option<OutputFormatIn<'a>>,
}

#[derive(Deserialize)]
struct OutputFormatIn<'a> {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct MetadataIn {
    #[serde(default)]
    user_id: Option<String>,
}

/// The chat-completions body.
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ChatTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ChatToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormatOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A chat message; `content` is written even when `null` (an assistant
/// message of tool calls only).
#[derive(Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: Option<ChatContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<ChatToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_call_id: Option<Cow<'a, str>>,
}

impl<'a> ChatMessage<'a> {
    pub(crate) fn new(role: &'static str, content: ChatContent<'a>) -> Self {
        ChatMessage {
            role,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A string, or parts.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ChatContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<ChatPart<'a>>),
}

impl<'a> ChatContent<'a> {
    /// One text part reads as a string (what every server takes); anything
    /// else stays parts.
    pub(crate) fn from_parts(mut parts: Vec<ChatPart<'a>>) -> Self {
        if let [ChatPart::Text { .. }] = parts.as_slice()
            && let Some(ChatPart::Text { text }) = parts.pop()
        {
            return ChatContent::Text(text);
        }
        ChatContent::Parts(parts)
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ChatPart<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrlOut<'a> },
}

#[derive(Serialize)]
pub(crate) struct ImageUrlOut<'a> {
    pub(crate) url: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
pub(crate) struct ChatToolCall {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: ChatFunctionCall,
}

#[derive(Serialize)]
pub(crate) struct ChatFunctionCall {
    pub(crate) name: String,
    pub(crate) arguments: String,
}

#[derive(Serialize)]
struct ChatTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatFunction<'a>,
}

#[derive(Serialize)]
struct ChatFunction<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    parameters: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ChatToolChoice {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction,
    },
}

#[derive(Serialize)]
struct NamedFunction {
    name: String,
}

#[derive(Serialize)]
struct ResponseFormatOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: JsonSchemaOut<'a>,
}

#[derive(Serialize)]
struct JsonSchemaOut<'a> {
    name: &'static str,
    schema: &'a RawValue,
    strict: bool,
}

/// `reasoning_effort` for a `thinking.budget_tokens`: under 4,096 `low`,
/// under 16,384 `medium`, else `high`. Anthropic's minimum budget is 1,024;
/// Claude Code asks 4,000, 10,000 and 31,999 for its three levels.
pub fn thinking_budget_to_reasoning_effort(budget_tokens: u64) -> &'static str {
    match budget_tokens {
        0..4_096 => "low",
        4_096..16_384 => "medium",
        _ => "high",
    }
}

/// The OpenAI chat-completions body for a Messages request, for a target
/// that is not Anthropic. `model` is the name to put in it: the client's
/// alias when the body then goes through the gateway's chat path, which
/// rewrites it per target. Every rejection is a 400 naming the parameter.
pub fn messages_request_to_chat_body(
    req: &MessagesRequest<'_>,
    model: &str,
) -> Result<Vec<u8>, GatewayError> {
    for hosted in ["container", "mcp_servers"] {
        if req.get(hosted).is_some_and(|raw| raw.get() != "null") {
            return Err(invalid(
                format!("`{hosted}` (Anthropic-hosted execution) is not supported by {ELSEWHERE}"),
                hosted,
            ));
        }
    }
    let mut messages = Vec::new();
    if let Some(raw) = req.get("system")
        && let Some(text) = system_text(raw)?
    {
        messages.push(ChatMessage::new("system", ChatContent::Text(text)));
    }
    let turns: Vec<MessageIn<'_>> = req.parse_field("messages")?;
    for (i, turn) in turns.iter().enumerate() {
        match turn.role.as_ref() {
            "user" => user_turn(turn.content, i, &mut messages)?,
            "assistant" => messages.push(assistant_turn(turn.content, i)?),
            other => {
                return Err(invalid(
                    format!(
                        "messages.{i}.role: Input should be 'user' or 'assistant', got {other:?}"
                    ),
                    "messages",
                ));
            }
        }
    }
    // Turns whose content is empty leave nothing to send (found by the
    // `ingress` fuzz target, where it was a 500).
    if messages.is_empty() {
        return Err(invalid(
            "messages: all messages must have non-empty content".into(),
            "messages",
        ));
    }

    let tools = tools_to_chat(req.parse_field("tools")?)?;
    let choice: Option<ToolChoiceIn> = req.parse_field("tool_choice")?;
    let (tool_choice, parallel_tool_calls) = match (&choice, tools.is_empty()) {
        (Some(c), false) => (
            tool_choice_to_chat(c)?,
            (c.disable_parallel_tool_use == Some(true)).then_some(false),
        ),
        _ => (None, None),
    };

    let output: Option<OutputConfigIn<'_>> = req.parse_field("output_config")?;
    let output = output.unwrap_or_default();
    let thinking: Option<ThinkingIn> = req.parse_field("thinking")?;
    let reasoning_effort = match output.effort.as_deref() {
        Some("low") => Some("low"),
        Some("medium") => Some("medium"),
        Some("high" | "xhigh" | "max") => Some("high"),
        _ => thinking
            .filter(|t| t.kind == "enabled")
            .map(|t| thinking_budget_to_reasoning_effort(t.budget_tokens.unwrap_or(0))),
    };
    let response_format = match output.format {
        Some(OutputFormatIn {
            kind,
            schema: Some(schema),
        }) if kind == "json_schema" => Some(ResponseFormatOut {
            kind: "json_schema",
            json_schema: JsonSchemaOut {
                name: "output",
                schema,
                strict: true,
            },
        }),
        Some(other) => {
            return Err(invalid(
                format!(
                    "output_config.format: only `json_schema` with a `schema` is supported by {ELSEWHERE}, got {:?}",
                    other.kind
                ),
                "output_config",
            ));
        }
        None => None,
    };
    let nonnull = |key: &str| req.get(key).filter(|raw| raw.get() != "null");
    let stop = req
        .parse_field::<Option<Vec<String>>>("stop_sequences")?
        .filter(|s| !s.is_empty());
    if let Some(stop) = &stop
        && stop.len() > MAX_STOP_ELSEWHERE
    {
        return Err(invalid(
            format!(
                "stop_sequences: at most {MAX_STOP_ELSEWHERE} are supported by {ELSEWHERE}, got {}",
                stop.len()
            ),
            "stop_sequences",
        ));
    }
    let body = ChatBody {
        model,
        messages,
        max_tokens: req.max_tokens,
        temperature: nonnull("temperature"),
        top_p: nonnull("top_p"),
        top_k: nonnull("top_k"),
        stop,
        stream: req.stream,
        stream_options: req.stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        reasoning_effort,
        user: req.user_id(),
    };
    Ok(to_json(&body))
}

/// `system` as one string; `None` when empty.
fn system_text(raw: &RawValue) -> Result<Option<Cow<'_, str>>, GatewayError> {
    let text = match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'_, str>>(raw.get())
            .map_err(|e| invalid(format!("system: {e}"), "system"))?,
        Some(b'[') => {
            let blocks: Vec<BlockIn<'_>> = serde_json::from_str(raw.get())
                .map_err(|e| invalid(format!("system: {e}"), "system"))?;
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.into_iter().enumerate() {
                match (b.kind.as_ref(), b.text) {
                    ("text", Some(text)) => texts.push(text),
                    (kind, _) => {
                        return Err(invalid(
                            format!(
                                "system.{j}: only text blocks are supported by {ELSEWHERE}, got `{kind}`"
                            ),
                            "system",
                        ));
                    }
                }
            }
            Cow::Owned(texts.join("\n\n"))
        }
        Some(b'n') => return Ok(None),
        _ => {
            return Err(invalid(
                "system: Input should be a valid string or list".into(),
                "system",
            ));
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

/// Content as blocks: a string is one text block.
fn content_blocks<'a>(raw: &'a RawValue, at: &str) -> Result<Vec<BlockIn<'a>>, GatewayError> {
    let text = raw.get();
    if text.starts_with('"') {
        let text: Cow<'a, str> = serde_json::from_str(text)
            .map_err(|e| invalid(format!("{at}.content: {e}"), "messages"))?;
        return Ok(vec![BlockIn {
            kind: Cow::Borrowed("text"),
            text: Some(text),
            thinking: None,
            source: None,
            id: None,
            name: None,
            input: None,
            tool_use_id: None,
            content: None,
            is_error: None,
        }]);
    }
    serde_json::from_str(text).map_err(|e| invalid(format!("{at}.content: {e}"), "messages"))
}

/// A 400 for a block a translated target cannot carry.
fn unsupported_block(at: &str, kind: &str) -> GatewayError {
    let why = match kind {
        "document" | "search_result" | "container_upload" => {
            "documents, search results and their citations are supported only by Anthropic targets"
        }
        "server_tool_use" => "server tools run only on Anthropic targets",
        k if k.ends_with("_tool_result") => "server tools run only on Anthropic targets",
        _ => "this block type is not supported here",
    };
    invalid(
        format!("{at}: `{kind}` blocks are not supported by {ELSEWHERE}: {why}"),
        "messages",
    )
}

/// An image block as an `image_url` part.
fn image_part<'a>(source: Option<&'a RawValue>, at: &str) -> Result<ChatPart<'a>, GatewayError> {
    let bad = |why: &str| invalid(format!("{at}.source: {why}"), "messages");
    let source = source.ok_or_else(|| bad("Field required"))?;
    let source: SourceIn<'a> =
        serde_json::from_str(source.get()).map_err(|e| bad(&e.to_string()))?;
    let url = match source.kind.as_ref() {
        "base64" => {
            let media_type = source
                .media_type
                .ok_or_else(|| bad("media_type: Field required"))?;
            let data = source.data.ok_or_else(|| bad("data: Field required"))?;
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
        "url" => source.url.ok_or_else(|| bad("url: Field required"))?,
        other => {
            return Err(bad(&format!(
                "`{other}` image sources (the Files API) are supported only by Anthropic targets"
            )));
        }
    };
    Ok(ChatPart::ImageUrl {
        image_url: ImageUrlOut { url, detail: None },
    })
}

/// A user turn: `tool` messages for its tool results, in block order, and
/// `user` messages for the rest.
fn user_turn<'a>(
    raw: &'a RawValue,
    i: usize,
    out: &mut Vec<ChatMessage<'a>>,
) -> Result<(), GatewayError> {
    let at = format!("messages.{i}");
    let mut parts: Vec<ChatPart<'a>> = Vec::new();
    let flush = |parts: &mut Vec<ChatPart<'a>>, out: &mut Vec<ChatMessage<'a>>| {
        if !parts.is_empty() {
            let content = ChatContent::from_parts(std::mem::take(parts));
            out.push(ChatMessage::new("user", content));
        }
    };
    for (j, block) in content_blocks(raw, &at)?.into_iter().enumerate() {
        let at = format!("{at}.content.{j}");
        match block.kind.as_ref() {
            "text" => parts.push(ChatPart::Text {
                text: block.text.unwrap_or_default(),
            }),
            "image" => parts.push(image_part(block.source, &at)?),
            "tool_result" => {
                flush(&mut parts, out);
                let id = block.tool_use_id.ok_or_else(|| {
                    invalid(format!("{at}.tool_use_id: Field required"), "messages")
                })?;
                let content =
                    tool_result_content(block.content, block.is_error == Some(true), &at)?;
                out.push(ChatMessage {
                    role: "tool",
                    content: Some(content),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(id),
                });
            }
            // Not valid in a user turn; nothing to carry either way.
            "thinking" | "redacted_thinking" => {}
            kind => return Err(unsupported_block(&at, kind)),
        }
    }
    flush(&mut parts, out);
    Ok(())
}

/// A tool result's content: a string as is; blocks as one string when they
/// are all text (several joined with `"\n\n"`), else as parts.
fn tool_result_content<'a>(
    raw: Option<&'a RawValue>,
    is_error: bool,
    at: &str,
) -> Result<ChatContent<'a>, GatewayError> {
    let blocks = match raw {
        None => Vec::new(),
        Some(raw) if raw.get() == "null" => Vec::new(),
        Some(raw) => content_blocks(raw, at)?,
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (k, block) in blocks.into_iter().enumerate() {
        match block.kind.as_ref() {
            "text" => parts.push(ChatPart::Text {
                text: block.text.unwrap_or_default(),
            }),
            "image" => parts.push(image_part(block.source, &format!("{at}.content.{k}"))?),
            kind => return Err(unsupported_block(&format!("{at}.content.{k}"), kind)),
        }
    }
    let all_text = parts.iter().all(|p| matches!(p, ChatPart::Text { .. }));
    if all_text {
        let texts: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                ChatPart::Text { text } => Some(text.as_ref()),
                ChatPart::ImageUrl { .. } => None,
            })
            .collect();
        let text = match texts.as_slice() {
            [] if is_error => Cow::Borrowed("Error"),
            [] => Cow::Borrowed(""),
            _ if parts.len() == 1 => match parts.pop() {
                Some(ChatPart::Text { text }) => text,
                _ => Cow::Borrowed(""),
            },
            many => Cow::Owned(many.join("\n\n")),
        };
        return Ok(ChatContent::Text(text));
    }
    Ok(ChatContent::Parts(parts))
}

/// An assistant turn: its text, then its tool calls.
fn assistant_turn<'a>(raw: &'a RawValue, i: usize) -> Result<ChatMessage<'a>, GatewayError> {
    let at = format!("messages.{i}");
    let mut text: Option<Cow<'a, str>> = None;
    let mut tool_calls = Vec::new();
    for (j, block) in content_blocks(raw, &at)?.into_iter().enumerate() {
        let at = format!("{at}.content.{j}");
        match block.kind.as_ref() {
            "text" => {
                let t = block.text.unwrap_or_default();
                text = Some(match text.take() {
                    None => t,
                    Some(prev) => Cow::Owned(format!("{prev}{t}")),
                });
            }
            "tool_use" => {
                let id = block
                    .id
                    .ok_or_else(|| invalid(format!("{at}.id: Field required"), "messages"))?;
                let name = block
                    .name
                    .ok_or_else(|| invalid(format!("{at}.name: Field required"), "messages"))?;
                let arguments = block
                    .input
                    .map_or_else(|| "{}".to_owned(), |raw| compact_json(raw.get()));
                tool_calls.push(ChatToolCall {
                    id: id.into_owned(),
                    kind: "function",
                    function: ChatFunctionCall {
                        name: name.into_owned(),
                        arguments,
                    },
                });
            }
            // Earlier reasoning is not sent back (see the module table).
            "thinking" | "redacted_thinking" => {}
            kind => return Err(unsupported_block(&at, kind)),
        }
    }
    // Tool calls alone: `content: null`, as OpenAI writes it.
    let content = match text {
        Some(t) if !t.is_empty() => Some(ChatContent::Text(t)),
        _ if !tool_calls.is_empty() => None,
        t => Some(ChatContent::Text(t.unwrap_or_default())),
    };
    Ok(ChatMessage {
        role: "assistant",
        content,
        tool_calls,
        tool_call_id: None,
    })
}

fn tools_to_chat(tools: Option<Vec<ToolIn<'_>>>) -> Result<Vec<ChatTool<'_>>, GatewayError> {
    let mut out = Vec::new();
    for (i, tool) in tools.unwrap_or_default().into_iter().enumerate() {
        match tool.kind.as_deref() {
            None | Some("custom") => {}
            Some(kind) => {
                return Err(invalid(
                    format!(
                        "tools.{i}: the tool type `{kind}` is defined or run by Anthropic and is not supported by {ELSEWHERE}; declare a custom tool with an input_schema instead"
                    ),
                    "tools",
                ));
            }
        }
        let name = tool
            .name
            .ok_or_else(|| invalid(format!("tools.{i}.name: Field required"), "tools"))?;
        let parameters = tool
            .input_schema
            .ok_or_else(|| invalid(format!("tools.{i}.input_schema: Field required"), "tools"))?;
        out.push(ChatTool {
            kind: "function",
            function: ChatFunction {
                name,
                description: tool.description,
                parameters,
                strict: tool.strict,
            },
        });
    }
    Ok(out)
}

fn tool_choice_to_chat(choice: &ToolChoiceIn) -> Result<Option<ChatToolChoice>, GatewayError> {
    Ok(Some(match choice.kind.as_str() {
        "auto" => ChatToolChoice::Mode("auto"),
        "any" => ChatToolChoice::Mode("required"),
        "none" => ChatToolChoice::Mode("none"),
        "tool" => ChatToolChoice::Named {
            kind: "function",
            function: NamedFunction {
                name: choice.name.clone().ok_or_else(|| {
                    invalid("tool_choice.name: Field required".into(), "tool_choice")
                })?,
            },
        },
        other => {
            return Err(invalid(
                format!(
                    "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', got {other:?}"
                ),
                "tool_choice",
            ));
        }
    }))
}

// ---- Response translation --------------------------------------------------------

/// An Anthropic `message`.
#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

/// An output content block.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Thinking {
        thinking: &'a str,
        signature: &'static str,
    },
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: ToolInput<'a>,
    },
}

/// A `tool_use` block's `input`: the call's arguments when they are a JSON
/// object (as spelled), else `{}` (Anthropic's `input` is always an object).
struct ToolInput<'a>(Option<&'a RawValue>);

impl<'a> ToolInput<'a> {
    fn from_arguments(arguments: &'a str) -> Self {
        ToolInput(
            serde_json::from_str::<&RawValue>(arguments)
                .ok()
                .filter(|raw| raw.get().starts_with('{')),
        )
    }
}

impl Serialize for ToolInput<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Some(raw) => raw.serialize(s),
            None => s.serialize_map(Some(0))?.end(),
        }
    }
}

/// Usage as Anthropic reports it.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens_details: Option<OutputTokensDetails>,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
struct OutputTokensDetails {
    thinking_tokens: u64,
}

impl UsageOut {
    /// Anthropic's `input_tokens` excludes cache reads; OpenAI's
    /// `prompt_tokens` includes them.
    fn from_openai(u: UsageIn) -> UsageOut {
        let cached = u.cached().min(u.prompt());
        UsageOut {
            input_tokens: u.prompt() - cached,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
            output_tokens: u.completion(),
            output_tokens_details: u
                .reasoning()
                .map(|thinking_tokens| OutputTokensDetails { thinking_tokens }),
        }
    }
}

/// Anthropic's `stop_reason` and `stop_sequence` for a stop.
fn stop_to_anthropic(stop: &Stop) -> (&'static str, Option<&str>) {
    match stop {
        Stop::EndTurn => ("end_turn", None),
        Stop::Sequence(seq) => ("stop_sequence", Some(seq)),
        Stop::MaxTokens => ("max_tokens", None),
        Stop::ToolUse => ("tool_use", None),
        Stop::Refusal => ("refusal", None),
    }
}

/// The `msg_` id for an upstream completion id.
fn message_id(upstream_id: &str) -> String {
    if upstream_id.starts_with("msg_") {
        upstream_id.to_owned()
    } else {
        stable_id("msg_", upstream_id)
    }
}

/// Translates a 2xx `chat.completion` body (what the provider adapters
/// return) into the client's Anthropic `message`. `client_model` is the
/// model the client asked for; `provider` names the target in errors.
pub fn chat_response_to_message(
    provider: &str,
    completion: &[u8],
    client_model: &str,
) -> Result<Vec<u8>, GatewayError> {
    let answer = parse_completion(provider, completion)?;
    Ok(answer_to_message(&answer, client_model))
}

fn answer_to_message(answer: &Answer, client_model: &str) -> Vec<u8> {
    let id = message_id(&answer.id);
    let mut content = Vec::with_capacity(2 + answer.tool_calls.len());
    if let Some(thinking) = &answer.reasoning {
        content.push(BlockOut::Thinking {
            thinking,
            signature: "",
        });
    }
    if let Some(text) = &answer.text {
        content.push(BlockOut::Text { text });
    }
    for (call_id, name, arguments) in &answer.tool_calls {
        content.push(BlockOut::ToolUse {
            id: call_id,
            name,
            input: ToolInput::from_arguments(arguments),
        });
    }
    let (stop_reason, stop_sequence) =
        stop_to_anthropic(answer.stop.as_ref().unwrap_or(&Stop::EndTurn));
    to_json(&MessageOut {
        id: &id,
        kind: "message",
        role: "assistant",
        model: client_model,
        content,
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: answer.usage.map(UsageOut::from_openai).unwrap_or_default(),
    })
}

// ---- Stream translation ----------------------------------------------------------

/// OpenAI chunk SSE -> Anthropic Messages SSE events, incrementally.
///
/// On the first chunk: `message_start`, whose `message.usage.input_tokens`
/// is the estimate given to [`ChunksToMessageEvents::new`] (OpenAI-format
/// streams report usage only at their end; the SDKs require the field and
/// the final `message_delta` carries the real counts, which the SDKs' stream
/// accumulators take over). Then for each block of the answer, in order and
/// one at a time: `content_block_start` (`thinking` with an empty
/// `signature`, `text`, or `tool_use` with `input: {}`),
/// `content_block_delta`s (`thinking_delta`, `text_delta`,
/// `input_json_delta` with the argument fragments as `partial_json`) and
/// `content_block_stop`. At the end: `message_delta` with `stop_reason`,
/// `stop_sequence` and cumulative usage (`input_tokens` without cache reads,
/// `cache_read_input_tokens`, `output_tokens`), then `message_stop`. A
/// failure at any point is one `event: error` with
/// `{"type":"error","error":{"type","message"}}`, and nothing after it.
/// Every event has its `event:` line: the SDKs skip events without one.
#[derive(Debug)]
pub struct ChunksToMessageEvents {
    reader: ChunkReader,
    writer: EventWriter,
}

#[derive(Debug)]
struct EventWriter {
    model: String,
    input_estimate: u64,
    /// Kinds of the blocks opened so far, by index.
    kinds: Vec<BlockKind>,
    started: bool,
}

impl ChunksToMessageEvents {
    /// A converter for one stream. `client_model` is the model the client
    /// asked for; `input_tokens_estimate` goes in `message_start` (see
    /// [`count_tokens_estimate`], or 0).
    pub fn new(client_model: &str, input_tokens_estimate: u64) -> Self {
        ChunksToMessageEvents {
            reader: ChunkReader::default(),
            writer: EventWriter {
                model: client_model.to_owned(),
                input_estimate: input_tokens_estimate,
                kinds: Vec::new(),
                started: false,
            },
        }
    }
}

impl ChunkConverter for ChunksToMessageEvents {
    fn push(&mut self, openai_sse: &[u8], out: &mut Vec<u8>) {
        let writer = &mut self.writer;
        self.reader.push(openai_sse, &mut |p| writer.write(p, out));
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let writer = &mut self.writer;
        self.reader.finish(&mut |p| writer.write(p, out));
    }

    fn error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        let writer = &mut self.writer;
        self.reader
            .fail(Failure::from_error(e), &mut |p| writer.write(p, out));
    }

    fn usage(&self) -> Option<Usage> {
        self.reader.usage().map(UsageIn::to_usage)
    }
}

#[derive(Serialize)]
struct MessageStartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageOut<'a>,
}

#[derive(Serialize)]
struct BlockStartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    content_block: BlockOut<'a>,
}

#[derive(Serialize)]
struct BlockDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaOut<'a> {
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockStopEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
}

#[derive(Serialize)]
struct MessageDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopOut<'a>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct StopOut<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetailOut<'a>,
}

#[derive(Serialize)]
struct ErrorDetailOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

impl EventWriter {
    fn write(&mut self, part: Part<'_>, out: &mut Vec<u8>) {
        match part {
            Part::Start { id } => {
                self.started = true;
                let id = message_id(id);
                let event = MessageStartEvent {
                    kind: "message_start",
                    message: MessageOut {
                        id: &id,
                        kind: "message",
                        role: "assistant",
                        model: &self.model,
                        content: Vec::new(),
                        stop_reason: None,
                        stop_sequence: None,
                        usage: UsageOut {
                            input_tokens: self.input_estimate,
                            ..UsageOut::default()
                        },
                    },
                };
                encode_event(out, "message_start", &to_json(&event));
            }
            Part::Open {
                index,
                kind,
                call_id,
                name,
            } => {
                if self.kinds.len() <= index {
                    self.kinds.resize(index + 1, kind);
                }
                self.kinds[index] = kind;
                let content_block = match kind {
                    BlockKind::Reasoning => BlockOut::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    BlockKind::Text => BlockOut::Text { text: "" },
                    BlockKind::Tool => BlockOut::ToolUse {
                        id: call_id,
                        name,
                        input: ToolInput(None),
                    },
                };
                let event = BlockStartEvent {
                    kind: "content_block_start",
                    index,
                    content_block,
                };
                encode_event(out, "content_block_start", &to_json(&event));
            }
            Part::Delta { index, text } => {
                let delta = match self.kinds.get(index) {
                    Some(BlockKind::Reasoning) => DeltaOut::Thinking { thinking: text },
                    Some(BlockKind::Text) => DeltaOut::Text { text },
                    Some(BlockKind::Tool) => DeltaOut::InputJson { partial_json: text },
                    None => return,
                };
                let event = BlockDeltaEvent {
                    kind: "content_block_delta",
                    index,
                    delta,
                };
                encode_event(out, "content_block_delta", &to_json(&event));
            }
            Part::Close { index, .. } => {
                let event = BlockStopEvent {
                    kind: "content_block_stop",
                    index,
                };
                encode_event(out, "content_block_stop", &to_json(&event));
            }
            Part::End { stop, usage } => {
                let (stop_reason, stop_sequence) = stop_to_anthropic(&stop);
                let usage = match usage {
                    Some(u) => UsageOut::from_openai(u),
                    // No usage chunk: the estimate stands, output unknown.
                    None => UsageOut {
                        input_tokens: self.input_estimate,
                        ..UsageOut::default()
                    },
                };
                let event = MessageDeltaEvent {
                    kind: "message_delta",
                    delta: StopOut {
                        stop_reason,
                        stop_sequence,
                    },
                    usage,
                };
                encode_event(out, "message_delta", &to_json(&event));
                encode_event(out, "message_stop", br#"{"type":"message_stop"}"#);
            }
            Part::Fail(failure) => {
                let event = ErrorOut {
                    kind: "error",
                    error: ErrorDetailOut {
                        kind: anthropic_error_type(failure.status),
                        message: &failure.message,
                    },
                };
                encode_event(out, "error", &to_json(&event));
            }
        }
    }
}

// ---- Errors ----------------------------------------------------------------------

/// The HTTP status an Anthropic client receives for an error: the
/// gateway's own ([`GatewayError::status`]), except that an overload stays
/// Anthropic's 529 `overloaded_error` — one target that answered 529 or 503,
/// or every target, when all of them did. The SDKs raise `OverloadedError`
/// on it and retry it, and Claude Code says "Overloaded" rather than
/// reporting a broken gateway.
pub fn anthropic_error_status(e: &GatewayError) -> u16 {
    let overloaded = |status: u16| matches!(status, 503 | 529);
    match e {
        GatewayError::Upstream { status, .. } if overloaded(*status) => 529,
        GatewayError::AllTargetsFailed { attempts }
            if !attempts.is_empty()
                && attempts.iter().all(|a| a.status.is_some_and(overloaded)) =>
        {
            529
        }
        other => other.status(),
    }
}

/// Anthropic's `error.type` for a status, by Anthropic's error table:
/// 400 `invalid_request_error`, 401 `authentication_error`, 402
/// `billing_error`, 403 `permission_error`, 404 `not_found_error`, 413
/// `request_too_large`, 429 `rate_limit_error`, 500 `api_error`, 504
/// `timeout_error`, 529 `overloaded_error`. Statuses the table lacks: 502
/// (a provider failed or sent garbage) is `api_error`, an unexpected
/// failure behind the API; 503 (no target may serve now: breakers open, all
/// cooling) is `overloaded_error`, the type that means "temporarily unable,
/// retry"; other 4xx are `invalid_request_error`, other 5xx `api_error`.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The error body in Anthropic's shape,
/// `{"type":"error","error":{"type","message"}}`, for
/// [`anthropic_error_status`]. The message is the gateway's (it lists every
/// attempt when all targets failed). A key's exhausted budget is a 429
/// `rate_limit_error`, as Anthropic reports its own spend limits.
/// `Retry-After` is set as for OpenAI clients ([`GatewayError::retry_after`]).
pub fn anthropic_error_body(e: &GatewayError) -> Vec<u8> {
    let message = e.to_string();
    to_json(&ErrorOut {
        kind: "error",
        error: ErrorDetailOut {
            kind: anthropic_error_type(anthropic_error_status(e)),
            message: &message,
        },
    })
}

// ---- Token counting --------------------------------------------------------------

/// An estimate of a request's input tokens for a target that cannot count
/// them (Anthropic targets answer `count_tokens` exactly: forward the body).
///
/// The heuristic: one token per four bytes of text (system, text and
/// thinking blocks, tool names and inputs, tool results, tool definitions
/// as JSON; English runs near four characters a token, and counting UTF-8
/// bytes keeps scripts of one token a character near right), plus
/// [`TOKENS_PER_IMAGE`] per image and four tokens of framing per message.
/// Other blocks (documents, search results) count as their JSON.
pub fn count_tokens_estimate(req: &MessagesRequest<'_>) -> Result<u64, GatewayError> {
    let mut bytes: u64 = 0;
    let mut tokens: u64 = 0;
    if let Some(raw) = req.get("system")
        && let Some(text) = system_text(raw)?
    {
        bytes += text.len() as u64;
    }
    let turns: Vec<MessageIn<'_>> = req.parse_field("messages")?;
    for (i, turn) in turns.iter().enumerate() {
        tokens += 4;
        let at = format!("messages.{i}");
        for block in content_blocks(turn.content, &at)? {
            let (b, t) = block_size(&block, &at)?;
            bytes += b;
            tokens += t;
        }
    }
    if let Some(raw) = req.get("tools") {
        bytes += raw.get().len() as u64;
    }
    Ok(tokens + bytes.div_ceil(4))
}

/// (text bytes, extra tokens) of one block.
fn block_size(block: &BlockIn<'_>, at: &str) -> Result<(u64, u64), GatewayError> {
    let len = |s: &Option<Cow<'_, str>>| s.as_deref().map_or(0, str::len) as u64;
    Ok(match block.kind.as_ref() {
        "text" => (len(&block.text), 0),
        "thinking" => (len(&block.thinking), 0),
        "image" => (0, TOKENS_PER_IMAGE),
        "tool_use" => (
            len(&block.name) + block.input.map_or(0, |raw| raw.get().len()) as u64,
            0,
        ),
        "tool_result" => {
            let mut sum = (0, 0);
            if let Some(raw) = block.content.filter(|raw| raw.get() != "null") {
                for inner in content_blocks(raw, at)? {
                    let (b, t) = block_size(&inner, at)?;
                    sum = (sum.0 + b, sum.1 + t);
                }
            }
            sum
        }
        // Documents, search results, server tool blocks: their JSON.
        _ => (
            len(&block.text)
                + block.source.map_or(0, |raw| raw.get().len()) as u64
                + block.content.map_or(0, |raw| raw.get().len()) as u64,
            0,
        ),
    })
}

/// The `count_tokens` answer: `{"input_tokens":N}`.
pub fn count_tokens_body(input_tokens: u64) -> Vec<u8> {
    format!("{{\"input_tokens\":{input_tokens}}}").into_bytes()
}

// ---- Pass-through to Anthropic targets -------------------------------------------

/// The client headers an Anthropic target receives, as sent: the API
/// version the client's shapes follow, and the beta features it opted into
/// (prompt-caching TTLs, long context, interleaved thinking, ...), without
/// which the same body can be refused or answered differently. Nothing else
/// is forwarded: the client's `x-api-key` or `Authorization` is the
/// gateway's key, and the rest (`user-agent`, `x-stainless-*`, ...)
/// describes the client, not the request.
pub const FORWARDED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// The forwarded headers ([`FORWARDED_HEADERS`]) the client sent.
pub fn forwarded_headers(header: &dyn Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    FORWARDED_HEADERS
        .iter()
        .filter_map(|&name| header(name).map(|v| (name, v)))
        .collect()
}

/// The request to an Anthropic target for a Messages request (or, with
/// `count_tokens`, a token count): `{base}/v1/messages` or
/// `{base}/v1/messages/count_tokens`, the client's body with `model`
/// rewritten ([`MessagesRequest::to_anthropic_body`]), `x-api-key`, and
/// `anthropic-version` as the client sent it (else the provider's configured
/// header, else [`anthropic::API_VERSION`]). `anthropic-beta` is the
/// client's, unchanged, joined after any the operator configured for the
/// provider; other configured headers follow.
pub fn build_anthropic_request(
    target: &Target<'_>,
    req: &MessagesRequest<'_>,
    count_tokens: bool,
    forwarded: &[(&'static str, String)],
    api_key: Option<&str>,
) -> UpstreamRequest {
    let p = target.provider;
    let base = p
        .base_url
        .as_deref()
        .unwrap_or(anthropic::DEFAULT_BASE_URL)
        .trim_end_matches('/');
    let path = if count_tokens {
        COUNT_TOKENS_PATH
    } else {
        MESSAGES_PATH
    };
    let client = |name: &str| {
        forwarded
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let configured = |name: &str| {
        p.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let mut headers = Vec::with_capacity(5 + p.headers.len());
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    let version = client("anthropic-version")
        .or(configured("anthropic-version"))
        .unwrap_or(anthropic::API_VERSION);
    headers.push(("anthropic-version".to_owned(), version.to_owned()));
    let beta = match (configured("anthropic-beta"), client("anthropic-beta")) {
        (Some(ours), Some(theirs)) => Some(format!("{ours},{theirs}")),
        (ours, theirs) => ours.or(theirs).map(str::to_owned),
    };
    if let Some(beta) = beta {
        headers.push(("anthropic-beta".to_owned(), beta));
    }
    if req.stream && !count_tokens {
        headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
    }
    if let Some(key) = api_key {
        headers.push(("x-api-key".to_owned(), key.to_owned()));
    }
    headers.extend(
        p.headers
            .iter()
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case("anthropic-version")
                    && !k.eq_ignore_ascii_case("anthropic-beta")
            })
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    UpstreamRequest {
        method: "POST",
        url: format!("{base}{path}"),
        headers,
        body: req.to_anthropic_body(target.model),
    }
}

/// The parts of an Anthropic `message` the gateway reads.
#[derive(Deserialize)]
struct MessageUsageIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    usage: Option<anthropic::UsageIn>,
}

/// Checks a 2xx answer of an Anthropic target (a `message`) and reads its
/// usage, cache reads and writes included. The body goes to the client
/// unchanged.
pub fn read_anthropic_message(provider: &str, body: &[u8]) -> Result<Option<Usage>, GatewayError> {
    let invalid = |message: String| GatewayError::UpstreamInvalidResponse {
        provider: provider.to_owned(),
        message,
    };
    let m: MessageUsageIn =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a message: {e}")))?;
    if m.kind.as_deref() != Some("message") {
        return Err(invalid("not a message object".to_owned()));
    }
    Ok(m.usage.map(anthropic::UsageIn::to_openai))
}

/// Checks a 2xx answer of an Anthropic target to `count_tokens`
/// (`{"input_tokens":N}`). The body goes to the client unchanged.
pub fn read_anthropic_count(provider: &str, body: &[u8]) -> Result<u64, GatewayError> {
    #[derive(Deserialize)]
    struct CountIn {
        input_tokens: u64,
    }
    serde_json::from_slice::<CountIn>(body)
        .map(|c| c.input_tokens)
        .map_err(|e| GatewayError::UpstreamInvalidResponse {
            provider: provider.to_owned(),
            message: format!("not a token count: {e}"),
        })
}

/// Relays an Anthropic target's Messages stream to a Messages client event
/// by event: each event's name and data exactly as received (the framing
/// normalised to `event: ...\ndata: ...\n\n`, which is Anthropic's own),
/// while it reads usage from `message_start.message.usage` (input, cache
/// creation and cache read tokens) and `message_delta.usage` (output), and
/// watches for the end (`message_stop`) and for errors.
///
/// Commit point ([`StreamTranslator::carries_output`]): every event but
/// `message_start`, `ping` and `content_block_start` is output, so a target
/// that fails before its first delta is replaced unseen (the next one's
/// `message_start` replaces the held one). An upstream `event: error` ends
/// the stream as the provider's error (`overloaded_error` a retryable 529,
/// `rate_limit_error` 429, anything else 500), so failover can still act
/// before the commit; after it the client receives that event byte for
/// byte ([`StreamTranslator::write_error`]). Other failures (a cut stream,
/// a timeout) become one `event: error` in Anthropic's shape.
#[derive(Debug)]
pub struct MessageEventsRelay {
    provider: String,
    usage: Option<anthropic::UsageIn>,
    output: bool,
    stopped: bool,
    /// The upstream's error event, and the error it was read as.
    upstream_error: Option<(GatewayError, Vec<u8>)>,
}

impl MessageEventsRelay {
    /// A relay for one stream of `target`.
    pub fn new(target: &Target<'_>) -> Self {
        MessageEventsRelay {
            provider: target.name.to_owned(),
            usage: None,
            output: false,
            stopped: false,
            upstream_error: None,
        }
    }

    fn invalid(&self, message: String) -> GatewayError {
        GatewayError::UpstreamInvalidResponse {
            provider: self.provider.clone(),
            message,
        }
    }
}

/// The fields of the events the relay reads.
#[derive(Deserialize)]
struct RelayEventIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<MessageUsageIn>,
    #[serde(default)]
    usage: Option<anthropic::UsageIn>,
    #[serde(default)]
    error: Option<RelayErrorIn>,
}

#[derive(Deserialize)]
struct RelayErrorIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl StreamTranslator for MessageEventsRelay {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.stopped {
            return Ok(());
        }
        // Anthropic names every event; the hot deltas are told by name alone.
        let named = ev.event.as_deref();
        let needs_reading = !matches!(
            named,
            Some("content_block_delta" | "content_block_start" | "content_block_stop" | "ping")
        );
        let mut kind = named.map(Cow::Borrowed);
        if needs_reading {
            let event: RelayEventIn<'_> = serde_json::from_str(&ev.data)
                .map_err(|e| self.invalid(format!("invalid stream event: {e}")))?;
            if kind.is_none() {
                kind = event.kind;
            }
            match kind.as_deref() {
                Some("message_start") => {
                    let usage = event.message.and_then(|m| m.usage).unwrap_or_default();
                    self.usage = Some(usage);
                }
                Some("message_delta") => {
                    if let Some(later) = event.usage {
                        self.usage.get_or_insert_default().merge(later);
                    }
                }
                Some("message_stop") => self.stopped = true,
                Some("error") => {
                    let detail = event.error.unwrap_or(RelayErrorIn {
                        kind: None,
                        message: None,
                    });
                    let status = match detail.kind.as_deref() {
                        Some("overloaded_error") => 529,
                        Some("rate_limit_error") => 429,
                        _ => 500,
                    };
                    let e = GatewayError::Upstream {
                        provider: self.provider.clone(),
                        status,
                        message: detail
                            .message
                            .or(detail.kind)
                            .unwrap_or_else(|| "stream error".to_owned()),
                        retry_after: None,
                    };
                    let mut raw = Vec::new();
                    encode_event(&mut raw, "error", ev.data.as_bytes());
                    self.upstream_error = Some((e.clone(), raw));
                    return Err(e);
                }
                _ => {}
            }
        }
        let name = kind.as_deref().unwrap_or_default();
        if !matches!(name, "message_start" | "ping" | "content_block_start") {
            self.output = true;
        }
        match ev.event.as_deref() {
            Some(name) => encode_event(out, name, ev.data.as_bytes()),
            None => encode_data(out, ev.data.as_bytes()),
        }
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.stopped {
            return Ok(());
        }
        Err(GatewayError::UpstreamUnreachable {
            provider: self.provider.clone(),
            message: "stream ended before message_stop".into(),
        })
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(anthropic::UsageIn::to_openai)
    }

    fn carries_output(&self, _written: &[u8]) -> bool {
        self.output
    }

    fn write_error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        match self.upstream_error.take() {
            Some((own, raw)) if own == *e => out.extend_from_slice(&raw),
            _ => write_error_event(e, out),
        }
    }
}

/// `event: error` with `{"type":"error","error":{"type","message"}}` for a
/// gateway error, typed by [`anthropic_error_status`].
pub fn write_error_event(e: &GatewayError, out: &mut Vec<u8>) {
    let message = e.to_string();
    let event = ErrorOut {
        kind: "error",
        error: ErrorDetailOut {
            kind: anthropic_error_type(anthropic_error_status(e)),
            message: &message,
        },
    };
    encode_event(out, "error", &to_json(&event));
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::ChatRequest;
    use crate::config::Provider;
    use crate::error::Attempt;
    use crate::providers::{self, Target};
    use crate::sse::SseParser;

    /// A golden file under `tests/fixtures/`.
    macro_rules! fixture {
        ($path:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $path
            ))
        };
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn chat_body(body: &str) -> Result<Value, GatewayError> {
        let req = MessagesRequest::parse(body.as_bytes())?;
        messages_request_to_chat_body(&req, "claude-sonnet-4-5")
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// The 400's parameter and message.
    fn rejection(body: &str) -> (String, String) {
        match chat_body(body) {
            Err(GatewayError::InvalidRequest { message, param }) => (param.unwrap(), message),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    /// A minimal request with `extra` top-level fields.
    fn with(extra: &str) -> String {
        format!(
            r#"{{"model":"c","max_tokens":10,"messages":[{{"role":"user","content":"x"}}]{extra}}}"#
        )
    }

    #[test]
    fn more_stop_sequences_than_a_chat_completion_takes_are_a_400_naming_them() {
        let four = with(r#","stop_sequences":["a","b","c","d"]"#);
        assert_eq!(
            chat_body(&four).unwrap()["stop"],
            json!(["a", "b", "c", "d"])
        );
        let (param, message) = rejection(&with(r#","stop_sequences":["a","b","c","d","e"]"#));
        assert_eq!(param, "stop_sequences");
        assert!(message.contains("at most 4"), "{message}");
    }

    // ---- Requests ------------------------------------------------------------

    const REQUESTS: [(&str, &str, &str); 4] = [
        (
            "text",
            fixture!("ingress/messages_request_text.anthropic.json"),
            fixture!("ingress/messages_request_text.openai.json"),
        ),
        (
            "tool_round_trip",
            fixture!("ingress/messages_request_tool_round_trip.anthropic.json"),
            fixture!("ingress/messages_request_tool_round_trip.openai.json"),
        ),
        (
            "image_input",
            fixture!("ingress/messages_request_image_input.anthropic.json"),
            fixture!("ingress/messages_request_image_input.openai.json"),
        ),
        (
            "thinking",
            fixture!("ingress/messages_request_thinking.anthropic.json"),
            fixture!("ingress/messages_request_thinking.openai.json"),
        ),
    ];

    #[test]
    fn golden_requests_translate_exactly() {
        for (name, anthropic, openai) in REQUESTS {
            assert_eq!(chat_body(anthropic).unwrap(), json(openai), "{name}");
        }
    }

    #[test]
    fn translated_requests_are_chat_requests_every_adapter_takes() {
        for (name, anthropic, _) in REQUESTS {
            let req = MessagesRequest::parse(anthropic.as_bytes()).unwrap();
            let body = messages_request_to_chat_body(&req, "alias").unwrap();
            let chat = ChatRequest::parse(&body).unwrap();
            assert_eq!(chat.model, "alias", "{name}");
            assert_eq!(chat.stream, req.stream, "{name}");
            assert_eq!(
                chat.include_usage, req.stream,
                "{name}: streams always ask for usage"
            );
            assert_eq!(chat.max_tokens, Some(req.max_tokens), "{name}");
            chat.messages().unwrap();
            for kind in ["openai", "anthropic", "gemini"] {
                let p: Provider = serde_json::from_str(&format!(r#"{{"kind":"{kind}"}}"#)).unwrap();
                let target = Target {
                    name: kind,
                    provider: &p,
                    model: "m",
                };
                let signing = providers::Signing {
                    now_s: 0,
                    secret: &|_| None,
                };
                providers::build_chat_request(&target, &chat, None, signing)
                    .unwrap_or_else(|e| panic!("{name} to {kind}: {e}"));
            }
        }
    }

    #[test]
    fn claude_code_request_reaches_anthropic_byte_for_byte_but_the_model() {
        let body = fixture!("ingress/messages_request_claude_code.anthropic.json");
        let req = MessagesRequest::parse(body.as_bytes()).unwrap();
        assert!(req.stream && req.has_tools);
        assert_eq!(req.max_tokens, 32_000);
        let out =
            String::from_utf8(req.to_anthropic_body("claude-sonnet-4-5-20250929-eu")).unwrap();
        let want = body.replacen(
            r#""model":"claude-sonnet-4-5-20250929""#,
            r#""model":"claude-sonnet-4-5-20250929-eu""#,
            1,
        );
        assert_eq!(out, want);
        // The spellings a re-serializer would change survive.
        assert!(out.contains(r#"t\u0065st"#) && out.contains(r#""limit":2.0e3"#));
        // count_tokens bodies pass through the same way.
        let req = MessagesRequest::parse_count_tokens(
            br#"{"model":"a","messages":[{"role":"user","content":"hi"}],"system":"s"}"#,
        )
        .unwrap();
        assert_eq!(
            req.to_anthropic_body("b"),
            br#"{"model":"b","messages":[{"role":"user","content":"hi"}],"system":"s"}"#
        );
    }

    #[test]
    fn routing_facts_are_read_without_translating() {
        let req = MessagesRequest::parse(
            fixture!("ingress/messages_request_image_input.anthropic.json").as_bytes(),
        )
        .unwrap();
        assert_eq!(
            (req.images, req.documents, req.has_tools, req.stream),
            (2, 0, false, false)
        );
        assert_eq!(req.model, "claude-sonnet-4-5");
        let req = MessagesRequest::parse(
            fixture!("ingress/messages_request_text.anthropic.json").as_bytes(),
        )
        .unwrap();
        assert_eq!(req.user_id().as_deref(), Some("user-42"));
        assert!(req.stream);
        let body = with(
            r#","tools":[],"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="}},{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}]"#,
        );
        let req = MessagesRequest::parse(body.as_bytes()).unwrap();
        assert_eq!((req.images, req.documents, req.has_tools), (1, 1, false));
    }

    #[test]
    fn invalid_requests_are_400s_in_anthropics_words() {
        let err = |body: &str| match MessagesRequest::parse(body.as_bytes()) {
            Err(GatewayError::InvalidRequest { message, param }) => (param.unwrap(), message),
            other => panic!("expected a 400, got {other:?}"),
        };
        assert_eq!(
            err(r#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#),
            ("max_tokens".into(), "max_tokens: Field required".into())
        );
        assert_eq!(
            err(r#"{"max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#).1,
            "model: Field required"
        );
        assert_eq!(
            err(r#"{"model":"c","max_tokens":1}"#).1,
            "messages: Field required"
        );
        assert_eq!(
            err(r#"{"model":"c","max_tokens":1,"messages":{}}"#).0,
            "messages"
        );
        assert_eq!(
            err(r#"{"model":"c","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#).0,
            "max_tokens"
        );
        assert_eq!(
            err(r#"{"model":"c","max_tokens":"9","messages":[{"role":"user","content":"x"}]}"#).0,
            "max_tokens"
        );
        assert_eq!(
            err(r#"{"model":"","max_tokens":9,"messages":[{"role":"user","content":"x"}]}"#).0,
            "model"
        );
        assert_eq!(
            err(r#"{"model":"c","max_tokens":9,"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#).0,
            "stream"
        );
        assert!(matches!(
            MessagesRequest::parse(b"{\"model\":"),
            Err(GatewayError::InvalidJson { .. })
        ));
        // An empty list is refused as Anthropic refuses it (found by the
        // `ingress` fuzz target: its translation had nothing to send).
        assert_eq!(
            err(r#"{"model":"c","max_tokens":9,"messages":[ ]}"#),
            (
                "messages".into(),
                "messages: at least one message is required".into()
            )
        );
        assert!(MessagesRequest::parse_count_tokens(br#"{"model":"c","messages":[]}"#).is_err());
        let empty_turn = MessagesRequest::parse(
            br#"{"model":"c","max_tokens":9,"messages":[{"role":"user","content":[]}]}"#,
        )
        .unwrap();
        assert!(matches!(
            messages_request_to_chat_body(&empty_turn, "m"),
            Err(GatewayError::InvalidRequest { .. })
        ));
        // count_tokens takes no max_tokens.
        let req = MessagesRequest::parse_count_tokens(
            br#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(req.max_tokens, 0);
    }

    #[test]
    fn what_would_change_the_answer_is_refused_naming_it() {
        let cases = [
            (
                r#","tools":[{"type":"web_search_20250305","name":"web_search","max_uses":5}]"#,
                "tools",
                "web_search_20250305",
            ),
            (
                r#","tools":[{"type":"bash_20250124","name":"bash"}]"#,
                "tools",
                "bash_20250124",
            ),
            (r#","container":"container_1""#, "container", "container"),
            (
                r#","mcp_servers":[{"type":"url","url":"https://m","name":"m"}]"#,
                "mcp_servers",
                "mcp_servers",
            ),
            (
                r#","messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="},"citations":{"enabled":true}}]}]"#,
                "messages",
                "`document` blocks",
            ),
            (
                r#","messages":[{"role":"user","content":[{"type":"search_result","source":"s","title":"t","content":[]}]}]"#,
                "messages",
                "search_result",
            ),
            (
                r#","messages":[{"role":"user","content":"q"},{"role":"assistant","content":[{"type":"server_tool_use","id":"s","name":"web_search","input":{}}]}]"#,
                "messages",
                "server tools",
            ),
            (
                r#","messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"file_1"}}]}]"#,
                "messages",
                "Files API",
            ),
            (
                r#","system":[{"type":"image","source":{}}]"#,
                "system",
                "system.0",
            ),
            (
                r#","output_config":{"format":{"type":"xml"}}"#,
                "output_config",
                "json_schema",
            ),
            (
                r#","messages":[{"role":"system","content":"x"}]"#,
                "messages",
                "role",
            ),
        ];
        for (extra, param, needle) in cases {
            let (p, message) = rejection(&with(extra));
            assert_eq!(p, param, "{extra}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn harmless_anthropic_only_fields_are_dropped() {
        let v = chat_body(&with(
            r#","service_tier":"auto","inference_geo":"eu","context_management":{"edits":[]},"cache_control":{"type":"ephemeral"},"thinking":{"type":"adaptive"},"speed":"fast""#,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"x"}],"max_tokens":10})
        );
    }

    #[test]
    fn tool_choice_maps_and_is_left_out_without_tools() {
        const TOOLS: &str = r#","tools":[{"name":"f","input_schema":{"type":"object"}}]"#;
        let choice = |c: &str| chat_body(&with(&format!(r#"{TOOLS},"tool_choice":{c}"#))).unwrap();
        assert_eq!(choice(r#"{"type":"auto"}"#)["tool_choice"], "auto");
        assert_eq!(choice(r#"{"type":"any"}"#)["tool_choice"], "required");
        assert_eq!(choice(r#"{"type":"none"}"#)["tool_choice"], "none");
        let v = choice(r#"{"type":"tool","name":"f","disable_parallel_tool_use":true}"#);
        assert_eq!(
            v["tool_choice"],
            json!({"type":"function","function":{"name":"f"}})
        );
        assert_eq!(v["parallel_tool_calls"], false);
        assert!(
            choice(r#"{"type":"auto","disable_parallel_tool_use":false}"#)
                .get("parallel_tool_calls")
                .is_none()
        );
        let v = chat_body(&with(
            r#","tool_choice":{"type":"any","disable_parallel_tool_use":true}"#,
        ))
        .unwrap();
        assert!(
            v.get("tool_choice").is_none() && v.get("parallel_tool_calls").is_none(),
            "{v}"
        );
        let (param, _) = rejection(&with(&format!(
            r#"{TOOLS},"tool_choice":{{"type":"tool"}}"#
        )));
        assert_eq!(param, "tool_choice");
    }

    #[test]
    fn thinking_budgets_map_to_reasoning_effort() {
        let f = thinking_budget_to_reasoning_effort;
        assert_eq!([f(1_024), f(4_000), f(4_095)], ["low"; 3]);
        assert_eq!([f(4_096), f(10_000), f(16_383)], ["medium"; 3]);
        assert_eq!([f(16_384), f(31_999), f(u64::MAX)], ["high"; 3]);
        let effort = |extra: &str| {
            chat_body(&with(extra))
                .unwrap()
                .get("reasoning_effort")
                .cloned()
        };
        assert_eq!(
            effort(r#","thinking":{"type":"enabled","budget_tokens":31999}"#),
            Some(json!("high"))
        );
        assert_eq!(effort(r#","thinking":{"type":"disabled"}"#), None);
        // An explicit effort wins; Anthropic's top levels read as `high`.
        assert_eq!(
            effort(
                r#","thinking":{"type":"enabled","budget_tokens":2000},"output_config":{"effort":"max"}"#
            ),
            Some(json!("high"))
        );
        assert_eq!(
            effort(r#","output_config":{"effort":"low"}"#),
            Some(json!("low"))
        );
    }

    #[test]
    fn tool_results_keep_images_and_say_when_an_empty_one_failed() {
        let v = chat_body(&with(
            r#","messages":[{"role":"user","content":[
                {"type":"tool_result","tool_use_id":"a","is_error":true},
                {"type":"tool_result","tool_use_id":"b","content":[{"type":"text","text":"see"},{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/"}}]},
                {"type":"tool_result","tool_use_id":"c","content":[]}]}]"#,
        ))
        .unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role":"tool","content":"Error","tool_call_id":"a"},
                {"role":"tool","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/"}}],"tool_call_id":"b"},
                {"role":"tool","content":"","tool_call_id":"c"}
            ])
        );
    }

    // ---- Answers -------------------------------------------------------------

    #[test]
    fn golden_answers_translate_exactly() {
        let cases = [
            (
                "text",
                fixture!("ingress/response_text.openai.json"),
                fixture!("ingress/response_text.anthropic.json"),
            ),
            (
                "tool_calls",
                fixture!("ingress/response_tool_calls.openai.json"),
                fixture!("ingress/response_tool_calls.anthropic.json"),
            ),
            (
                "length",
                fixture!("ingress/response_length.openai.json"),
                fixture!("ingress/response_length.anthropic.json"),
            ),
        ];
        for (name, openai, anthropic) in cases {
            let out =
                chat_response_to_message("p", openai.as_bytes(), "claude-sonnet-4-5").unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&out).unwrap(),
                json(anthropic),
                "{name}"
            );
        }
    }

    fn answer(choice: &str) -> Value {
        let body = format!(
            r#"{{"id":"chatcmpl-1","choices":[{choice}],"usage":{{"prompt_tokens":3,"completion_tokens":1}}}}"#
        );
        serde_json::from_slice(&chat_response_to_message("p", body.as_bytes(), "m").unwrap())
            .unwrap()
    }

    #[test]
    fn answers_carry_stop_reasons_ids_and_objects_as_anthropic_does() {
        let v = answer(r#"{"index":0,"message":{"content":"x"},"finish_reason":"content_filter"}"#);
        assert_eq!(v["stop_reason"], "refusal");
        // vLLM names the stop sequence it hit.
        let v = answer(
            r#"{"index":0,"message":{"content":"x"},"finish_reason":"stop","stop_reason":"END"}"#,
        );
        assert_eq!(
            (v["stop_reason"].as_str(), v["stop_sequence"].as_str()),
            (Some("stop_sequence"), Some("END"))
        );
        // Arguments that are not an object still give an object input.
        let v = answer(
            r#"{"index":0,"message":{"content":null,"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":"}},{"id":"d","function":{"name":"g","arguments":""}}]},"finish_reason":"stop"}"#,
        );
        assert_eq!(
            v["content"],
            json!([{"type":"tool_use","id":"c","name":"f","input":{}},{"type":"tool_use","id":"d","name":"g","input":{}}])
        );
        assert_eq!(v["stop_reason"], "tool_use");
        // An empty answer has no blocks; an Anthropic id is kept.
        let body =
            br#"{"id":"msg_01X","choices":[{"message":{"content":""},"finish_reason":"stop"}]}"#;
        let v: Value =
            serde_json::from_slice(&chat_response_to_message("p", body, "m").unwrap()).unwrap();
        assert_eq!(
            (v["id"].as_str(), &v["content"]),
            (Some("msg_01X"), &json!([]))
        );
        assert_eq!(
            v["usage"],
            json!({"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0})
        );
    }

    #[test]
    fn an_answer_that_is_not_a_completion_is_a_retryable_upstream_error() {
        for body in [&b"not json"[..], b"{\"choices\":[]}", b"[]"] {
            let e = chat_response_to_message("prov", body, "m").unwrap_err();
            assert!(
                matches!(&e, GatewayError::UpstreamInvalidResponse { provider, .. } if provider == "prov"),
                "{e:?}"
            );
            assert!(e.is_retryable());
        }
    }

    // ---- Streams -------------------------------------------------------------

    /// (scenario, OpenAI chunk stream, expected Anthropic events). The error
    /// and length inputs are what the Anthropic and Gemini adapters produce.
    const STREAMS: [(&str, &str, &str); 4] = [
        (
            "text",
            fixture!("ingress/stream_text.openai.sse"),
            fixture!("ingress/stream_text.anthropic.sse"),
        ),
        (
            "tool_calls",
            fixture!("ingress/stream_tool_calls.openai.sse"),
            fixture!("ingress/stream_tool_calls.anthropic.sse"),
        ),
        (
            "error_mid_stream",
            fixture!("anthropic/stream_error_mid_stream.openai.sse"),
            fixture!("ingress/stream_error_mid_stream.anthropic.sse"),
        ),
        (
            "length",
            fixture!("gemini/stream_max_tokens.openai.sse"),
            fixture!("ingress/stream_length.anthropic.sse"),
        ),
    ];

    /// Every chat stream the provider adapters' golden files hold.
    const ADAPTER_STREAMS: [&str; 14] = [
        fixture!("anthropic/stream_text.openai.sse"),
        fixture!("anthropic/stream_tool_call.openai.sse"),
        fixture!("anthropic/stream_parallel_tool_calls.openai.sse"),
        fixture!("anthropic/stream_json_schema.openai.sse"),
        fixture!("anthropic/stream_length.openai.sse"),
        fixture!("anthropic/stream_refusal.openai.sse"),
        fixture!("anthropic/stream_error_mid_stream.openai.sse"),
        fixture!("gemini/stream_text.openai.sse"),
        fixture!("gemini/stream_tool_call.openai.sse"),
        fixture!("gemini/stream_parallel_tool_calls.openai.sse"),
        fixture!("gemini/stream_mock_parallel_tool_calls.openai.sse"),
        fixture!("gemini/stream_safety.openai.sse"),
        fixture!("gemini/stream_prompt_blocked.openai.sse"),
        fixture!("gemini/stream_error_mid_stream.openai.sse"),
    ];

    fn convert(chunks: &[&[u8]]) -> (String, ChunksToMessageEvents) {
        let mut c = ChunksToMessageEvents::new("claude-sonnet-4-5", 30);
        let mut out = Vec::new();
        for chunk in chunks {
            c.push(chunk, &mut out);
        }
        c.finish(&mut out);
        (String::from_utf8(out).unwrap(), c)
    }

    #[test]
    fn golden_streams_translate_exactly() {
        for (name, input, want) in STREAMS {
            assert_eq!(convert(&[input.as_bytes()]).0, want, "{name}");
        }
    }

    #[test]
    fn golden_streams_survive_every_split_and_byte_by_byte() {
        for (name, input, want) in STREAMS {
            let input = input.as_bytes();
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(convert(&[a, b]).0, want, "{name} split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(convert(&bytes).0, want, "{name} byte by byte");
        }
    }

    /// Checks what the SDKs rely on: every event named by its `type`;
    /// `message_start` first; blocks started, filled and stopped one at a
    /// time with indices 0, 1, ...; then `message_delta` and `message_stop`,
    /// or one `error` last. Returns the event types.
    fn check_protocol(sse: &str) -> Vec<String> {
        let mut parser = SseParser::new();
        parser.push(sse.as_bytes());
        let mut types = Vec::new();
        let mut open: Option<u64> = None;
        let mut next_index = 0;
        while let Some(ev) = parser.finish() {
            let v = json(&ev.data);
            let kind = v["type"].as_str().unwrap().to_owned();
            assert_eq!(ev.event.as_deref(), Some(kind.as_str()), "{sse}");
            assert!(
                types
                    .last()
                    .is_none_or(|t| t != "message_stop" && t != "error"),
                "{sse}"
            );
            match kind.as_str() {
                "message_start" => {
                    assert!(types.is_empty(), "{sse}");
                    assert!(v["message"]["usage"]["input_tokens"].is_u64());
                }
                "content_block_start" => {
                    assert_eq!(
                        (open, v["index"].as_u64()),
                        (None, Some(next_index)),
                        "{sse}"
                    );
                    open = Some(next_index);
                    next_index += 1;
                }
                "content_block_delta" => assert_eq!(v["index"].as_u64(), open, "{sse}"),
                "content_block_stop" => assert_eq!(open.take(), v["index"].as_u64(), "{sse}"),
                "message_delta" => {
                    assert_eq!(open, None, "{sse}");
                    assert!(
                        v["delta"]["stop_reason"].is_string()
                            && v["usage"]["output_tokens"].is_u64()
                    );
                }
                "message_stop" => {
                    assert_eq!(types.last().map(String::as_str), Some("message_delta"))
                }
                "error" => {
                    assert!(v["error"]["type"].is_string() && v["error"]["message"].is_string())
                }
                other => panic!("unexpected event {other}"),
            }
            types.push(kind);
        }
        assert!(
            matches!(types[0].as_str(), "message_start" | "error"),
            "{sse}"
        );
        assert!(
            matches!(
                types.last().map(String::as_str),
                Some("message_stop" | "error")
            ),
            "{sse}"
        );
        types
    }

    #[test]
    fn every_adapter_stream_converts_to_a_well_formed_message_stream() {
        for input in ADAPTER_STREAMS.iter().chain(STREAMS.iter().map(|s| &s.1)) {
            let (out, _) = convert(&[input.as_bytes()]);
            check_protocol(&out);
            // Nothing of the answer is lost: every text and argument piece is there.
            let texts = |s: &str, keys: &[&str]| -> String {
                let mut parser = SseParser::new();
                parser.push(s.as_bytes());
                let mut all = String::new();
                while let Some(ev) = parser.finish() {
                    if ev.data == "[DONE]" {
                        continue;
                    }
                    let v = json(&ev.data);
                    for d in [
                        &v["delta"],
                        &v["choices"][0]["delta"],
                        &v["choices"][0]["delta"]["tool_calls"][0]["function"],
                    ] {
                        for k in keys {
                            all.push_str(d[*k].as_str().unwrap_or_default());
                        }
                    }
                }
                all
            };
            assert_eq!(
                texts(&out, &["text", "thinking", "partial_json"]),
                texts(input, &["content", "reasoning_content", "arguments"]),
                "{input}"
            );
        }
    }

    #[test]
    fn stream_usage_is_readable_for_settlement() {
        let (out, c) = convert(&[STREAMS[0].1.as_bytes()]);
        assert_eq!(c.usage(), Some(Usage::new(25, 7, Some(20))));
        assert!(out.contains(r#""usage":{"input_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":20,"output_tokens":7"#));
        let (_, c) = convert(&[STREAMS[3].1.as_bytes()]);
        assert_eq!(c.usage(), None);
    }

    #[test]
    fn a_stream_cut_before_its_finish_ends_with_an_error_event() {
        let input = STREAMS[0].1;
        let cut = &input[..input.find("\"finish_reason\":\"stop\"").unwrap()];
        let cut = &cut[..cut.rfind("data:").unwrap()];
        let (out, _) = convert(&[cut.as_bytes()]);
        assert!(out.contains("Ciao"));
        assert!(out.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The stream ended before the answer was complete.\"}}\n\n"
        ), "{out}");
        check_protocol(&out);
    }

    #[test]
    fn errors_end_the_stream_in_anthropics_shape_keeping_an_overload() {
        let overloaded = GatewayError::AllTargetsFailed {
            attempts: vec![
                Attempt {
                    provider: "a".into(),
                    model: "m".into(),
                    status: Some(529),
                    reason: "Overloaded".into(),
                    retry_after: None,
                },
                Attempt {
                    provider: "b".into(),
                    model: "m".into(),
                    status: Some(503),
                    reason: "busy".into(),
                    retry_after: None,
                },
            ],
        };
        let mut c = ChunksToMessageEvents::new("m", 0);
        let mut out = Vec::new();
        c.push(
            b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            &mut out,
        );
        c.error(&overloaded, &mut out);
        let before = out.len();
        c.push(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"more\"}}]}\n\n",
            &mut out,
        );
        c.finish(&mut out);
        assert_eq!(out.len(), before, "nothing after the error");
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            check_protocol(&out).last().map(String::as_str),
            Some("error")
        );
        assert!(out.contains(r#"{"type":"error","error":{"type":"overloaded_error","message":"All 2 targets failed:"#), "{out}");
        // An error before anything was sent is still one error event.
        let mut c = ChunksToMessageEvents::new("m", 0);
        let mut out = Vec::new();
        c.error(
            &GatewayError::Timeout {
                provider: "p".into(),
                phase: "end of stream",
                ms: 5,
            },
            &mut out,
        );
        assert!(String::from_utf8(out).unwrap().starts_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"timeout_error\""
        ));
    }

    // ---- Errors --------------------------------------------------------------

    #[test]
    fn errors_take_anthropics_statuses_and_types() {
        let up = |status| GatewayError::Upstream {
            provider: "p".into(),
            status,
            message: "m".into(),
            retry_after: None,
        };
        let attempt = |status| Attempt {
            provider: "p".into(),
            model: "m".into(),
            status,
            reason: "r".into(),
            retry_after: None,
        };
        let cases = [
            (
                GatewayError::InvalidRequest {
                    message: "m".into(),
                    param: None,
                },
                400,
                "invalid_request_error",
            ),
            (
                GatewayError::InvalidJson {
                    message: "m".into(),
                },
                400,
                "invalid_request_error",
            ),
            (
                GatewayError::Unauthorized {
                    message: "bad key".into(),
                },
                401,
                "authentication_error",
            ),
            (
                GatewayError::ModelNotFound { model: "m".into() },
                404,
                "not_found_error",
            ),
            (
                GatewayError::NotFound { path: "/x".into() },
                404,
                "not_found_error",
            ),
            (
                GatewayError::MethodNotAllowed {
                    method: "GET".into(),
                    allowed: "POST",
                },
                405,
                "invalid_request_error",
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                GatewayError::RateLimited {
                    message: "m".into(),
                    retry_after: Some(2),
                },
                429,
                "rate_limit_error",
            ),
            (
                GatewayError::BudgetExceeded {
                    message: "m".into(),
                    retry_after: None,
                },
                429,
                "rate_limit_error",
            ),
            (
                GatewayError::Internal {
                    message: "m".into(),
                },
                500,
                "api_error",
            ),
            (up(400), 400, "invalid_request_error"),
            (up(401), 502, "api_error"),
            (up(429), 429, "rate_limit_error"),
            (up(500), 502, "api_error"),
            (up(503), 529, "overloaded_error"),
            (up(529), 529, "overloaded_error"),
            (
                GatewayError::UpstreamUnreachable {
                    provider: "p".into(),
                    message: "m".into(),
                },
                502,
                "api_error",
            ),
            (
                GatewayError::Timeout {
                    provider: "p".into(),
                    phase: "first token",
                    ms: 1,
                },
                504,
                "timeout_error",
            ),
            (
                GatewayError::Unavailable {
                    message: "m".into(),
                    retry_after: Some(1),
                    rate_limited: false,
                },
                503,
                "overloaded_error",
            ),
            (
                GatewayError::AllTargetsFailed {
                    attempts: vec![attempt(Some(529)), attempt(Some(529))],
                },
                529,
                "overloaded_error",
            ),
            (
                GatewayError::AllTargetsFailed {
                    attempts: vec![attempt(Some(529)), attempt(None)],
                },
                503,
                "overloaded_error",
            ),
            (
                GatewayError::AllTargetsFailed {
                    attempts: vec![attempt(Some(429)), attempt(Some(429))],
                },
                429,
                "rate_limit_error",
            ),
        ];
        for (e, status, kind) in cases {
            assert_eq!(
                (
                    anthropic_error_status(&e),
                    anthropic_error_type(anthropic_error_status(&e))
                ),
                (status, kind),
                "{e:?}"
            );
            let body: Value = serde_json::from_slice(&anthropic_error_body(&e)).unwrap();
            assert_eq!(
                body,
                json!({"type":"error","error":{"type":kind,"message":e.to_string()}})
            );
        }
        assert_eq!(anthropic_error_type(402), "billing_error");
        assert_eq!(anthropic_error_type(403), "permission_error");
    }

    // ---- Token counting ------------------------------------------------------

    #[test]
    fn token_estimates_count_text_images_and_framing() {
        let body = r#"{"model":"m","system":[{"type":"text","text":"12345678"}],"messages":[
            {"role":"user","content":"abcd"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"ab","signature":"s"},{"type":"tool_use","id":"t","name":"fn","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"ab"},{"type":"image","source":{"type":"url","url":"u"}}]}]}],
            "tools":[{"name":"fn","input_schema":{}}]}"#;
        let req = MessagesRequest::parse_count_tokens(body.as_bytes()).unwrap();
        // Text: 8 + 4 + 2 + (2 + 2) + 2 = 20 bytes, tools JSON 33 bytes:
        // 53 bytes = 14 tokens; 3 messages x 4; one image.
        let tools_len = r#"[{"name":"fn","input_schema":{}}]"#.len() as u64;
        assert_eq!(tools_len, 33);
        assert_eq!(
            count_tokens_estimate(&req).unwrap(),
            14 + 12 + TOKENS_PER_IMAGE
        );
        assert_eq!(count_tokens_body(42), br#"{"input_tokens":42}"#);
    }

    // ---- Pass-through ----------------------------------------------------------

    fn relay_events(relay: &mut MessageEventsRelay, sse: &str) -> Vec<(String, bool)> {
        let mut parser = SseParser::new();
        parser.push(sse.as_bytes());
        let mut seen = Vec::new();
        while let Some(ev) = parser.next_event() {
            let name = ev.event.clone().unwrap_or_default();
            let mut out = Vec::new();
            relay.on_event(ev, &mut out).unwrap();
            seen.push((name, relay.carries_output(&out)));
        }
        seen
    }

    #[test]
    fn the_relay_commits_at_the_first_delta_and_reads_usage_as_it_goes() {
        let p: Provider = serde_json::from_str(r#"{"kind":"anthropic"}"#).unwrap();
        let target = Target {
            name: "anthropic",
            provider: &p,
            model: "claude-x",
        };
        let mut relay = MessageEventsRelay::new(&target);
        let seen = relay_events(
            &mut relay,
            fixture!("anthropic/stream_tool_call.anthropic.sse"),
        );
        let first_output = seen.iter().position(|(_, output)| *output).unwrap();
        assert_eq!(seen[first_output].0, "content_block_delta");
        assert!(seen[..first_output].iter().all(|(name, _)| matches!(
            name.as_str(),
            "message_start" | "ping" | "content_block_start"
        )));
        assert!(relay.on_end(&mut Vec::new()).is_ok());
        let usage = relay.usage().unwrap();
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        // Cut before message_stop: the end is an error.
        let mut relay = MessageEventsRelay::new(&target);
        relay_events(&mut relay, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
        assert!(relay.on_end(&mut Vec::new()).unwrap_err().is_retryable());
        // An event that is not JSON, where it must be read, is the upstream's fault.
        let mut relay = MessageEventsRelay::new(&target);
        let ev = SseEvent {
            event: Some("message_start".into()),
            data: "{oops".into(),
        };
        let e = relay.on_event(ev, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, GatewayError::UpstreamInvalidResponse { .. }));
    }

    #[test]
    fn upstream_errors_in_a_relayed_stream_keep_their_meaning() {
        let p: Provider = serde_json::from_str(r#"{"kind":"anthropic"}"#).unwrap();
        let target = Target {
            name: "anthropic",
            provider: &p,
            model: "claude-x",
        };
        for (kind, status) in [
            ("overloaded_error", 529),
            ("rate_limit_error", 429),
            ("api_error", 500),
        ] {
            let mut relay = MessageEventsRelay::new(&target);
            let data = format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"m"}}}}"#);
            let ev = SseEvent {
                event: Some("error".into()),
                data: data.clone(),
            };
            let e = relay.on_event(ev, &mut Vec::new()).unwrap_err();
            assert!(matches!(e, GatewayError::Upstream { status: s, .. } if s == status));
            // Rendered after the commit: the event as sent.
            let mut out = Vec::new();
            relay.write_error(&e, &mut out);
            assert_eq!(out, format!("event: error\ndata: {data}\n\n").into_bytes());
        }
    }

    #[test]
    fn non_streamed_answers_of_anthropic_targets_are_checked() {
        let usage = read_anthropic_message(
            "a",
            fixture!("anthropic/response_text.anthropic.json").as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((usage.prompt_tokens, usage.cache_write_tokens), (20, 3));
        for bad in [&br#"{"type":"error"}"#[..], b"[]", b"<html>"] {
            let e = read_anthropic_message("a", bad).unwrap_err();
            assert!(e.is_retryable(), "{e:?}");
        }
        assert_eq!(
            read_anthropic_count("a", br#"{"input_tokens":9}"#).unwrap(),
            9
        );
        assert!(read_anthropic_count("a", b"{}").is_err());
    }
}
