//! Provider adapters: one file per wire format.
//!
//! - [`openai`] — the OpenAI chat-completions format and its vendors, as presets.
//! - [`anthropic`] — the Anthropic Messages format, translated both ways.
//! - [`gemini`] — Google Gemini's `generateContent` and `embedContent`,
//!   translated both ways.
//! - [`mock`]   — the built-in demo model, served inside the worker.
//!
//! The functions here dispatch on the provider's wire format so the gateway
//! core never matches on vendors: chat completions (`build_chat_request`,
//! `chat_response`, `stream_translator`), embeddings (`supports_embeddings`,
//! `build_embeddings_request`, `embeddings_response`) and errors
//! (`error_from_response`, shared by both).

pub mod anthropic;
pub mod gemini;
pub mod mock;
pub mod openai;

use crate::api::{
    ChatCompletionChunk, ChatRequest, ChunkChoice, Delta, EmbeddingsRequest, FinishReason, Usage,
};
use crate::config::{Provider, ProviderKind};
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
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

/// Turns one provider's stream events into OpenAI chunk bytes.
pub trait StreamTranslator {
    /// Handles one upstream event, appending client bytes to `out`. An `Err`
    /// is an in-stream provider error; the stream ends after it.
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError>;
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

/// The secret holding this provider's key, if it takes one.
pub fn api_key_secret(p: &Provider) -> Option<&str> {
    p.api_key_secret.as_deref().or_else(|| match p.kind {
        ProviderKind::Anthropic => Some(anthropic::SECRET),
        ProviderKind::Gemini => Some(gemini::DEFAULT_SECRET),
        kind => openai::preset(kind).and_then(|preset| preset.secret),
    })
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
}

fn wire(kind: ProviderKind) -> Wire {
    match kind {
        ProviderKind::Anthropic => Wire::Anthropic,
        ProviderKind::Gemini => Wire::Gemini,
        // Every other kind has a preset (a unit test checks it).
        other => Wire::OpenAi(openai::preset(other).unwrap_or(openai::GENERIC)),
    }
}

/// Builds the upstream request for a chat completion.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    api_key: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    match wire(target.provider.kind) {
        Wire::OpenAi(preset) => Ok(openai::build_chat_request(target, preset, req, api_key)),
        Wire::Anthropic => anthropic::build_chat_request(target, req, api_key),
        Wire::Gemini => gemini::build_chat_request(target, req, api_key),
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
    match wire(target.provider.kind) {
        Wire::OpenAi(_) => {
            let usage = openai::read_chat_response(target, &body)?;
            Ok((body, usage))
        }
        Wire::Anthropic => anthropic::chat_response(target, req, &body, now_s),
        Wire::Gemini => gemini::read_chat_response(target, &body, now_s),
    }
}

/// The translator for a streamed answer; `now_s` (Unix seconds) is the
/// `created` of chunks a translating adapter builds.
pub fn stream_translator(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    now_s: u64,
) -> Box<dyn StreamTranslator> {
    match wire(target.provider.kind) {
        Wire::OpenAi(_) => Box::new(openai::PassThrough::new(target, req.include_usage)),
        Wire::Anthropic => Box::new(anthropic::EventsToChunks::new(target, req, now_s)),
        Wire::Gemini => Box::new(gemini::GeminiStream::new(target, req.include_usage, now_s)),
    }
}

/// Whether a provider kind serves `/v1/embeddings` (Anthropic has no
/// embeddings API).
pub fn supports_embeddings(kind: ProviderKind) -> bool {
    match wire(kind) {
        Wire::OpenAi(_) | Wire::Gemini => true,
        Wire::Anthropic => false,
    }
}

/// Builds the upstream request for embeddings. A target without embeddings
/// is a 400; the gateway leaves such targets out before it gets here.
pub fn build_embeddings_request(
    target: &Target<'_>,
    req: &EmbeddingsRequest<'_>,
    api_key: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    match wire(target.provider.kind) {
        Wire::OpenAi(preset) => Ok(openai::build_embeddings_request(
            target, preset, req, api_key,
        )),
        Wire::Gemini => gemini::build_embeddings_request(target, req, api_key),
        Wire::Anthropic => Err(no_embeddings(&req.model)),
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
    match wire(target.provider.kind) {
        Wire::OpenAi(_) => {
            let usage = openai::read_embeddings_response(target, &body)?;
            Ok((body, usage))
        }
        Wire::Gemini => gemini::read_embeddings_response(target, req, &body),
        Wire::Anthropic => Err(no_embeddings(&req.model)),
    }
}

/// Maps a non-2xx response to the gateway's error.
pub fn error_from_response(
    target: &Target<'_>,
    status: u16,
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    match wire(target.provider.kind) {
        Wire::OpenAi(_) => openai::error_from_body(target.name, status, retry_after, body),
        Wire::Anthropic => anthropic::error_from_body(target.name, status, retry_after, body),
        Wire::Gemini => gemini::error_from_body(target.name, status, retry_after, body),
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
