//! Amazon Bedrock Runtime's Converse API, translated both ways.
//!
//! Requests go to `POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/converse`,
//! or `/converse-stream` for streams, signed with AWS Signature Version 4
//! ([`crate::aws::sigv4`], service `bedrock`) from the provider's AWS
//! credentials. `base_url` replaces the endpoint (a VPC endpoint, the mock).
//! The model id is one URL path segment, percent-encoded as AWS's SDKs do:
//! a foundation model (`anthropic.claude-3-haiku-20240307-v1:0`), a
//! cross-region inference profile (`eu.`, `us.`, `apac.`, `global.` ...), or
//! an ARN, whose `:` and `/` are encoded too. Streams come back in AWS's
//! binary event stream ([`crate::aws::eventstream`]), one JSON event per
//! message.
//!
//! # OpenAI parameters
//!
//! | OpenAI | Converse |
//! |--------|----------|
//! | `model` | the URL path (`/model/{modelId}/...`), from the config target |
//! | `messages` system / developer | `system[]`, one `{text}` block per message wherever it stands; non-text parts are a 400 |
//! | `messages` user / assistant | `messages[]` of `{role, content[]}`; consecutive messages of one role merge (Converse wants alternation); empty text blocks are dropped (Converse rejects blank text) |
//! | `messages` tool | a `user` message of `toolResult {toolUseId, content[]}` blocks; consecutive results merge |
//! | `messages[].tool_calls` | `toolUse {toolUseId, name, input}` blocks after the text (`input` = the parsed `arguments`; invalid JSON or a non-object is a 400) |
//! | content `text` | `{text}` |
//! | content `image_url` data URL | `{image: {format, source: {bytes}}}`; png, jpeg, gif, webp, else a 400 |
//! | content `image_url` http(s) | 400: Converse takes image bytes, not URLs |
//! | other content parts | 400 |
//! | `messages`, `function` role; `functions`, `function_call` | 400: legacy function calling |
//! | `messages[].name` | dropped |
//! | `max_completion_tokens` / `max_tokens` | `inferenceConfig.maxTokens` (absent: the model's default) |
//! | `temperature` | `inferenceConfig.temperature`, clamped to 1 (OpenAI's range is 0–2, Bedrock's models take 0–1) |
//! | `top_p` | `inferenceConfig.topP` |
//! | `stop` | `inferenceConfig.stopSequences` |
//! | `top_k` (non-standard) | `additionalModelRequestFields`: `top_k` for Anthropic models, `inferenceConfig.topK` for Amazon Nova; dropped for other families |
//! | `stream` | `/converse-stream` instead of `/converse` |
//! | `stream_options.include_usage` | decides whether the client gets the usage chunk (Bedrock always reports usage) |
//! | `tools` | `toolConfig.tools[]` of `toolSpec {name, description, inputSchema: {json}}`; the schema is copied byte for byte (`{"type":"object"}` when absent); `strict` is dropped; a non-`function` tool is a 400 |
//! | `tool_choice` | `auto` -> `{auto: {}}`, `required` -> `{any: {}}`, named -> `{tool: {name}}`; `none` -> no `toolConfig` (Converse has no "none"), unless the conversation already holds tool calls, which Converse accepts only with a `toolConfig`: then the tools are sent and the model chooses |
//! | tool calls in the history, no `tools` | a `toolSpec` per called name with an open object schema, since Converse rejects tool blocks without a `toolConfig` |
//! | `response_format: json_schema` | a tool named after the schema, whose input schema is the schema, is added and forced (`{tool}`; `{any}` beside the client's own tools); its `toolUse` input comes back as the message **content** with `finish_reason: stop`, streamed as content deltas — as for Anthropic |
//! | `response_format: json_object` | a system block asking for one JSON object ([`super::anthropic::JSON_OBJECT_INSTRUCTION`]) |
//! | `n` | 1 is fine; more is a 400 |
//! | `parallel_tool_calls`, `user`, `metadata`, `seed`, `logprobs`, `top_logprobs`, `logit_bias`, `frequency_penalty`, `presence_penalty`, `reasoning_effort`, `service_tier`, `store`, anything else | dropped |
//!
//! Answers: `text` blocks join into `content`, `toolUse` blocks become
//! `tool_calls` (ids kept), `reasoningContent` and other blocks are skipped.
//! Stop reasons map by [`bedrock_stop_reason_to_finish_reason`]. Usage: as
//! for Anthropic's models, `inputTokens` excludes the prompt cache, so the
//! prompt is `inputTokens + cacheReadInputTokens + cacheWriteInputTokens`,
//! and cache reads are also the cached tokens. Bedrock's answers carry no id
//! or model: the id is `chatcmpl-bedrock-` and a hash of the answer, the
//! model the target's.
//!
//! Errors: a JSON body `{"message"}` with the type in `x-amzn-errortype`
//! (`ThrottlingException:http://internal.amazon.com/...`), or in-stream an
//! exception message with its `:exception-type`. Both map by
//! [`bedrock_error_type_to_status`]: throttling and quota to 429 (failover,
//! with the target cooled), model and service faults to 5xx (failover),
//! validation to 400, access to 403, unknown models to 404 (not retried).
//!
//! Order: constants, wire types, request building, response parsing, stream
//! decoding, error mapping, tests.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{
    AssistantMessage, ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta,
    FinishReason, FunctionDelta, FunctionOut, Message, Role, Stop, ToolCallDelta, ToolCallOut,
    ToolChoice, ToolChoiceMode, Usage,
};
use crate::aws::eventstream::{self, Message as EventMessage};
use crate::aws::sigv4::{self, Credentials, Scope};
use crate::config::Provider;
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::sse::DONE;

use super::anthropic::{JSON_OBJECT_INSTRUCTION, compact_json};
use super::{ChunkWriter, Signing, StreamTranslator, Target, fnv1a};

// ---- Constants ---------------------------------------------------------------

/// The service name Bedrock Runtime signs requests for.
pub const SIGNING_NAME: &str = "bedrock";

/// The usual secret holding the AWS access key id.
pub const DEFAULT_ACCESS_KEY_ID_SECRET: &str = "AWS_ACCESS_KEY_ID";
/// The usual secret holding the AWS secret access key.
pub const DEFAULT_SECRET_ACCESS_KEY_SECRET: &str = "AWS_SECRET_ACCESS_KEY";
/// The usual secret holding an STS session token.
pub const DEFAULT_SESSION_TOKEN_SECRET: &str = "AWS_SESSION_TOKEN";

/// The response header naming an error's type.
pub const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";

/// The description of the tool that carries a `json_schema` answer.
const RESPONSE_TOOL_DESCRIPTION: &str = "Give your final answer by calling this tool; its input is the response, in the required format.";

/// The schema of a tool declared without one.
const OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;

/// The provider kind, as named in client-facing messages.
const KIND: &str = "provider kind bedrock";

/// The highest content block index a stream may start a tool block at: far
/// above any real answer's, low enough that a corrupt index cannot make the
/// block table large.
const MAX_BLOCK_INDEX: usize = 4096;

/// Bedrock Runtime's endpoint in a region.
pub fn endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// The secret name of the provider's access key id.
pub fn access_key_id_secret(p: &Provider) -> &str {
    p.aws_access_key_id_secret
        .as_deref()
        .unwrap_or(DEFAULT_ACCESS_KEY_ID_SECRET)
}

/// The secret name of the provider's secret access key.
pub fn secret_access_key_secret(p: &Provider) -> &str {
    p.aws_secret_access_key_secret
        .as_deref()
        .unwrap_or(DEFAULT_SECRET_ACCESS_KEY_SECRET)
}

/// The secret name of the provider's session token.
pub fn session_token_secret(p: &Provider) -> &str {
    p.aws_session_token_secret
        .as_deref()
        .unwrap_or(DEFAULT_SESSION_TOKEN_SECRET)
}

// ---- Wire types --------------------------------------------------------------

/// A Converse request (the model is in the URL).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest {
    messages: Vec<MessageOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<InferenceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_model_request_fields: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct SystemBlock {
    text: String,
}

#[derive(Serialize)]
struct MessageOut {
    role: &'static str,
    content: Vec<Block>,
}

/// A content block: `{"text": ...}`, `{"image": {...}}`, ...
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block {
    Text(String),
    Image(ImageBlock),
    ToolUse(ToolUseBlock),
    ToolResult(ToolResultBlock),
}

#[derive(Serialize)]
struct ImageBlock {
    format: &'static str,
    source: ImageSource,
}

#[derive(Serialize)]
struct ImageSource {
    /// Base64, as the data URL carried it.
    bytes: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseBlock {
    tool_use_id: String,
    name: String,
    /// The client's arguments as they were spelled (key order kept).
    input: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResultBlock {
    tool_use_id: String,
    content: Vec<Block>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    tools: Vec<ToolOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolOut {
    tool_spec: ToolSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: InputSchema,
}

#[derive(Serialize)]
struct InputSchema {
    json: Box<RawValue>,
}

/// `{"auto":{}}`, `{"any":{}}`, `{"tool":{"name":...}}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolChoiceOut {
    Auto {},
    Any {},
    Tool { name: String },
}

/// An OpenAI tool, its schema kept raw so its key order survives.
#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: FunctionIn<'a>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

/// `response_format`, its schema kept raw.
#[derive(Deserialize)]
struct ResponseFormatIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    json_schema: Option<JsonSchemaIn<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaIn<'a> {
    name: String,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

/// A Converse answer (the fields the translation reads).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    #[serde(default)]
    output: Option<OutputIn>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: UsageIn,
}

#[derive(Deserialize)]
struct OutputIn {
    #[serde(default)]
    message: Option<MessageIn>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    content: Vec<BlockIn>,
}

/// An output block; one of its fields is set (`reasoningContent` and
/// future kinds are skipped).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockIn {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUseIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseIn {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: Option<Box<RawValue>>,
}

/// Token counts, in the answer and in a stream's `metadata` event.
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct UsageIn {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl UsageIn {
    /// OpenAI's usage: cache reads and writes are prompt tokens too.
    fn to_openai(self) -> Usage {
        let read = self.cache_read_input_tokens;
        Usage::new(
            self.input_tokens + read.unwrap_or(0) + self.cache_write_input_tokens.unwrap_or(0),
            self.output_tokens,
            read,
        )
    }
}

/// The payload of any stream event (each sets its own fields; Bedrock pads
/// them with a random `p` field, ignored). Borrowed, so the hot
/// `contentBlockDelta` allocates nothing when its text has no escapes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventIn<'a> {
    #[serde(default)]
    content_block_index: Option<usize>,
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default)]
    start: Option<StartIn>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_use: Option<ToolUseDeltaIn<'a>>,
}

#[derive(Deserialize)]
struct ToolUseDeltaIn<'a> {
    #[serde(default, borrow)]
    input: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartIn {
    #[serde(default)]
    tool_use: Option<ToolUseStartIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStartIn {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
}

/// An error body, or an exception's payload.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default, alias = "Message")]
    message: Option<String>,
    /// Some AWS JSON errors name their type in the body
    /// (`com.amazon.coral.validate#ValidationException`).
    #[serde(default, rename = "__type")]
    kind: Option<String>,
}

// ---- Request building ----------------------------------------------------------

/// The signed upstream request for a chat completion. `access_key_id` is
/// the key routing resolved; the secret key and the session token are
/// looked up through `signing`, whose time the signature carries.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    access_key_id: Option<&str>,
    signing: Signing<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let p = target.provider;
    let internal = |message: String| GatewayError::Internal { message };
    // Validation requires a region for this kind.
    let region = p
        .region
        .as_deref()
        .ok_or_else(|| internal(format!("provider `{}` has no region", target.name)))?;
    let base = match &p.base_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => endpoint(region),
    };
    let action = if req.stream {
        "converse-stream"
    } else {
        "converse"
    };
    let mut model = String::with_capacity(target.model.len() + 8);
    sigv4::uri_encode(&mut model, target.model.as_bytes());
    let body = chat_request_to_converse_body(req, target.model)?;
    let accept = if req.stream {
        eventstream::CONTENT_TYPE
    } else {
        "application/json"
    };
    let mut headers = Vec::with_capacity(8 + p.headers.len());
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    headers.push(("accept".to_owned(), accept.to_owned()));
    headers.extend(p.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut up = UpstreamRequest {
        method: "POST",
        url: format!("{base}/model/{model}/{action}"),
        headers,
        body,
    };
    // Routing enables the provider only when both are set.
    let set = |name: &str| (signing.secret)(name).filter(|v| !v.trim().is_empty());
    let secret_key = set(secret_access_key_secret(p));
    let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_key.as_deref())
    else {
        return Err(internal(format!(
            "provider `{}`: the AWS access key id or secret access key is not set",
            target.name
        )));
    };
    let session_token = set(session_token_secret(p));
    let creds = Credentials {
        access_key_id,
        secret_access_key,
        session_token: session_token.as_deref(),
    };
    let scope = Scope {
        region,
        service: SIGNING_NAME,
    };
    sigv4::sign(&mut up, &creds, scope, signing.now_s, true);
    Ok(up)
}

/// The Converse request body for an OpenAI chat-completions request. Every
/// rejection is a 400 naming the parameter.
pub fn chat_request_to_converse_body(
    req: &ChatRequest<'_>,
    model: &str,
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
    let Converted {
        mut system,
        messages,
        called_tools,
    } = openai_messages_to_converse(req.messages()?)?;

    let format: Option<ResponseFormatIn<'_>> = req.parse_field("response_format")?;
    let json_schema = match format {
        Some(f) if f.kind == "json_object" => {
            system.push(SystemBlock {
                text: JSON_OBJECT_INSTRUCTION.to_owned(),
            });
            None
        }
        Some(f) if f.kind == "json_schema" => Some(f.json_schema.ok_or_else(|| {
            invalid(
                "response_format.json_schema is required for type json_schema".to_owned(),
                "response_format",
            )
        })?),
        _ => None,
    };

    let client_choice: Option<ToolChoice> = req.parse_field("tool_choice")?;
    let none_mode = matches!(client_choice, Some(ToolChoice::Mode(ToolChoiceMode::None)));
    let mut tools = openai_tools_to_converse(req.parse_field("tools")?)?;
    // Converse has no "none": leave the tools out, unless the history calls
    // tools, which Converse accepts only with a tool config.
    if none_mode && called_tools.is_empty() {
        tools.clear();
    }
    let mut tool_choice = match client_choice {
        _ if tools.is_empty() || none_mode => None,
        None => None,
        Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Some(ToolChoiceOut::Auto {}),
        Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Some(ToolChoiceOut::Any {}),
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => None,
        Some(ToolChoice::Named { function }) => Some(ToolChoiceOut::Tool {
            name: function.name,
        }),
    };
    if let Some(schema) = json_schema {
        if tools.iter().any(|t| t.tool_spec.name == schema.name) {
            return Err(invalid(
                format!(
                    "response_format.json_schema.name {:?} is also the name of a tool; {KIND} answers a json_schema through a tool of that name",
                    schema.name
                ),
                "response_format",
            ));
        }
        // Forcing the schema tool would forbid the client's own tools, so
        // with tools the model must call one of them or the schema tool.
        tool_choice = Some(match tool_choice {
            Some(named @ ToolChoiceOut::Tool { .. }) => named,
            _ if !tools.is_empty() && !none_mode => ToolChoiceOut::Any {},
            _ => ToolChoiceOut::Tool {
                name: schema.name.clone(),
            },
        });
        tools.push(tool_out(
            schema.name,
            Some(RESPONSE_TOOL_DESCRIPTION.to_owned()),
            schema.schema,
        ));
    }
    if tools.is_empty() {
        tools = called_tools
            .into_iter()
            .map(|name| tool_out(name, None, None))
            .collect();
    }
    let tool_config = (!tools.is_empty()).then_some(ToolConfig { tools, tool_choice });

    let inference = InferenceConfig {
        max_tokens: req.max_tokens,
        temperature: req
            .parse_field::<Option<f64>>("temperature")?
            .map(|t| t.min(1.0)),
        top_p: req.parse_field("top_p")?,
        stop_sequences: req
            .parse_field::<Option<Stop>>("stop")?
            .map(Stop::into_vec)
            .unwrap_or_default(),
    };
    let has_inference = inference.max_tokens.is_some()
        || inference.temperature.is_some()
        || inference.top_p.is_some()
        || !inference.stop_sequences.is_empty();
    let top_k: Option<u64> = req.parse_field("top_k")?;
    let body = ConverseRequest {
        messages,
        system,
        inference_config: has_inference.then_some(inference),
        tool_config,
        additional_model_request_fields: top_k.and_then(|k| top_k_field(model, k)),
    };
    serde_json::to_vec(&body).map_err(|e| GatewayError::Internal {
        message: format!("serializing a Converse request: {e}"),
    })
}

/// `top_k` in the spelling of the model's family, where it has one.
fn top_k_field(model: &str, k: u64) -> Option<serde_json::Value> {
    match model_family(model) {
        "anthropic" => Some(serde_json::json!({ "top_k": k })),
        "amazon" if model.contains("nova") => {
            Some(serde_json::json!({ "inferenceConfig": { "topK": k } }))
        }
        _ => None,
    }
}

/// The vendor of a model id, its inference-profile prefix and ARN removed:
/// `anthropic` for `eu.anthropic.claude-...`.
fn model_family(model: &str) -> &str {
    let id = model.rsplit('/').next().unwrap_or(model);
    let mut parts = id.split('.');
    let first = parts.next().unwrap_or_default();
    if crate::aws::regions::inference_profile_jurisdiction(id).is_some() {
        parts.next().unwrap_or_default()
    } else {
        first
    }
}

fn tool_out(name: String, description: Option<String>, schema: Option<&RawValue>) -> ToolOut {
    let schema = schema
        .filter(|raw| raw.get().trim() != "null")
        .map_or(OBJECT_SCHEMA, RawValue::get);
    ToolOut {
        tool_spec: ToolSpec {
            name,
            description,
            input_schema: InputSchema {
                // Text that was valid JSON stays valid JSON.
                json: RawValue::from_string(schema.to_owned())
                    .unwrap_or_else(|_| object_schema_raw()),
            },
        },
    }
}

fn object_schema_raw() -> Box<RawValue> {
    RawValue::from_string(OBJECT_SCHEMA.to_owned()).unwrap_or_default()
}

fn invalid(message: String, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: Some(param.to_owned()),
    }
}

/// The messages, split into Converse's parts.
struct Converted {
    system: Vec<SystemBlock>,
    messages: Vec<MessageOut>,
    /// The names of the tools the history calls, each once.
    called_tools: Vec<String>,
}

fn openai_messages_to_converse(messages: Vec<Message>) -> Result<Converted, GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<MessageOut> = Vec::with_capacity(messages.len());
    let mut called_tools: Vec<String> = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                let text = system_text(m.content, i)?;
                if !text.is_empty() {
                    system.push(SystemBlock { text });
                }
                continue;
            }
            Role::User => ("user", content_to_blocks(m.content, i)?),
            Role::Assistant => {
                for call in m.tool_calls.iter().flatten() {
                    if !called_tools.contains(&call.function.name) {
                        called_tools.push(call.function.name.clone());
                    }
                }
                ("assistant", assistant_blocks(m, i)?)
            }
            Role::Tool => {
                let Some(tool_use_id) = m.tool_call_id else {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id is required for a tool message"),
                        "messages",
                    ));
                };
                let content = content_to_blocks(m.content, i)?;
                (
                    "user",
                    vec![Block::ToolResult(ToolResultBlock {
                        tool_use_id,
                        content,
                    })],
                )
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
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => turns.push(MessageOut {
                role,
                content: blocks,
            }),
        }
    }
    Ok(Converted {
        system,
        messages: turns,
        called_tools,
    })
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

/// Text and images; blank text dropped (Converse rejects it).
fn content_to_blocks(content: Option<Content>, i: usize) -> Result<Vec<Block>, GatewayError> {
    let blocks = match content {
        None => vec![],
        Some(Content::Text(text)) => vec![Block::Text(text)],
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| openai_part_to_block(part, i, j))
            .collect::<Result<_, _>>()?,
    };
    Ok(blocks
        .into_iter()
        .filter(|b| !matches!(b, Block::Text(t) if t.trim().is_empty()))
        .collect())
}

fn openai_part_to_block(part: ContentPart, i: usize, j: usize) -> Result<Block, GatewayError> {
    match part {
        ContentPart::Text { text } => Ok(Block::Text(text)),
        ContentPart::ImageUrl { image_url } => data_url_to_image(image_url.url)
            .map(Block::Image)
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

/// `data:image/png;base64,<data>` -> an image block; Converse takes bytes,
/// so a URL is refused rather than fetched.
fn data_url_to_image(url: String) -> Result<ImageBlock, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(format!(
            "{KIND} takes images as bytes: send a base64 data URL (data:image/png;base64,...), not a link"
        ));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or("a data URL needs a comma before its data")?;
    let Some(media_type) = meta.strip_suffix(";base64") else {
        return Err(format!("only base64 data URLs are supported by {KIND}"));
    };
    let media_type = media_type.split(';').next().unwrap_or_default();
    let format = match media_type.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(format!(
                "{KIND} takes png, jpeg, gif and webp images, not {other:?}"
            ));
        }
    };
    Ok(ImageBlock {
        format,
        source: ImageSource {
            bytes: data.to_owned(),
        },
    })
}

/// Text, then one `toolUse` block per call.
fn assistant_blocks(m: Message, i: usize) -> Result<Vec<Block>, GatewayError> {
    let mut blocks = content_to_blocks(m.content, i)?;
    for (j, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
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
        blocks.push(Block::ToolUse(ToolUseBlock {
            tool_use_id: call.id,
            name: call.function.name,
            input,
        }));
    }
    Ok(blocks)
}

fn openai_tools_to_converse(tools: Option<Vec<ToolIn<'_>>>) -> Result<Vec<ToolOut>, GatewayError> {
    tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t.kind.as_deref() {
            None | Some("function") => Ok(tool_out(
                t.function.name,
                t.function.description,
                t.function.parameters,
            )),
            Some(other) => Err(invalid(
                format!("tools[{i}]: only `function` tools are supported by {KIND}, got {other:?}"),
                "tools",
            )),
        })
        .collect()
}

/// The name of the tool that carries a `json_schema` answer, when the
/// request asked for one. The request was validated when it was built.
fn response_tool_name(req: &ChatRequest<'_>) -> Option<String> {
    match req.parse_field::<Option<ResponseFormatIn<'_>>>("response_format") {
        Ok(Some(f)) if f.kind == "json_schema" => f.json_schema.map(|s| s.name),
        _ => None,
    }
}

// ---- Response parsing ------------------------------------------------------------

/// Translates a 2xx Converse body into the client's `chat.completion` body.
/// `now_s` (Unix seconds) is its `created`: Converse answers carry no time.
pub fn chat_response(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    let answer: ConverseResponse =
        serde_json::from_slice(body).map_err(|e| GatewayError::UpstreamInvalidResponse {
            provider: target.name.to_owned(),
            message: format!("not a Converse response: {e}"),
        })?;
    let completion = converse_response_to_chat_completion(
        answer,
        response_tool_name(req).as_deref(),
        completion_id(fnv1a(body)),
        target.model,
        now_s,
    );
    let usage = completion.usage;
    let body = serde_json::to_vec(&completion).map_err(|e| GatewayError::Internal {
        message: format!("serializing a completion: {e}"),
    })?;
    Ok((body, usage))
}

/// `chatcmpl-bedrock-<hash>`: Bedrock gives its answers no id.
fn completion_id(hash: u64) -> String {
    format!("chatcmpl-bedrock-{hash:016x}")
}

/// The completion for an answer. A `toolUse` of `response_tool` (the
/// `json_schema` carrier) becomes content, not a tool call.
fn converse_response_to_chat_completion(
    answer: ConverseResponse,
    response_tool: Option<&str>,
    id: String,
    model: &str,
    now_s: u64,
) -> ChatCompletion {
    let mut content: Option<String> = None;
    let mut tool_calls = Vec::new();
    let blocks = answer
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .unwrap_or_default();
    for block in blocks {
        if let Some(text) = block.text {
            content.get_or_insert_default().push_str(&text);
        }
        if let Some(call) = block.tool_use {
            let arguments = call
                .input
                .as_deref()
                .map_or_else(|| "{}".to_owned(), |raw| compact_json(raw.get()));
            if response_tool == Some(call.name.as_str()) {
                content.get_or_insert_default().push_str(&arguments);
            } else {
                tool_calls.push(ToolCallOut {
                    id: call.tool_use_id,
                    kind: "function",
                    function: FunctionOut {
                        name: call.name,
                        arguments,
                    },
                });
            }
        }
    }
    let finish_reason = answer.stop_reason.as_deref().map(|r| {
        match bedrock_stop_reason_to_finish_reason(r) {
            // The only call was the schema tool: the answer is complete.
            FinishReason::ToolCalls if tool_calls.is_empty() => FinishReason::Stop,
            other => other,
        }
    });
    ChatCompletion {
        id,
        object: "chat.completion",
        created: now_s,
        model: model.to_owned(),
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
        usage: Some(answer.usage.to_openai()),
    }
}

/// Why Bedrock stopped, in OpenAI's words. Unknown future reasons read as a
/// natural stop.
pub fn bedrock_stop_reason_to_finish_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        // `end_turn`, `stop_sequence`, and `malformed_model_output` or
        // `malformed_tool_use` (what was said is all there is).
        _ => FinishReason::Stop,
    }
}

// ---- Stream decoding ---------------------------------------------------------------

/// What one Converse content block becomes in the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Text (Bedrock sends no start event for text blocks).
    Text,
    /// A tool call: its ordinal among the answer's tool calls, OpenAI's
    /// `index` (Bedrock's block index counts text blocks too).
    Tool(u32),
    /// The `json_schema` carrier: its input pieces become content.
    ResponseTool,
}

/// ConverseStream event-stream messages -> OpenAI chunk bytes, one message
/// at a time. The order Bedrock sends: `messageStart`, per block an optional
/// `contentBlockStart` (tool use), `contentBlockDelta`s and a
/// `contentBlockStop`, then `messageStop` (the stop reason) and `metadata`
/// (usage). The answer is complete at `messageStop`; usage and `[DONE]`
/// follow when the stream ends.
pub struct ConverseStream {
    provider: String,
    chunks: ChunkWriter,
    response_tool: Option<String>,
    /// By Bedrock block index; an index never started is text.
    blocks: Vec<BlockKind>,
    tool_calls: u32,
    usage: Option<UsageIn>,
    started: bool,
    stopped: bool,
}

impl ConverseStream {
    /// A translator for one stream; `now_s` (Unix seconds) is every chunk's
    /// `created`.
    pub fn new(target: &Target<'_>, req: &ChatRequest<'_>, now_s: u64) -> Self {
        ConverseStream {
            provider: target.name.to_owned(),
            chunks: ChunkWriter {
                id: String::new(),
                model: target.model.to_owned(),
                created: now_s,
                client_wants_usage: req.include_usage,
            },
            response_tool: response_tool_name(req),
            blocks: Vec::new(),
            tool_calls: 0,
            usage: None,
            started: false,
            stopped: false,
        }
    }

    /// The role chunk, once, whatever event comes first.
    fn start(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        // Bedrock pads events with random bytes, so the first event's hash
        // differs from answer to answer.
        self.chunks.id = completion_id(fnv1a(payload) ^ self.chunks.created);
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        };
        self.chunks.delta(out, delta, None);
    }

    fn kind(&self, index: Option<usize>) -> BlockKind {
        index
            .and_then(|i| self.blocks.get(i).copied())
            .unwrap_or(BlockKind::Text)
    }

    fn block_start(&mut self, index: usize, start: StartIn, out: &mut Vec<u8>) {
        let Some(call) = start.tool_use else { return };
        // A corrupt index must not make the gateway allocate without bound.
        if index > MAX_BLOCK_INDEX {
            return;
        }
        let kind = if self.response_tool.as_deref() == Some(call.name.as_str()) {
            BlockKind::ResponseTool
        } else {
            self.tool_calls += 1;
            BlockKind::Tool(self.tool_calls - 1)
        };
        if self.blocks.len() <= index {
            self.blocks.resize(index + 1, BlockKind::Text);
        }
        self.blocks[index] = kind;
        if let BlockKind::Tool(index) = kind {
            let delta = Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index,
                    id: Some(&call.tool_use_id),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(&call.name),
                        arguments: "",
                    },
                }]),
                ..Delta::default()
            };
            self.chunks.delta(out, delta, None);
        }
    }

    fn block_delta(&self, index: Option<usize>, delta: DeltaIn<'_>, out: &mut Vec<u8>) {
        if let Some(text) = delta.text.as_deref().filter(|t| !t.is_empty()) {
            self.chunks.delta(out, content_delta(text), None);
        }
        let Some(json) = delta
            .tool_use
            .as_ref()
            .map(|t| t.input.as_ref())
            .filter(|j| !j.is_empty())
        else {
            // `reasoningContent` and future delta kinds: nothing to send.
            return;
        };
        match self.kind(index) {
            BlockKind::Tool(index) => {
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
            BlockKind::ResponseTool => self.chunks.delta(out, content_delta(json), None),
            // Input for a block that never started as a tool: nowhere to go.
            BlockKind::Text => {}
        }
    }

    fn invalid(&self, message: String) -> GatewayError {
        GatewayError::UpstreamInvalidResponse {
            provider: self.provider.clone(),
            message,
        }
    }
}

fn content_delta(text: &str) -> Delta<'_> {
    Delta {
        content: Some(text),
        ..Delta::default()
    }
}

impl StreamTranslator<EventMessage> for ConverseStream {
    fn on_event(&mut self, msg: EventMessage, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        match msg.header(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let kind = msg.header(":exception-type").unwrap_or("exception");
                let body: ErrorBody = serde_json::from_slice(&msg.payload).unwrap_or_default();
                return Err(GatewayError::Upstream {
                    provider: self.provider.clone(),
                    status: bedrock_error_type_to_status(kind, 500),
                    message: with_type(kind, body.message),
                    retry_after: None,
                });
            }
            Some("error") => {
                // The event stream's own error: code and message in headers.
                let code = msg.header(":error-code").unwrap_or("error");
                let message = msg.header(":error-message").map(str::to_owned);
                return Err(GatewayError::Upstream {
                    provider: self.provider.clone(),
                    status: bedrock_error_type_to_status(code, 500),
                    message: with_type(code, message),
                    retry_after: None,
                });
            }
            // Messages of types added later say nothing the client needs.
            _ => return Ok(()),
        }
        if self.stopped {
            // Only usage can still matter after the stop.
            if msg.header(":event-type") == Some("metadata")
                && let Ok(event) = serde_json::from_slice::<EventIn<'_>>(&msg.payload)
                && let Some(usage) = event.usage
            {
                self.usage = Some(usage);
            }
            return Ok(());
        }
        let event_type = msg.header(":event-type").unwrap_or_default();
        let event: EventIn<'_> = serde_json::from_slice(&msg.payload)
            .map_err(|e| self.invalid(format!("invalid {event_type} event: {e}")))?;
        match event_type {
            "messageStart" => self.start(&msg.payload, out),
            "contentBlockStart" => {
                self.start(&msg.payload, out);
                if let (Some(index), Some(start)) = (event.content_block_index, event.start) {
                    self.block_start(index, start, out);
                }
            }
            "contentBlockDelta" => {
                self.start(&msg.payload, out);
                if let Some(delta) = event.delta {
                    self.block_delta(event.content_block_index, delta, out);
                }
            }
            "messageStop" => {
                self.start(&msg.payload, out);
                self.stopped = true;
                let reason = event.stop_reason.as_deref().unwrap_or("end_turn");
                let finish = match bedrock_stop_reason_to_finish_reason(reason) {
                    // The only call was the schema tool: the answer is complete.
                    FinishReason::ToolCalls if self.tool_calls == 0 => FinishReason::Stop,
                    other => other,
                };
                self.chunks.delta(out, Delta::default(), Some(finish));
            }
            "metadata" => {
                if let Some(usage) = event.usage {
                    self.usage = Some(usage);
                }
            }
            // `contentBlockStop` and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if !self.stopped {
            return Err(GatewayError::UpstreamUnreachable {
                provider: self.provider.clone(),
                message: "stream ended before messageStop".into(),
            });
        }
        if self.chunks.client_wants_usage {
            self.chunks
                .chunk(out, vec![], Some(self.usage().unwrap_or_default()));
        }
        out.extend_from_slice(DONE);
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(UsageIn::to_openai)
    }
}

// ---- Error mapping -------------------------------------------------------------------

/// Maps a Bedrock error response to the gateway's error: the status by the
/// error type (the `x-amzn-errortype` header, else the body's `__type`),
/// the message `Type: message`. Bedrock never echoes credentials; the
/// gateway redacts the key id regardless.
pub fn error_from_body(
    provider: &str,
    status: u16,
    error_type: Option<&str>,
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).unwrap_or_default();
    // `ValidationException:http://internal.amazon.com/coral/...`, or
    // `com.amazon.coral.validate#ValidationException`.
    let kind = error_type
        .map(|t| t.split(':').next().unwrap_or(t))
        .or_else(|| {
            parsed
                .kind
                .as_deref()
                .map(|t| t.rsplit('#').next().unwrap_or(t))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let message = match &parsed.message {
        Some(m) => m.clone(),
        None => super::excerpt(body),
    };
    GatewayError::Upstream {
        provider: provider.to_owned(),
        status: kind.map_or(status, |k| bedrock_error_type_to_status(k, status)),
        message: match kind {
            Some(k) => with_type(k, Some(message)),
            None => message,
        },
        retry_after,
    }
}

/// `Type: message`, or the type alone.
fn with_type(kind: &str, message: Option<String>) -> String {
    match message {
        Some(m) if !m.trim().is_empty() => format!("{kind}: {}", m.trim_end()),
        _ => kind.to_owned(),
    }
}

/// The status an error type stands for, `fallback` for types not listed.
/// HTTP responses spell types `ThrottlingException`, stream exceptions
/// `throttlingException`: compared without case.
///
/// - throttling, quota -> 429: another target, this one cooled;
/// - a model that failed or timed out, a stream that broke -> 502/504, and
///   an unavailable or failing service -> 503/500: another target;
/// - validation -> 400, access -> 403, unknown resource -> 404: the same
///   request fails anywhere, so it is not retried.
pub fn bedrock_error_type_to_status(kind: &str, fallback: u16) -> u16 {
    const TABLE: &[(&str, u16)] = &[
        ("ThrottlingException", 429),
        ("ServiceQuotaExceededException", 429),
        ("TooManyRequestsException", 429),
        ("ModelErrorException", 502),
        ("ModelStreamErrorException", 502),
        ("ModelTimeoutException", 504),
        ("ModelNotReadyException", 503),
        ("ServiceUnavailableException", 503),
        ("InternalServerException", 500),
        ("ValidationException", 400),
        ("AccessDeniedException", 403),
        ("UnrecognizedClientException", 403),
        ("InvalidSignatureException", 403),
        ("ResourceNotFoundException", 404),
    ];
    TABLE
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(kind))
        .map_or(fallback, |(_, status)| *status)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use futures::executor::block_on;
    use futures::{StreamExt, stream};
    use serde_json::{Value, json};

    use super::*;
    use crate::aws::eventstream::{encode_event, encode_exception};
    use crate::config::{Config, ProviderKind};
    use crate::gateway::{self, Ctx, ReplyBody, Translated};
    use crate::http::{ByteStream, Upstream, UpstreamResponse};
    use crate::providers::{Translator, stream_translator};

    /// A golden file under `tests/fixtures/bedrock/`.
    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/bedrock/",
                $name
            ))
        };
    }

    /// A binary golden file under `tests/fixtures/bedrock/`.
    macro_rules! binary_fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/bedrock/",
                $name
            ))
        };
    }

    const NOW_S: u64 = 1_700_000_000;
    const MODEL: &str = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0";
    const PROVIDER: &str = r#"{"kind":"bedrock","region":"eu-central-1"}"#;

    fn provider(json: &str) -> Provider {
        serde_json::from_str(json).unwrap()
    }

    fn target(p: &Provider) -> Target<'_> {
        Target {
            name: "bedrock",
            provider: p,
            model: MODEL,
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// The Converse body for an OpenAI request body.
    fn translate_request(body: &str) -> Result<Value, GatewayError> {
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        chat_request_to_converse_body(&req, MODEL).map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// The 400's parameter and message.
    fn rejection(body: &str) -> (String, String) {
        match translate_request(body) {
            Err(GatewayError::InvalidRequest { message, param }) => (param.unwrap(), message),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn with(extra: &str) -> Value {
        translate_request(&format!(
            r#"{{"model":"c","messages":[{{"role":"user","content":"x"}}],{extra}}}"#
        ))
        .unwrap()
    }

    /// Secrets as a Worker would hold them.
    fn secrets(name: &str) -> Option<String> {
        match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIAIOSFODNN7EXAMPLE".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            "EU_SESSION" => Some("FwoGZXIvYXdzEXAMPLETOKEN".into()),
            _ => None,
        }
    }

    fn signing() -> Signing<'static> {
        Signing {
            now_s: NOW_S,
            secret: &secrets,
        }
    }

    fn header<'r>(up: &'r UpstreamRequest, name: &str) -> Option<&'r str> {
        up.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    // ---- Requests ----------------------------------------------------------------

    #[test]
    fn golden_requests_translate_exactly() {
        let cases = [
            (
                "text",
                fixture!("request_text.openai.json"),
                fixture!("request_text.bedrock.json"),
            ),
            (
                "tools",
                fixture!("request_tools.openai.json"),
                fixture!("request_tools.bedrock.json"),
            ),
            (
                "tool_round_trip",
                fixture!("request_tool_round_trip.openai.json"),
                fixture!("request_tool_round_trip.bedrock.json"),
            ),
            (
                "image_input",
                fixture!("request_image_input.openai.json"),
                fixture!("request_image_input.bedrock.json"),
            ),
        ];
        for (name, openai, bedrock) in cases {
            assert_eq!(translate_request(openai).unwrap(), json(bedrock), "{name}");
        }
    }

    #[test]
    fn tool_schemas_are_copied_byte_for_byte() {
        let req = ChatRequest::parse(fixture!("request_tools.openai.json").as_bytes()).unwrap();
        let body = chat_request_to_converse_body(&req, MODEL).unwrap();
        let text = String::from_utf8(body).unwrap();
        // Key order as the client wrote it (a Value would sort it).
        assert!(
            text.contains(
                r#""json":{"type": "object", "properties": {"city": {"type": "string"}, "unit""#
            ),
            "{text}"
        );
    }

    #[test]
    fn request_is_signed_for_the_region_and_goes_to_its_endpoint() {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(fixture!("request_text.openai.json").as_bytes()).unwrap();
        let up =
            build_chat_request(&target(&p), &req, Some("AKIAIOSFODNN7EXAMPLE"), signing()).unwrap();
        assert_eq!(up.method, "POST");
        assert_eq!(
            up.url,
            "https://bedrock-runtime.eu-central-1.amazonaws.com/model/eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
        );
        assert_eq!(header(&up, "content-type"), Some("application/json"));
        assert_eq!(header(&up, "accept"), Some("application/json"));
        assert_eq!(header(&up, "x-amz-date"), Some("20231114T221320Z"));
        assert!(header(&up, "x-amz-content-sha256").is_some());
        assert_eq!(header(&up, "x-amz-security-token"), None);
        let auth = header(&up, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20231114/eu-central-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date, Signature="
            ),
            "{auth}"
        );
        assert!(!up.wants_stream());
        // The secret key is signed with, never sent.
        assert!(!up.headers.iter().any(|(_, v)| v.contains("wJalrXUtnFEMI")));
    }

    #[test]
    fn streams_go_to_converse_stream_and_session_tokens_are_signed() {
        let p = provider(
            r#"{"kind":"bedrock","region":"us-east-1","aws_session_token_secret":"EU_SESSION",
                "base_url":"http://127.0.0.1:9/_mock/chunks=2/","headers":{"x-amzn-bedrock-trace":"ENABLED"}}"#,
        );
        let req = ChatRequest::parse(
            br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let arn =
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-pro-v1:0";
        let t = Target {
            name: "bedrock",
            provider: &p,
            model: arn,
        };
        let up = build_chat_request(&t, &req, Some("AKIAIOSFODNN7EXAMPLE"), signing()).unwrap();
        assert_eq!(
            up.url,
            "http://127.0.0.1:9/_mock/chunks=2/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.amazon.nova-pro-v1%3A0/converse-stream"
        );
        assert_eq!(
            header(&up, "accept"),
            Some("application/vnd.amazon.eventstream")
        );
        assert!(up.wants_stream());
        assert_eq!(
            header(&up, "x-amz-security-token"),
            Some("FwoGZXIvYXdzEXAMPLETOKEN")
        );
        let auth = header(&up, "authorization").unwrap();
        assert!(
            auth.contains("/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amzn-bedrock-trace, "),
            "{auth}"
        );
    }

    #[test]
    fn missing_credentials_are_the_gateways_error() {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(fixture!("request_text.openai.json").as_bytes()).unwrap();
        let none = |_: &str| None;
        let s = Signing {
            now_s: NOW_S,
            secret: &none,
        };
        let e = build_chat_request(&target(&p), &req, Some("AKIA"), s).unwrap_err();
        assert!(matches!(e, GatewayError::Internal { .. }), "{e:?}");
    }

    #[test]
    fn tool_choice_modes_map_and_none_drops_the_tools() {
        const TOOLS: &str = r#""tools":[{"type":"function","function":{"name":"get_weather"}}]"#;
        let choice = |c: &str| with(&format!(r#"{TOOLS},"tool_choice":{c}"#))["toolConfig"].clone();
        assert_eq!(choice(r#""auto""#)["toolChoice"], json!({"auto":{}}));
        assert_eq!(choice(r#""required""#)["toolChoice"], json!({"any":{}}));
        assert_eq!(
            choice(r#"{"type":"function","function":{"name":"get_weather"}}"#)["toolChoice"],
            json!({"tool":{"name":"get_weather"}})
        );
        assert!(with(TOOLS)["toolConfig"].get("toolChoice").is_none());
        assert!(
            with(&format!(r#"{TOOLS},"tool_choice":"none""#))
                .get("toolConfig")
                .is_none()
        );
        // With tool calls in the history, `none` keeps the tools (Converse
        // needs them) and lets the model choose.
        let v = translate_request(&format!(
            r#"{{"model":"c",{TOOLS},"tool_choice":"none","messages":[{{"role":"user","content":"x"}},
               {{"role":"assistant","tool_calls":[{{"id":"t1","type":"function","function":{{"name":"get_weather","arguments":"{{}}"}}}}]}},
               {{"role":"tool","tool_call_id":"t1","content":"sunny"}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            v["toolConfig"],
            json!({"tools":[{"toolSpec":{"name":"get_weather","inputSchema":{"json":{"type":"object"}}}}]})
        );
    }

    #[test]
    fn history_tool_calls_without_tools_get_a_tool_config() {
        let v = translate_request(
            r#"{"model":"c","messages":[{"role":"user","content":"x"},
               {"role":"assistant","tool_calls":[{"id":"t1","type":"function","function":{"name":"lookup","arguments":"{\"q\":1}"}},
                                                 {"id":"t2","type":"function","function":{"name":"lookup","arguments":""}}]},
               {"role":"tool","tool_call_id":"t1","content":"a"},{"role":"tool","tool_call_id":"t2","content":"b"},
               {"role":"user","content":"thanks"}]}"#,
        )
        .unwrap();
        assert_eq!(
            v["toolConfig"],
            json!({"tools":[{"toolSpec":{"name":"lookup","inputSchema":{"json":{"type":"object"}}}}]})
        );
        // The two tool results and the next user text are one user turn.
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert_eq!(v["messages"][2]["content"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["messages"][1]["content"][1],
            json!({"toolUse":{"toolUseId":"t2","name":"lookup","input":{}}})
        );
    }

    #[test]
    fn json_formats_become_a_forced_tool_or_an_instruction() {
        const SCHEMA: &str = r#""response_format":{"type":"json_schema","json_schema":{"name":"person","schema":{"type":"object","properties":{"name":{"type":"string"}}}}}"#;
        let v = with(SCHEMA);
        assert_eq!(
            v["toolConfig"],
            json!({"tools":[{"toolSpec":{"name":"person","description":RESPONSE_TOOL_DESCRIPTION,
                   "inputSchema":{"json":{"type":"object","properties":{"name":{"type":"string"}}}}}}],
                   "toolChoice":{"tool":{"name":"person"}}})
        );
        let v = with(&format!(
            r#""tools":[{{"type":"function","function":{{"name":"f"}}}}],{SCHEMA}"#
        ));
        assert_eq!(v["toolConfig"]["toolChoice"], json!({"any":{}}));
        let v = with(r#""response_format":{"type":"json_object"}"#);
        assert_eq!(v["system"], json!([{"text": JSON_OBJECT_INSTRUCTION}]));
        assert!(
            with(r#""response_format":{"type":"text"}"#)
                .get("system")
                .is_none()
        );
        let (param, _) = rejection(
            r#"{"model":"c","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"person"}}],
                "response_format":{"type":"json_schema","json_schema":{"name":"person"}}}"#,
        );
        assert_eq!(param, "response_format");
    }

    #[test]
    fn top_k_goes_where_the_model_family_reads_it() {
        assert_eq!(
            top_k_field("anthropic.claude-3-haiku-20240307-v1:0", 5),
            Some(json!({"top_k":5}))
        );
        assert_eq!(top_k_field(MODEL, 5), Some(json!({"top_k":5})));
        assert_eq!(
            top_k_field(
                "arn:aws:bedrock:eu-west-1:1:inference-profile/eu.amazon.nova-lite-v1:0",
                5
            ),
            Some(json!({"inferenceConfig":{"topK":5}}))
        );
        assert_eq!(top_k_field("meta.llama3-70b-instruct-v1:0", 5), None);
        assert!(
            with(r#""top_k":3"#)
                .get("additionalModelRequestFields")
                .is_some()
        );
    }

    #[test]
    fn unsupported_content_is_rejected_not_dropped() {
        let cases = [
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]}"#,
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/bmp;base64,Qk0="}}]}]}"#,
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,raw"}}]}]}"#,
            r#"{"model":"c","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AA==","format":"wav"}}]}]}"#,
            r#"{"model":"c","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]},{"role":"user","content":"x"}]}"#,
            r#"{"model":"c","messages":[{"role":"function","name":"f","content":"1"}]}"#,
            r#"{"model":"c","messages":[{"role":"tool","content":"1"}]}"#,
            r#"{"model":"c","messages":[{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#,
        ];
        for body in cases {
            let (param, message) = rejection(body);
            assert_eq!(param, "messages", "{body}");
            assert!(message.contains("messages[0]"), "{message}");
        }
        let (_, message) = rejection(cases[0]);
        assert!(message.contains("base64 data URL"), "{message}");
        assert_eq!(
            rejection(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"n":3}"#).0,
            "n"
        );
        assert_eq!(
            rejection(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"functions":[]}"#)
                .0,
            "functions"
        );
        assert_eq!(
            rejection(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search","function":{"name":"w"}}]}"#).0,
            "tools"
        );
    }

    // ---- Responses -------------------------------------------------------------

    const PLAIN: &str = r#"{"model":"claude-eu","messages":[{"role":"user","content":"hi"}]}"#;

    fn translate_response(req: &str, body: &str) -> (Value, Option<Usage>) {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(req.as_bytes()).unwrap();
        let (out, usage) = chat_response(&target(&p), &req, body.as_bytes(), NOW_S).unwrap();
        (serde_json::from_slice(&out).unwrap(), usage)
    }

    #[test]
    fn golden_responses_translate_exactly() {
        let cases = [
            (
                "text",
                fixture!("response_text.bedrock.json"),
                fixture!("response_text.openai.json"),
            ),
            (
                "tool_use",
                fixture!("response_tool_use.bedrock.json"),
                fixture!("response_tool_use.openai.json"),
            ),
            (
                "length",
                fixture!("response_length.bedrock.json"),
                fixture!("response_length.openai.json"),
            ),
        ];
        for (name, bedrock, openai) in cases {
            let (got, usage) = translate_response(PLAIN, bedrock);
            let want = json(openai);
            assert_eq!(got, want, "{name}");
            let want_usage: Usage = serde_json::from_value(want["usage"].clone()).unwrap();
            assert_eq!(usage, Some(want_usage), "{name}");
        }
    }

    #[test]
    fn a_json_schema_answer_is_content() {
        let req = r#"{"model":"c","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"person"}}}"#;
        let body = r#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"t","name":"person","input":{"name": "Ada"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":2}}"#;
        let (v, _) = translate_response(req, body);
        assert_eq!(v["choices"][0]["message"]["content"], r#"{"name":"Ada"}"#);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let f = bedrock_stop_reason_to_finish_reason;
        assert_eq!(f("end_turn"), FinishReason::Stop);
        assert_eq!(f("stop_sequence"), FinishReason::Stop);
        assert_eq!(f("max_tokens"), FinishReason::Length);
        assert_eq!(f("model_context_window_exceeded"), FinishReason::Length);
        assert_eq!(f("tool_use"), FinishReason::ToolCalls);
        assert_eq!(f("guardrail_intervened"), FinishReason::ContentFilter);
        assert_eq!(f("content_filtered"), FinishReason::ContentFilter);
        assert_eq!(f("something_new"), FinishReason::Stop);
    }

    #[test]
    fn a_body_that_is_not_a_converse_answer_is_retryable() {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(PLAIN.as_bytes()).unwrap();
        let e = chat_response(&target(&p), &req, b"{\"output\": invalid", NOW_S).unwrap_err();
        assert!(matches!(e, GatewayError::UpstreamInvalidResponse { .. }));
        assert!(e.is_retryable());
    }

    // ---- Streams ---------------------------------------------------------------

    const STREAM_PLAIN: &str =
        r#"{"model":"claude-eu","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    const STREAM_USAGE: &str = r#"{"model":"claude-eu","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;

    /// The events of each stream fixture, readable: (scenario, messages).
    /// `stream_fixtures_are_current` keeps the binary files equal to them.
    fn stream_sources() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let ev = encode_event;
        vec![
            (
                "stream_text",
                vec![
                    ev(
                        "messageStart",
                        r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN","role":"assistant"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":0,"delta":{"text":"Bonjour"},"p":"abcdefghijklmnopqrstuvwxyzA"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":0,"delta":{"text":" le monde"},"p":"abcdefghijklmnopqrstu"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":0,"delta":{"text":", \u00e9t\u00e9 \"2025\" ☀"},"p":"abcdefghijk"}"#,
                    ),
                    ev(
                        "contentBlockStop",
                        r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"}"#,
                    ),
                    ev(
                        "messageStop",
                        r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR","stopReason":"end_turn"}"#,
                    ),
                    ev(
                        "metadata",
                        r#"{"metrics":{"latencyMs":412},"p":"abcdefghijklmnop","usage":{"cacheReadInputTokens":5,"cacheWriteInputTokens":3,"inputTokens":12,"outputTokens":6,"totalTokens":26}}"#,
                    ),
                ],
            ),
            (
                "stream_tool",
                vec![
                    ev(
                        "messageStart",
                        r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEF","role":"assistant"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"The user wants the weather."}},"p":"abcdefg"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"c2lnbmF0dXJl"}},"p":"abcdefghijklmnopqrstuvw"}"#,
                    ),
                    ev(
                        "contentBlockStop",
                        r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopqrstuvwxyzABC"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":1,"delta":{"text":"Let me check."},"p":"abcdefghijklmnopqrstuvwxyzABCDEFGH"}"#,
                    ),
                    ev(
                        "contentBlockStop",
                        r#"{"contentBlockIndex":1,"p":"abcdefghijklm"}"#,
                    ),
                    ev(
                        "contentBlockStart",
                        r#"{"contentBlockIndex":2,"p":"abcdefghijklmnopqrstuvwxyzAB","start":{"toolUse":{"name":"get_weather","toolUseId":"tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"}}}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":""}},"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"city\": "}},"p":"abcdefghijklmnopq"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"\"Paris\"}"}},"p":"abcdefghijklmnopqrstuvwxyzABCDE"}"#,
                    ),
                    ev(
                        "contentBlockStop",
                        r#"{"contentBlockIndex":2,"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJK"}"#,
                    ),
                    ev(
                        "contentBlockStart",
                        r#"{"contentBlockIndex":3,"p":"abcdefghij","start":{"toolUse":{"name":"get_time","toolUseId":"tooluse_0xk3"}}}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":3,"delta":{"toolUse":{"input":"{}"}},"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHI"}"#,
                    ),
                    ev(
                        "contentBlockStop",
                        r#"{"contentBlockIndex":3,"p":"abcdefghijklmnopqrstuvwx"}"#,
                    ),
                    ev(
                        "messageStop",
                        r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW","stopReason":"tool_use"}"#,
                    ),
                    ev(
                        "metadata",
                        r#"{"metrics":{"latencyMs":1204},"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV","usage":{"inputTokens":310,"outputTokens":58,"totalTokens":368}}"#,
                    ),
                ],
            ),
            (
                "stream_exception",
                vec![
                    ev(
                        "messageStart",
                        r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN","role":"assistant"}"#,
                    ),
                    ev(
                        "contentBlockDelta",
                        r#"{"contentBlockIndex":0,"delta":{"text":"Hel"},"p":"abcdefghijklmnopqrstuvwxyzA"}"#,
                    ),
                    encode_exception(
                        "throttlingException",
                        r#"{"message":"Too many tokens, please wait before trying again."}"#,
                    ),
                ],
            ),
        ]
    }

    /// Every stream fixture is exactly the encoding of its source. Refresh
    /// the files with `UPDATE_FIXTURES=1 cargo test providers::bedrock`.
    #[test]
    fn stream_fixtures_are_current() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bedrock");
        for (name, messages) in stream_sources() {
            let bytes = messages.concat();
            let path = format!("{dir}/{name}.eventstream");
            if std::env::var_os("UPDATE_FIXTURES").is_some() {
                std::fs::write(&path, &bytes).unwrap();
            }
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == bytes,
                "{path} is stale: run UPDATE_FIXTURES=1 cargo test providers::bedrock"
            );
        }
    }

    /// (scenario, OpenAI request, ConverseStream bytes, expected client bytes).
    const STREAMS: [(&str, &str, &[u8], &str); 4] = [
        (
            "text",
            STREAM_USAGE,
            binary_fixture!("stream_text.eventstream"),
            fixture!("stream_text.openai.sse"),
        ),
        (
            "text_without_usage",
            STREAM_PLAIN,
            binary_fixture!("stream_text.eventstream"),
            fixture!("stream_text_no_usage.openai.sse"),
        ),
        (
            "tool",
            STREAM_PLAIN,
            binary_fixture!("stream_tool.eventstream"),
            fixture!("stream_tool.openai.sse"),
        ),
        (
            "exception",
            STREAM_PLAIN,
            binary_fixture!("stream_exception.eventstream"),
            fixture!("stream_exception.openai.sse"),
        ),
    ];

    /// Runs `chunks` through the gateway's [`Translated`] with this
    /// provider's translator, an error rendered as the client's error event
    /// (as a committed stream does). Returns the client bytes and the usage.
    fn run_stream(req: &str, chunks: &[&[u8]]) -> (String, Option<Usage>) {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(req.as_bytes()).unwrap();
        let translator = stream_translator(&target(&p), &req, NOW_S);
        assert!(matches!(translator, Translator::EventStream(_)));
        let owned: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let upstream: ByteStream = Box::pin(stream::iter(owned.into_iter().map(Ok)));
        let mut t = Translated::new("bedrock", upstream, translator);
        let mut out = Vec::new();
        block_on(async {
            while let Some(item) = t.next().await {
                match item {
                    Ok(bytes) => out.extend_from_slice(&bytes),
                    Err(e) => out.extend(gateway::error_event(&e)),
                }
            }
        });
        (String::from_utf8(out).unwrap(), t.usage())
    }

    #[test]
    fn golden_streams_translate_exactly() {
        for (name, req, input, want) in STREAMS {
            let (got, _) = run_stream(req, &[input]);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn golden_streams_survive_every_split_and_byte_by_byte() {
        for (name, req, input, want) in STREAMS {
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
    fn stream_usage_is_tracked_whether_or_not_the_client_asked() {
        let input = binary_fixture!("stream_text.eventstream");
        for req in [STREAM_USAGE, STREAM_PLAIN] {
            let (_, usage) = run_stream(req, &[input]);
            assert_eq!(usage, Some(Usage::new(20, 6, Some(5))));
        }
    }

    #[test]
    fn each_content_event_yields_its_chunk_at_once() {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(STREAM_PLAIN.as_bytes()).unwrap();
        let mut t = ConverseStream::new(&target(&p), &req, NOW_S);
        let mut d = eventstream::Decoder::new();
        d.push(binary_fixture!("stream_tool.eventstream"));
        let mut out = Vec::new();
        while let Some(m) = d.next_message().unwrap() {
            let kind = m.header(":event-type").unwrap().to_owned();
            let payload = String::from_utf8(m.payload.clone()).unwrap();
            let says_something = kind == "messageStart"
                || kind == "messageStop"
                || kind == "contentBlockStart"
                || (kind == "contentBlockDelta"
                    && !payload.contains("reasoningContent")
                    && !payload.contains(r#""input":"""#));
            let before = out.len();
            t.on_event(m, &mut out).unwrap();
            assert_eq!(out.len() > before, says_something, "{kind} {payload}");
        }
    }

    #[test]
    fn a_stream_cut_before_message_stop_or_inside_a_frame_is_an_error() {
        let input = binary_fixture!("stream_text.eventstream");
        // Cut at a frame boundary, after four events: the answer is incomplete.
        let (_, messages) = &stream_sources()[0];
        let cut: usize = messages[..4].iter().map(Vec::len).sum();
        let (out, _) = run_stream(STREAM_PLAIN, &[&input[..cut]]);
        assert!(out.contains("été"), "{out}");
        assert!(out.contains("stream ended before messageStop"), "{out}");
        assert!(!out.contains("[DONE]"));
        // Cut inside a frame.
        let (out, _) = run_stream(STREAM_PLAIN, &[&input[..cut + 7]]);
        assert!(out.contains("inside an event stream message"), "{out}");
        // A corrupt frame.
        let mut bad = input.to_vec();
        bad[cut + 30] ^= 0x40;
        let (out, _) = run_stream(STREAM_PLAIN, &[&bad]);
        assert!(out.contains("CRC mismatch"), "{out}");
        assert!(out.contains("upstream_invalid_response"), "{out}");
    }

    #[test]
    fn in_stream_exceptions_map_to_statuses() {
        let p = provider(PROVIDER);
        let req = ChatRequest::parse(STREAM_PLAIN.as_bytes()).unwrap();
        let status = |kind: &str| {
            let mut t = ConverseStream::new(&target(&p), &req, NOW_S);
            let mut d = eventstream::Decoder::new();
            d.push(&encode_exception(kind, r#"{"message":"m"}"#));
            let m = d.next_message().unwrap().unwrap();
            match t.on_event(m, &mut vec![]).unwrap_err() {
                e @ GatewayError::Upstream { status, .. } => (status, e.is_retryable()),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(status("throttlingException"), (429, true));
        assert_eq!(status("serviceUnavailableException"), (503, true));
        assert_eq!(status("internalServerException"), (500, true));
        assert_eq!(status("modelStreamErrorException"), (502, true));
        assert_eq!(status("validationException"), (400, false));
        assert_eq!(status("somethingNewException"), (500, true));
    }

    // ---- Errors ----------------------------------------------------------------

    #[test]
    fn error_bodies_map_by_their_type() {
        let e = error_from_body(
            "bedrock",
            429,
            Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            Some(2),
            fixture!("error_throttling.bedrock.json").as_bytes(),
        );
        assert!(e.is_retryable());
        assert_eq!(e.status(), 429);
        assert_eq!(e.retry_after(), Some(2));
        assert_eq!(
            json(std::str::from_utf8(&e.to_body()).unwrap()),
            json(fixture!("error_throttling.openai.json"))
        );
        let e = error_from_body(
            "bedrock",
            400,
            Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            None,
            fixture!("error_validation.bedrock.json").as_bytes(),
        );
        assert!(!e.is_retryable());
        assert_eq!(
            json(std::str::from_utf8(&e.to_body()).unwrap()),
            json(fixture!("error_validation.openai.json"))
        );
        let status = |status, kind: Option<&str>| match error_from_body(
            "b",
            status,
            kind,
            None,
            br#"{"message":"m"}"#,
        ) {
            e @ GatewayError::Upstream { status, .. } => (status, e.is_retryable()),
            other => panic!("{other:?}"),
        };
        assert_eq!(status(424, Some("ModelErrorException")), (502, true));
        assert_eq!(status(408, Some("ModelTimeoutException")), (504, true));
        assert_eq!(
            status(400, Some("ServiceQuotaExceededException")),
            (429, true)
        );
        assert_eq!(status(403, Some("AccessDeniedException")), (403, false));
        assert_eq!(status(404, Some("ResourceNotFoundException")), (404, false));
        assert_eq!(
            status(503, Some("ServiceUnavailableException")),
            (503, true)
        );
        assert_eq!(status(500, None), (500, true));
        // The type may be in the body instead.
        let e = error_from_body(
            "b",
            400,
            None,
            None,
            br#"{"__type":"com.amazon.coral.validate#ValidationException","message":"bad"}"#,
        );
        assert!(e.to_string().ends_with("ValidationException: bad"), "{e}");
        let e = error_from_body("b", 502, None, None, b"<html>bad gateway</html>");
        assert!(e.to_string().contains("<html>bad gateway</html>"));
    }

    // ---- Config and routing --------------------------------------------------------

    #[test]
    fn default_secrets_and_kind_name() {
        let p = provider(PROVIDER);
        assert_eq!(p.kind, ProviderKind::Bedrock);
        assert_eq!(super::super::api_key_secret(&p), Some("AWS_ACCESS_KEY_ID"));
        assert_eq!(
            super::super::signing_secret(&p),
            Some("AWS_SECRET_ACCESS_KEY")
        );
        assert_eq!(session_token_secret(&p), "AWS_SESSION_TOKEN");
        assert!(!super::super::supports_embeddings(p.kind));
        let p = provider(
            r#"{"kind":"bedrock","region":"eu-west-1","aws_access_key_id_secret":"A","aws_secret_access_key_secret":"S"}"#,
        );
        assert_eq!(super::super::api_key_secret(&p), Some("A"));
        assert_eq!(super::super::signing_secret(&p), Some("S"));
    }

    // ---- Through the gateway ------------------------------------------------------

    /// A scripted answer: status, headers, body chunks.
    type Answer = (u16, Vec<(String, String)>, Vec<Vec<u8>>);

    /// A fake upstream answering from a script, recording what it was sent.
    struct Scripted {
        replies: RefCell<VecDeque<Answer>>,
        seen: RefCell<Vec<UpstreamRequest>>,
    }

    impl Scripted {
        fn new(replies: Vec<Answer>) -> Self {
            Scripted {
                replies: RefCell::new(replies.into()),
                seen: RefCell::default(),
            }
        }
    }

    impl Upstream for Scripted {
        async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
            self.seen.borrow_mut().push(req);
            let (status, headers, chunks) = self
                .replies
                .borrow_mut()
                .pop_front()
                .expect("no reply left");
            Ok(UpstreamResponse {
                status,
                headers,
                body: Box::pin(stream::iter(chunks.into_iter().map(Ok))),
                native: None,
            })
        }

        fn sleep(&self, _ms: u64) -> crate::http::Sleep {
            Box::pin(futures::future::pending())
        }
    }

    const CONFIG: &str = r#"{"version":1,
      "providers":{"bedrock-eu":{"kind":"bedrock","region":"eu-central-1","base_url":"http://bedrock.test"},
                   "bedrock-us":{"kind":"bedrock","region":"us-east-1","base_url":"http://bedrock-us.test"},
                   "b":{"kind":"openai-compatible","base_url":"http://b.test/v1"}},
      "models":{"claude":{"targets":[{"provider":"bedrock-eu","model":"eu.anthropic.claude-sonnet-4-5-20250929-v1:0"},
                                     {"provider":"b","model":"mb"}]},
                "claude-any":{"targets":[{"provider":"bedrock-us","model":"us.anthropic.claude-sonnet-4-5-20250929-v1:0"},
                                         {"provider":"bedrock-eu","model":"eu.anthropic.claude-sonnet-4-5-20250929-v1:0"}]}},
      "residency":[{"origin":{"eu":true},"jurisdictions":["eu"]}]}"#;

    fn run_gateway(up: &Scripted, body: &str) -> Result<gateway::Reply, GatewayError> {
        let config = Config::from_json(CONFIG).unwrap();
        let ctx = Ctx {
            now_ms: NOW_S * 1000 + 999,
            clock: &|| NOW_S * 1000 + 999,
            secret: &secrets,
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

    fn reply_header(reply: &gateway::Reply, name: &str) -> Option<String> {
        reply
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    const GW_PLAIN: &str = r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#;
    const GW_STREAM: &str = r#"{"model":"claude","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;

    #[test]
    fn gateway_translates_a_signed_completion_end_to_end() {
        let up = Scripted::new(vec![(
            200,
            vec![],
            vec![fixture!("response_text.bedrock.json").as_bytes().to_vec()],
        )]);
        let reply = run_gateway(&up, GW_PLAIN).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.usage, Some(Usage::new(20, 4, Some(5))));
        assert_eq!(
            reply_header(&reply, "x-gateway-region").as_deref(),
            Some("eu-central-1")
        );
        let v = json(&body_of(reply));
        assert_eq!(v["choices"][0]["message"]["content"], "Bonjour le monde !");
        let seen = up.seen.borrow();
        assert_eq!(
            seen[0].url,
            "http://bedrock.test/model/eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
        );
        // Signed at the attempt's time, for the provider's region.
        assert_eq!(header(&seen[0], "x-amz-date"), Some("20231114T221320Z"));
        assert!(
            header(&seen[0], "authorization")
                .unwrap()
                .starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20231114/eu-central-1/bedrock/aws4_request, ")
        );
        let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(
            sent,
            json!({"messages":[{"role":"user","content":[{"text":"hi"}]}]})
        );
    }

    #[test]
    fn gateway_translates_a_binary_stream_end_to_end() {
        let input = binary_fixture!("stream_text.eventstream");
        let chunks = input.chunks(7).map(<[u8]>::to_vec).collect();
        let up = Scripted::new(vec![(200, vec![], chunks)]);
        let reply = run_gateway(&up, GW_STREAM).unwrap();
        assert_eq!(body_of(reply), fixture!("stream_text.openai.sse"));
        let seen = up.seen.borrow();
        assert!(seen[0].url.ends_with("/converse-stream"));
        assert!(seen[0].wants_stream());
    }

    #[test]
    fn gateway_fails_over_on_throttling_and_not_on_validation() {
        let completion = r#"{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let throttled = vec![(
            "x-amzn-errortype".to_owned(),
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/".to_owned(),
        )];
        let up = Scripted::new(vec![
            (
                429,
                throttled,
                vec![
                    fixture!("error_throttling.bedrock.json")
                        .as_bytes()
                        .to_vec(),
                ],
            ),
            (200, vec![], vec![completion.as_bytes().to_vec()]),
        ]);
        let reply = run_gateway(&up, GW_PLAIN).unwrap();
        assert_eq!(
            reply_header(&reply, "x-gateway-attempts").as_deref(),
            Some("2")
        );
        assert_eq!(up.seen.borrow()[1].url, "http://b.test/v1/chat/completions");

        let invalid = vec![(
            "x-amzn-errortype".to_owned(),
            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/".to_owned(),
        )];
        let up = Scripted::new(vec![(
            400,
            invalid,
            vec![
                fixture!("error_validation.bedrock.json")
                    .as_bytes()
                    .to_vec(),
            ],
        )]);
        let e = run_gateway(&up, GW_PLAIN).map(|_| ()).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .contains("ValidationException: The model returned"),
            "{e}"
        );
        assert_eq!(up.seen.borrow().len(), 1);
    }

    #[test]
    fn gateway_fails_over_when_throttled_before_the_first_token() {
        // The exception arrives with the first upstream bytes, before the
        // client was sent anything, so another target still answers.
        let mut first = encode_event("messageStart", r#"{"role":"assistant"}"#);
        first.extend(encode_exception(
            "throttlingException",
            r#"{"message":"slow down"}"#,
        ));
        let up = Scripted::new(vec![
            (200, vec![], vec![first]),
            (
                200,
                vec![],
                vec![b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_vec()],
            ),
        ]);
        let reply = run_gateway(&up, GW_STREAM).unwrap();
        assert!(body_of(reply).contains("\"ok\""));
        assert_eq!(up.seen.borrow().len(), 2);
    }

    #[test]
    fn a_provider_without_its_secret_key_is_disabled() {
        let config = Config::from_json(CONFIG).unwrap();
        let only_id = |name: &str| (name == "AWS_ACCESS_KEY_ID").then(|| "AKIA".to_owned());
        let names: Vec<&str> = crate::routing::candidates(&config, "claude", &only_id)
            .unwrap()
            .iter()
            .map(|c| c.target.name)
            .collect();
        assert_eq!(names, ["b"]);
        let names: Vec<&str> = crate::routing::candidates(&config, "claude", &secrets)
            .unwrap()
            .iter()
            .map(|c| c.target.name)
            .collect();
        assert_eq!(names, ["bedrock-eu", "b"]);
    }

    #[test]
    fn an_eu_caller_is_served_by_the_eu_region_by_its_preset_alone() {
        let config = Config::from_json(CONFIG).unwrap();
        let eu = &config.providers["bedrock-eu"];
        assert_eq!(eu.jurisdiction.as_deref(), Some("eu"));
        assert_eq!(eu.location.map(|l| (l.lat, l.lon)), Some((50.11, 8.68)));
        let origin = crate::routing::Origin {
            country: Some("FR".into()),
            is_eu: true,
            ..Default::default()
        };
        let no_headers = |_: &str| None;
        let health = crate::routing::Health::new();
        let metadata = Default::default();
        let input = crate::routing::RouteInput {
            origin: &origin,
            header: &no_headers,
            metadata: &metadata,
            tier: None,
            key_jurisdictions: None,
            key_id: "k",
            user: None,
            needs: Default::default(),
            random: 0.0,
            now_ms: 0,
            health: &health,
            data_class: None,
        };
        let plan = crate::routing::plan(&config, "claude-any", &secrets, &input).unwrap();
        let names: Vec<&str> = plan.iter().map(|c| c.target.name).collect();
        assert_eq!(names, ["bedrock-eu"]);
    }
}
