//! The Anthropic Messages wire format (`POST {base}/v1/messages`).
//!
//! Clients speak OpenAI chat completions; this adapter translates the request
//! into a Messages request and translates the answer, streamed or not, back
//! into OpenAI's shapes. The base URL is the host without `/v1`, as in
//! Anthropic's SDKs (`https://api.anthropic.com`).
//!
//! # OpenAI parameters and what happens to them
//!
//! | OpenAI parameter | Anthropic request |
//! |------------------|-------------------|
//! | `model` | `model`: the target's provider-side name |
//! | `messages`, `system`/`developer` | top-level `system` string, every one of them wherever it appears, joined with `"\n\n"`; non-text parts are a 400 |
//! | `messages`, `user`/`assistant` | `messages`; consecutive messages of one role merge into one message of several blocks (the API wants alternation); a conversation that opens with `assistant` is sent as is (nothing is invented; the API decides) |
//! | `messages`, `tool` | a `user` message of `tool_result` blocks (`tool_use_id` = `tool_call_id`); consecutive results merge |
//! | `messages[].tool_calls` | `tool_use` blocks after the text block (`input` = the parsed `arguments`; invalid JSON or a non-object is a 400) |
//! | `messages[].content` parts | `text` -> `text`; `image_url` `data:<mime>;base64,...` -> base64 `image`, `http(s)://` -> url `image` (`detail` is dropped); any other part is a 400 |
//! | `messages[].name` | dropped (no equivalent) |
//! | `messages`, `function` role | 400: legacy function calling is not translated |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens`; [`DEFAULT_MAX_TOKENS`] when absent (the API requires it) |
//! | `temperature` | `temperature`; OpenAI's 0–2 range is wider than Anthropic's 0–1, so values above 1 are clamped to 1 |
//! | `top_p` | `top_p` |
//! | `top_k` (non-standard) | `top_k` |
//! | `stop` | `stop_sequences` |
//! | `stream` | `stream` |
//! | `stream_options.include_usage` | not sent (Anthropic always reports usage); decides whether the client gets the usage chunk |
//! | `user` (else `safety_identifier`) | `metadata.user_id` |
//! | `tools` | `tools[]` of `{name, description, input_schema}`; `input_schema` defaults to `{"type":"object"}`; `strict` is dropped; a non-`function` tool is a 400 |
//! | `tool_choice` | `auto` -> `auto`, `required` -> `any`, named -> `tool`, `none` -> `none`; dropped when there are no tools |
//! | `parallel_tool_calls: false` | `disable_parallel_tool_use: true` on the tool choice (`auto` when none was given) |
//! | `response_format: json_schema` | a tool named after the schema, whose `input_schema` is the schema, is added and forced; its `tool_use` input comes back as the message **content** (compact JSON) with `finish_reason: stop`, streamed as content deltas. With the client's own tools the choice is `any` instead (the model calls a tool or answers through the schema tool), unless the client named a tool |
//! | `response_format: json_object` | the system prompt gets [`JSON_OBJECT_INSTRUCTION`] appended (Anthropic has no JSON mode) |
//! | `response_format: text` | nothing |
//! | `n` | 1 is fine; more is a 400 (one answer per request) |
//! | `functions`, `function_call` | 400: legacy function calling; use `tools` |
//! | `seed`, `logprobs`, `top_logprobs`, `logit_bias`, `frequency_penalty`, `presence_penalty`, `store`, `metadata`, `service_tier`, `modalities`, `audio`, `prediction`, `reasoning_effort`, `verbosity`, `web_search_options`, `prompt_cache_key`, anything else | dropped: no Anthropic equivalent |
//!
//! Answers: text blocks join into `content`, `tool_use` blocks become
//! `tool_calls`, and thinking or server-tool blocks are skipped. Stop reasons
//! map by [`anthropic_stop_reason_to_finish_reason`]. Usage counts cache reads
//! and writes as prompt tokens, cache reads also as cached tokens.
//!
//! Order: constants, wire types, request building, response parsing, stream
//! decoding, error mapping, tests.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{
    AssistantMessage, ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta,
    FinishReason, FunctionDelta, FunctionOut, Message, ResponseFormat, Role, Stop, Tool,
    ToolCallDelta, ToolCallOut, ToolChoice, ToolChoiceMode, Usage,
};
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::sse::{DONE, SseEvent};

use super::{ChunkWriter, StreamTranslator, Target};

// ---- Constants ---------------------------------------------------------------

/// Base URL when the config gives none (no `/v1`: the path adds it).
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The usual secret name for the key.
pub const SECRET: &str = "ANTHROPIC_API_KEY";

/// The `anthropic-version` header: the one stable version of the Messages API.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the client sets no cap. The API requires one; 4096 is
/// within every current model's output limit.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Appended to the system prompt for `response_format: json_object`.
pub const JSON_OBJECT_INSTRUCTION: &str = "Respond with a single JSON object and nothing else.";

/// The description of the tool that carries a `json_schema` answer.
const RESPONSE_TOOL_DESCRIPTION: &str = "Give your final answer by calling this tool; its input is the response, in the required format.";

/// The provider kind, as named in client-facing messages.
const KIND: &str = "provider kind anthropic";

// ---- Wire types --------------------------------------------------------------

/// A Messages request.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    /// Absent on other clouds, whose URL names the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    /// Only on other clouds (Vertex AI's `vertex-2023-10-16`), where the
    /// version goes in the body instead of a header.
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic_version: Option<&'a str>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<MessageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut>,
}

#[derive(Serialize)]
struct Metadata {
    user_id: String,
}

/// One turn of the conversation.
#[derive(Serialize)]
struct MessageOut {
    role: &'static str,
    content: ContentOut,
}

/// A lone text block is sent as a plain string, as people write it.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut {
    Text(String),
    Blocks(Vec<Block>),
}

impl From<Vec<Block>> for ContentOut {
    fn from(mut blocks: Vec<Block>) -> Self {
        if let [Block::Text { .. }] = blocks.as_slice()
            && let Some(Block::Text { text }) = blocks.pop()
        {
            return ContentOut::Text(text);
        }
        ContentOut::Blocks(blocks)
    }
}

/// An input content block.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        /// The client's arguments as they were spelled (key order kept).
        input: Box<RawValue>,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ContentOut>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Serialize)]
struct ToolOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: serde_json::Value,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToolChoiceOut {
    Auto {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    None,
}

/// A non-streamed answer (the fields the translation reads).
#[derive(Deserialize)]
struct MessageIn {
    id: String,
    model: String,
    content: Vec<BlockIn>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: UsageIn,
}

/// An output content block. A flat struct rather than a tagged enum: a
/// tagged enum buffers its content, and `RawValue` cannot come from a buffer.
#[derive(Deserialize)]
struct BlockIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Box<RawValue>>,
}

/// Token counts; every field optional because `message_delta` repeats only
/// some of them. Also read by the Messages pass-through
/// ([`crate::ingress::messages`]).
#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub(crate) struct UsageIn {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl UsageIn {
    /// Takes the counts `later` reports, keeping the others.
    pub(crate) fn merge(&mut self, later: UsageIn) {
        let keep = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        keep(&mut self.input_tokens, later.input_tokens);
        keep(&mut self.output_tokens, later.output_tokens);
        keep(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        keep(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }

    /// OpenAI's usage: cache reads and writes are prompt tokens too (OpenAI
    /// counts cached tokens inside `prompt_tokens`); writes are also kept
    /// apart, for their own price.
    pub(crate) fn to_openai(self) -> Usage {
        let read = self.cache_read_input_tokens;
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        Usage::new(
            self.input_tokens.unwrap_or(0) + read.unwrap_or(0) + written,
            self.output_tokens.unwrap_or(0),
            read,
        )
        .with_cache_writes(written)
    }
}

/// One stream event. Flat, with borrowed strings, so the hot
/// `content_block_delta` costs one pass and no allocation when its text has
/// no escapes.
#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default)]
    content_block: Option<BlockStartIn>,
    #[serde(default)]
    message: Option<MessageStartIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

/// The `delta` of `content_block_delta` or of `message_delta`.
#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct BlockStartIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct MessageStartIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: UsageIn,
}

/// The `error` of `{"type":"error","error":{"type","message"}}`, in a stream.
#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

// ---- Request building ----------------------------------------------------------

/// The upstream request for a chat completion.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    api_key: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    let p = target.provider;
    let base = p
        .base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/');
    let body = chat_request_to_messages_body(req, target.model)?;
    let mut headers = Vec::with_capacity(4 + p.headers.len());
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    headers.push(("anthropic-version".to_owned(), API_VERSION.to_owned()));
    if req.stream {
        headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
    }
    if let Some(key) = api_key {
        headers.push(("x-api-key".to_owned(), key.to_owned()));
    }
    // Operators add `anthropic-beta` and the like here.
    headers.extend(p.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(UpstreamRequest {
        method: "POST",
        url: format!("{base}/v1/messages"),
        headers,
        body,
    })
}

/// The Messages request body for an OpenAI chat-completions request. Every
/// rejection is a 400 naming the parameter.
pub fn chat_request_to_messages_body(
    req: &ChatRequest<'_>,
    model: &str,
) -> Result<Vec<u8>, GatewayError> {
    messages_body(req, Some(model), None)
}

/// The Messages body as Anthropic's models on another cloud take it: no
/// `model` (the URL names it) and the platform's `anthropic_version` in the
/// body (Vertex AI's `vertex-2023-10-16`).
pub fn chat_request_to_platform_body(
    req: &ChatRequest<'_>,
    anthropic_version: &str,
) -> Result<Vec<u8>, GatewayError> {
    messages_body(req, None, Some(anthropic_version))
}

fn messages_body(
    req: &ChatRequest<'_>,
    model: Option<&str>,
    anthropic_version: Option<&str>,
) -> Result<Vec<u8>, GatewayError> {
    if req.parse_field::<Option<u64>>("n")?.is_some_and(|n| n > 1) {
        return Err(invalid(format!("n > 1 is not supported by {KIND}"), "n"));
    }
    for legacy in ["functions", "function_call"] {
        if req.get(legacy).is_some() {
            return Err(invalid(
                format!(
                    "`{legacy}` (legacy function calling) is not supported by {KIND}; use `tools`"
                ),
                legacy,
            ));
        }
    }
    let (mut system, messages) = openai_messages_to_anthropic(req.messages()?)?;
    let format: Option<ResponseFormat> = req.parse_field("response_format")?;
    if let Some(ResponseFormat::JsonObject) = format {
        system = Some(match system {
            Some(s) => format!("{s}\n\n{JSON_OBJECT_INSTRUCTION}"),
            None => JSON_OBJECT_INSTRUCTION.to_owned(),
        });
    }

    let mut tools = openai_tools_to_anthropic(req.parse_field("tools")?)?;
    let disable_parallel = req.parse_field::<Option<bool>>("parallel_tool_calls")? == Some(false);
    let client_choice: Option<ToolChoice> = req.parse_field("tool_choice")?;
    let client_has_tools = !tools.is_empty();
    let mut tool_choice = if client_has_tools {
        match client_choice {
            Some(c) => Some(openai_tool_choice_to_anthropic(c, disable_parallel)),
            None if disable_parallel => Some(ToolChoiceOut::Auto {
                disable_parallel_tool_use: true,
            }),
            None => None,
        }
    } else {
        None
    };
    if let Some(ResponseFormat::JsonSchema { json_schema }) = format {
        if tools.iter().any(|t| t.name == json_schema.name) {
            return Err(invalid(
                format!(
                    "response_format.json_schema.name {:?} is also the name of a tool; {KIND} answers a json_schema through a tool of that name",
                    json_schema.name
                ),
                "response_format",
            ));
        }
        // Forcing the schema tool would forbid the client's own tools, so
        // with tools the model must call one of them or the schema tool.
        tool_choice = Some(match tool_choice {
            // Only set when the client has tools: the client named one.
            Some(named @ ToolChoiceOut::Tool { .. }) => named,
            Some(ToolChoiceOut::Auto { .. } | ToolChoiceOut::Any { .. }) | None
                if client_has_tools =>
            {
                ToolChoiceOut::Any {
                    disable_parallel_tool_use: disable_parallel,
                }
            }
            // No tools, or `tool_choice: none`: the answer is the schema tool,
            // called exactly once.
            _ => ToolChoiceOut::Tool {
                name: json_schema.name.clone(),
                disable_parallel_tool_use: true,
            },
        });
        tools.push(ToolOut {
            name: json_schema.name,
            description: Some(RESPONSE_TOOL_DESCRIPTION.to_owned()),
            input_schema: json_schema.schema.unwrap_or_else(object_schema),
        });
    }

    let temperature = req
        .parse_field::<Option<f64>>("temperature")?
        .map(|t| t.min(1.0));
    let user = match req.parse_field::<Option<String>>("user")? {
        Some(u) => Some(u),
        None => req.parse_field("safety_identifier")?,
    };
    let body = MessagesRequest {
        model,
        anthropic_version,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages,
        temperature,
        top_p: req.parse_field("top_p")?,
        top_k: req.parse_field("top_k")?,
        stop_sequences: req
            .parse_field::<Option<Stop>>("stop")?
            .map(Stop::into_vec)
            .unwrap_or_default(),
        stream: req.stream,
        metadata: user.map(|user_id| Metadata { user_id }),
        tools,
        tool_choice,
    };
    serde_json::to_vec(&body).map_err(|e| GatewayError::Internal {
        message: format!("serializing an Anthropic request: {e}"),
    })
}

fn invalid(message: String, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: Some(param.to_owned()),
    }
}

fn object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

/// Splits OpenAI messages into Anthropic's `system` and alternating turns.
fn openai_messages_to_anthropic(
    messages: Vec<Message>,
) -> Result<(Option<String>, Vec<MessageOut>), GatewayError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Block>)> = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                system.push(system_text(m.content, i)?);
                continue;
            }
            Role::User => ("user", openai_content_to_blocks(m.content, i)?),
            Role::Assistant => ("assistant", assistant_blocks(m, i)?),
            Role::Tool => {
                let Some(tool_use_id) = m.tool_call_id else {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id is required for a tool message"),
                        "messages",
                    ));
                };
                let content = match m.content {
                    None => None,
                    Some(Content::Text(text)) => Some(ContentOut::Text(text)),
                    Some(c) => Some(ContentOut::Blocks(openai_content_to_blocks(Some(c), i)?)),
                };
                let result = Block::ToolResult {
                    tool_use_id,
                    content,
                };
                ("user", vec![result])
            }
            Role::Function => {
                return Err(invalid(
                    format!(
                        "messages[{i}]: the `function` role (legacy function calling) is not supported by {KIND}; use `tool`"
                    ),
                    "messages",
                ));
            }
        };
        if blocks.is_empty() {
            continue; // a message with no content (nor calls) says nothing
        }
        match turns.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let turns = turns
        .into_iter()
        .map(|(role, blocks)| MessageOut {
            role,
            content: blocks.into(),
        })
        .collect();
    Ok((system, turns))
}

fn system_text(content: Option<Content>, i: usize) -> Result<String, GatewayError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match part {
                    ContentPart::Text { text: t } => text.push_str(&t),
                    _ => {
                        return Err(invalid(
                            format!(
                                "messages[{i}].content[{j}]: a system message may contain only text parts for {KIND}"
                            ),
                            "messages",
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

/// Text, then one `tool_use` block per call.
fn assistant_blocks(m: Message, i: usize) -> Result<Vec<Block>, GatewayError> {
    let calls = m.tool_calls.unwrap_or_default();
    let mut blocks = openai_content_to_blocks(m.content, i)?;
    if !calls.is_empty() {
        // SDKs often send `content: ""` beside tool calls; Anthropic rejects
        // empty text blocks, and an empty string says nothing.
        blocks.retain(|b| !matches!(b, Block::Text { text } if text.is_empty()));
    }
    for (j, call) in calls.into_iter().enumerate() {
        let args = call.function.arguments;
        let args = if args.trim().is_empty() { "{}" } else { &args };
        let input = serde_json::from_str::<Box<RawValue>>(args)
            .ok()
            .filter(|raw| raw.get().trim_start().starts_with('{'))
            .ok_or_else(|| {
                invalid(
                    format!(
                        "messages[{i}].tool_calls[{j}].function.arguments must be a JSON object, got {args:?}"
                    ),
                    "messages",
                )
            })?;
        blocks.push(Block::ToolUse {
            id: call.id,
            name: call.function.name,
            input,
        });
    }
    Ok(blocks)
}

fn openai_content_to_blocks(
    content: Option<Content>,
    i: usize,
) -> Result<Vec<Block>, GatewayError> {
    match content {
        None => Ok(vec![]),
        Some(Content::Text(text)) => Ok(vec![Block::Text { text }]),
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| openai_part_to_block(part, i, j))
            .collect(),
    }
}

fn openai_part_to_block(part: ContentPart, i: usize, j: usize) -> Result<Block, GatewayError> {
    match part {
        ContentPart::Text { text } => Ok(Block::Text { text }),
        ContentPart::ImageUrl { image_url } => image_url_to_source(image_url.url)
            .map(|source| Block::Image { source })
            .map_err(|why| {
                invalid(
                    format!("messages[{i}].content[{j}].image_url: {why}"),
                    "messages",
                )
            }),
        ContentPart::Other => Err(invalid(
            format!(
                "messages[{i}].content[{j}]: only `text` and `image_url` content parts are supported by {KIND}"
            ),
            "messages",
        )),
    }
}

/// `data:<mime>;base64,<data>` or an `http(s)://` URL.
fn image_url_to_source(url: String) -> Result<ImageSource, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or("a data URL needs a comma before its data")?;
        let Some(media_type) = meta.strip_suffix(";base64") else {
            return Err(format!("only base64 data URLs are supported by {KIND}"));
        };
        // `image/png;name=x;base64`: the media type is the part before any parameter.
        let media_type = media_type.split(';').next().unwrap_or_default();
        return Ok(ImageSource::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(ImageSource::Url { url });
    }
    Err("expected an https:// URL or a base64 data URL".to_owned())
}

fn openai_tools_to_anthropic(tools: Option<Vec<Tool>>) -> Result<Vec<ToolOut>, GatewayError> {
    tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(invalid(
                    format!(
                        "tools[{i}]: only `function` tools are supported by {KIND}, got {:?}",
                        t.kind
                    ),
                    "tools",
                ));
            }
            Ok(ToolOut {
                name: t.function.name,
                description: t.function.description,
                input_schema: t.function.parameters.unwrap_or_else(object_schema),
            })
        })
        .collect()
}

fn openai_tool_choice_to_anthropic(choice: ToolChoice, disable_parallel: bool) -> ToolChoiceOut {
    let disable_parallel_tool_use = disable_parallel;
    match choice {
        ToolChoice::Mode(ToolChoiceMode::Auto) => ToolChoiceOut::Auto {
            disable_parallel_tool_use,
        },
        ToolChoice::Mode(ToolChoiceMode::Required) => ToolChoiceOut::Any {
            disable_parallel_tool_use,
        },
        ToolChoice::Mode(ToolChoiceMode::None) => ToolChoiceOut::None,
        ToolChoice::Named { function } => ToolChoiceOut::Tool {
            name: function.name,
            disable_parallel_tool_use,
        },
    }
}

/// The name of the tool that carries a `json_schema` answer, when the
/// request asked for one. The request was validated when it was built.
fn response_tool_name(req: &ChatRequest<'_>) -> Option<String> {
    match req.parse_field::<Option<ResponseFormat>>("response_format") {
        Ok(Some(ResponseFormat::JsonSchema { json_schema })) => Some(json_schema.name),
        _ => None,
    }
}

// ---- Response parsing ------------------------------------------------------------

/// Translates a 2xx Messages body into the client's `chat.completion` body.
/// `now_s` (Unix seconds) is its `created`: Anthropic's answers carry no time.
pub fn chat_response(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    let message: MessageIn =
        serde_json::from_slice(body).map_err(|e| GatewayError::UpstreamInvalidResponse {
            provider: target.name.to_owned(),
            message: format!("not a Messages response: {e}"),
        })?;
    let completion =
        anthropic_message_to_chat_completion(message, response_tool_name(req).as_deref(), now_s);
    let usage = completion.usage;
    let body = serde_json::to_vec(&completion).map_err(|e| GatewayError::Internal {
        message: format!("serializing a completion: {e}"),
    })?;
    Ok((body, usage))
}

/// The completion for an answer. A `tool_use` of `response_tool` (the
/// `json_schema` carrier) becomes content, not a tool call.
fn anthropic_message_to_chat_completion(
    message: MessageIn,
    response_tool: Option<&str>,
    now_s: u64,
) -> ChatCompletion {
    let mut content: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block.kind.as_str() {
            "text" => content
                .get_or_insert_default()
                .push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" => {
                let arguments = block
                    .input
                    .as_deref()
                    .map_or_else(|| "{}".to_owned(), |raw| compact_json(raw.get()));
                let name = block.name.unwrap_or_default();
                if response_tool == Some(name.as_str()) {
                    content.get_or_insert_default().push_str(&arguments);
                } else {
                    tool_calls.push(ToolCallOut {
                        id: block.id.unwrap_or_default(),
                        kind: "function",
                        function: FunctionOut { name, arguments },
                    });
                }
            }
            // Thinking, server tools and future block types have no
            // place in a chat completion.
            _ => {}
        }
    }
    let finish_reason = message.stop_reason.as_deref().map(|r| {
        match anthropic_stop_reason_to_finish_reason(r) {
            // The only call was the schema tool: the answer is complete.
            FinishReason::ToolCalls if tool_calls.is_empty() => FinishReason::Stop,
            other => other,
        }
    });
    ChatCompletion {
        id: message.id,
        object: "chat.completion",
        created: now_s,
        model: message.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            finish_reason,
            logprobs: None,
        }],
        usage: Some(message.usage.to_openai()),
    }
}

/// Why Anthropic stopped, in OpenAI's words. Unknown future reasons read as
/// a natural stop.
pub fn anthropic_stop_reason_to_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // `end_turn`, `stop_sequence`, `pause_turn` (a server tool paused
        // the turn; what was said is complete as far as the client can act).
        _ => FinishReason::Stop,
    }
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

// ---- Stream decoding ---------------------------------------------------------------

/// What one Anthropic content block becomes in the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Text deltas become content deltas.
    Text,
    /// A tool call: its ordinal among the answer's tool calls, which is
    /// OpenAI's `index` (Anthropic's block index counts text blocks too).
    Tool(u32),
    /// The `json_schema` carrier: its argument pieces become content.
    ResponseTool,
    /// Thinking, server tools, future types: skipped.
    Skipped,
}

/// Anthropic stream events -> OpenAI chunk bytes, one event at a time.
pub struct EventsToChunks {
    provider: String,
    /// Id and model are set by `message_start`.
    chunks: ChunkWriter,
    response_tool: Option<String>,
    /// (Anthropic block index, kind), as blocks start. Indexes come from
    /// the provider: kept as pairs, not as positions in a vector, so an
    /// index of 10^11 costs one entry, not 800 GB (found by fuzzing).
    blocks: Vec<(usize, BlockKind)>,
    tool_calls: u32,
    usage: Option<UsageIn>,
    stopped: bool,
}

impl EventsToChunks {
    /// A translator for one stream; `now_s` (Unix seconds) is every chunk's
    /// `created`.
    pub fn new(target: &Target<'_>, req: &ChatRequest<'_>, now_s: u64) -> Self {
        EventsToChunks {
            provider: target.name.to_owned(),
            chunks: ChunkWriter {
                created: now_s,
                client_wants_usage: req.include_usage,
                ..ChunkWriter::default()
            },
            response_tool: response_tool_name(req),
            blocks: Vec::new(),
            tool_calls: 0,
            usage: None,
            stopped: false,
        }
    }

    fn invalid(&self, message: String) -> GatewayError {
        GatewayError::UpstreamInvalidResponse {
            provider: self.provider.clone(),
            message,
        }
    }

    fn block_start(&mut self, index: usize, block: BlockStartIn, out: &mut Vec<u8>) {
        let kind = match block.kind.as_str() {
            "text" => BlockKind::Text,
            "tool_use" if block.name.is_some() && block.name == self.response_tool => {
                BlockKind::ResponseTool
            }
            "tool_use" => {
                self.tool_calls += 1;
                BlockKind::Tool(self.tool_calls - 1)
            }
            _ => BlockKind::Skipped,
        };
        // Newest first: a delta is nearly always for the block just opened.
        // Real answers have tens of blocks; past 4,096 more are ignored.
        let known = self.blocks.len();
        match self.blocks.iter_mut().rev().find(|(i, _)| *i == index) {
            Some(slot) => slot.1 = kind,
            None if known < 4_096 => self.blocks.push((index, kind)),
            None => {}
        }
        match kind {
            BlockKind::Text => {
                // Always empty in practice; sent should it ever carry text.
                if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                    self.chunks.delta(out, content_delta(text), None);
                }
            }
            BlockKind::Tool(index) => {
                let delta = Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index,
                        id: Some(block.id.as_deref().unwrap_or_default()),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(block.name.as_deref().unwrap_or_default()),
                            arguments: "",
                        },
                    }]),
                    ..Delta::default()
                };
                self.chunks.delta(out, delta, None);
            }
            BlockKind::ResponseTool | BlockKind::Skipped => {}
        }
    }

    fn block_delta(&self, index: Option<usize>, delta: DeltaIn<'_>, out: &mut Vec<u8>) {
        let kind = index.and_then(|i| {
            self.blocks
                .iter()
                .rev()
                .find(|(b, _)| *b == i)
                .map(|(_, k)| *k)
        });
        match delta.kind.as_deref() {
            Some("text_delta") => {
                if let Some(text) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                    self.chunks.delta(out, content_delta(text), None);
                }
            }
            Some("input_json_delta") => {
                let Some(json) = delta.partial_json.as_deref().filter(|j| !j.is_empty()) else {
                    return;
                };
                match kind {
                    Some(BlockKind::Tool(index)) => {
                        let delta = Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: json,
                                },
                            }]),
                            ..Delta::default()
                        };
                        self.chunks.delta(out, delta, None);
                    }
                    Some(BlockKind::ResponseTool) => {
                        self.chunks.delta(out, content_delta(json), None)
                    }
                    _ => {}
                }
            }
            // thinking_delta, signature_delta, citations_delta, future types.
            _ => {}
        }
    }
}

fn content_delta(text: &str) -> Delta<'_> {
    Delta {
        content: Some(text),
        ..Delta::default()
    }
}

impl StreamTranslator for EventsToChunks {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.stopped {
            return Ok(());
        }
        // The JSON `type` is authoritative; the SSE event name repeats it.
        let event: EventIn<'_> = serde_json::from_str(&ev.data)
            .map_err(|e| self.invalid(format!("invalid stream event: {e}")))?;
        match event.kind.as_ref() {
            "message_start" => {
                let message = event
                    .message
                    .ok_or_else(|| self.invalid("message_start without a message".into()))?;
                self.chunks.id = message.id;
                self.chunks.model = message.model;
                self.usage = Some(message.usage);
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    tool_calls: None,
                };
                self.chunks.delta(out, delta, None);
            }
            "content_block_start" => {
                if let (Some(index), Some(block)) = (event.index, event.content_block) {
                    self.block_start(index, block, out);
                }
            }
            "content_block_delta" => {
                if let Some(delta) = event.delta {
                    self.block_delta(event.index, delta, out);
                }
            }
            "message_delta" => {
                if let Some(later) = event.usage {
                    self.usage.get_or_insert_default().merge(later);
                }
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    let finish = match anthropic_stop_reason_to_finish_reason(&reason) {
                        // The only call was the schema tool: the answer is complete.
                        FinishReason::ToolCalls if self.tool_calls == 0 => FinishReason::Stop,
                        other => other,
                    };
                    self.chunks.delta(out, Delta::default(), Some(finish));
                }
            }
            "message_stop" => {
                self.stopped = true;
                if self.chunks.client_wants_usage {
                    self.chunks
                        .chunk(out, vec![], Some(self.usage().unwrap_or_default()));
                }
                out.extend_from_slice(DONE);
            }
            "error" => {
                let detail = event.error.unwrap_or(ErrorDetail {
                    kind: None,
                    message: None,
                });
                // Overloaded is Anthropic's 529; anything else mid-stream is
                // a server fault. Both are worth another target.
                let status = if detail.kind.as_deref() == Some("overloaded_error") {
                    529
                } else {
                    500
                };
                return Err(GatewayError::Upstream {
                    provider: self.provider.clone(),
                    status,
                    message: detail
                        .message
                        .or(detail.kind)
                        .unwrap_or_else(|| "stream error".to_owned()),
                    retry_after: None,
                });
            }
            // `ping`, `content_block_stop` and event types added later.
            _ => {}
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
        self.usage.map(UsageIn::to_openai)
    }
}

// ---- Error mapping -------------------------------------------------------------------

/// Maps an error response to the gateway's error. The status passes through
/// (529 overloaded is retryable, see [`crate::error::is_retryable_status`]).
/// Anthropic's body, `{"type":"error","error":{"type","message"}}`, keeps the
/// message at OpenAI's path, `error.message`, so OpenAI's mapper reads it:
/// the provider's own message, else a bounded excerpt. Anthropic does not
/// echo keys; the gateway redacts regardless.
pub fn error_from_body(
    provider: &str,
    status: u16,
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    super::openai::error_from_body(provider, status, retry_after, body)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use futures::executor::block_on;
    use futures::{StreamExt, stream};
    use serde_json::{Value, json};

    use super::*;
    use crate::config::{Config, Provider, ProviderKind};
    use crate::gateway::{self, Ctx, ReplyBody};
    use crate::http::{Upstream, UpstreamResponse};
    use crate::sse::SseParser;

    /// A golden file under `tests/fixtures/anthropic/`.
    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/anthropic/",
                $name
            ))
        };
    }

    const NOW_S: u64 = 1_700_000_000;
    const MODEL: &str = "claude-sonnet-4-5";

    fn provider(json: &str) -> Provider {
        serde_json::from_str(json).unwrap()
    }

    fn target(p: &Provider) -> Target<'_> {
        Target {
            name: "anthropic",
            provider: p,
            model: MODEL,
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// The Messages body for an OpenAI request body.
    fn translate_request(body: &str) -> Result<Value, GatewayError> {
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        chat_request_to_messages_body(&req, MODEL).map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// The 400's parameter and message.
    fn rejection(body: &str) -> (String, String) {
        match translate_request(body) {
            Err(GatewayError::InvalidRequest { message, param }) => (param.unwrap(), message),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    // ---- Requests ----------------------------------------------------------------

    #[test]
    fn golden_requests_translate_exactly() {
        let cases = [
            (
                "text",
                fixture!("request_text.openai.json"),
                fixture!("request_text.anthropic.json"),
            ),
            (
                "system_multi_turn",
                fixture!("request_system_multi_turn.openai.json"),
                fixture!("request_system_multi_turn.anthropic.json"),
            ),
            (
                "tool_call",
                fixture!("request_tool_call.openai.json"),
                fixture!("request_tool_call.anthropic.json"),
            ),
            (
                "tool_result_round_trip",
                fixture!("request_tool_result_round_trip.openai.json"),
                fixture!("request_tool_result_round_trip.anthropic.json"),
            ),
            (
                "image_input",
                fixture!("request_image_input.openai.json"),
                fixture!("request_image_input.anthropic.json"),
            ),
            (
                "json_schema",
                fixture!("request_json_schema.openai.json"),
                fixture!("request_json_schema.anthropic.json"),
            ),
            (
                "json_object",
                fixture!("request_json_object.openai.json"),
                fixture!("request_json_object.anthropic.json"),
            ),
        ];
        for (name, openai, anthropic) in cases {
            assert_eq!(
                translate_request(openai).unwrap(),
                json(anthropic),
                "{name}"
            );
        }
    }

    #[test]
    fn request_goes_to_v1_messages_with_key_and_version_headers() {
        let p = provider(r#"{"kind":"anthropic","headers":{"anthropic-beta":"x-2025"}}"#);
        let req = ChatRequest::parse(fixture!("request_system_multi_turn.openai.json").as_bytes())
            .unwrap();
        let up = build_chat_request(&target(&p), &req, Some("sk-ant-1")).unwrap();
        assert_eq!(up.method, "POST");
        assert_eq!(up.url, "https://api.anthropic.com/v1/messages");
        let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            up.headers,
            [
                h("content-type", "application/json"),
                h("anthropic-version", "2023-06-01"),
                h("accept", "text/event-stream"),
                h("x-api-key", "sk-ant-1"),
                h("anthropic-beta", "x-2025"),
            ]
        );
        assert!(!up.headers.iter().any(|(k, _)| k == "authorization"));

        let p = provider(r#"{"kind":"anthropic","base_url":"http://127.0.0.1:9/_mock/chunks=2/"}"#);
        let req = ChatRequest::parse(fixture!("request_text.openai.json").as_bytes()).unwrap();
        let up = build_chat_request(&target(&p), &req, None).unwrap();
        assert_eq!(up.url, "http://127.0.0.1:9/_mock/chunks=2/v1/messages");
        assert!(
            !up.headers
                .iter()
                .any(|(k, _)| k == "x-api-key" || k == "accept")
        );
    }

    #[test]
    fn temperature_up_to_1_passes_and_above_is_clamped() {
        let t = |t: &str| {
            translate_request(&format!(
                r#"{{"model":"c","messages":[{{"role":"user","content":"x"}}],"temperature":{t}}}"#
            ))
            .unwrap()["temperature"]
                .clone()
        };
        assert_eq!(t("0.7"), json!(0.7));
        assert_eq!(t("1"), json!(1.0));
        assert_eq!(t("2"), json!(1.0));
        assert_eq!(t("0"), json!(0.0));
    }

    #[test]
    fn system_messages_anywhere_join_into_system() {
        let v = translate_request(
            r#"{"model":"c","messages":[{"role":"user","content":"a"},{"role":"system","content":"one"},
               {"role":"assistant","content":"b"},{"role":"developer","content":"two"},{"role":"user","content":"c"}]}"#,
        )
        .unwrap();
        assert_eq!(v["system"], "one\n\ntwo");
        assert_eq!(
            v["messages"],
            json!([{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}])
        );
    }

    #[test]
    fn conversation_opening_with_assistant_is_sent_as_is() {
        let v = translate_request(
            r#"{"model":"c","messages":[{"role":"assistant","content":"Hi, how can I help?"},{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(
            v["messages"],
            json!([{"role":"assistant","content":"Hi, how can I help?"},{"role":"user","content":"x"}])
        );
    }

    #[test]
    fn n_above_1_is_rejected() {
        let (param, message) =
            rejection(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"n":2}"#);
        assert_eq!(param, "n");
        assert_eq!(message, "n > 1 is not supported by provider kind anthropic");
    }

    #[test]
    fn invalid_tool_call_arguments_are_rejected_naming_messages() {
        for args in [r#""{\"city\":""#, r#""[1,2]""#, r#""42""#] {
            let (param, message) = rejection(&format!(
                r#"{{"model":"c","messages":[{{"role":"user","content":"x"}},
                   {{"role":"assistant","tool_calls":[{{"id":"t","type":"function","function":{{"name":"f","arguments":{args}}}}}]}}]}}"#
            ));
            assert_eq!(param, "messages");
            assert!(
                message.starts_with(
                    "messages[1].tool_calls[0].function.arguments must be a JSON object"
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn unsupported_content_is_rejected_not_dropped() {
        let cases = [
            // An audio part.
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AA==","format":"wav"}}]}]}"#,
            // An image that is neither https nor base64 data.
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#,
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/svg+xml,<svg/>"}}]}]}"#,
            // An image in a system message.
            r#"{"model":"c","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]},{"role":"user","content":"x"}]}"#,
            // Legacy function messages, and a tool message without its call id.
            r#"{"model":"c","messages":[{"role":"function","name":"f","content":"1"}]}"#,
            r#"{"model":"c","messages":[{"role":"tool","content":"1"}]}"#,
        ];
        for body in cases {
            let (param, message) = rejection(body);
            assert_eq!(param, "messages", "{body}");
            assert!(message.contains("messages[0]"), "{message}");
        }
        let (param, _) = rejection(
            r#"{"model":"c","messages":[{"role":"user","content":"x"}],"functions":[{"name":"f"}]}"#,
        );
        assert_eq!(param, "functions");
        let (param, message) = rejection(
            r#"{"model":"c","messages":[{"role":"user","content":"x"}],"tools":[{"type":"custom","function":{"name":"f"}}]}"#,
        );
        assert_eq!(param, "tools");
        assert!(message.contains("custom"), "{message}");
    }

    const TOOLS: &str = r#""tools":[{"type":"function","function":{"name":"get_weather"}}]"#;
    const SCHEMA: &str = r#""response_format":{"type":"json_schema","json_schema":{"name":"person","schema":{"type":"object"}}}"#;

    fn with(extra: &str) -> Value {
        translate_request(&format!(
            r#"{{"model":"c","messages":[{{"role":"user","content":"x"}}],{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn tool_choice_modes_map_and_parallel_false_disables_parallel_use() {
        assert_eq!(
            with(&format!(r#"{TOOLS},"tool_choice":"auto""#))["tool_choice"],
            json!({"type":"auto"})
        );
        assert_eq!(
            with(&format!(r#"{TOOLS},"tool_choice":"none""#))["tool_choice"],
            json!({"type":"none"})
        );
        assert_eq!(
            with(&format!(r#"{TOOLS},"parallel_tool_calls":false"#))["tool_choice"],
            json!({"type":"auto","disable_parallel_tool_use":true})
        );
        assert_eq!(
            with(&format!(
                r#"{TOOLS},"parallel_tool_calls":false,"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}"#
            ))["tool_choice"],
            json!({"type":"tool","name":"get_weather","disable_parallel_tool_use":true})
        );
        assert!(
            with(&format!(r#"{TOOLS},"parallel_tool_calls":true"#))
                .get("tool_choice")
                .is_none()
        );
        // No tools: a tool choice has nothing to choose from.
        let v = with(r#""tool_choice":"required","parallel_tool_calls":false"#);
        assert!(
            v.get("tool_choice").is_none() && v.get("tools").is_none(),
            "{v}"
        );
    }

    #[test]
    fn json_schema_with_client_tools_lets_the_model_pick_a_tool() {
        let v = with(&format!("{TOOLS},{SCHEMA}"));
        assert_eq!(v["tool_choice"], json!({"type":"any"}));
        let names: Vec<&str> = v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["get_weather", "person"]);
        // A named client choice stands; `none` leaves only the schema tool.
        let v = with(&format!(
            r#"{TOOLS},{SCHEMA},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}"#
        ));
        assert_eq!(
            v["tool_choice"],
            json!({"type":"tool","name":"get_weather"})
        );
        let v = with(&format!(r#"{TOOLS},{SCHEMA},"tool_choice":"none""#));
        assert_eq!(
            v["tool_choice"],
            json!({"type":"tool","name":"person","disable_parallel_tool_use":true})
        );
        // The schema's name must not shadow a client tool.
        let (param, _) = rejection(&format!(
            r#"{{"model":"c","messages":[{{"role":"user","content":"x"}}],{TOOLS},"response_format":{{"type":"json_schema","json_schema":{{"name":"get_weather"}}}}}}"#
        ));
        assert_eq!(param, "response_format");
    }

    #[test]
    fn safety_identifier_is_the_user_id_when_user_is_absent() {
        assert_eq!(
            with(r#""safety_identifier":"h-1""#)["metadata"],
            json!({"user_id":"h-1"})
        );
        assert_eq!(
            with(r#""safety_identifier":"h-1","user":"u-1""#)["metadata"],
            json!({"user_id":"u-1"})
        );
    }

    // ---- Responses -------------------------------------------------------------

    const PLAIN: &str = r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#;

    fn translate_response(req: &str, body: &str) -> (Value, Option<Usage>) {
        let p = provider(r#"{"kind":"anthropic"}"#);
        let req = ChatRequest::parse(req.as_bytes()).unwrap();
        let (out, usage) = chat_response(&target(&p), &req, body.as_bytes(), NOW_S).unwrap();
        (serde_json::from_slice(&out).unwrap(), usage)
    }

    #[test]
    fn golden_responses_translate_exactly() {
        let json_schema = fixture!("request_json_schema.openai.json");
        let cases = [
            (
                "text",
                PLAIN,
                fixture!("response_text.anthropic.json"),
                fixture!("response_text.openai.json"),
            ),
            (
                "tool_call",
                PLAIN,
                fixture!("response_tool_call.anthropic.json"),
                fixture!("response_tool_call.openai.json"),
            ),
            (
                "parallel_tool_calls",
                PLAIN,
                fixture!("response_parallel_tool_calls.anthropic.json"),
                fixture!("response_parallel_tool_calls.openai.json"),
            ),
            (
                "json_schema",
                json_schema,
                fixture!("response_json_schema.anthropic.json"),
                fixture!("response_json_schema.openai.json"),
            ),
            (
                "length",
                PLAIN,
                fixture!("response_length.anthropic.json"),
                fixture!("response_length.openai.json"),
            ),
            (
                "refusal",
                PLAIN,
                fixture!("response_refusal.anthropic.json"),
                fixture!("response_refusal.openai.json"),
            ),
        ];
        for (name, req, anthropic, openai) in cases {
            let (got, usage) = translate_response(req, anthropic);
            let want = json(openai);
            assert_eq!(got, want, "{name}");
            let want_usage: Usage = serde_json::from_value(want["usage"].clone()).unwrap();
            // Cache writes are kept apart for settlement, not on OpenAI's wire.
            let written = usage.map_or(0, |u| u.cache_write_tokens);
            assert_eq!(usage, Some(want_usage.with_cache_writes(written)), "{name}");
        }
    }

    #[test]
    fn cache_reads_and_writes_count_as_prompt_tokens() {
        let (_, usage) = translate_response(PLAIN, fixture!("response_text.anthropic.json"));
        // 12 uncached + 3 written + 5 read; the writes also apart.
        assert_eq!(usage, Some(Usage::new(20, 4, Some(5)).with_cache_writes(3)));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let f = anthropic_stop_reason_to_finish_reason;
        assert_eq!(f("end_turn"), FinishReason::Stop);
        assert_eq!(f("stop_sequence"), FinishReason::Stop);
        assert_eq!(f("pause_turn"), FinishReason::Stop);
        assert_eq!(f("max_tokens"), FinishReason::Length);
        assert_eq!(f("tool_use"), FinishReason::ToolCalls);
        assert_eq!(f("refusal"), FinishReason::ContentFilter);
        assert_eq!(f("something_new"), FinishReason::Stop);
    }

    #[test]
    fn compact_json_keeps_strings_and_order() {
        assert_eq!(
            compact_json("{ \"b\" : [1, 2],\n \"a\": \"x y \\\" }\" }"),
            r#"{"b":[1,2],"a":"x y \" }"}"#
        );
        assert_eq!(compact_json(r#"{"a":"\\"}"#), r#"{"a":"\\"}"#);
    }

    #[test]
    fn a_body_that_is_not_a_message_is_retryable() {
        let p = provider(r#"{"kind":"anthropic"}"#);
        let req = ChatRequest::parse(PLAIN.as_bytes()).unwrap();
        let e = chat_response(&target(&p), &req, b"{\"id\": invalid", NOW_S).unwrap_err();
        assert!(matches!(e, GatewayError::UpstreamInvalidResponse { .. }));
        assert!(e.is_retryable());
    }

    // ---- Streams ---------------------------------------------------------------

    const STREAM_PLAIN: &str =
        r#"{"model":"claude","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    const STREAM_USAGE: &str = r#"{"model":"claude","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    const STREAM_JSON: &str = r#"{"model":"claude","stream":true,"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"person","schema":{"type":"object"}}}}"#;

    /// (scenario, OpenAI request, Anthropic stream, expected client bytes).
    const STREAMS: [(&str, &str, &str, &str); 7] = [
        (
            "text",
            STREAM_USAGE,
            fixture!("stream_text.anthropic.sse"),
            fixture!("stream_text.openai.sse"),
        ),
        (
            "tool_call",
            STREAM_PLAIN,
            fixture!("stream_tool_call.anthropic.sse"),
            fixture!("stream_tool_call.openai.sse"),
        ),
        (
            "parallel_tool_calls",
            STREAM_USAGE,
            fixture!("stream_parallel_tool_calls.anthropic.sse"),
            fixture!("stream_parallel_tool_calls.openai.sse"),
        ),
        (
            "json_schema",
            STREAM_JSON,
            fixture!("stream_json_schema.anthropic.sse"),
            fixture!("stream_json_schema.openai.sse"),
        ),
        (
            "length",
            STREAM_PLAIN,
            fixture!("stream_length.anthropic.sse"),
            fixture!("stream_length.openai.sse"),
        ),
        (
            "refusal",
            STREAM_PLAIN,
            fixture!("stream_refusal.anthropic.sse"),
            fixture!("stream_refusal.openai.sse"),
        ),
        (
            "error_mid_stream",
            STREAM_PLAIN,
            fixture!("stream_error_mid_stream.anthropic.sse"),
            fixture!("stream_error_mid_stream.openai.sse"),
        ),
    ];

    /// Runs `chunks` through the SSE parser and a translator as the gateway
    /// does, an error rendered as the client's error event. Returns the
    /// client bytes and the translator.
    fn run_stream(req: &str, chunks: &[&[u8]]) -> (String, EventsToChunks) {
        let p = provider(r#"{"kind":"anthropic"}"#);
        let req = ChatRequest::parse(req.as_bytes()).unwrap();
        let mut t = EventsToChunks::new(&target(&p), &req, NOW_S);
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let mut result = Ok(());
        'feed: for chunk in chunks {
            parser.push(chunk);
            while let Some(ev) = parser.next_event() {
                result = t.on_event(ev, &mut out);
                if result.is_err() {
                    break 'feed;
                }
            }
        }
        if result.is_ok() {
            while let Some(ev) = parser.finish() {
                result = t.on_event(ev, &mut out);
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() {
            result = t.on_end(&mut out);
        }
        if let Err(e) = result {
            out.extend(gateway::error_event(&e));
        }
        (String::from_utf8(out).unwrap(), t)
    }

    #[test]
    fn golden_streams_translate_exactly() {
        for (name, req, input, want) in STREAMS {
            let (got, _) = run_stream(req, &[input.as_bytes()]);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn golden_streams_survive_every_split_and_byte_by_byte() {
        for (name, req, input, want) in STREAMS {
            let input = input.as_bytes();
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                let (got, _) = run_stream(req, &[a, b]);
                assert_eq!(got, want, "{name} split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run_stream(req, &bytes).0, want, "{name} byte by byte");
        }
    }

    #[test]
    fn each_event_yields_its_chunk_at_once() {
        let (_, req, input, want) = STREAMS[2];
        let p = provider(r#"{"kind":"anthropic"}"#);
        let req = ChatRequest::parse(req.as_bytes()).unwrap();
        let mut t = EventsToChunks::new(&target(&p), &req, NOW_S);
        let mut parser = SseParser::new();
        parser.push(input.as_bytes());
        let mut out = Vec::new();
        while let Some(ev) = parser.next_event() {
            let kind = json(&ev.data)["type"].as_str().unwrap().to_owned();
            // Only pings, block ends and text block starts say nothing new.
            let silent = kind == "ping"
                || kind == "content_block_stop"
                || (kind == "content_block_start" && !ev.data.contains("tool_use"));
            let before = out.len();
            t.on_event(ev, &mut out).unwrap();
            assert_eq!(out.len() > before, !silent, "{kind}");
        }
        t.on_end(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn a_huge_block_index_from_the_provider_costs_one_entry() {
        // Found by fuzzing: a `content_block_start` at index 99999999990
        // made the translator allocate 800 GB.
        let sse = concat!(
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":99999999990,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":99999999990,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        );
        let (out, _) = run_stream(STREAM_PLAIN, &[sse.as_bytes()]);
        assert!(out.contains("\"content\":\"Hi\""), "{out}");
    }

    #[test]
    fn stream_usage_is_tracked_whether_or_not_the_client_asked() {
        let (_, req, input, _) = STREAMS[0];
        let want = Usage::new(20, 6, Some(5)).with_cache_writes(3);
        let (_, t) = run_stream(req, &[input.as_bytes()]);
        assert_eq!(t.usage(), Some(want));
        let (out, t) = run_stream(STREAM_PLAIN, &[input.as_bytes()]);
        assert_eq!(t.usage(), Some(want));
        assert!(!out.contains("usage"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn stream_ending_before_message_stop_is_an_error() {
        let input = fixture!("stream_text.anthropic.sse");
        let cut = &input[..input.find("event: message_delta").unwrap()];
        let (out, _) = run_stream(STREAM_PLAIN, &[cut.as_bytes()]);
        assert!(out.contains("Bonjour"));
        assert!(out.contains("stream ended before message_stop"), "{out}");
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn in_stream_errors_are_retryable_upstream_errors() {
        let p = provider(r#"{"kind":"anthropic"}"#);
        let req = ChatRequest::parse(STREAM_PLAIN.as_bytes()).unwrap();
        let event = |data: &str| SseEvent {
            event: Some("error".into()),
            data: data.into(),
        };
        let mut t = EventsToChunks::new(&target(&p), &req, NOW_S);
        let e = t
            .on_event(
                event(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
                &mut vec![],
            )
            .unwrap_err();
        assert!(
            matches!(e, GatewayError::Upstream { status: 529, .. }),
            "{e:?}"
        );
        assert!(e.is_retryable());
        let e = t
            .on_event(
                event(r#"{"type":"error","error":{"type":"api_error","message":"Internal"}}"#),
                &mut vec![],
            )
            .unwrap_err();
        assert!(
            matches!(e, GatewayError::Upstream { status: 500, .. }),
            "{e:?}"
        );
        let e = t
            .on_event(event(r#"{"type":"content_block_delta","#), &mut vec![])
            .unwrap_err();
        assert!(
            matches!(e, GatewayError::UpstreamInvalidResponse { .. }),
            "{e:?}"
        );
    }

    // ---- Errors ----------------------------------------------------------------

    #[test]
    fn golden_error_bodies_map_to_the_client_error() {
        let e = error_from_body(
            "anthropic",
            529,
            None,
            fixture!("error_overloaded.anthropic.json").as_bytes(),
        );
        assert!(e.is_retryable());
        assert_eq!(e.status(), 502);
        assert_eq!(
            json(std::str::from_utf8(&e.to_body()).unwrap()),
            json(fixture!("error_overloaded.openai.json"))
        );

        let e = error_from_body(
            "anthropic",
            400,
            None,
            fixture!("error_invalid_request.anthropic.json").as_bytes(),
        );
        assert!(!e.is_retryable());
        assert_eq!(e.status(), 400);
        assert_eq!(
            json(std::str::from_utf8(&e.to_body()).unwrap()),
            json(fixture!("error_invalid_request.openai.json"))
        );

        let e = error_from_body("anthropic", 502, Some(3), b"<html>bad gateway</html>");
        assert_eq!(e.retry_after(), Some(3));
        assert!(e.to_string().contains("<html>bad gateway</html>"));
    }

    // ---- Through the gateway ------------------------------------------------------

    /// A fake upstream answering from a script, recording what it was sent.
    struct Scripted {
        replies: RefCell<VecDeque<(u16, Vec<Vec<u8>>)>>,
        seen: RefCell<Vec<UpstreamRequest>>,
    }

    impl Scripted {
        fn new(replies: Vec<(u16, Vec<Vec<u8>>)>) -> Self {
            Scripted {
                replies: RefCell::new(replies.into()),
                seen: RefCell::default(),
            }
        }
    }

    impl Upstream for Scripted {
        async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
            self.seen.borrow_mut().push(req);
            let (status, chunks) = self
                .replies
                .borrow_mut()
                .pop_front()
                .expect("no reply left");
            Ok(UpstreamResponse {
                status,
                headers: vec![],
                body: Box::pin(stream::iter(chunks.into_iter().map(Ok))),
                native: None,
            })
        }

        fn sleep(&self, _ms: u64) -> crate::http::Sleep {
            Box::pin(futures::future::pending())
        }
    }

    const CONFIG: &str = r#"{"version":1,
      "providers":{"anthropic":{"kind":"anthropic","base_url":"http://anthropic.test"},
                   "b":{"kind":"openai-compatible","base_url":"http://b.test/v1"}},
      "models":{"claude":{"targets":[{"provider":"anthropic","model":"claude-sonnet-4-5"},{"provider":"b","model":"mb"}]}}}"#;

    fn run_gateway(up: &Scripted, body: &str) -> Result<gateway::Reply, GatewayError> {
        let config = Config::from_json(CONFIG).unwrap();
        let secret = |name: &str| (name == SECRET).then(|| "sk-ant-secret-key".to_owned());
        let ctx = Ctx {
            now_ms: NOW_S * 1000 + 999,
            clock: &|| 0,
            secret: &secret,
            health: &crate::routing::Health::new(),
        };
        block_on(gateway::chat_completions(
            up,
            &config,
            &ctx,
            body.as_bytes(),
        ))
    }

    fn body_of(reply: gateway::Reply) -> String {
        let bytes = match reply.body {
            ReplyBody::Full(b) => b,
            ReplyBody::Stream(s) => block_on(s.map(Result::unwrap).concat()),
            ReplyBody::Native(_) => panic!("no native bodies in native tests"),
        };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn default_secret_and_kind_name() {
        let p = provider(r#"{"kind":"anthropic"}"#);
        assert_eq!(p.kind, ProviderKind::Anthropic);
        assert_eq!(super::super::api_key_secret(&p), Some("ANTHROPIC_API_KEY"));
        let c = Config::bundled();
        assert_eq!(c.providers["anthropic"].kind, ProviderKind::Anthropic);
        assert!(c.models.contains_key("claude-sonnet-4-5"));
    }

    #[test]
    fn gateway_translates_a_completion_end_to_end() {
        let up = Scripted::new(vec![(
            200,
            vec![fixture!("response_text.anthropic.json").as_bytes().to_vec()],
        )]);
        let reply = run_gateway(&up, PLAIN).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.usage,
            Some(Usage::new(20, 4, Some(5)).with_cache_writes(3))
        );
        assert_eq!(
            json(&body_of(reply)),
            json(fixture!("response_text.openai.json"))
        );
        let seen = up.seen.borrow();
        assert_eq!(seen[0].url, "http://anthropic.test/v1/messages");
        assert!(
            seen[0]
                .headers
                .contains(&("x-api-key".into(), "sk-ant-secret-key".into()))
        );
        assert!(
            seen[0]
                .headers
                .contains(&("anthropic-version".into(), "2023-06-01".into()))
        );
        let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(
            sent,
            json!({"model":"claude-sonnet-4-5","max_tokens":4096,"messages":[{"role":"user","content":"hi"}]})
        );
    }

    #[test]
    fn gateway_translates_a_stream_end_to_end() {
        let input = fixture!("stream_text.anthropic.sse").as_bytes();
        let chunks = input.chunks(7).map(<[u8]>::to_vec).collect();
        let up = Scripted::new(vec![(200, chunks)]);
        let reply = run_gateway(&up, STREAM_USAGE).unwrap();
        assert_eq!(body_of(reply), fixture!("stream_text.openai.sse"));
        let sent: Value = serde_json::from_slice(&up.seen.borrow()[0].body).unwrap();
        assert_eq!(sent["stream"], true);
        assert!(sent.get("stream_options").is_none());
    }

    #[test]
    fn gateway_fails_over_on_529_overloaded() {
        let completion = r#"{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let up = Scripted::new(vec![
            (
                529,
                vec![
                    fixture!("error_overloaded.anthropic.json")
                        .as_bytes()
                        .to_vec(),
                ],
            ),
            (200, vec![completion.as_bytes().to_vec()]),
        ]);
        let reply = run_gateway(&up, PLAIN).unwrap();
        let attempts = reply
            .headers
            .iter()
            .find(|(k, _)| *k == "x-gateway-attempts")
            .map(|(_, v)| v.clone());
        assert_eq!(attempts.as_deref(), Some("2"));
        assert_eq!(up.seen.borrow()[1].url, "http://b.test/v1/chat/completions");
    }

    #[test]
    fn gateway_fails_over_when_overloaded_before_any_content() {
        // The error arrives with the first upstream bytes, before the client
        // has been sent anything, so another target can still answer.
        let up = Scripted::new(vec![
            (
                200,
                vec![b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".to_vec()],
            ),
            (
                200,
                vec![b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_vec()],
            ),
        ]);
        let reply = run_gateway(&up, STREAM_PLAIN).unwrap();
        assert!(body_of(reply).contains("\"ok\""));
    }
}
