//! Google Gemini's `generateContent` wire format, translated both ways, and
//! its `embedContent` / `batchEmbedContents` for embeddings.
//!
//! Requests go to `POST {base}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` for streams, with the key in the
//! `x-goog-api-key` header (never in `?key=`: URLs end up in logs). Answers
//! are rebuilt as OpenAI completions and chunks.
//!
//! # OpenAI parameters
//!
//! | OpenAI                          | Gemini                                                        |
//! |---------------------------------|---------------------------------------------------------------|
//! | `model`                         | the URL path (`models/{model}`), from the config target       |
//! | `messages` system / developer   | `systemInstruction.parts[0].text`, texts joined by a blank line, wherever they stand |
//! | `messages` user                 | `contents[]` role `user`                                      |
//! | `messages` assistant            | role `model`; `tool_calls` → `functionCall {name, args}`      |
//! | `messages` tool                 | role `user`, `functionResponse {name, response}`; name looked up from the `tool_call_id` |
//! | `messages` function (legacy)    | 400 (`messages`)                                              |
//! | `messages[].name`               | dropped                                                       |
//! | content `text`                  | `{text}`                                                      |
//! | content `image_url` data URI    | `inlineData {mimeType, data}`                                 |
//! | content `image_url` http(s)     | `fileData {mimeType (from the extension, else image/jpeg), fileUri}` |
//! | other content parts             | 400 (`messages`)                                              |
//! | `stream`                        | `:streamGenerateContent?alt=sse`                              |
//! | `stream_options.include_usage`  | usage chunk at the end when true (usage is always read)       |
//! | `temperature`                   | `generationConfig.temperature`                                |
//! | `top_p`                         | `generationConfig.topP`                                       |
//! | `max_completion_tokens` / `max_tokens` | `generationConfig.maxOutputTokens`                     |
//! | `stop`                          | `generationConfig.stopSequences`                              |
//! | `seed`                          | `generationConfig.seed`                                       |
//! | `n`                             | `generationConfig.candidateCount` (n > 1); with `stream` 400 (`n`) |
//! | `presence_penalty`              | `generationConfig.presencePenalty`                            |
//! | `frequency_penalty`             | `generationConfig.frequencyPenalty`                           |
//! | `response_format` `text`        | nothing (the default)                                         |
//! | `response_format` `json_object` | `responseMimeType: application/json`                          |
//! | `response_format` `json_schema` | `responseMimeType: application/json` + `responseJsonSchema`   |
//! | `tools[]` (`function`)          | `tools[0].functionDeclarations[] {name, description, parametersJsonSchema}`; other tool types 400 (`tools`) |
//! | `tool_choice` auto / none / required | `toolConfig.functionCallingConfig.mode` AUTO / NONE / ANY |
//! | `tool_choice` named function    | mode ANY + `allowedFunctionNames: [name]`                     |
//! | `parallel_tool_calls`           | dropped (Gemini decides; it may call several)                 |
//! | `logprobs`, `top_logprobs`      | dropped (`logprobs` is null in answers)                       |
//! | `logit_bias`                    | dropped (no equivalent)                                       |
//! | `reasoning_effort`              | dropped (the model's default thinking applies)                |
//! | `user`, `metadata`, `store`, `service_tier`, `prediction`, `modalities`, `audio`, `web_search_options`, `functions`, `function_call`, anything else | dropped |
//!
//! Choices made, and why:
//!
//! - Schemas go to `parametersJsonSchema` and `responseJsonSchema`, which
//!   Google documents as taking JSON Schema, rather than `parameters` /
//!   `responseSchema`, which take its OpenAPI-subset `Schema` and lack
//!   keywords OpenAI clients send (`additionalProperties`, `$ref` / `$defs`,
//!   type arrays such as `["string","null"]`); no schema rewriting is needed.
//!   Gemini ignores the JSON Schema features it does not support. Schemas are
//!   copied byte for byte, so the client's property order survives (a
//!   `serde_json::Value` would sort it, and models tend to write keys in
//!   schema order).
//! - A tool result whose content is a JSON object is sent as the
//!   `functionResponse.response` itself; anything else as `{"content": text}`
//!   (Gemini treats a response without `output`/`error` keys as the output).
//! - `fileData` URLs are fetched by Google, which accepts only some of them
//!   (Files API URIs, YouTube, and public URLs only on some models); a URL it
//!   cannot use fails upstream. Data URIs always work.
//! - Gemini has no tool-call ids, so calls are named `call_<responseId>_<n>`,
//!   `n` counting calls across the whole response. That is unique within the
//!   response and, because `responseId` is, across turns too; a tool result
//!   is matched to the nearest earlier call with its id.
//! - A prompt blocked by `promptFeedback.blockReason` (no candidates) is one
//!   choice with empty content and `finish_reason: content_filter`, so SDKs
//!   see a refusal instead of an error that failover would retry elsewhere.
//! - Finish reasons: `STOP` → `stop` (`tool_calls` when the candidate called
//!   functions), `MAX_TOKENS` → `length`; `SAFETY`, `RECITATION`,
//!   `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`,
//!   `IMAGE_PROHIBITED_CONTENT` → `content_filter`; anything else (`OTHER`,
//!   `MALFORMED_FUNCTION_CALL`, `LANGUAGE`, ...) → `stop`.
//! - Usage: prompt = `promptTokenCount` (cached tokens included, as in
//!   OpenAI), completion = `candidatesTokenCount + thoughtsTokenCount`
//!   (OpenAI counts reasoning tokens as completion tokens), cached =
//!   `cachedContentTokenCount`.
//! - Parts the model writes that OpenAI cannot carry are skipped: thoughts
//!   (`"thought": true`), `thoughtSignature`, inline data, code execution.
//!
//! # Embeddings
//!
//! | OpenAI `/v1/embeddings`   | Gemini                                                              |
//! |---------------------------|---------------------------------------------------------------------|
//! | `input` string            | `:embedContent` `{"content":{"parts":[{"text"}]}}`                  |
//! | `input` array of strings  | `:batchEmbedContents` `{"requests":[{"model":"models/{model}","content":{...}}, ...]}`, answers in input order |
//! | `input` token ids         | 400 (`input`): Gemini takes text only                               |
//! | `dimensions`              | `outputDimensionality` (on every request of a batch)                |
//! | `encoding_format`         | applied by the gateway: `float` as JSON numbers, `base64` as the base64 of little-endian float32 bytes |
//! | `user`, anything else     | dropped                                                             |
//!
//! Gemini reports no token count for embeddings, so `usage.prompt_tokens`
//! (and `total_tokens`) is an estimate, four bytes of input text a token,
//! the same rule the gateway uses wherever a count is missing. A batch is
//! sent as one request; Gemini takes at most 100 inputs in one and answers a
//! longer list with a 400, which the client receives.
//!
//! Order: constants, wire types, request building, response parsing, stream
//! decoding, error mapping, tests.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{
    AssistantMessage, ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta,
    EmbeddingInput, EmbeddingList, EmbeddingsRequest, FinishReason, FunctionDelta, FunctionOut,
    Message, Role, Stop, ToolCallDelta, ToolCallOut, ToolChoice, ToolChoiceMode, Usage,
};
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::sse::{DONE, SseEvent};

use super::{ChunkWriter, StreamTranslator, Target};

// ---- Constants ---------------------------------------------------------------

/// Base URL when the config gives none (the Gemini API, not Vertex AI).
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The usual secret name.
pub const DEFAULT_SECRET: &str = "GEMINI_API_KEY";

/// The key goes in this header, never in the `?key=` query parameter.
const API_KEY_HEADER: &str = "x-goog-api-key";

/// The MIME type of JSON output.
const JSON_MIME: &str = "application/json";

// ---- Wire types ----------------------------------------------------------------

/// `GenerateContentRequest`, as the gateway writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    contents: Vec<GeminiContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<GeminiTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: [Part<'a>; 1],
}

/// One turn: `user` or `model`.
#[derive(Serialize)]
struct GeminiContent<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

/// A part is an object with exactly one of these keys.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Part<'a> {
    Text(Cow<'a, str>),
    InlineData(Blob<'a>),
    FileData(FileData<'a>),
    FunctionCall(FunctionCallPart<'a>),
    FunctionResponse(FunctionResponsePart<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    mime_type: &'static str,
    file_uri: &'a str,
}

#[derive(Serialize)]
struct FunctionCallPart<'a> {
    name: &'a str,
    args: Box<RawValue>,
}

#[derive(Serialize)]
struct FunctionResponsePart<'a> {
    name: &'a str,
    response: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiTool<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<&'a str>,
}

/// Numbers are copied as the client spelled them, once checked to be numbers.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
            && self.candidate_count.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
    }
}

/// `EmbedContentRequest`, alone (`:embedContent`, no `model`) or in a batch
/// (where each names its model).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedContentRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    content: EmbedContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Serialize)]
struct EmbedContent<'a> {
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct BatchEmbedContentsRequest<'a> {
    requests: Vec<EmbedContentRequest<'a>>,
}

/// `EmbedContentResponse`.
#[derive(Deserialize)]
struct EmbedContentResponse {
    embedding: ContentEmbedding,
}

/// `BatchEmbedContentsResponse`.
#[derive(Deserialize)]
struct BatchEmbedContentsResponse {
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    values: Vec<f64>,
}

/// An OpenAI tool as the client sent it. Unlike `api::Tool`, the schema stays
/// raw JSON, so its key order survives (a `serde_json::Value` sorts keys).
#[derive(Deserialize)]
struct OpenaiTool<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, borrow)]
    function: Option<OpenaiFunction<'a>>,
}

#[derive(Deserialize)]
struct OpenaiFunction<'a> {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

/// `response_format`, with the schema kept raw for the same reason.
#[derive(Deserialize)]
struct OpenaiResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    json_schema: Option<OpenaiJsonSchema<'a>>,
}

#[derive(Deserialize)]
struct OpenaiJsonSchema<'a> {
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

/// `GenerateContentResponse`: a whole answer, or one stream event. Text
/// borrows from the body unless it has escapes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse<'a> {
    #[serde(default, borrow)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    /// Set on an in-stream error event instead of everything else.
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(default, borrow)]
    content: Option<CandidateContent<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<ResponsePart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponsePart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: bool,
    #[serde(default, borrow)]
    function_call: Option<ResponseFunctionCall<'a>>,
}

#[derive(Deserialize)]
struct ResponseFunctionCall<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

/// `{"error":{...}}`, alone or wrapped in an array. The array is tried
/// first: serde also reads a struct from an array of its fields.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorEnvelope {
    Many(Vec<ErrorBody>),
    One(ErrorBody),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

/// Google's `google.rpc.Status` as JSON.
#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<ErrorDetailEntry>,
}

/// One of `details[]`: `RetryInfo` has `retryDelay`, `ErrorInfo` a `reason`.
#[derive(Deserialize)]
struct ErrorDetailEntry {
    #[serde(rename = "@type", default)]
    kind: Option<String>,
    #[serde(rename = "retryDelay", default)]
    retry_delay: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

// ---- Request building ----------------------------------------------------------

/// The upstream request for a chat completion.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    api_key: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    let body = openai_request_to_gemini(req)?;
    let method = if req.stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    Ok(post(target, method, req.stream, api_key, body))
}

/// The upstream request for embeddings: one string to `:embedContent`, a
/// list to `:batchEmbedContents`.
pub fn build_embeddings_request(
    target: &Target<'_>,
    req: &EmbeddingsRequest<'_>,
    api_key: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    let (method, body) = openai_embeddings_request_to_gemini(target, req)?;
    Ok(post(target, method, false, api_key, body))
}

/// A POST to `{base}/models/{model}:{method}` with the key in its header.
fn post(
    target: &Target<'_>,
    method: &str,
    stream: bool,
    api_key: Option<&str>,
    body: Vec<u8>,
) -> UpstreamRequest {
    let p = target.provider;
    let base = p
        .base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/');
    let model = model_path_segment(target.model);
    let mut headers = Vec::with_capacity(3 + p.headers.len());
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    if stream {
        headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
    }
    if let Some(key) = api_key {
        headers.push((API_KEY_HEADER.to_owned(), key.to_owned()));
    }
    headers.extend(p.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    UpstreamRequest {
        method: "POST",
        url: format!("{base}/models/{model}:{method}"),
        headers,
        body,
    }
}

/// The model as one URL path segment. A leading `models/` (how Google names
/// models) is accepted; `:` and other delimiters are escaped so a model name
/// cannot change the method or the query.
pub(crate) fn model_path_segment(model: &str) -> Cow<'_, str> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=@".contains(&b);
    if model.bytes().all(safe) {
        return Cow::Borrowed(model);
    }
    let mut out = String::with_capacity(model.len() + 8);
    for b in model.bytes() {
        if safe(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}"); // writing to a String cannot fail
        }
    }
    Cow::Owned(out)
}

/// The `GenerateContentRequest` body for an OpenAI chat request (Vertex AI
/// takes the same body).
pub(crate) fn openai_request_to_gemini(req: &ChatRequest<'_>) -> Result<Vec<u8>, GatewayError> {
    let messages = req.messages()?;
    let (system, contents) = openai_messages_to_gemini(&messages)?;

    let tools: Option<Vec<OpenaiTool<'_>>> = req.parse_field("tools")?;
    let tools = tools.unwrap_or_default();
    let mut declarations = Vec::with_capacity(tools.len());
    for tool in &tools {
        let function = match (tool.kind.as_deref(), &tool.function) {
            (None | Some("function"), Some(f)) => f,
            (None | Some("function"), None) => {
                return Err(invalid(
                    "A function tool needs a `function` object.",
                    "tools",
                ));
            }
            (Some(other), _) => {
                return Err(invalid(
                    &format!("Tools of type `{other}` are not supported for Gemini targets."),
                    "tools",
                ));
            }
        };
        declarations.push(FunctionDeclaration {
            name: &function.name,
            description: function.description.as_deref(),
            parameters_json_schema: function.parameters,
        });
    }
    let tool_choice: Option<ToolChoice> = req.parse_field("tool_choice")?;
    let tool_config = tool_choice.as_ref().map(|choice| {
        let (mode, allowed) = match choice {
            ToolChoice::Mode(ToolChoiceMode::Auto) => ("AUTO", vec![]),
            ToolChoice::Mode(ToolChoiceMode::None) => ("NONE", vec![]),
            ToolChoice::Mode(ToolChoiceMode::Required) => ("ANY", vec![]),
            ToolChoice::Named { function } => ("ANY", vec![function.name.as_str()]),
        };
        ToolConfig {
            function_calling_config: FunctionCallingConfig {
                mode,
                allowed_function_names: allowed,
            },
        }
    });

    let response_format: Option<OpenaiResponseFormat<'_>> = req.parse_field("response_format")?;
    let (response_mime_type, response_json_schema) = match response_format {
        None => (None, None),
        Some(f) => match (f.kind.as_str(), f.json_schema) {
            ("text", _) => (None, None),
            ("json_object", _) => (Some(JSON_MIME), None),
            ("json_schema", Some(s)) => (Some(JSON_MIME), s.schema),
            ("json_schema", None) => {
                return Err(invalid(
                    "`response_format` of type `json_schema` needs a `json_schema` object.",
                    "response_format",
                ));
            }
            (other, _) => {
                return Err(invalid(
                    &format!("`response_format` type `{other}` is not supported."),
                    "response_format",
                ));
            }
        },
    };

    let n: Option<u32> = req.parse_field("n")?;
    let candidate_count = match n {
        Some(0) => return Err(invalid("`n` must be at least 1.", "n")),
        Some(n) if n > 1 && req.stream => {
            return Err(invalid(
                "Streaming more than one choice (`n` > 1) is not supported for Gemini targets.",
                "n",
            ));
        }
        Some(n) if n > 1 => Some(n),
        _ => None,
    };
    let stop: Option<Stop> = req.parse_field("stop")?;

    let generation_config = GenerationConfig {
        temperature: raw_number::<f64>(req, "temperature")?,
        top_p: raw_number::<f64>(req, "top_p")?,
        max_output_tokens: req.max_tokens,
        stop_sequences: stop.map(Stop::into_vec).unwrap_or_default(),
        seed: raw_number::<i64>(req, "seed")?,
        candidate_count,
        presence_penalty: raw_number::<f64>(req, "presence_penalty")?,
        frequency_penalty: raw_number::<f64>(req, "frequency_penalty")?,
        response_mime_type,
        response_json_schema,
    };

    let body = GenerateContentRequest {
        system_instruction: (!system.is_empty()).then(|| SystemInstruction {
            parts: [Part::Text(Cow::Owned(system.join("\n\n")))],
        }),
        contents,
        tools: if declarations.is_empty() {
            vec![]
        } else {
            vec![GeminiTool {
                function_declarations: declarations,
            }]
        },
        tool_config,
        generation_config,
    };
    serde_json::to_vec(&body).map_err(|e| GatewayError::Internal {
        message: format!("serializing a Gemini request: {e}"),
    })
}

/// The Gemini method and body for an OpenAI embeddings request.
fn openai_embeddings_request_to_gemini(
    target: &Target<'_>,
    req: &EmbeddingsRequest<'_>,
) -> Result<(&'static str, Vec<u8>), GatewayError> {
    let inputs = req.inputs()?;
    let mut texts = Vec::with_capacity(inputs.len());
    for input in &inputs {
        match input {
            EmbeddingInput::Text(text) => texts.push(text.as_str()),
            EmbeddingInput::Tokens(_) => {
                return Err(invalid(
                    "Token-id inputs are not supported for Gemini targets; send text.",
                    "input",
                ));
            }
        }
    }
    let request = |model, text| EmbedContentRequest {
        model,
        content: EmbedContent {
            parts: [Part::Text(Cow::Borrowed(text))],
        },
        output_dimensionality: req.dimensions,
    };
    let serialized = if req.batch {
        let model = format!(
            "models/{}",
            target.model.strip_prefix("models/").unwrap_or(target.model)
        );
        let requests = texts
            .into_iter()
            .map(|text| request(Some(model.as_str()), text))
            .collect();
        (
            "batchEmbedContents",
            serde_json::to_vec(&BatchEmbedContentsRequest { requests }),
        )
    } else {
        let text = texts.first().copied().unwrap_or_default();
        ("embedContent", serde_json::to_vec(&request(None, text)))
    };
    match serialized {
        (method, Ok(body)) => Ok((method, body)),
        (_, Err(e)) => Err(GatewayError::Internal {
            message: format!("serializing a Gemini embeddings request: {e}"),
        }),
    }
}

/// A numeric field as the client wrote it, once checked to be a `T`.
fn raw_number<'a, T: Deserialize<'a>>(
    req: &ChatRequest<'a>,
    key: &str,
) -> Result<Option<&'a RawValue>, GatewayError> {
    let value: Option<T> = req.parse_field(key)?;
    Ok(value.and(req.get(key)))
}

/// System texts, and the conversation as Gemini contents with consecutive
/// turns of one role merged (Gemini expects roles to alternate).
fn openai_messages_to_gemini(
    messages: &[Message],
) -> Result<(Vec<Cow<'_, str>>, Vec<GeminiContent<'_>>), GatewayError> {
    let mut system = Vec::new();
    let mut contents: Vec<GeminiContent<'_>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                if let Some(text) = m.content.as_ref().map(Content::text)
                    && !text.is_empty()
                {
                    system.push(text);
                }
                continue;
            }
            Role::User => ("user", user_parts(i, m.content.as_ref())?),
            Role::Assistant => ("model", assistant_parts(i, m)?),
            Role::Tool => ("user", vec![tool_result_part(i, m, &messages[..i])?]),
            Role::Function => {
                return Err(invalid(
                    &format!(
                        "messages[{i}]: legacy `function` messages are not supported for Gemini targets; use `tools`."
                    ),
                    "messages",
                ));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(GeminiContent { role, parts }),
        }
    }
    Ok((system, contents))
}

fn user_parts(i: usize, content: Option<&Content>) -> Result<Vec<Part<'_>>, GatewayError> {
    match content {
        None => Ok(vec![]),
        Some(Content::Text(text)) => Ok(text_part(text).into_iter().collect()),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text } => out.extend(text_part(text)),
                    ContentPart::ImageUrl { image_url } => {
                        out.push(image_url_to_part(i, j, &image_url.url)?);
                    }
                    ContentPart::Other => return Err(unsupported_part(i, j)),
                }
            }
            Ok(out)
        }
    }
}

fn assistant_parts(i: usize, m: &Message) -> Result<Vec<Part<'_>>, GatewayError> {
    let mut out = Vec::new();
    match &m.content {
        None => {}
        Some(Content::Text(text)) => out.extend(text_part(text)),
        Some(Content::Parts(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text } => out.extend(text_part(text)),
                    ContentPart::ImageUrl { .. } | ContentPart::Other => {
                        return Err(unsupported_part(i, j));
                    }
                }
            }
        }
    }
    for call in m.tool_calls.iter().flatten() {
        let args = call.function.arguments.trim();
        // Some clients send "" for a call without arguments.
        let args = if args.is_empty() { "{}" } else { args };
        let args = serde_json::from_str::<Box<RawValue>>(args)
            .ok()
            .filter(|raw| raw.get().starts_with('{'))
            .ok_or_else(|| {
                invalid(
                    &format!(
                        "messages[{i}].tool_calls: the arguments of `{}` are not a JSON object.",
                        call.function.name
                    ),
                    "messages",
                )
            })?;
        out.push(Part::FunctionCall(FunctionCallPart {
            name: &call.function.name,
            args,
        }));
    }
    Ok(out)
}

/// A tool message as a `functionResponse`; Gemini matches results to calls
/// by function name, found from the id among the earlier assistant calls.
fn tool_result_part<'m>(
    i: usize,
    m: &'m Message,
    earlier: &'m [Message],
) -> Result<Part<'m>, GatewayError> {
    let id = m.tool_call_id.as_deref().ok_or_else(|| {
        invalid(
            &format!("messages[{i}]: `tool_call_id` is required."),
            "messages",
        )
    })?;
    let name = earlier
        .iter()
        .rev()
        .filter(|e| e.role == Role::Assistant)
        .flat_map(|e| e.tool_calls.iter().flatten())
        .find(|call| call.id == id)
        .map(|call| call.function.name.as_str())
        .ok_or_else(|| {
            invalid(
                &format!(
                    "messages[{i}]: `tool_call_id` {id:?} does not match any earlier assistant tool call."
                ),
                "messages",
            )
        })?;
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    let object = serde_json::from_str::<Box<RawValue>>(&text)
        .ok()
        .filter(|raw| raw.get().starts_with('{'));
    let response = match object {
        Some(raw) => raw,
        None => {
            #[derive(Serialize)]
            struct Wrapped<'t> {
                content: &'t str,
            }
            serde_json::value::to_raw_value(&Wrapped { content: &text }).map_err(|e| {
                GatewayError::Internal {
                    message: format!("wrapping a tool result: {e}"),
                }
            })?
        }
    };
    Ok(Part::FunctionResponse(FunctionResponsePart {
        name,
        response,
    }))
}

/// Gemini rejects empty text parts, so they are left out.
fn text_part(text: &str) -> Option<Part<'_>> {
    (!text.is_empty()).then_some(Part::Text(Cow::Borrowed(text)))
}

/// A data URI becomes inline bytes; an http(s) URL a file reference.
fn image_url_to_part(i: usize, j: usize, url: &str) -> Result<Part<'_>, GatewayError> {
    let bad = |why: &str| {
        invalid(
            &format!("messages[{i}].content[{j}].image_url: {why}"),
            "messages",
        )
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad("a data URI needs a comma before its data."))?;
        let Some(meta) = meta.strip_suffix(";base64") else {
            return Err(bad("only base64 data URIs are supported."));
        };
        let mime_type = meta.split(';').next().unwrap_or_default();
        if mime_type.is_empty() {
            return Err(bad("the data URI names no MIME type."));
        }
        return Ok(Part::InlineData(Blob { mime_type, data }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(Part::FileData(FileData {
            mime_type: mime_type_from_url(url),
            file_uri: url,
        }));
    }
    Err(bad("only data URIs and http(s) URLs are supported."))
}

/// Guesses a MIME type from the URL's file extension; JPEG when unknown, the
/// most common type of images on the web.
fn mime_type_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        Some("pdf") => "application/pdf",
        _ => "image/jpeg",
    }
}

fn unsupported_part(i: usize, j: usize) -> GatewayError {
    invalid(
        &format!(
            "messages[{i}].content[{j}]: only text and image_url parts are supported for Gemini targets."
        ),
        "messages",
    )
}

fn invalid(message: &str, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.to_owned(),
        param: Some(param.to_owned()),
    }
}

// ---- Response parsing ------------------------------------------------------------

/// Translates a 2xx `generateContent` body into the client's
/// `chat.completion`, and reads its usage. `now_s` is Unix seconds.
pub fn read_chat_response(
    target: &Target<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    let completion = gemini_response_to_chat_completion(target, body, now_s)?;
    let usage = completion.usage;
    let bytes = serde_json::to_vec(&completion).map_err(|e| GatewayError::Internal {
        message: format!("serializing a completion: {e}"),
    })?;
    Ok((bytes, usage))
}

fn gemini_response_to_chat_completion(
    target: &Target<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<ChatCompletion, GatewayError> {
    let invalid_response = |message: String| GatewayError::UpstreamInvalidResponse {
        provider: target.name.to_owned(),
        message,
    };
    let resp: GenerateContentResponse<'_> = serde_json::from_slice(body)
        .map_err(|e| invalid_response(format!("not a GenerateContentResponse: {e}")))?;
    if let Some(detail) = resp.error {
        return Err(detail.into_error(target.name, None, None));
    }
    let response_id = resp
        .response_id
        .unwrap_or_else(|| format!("gemini-{:016x}", super::fnv1a(body)));
    let mut calls = 0u32;
    let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
    for (position, cand) in resp.candidates.into_iter().enumerate() {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for part in cand.content.into_iter().flat_map(|c| c.parts) {
            if part.thought {
                continue;
            }
            if let Some(t) = part.text {
                text.push_str(&t);
            }
            if let Some(call) = part.function_call {
                tool_calls.push(ToolCallOut {
                    id: tool_call_id(&response_id, calls),
                    kind: "function",
                    function: FunctionOut {
                        name: call.name.into_owned(),
                        arguments: args_to_arguments(call.args),
                    },
                });
                calls += 1;
            }
        }
        let finish = gemini_finish_reason_to_finish_reason(
            cand.finish_reason.as_deref().unwrap_or("STOP"),
            !tool_calls.is_empty(),
        );
        // Null content is how OpenAI marks a tool-calls-only answer.
        let content = if text.is_empty() && !tool_calls.is_empty() {
            None
        } else {
            Some(text)
        };
        choices.push(Choice {
            index: cand.index.unwrap_or(position as u32),
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            finish_reason: Some(finish),
            logprobs: None,
        });
    }
    if choices.is_empty() {
        if resp
            .prompt_feedback
            .as_ref()
            .is_none_or(|f| f.block_reason.is_none())
        {
            return Err(invalid_response(
                "no candidates and no block reason".to_owned(),
            ));
        }
        choices.push(Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: Some(String::new()),
                tool_calls: vec![],
            },
            finish_reason: Some(FinishReason::ContentFilter),
            logprobs: None,
        });
    }
    Ok(ChatCompletion {
        id: format!("chatcmpl-{response_id}"),
        object: "chat.completion",
        created: now_s,
        model: resp
            .model_version
            .unwrap_or_else(|| target.model.to_owned()),
        choices,
        usage: resp.usage_metadata.map(UsageMetadata::to_usage),
    })
}

impl UsageMetadata {
    fn to_usage(self) -> Usage {
        Usage::new(
            self.prompt_token_count,
            self.candidates_token_count + self.thoughts_token_count,
            self.cached_content_token_count,
        )
    }
}

/// The id of the `n`th function call of a response.
fn tool_call_id(response_id: &str, n: u32) -> String {
    format!("call_{response_id}_{n}")
}

/// Gemini's `args` object as OpenAI's `arguments` string: compact, keys in
/// the model's order.
fn args_to_arguments(args: Option<&RawValue>) -> String {
    args.map_or_else(|| "{}".to_owned(), |raw| compact_json(raw.get()))
}

/// Removes the whitespace between JSON tokens (Gemini pretty-prints its
/// non-stream bodies) without reparsing, so key order and number spelling
/// are kept.
fn compact_json(json: &str) -> String {
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
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Gemini's `finishReason` in OpenAI's vocabulary.
fn gemini_finish_reason_to_finish_reason(reason: &str, called_tools: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => FinishReason::ContentFilter,
        _ if called_tools => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Translates a 2xx `embedContent` / `batchEmbedContents` body into OpenAI's
/// embedding list, in the encoding the client asked for. Gemini reports no
/// token count for embeddings, so usage is an estimate: four bytes of input
/// text a token.
pub fn read_embeddings_response(
    target: &Target<'_>,
    req: &EmbeddingsRequest<'_>,
    body: &[u8],
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    let invalid_response = |message: String| GatewayError::UpstreamInvalidResponse {
        provider: target.name.to_owned(),
        message,
    };
    let inputs = req.inputs()?;
    let vectors: Vec<Vec<f64>> = if req.batch {
        let resp: BatchEmbedContentsResponse = serde_json::from_slice(body)
            .map_err(|e| invalid_response(format!("not a BatchEmbedContentsResponse: {e}")))?;
        resp.embeddings.into_iter().map(|e| e.values).collect()
    } else {
        let resp: EmbedContentResponse = serde_json::from_slice(body)
            .map_err(|e| invalid_response(format!("not an EmbedContentResponse: {e}")))?;
        vec![resp.embedding.values]
    };
    if vectors.len() != inputs.len() {
        return Err(invalid_response(format!(
            "{} embeddings for {} inputs",
            vectors.len(),
            inputs.len()
        )));
    }
    let prompt_tokens = inputs
        .iter()
        .map(|input| match input {
            EmbeddingInput::Text(text) => text.len().div_ceil(4) as u64,
            EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
        })
        .sum();
    let list = EmbeddingList::new(target.model, vectors, req.encoding_format, prompt_tokens);
    let bytes = serde_json::to_vec(&list).map_err(|e| GatewayError::Internal {
        message: format!("serializing embeddings: {e}"),
    })?;
    Ok((bytes, Some(list.usage.into())))
}

// ---- Stream decoding ---------------------------------------------------------------

/// Translates `streamGenerateContent?alt=sse` events into OpenAI chunks, one
/// event at a time. Every chunk of a stream shares one id, time and model.
pub struct GeminiStream {
    provider: String,
    /// The model is the config's until the first event names the real one;
    /// the id (`chatcmpl-...`) is set by the first event.
    chunks: ChunkWriter,
    /// For tool-call ids.
    response_id: String,
    started: bool,
    /// Function calls emitted so far: the next call's index.
    calls: u32,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl GeminiStream {
    /// A translator for one stream; `now_s` (Unix seconds) dates its chunks.
    pub fn new(target: &Target<'_>, client_wants_usage: bool, now_s: u64) -> Self {
        GeminiStream {
            provider: target.name.to_owned(),
            chunks: ChunkWriter {
                model: target.model.to_owned(),
                created: now_s,
                client_wants_usage,
                id: String::new(),
            },
            response_id: String::new(),
            started: false,
            calls: 0,
            finish: None,
            usage: None,
        }
    }

    fn translate(
        &mut self,
        data: &str,
        resp: GenerateContentResponse<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        if let Some(detail) = resp.error {
            return Err(detail.into_error(&self.provider, None, None));
        }
        if let Some(meta) = resp.usage_metadata {
            self.usage = Some(meta.to_usage());
        }
        if self.finish.is_some() {
            // Only usage can still matter after the finish chunk.
            return Ok(());
        }
        if !self.started {
            self.response_id = resp
                .response_id
                .unwrap_or_else(|| format!("gemini-{:016x}", super::fnv1a(data.as_bytes())));
            self.chunks.id = format!("chatcmpl-{}", self.response_id);
            if let Some(model) = resp.model_version {
                self.chunks.model = model;
            }
            self.started = true;
            self.chunks.delta(
                out,
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    tool_calls: None,
                },
                None,
            );
        }
        // `n` > 1 is refused for streams, so only the first candidate counts.
        let Some(cand) = resp
            .candidates
            .into_iter()
            .find(|c| c.index.unwrap_or(0) == 0)
        else {
            if resp
                .prompt_feedback
                .is_some_and(|f| f.block_reason.is_some())
            {
                self.finish = Some(FinishReason::ContentFilter);
                self.chunks.delta(out, Delta::default(), self.finish);
            }
            return Ok(());
        };
        for part in cand.content.into_iter().flat_map(|c| c.parts) {
            if part.thought {
                continue;
            }
            if let Some(text) = part.text.as_deref().filter(|t| !t.is_empty()) {
                self.chunks.delta(
                    out,
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                );
            }
            if let Some(call) = part.function_call {
                // Gemini sends each call whole: one delta carries all of it.
                let id = tool_call_id(&self.response_id, self.calls);
                let arguments = args_to_arguments(call.args);
                self.chunks.delta(
                    out,
                    Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: self.calls,
                            id: Some(&id),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(call.name.as_ref()),
                                arguments: &arguments,
                            },
                        }]),
                        ..Delta::default()
                    },
                    None,
                );
                self.calls += 1;
            }
        }
        if let Some(reason) = cand.finish_reason.as_deref() {
            self.finish = Some(gemini_finish_reason_to_finish_reason(
                reason,
                self.calls > 0,
            ));
            self.chunks.delta(out, Delta::default(), self.finish);
        }
        Ok(())
    }
}

impl StreamTranslator for GeminiStream {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<GenerateContentResponse<'_>>(data) {
            Ok(resp) => self.translate(data, resp, out),
            // An error wrapped in an array, as Gemini's JSON-array streams send it.
            Err(e) => match parse_error(data.as_bytes()) {
                Some(detail) => Err(detail.into_error(&self.provider, None, None)),
                None => Err(GatewayError::UpstreamInvalidResponse {
                    provider: self.provider.clone(),
                    message: format!("invalid stream event: {e}"),
                }),
            },
        }
    }

    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.finish.is_none() {
            return Err(GatewayError::UpstreamUnreachable {
                provider: self.provider.clone(),
                message: "stream ended before finishReason".into(),
            });
        }
        if self.chunks.client_wants_usage {
            self.chunks.chunk(out, vec![], self.usage);
        }
        out.extend_from_slice(DONE);
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

// ---- Error mapping -------------------------------------------------------------------

/// Maps a Gemini error response (`{"error":{"code","message","status"}}`,
/// possibly wrapped in an array) to the gateway's error. Without a
/// `Retry-After` header, the `RetryInfo` delay Gemini puts in 429 bodies is
/// used. The key is never part of the body Google sends back, and the
/// gateway redacts it anyway.
pub fn error_from_body(
    provider: &str,
    status: u16,
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    match parse_error(body) {
        Some(detail) => detail.into_error(provider, Some(status), retry_after),
        None => GatewayError::Upstream {
            provider: provider.to_owned(),
            status,
            message: super::excerpt(body),
            retry_after,
        },
    }
}

fn parse_error(body: &[u8]) -> Option<ErrorDetail> {
    match serde_json::from_slice::<ErrorEnvelope>(body).ok()? {
        ErrorEnvelope::One(b) => Some(b.error),
        ErrorEnvelope::Many(list) => list.into_iter().next().map(|b| b.error),
    }
}

impl ErrorDetail {
    /// The gateway's error; `http_status` is the response's, absent for an
    /// in-stream error (then the body's `code` or `status` decides).
    fn into_error(
        self,
        provider: &str,
        http_status: Option<u16>,
        retry_after: Option<u64>,
    ) -> GatewayError {
        // Gemini reports a bad key as 400 INVALID_ARGUMENT. It is the
        // gateway's key, not the caller's request, so it is treated as the
        // 401 it means (the client then sees 502 `upstream_auth_failed`).
        let bad_key = self
            .details
            .iter()
            .any(|d| d.reason.as_deref() == Some("API_KEY_INVALID"));
        let status = if bad_key {
            401
        } else {
            http_status.unwrap_or_else(|| self.http_status())
        };
        let retry_after = retry_after.or_else(|| self.retry_delay_secs());
        let message = match (self.status, self.message) {
            (Some(s), Some(m)) => format!("{s}: {}", m.trim_end()),
            (None, Some(m)) => m.trim_end().to_owned(),
            (Some(s), None) => s,
            (None, None) => "(no message)".to_owned(),
        };
        GatewayError::Upstream {
            provider: provider.to_owned(),
            status,
            message,
            retry_after,
        }
    }

    /// The HTTP status of an in-stream error: its `code`, or Google's
    /// mapping of its canonical `status`.
    fn http_status(&self) -> u16 {
        if let Some(code) = self.code.and_then(|c| u16::try_from(c).ok())
            && (400..=599).contains(&code)
        {
            return code;
        }
        match self.status.as_deref() {
            Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => 400,
            Some("UNAUTHENTICATED") => 401,
            Some("PERMISSION_DENIED") => 403,
            Some("NOT_FOUND") => 404,
            Some("ABORTED" | "ALREADY_EXISTS") => 409,
            Some("RESOURCE_EXHAUSTED") => 429,
            Some("CANCELLED") => 499,
            Some("UNIMPLEMENTED") => 501,
            Some("UNAVAILABLE") => 503,
            Some("DEADLINE_EXCEEDED") => 504,
            _ => 500,
        }
    }

    /// Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "32s"`).
    fn retry_delay_secs(&self) -> Option<u64> {
        self.details
            .iter()
            .filter(|d| d.kind.as_deref().is_some_and(|k| k.ends_with("RetryInfo")))
            .find_map(|d| {
                d.retry_delay
                    .as_deref()?
                    .strip_suffix('s')?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Provider;
    use crate::gateway::error_event;
    use crate::sse::SseParser;
    use serde_json::{Value, json};

    /// A fixture's text, by file name (given in pieces, joined).
    /// Unix seconds every translated answer in these tests is dated with.
    const NOW: u64 = 1_700_000_000;

    macro_rules! fixture {
        ($($part:literal),+) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gemini/",
                $($part),+
            ))
        };
    }

    fn provider(json: &str) -> Provider {
        serde_json::from_str(json).unwrap()
    }

    fn target<'a>(p: &'a Provider, model: &'a str) -> Target<'a> {
        Target {
            name: "gemini",
            provider: p,
            model,
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn gemini_body(openai: &str) -> Result<Value, GatewayError> {
        let req = ChatRequest::parse(openai.as_bytes())?;
        Ok(serde_json::from_slice(&openai_request_to_gemini(&req)?).unwrap())
    }

    fn param_of(result: Result<Value, GatewayError>) -> String {
        match result {
            Err(GatewayError::InvalidRequest { param, .. }) => param.unwrap(),
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    // -- request building

    macro_rules! request_case {
        ($name:literal) => {
            (
                $name,
                fixture!("request_", $name, ".openai.json"),
                fixture!("request_", $name, ".gemini.json"),
            )
        };
    }

    #[test]
    fn request_fixtures_translate_exactly() {
        let cases = [
            request_case!("text"),
            request_case!("system_multi_turn"),
            request_case!("tool_call"),
            request_case!("tool_result_round_trip"),
            request_case!("image_input"),
            request_case!("json_object"),
            request_case!("json_schema"),
        ];
        for (name, openai, gemini) in cases {
            assert_eq!(
                gemini_body(openai).unwrap(),
                json(gemini),
                "scenario {name}"
            );
        }
    }

    #[test]
    fn non_stream_request_posts_to_generate_content_with_the_key_in_a_header() {
        let p = provider(r#"{"kind":"gemini"}"#);
        let req = ChatRequest::parse(fixture!("request_text.openai.json").as_bytes()).unwrap();
        let up =
            build_chat_request(&target(&p, "gemini-2.5-flash"), &req, Some("AIza-secret")).unwrap();
        assert_eq!(up.method, "POST");
        assert_eq!(
            up.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            up.headers,
            [
                ("content-type".into(), "application/json".into()),
                ("x-goog-api-key".into(), "AIza-secret".into())
            ]
        );
        assert!(!up.url.contains("AIza-secret"));
    }

    #[test]
    fn stream_request_uses_the_sse_endpoint() {
        let p = provider(
            r#"{"kind":"gemini","base_url":"http://127.0.0.1:8787/_mock/chunks=2/v1beta/","headers":{"x-extra":"1"}}"#,
        );
        let req = ChatRequest::parse(
            br#"{"model":"a","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let up = build_chat_request(&target(&p, "models/gemini-2.5-pro"), &req, Some("k")).unwrap();
        assert_eq!(
            up.url,
            "http://127.0.0.1:8787/_mock/chunks=2/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert!(
            up.headers
                .contains(&("accept".into(), "text/event-stream".into()))
        );
        assert!(up.headers.contains(&("x-extra".into(), "1".into())));
        // Stream options are the gateway's business, not Gemini's.
        assert_eq!(
            serde_json::from_slice::<Value>(&up.body).unwrap(),
            json!({"contents":[{"role":"user","parts":[{"text":"hi"}]}]})
        );
    }

    #[test]
    fn model_names_cannot_change_the_method_or_query() {
        assert_eq!(
            model_path_segment("gemini-2.5-flash;tools=2"),
            "gemini-2.5-flash;tools=2"
        );
        assert_eq!(
            model_path_segment("x:streamGenerateContent?key=1"),
            "x%3AstreamGenerateContent%3Fkey=1"
        );
        assert_eq!(model_path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn schemas_keep_the_clients_key_order() {
        let req =
            ChatRequest::parse(fixture!("request_json_schema.openai.json").as_bytes()).unwrap();
        let body = String::from_utf8(openai_request_to_gemini(&req).unwrap()).unwrap();
        let at = |key: &str| body.find(key).unwrap();
        assert!(
            at("\"name\"") < at("\"population\"") && at("\"population\"") < at("\"landmarks\""),
            "{body}"
        );
    }

    #[test]
    fn tool_choice_modes_map_to_function_calling_modes() {
        for (choice, mode) in [
            ("\"auto\"", "AUTO"),
            ("\"none\"", "NONE"),
            ("\"required\"", "ANY"),
        ] {
            let body = gemini_body(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"tool_choice":{choice}}}"#
            ))
            .unwrap();
            assert_eq!(
                body["toolConfig"],
                json!({"functionCallingConfig":{"mode":mode}})
            );
        }
    }

    #[test]
    fn tool_results_name_the_nearest_earlier_call_with_their_id() {
        // Ids may repeat across turns with other providers' conventions.
        let body = gemini_body(
            r#"{"model":"m","messages":[
              {"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"first","arguments":""}}]},
              {"role":"tool","tool_call_id":"c","content":"1"},
              {"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"second","arguments":"{}"}}]},
              {"role":"tool","tool_call_id":"c","content":"[2]"}]}"#,
        )
        .unwrap();
        assert_eq!(
            body["contents"][0]["parts"][0]["functionCall"],
            json!({"name":"first","args":{}})
        );
        assert_eq!(
            body["contents"][1]["parts"][0]["functionResponse"]["name"],
            "first"
        );
        assert_eq!(
            body["contents"][3]["parts"][0]["functionResponse"],
            json!({"name":"second","response":{"content":"[2]"}})
        );
    }

    #[test]
    fn untranslatable_requests_are_400s_naming_the_parameter() {
        let call = |args: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"assistant","tool_calls":[{{"id":"c","type":"function","function":{{"name":"f","arguments":{args}}}}}]}}]}}"#
            )
        };
        assert_eq!(param_of(gemini_body(&call(r#""{not json""#))), "messages");
        assert_eq!(param_of(gemini_body(&call(r#""[1,2]""#))), "messages");
        let user = |part: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":[{part}]}}]}}"#)
        };
        for part in [
            r#"{"type":"input_audio","input_audio":{"data":"AA==","format":"wav"}}"#,
            r#"{"type":"image_url","image_url":{"url":"ftp://example.com/a.png"}}"#,
            r#"{"type":"image_url","image_url":{"url":"data:image/png,rawbytes"}}"#,
            r#"{"type":"image_url","image_url":{"url":"data:;base64,AA=="}}"#,
        ] {
            assert_eq!(param_of(gemini_body(&user(part))), "messages", "{part}");
        }
        let msgs = r#""messages":[{"role":"user","content":"x"}]"#;
        for (extra, param) in [
            (r#""n":2,"stream":true"#, "n"),
            (r#""n":0"#, "n"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""seed":1.5"#, "seed"),
            (r#""tools":[{"type":"web_search"}]"#, "tools"),
            (
                r#""response_format":{"type":"json_schema"}"#,
                "response_format",
            ),
            (r#""response_format":{"type":"yaml"}"#, "response_format"),
        ] {
            let body = format!(r#"{{"model":"m",{msgs},{extra}}}"#);
            assert_eq!(param_of(gemini_body(&body)), param, "{extra}");
        }
        assert_eq!(
            param_of(gemini_body(
                r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#
            )),
            "messages"
        );
        assert_eq!(
            param_of(gemini_body(
                r#"{"model":"m","messages":[{"role":"function","name":"f","content":"x"}]}"#
            )),
            "messages"
        );
    }

    #[test]
    fn null_parameters_are_absent_and_empty_text_is_skipped() {
        let body = gemini_body(
            r#"{"model":"m","messages":[{"role":"system","content":""},{"role":"user","content":"x"},{"role":"assistant","content":""}],
                "temperature":null,"stop":null,"tools":null,"tool_choice":null,"response_format":{"type":"text"},"n":1}"#,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"contents":[{"role":"user","parts":[{"text":"x"}]}]})
        );
    }

    // -- response parsing

    macro_rules! response_case {
        ($name:literal) => {
            (
                $name,
                fixture!("response_", $name, ".gemini.json"),
                fixture!("response_", $name, ".openai.json"),
            )
        };
    }

    fn completion(body: &str) -> Result<(Value, Option<Usage>), GatewayError> {
        let p = provider(r#"{"kind":"gemini"}"#);
        let (bytes, usage) = read_chat_response(&target(&p, "gemini-x"), body.as_bytes(), NOW)?;
        Ok((serde_json::from_slice(&bytes).unwrap(), usage))
    }

    #[test]
    fn response_fixtures_translate_exactly() {
        let cases = [
            response_case!("text"),
            response_case!("thoughts_and_cache"),
            response_case!("tool_call"),
            response_case!("parallel_tool_calls"),
            response_case!("max_tokens"),
            response_case!("safety"),
            response_case!("prompt_blocked"),
            response_case!("candidates"),
            // Recorded from tests/mock (`tools=1,text=...`): the two must interoperate.
            response_case!("mock_tool_call"),
        ];
        for (name, gemini, openai) in cases {
            let (got, usage) = completion(gemini).unwrap();
            assert_eq!(got, json(openai), "scenario {name}");
            // The usage the gateway accounts is the usage the client sees.
            let shown: Option<Usage> = serde_json::from_value(got["usage"].clone()).ok();
            assert_eq!(usage, shown, "scenario {name}");
        }
    }

    #[test]
    fn missing_response_id_and_model_are_derived_deterministically() {
        let body = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]},"finishReason":"STOP"}]}"#;
        let (a, usage) = completion(body).unwrap();
        let (b, _) = completion(body).unwrap();
        assert_eq!(a, b);
        let id = a["id"].as_str().unwrap();
        assert!(
            id.starts_with("chatcmpl-gemini-") && id.len() == "chatcmpl-gemini-".len() + 16,
            "{id}"
        );
        let call = &a["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], format!("call_{}_0", &id["chatcmpl-".len()..]));
        assert_eq!(call["function"]["arguments"], "{}");
        assert_eq!(a["model"], "gemini-x");
        assert_eq!(usage, None);
        assert!(a.get("usage").is_none());
    }

    #[test]
    fn invalid_or_empty_answers_are_retryable_upstream_failures() {
        for body in ["{\"candidates\": oops", "[]", "{}"] {
            let e = completion(body).unwrap_err();
            assert!(
                matches!(e, GatewayError::UpstreamInvalidResponse { .. }),
                "{body}: {e:?}"
            );
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn compact_json_keeps_strings_and_order() {
        assert_eq!(
            compact_json("{\n  \"b\" : [1, 2.50],\n  \"a\": \"x \\\" y\\\\\",\"c\":{ }\n}"),
            r#"{"b":[1,2.50],"a":"x \" y\\","c":{}}"#
        );
    }

    // -- stream decoding

    macro_rules! stream_case {
        ($name:literal, $include_usage:expr) => {
            (
                $name,
                fixture!("stream_", $name, ".gemini.sse"),
                fixture!("stream_", $name, ".openai.sse"),
                $include_usage,
            )
        };
    }

    /// Feeds `chunks` through the SSE parser and a fresh translator, and
    /// returns what the client receives (an error as the gateway renders it).
    fn translate_stream(chunks: &[&[u8]], include_usage: bool) -> (String, Option<Usage>) {
        let p = provider(r#"{"kind":"gemini"}"#);
        let mut t = GeminiStream::new(&target(&p, "gemini-x"), include_usage, NOW);
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let mut result = Ok(());
        for chunk in chunks {
            parser.push(chunk);
            while result.is_ok()
                && let Some(ev) = parser.next_event()
            {
                result = t.on_event(ev, &mut out);
            }
        }
        while result.is_ok()
            && let Some(ev) = parser.finish()
        {
            result = t.on_event(ev, &mut out);
        }
        if result.is_ok() {
            result = t.on_end(&mut out);
        }
        if let Err(e) = result {
            out.extend(error_event(&e));
        }
        (String::from_utf8(out).unwrap(), t.usage())
    }

    #[test]
    fn stream_fixtures_translate_exactly_at_every_split() {
        let cases = [
            stream_case!("text", true),
            stream_case!("tool_call", false),
            stream_case!("parallel_tool_calls", false),
            // Recorded from tests/mock (`tools=2,chunks=2`).
            stream_case!("mock_parallel_tool_calls", true),
            stream_case!("max_tokens", false),
            stream_case!("safety", true),
            stream_case!("prompt_blocked", true),
            stream_case!("error_mid_stream", true),
        ];
        for (name, gemini, openai, include_usage) in cases {
            let input = gemini.as_bytes();
            assert!(
                input.windows(4).any(|w| w == b"\r\n\r\n"),
                "{name}: Gemini separates events with CRLF CRLF"
            );
            let (whole, usage) = translate_stream(&[input], include_usage);
            assert_eq!(whole, openai, "scenario {name}");
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(
                    translate_stream(&[a, b], include_usage),
                    (whole.clone(), usage),
                    "scenario {name}, split at {i}"
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                translate_stream(&bytes, include_usage),
                (whole, usage),
                "scenario {name}, byte by byte"
            );
        }
    }

    #[test]
    fn stream_usage_counts_thoughts_and_is_shown_only_when_asked() {
        let input = fixture!("stream_text.gemini.sse").as_bytes();
        let (out, usage) = translate_stream(&[input], false);
        assert_eq!(usage, Some(Usage::new(4, 25, None)));
        assert!(!out.contains("usage"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(
            !out.contains("The user greets me"),
            "thoughts are not content: {out}"
        );
    }

    #[test]
    fn stream_that_ends_before_finish_reason_is_an_error() {
        let input = fixture!("stream_text.gemini.sse");
        let cut = &input[..input.rfind("data:").unwrap()];
        let (out, usage) = translate_stream(&[cut.as_bytes()], true);
        assert!(out.contains("stream ended before finishReason"), "{out}");
        assert!(
            !out.contains("[DONE]") && !out.contains("finish_reason\":\"stop"),
            "{out}"
        );
        assert_eq!(usage, None);
        let (empty, _) = translate_stream(&[], false);
        assert!(
            empty.contains("stream ended before finishReason"),
            "{empty}"
        );
    }

    #[test]
    fn in_stream_errors_carry_their_status() {
        let p = provider(r#"{"kind":"gemini"}"#);
        let ev = |data: &str| SseEvent {
            event: None,
            data: data.to_owned(),
        };
        for (data, status) in [
            (
                r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
                429,
            ),
            (
                r#"{"error":{"message":"slow","status":"DEADLINE_EXCEEDED"}}"#,
                504,
            ),
            (
                r#"[{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}]"#,
                400,
            ),
            (r#"{"error":{"code":0,"message":"?"}}"#, 500),
        ] {
            let mut t = GeminiStream::new(&target(&p, "m"), false, NOW);
            match t.on_event(ev(data), &mut Vec::new()) {
                Err(GatewayError::Upstream { status: got, .. }) => {
                    assert_eq!(got, status, "{data}")
                }
                other => panic!("{data}: {other:?}"),
            }
        }
        let mut t = GeminiStream::new(&target(&p, "m"), false, NOW);
        assert!(matches!(
            t.on_event(ev("{\"broken json"), &mut Vec::new()),
            Err(GatewayError::UpstreamInvalidResponse { .. })
        ));
    }

    #[test]
    fn events_after_the_finish_only_update_usage() {
        let input = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]},\"finishReason\":\"STOP\"}],\"responseId\":\"x\"}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"late\"}]}}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1}}\r\n\r\n",
        );
        let (out, usage) = translate_stream(&[input.as_bytes()], true);
        assert!(!out.contains("late"), "{out}");
        assert_eq!(usage, Some(Usage::new(2, 1, None)));
        assert!(
            out.contains("\"model\":\"gemini-x\""),
            "the config's model without modelVersion: {out}"
        );
        assert!(out.contains("\"prompt_tokens\":2"), "{out}");
    }

    // -- embeddings

    fn embeddings_body(openai: &str, model: &str) -> Result<(&'static str, Value), GatewayError> {
        let p = provider(r#"{"kind":"gemini"}"#);
        let req = EmbeddingsRequest::parse(openai.as_bytes())?;
        let (method, body) = openai_embeddings_request_to_gemini(&target(&p, model), &req)?;
        Ok((method, serde_json::from_slice(&body).unwrap()))
    }

    #[test]
    fn embeddings_requests_translate_exactly() {
        assert_eq!(
            embeddings_body(
                fixture!("embed_request_text.openai.json"),
                "gemini-embedding-001"
            )
            .unwrap(),
            (
                "embedContent",
                json(fixture!("embed_request_text.gemini.json"))
            )
        );
        // Google's own `models/` prefix is not doubled.
        assert_eq!(
            embeddings_body(
                fixture!("embed_request_batch.openai.json"),
                "models/gemini-embedding-001"
            )
            .unwrap(),
            (
                "batchEmbedContents",
                json(fixture!("embed_request_batch.gemini.json"))
            )
        );
    }

    #[test]
    fn embeddings_request_posts_to_the_method_with_the_key_in_a_header() {
        let p = provider(r#"{"kind":"gemini","base_url":"http://127.0.0.1:9/v1beta/"}"#);
        let req = EmbeddingsRequest::parse(br#"{"model":"e","input":["a"]}"#).unwrap();
        let up =
            build_embeddings_request(&target(&p, "gemini-embedding-001"), &req, Some("AIza-k"))
                .unwrap();
        assert_eq!(
            up.url,
            "http://127.0.0.1:9/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        assert_eq!(
            up.headers,
            [
                ("content-type".into(), "application/json".into()),
                ("x-goog-api-key".into(), "AIza-k".into())
            ]
        );
        let single =
            EmbeddingsRequest::parse(br#"{"model":"e","input":"a","dimensions":3}"#).unwrap();
        let up =
            build_embeddings_request(&target(&p, "gemini-embedding-001"), &single, None).unwrap();
        assert!(
            up.url
                .ends_with("/models/gemini-embedding-001:embedContent")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&up.body).unwrap(),
            json!({"content":{"parts":[{"text":"a"}]},"outputDimensionality":3})
        );
    }

    #[test]
    fn token_inputs_are_a_400_naming_input() {
        for input in ["[1,2,3]", "[[1],[2]]"] {
            let body = format!(r#"{{"model":"e","input":{input}}}"#);
            assert_eq!(
                param_of(embeddings_body(&body, "m").map(|(_, v)| v)),
                "input",
                "{input}"
            );
        }
    }

    fn embeddings_answer(
        request: &str,
        gemini: &str,
    ) -> Result<(Value, Option<Usage>), GatewayError> {
        let p = provider(r#"{"kind":"gemini"}"#);
        let req = EmbeddingsRequest::parse(request.as_bytes()).unwrap();
        let (bytes, usage) =
            read_embeddings_response(&target(&p, "gemini-embedding-001"), &req, gemini.as_bytes())?;
        Ok((serde_json::from_slice(&bytes).unwrap(), usage))
    }

    #[test]
    fn embeddings_responses_translate_exactly() {
        let batch_as_base64 = fixture!("embed_request_batch.openai.json").replacen(
            '{',
            r#"{"encoding_format":"base64","#,
            1,
        );
        let cases = [
            (
                "text, floats",
                fixture!("embed_request_text.openai.json").to_owned(),
                fixture!("embed_response_text.gemini.json"),
                fixture!("embed_response_text.openai.json"),
            ),
            (
                "batch, base64",
                batch_as_base64,
                fixture!("embed_response_batch.gemini.json"),
                fixture!("embed_response_batch.openai.json"),
            ),
            (
                // Recorded from tests/mock: the two must interoperate.
                "mock batch, floats",
                r#"{"model":"e","input":["alpha","beta"]}"#.to_owned(),
                fixture!("embed_response_mock_batch.gemini.json"),
                fixture!("embed_response_mock_batch.openai.json"),
            ),
        ];
        for (name, request, gemini, openai) in cases {
            let (got, usage) = embeddings_answer(&request, gemini).unwrap();
            assert_eq!(got, json(openai), "scenario {name}");
            let shown = got["usage"]["prompt_tokens"].as_u64().unwrap();
            assert_eq!(usage, Some(Usage::new(shown, 0, None)), "scenario {name}");
        }
    }

    #[test]
    fn a_wrong_number_of_embeddings_is_a_retryable_upstream_failure() {
        let batch = r#"{"model":"e","input":["a","b"]}"#;
        for (request, gemini) in [
            (batch, r#"{"embeddings":[{"values":[1]}]}"#),
            (batch, r#"{"embedding":{"values":[1]}}"#),
            (r#"{"model":"e","input":"a"}"#, r#"{"embedding":{}}"#),
            (r#"{"model":"e","input":"a"}"#, "not json"),
        ] {
            let e = embeddings_answer(request, gemini).unwrap_err();
            assert!(
                matches!(e, GatewayError::UpstreamInvalidResponse { .. }) && e.is_retryable(),
                "{gemini}: {e:?}"
            );
        }
    }

    // -- error mapping

    #[test]
    fn error_fixtures_map_to_openai_error_bodies() {
        let cases = [
            (
                "rate_limited",
                429,
                fixture!("error_rate_limited.gemini.json"),
                fixture!("error_rate_limited.openai.json"),
            ),
            (
                "array_wrapped",
                400,
                fixture!("error_array_wrapped.gemini.json"),
                fixture!("error_array_wrapped.openai.json"),
            ),
        ];
        for (name, status, gemini, openai) in cases {
            let e = error_from_body("gemini", status, None, gemini.as_bytes());
            assert_eq!(e.status(), status, "scenario {name}");
            assert_eq!(
                json(&String::from_utf8(e.to_body()).unwrap()),
                json(openai),
                "scenario {name}"
            );
        }
    }

    #[test]
    fn rate_limit_waits_for_the_header_else_the_retry_info_delay() {
        let body = fixture!("error_rate_limited.gemini.json").as_bytes();
        let e = error_from_body("gemini", 429, None, body);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(26));
        assert_eq!(
            error_from_body("gemini", 429, Some(3), body).retry_after(),
            Some(3)
        );
        let fractional = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.2s"}]}}"#;
        assert_eq!(
            error_from_body("gemini", 429, None, fractional).retry_after(),
            Some(2)
        );
    }

    #[test]
    fn a_rejected_key_is_the_gateways_problem_not_the_callers() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",
            "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let e = error_from_body("gemini", 400, None, body);
        assert_eq!(e.status(), 502);
        assert!(!e.is_retryable());
        assert!(
            String::from_utf8(e.to_body())
                .unwrap()
                .contains("upstream_auth_failed")
        );
    }

    #[test]
    fn non_json_error_bodies_become_bounded_excerpts() {
        let e = error_from_body("gemini", 502, None, b"<html>Bad Gateway</html>");
        assert!(e.to_string().contains("<html>Bad Gateway</html>"));
        assert!(e.is_retryable());
        let e = error_from_body("gemini", 500, None, br#"{"error":"flat"}"#);
        assert!(e.to_string().contains(r#"{"error":"flat"}"#), "{e}");
    }
}
