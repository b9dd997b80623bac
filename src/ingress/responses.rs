//! OpenAI Responses ingress: `POST /v1/responses`, stateless (`store:
//! false` semantics: nothing is kept, so nothing can be referred to later).
//!
//! To OpenAI and Azure targets the request is forwarded as is, `model`
//! rewritten ([`ResponsesRequest::to_openai_body`]), and the answer passed
//! through ([`ResponseEventsRelay`], [`read_openai_response`]); no client
//! header is forwarded. To every other target it is translated into the gateway's
//! chat-completions body ([`responses_request_to_chat_body`]) and the answer
//! back into a `response` ([`chat_response_to_response`],
//! [`ChunksToResponseEvents`]). Errors keep OpenAI's shape, which is what
//! [`GatewayError::to_body`] renders.
//!
//! # Responses parameters and what happens to them (translated targets)
//!
//! | Responses parameter | OpenAI chat request |
//! |---------------------|---------------------|
//! | `model` | `model` (the name given to [`responses_request_to_chat_body`]) |
//! | `instructions` | a first `system` message |
//! | `input` (string) | one `user` message |
//! | `input` items: `message` (with or without `type`), roles `user`, `assistant` | messages of that role; `input_text`/`output_text` -> text, `input_image` (`image_url`, `detail`) -> `image_url` parts; one text part reads as a string; an assistant's `refusal` parts are text |
//! | `message` items, roles `system`, `developer` | `system` messages (every OpenAI-compatible server and translating adapter knows `system`) |
//! | `function_call` items | `tool_calls` (`call_id` -> `id`, `arguments` as sent) on the assistant message they follow, or on a new one |
//! | `function_call_output` items | `tool` messages (`call_id` -> `tool_call_id`); list outputs become text and image parts |
//! | `reasoning` items | dropped: earlier reasoning is not sent back to chat models, and encrypted reasoning means nothing elsewhere |
//! | `input_image` by `file_id`, `input_file`, `input_audio` | 400 naming `input`: the content would be lost |
//! | `item_reference` items, and items of built-in tools (`web_search_call`, `computer_call`, `mcp_*`, ...) | 400 naming `input`: they need OpenAI's stored state or tools |
//! | `tools`, `type: function` (flat: `name`, `description`, `parameters`, `strict`) | `function` tools |
//! | `tools`, built-in tools (`web_search`, `file_search`, `computer_use_preview`, `code_interpreter`, `mcp`, `image_generation`, `local_shell`, `shell`, `custom`, ...) | 400 naming `tools` and the type: only OpenAI runs them |
//! | `tool_choice` | `auto`/`none`/`required` as is; `{type: function, name}` -> the named function; `{type: allowed_tools, mode, tools}` -> the tools list narrowed to those and `mode`; a built-in tool choice is a 400 |
//! | `parallel_tool_calls` | `parallel_tool_calls` |
//! | `text.format` | `json_schema` (flat `name`, `schema`, `description`, `strict`) -> `response_format: {type: json_schema, json_schema: {...}}`; `json_object` -> `{type: json_object}`; `text` -> nothing |
//! | `text.verbosity` | dropped (a style hint) |
//! | `reasoning.effort` | `reasoning_effort` (as given; adapters without an equivalent drop it) |
//! | `reasoning.summary` | dropped: reasoning the target returns comes back whole, as `reasoning_text` |
//! | `max_output_tokens` | `max_tokens`: these targets are never OpenAI's own, and `max_tokens` is the name every OpenAI-compatible server and the gateway's adapters read (`max_completion_tokens` is refused by some, e.g. Mistral's strict schema) |
//! | `temperature`, `top_p` | the same, spelled as sent |
//! | `metadata` | `metadata` (routing rules read it) |
//! | `user`, else `safety_identifier` | `user` |
//! | `stream` | `stream`, with `stream_options.include_usage: true` always (usage ends in `response.completed`) |
//! | `previous_response_id`, `conversation` | 400 naming them: the gateway stores nothing (send the whole conversation as `input`) |
//! | `background: true` | 400 naming `background`: answers are not kept for later |
//! | `prompt` (stored prompt templates) | 400 naming `prompt`: its text is on OpenAI |
//! | `moderation` | 400 naming `moderation`: dropping a moderation policy would change what comes back |
//! | `store`, `include`, `truncation`, `max_tool_calls`, `top_logprobs`, `service_tier`, `prompt_cache_key`, `prompt_cache_retention`, `prompt_cache_options`, `context_management`, `stream_options`, anything else | dropped: nothing is stored, built-in tools are refused, and the rest tunes OpenAI's service rather than the answer |
//!
//! # The answer
//!
//! A `response` object as the API returns it: `id` `resp_` and a stable
//! hash of the upstream id and time, `object: "response"`, `created_at`,
//! `status` `completed`, or `incomplete` with `incomplete_details.reason`
//! `max_output_tokens` (finish reason `length`) or `content_filter`;
//! `output` items in order: `reasoning` (from `reasoning_content` or
//! `reasoning`, as one `reasoning_text` content part and an empty
//! `summary`), a `message` with one `output_text` part (`annotations: []`,
//! `logprobs: []`; a refusal is text), then one `function_call` per call
//! (`id` `fc_...`, `call_id` the upstream's call id, `arguments` as sent).
//! `usage` has `input_tokens` (cached included, as OpenAI counts),
//! `input_tokens_details.cached_tokens`, `output_tokens`,
//! `output_tokens_details.reasoning_tokens` and `total_tokens`. The request
//! is echoed as the API does (`instructions`, `max_output_tokens`, `model`
//! as the client named it, `parallel_tool_calls`, `reasoning`,
//! `temperature`, `text`, `tool_choice`, `tools`, `top_p`, `user`,
//! `metadata`, with the API's defaults when absent) and `store: false`.
//! `output_text` is an SDK convenience property, not on the wire, so it is
//! not written.
//!
//! Order: the request, request translation, response translation, stream
//! translation, pass-through to OpenAI and Azure, tests.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{Usage, field, parse_field, parse_object, write_object};
use crate::error::GatewayError;
use crate::providers::{StreamTranslator, Target, openai};
use crate::sse::{SseEvent, encode_data, encode_event};

use super::messages::{
    ChatContent, ChatFunctionCall, ChatMessage, ChatPart, ChatToolCall, ImageUrlOut,
};
use super::{
    Answer, BlockKind, ChunkConverter, ChunkReader, Failure, Part, Stop, UsageIn,
    count_type_values, invalid, parse_completion, stable_id, to_json,
};

/// The path of the Responses endpoint, on the gateway and on OpenAI.
pub const RESPONSES_PATH: &str = "/v1/responses";

/// How the target is named in messages about what it cannot do.
const ELSEWHERE: &str = "a target that is not OpenAI";

// ---- The request ---------------------------------------------------------------

/// A parsed Responses request that borrows from the body: every top-level
/// field raw, in order, and what the gateway decides on.
#[derive(Debug)]
pub struct ResponsesRequest<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The model name the client asked for (a public alias in the config).
    pub model: Cow<'a, str>,
    /// `stream: true`.
    pub stream: bool,
    /// `max_output_tokens`, when given.
    pub max_output_tokens: Option<u64>,
    /// `input_image` parts in `input`.
    pub images: usize,
    /// `tools` is a non-empty list.
    pub has_tools: bool,
}

impl<'a> ResponsesRequest<'a> {
    /// Parses and validates the body. Errors are 400s naming the parameter,
    /// in OpenAI's words.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        let fields = parse_object(body)?;
        let model = match field(&fields, "model") {
            None => {
                return Err(invalid(
                    "Missing required parameter: 'model'.".into(),
                    "model",
                ));
            }
            Some(raw) => match serde_json::from_str::<Cow<'a, str>>(raw.get()) {
                Ok(m) if !m.trim().is_empty() => m,
                _ => {
                    return Err(invalid(
                        "Invalid 'model': expected a non-empty string.".into(),
                        "model",
                    ));
                }
            },
        };
        // Types and ranges first, in OpenAI's words (the typed reads below
        // would word a bad value as serde does).
        crate::trust::params::check(crate::trust::params::Params::Responses, &fields)?;
        let stream = parse_field::<Option<bool>>(&fields, "stream")?.unwrap_or(false);
        let max_output_tokens = parse_field::<Option<u64>>(&fields, "max_output_tokens")?;
        let images =
            field(&fields, "input").map_or(0, |raw| count_type_values(raw.get(), "input_image"));
        let has_tools = field(&fields, "tools")
            .is_some_and(|raw| raw.get().starts_with('[') && raw.get()[1..].trim_start() != "]");
        Ok(ResponsesRequest {
            fields,
            model,
            stream,
            max_output_tokens,
            images,
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

    /// `user`, else `safety_identifier`: the end user for routing rules.
    pub fn user(&self) -> Option<String> {
        self.parse_field::<Option<String>>("user")
            .ok()
            .flatten()
            .or_else(|| self.parse_field("safety_identifier").ok().flatten())
    }

    /// The body for an OpenAI or Azure target: the client's fields in their
    /// order, byte for byte, `model` replaced.
    pub fn to_openai_body(&self, upstream_model: &str) -> Vec<u8> {
        write_object(&self.fields, upstream_model, None, b"")
    }

    /// A top-level field that is present and not `null`.
    fn nonnull(&self, key: &str) -> Option<&'a RawValue> {
        self.get(key).filter(|raw| raw.get() != "null")
    }
}

// ---- Request translation -------------------------------------------------------

/// An item of `input`. Flat rather than a tagged enum: a tagged enum
/// buffers its content, and a borrowed `RawValue` cannot come from a buffer.
#[derive(Deserialize)]
struct ItemIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    call_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
}

/// A content part of a message item or of a list output.
#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    image_url: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct ToolChoiceIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    tools: Option<Vec<AllowedToolIn>>,
}

#[derive(Deserialize)]
struct AllowedToolIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct TextConfigIn<'a> {
    #[serde(default, borrow)]
    format: Option<FormatIn<'a>>,
}

#[derive(Deserialize)]
struct FormatIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize, Default)]
struct ReasoningIn {
    #[serde(default)]
    effort: Option<String>,
}

/// The chat-completions body.
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
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
    reasoning_effort: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ChatToolChoice {
    Mode(String),
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
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormatOut<'a> {
    JsonObject,
    JsonSchema { json_schema: JsonSchemaOut<'a> },
}

#[derive(Serialize)]
struct JsonSchemaOut<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// The OpenAI chat-completions body for a Responses request, for a target
/// that is not OpenAI or Azure. `model` is the name to put in it: the
/// client's alias when the body then goes through the gateway's chat path,
/// which rewrites it per target. Every rejection is a 400 naming the
/// parameter.
pub fn responses_request_to_chat_body(
    req: &ResponsesRequest<'_>,
    model: &str,
) -> Result<Vec<u8>, GatewayError> {
    for (key, why) in [
        (
            "previous_response_id",
            "the gateway stores no responses; send the whole conversation as `input`",
        ),
        (
            "conversation",
            "the gateway stores no conversations; send the whole conversation as `input`",
        ),
        ("prompt", "stored prompt templates live on OpenAI"),
        (
            "moderation",
            "a moderation policy cannot be applied, and dropping it would change the answer",
        ),
    ] {
        if req.nonnull(key).is_some() {
            return Err(invalid(
                format!("`{key}` is not supported by {ELSEWHERE}: {why}."),
                key,
            ));
        }
    }
    if req.parse_field::<Option<bool>>("background")? == Some(true) {
        return Err(invalid(
            format!(
                "`background: true` is not supported by {ELSEWHERE}: answers are not kept for later retrieval."
            ),
            "background",
        ));
    }

    let mut messages = Vec::new();
    match req.nonnull("instructions") {
        None => {}
        Some(raw) => {
            let text: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| {
                invalid(
                    "Invalid type for 'instructions': expected a string.".into(),
                    "instructions",
                )
            })?;
            if !text.is_empty() {
                messages.push(ChatMessage::new("system", ChatContent::Text(text)));
            }
        }
    }
    match req.nonnull("input") {
        None => {
            return Err(invalid(
                "Missing required parameter: 'input'.".into(),
                "input",
            ));
        }
        Some(raw) if raw.get().starts_with('"') => {
            let text: Cow<'_, str> = serde_json::from_str(raw.get())
                .map_err(|e| invalid(format!("Invalid 'input': {e}"), "input"))?;
            messages.push(ChatMessage::new("user", ChatContent::Text(text)));
        }
        Some(raw) => {
            let items: Vec<ItemIn<'_>> = serde_json::from_str(raw.get())
                .map_err(|e| invalid(format!("Invalid 'input': {e}"), "input"))?;
            for (i, item) in items.into_iter().enumerate() {
                input_item(item, i, &mut messages)?;
            }
        }
    }
    // Nothing to send (found by the `ingress` fuzz target, where it was a
    // 500): refused as OpenAI refuses an empty list.
    if messages.is_empty() {
        return Err(invalid(
            "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.".into(),
            "input",
        ));
    }

    let mut tools = tools_to_chat(req.parse_field("tools")?)?;
    let tool_choice = match req.nonnull("tool_choice") {
        None => None,
        Some(raw) if raw.get().starts_with('"') => {
            let mode: String = serde_json::from_str(raw.get())
                .map_err(|e| invalid(format!("Invalid 'tool_choice': {e}"), "tool_choice"))?;
            match mode.as_str() {
                "auto" | "none" | "required" => Some(ChatToolChoice::Mode(mode)),
                other => {
                    return Err(invalid(
                        format!(
                            "Invalid value for 'tool_choice': {other:?}; expected 'auto', 'none' or 'required'."
                        ),
                        "tool_choice",
                    ));
                }
            }
        }
        Some(raw) => {
            let choice: ToolChoiceIn = serde_json::from_str(raw.get())
                .map_err(|e| invalid(format!("Invalid 'tool_choice': {e}"), "tool_choice"))?;
            tool_choice_to_chat(choice, &mut tools)?
        }
    };
    let tool_choice = tool_choice.filter(|_| !tools.is_empty());
    let parallel_tool_calls = req
        .parse_field::<Option<bool>>("parallel_tool_calls")?
        .filter(|_| !tools.is_empty());

    let text: Option<TextConfigIn<'_>> = req.parse_field("text")?;
    let response_format = match text.and_then(|t| t.format) {
        None => None,
        Some(f) => match f.kind.as_ref() {
            "text" => None,
            "json_object" => Some(ResponseFormatOut::JsonObject),
            "json_schema" => Some(ResponseFormatOut::JsonSchema {
                json_schema: JsonSchemaOut {
                    name: f.name.unwrap_or(Cow::Borrowed("response")),
                    description: f.description,
                    schema: f.schema,
                    strict: f.strict,
                },
            }),
            other => {
                return Err(invalid(
                    format!("Invalid value for 'text.format.type': {other:?}."),
                    "text",
                ));
            }
        },
    };
    let reasoning: Option<ReasoningIn> = req.parse_field("reasoning")?;
    let body = ChatBody {
        model,
        messages,
        max_tokens: req.max_output_tokens,
        temperature: req.nonnull("temperature"),
        top_p: req.nonnull("top_p"),
        stream: req.stream,
        stream_options: req.stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        reasoning_effort: reasoning.and_then(|r| r.effort),
        metadata: req.nonnull("metadata"),
        user: req.user(),
    };
    Ok(to_json(&body))
}

/// Content as parts: a string is one text part.
fn parts_of<'a>(raw: &'a RawValue, at: &str) -> Result<Vec<PartIn<'a>>, GatewayError> {
    if raw.get().starts_with('"') {
        let text: Cow<'a, str> = serde_json::from_str(raw.get())
            .map_err(|e| invalid(format!("Invalid '{at}': {e}"), "input"))?;
        return Ok(vec![PartIn {
            kind: Cow::Borrowed("input_text"),
            text: Some(text),
            refusal: None,
            image_url: None,
            detail: None,
        }]);
    }
    serde_json::from_str(raw.get()).map_err(|e| invalid(format!("Invalid '{at}': {e}"), "input"))
}

/// Parts as chat content (text and images).
fn parts_to_chat<'a>(parts: Vec<PartIn<'a>>, at: &str) -> Result<ChatContent<'a>, GatewayError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        match part.kind.as_ref() {
            "input_text" | "output_text" | "text" => out.push(ChatPart::Text {
                text: part.text.unwrap_or_default(),
            }),
            "refusal" => out.push(ChatPart::Text {
                text: part.refusal.unwrap_or_default(),
            }),
            "input_image" => match part.image_url {
                Some(url) => out.push(ChatPart::ImageUrl {
                    image_url: ImageUrlOut {
                        url,
                        detail: part.detail,
                    },
                }),
                None => {
                    return Err(invalid(
                        format!(
                            "{at}[{j}]: images by `file_id` (the Files API) are not supported by {ELSEWHERE}; send an `image_url` (a data URL works)."
                        ),
                        "input",
                    ));
                }
            },
            kind => {
                return Err(invalid(
                    format!("{at}[{j}]: `{kind}` content is not supported by {ELSEWHERE}."),
                    "input",
                ));
            }
        }
    }
    Ok(ChatContent::from_parts(out))
}

/// Text-only content as one string (system messages).
fn text_only<'a>(content: ChatContent<'a>, at: &str) -> Result<Cow<'a, str>, GatewayError> {
    match content {
        ChatContent::Text(text) => Ok(text),
        ChatContent::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    ChatPart::Text { text } => texts.push(text),
                    ChatPart::ImageUrl { .. } => {
                        return Err(invalid(
                            format!(
                                "{at}: a system or developer message may contain only text for {ELSEWHERE}."
                            ),
                            "input",
                        ));
                    }
                }
            }
            Ok(Cow::Owned(texts.join("\n\n")))
        }
    }
}

/// One `input` item as chat messages, appended to `out`.
fn input_item<'a>(
    item: ItemIn<'a>,
    i: usize,
    out: &mut Vec<ChatMessage<'a>>,
) -> Result<(), GatewayError> {
    let at = format!("input[{i}]");
    let kind = item.kind.as_deref().unwrap_or("message");
    match kind {
        "message" => {
            let role = item.role.as_deref().unwrap_or_default();
            let content = match item.content {
                Some(raw) => parts_to_chat(
                    parts_of(raw, &format!("{at}.content"))?,
                    &format!("{at}.content"),
                )?,
                None => ChatContent::Text(Cow::Borrowed("")),
            };
            match role {
                "user" => out.push(ChatMessage::new("user", content)),
                "assistant" => {
                    let text = text_only(content, &at)?;
                    out.push(ChatMessage::new("assistant", ChatContent::Text(text)));
                }
                "system" | "developer" => {
                    let text = text_only(content, &at)?;
                    out.push(ChatMessage::new("system", ChatContent::Text(text)));
                }
                other => {
                    return Err(invalid(
                        format!(
                            "Invalid value for '{at}.role': {other:?}; expected 'user', 'assistant', 'system' or 'developer'."
                        ),
                        "input",
                    ));
                }
            }
        }
        "function_call" => {
            let call_id = item.call_id.ok_or_else(|| {
                invalid(
                    format!("Missing required parameter: '{at}.call_id'."),
                    "input",
                )
            })?;
            let name = item.name.ok_or_else(|| {
                invalid(format!("Missing required parameter: '{at}.name'."), "input")
            })?;
            let call = ChatToolCall {
                id: call_id.into_owned(),
                kind: "function",
                function: ChatFunctionCall {
                    name: name.into_owned(),
                    arguments: item.arguments.map(Cow::into_owned).unwrap_or_default(),
                },
            };
            // Calls follow the assistant's text in one chat message, and
            // parallel calls share it.
            match out.last_mut() {
                Some(last) if last.role == "assistant" => {
                    if matches!(&last.content, Some(ChatContent::Text(t)) if t.is_empty()) {
                        last.content = None;
                    }
                    last.tool_calls.push(call);
                }
                _ => out.push(ChatMessage {
                    role: "assistant",
                    content: None,
                    tool_calls: vec![call],
                    tool_call_id: None,
                }),
            }
        }
        "function_call_output" => {
            let call_id = item.call_id.ok_or_else(|| {
                invalid(
                    format!("Missing required parameter: '{at}.call_id'."),
                    "input",
                )
            })?;
            let content = match item.output {
                None => ChatContent::Text(Cow::Borrowed("")),
                Some(raw) => parts_to_chat(
                    parts_of(raw, &format!("{at}.output"))?,
                    &format!("{at}.output"),
                )?,
            };
            out.push(ChatMessage {
                role: "tool",
                content: Some(content),
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id),
            });
        }
        // Earlier reasoning is not sent back (see the module table).
        "reasoning" => {}
        "item_reference" => {
            return Err(invalid(
                format!(
                    "{at}: `item_reference` is not supported by {ELSEWHERE}: the gateway stores no items; send the item itself."
                ),
                "input",
            ));
        }
        other => {
            return Err(invalid(
                format!("{at}: `{other}` items (built-in tools) are not supported by {ELSEWHERE}."),
                "input",
            ));
        }
    }
    Ok(())
}

fn tools_to_chat(tools: Option<Vec<ToolIn<'_>>>) -> Result<Vec<ChatTool<'_>>, GatewayError> {
    let mut out = Vec::new();
    for (i, tool) in tools.unwrap_or_default().into_iter().enumerate() {
        if tool.kind != "function" {
            return Err(invalid(
                format!(
                    "tools[{i}]: the built-in tool `{}` is not supported by {ELSEWHERE}; only `function` tools are.",
                    tool.kind
                ),
                "tools",
            ));
        }
        let name = tool.name.ok_or_else(|| {
            invalid(
                format!("Missing required parameter: 'tools[{i}].name'."),
                "tools",
            )
        })?;
        out.push(ChatTool {
            kind: "function",
            function: ChatFunction {
                name,
                description: tool.description,
                parameters: tool.parameters.filter(|raw| raw.get() != "null"),
                strict: tool.strict,
            },
        });
    }
    Ok(out)
}

/// An object `tool_choice`; `allowed_tools` narrows `tools`.
fn tool_choice_to_chat(
    choice: ToolChoiceIn,
    tools: &mut Vec<ChatTool<'_>>,
) -> Result<Option<ChatToolChoice>, GatewayError> {
    match choice.kind.as_str() {
        "function" => {
            let name = choice.name.ok_or_else(|| {
                invalid(
                    "Missing required parameter: 'tool_choice.name'.".into(),
                    "tool_choice",
                )
            })?;
            Ok(Some(ChatToolChoice::Named {
                kind: "function",
                function: NamedFunction { name },
            }))
        }
        "allowed_tools" => {
            let mut allowed = Vec::new();
            for t in choice.tools.unwrap_or_default() {
                match (t.kind.as_str(), t.name) {
                    ("function", Some(name)) => allowed.push(name),
                    (kind, _) => {
                        return Err(invalid(
                            format!(
                                "tool_choice.tools: the built-in tool `{kind}` is not supported by {ELSEWHERE}."
                            ),
                            "tool_choice",
                        ));
                    }
                }
            }
            tools.retain(|t| allowed.iter().any(|a| *a == t.function.name));
            let mode = choice.mode.unwrap_or_else(|| "auto".to_owned());
            match mode.as_str() {
                "auto" | "required" => Ok(Some(ChatToolChoice::Mode(mode))),
                other => Err(invalid(
                    format!(
                        "Invalid value for 'tool_choice.mode': {other:?}; expected 'auto' or 'required'."
                    ),
                    "tool_choice",
                )),
            }
        }
        other => Err(invalid(
            format!("tool_choice: the built-in tool `{other}` is not supported by {ELSEWHERE}."),
            "tool_choice",
        )),
    }
}

// ---- Response translation ------------------------------------------------------

/// What a `response` echoes of its request, owned so that a stream can
/// outlive the request body. `None`: the API's default is written.
#[derive(Debug, Clone, Default)]
struct Echo {
    model: String,
    instructions: Option<Box<RawValue>>,
    max_output_tokens: Option<Box<RawValue>>,
    metadata: Option<Box<RawValue>>,
    parallel_tool_calls: Option<Box<RawValue>>,
    reasoning: Option<Box<RawValue>>,
    temperature: Option<Box<RawValue>>,
    text: Option<Box<RawValue>>,
    tool_choice: Option<Box<RawValue>>,
    tools: Option<Box<RawValue>>,
    top_p: Option<Box<RawValue>>,
    user: Option<Box<RawValue>>,
    safety_identifier: Option<Box<RawValue>>,
}

impl Echo {
    fn of(req: &ResponsesRequest<'_>) -> Echo {
        let raw = |key: &str| req.nonnull(key).map(RawValue::to_owned);
        Echo {
            model: req.model.to_string(),
            instructions: raw("instructions"),
            max_output_tokens: raw("max_output_tokens"),
            metadata: raw("metadata"),
            parallel_tool_calls: raw("parallel_tool_calls"),
            reasoning: raw("reasoning"),
            temperature: raw("temperature"),
            text: raw("text"),
            tool_choice: raw("tool_choice"),
            tools: raw("tools"),
            top_p: raw("top_p"),
            user: raw("user"),
            safety_identifier: raw("safety_identifier"),
        }
    }
}

/// A raw value, or the API's default (a JSON literal) when absent.
struct RawOr<'a>(Option<&'a RawValue>, &'static str);

impl Serialize for RawOr<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = match self.0 {
            Some(raw) => raw,
            None => match serde_json::from_str::<&RawValue>(self.1) {
                Ok(raw) => raw,
                Err(_) => return s.serialize_unit(),
            },
        };
        raw.serialize(s)
    }
}

/// A `response` object.
#[derive(Serialize)]
struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    background: bool,
    error: Option<ResponseErrorOut<'a>>,
    incomplete_details: Option<IncompleteOut>,
    instructions: RawOr<'a>,
    max_output_tokens: RawOr<'a>,
    max_tool_calls: Option<u64>,
    model: &'a str,
    output: &'a [ItemOut<'a>],
    parallel_tool_calls: RawOr<'a>,
    previous_response_id: Option<&'a str>,
    reasoning: RawOr<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    safety_identifier: Option<&'a RawValue>,
    store: bool,
    temperature: RawOr<'a>,
    text: RawOr<'a>,
    tool_choice: RawOr<'a>,
    tools: RawOr<'a>,
    top_p: RawOr<'a>,
    truncation: &'static str,
    usage: Option<UsageOut>,
    user: RawOr<'a>,
    metadata: RawOr<'a>,
}

#[derive(Serialize)]
struct ResponseErrorOut<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct IncompleteOut {
    reason: &'static str,
}

/// An output item.
#[derive(Serialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ItemOut<'a> {
    Reasoning {
        id: Cow<'a, str>,
        summary: [(); 0],
        content: Vec<ReasoningTextOut<'a>>,
    },
    Message {
        id: Cow<'a, str>,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputTextOut<'a>>,
    },
    FunctionCall {
        id: Cow<'a, str>,
        status: &'static str,
        arguments: Cow<'a, str>,
        call_id: Cow<'a, str>,
        name: Cow<'a, str>,
    },
}

/// `{"type":"output_text","annotations":[],"logprobs":[],"text"}`.
#[derive(Serialize, Debug, Clone)]
struct OutputTextOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    annotations: [(); 0],
    logprobs: [(); 0],
    text: Cow<'a, str>,
}

impl<'a> OutputTextOut<'a> {
    fn new(text: Cow<'a, str>) -> Self {
        OutputTextOut {
            kind: "output_text",
            annotations: [],
            logprobs: [],
            text,
        }
    }
}

/// `{"type":"reasoning_text","text"}`.
#[derive(Serialize, Debug, Clone)]
struct ReasoningTextOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: Cow<'a, str>,
}

impl<'a> ReasoningTextOut<'a> {
    fn new(text: Cow<'a, str>) -> Self {
        ReasoningTextOut {
            kind: "reasoning_text",
            text,
        }
    }
}

/// Usage as the Responses API reports it.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
struct UsageOut {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
struct InputDetails {
    cached_tokens: u64,
    /// Writes are not reported by OpenAI's chat format: 0.
    cache_write_tokens: u64,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
struct OutputDetails {
    reasoning_tokens: u64,
}

impl UsageOut {
    fn from_openai(u: UsageIn) -> UsageOut {
        UsageOut {
            input_tokens: u.prompt(),
            input_tokens_details: InputDetails {
                cached_tokens: u.cached(),
                cache_write_tokens: 0,
            },
            output_tokens: u.completion(),
            output_tokens_details: OutputDetails {
                reasoning_tokens: u.reasoning().unwrap_or(0),
            },
            total_tokens: u.prompt() + u.completion(),
        }
    }
}

/// The response's `status` and `incomplete_details.reason` for a stop.
fn stop_to_status(stop: &Stop) -> (&'static str, Option<&'static str>) {
    match stop {
        Stop::MaxTokens => ("incomplete", Some("max_output_tokens")),
        Stop::Refusal => ("incomplete", Some("content_filter")),
        Stop::EndTurn | Stop::Sequence(_) | Stop::ToolUse => ("completed", None),
    }
}

/// The `resp_` id for an upstream completion id at a time.
fn response_id(upstream_id: &str, now_s: u64) -> String {
    stable_id("resp_", &format!("{upstream_id}@{now_s}"))
}

/// The id of output item `index` of a response.
fn item_id(prefix: &str, response_id: &str, index: usize) -> String {
    stable_id(prefix, &format!("{response_id}/{index}"))
}

impl Echo {
    /// The `response` object around `output`.
    #[allow(clippy::too_many_arguments)]
    fn response<'a>(
        &'a self,
        id: &'a str,
        created_at: u64,
        status: &'static str,
        incomplete: Option<&'static str>,
        error: Option<ResponseErrorOut<'a>>,
        output: &'a [ItemOut<'a>],
        usage: Option<UsageOut>,
    ) -> ResponseOut<'a> {
        let r = |v: &'a Option<Box<RawValue>>, default: &'static str| RawOr(v.as_deref(), default);
        ResponseOut {
            id,
            object: "response",
            created_at,
            status,
            background: false,
            error,
            incomplete_details: incomplete.map(|reason| IncompleteOut { reason }),
            instructions: r(&self.instructions, "null"),
            max_output_tokens: r(&self.max_output_tokens, "null"),
            max_tool_calls: None,
            model: &self.model,
            output,
            parallel_tool_calls: r(&self.parallel_tool_calls, "true"),
            previous_response_id: None,
            reasoning: r(&self.reasoning, r#"{"effort":null,"summary":null}"#),
            safety_identifier: self.safety_identifier.as_deref(),
            store: false,
            temperature: r(&self.temperature, "1.0"),
            text: r(&self.text, r#"{"format":{"type":"text"}}"#),
            tool_choice: r(&self.tool_choice, r#""auto""#),
            tools: r(&self.tools, "[]"),
            top_p: r(&self.top_p, "1.0"),
            truncation: "disabled",
            usage,
            user: r(&self.user, "null"),
            metadata: r(&self.metadata, "{}"),
        }
    }
}

/// Translates a 2xx `chat.completion` body (what the provider adapters
/// return) into the client's `response` object. `now_s` (Unix seconds) is
/// its `created_at`; `provider` names the target in errors.
pub fn chat_response_to_response(
    provider: &str,
    completion: &[u8],
    req: &ResponsesRequest<'_>,
    now_s: u64,
) -> Result<Vec<u8>, GatewayError> {
    let answer = parse_completion(provider, completion)?;
    Ok(answer_to_response(&answer, &Echo::of(req), now_s))
}

fn answer_to_response(answer: &Answer, echo: &Echo, now_s: u64) -> Vec<u8> {
    let id = response_id(&answer.id, now_s);
    let stop = answer.stop.clone().unwrap_or(Stop::EndTurn);
    let (status, incomplete) = stop_to_status(&stop);
    let mut output = Vec::with_capacity(2 + answer.tool_calls.len());
    if let Some(reasoning) = &answer.reasoning {
        output.push(ItemOut::Reasoning {
            id: Cow::Owned(item_id("rs_", &id, output.len())),
            summary: [],
            content: vec![ReasoningTextOut::new(Cow::Borrowed(reasoning))],
        });
    }
    if let Some(text) = &answer.text {
        output.push(ItemOut::Message {
            id: Cow::Owned(item_id("msg_", &id, output.len())),
            status,
            role: "assistant",
            content: vec![OutputTextOut::new(Cow::Borrowed(text))],
        });
    }
    for (call_id, name, arguments) in &answer.tool_calls {
        output.push(ItemOut::FunctionCall {
            id: Cow::Owned(item_id("fc_", &id, output.len())),
            status: "completed",
            arguments: Cow::Borrowed(arguments),
            call_id: Cow::Borrowed(call_id),
            name: Cow::Borrowed(name),
        });
    }
    let usage = answer.usage.map(UsageOut::from_openai);
    to_json(&echo.response(&id, now_s, status, incomplete, None, &output, usage))
}

// ---- Stream translation --------------------------------------------------------

/// OpenAI chunk SSE -> Responses streaming events, incrementally, each with
/// its `event:` line and a `sequence_number` from 0.
///
/// On the first chunk: `response.created` and `response.in_progress` (status
/// `in_progress`, no output, no usage). Then for each output item, in order
/// and one at a time (`output_index` 0, 1, ...): a message is
/// `response.output_item.added`, `response.content_part.added`,
/// `response.output_text.delta`s, `response.output_text.done`,
/// `response.content_part.done`, `response.output_item.done`; a function
/// call is `response.output_item.added`,
/// `response.function_call_arguments.delta`s and `.done`,
/// `response.output_item.done`; reasoning is like a message with a
/// `reasoning_text` part and `response.reasoning_text.delta`/`.done`. At the
/// end: `response.completed` with the whole response and its usage, or
/// `response.incomplete` when the token cap or a content filter stopped it
/// (as the API does). A failure is an `error` event (OpenAI's nested
/// `error` object, and its fields flat as the published event type has
/// them: the SDKs raise on it) and then `response.failed` with what was
/// produced so far.
#[derive(Debug)]
pub struct ChunksToResponseEvents {
    reader: ChunkReader,
    writer: EventWriter,
}

#[derive(Debug)]
struct EventWriter {
    echo: Echo,
    created_at: u64,
    id: String,
    sequence: u64,
    started: bool,
    items: Vec<ItemState>,
}

/// An output item as it streams.
#[derive(Debug)]
struct ItemState {
    kind: BlockKind,
    id: String,
    /// Text, reasoning or arguments so far.
    text: String,
    call_id: String,
    name: String,
    /// Closed; and the status it was closed with.
    done: Option<&'static str>,
}

impl ItemState {
    fn to_item(&self, status: &'static str) -> ItemOut<'_> {
        let text = Cow::Borrowed(self.text.as_str());
        match self.kind {
            BlockKind::Reasoning => ItemOut::Reasoning {
                id: Cow::Borrowed(&self.id),
                summary: [],
                content: if status == "in_progress" {
                    Vec::new()
                } else {
                    vec![ReasoningTextOut::new(text)]
                },
            },
            BlockKind::Text => ItemOut::Message {
                id: Cow::Borrowed(&self.id),
                status,
                role: "assistant",
                content: if status == "in_progress" {
                    Vec::new()
                } else {
                    vec![OutputTextOut::new(text)]
                },
            },
            BlockKind::Tool => ItemOut::FunctionCall {
                id: Cow::Borrowed(&self.id),
                status,
                arguments: text,
                call_id: Cow::Borrowed(&self.call_id),
                name: Cow::Borrowed(&self.name),
            },
        }
    }
}

impl ChunksToResponseEvents {
    /// A converter for one stream of `req`'s answer; `now_s` (Unix seconds)
    /// is the response's `created_at`.
    pub fn new(req: &ResponsesRequest<'_>, now_s: u64) -> Self {
        ChunksToResponseEvents {
            reader: ChunkReader::default(),
            writer: EventWriter {
                echo: Echo::of(req),
                created_at: now_s,
                id: String::new(),
                sequence: 0,
                started: false,
                items: Vec::new(),
            },
        }
    }
}

impl ChunkConverter for ChunksToResponseEvents {
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

/// `{"type","sequence_number","response"}`.
#[derive(Serialize)]
struct LifecycleEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: ResponseOut<'a>,
}

/// `response.output_item.added` and `.done`.
#[derive(Serialize)]
struct ItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    output_index: usize,
    item: ItemOut<'a>,
}

/// `response.content_part.added` and `.done`.
#[derive(Serialize)]
struct PartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    part: PartOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PartOut<'a> {
    Text(OutputTextOut<'a>),
    Reasoning(ReasoningTextOut<'a>),
}

/// Text deltas and dones (`delta` or `text`), reasoning deltas and dones,
/// argument deltas and dones (`arguments`, no content index).
#[derive(Serialize)]
struct TextEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
}

/// The `error` event.
#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
    error: ErrorEventDetail<'a>,
}

#[derive(Serialize)]
struct ErrorEventDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
}

impl EventWriter {
    fn next_sequence(&mut self) -> u64 {
        let n = self.sequence;
        self.sequence += 1;
        n
    }

    fn lifecycle(
        &mut self,
        out: &mut Vec<u8>,
        kind: &'static str,
        status: &'static str,
        incomplete: Option<&'static str>,
        error: Option<ResponseErrorOut<'_>>,
        usage: Option<UsageOut>,
    ) {
        let sequence_number = self.next_sequence();
        // Items keep the status they were closed with; one still open when
        // the stream failed is incomplete.
        let output: Vec<ItemOut<'_>> = if status == "in_progress" {
            Vec::new()
        } else {
            self.items
                .iter()
                .map(|item| item.to_item(item.done.unwrap_or("incomplete")))
                .collect()
        };
        let response = self.echo.response(
            &self.id,
            self.created_at,
            status,
            incomplete,
            error,
            &output,
            usage,
        );
        let event = LifecycleEvent {
            kind,
            sequence_number,
            response,
        };
        encode_event(out, kind, &to_json(&event));
    }

    fn start(&mut self, upstream_id: &str, out: &mut Vec<u8>) {
        self.started = true;
        self.id = response_id(upstream_id, self.created_at);
        self.lifecycle(out, "response.created", "in_progress", None, None, None);
        self.lifecycle(out, "response.in_progress", "in_progress", None, None, None);
    }

    fn item_event(
        &mut self,
        out: &mut Vec<u8>,
        kind: &'static str,
        index: usize,
        status: &'static str,
    ) {
        let sequence_number = self.next_sequence();
        let Some(item) = self.items.get(index) else {
            return;
        };
        let event = ItemEvent {
            kind,
            sequence_number,
            output_index: index,
            item: item.to_item(status),
        };
        encode_event(out, kind, &to_json(&event));
    }

    fn part_event(&mut self, out: &mut Vec<u8>, kind: &'static str, index: usize, full: bool) {
        let sequence_number = self.next_sequence();
        let Some(item) = self.items.get(index) else {
            return;
        };
        let text = Cow::Borrowed(if full { item.text.as_str() } else { "" });
        let part = match item.kind {
            BlockKind::Reasoning => PartOut::Reasoning(ReasoningTextOut::new(text)),
            _ => PartOut::Text(OutputTextOut::new(text)),
        };
        let event = PartEvent {
            kind,
            sequence_number,
            item_id: &item.id,
            output_index: index,
            content_index: 0,
            part,
        };
        encode_event(out, kind, &to_json(&event));
    }

    /// A delta (`delta` given) or a done (the item's whole text) event.
    fn text_event(&mut self, out: &mut Vec<u8>, index: usize, delta: Option<&str>) {
        let sequence_number = self.next_sequence();
        let Some(item) = self.items.get(index) else {
            return;
        };
        let done = delta.is_none();
        let (kind, content_index, logprobs) = match (item.kind, done) {
            (BlockKind::Text, false) => ("response.output_text.delta", Some(0), Some([])),
            (BlockKind::Text, true) => ("response.output_text.done", Some(0), Some([])),
            (BlockKind::Reasoning, false) => ("response.reasoning_text.delta", Some(0), None),
            (BlockKind::Reasoning, true) => ("response.reasoning_text.done", Some(0), None),
            (BlockKind::Tool, false) => ("response.function_call_arguments.delta", None, None),
            (BlockKind::Tool, true) => ("response.function_call_arguments.done", None, None),
        };
        let whole = item.text.as_str();
        let event = TextEvent {
            kind,
            sequence_number,
            item_id: &item.id,
            output_index: index,
            content_index,
            delta,
            text: (done && item.kind != BlockKind::Tool).then_some(whole),
            arguments: (done && item.kind == BlockKind::Tool).then_some(whole),
            logprobs,
        };
        encode_event(out, kind, &to_json(&event));
    }

    fn write(&mut self, part: Part<'_>, out: &mut Vec<u8>) {
        match part {
            Part::Start { id } => self.start(id, out),
            Part::Open {
                index,
                kind,
                call_id,
                name,
            } => {
                let prefix = match kind {
                    BlockKind::Reasoning => "rs_",
                    BlockKind::Text => "msg_",
                    BlockKind::Tool => "fc_",
                };
                let id = item_id(prefix, &self.id, index);
                self.items.push(ItemState {
                    kind,
                    id,
                    text: String::new(),
                    call_id: call_id.to_owned(),
                    name: name.to_owned(),
                    done: None,
                });
                let index = self.items.len() - 1;
                self.item_event(out, "response.output_item.added", index, "in_progress");
                if kind != BlockKind::Tool {
                    self.part_event(out, "response.content_part.added", index, false);
                }
            }
            Part::Delta { index, text } => {
                let Some(item) = self.items.get_mut(index) else {
                    return;
                };
                item.text.push_str(text);
                self.text_event(out, index, Some(text));
            }
            Part::Close { index, cut } => {
                let Some(item) = self.items.get_mut(index) else {
                    return;
                };
                // A message the token cap cut is incomplete, as the API marks it.
                let status = if cut && item.kind == BlockKind::Text {
                    "incomplete"
                } else {
                    "completed"
                };
                item.done = Some(status);
                let kind = item.kind;
                self.text_event(out, index, None);
                if kind != BlockKind::Tool {
                    self.part_event(out, "response.content_part.done", index, true);
                }
                self.item_event(out, "response.output_item.done", index, status);
            }
            Part::End { stop, usage } => {
                let (status, incomplete) = stop_to_status(&stop);
                let kind = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                let usage = usage.map(UsageOut::from_openai);
                self.lifecycle(out, kind, status, incomplete, None, usage);
            }
            Part::Fail(failure) => {
                if !self.started {
                    self.start("", out);
                }
                let code = failure_code(&failure);
                let sequence_number = self.next_sequence();
                write_error_event(out, sequence_number, &failure);
                let error = ResponseErrorOut {
                    code,
                    message: &failure.message,
                };
                self.lifecycle(out, "response.failed", "failed", None, Some(error), None);
            }
        }
    }
}

/// The `error` event for a failure: OpenAI's nested `error` object, and its
/// fields flat as the published event type has them (the SDKs raise on it).
fn write_error_event(out: &mut Vec<u8>, sequence_number: u64, failure: &Failure) {
    let event = ErrorEvent {
        kind: "error",
        sequence_number,
        code: &failure.code,
        message: &failure.message,
        param: None,
        error: ErrorEventDetail {
            kind: if failure.status == 429 {
                "rate_limit_error"
            } else if failure.status < 500 {
                "invalid_request_error"
            } else {
                "server_error"
            },
            code: &failure.code,
            message: &failure.message,
            param: None,
        },
    };
    encode_event(out, "error", &to_json(&event));
}

/// `response.error.code` of a failed response.
fn failure_code(failure: &Failure) -> &'static str {
    match failure.status {
        429 => "rate_limit_exceeded",
        _ => "server_error",
    }
}

// ---- Pass-through to OpenAI and Azure ----------------------------------------------

/// Relays an OpenAI or Azure target's Responses stream to a Responses
/// client event by event: each event's name and data exactly as received
/// (framing normalised to `event: ...\ndata: ...\n\n`, OpenAI's own), while
/// it reads usage from the terminal event (`response.completed`, or
/// `response.incomplete`), and watches for failures (`response.failed`, an
/// `error` event).
///
/// Commit point ([`StreamTranslator::carries_output`]): every event but
/// `response.created`, `response.queued`, `response.in_progress`,
/// `response.output_item.added` and `response.content_part.added` is output,
/// so a target that fails before its first delta is replaced unseen. A
/// `response.failed` or `error` event ends the stream as the provider's
/// error (a rate limit 429, an invalid prompt 400, anything else a
/// retryable 500), so failover can still act before the commit; after it
/// the client receives that event as sent. Other failures (a cut stream, a
/// timeout) become an `error` event and a `response.failed` built on the
/// stream's `response.created`, sequence numbers continuing the upstream's.
#[derive(Debug)]
pub struct ResponseEventsRelay {
    provider: String,
    usage: Option<Usage>,
    output: bool,
    done: bool,
    /// Events relayed: OpenAI numbers them from 0, so this is the next
    /// `sequence_number`.
    events: u64,
    /// The `response` of `response.created`, for a `response.failed`.
    created: Option<String>,
    /// The upstream's failure event, and the error it was read as.
    upstream_error: Option<(GatewayError, Vec<u8>)>,
}

impl ResponseEventsRelay {
    /// A relay for one stream of `target`.
    pub fn new(target: &Target<'_>) -> Self {
        ResponseEventsRelay {
            provider: target.name.to_owned(),
            usage: None,
            output: false,
            done: false,
            events: 0,
            created: None,
            upstream_error: None,
        }
    }

    fn invalid(&self, message: String) -> GatewayError {
        GatewayError::UpstreamInvalidResponse {
            provider: self.provider.clone(),
            message,
        }
    }

    /// The provider's error for a failure `code` and message.
    fn upstream(&self, code: Option<&str>, message: Option<String>) -> GatewayError {
        let code = code.unwrap_or("server_error");
        let status = if code.contains("rate_limit") || code.contains("quota") {
            429
        } else if code.starts_with("invalid") || code.contains("context_length") {
            400
        } else {
            500
        };
        GatewayError::Upstream {
            provider: self.provider.clone(),
            status,
            message: message.unwrap_or_else(|| code.to_owned()),
            retry_after: None,
        }
    }
}

/// The fields of the events the relay reads.
#[derive(Deserialize)]
struct RelayEventIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct RelayResponseIn {
    #[serde(default)]
    usage: Option<openai::ResponsesUsage>,
    #[serde(default)]
    error: Option<RelayErrorIn>,
}

#[derive(Deserialize)]
struct RelayErrorIn {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl StreamTranslator for ResponseEventsRelay {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        // OpenAI names every event; deltas are told by name alone.
        let named = ev.event.as_deref();
        let needs_reading = match named {
            None => true,
            Some(name) => matches!(
                name,
                "response.created"
                    | "response.completed"
                    | "response.incomplete"
                    | "response.failed"
                    | "error"
            ),
        };
        let mut kind = named.map(Cow::Borrowed);
        if needs_reading {
            let event: RelayEventIn<'_> = serde_json::from_str(&ev.data)
                .map_err(|e| self.invalid(format!("invalid stream event: {e}")))?;
            if kind.is_none() {
                kind = event.kind;
            }
            let response = |raw: Option<&RawValue>| {
                raw.and_then(|r| serde_json::from_str::<RelayResponseIn>(r.get()).ok())
            };
            match kind.as_deref() {
                Some("response.created") => {
                    self.created = event.response.map(|r| r.get().to_owned());
                }
                Some("response.completed" | "response.incomplete") => {
                    self.done = true;
                    self.usage = response(event.response)
                        .and_then(|r| r.usage)
                        .map(openai::ResponsesUsage::to_usage);
                }
                Some(failure @ ("response.failed" | "error")) => {
                    let e = if failure == "error" {
                        self.upstream(event.code.as_deref(), event.message)
                    } else {
                        let r = response(event.response);
                        self.usage = r.as_ref().and_then(|r| r.usage).map(|u| u.to_usage());
                        let error = r.and_then(|r| r.error);
                        let (code, message) = error.map_or((None, None), |e| (e.code, e.message));
                        self.upstream(code.as_deref(), message)
                    };
                    let mut raw = Vec::new();
                    encode_event(&mut raw, failure, ev.data.as_bytes());
                    self.upstream_error = Some((e.clone(), raw));
                    return Err(e);
                }
                _ => {}
            }
        }
        let name = kind.as_deref().unwrap_or_default();
        if !matches!(
            name,
            "response.created"
                | "response.queued"
                | "response.in_progress"
                | "response.output_item.added"
                | "response.content_part.added"
        ) {
            self.output = true;
        }
        match ev.event.as_deref() {
            Some(name) => encode_event(out, name, ev.data.as_bytes()),
            None => encode_data(out, ev.data.as_bytes()),
        }
        self.events += 1;
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        Err(GatewayError::UpstreamUnreachable {
            provider: self.provider.clone(),
            message: "stream ended before response.completed".into(),
        })
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn carries_output(&self, _written: &[u8]) -> bool {
        self.output
    }

    fn write_error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        if let Some((own, raw)) = self.upstream_error.take()
            && own == *e
        {
            out.extend_from_slice(&raw);
            return;
        }
        let failure = Failure::from_error(e);
        write_error_event(out, self.events, &failure);
        let Some(mut response) = self
            .created
            .as_deref()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .filter(serde_json::Value::is_object)
        else {
            return;
        };
        response["status"] = "failed".into();
        response["error"] = serde_json::json!({
            "code": failure_code(&failure),
            "message": failure.message,
        });
        let event = serde_json::json!({
            "type": "response.failed",
            "sequence_number": self.events + 1,
            "response": response,
        });
        encode_event(out, "response.failed", &to_json(&event));
    }
}

/// Checks a 2xx `response` of an OpenAI or Azure target and reads its
/// usage; the body goes to the client unchanged.
pub fn read_openai_response(
    target: &Target<'_>,
    body: &[u8],
) -> Result<Option<Usage>, GatewayError> {
    openai::read_responses_response(target, body)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::ChatRequest;
    use crate::config::Provider;
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

    const NOW_S: u64 = 1_700_000_000;

    /// The request whose echo the golden answers and streams carry.
    const ECHO_REQUEST: &str = r#"{"model":"gpt-4.1","input":"hi","instructions":"Be brief.","tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"},"strict":true}],"temperature":0.5}"#;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn chat_body(body: &str) -> Result<Value, GatewayError> {
        let req = ResponsesRequest::parse(body.as_bytes())?;
        responses_request_to_chat_body(&req, "gpt-5").map(|b| serde_json::from_slice(&b).unwrap())
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
        format!(r#"{{"model":"m","input":"x"{extra}}}"#)
    }

    // ---- Requests ------------------------------------------------------------

    const REQUESTS: [(&str, &str, &str); 2] = [
        (
            "text",
            fixture!("ingress/responses_request_text.responses.json"),
            fixture!("ingress/responses_request_text.openai.json"),
        ),
        (
            "function_round_trip",
            fixture!("ingress/responses_request_function_round_trip.responses.json"),
            fixture!("ingress/responses_request_function_round_trip.openai.json"),
        ),
    ];

    #[test]
    fn golden_requests_translate_exactly() {
        for (name, responses, openai) in REQUESTS {
            assert_eq!(chat_body(responses).unwrap(), json(openai), "{name}");
        }
    }

    #[test]
    fn translated_requests_are_chat_requests_every_adapter_takes() {
        for (name, responses, _) in REQUESTS {
            let req = ResponsesRequest::parse(responses.as_bytes()).unwrap();
            let body = responses_request_to_chat_body(&req, "alias").unwrap();
            let chat = ChatRequest::parse(&body).unwrap();
            assert_eq!(chat.model, "alias", "{name}");
            assert_eq!(
                (chat.stream, chat.include_usage),
                (req.stream, req.stream),
                "{name}"
            );
            assert_eq!(chat.max_tokens, req.max_output_tokens, "{name}");
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
    fn openai_targets_get_the_request_byte_for_byte_but_the_model() {
        let body = r#"{"model":"alias","input":[{"role":"user","content":"h\u00e9"}],"previous_response_id":"resp_1","tools":[{"type":"web_search"}],"temperature":0.70}"#;
        let req = ResponsesRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(req.to_openai_body("gpt-4.1")).unwrap(),
            body.replace(r#""model":"alias""#, r#""model":"gpt-4.1""#)
        );
    }

    #[test]
    fn routing_facts_are_read_without_translating() {
        let req = ResponsesRequest::parse(REQUESTS[1].1.as_bytes()).unwrap();
        assert_eq!((req.images, req.has_tools, req.stream), (1, true, false));
        assert_eq!(req.user().as_deref(), Some("hashed-user-1"));
        let req = ResponsesRequest::parse(REQUESTS[0].1.as_bytes()).unwrap();
        assert_eq!(
            (req.max_output_tokens, req.stream, req.has_tools),
            (Some(200), true, false)
        );
        assert_eq!(req.model, "gpt-4.1");
    }

    #[test]
    fn invalid_requests_are_400s_naming_the_parameter() {
        let param = |body: &str| match ResponsesRequest::parse(body.as_bytes()) {
            Err(GatewayError::InvalidRequest { param, message }) => (param.unwrap(), message),
            other => panic!("expected a 400, got {other:?}"),
        };
        assert_eq!(
            param(r#"{"input":"x"}"#),
            (
                "model".into(),
                "Missing required parameter: 'model'.".into()
            )
        );
        assert_eq!(param(r#"{"model":"","input":"x"}"#).0, "model");
        assert_eq!(param(r#"{"model":"m","stream":1}"#).0, "stream");
        assert_eq!(
            param(r#"{"model":"m","max_output_tokens":-5}"#).0,
            "max_output_tokens"
        );
        // Parsing allows no input (a stored prompt may supply it); translating needs it.
        assert_eq!(rejection(r#"{"model":"m"}"#).0, "input");
        // Nothing to translate is a 400, not a translation that fails later.
        assert_eq!(rejection(r#"{"model":"m","input":[]}"#).0, "input");
        assert_eq!(
            rejection(r#"{"model":"m","input":[],"instructions":""}"#).0,
            "input"
        );
        assert!(chat_body(r#"{"model":"m","input":[],"instructions":"x"}"#).is_ok());
    }

    #[test]
    fn what_needs_openai_is_refused_naming_it() {
        let cases = [
            (
                r#","previous_response_id":"resp_1""#,
                "previous_response_id",
                "stores no responses",
            ),
            (
                r#","conversation":"conv_1""#,
                "conversation",
                "conversation",
            ),
            (r#","background":true"#, "background", "background"),
            (r#","prompt":{"id":"pmpt_1"}"#, "prompt", "prompt"),
            (
                r#","moderation":{"model":"omni-moderation-latest"}"#,
                "moderation",
                "moderation",
            ),
            (
                r#","tools":[{"type":"web_search"}]"#,
                "tools",
                "`web_search`",
            ),
            (
                r#","tools":[{"type":"file_search","vector_store_ids":["vs_1"]}]"#,
                "tools",
                "file_search",
            ),
            (
                r#","tools":[{"type":"function","name":"f"}],"tool_choice":{"type":"web_search_preview"}"#,
                "tool_choice",
                "web_search_preview",
            ),
            (r#","tool_choice":"sometimes""#, "tool_choice", "sometimes"),
            (
                r#","instructions":[{"role":"system","content":"x"}]"#,
                "instructions",
                "string",
            ),
            (
                r#","text":{"format":{"type":"grammar"}}"#,
                "text",
                "grammar",
            ),
        ];
        for (extra, p, needle) in cases {
            let (param, message) = rejection(&with(extra));
            assert_eq!(param, p, "{extra}");
            assert!(message.contains(needle), "{message}");
        }
        let input_cases = [
            (
                r#"[{"type":"item_reference","id":"msg_1"}]"#,
                "item_reference",
            ),
            (
                r#"[{"type":"web_search_call","id":"ws_1","status":"completed"}]"#,
                "web_search_call",
            ),
            (
                r#"[{"role":"user","content":[{"type":"input_file","file_id":"file_1"}]}]"#,
                "input_file",
            ),
            (
                r#"[{"role":"user","content":[{"type":"input_image","file_id":"file_1"}]}]"#,
                "file_id",
            ),
            (r#"[{"role":"tool","content":"x"}]"#, "role"),
            (
                r#"[{"role":"system","content":[{"type":"input_image","image_url":"https://x/y.png"}]}]"#,
                "only text",
            ),
            (
                r#"[{"type":"function_call","name":"f","arguments":"{}"}]"#,
                "call_id",
            ),
        ];
        for (input, needle) in input_cases {
            let (param, message) = rejection(&format!(r#"{{"model":"m","input":{input}}}"#));
            assert_eq!(param, "input", "{input}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn stateless_and_service_options_are_dropped() {
        let v = chat_body(&with(
            r#","store":true,"background":false,"previous_response_id":null,"include":["reasoning.encrypted_content"],"truncation":"auto","service_tier":"flex","max_tool_calls":3,"top_logprobs":2,"prompt_cache_key":"k","reasoning":{"summary":"auto"},"text":{"format":{"type":"text"},"verbosity":"low"}"#,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"model":"gpt-5","messages":[{"role":"user","content":"x"}]})
        );
    }

    #[test]
    fn tool_choices_and_formats_map() {
        const TOOLS: &str = r#","tools":[{"type":"function","name":"f","parameters":{"type":"object"}},{"type":"function","name":"g"}]"#;
        let v = chat_body(&with(&format!(
            r#"{TOOLS},"tool_choice":"required","parallel_tool_calls":true"#
        )))
        .unwrap();
        assert_eq!(
            (&v["tool_choice"], &v["parallel_tool_calls"]),
            (&json!("required"), &json!(true))
        );
        assert_eq!(
            v["tools"][1],
            json!({"type":"function","function":{"name":"g"}})
        );
        let v = chat_body(&with(&format!(
            r#"{TOOLS},"tool_choice":{{"type":"function","name":"g"}}"#
        )))
        .unwrap();
        assert_eq!(
            v["tool_choice"],
            json!({"type":"function","function":{"name":"g"}})
        );
        let v = chat_body(&with(&format!(
            r#"{TOOLS},"tool_choice":{{"type":"allowed_tools","mode":"required","tools":[{{"type":"function","name":"g"}}]}}"#
        )))
        .unwrap();
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["tools"][0]["function"]["name"], "g");
        // Without tools there is nothing to choose.
        let v = chat_body(&with(
            r#","tool_choice":"required","parallel_tool_calls":false"#,
        ))
        .unwrap();
        assert!(v.get("tool_choice").is_none() && v.get("parallel_tool_calls").is_none());
        let v = chat_body(&with(r#","text":{"format":{"type":"json_object"}}"#)).unwrap();
        assert_eq!(v["response_format"], json!({"type":"json_object"}));
    }

    #[test]
    fn function_calls_attach_to_the_assistant_message_they_follow() {
        let v = chat_body(
            r#"{"model":"m","input":[
                {"type":"function_call","call_id":"a","name":"f","arguments":"{}"},
                {"type":"function_call_output","call_id":"a","output":"1"},
                {"role":"assistant","content":""},
                {"type":"function_call","call_id":"b","name":"f","arguments":"{\"x\":2}"},
                {"type":"function_call_output","call_id":"b","output":[{"type":"input_text","text":"2"},{"type":"input_image","image_url":"https://x/p.png"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","content":"1","tool_call_id":"a"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"b","type":"function","function":{"name":"f","arguments":"{\"x\":2}"}}]},
                {"role":"tool","content":[{"type":"text","text":"2"},{"type":"image_url","image_url":{"url":"https://x/p.png"}}],"tool_call_id":"b"}
            ])
        );
    }

    // ---- Answers -------------------------------------------------------------

    fn echo_request() -> ResponsesRequest<'static> {
        ResponsesRequest::parse(ECHO_REQUEST.as_bytes()).unwrap()
    }

    #[test]
    fn golden_answers_translate_exactly() {
        let cases = [
            (
                "text",
                fixture!("ingress/response_text.openai.json"),
                fixture!("ingress/response_text.responses.json"),
            ),
            (
                "tool_calls",
                fixture!("ingress/response_tool_calls.openai.json"),
                fixture!("ingress/response_tool_calls.responses.json"),
            ),
            (
                "length",
                fixture!("ingress/response_length.openai.json"),
                fixture!("ingress/response_length.responses.json"),
            ),
        ];
        for (name, openai, responses) in cases {
            let out =
                chat_response_to_response("p", openai.as_bytes(), &echo_request(), NOW_S).unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&out).unwrap(),
                json(responses),
                "{name}"
            );
        }
    }

    #[test]
    fn answers_echo_the_request_with_the_apis_defaults() {
        let req = ResponsesRequest::parse(
            br#"{"model":"alias","input":"x","max_output_tokens":50,"reasoning":{"effort":"high"},"user":"u","metadata":{"k":"v"},"parallel_tool_calls":false,"top_p":null}"#,
        )
        .unwrap();
        let body = br#"{"id":"c","choices":[{"message":{"content":"x"},"finish_reason":"content_filter"}]}"#;
        let v: Value =
            serde_json::from_slice(&chat_response_to_response("p", body, &req, NOW_S).unwrap())
                .unwrap();
        assert_eq!(v["model"], "alias");
        assert_eq!(
            (v["status"].as_str(), &v["incomplete_details"]),
            (Some("incomplete"), &json!({"reason":"content_filter"}))
        );
        assert_eq!(
            (
                &v["max_output_tokens"],
                &v["reasoning"],
                &v["user"],
                &v["metadata"],
                &v["parallel_tool_calls"]
            ),
            (
                &json!(50),
                &json!({"effort":"high"}),
                &json!("u"),
                &json!({"k":"v"}),
                &json!(false)
            )
        );
        assert_eq!(
            (
                &v["top_p"],
                &v["temperature"],
                &v["tools"],
                &v["tool_choice"]
            ),
            (&json!(1.0), &json!(1.0), &json!([]), &json!("auto"))
        );
        assert_eq!(
            (&v["store"], &v["usage"], &v["created_at"]),
            (&json!(false), &Value::Null, &json!(NOW_S))
        );
        assert!(
            v.get("output_text").is_none(),
            "an SDK property, not on the wire"
        );
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    }

    #[test]
    fn an_answer_that_is_not_a_completion_is_a_retryable_upstream_error() {
        let e = chat_response_to_response("prov", b"<html>", &echo_request(), NOW_S).unwrap_err();
        assert!(e.is_retryable() && matches!(e, GatewayError::UpstreamInvalidResponse { .. }));
    }

    // ---- Streams -------------------------------------------------------------

    /// (scenario, OpenAI chunk stream, expected Responses events). The error
    /// and length inputs are what the Anthropic and Gemini adapters produce.
    const STREAMS: [(&str, &str, &str); 4] = [
        (
            "text",
            fixture!("ingress/stream_text.openai.sse"),
            fixture!("ingress/stream_text.responses.sse"),
        ),
        (
            "tool_calls",
            fixture!("ingress/stream_tool_calls.openai.sse"),
            fixture!("ingress/stream_tool_calls.responses.sse"),
        ),
        (
            "error_mid_stream",
            fixture!("anthropic/stream_error_mid_stream.openai.sse"),
            fixture!("ingress/stream_error_mid_stream.responses.sse"),
        ),
        (
            "length",
            fixture!("gemini/stream_max_tokens.openai.sse"),
            fixture!("ingress/stream_length.responses.sse"),
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

    fn convert(chunks: &[&[u8]]) -> (String, ChunksToResponseEvents) {
        let mut c = ChunksToResponseEvents::new(&echo_request(), NOW_S);
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

    /// Checks what the SDKs' stream accumulators enforce: events named by
    /// their `type`, `sequence_number` 0, 1, ...; `response.created` then
    /// `response.in_progress` first, one response id throughout; output
    /// items added at 0, 1, ... one at a time, their events naming the open
    /// item's id and index, each done before the next; a terminal
    /// `response.completed`/`.incomplete` (whose output matches the items),
    /// or `error` then `response.failed`. Returns the terminal response.
    fn check_protocol(sse: &str) -> Value {
        let mut parser = SseParser::new();
        parser.push(sse.as_bytes());
        let mut events = Vec::new();
        while let Some(ev) = parser.finish() {
            let v = json(&ev.data);
            assert_eq!(ev.event.as_deref(), v["type"].as_str(), "{sse}");
            assert_eq!(
                v["sequence_number"].as_u64(),
                Some(events.len() as u64),
                "{sse}"
            );
            events.push(v);
        }
        let kinds: Vec<String> = events
            .iter()
            .map(|v| v["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            &kinds[..2],
            ["response.created", "response.in_progress"],
            "{sse}"
        );
        let id = events[0]["response"]["id"].clone();
        let mut open: Option<(usize, Value)> = None;
        let mut items: Vec<Value> = Vec::new();
        for (i, v) in events.iter().enumerate().skip(2) {
            let last = i == events.len() - 1;
            match kinds[i].as_str() {
                "response.output_item.added" => {
                    assert!(open.is_none(), "{sse}");
                    assert_eq!(v["output_index"].as_u64(), Some(items.len() as u64));
                    assert_eq!(
                        v["item"]["status"].as_str().unwrap_or("in_progress"),
                        "in_progress"
                    );
                    open = Some((items.len(), v["item"]["id"].clone()));
                    items.push(v["item"].clone());
                }
                "response.output_item.done" => {
                    let (index, item_id) = open.take().expect("an open item");
                    assert_eq!(
                        (v["output_index"].as_u64(), &v["item"]["id"]),
                        (Some(index as u64), &item_id)
                    );
                    items[index] = v["item"].clone();
                }
                kind @ ("response.completed" | "response.incomplete" | "response.failed") => {
                    assert!(last, "{sse}");
                    assert_eq!(v["response"]["id"], id);
                    if kind == "response.failed" {
                        assert_eq!(kinds[i - 1], "error", "{sse}");
                        assert_eq!(v["response"]["status"], "failed");
                    } else {
                        assert!(open.is_none(), "{sse}");
                        assert_eq!(v["response"]["output"], json!(items), "{sse}");
                    }
                }
                "error" => assert!(v["message"].is_string() && v["error"]["message"].is_string()),
                _ => {
                    let (index, item_id) = open.as_ref().expect("an open item");
                    assert_eq!(
                        (v["output_index"].as_u64(), &v["item_id"]),
                        (Some(*index as u64), item_id),
                        "{sse}"
                    );
                }
            }
        }
        events.pop().unwrap()["response"].clone()
    }

    #[test]
    fn every_adapter_stream_converts_to_a_well_formed_response_stream() {
        for input in ADAPTER_STREAMS.iter().chain(STREAMS.iter().map(|s| &s.1)) {
            let (out, _) = convert(&[input.as_bytes()]);
            let response = check_protocol(&out);
            // Nothing of the answer is lost: every text and argument piece is there.
            let mut parser = SseParser::new();
            parser.push(input.as_bytes());
            let mut sent = String::new();
            while let Some(ev) = parser.finish() {
                if ev.data == "[DONE]" {
                    continue;
                }
                let v = json(&ev.data);
                let d = &v["choices"][0]["delta"];
                for piece in [
                    &d["reasoning_content"],
                    &d["content"],
                    &d["tool_calls"][0]["function"]["arguments"],
                ] {
                    sent.push_str(piece.as_str().unwrap_or_default());
                }
            }
            let mut got = String::new();
            for item in response["output"].as_array().unwrap() {
                for piece in [&item["content"][0]["text"], &item["arguments"]] {
                    got.push_str(piece.as_str().unwrap_or_default());
                }
            }
            assert_eq!(got, sent, "{input}");
        }
    }

    #[test]
    fn stream_usage_is_readable_and_reported_in_the_final_response() {
        let (out, c) = convert(&[STREAMS[0].1.as_bytes()]);
        assert_eq!(c.usage(), Some(Usage::new(25, 7, Some(20))));
        assert_eq!(
            check_protocol(&out)["usage"],
            json!({"input_tokens":25,"input_tokens_details":{"cached_tokens":20,"cache_write_tokens":0},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":32})
        );
    }

    #[test]
    fn a_capped_stream_ends_incomplete_as_the_api_does() {
        let (out, _) = convert(&[STREAMS[3].1.as_bytes()]);
        let response = check_protocol(&out);
        assert!(out.contains("event: response.incomplete\n"));
        assert_eq!(
            (&response["status"], &response["incomplete_details"]),
            (&json!("incomplete"), &json!({"reason":"max_output_tokens"}))
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
    }

    #[test]
    fn errors_before_any_output_still_open_the_response() {
        let mut c = ChunksToResponseEvents::new(&echo_request(), NOW_S);
        let mut out = Vec::new();
        c.error(
            &GatewayError::RateLimited {
                message: "slow down".into(),
                retry_after: Some(1),
            },
            &mut out,
        );
        let before = out.len();
        c.push(STREAMS[0].1.as_bytes(), &mut out);
        c.finish(&mut out);
        assert_eq!(out.len(), before, "nothing after the error");
        let out = String::from_utf8(out).unwrap();
        let response = check_protocol(&out);
        assert_eq!(
            response["error"],
            json!({"code":"rate_limit_exceeded","message":"slow down"})
        );
        assert!(out.contains(r#""type":"error","sequence_number":2,"code":"rate_limit_exceeded","message":"slow down","param":null,"error":{"type":"rate_limit_error""#), "{out}");
    }
}
