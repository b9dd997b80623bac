//! Provider adapters: one file per wire format.
//!
//! - [`openai`] — the OpenAI chat-completions format and its vendors, as presets.
//! - [`anthropic`] — the Anthropic Messages format, translated both ways.
//! - [`gemini`] — Google Gemini's `generateContent` and `embedContent`,
//!   translated both ways.
//! - [`bedrock`] — Amazon Bedrock's Converse and ConverseStream, translated
//!   both ways, signed with SigV4, streamed in AWS's binary event stream.
//! - [`vertex`] — Google Vertex AI: Gemini and Claude models through the
//!   Gemini and Anthropic adapters, at Vertex's URLs, with a service
//!   account's OAuth token.
//! - [`workers_ai`] — Cloudflare Workers AI through the Worker's binding
//!   (its REST endpoint is an OpenAI preset).
//! - [`mock`]   — the built-in demo model, served inside the worker.
//!
//! The functions here dispatch on the provider's wire format so the gateway
//! core never matches on vendors: chat completions (`build_chat_request`,
//! `chat_response`, `stream_translator`), embeddings (`supports_embeddings`,
//! `build_embeddings_request`, `embeddings_response`) and errors
//! (`error_from_response`, shared by both), and the credential a request
//! carries (`credential`: the key, or an OAuth token obtained with it).
//!
//! Streams come in two framings ([`Translator`]): Server-Sent Events for
//! most formats, AWS's binary event stream for Bedrock. The gateway decodes
//! the framing and hands each event to the format's [`StreamTranslator`].

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod mock;
pub mod openai;
pub mod vertex;
pub mod workers_ai;

use std::borrow::Cow;

use crate::api::{
    ChatCompletionChunk, ChatRequest, ChunkChoice, Delta, EmbeddingsRequest, FinishReason, Usage,
};
use crate::aws::eventstream;
use crate::config::{Provider, ProviderKind};
use crate::error::GatewayError;
use crate::http::{Upstream, UpstreamRequest};
use crate::routing::SecretLookup;
use crate::sse::{SseEvent, encode_data};

/// A config target resolved to its provider.
#[derive(Debug, Clone, Copy)]
pub struct Target<'c> {
    /// The provider's name in the config.
    pub name: &'c str,
    /// The provider's settings.
    pub provider: &'c Provider,
    /// The provider-side model name.
    pub model: &'c str,
}

/// Turns one provider's stream events into OpenAI chunk bytes. `E` is what
/// the provider's framing yields: an [`SseEvent`] (the default), or an AWS
/// [`eventstream::Message`].
pub trait StreamTranslator<E = SseEvent> {
    /// Handles one upstream event, appending client bytes to `out`. An `Err`
    /// is an in-stream provider error; the stream ends after it.
    fn on_event(&mut self, ev: E, out: &mut Vec<u8>) -> Result<(), GatewayError>;
    /// The upstream ended. Appends closing bytes, or returns an `Err` when
    /// the answer was incomplete.
    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError>;
    /// Usage reported so far.
    fn usage(&self) -> Option<Usage>;
    /// Whether `written`, what one call of this translator wrote, carries
    /// output the client must not lose: until some does, the gateway holds
    /// the stream uncommitted, so a target that fails before its first token
    /// is replaced without the client noticing. The default is the test for
    /// OpenAI chunks ([`chunk_carries_output`]); translators that write
    /// another client protocol answer for their own events.
    fn carries_output(&self, written: &[u8]) -> bool {
        chunk_carries_output(written)
    }
    /// Writes a failure that came after the commit, in the client's
    /// protocol, as the stream's last bytes. The default is OpenAI's
    /// `data: {"error":...}` event, which the OpenAI SDKs raise on.
    fn write_error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        encode_data(out, &e.to_body());
    }
    /// For a translator that passes the provider's events on unchanged
    /// (OpenAI chunks to an OpenAI client): what a native pipe needs to
    /// carry the rest of the stream without this translator. `None`, the
    /// default, when every event must go through it.
    fn native_tail(&self) -> Option<NativeTail> {
        None
    }
}

/// What a native pipe of an OpenAI chunk stream must do and know to carry
/// on where a pass-through translator stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeTail {
    /// Drop the usage-only chunk (`"choices":[]`): the gateway asked for it
    /// to account, the client did not.
    pub strip_usage_only: bool,
    /// A `finish_reason` was seen (a stream that then ends without
    /// `[DONE]` is complete).
    pub finished: bool,
    /// `[DONE]` was seen: nothing is left to pipe.
    pub done: bool,
}

/// Whether OpenAI chunk bytes carry something the client must not lose:
/// text, a tool call, a finish, an error or the end. A role-only first
/// chunk does not.
pub fn chunk_carries_output(bytes: &[u8]) -> bool {
    let s = String::from_utf8_lossy(bytes);
    field_is_nonempty_string(&s, "content")
        || field_value_starts_with(&s, "tool_calls", b'[')
        || field_value_starts_with(&s, "finish_reason", b'"')
        || field_value_starts_with(&s, "error", b'{')
        || s.contains("[DONE]")
}

/// A stream translator with the framing its provider's stream comes in:
/// the gateway picks the decoder by the variant, so a translator never sees
/// events of another framing.
pub enum Translator {
    /// Server-Sent Events (OpenAI, Anthropic, Gemini).
    Sse(Box<dyn StreamTranslator>),
    /// AWS's binary `application/vnd.amazon.eventstream` (Bedrock).
    EventStream(Box<dyn StreamTranslator<eventstream::Message>>),
}

impl Translator {
    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Translator::Sse(t) => t.usage(),
            Translator::EventStream(t) => t.usage(),
        }
    }
}

/// The secret holding this provider's key, if it takes one: for Bedrock,
/// the AWS access key id (its secret key is [`signing_secret`]).
pub fn api_key_secret(p: &Provider) -> Option<&str> {
    if workers_ai::runs_at_edge(p) {
        return None; // the binding needs no key
    }
    p.api_key_secret.as_deref().or_else(|| match p.kind {
        ProviderKind::Anthropic => Some(anthropic::SECRET),
        ProviderKind::Gemini => Some(gemini::DEFAULT_SECRET),
        ProviderKind::Bedrock => Some(bedrock::access_key_id_secret(p)),
        ProviderKind::Vertex => Some(vertex::DEFAULT_SECRET),
        kind => openai::preset(kind).and_then(|preset| preset.secret),
    })
}

/// The secret a provider signs its requests with besides its key (Bedrock's
/// AWS secret access key). Routing treats the provider as disabled while
/// it is not set, as it does for the key.
pub fn signing_secret(p: &Provider) -> Option<&str> {
    match p.kind {
        ProviderKind::Bedrock => Some(bedrock::secret_access_key_secret(p)),
        _ => None,
    }
}

/// What a request builder may need beyond the request and its key: the
/// time and the other secrets of a provider that signs its requests
/// (Bedrock's SigV4 covers the time and uses the secret access key and the
/// session token). Adapters with a plain key ignore it.
#[derive(Clone, Copy)]
pub struct Signing<'a> {
    /// Unix seconds now, for the signature.
    pub now_s: u64,
    /// Secret lookup, for the signing secrets.
    pub secret: SecretLookup<'a>,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// OpenAI chat completions, with the vendor's preset.
    OpenAi(openai::Preset),
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
    /// Amazon Bedrock Converse.
    Bedrock,
    /// Google Vertex AI (Gemini or Messages by the model's publisher).
    Vertex,
    /// Workers AI through the Worker's binding.
    WorkersAiBinding,
}

/// A provider's wire format: its kind's, except a Workers AI provider with
/// a binding, which does not speak HTTP at all.
fn wire(p: &Provider) -> Wire {
    match p.kind {
        ProviderKind::WorkersAi if p.binding.is_some() => Wire::WorkersAiBinding,
        kind => wire_of(kind),
    }
}

fn wire_of(kind: ProviderKind) -> Wire {
    match kind {
        ProviderKind::Anthropic => Wire::Anthropic,
        ProviderKind::Gemini => Wire::Gemini,
        ProviderKind::Bedrock => Wire::Bedrock,
        ProviderKind::Vertex => Wire::Vertex,
        // Every other kind has a preset (a unit test checks it).
        other => Wire::OpenAi(openai::preset(other).unwrap_or(openai::GENERIC)),
    }
}

/// The credential a request to `target` carries when it is at hand without
/// I/O: the key itself (`api_key`, the provider's secret), or for Vertex AI
/// a cached OAuth token. `None`: it must be obtained with [`credential`].
pub fn ready_credential<'k>(
    target: &Target<'_>,
    api_key: Option<&'k str>,
    now_s: u64,
) -> Option<Option<Cow<'k, str>>> {
    match wire(target.provider) {
        Wire::Vertex => vertex::cached_access_token(api_key, now_s).map(|t| Some(Cow::Owned(t))),
        Wire::OpenAi(_)
        | Wire::Anthropic
        | Wire::Gemini
        | Wire::Bedrock
        | Wire::WorkersAiBinding => Some(api_key.map(Cow::Borrowed)),
    }
}

/// The credential a request to `target` carries, given the provider's
/// secret (`api_key`): the key itself, or for Vertex AI an OAuth access
/// token obtained with the service-account key in it (cached per isolate,
/// exchanged through `upstream` when due).
pub async fn credential<'k, U: Upstream>(
    upstream: &U,
    target: &Target<'_>,
    api_key: Option<&'k str>,
    now_s: u64,
) -> Result<Option<Cow<'k, str>>, GatewayError> {
    match wire(target.provider) {
        Wire::Vertex => vertex::access_token(upstream, target, api_key, now_s)
            .await
            .map(|token| Some(Cow::Owned(token))),
        Wire::OpenAi(_)
        | Wire::Anthropic
        | Wire::Gemini
        | Wire::Bedrock
        | Wire::WorkersAiBinding => Ok(api_key.map(Cow::Borrowed)),
    }
}

/// Builds the upstream request for a chat completion.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    api_key: Option<&str>,
    signing: Signing<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    match wire(target.provider) {
        Wire::OpenAi(preset) => Ok(openai::build_chat_request(target, preset, req, api_key)),
        Wire::Anthropic => anthropic::build_chat_request(target, req, api_key),
        Wire::Gemini => gemini::build_chat_request(target, req, api_key),
        Wire::Bedrock => bedrock::build_chat_request(target, req, api_key, signing),
        Wire::Vertex => vertex::build_chat_request(target, req, api_key),
        Wire::WorkersAiBinding => workers_ai::build_chat_request(target, req),
    }
}

/// Converts a 2xx non-stream body to the client's body, and reads usage.
/// Translating adapters need the request (what was asked for) and the time
/// (`now_s`, Unix seconds: the completion's `created`).
pub fn chat_response(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    body: Vec<u8>,
    now_s: u64,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    match wire(target.provider) {
        Wire::OpenAi(_) => {
            let usage = openai::read_chat_response(target, &body)?;
            Ok((body, usage))
        }
        Wire::Anthropic => anthropic::chat_response(target, req, &body, now_s),
        Wire::Gemini => gemini::read_chat_response(target, &body, now_s),
        Wire::Bedrock => bedrock::chat_response(target, req, &body, now_s),
        Wire::Vertex => vertex::chat_response(target, req, &body, now_s),
        Wire::WorkersAiBinding => workers_ai::chat_response(target, &body, now_s),
    }
}

/// The translator for a streamed answer; `now_s` (Unix seconds) is the
/// `created` of chunks a translating adapter builds.
pub fn stream_translator(target: &Target<'_>, req: &ChatRequest<'_>, now_s: u64) -> Translator {
    match wire(target.provider) {
        Wire::OpenAi(_) => Translator::Sse(Box::new(openai::PassThrough::new(
            target,
            req.include_usage,
        ))),
        Wire::Anthropic => {
            Translator::Sse(Box::new(anthropic::EventsToChunks::new(target, req, now_s)))
        }
        Wire::Gemini => Translator::Sse(Box::new(gemini::GeminiStream::new(
            target,
            req.include_usage,
            now_s,
        ))),
        Wire::Bedrock => {
            Translator::EventStream(Box::new(bedrock::ConverseStream::new(target, req, now_s)))
        }
        Wire::Vertex => vertex::stream_translator(target, req, now_s),
        Wire::WorkersAiBinding => Translator::Sse(Box::new(workers_ai::BindingStream::new(
            target,
            req.include_usage,
            now_s,
        ))),
    }
}

/// Whether a provider kind serves `/v1/embeddings` (Anthropic has no
/// embeddings API; Bedrock's Converse has none either; Vertex's embedding
/// models use another API, not translated yet).
pub fn supports_embeddings(kind: ProviderKind) -> bool {
    match wire_of(kind) {
        Wire::OpenAi(_) | Wire::Gemini => true,
        Wire::Anthropic | Wire::Bedrock | Wire::Vertex | Wire::WorkersAiBinding => false,
    }
}

/// Builds the upstream request for embeddings. A target without embeddings
/// is a 400; the gateway leaves such targets out before it gets here.
pub fn build_embeddings_request(
    target: &Target<'_>,
    req: &EmbeddingsRequest<'_>,
    api_key: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    match wire(target.provider) {
        Wire::OpenAi(preset) => Ok(openai::build_embeddings_request(
            target, preset, req, api_key,
        )),
        Wire::Gemini => gemini::build_embeddings_request(target, req, api_key),
        Wire::Anthropic | Wire::Bedrock | Wire::Vertex | Wire::WorkersAiBinding => {
            Err(no_embeddings(&req.model))
        }
    }
}

/// The 400 for a model none of whose targets serves embeddings.
pub fn no_embeddings(model: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: format!("The model `{model}` does not support embeddings."),
        param: Some("model".to_owned()),
    }
}

/// Converts a 2xx embeddings body to the client's body, and reads usage.
pub fn embeddings_response(
    target: &Target<'_>,
    req: &EmbeddingsRequest<'_>,
    body: Vec<u8>,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    match wire(target.provider) {
        Wire::OpenAi(_) => {
            let usage = openai::read_embeddings_response(target, &body)?;
            Ok((body, usage))
        }
        Wire::Gemini => gemini::read_embeddings_response(target, req, &body),
        Wire::Anthropic | Wire::Bedrock | Wire::Vertex | Wire::WorkersAiBinding => {
            Err(no_embeddings(&req.model))
        }
    }
}

/// Maps a non-2xx response to the gateway's error. `headers` are the
/// response's [`crate::http::UPSTREAM_HEADERS`] (Bedrock names its error
/// type in `x-amzn-errortype`).
pub fn error_from_response(
    target: &Target<'_>,
    status: u16,
    headers: &[(String, String)],
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    match wire(target.provider) {
        Wire::OpenAi(_) | Wire::WorkersAiBinding => {
            openai::error_from_body(target.name, status, retry_after, body)
        }
        Wire::Anthropic => anthropic::error_from_body(target.name, status, retry_after, body),
        Wire::Gemini => gemini::error_from_body(target.name, status, retry_after, body),
        Wire::Vertex => vertex::error_from_body(target.name, status, retry_after, body),
        Wire::Bedrock => {
            let error_type = headers
                .iter()
                .find(|(k, _)| k == bedrock::ERROR_TYPE_HEADER)
                .map(|(_, v)| v.as_str());
            bedrock::error_from_body(target.name, status, error_type, retry_after, body)
        }
    }
}

/// Writes the OpenAI `chat.completion.chunk` events of a translated stream:
/// one id, creation time and model for every chunk, and `"usage": null` on
/// each exactly when the client asked for the usage chunk, as OpenAI does.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkWriter {
    /// The stream's `chatcmpl-...` id.
    pub(crate) id: String,
    /// The model that answers.
    pub(crate) model: String,
    /// Unix seconds.
    pub(crate) created: u64,
    /// `stream_options.include_usage`.
    pub(crate) client_wants_usage: bool,
}

impl ChunkWriter {
    /// Appends a chunk with one choice's delta.
    pub(crate) fn delta(
        &self,
        out: &mut Vec<u8>,
        delta: Delta<'_>,
        finish_reason: Option<FinishReason>,
    ) {
        let choice = ChunkChoice {
            index: 0,
            delta,
            finish_reason,
            logprobs: None,
        };
        self.chunk(out, vec![choice], None);
    }

    /// Appends `data: <chunk>\n\n` (no choices and `usage` for the usage chunk).
    pub(crate) fn chunk(
        &self,
        out: &mut Vec<u8>,
        choices: Vec<ChunkChoice<'_>>,
        usage: Option<Usage>,
    ) {
        let chunk = ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: self.client_wants_usage.then_some(usage),
        };
        out.extend_from_slice(b"data: ");
        // Serialized JSON has no raw newline, so it is one `data:` line; a
        // struct of strings and numbers always serializes.
        let _ = serde_json::to_writer(&mut *out, &chunk);
        out.extend_from_slice(b"\n\n");
    }
}

/// A bounded, printable excerpt of a body that is not the expected JSON.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else if body.len() > MAX {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

/// FNV-1a: a stable id from bytes, with no randomness to pass in.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether the JSON text has a `"field"` key whose value is a non-empty
/// string.
pub(crate) fn field_is_nonempty_string(json: &str, field: &str) -> bool {
    let bytes = json.as_bytes();
    let quoted = format!("\"{field}\"");
    json.match_indices(&quoted).any(|(i, _)| {
        let mut rest = bytes[i + quoted.len()..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':')
            && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'"')
            && bytes[i + quoted.len()..]
                .split(|&b| b == b'"')
                .nth(1)
                .is_some_and(|v| !v.is_empty())
    })
}

/// Whether the JSON text has a `"field"` key whose value starts with `first`
/// (`{` for an object, `"` for a string), whitespace allowed. A cheap test
/// that spares most stream chunks a full parse; a false positive only costs
/// that parse.
pub(crate) fn field_value_starts_with(json: &str, field: &str, first: u8) -> bool {
    let bytes = json.as_bytes();
    let mut from = 0;
    while let Some(i) = json[from..].find(field) {
        let start = from + i;
        let end = start + field.len();
        from = end;
        if start == 0 || bytes[start - 1] != b'"' || bytes.get(end) != Some(&b'"') {
            continue;
        }
        let mut rest = bytes[end + 1..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        if rest.next() != Some(&b':') {
            continue;
        }
        if rest.find(|b| !b.is_ascii_whitespace()) == Some(&first) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_value_test_tolerates_whitespace_and_rejects_null() {
        assert!(field_value_starts_with(
            r#"{"usage":{"a":1}}"#,
            "usage",
            b'{'
        ));
        assert!(field_value_starts_with(r#"{"usage" : { }}"#, "usage", b'{'));
        assert!(!field_value_starts_with(r#"{"usage":null}"#, "usage", b'{'));
        assert!(!field_value_starts_with(
            r#"{"content":"usage"}"#,
            "usage",
            b'{'
        ));
        assert!(field_value_starts_with(
            r#"{"x":"usage","usage":{}}"#,
            "usage",
            b'{'
        ));
        assert!(field_value_starts_with(
            r#"{"finish_reason": "stop"}"#,
            "finish_reason",
            b'"'
        ));
        assert!(!field_value_starts_with(
            r#"{"finish_reason":null}"#,
            "finish_reason",
            b'"'
        ));
    }

    #[test]
    fn nonempty_string_fields_are_told_from_empty_ones() {
        assert!(field_is_nonempty_string(
            r#"{"delta":{"content":"Hi"}}"#,
            "content"
        ));
        assert!(field_is_nonempty_string(
            r#"{"delta":{"content" : "Hi"}}"#,
            "content"
        ));
        assert!(!field_is_nonempty_string(
            r#"{"delta":{"role":"assistant","content":""}}"#,
            "content"
        ));
        assert!(!field_is_nonempty_string(
            r#"{"delta":{"content":null}}"#,
            "content"
        ));
        assert!(field_is_nonempty_string(
            r#"{"a":{"content":""},"b":{"content":"x"}}"#,
            "content"
        ));
    }

    #[test]
    fn excerpt_is_bounded() {
        assert_eq!(excerpt(b"  "), "(empty body)");
        assert_eq!(excerpt(&[b'a'; 500]).chars().count(), 201);
    }
}
