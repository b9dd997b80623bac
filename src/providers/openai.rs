//! The OpenAI chat-completions and embeddings wire format, and every vendor
//! that speaks it.
//!
//! Vendors are presets (base URL, auth header, secret name), not copies.
//! Requests are forwarded losslessly with only `model` rewritten (and usage
//! requested on streams); responses pass through byte for byte while the
//! gateway reads the usage it needs.
//!
//! Order: presets, wire types, request building, response parsing, stream
//! decoding, error mapping, tests.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::api::{ChatRequest, EmbeddingUsage, EmbeddingsRequest, Usage};
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::sse::{DONE, SseEvent, encode_data};

use super::{StreamTranslator, Target};

// ---- Presets ---------------------------------------------------------------

/// How a vendor takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// Azure's `api-key: <key>`.
    ApiKeyHeader,
}

/// What distinguishes one OpenAI-compatible vendor from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// Base URL when the config gives none (`None`: the config must).
    pub base_url: Option<&'static str>,
    /// How the key is sent.
    pub auth: Auth,
    /// The usual secret name; `None` for servers that need no key.
    pub secret: Option<&'static str>,
}

/// The preset of an OpenAI-compatible kind; `None` for other wire formats.
pub fn preset(kind: ProviderKind) -> Option<Preset> {
    let p = |base_url, secret| {
        Some(Preset {
            base_url: Some(base_url),
            auth: Auth::Bearer,
            secret: Some(secret),
        })
    };
    match kind {
        ProviderKind::Openai => p("https://api.openai.com/v1", "OPENAI_API_KEY"),
        ProviderKind::Groq => p("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        ProviderKind::Mistral => p("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        ProviderKind::Deepseek => p("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
        ProviderKind::Together => p("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        ProviderKind::Fireworks => p("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
        ProviderKind::Openrouter => p("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ProviderKind::Xai => p("https://api.x.ai/v1", "XAI_API_KEY"),
        ProviderKind::Perplexity => p("https://api.perplexity.ai", "PERPLEXITY_API_KEY"),
        // The REST path; with a `binding` the provider is `super::workers_ai`'s.
        ProviderKind::WorkersAi => p(
            "https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/v1",
            "CLOUDFLARE_API_TOKEN",
        ),
        ProviderKind::Azure => Some(Preset {
            base_url: None,
            auth: Auth::ApiKeyHeader,
            secret: Some("AZURE_OPENAI_API_KEY"),
        }),
        // Local servers (Ollama, vLLM) usually take no key; one is sent only
        // when the config names a secret.
        ProviderKind::OpenaiCompatible => Some(GENERIC),
        // Not this wire format.
        ProviderKind::Anthropic => None,
        // The demo model speaks this wire format from inside the worker.
        ProviderKind::Mock => Some(Preset {
            base_url: Some(super::mock::BASE_URL),
            auth: Auth::Bearer,
            secret: None,
        }),
        // Their own wire formats: see `super::gemini`, `super::bedrock`,
        // `super::vertex`.
        ProviderKind::Gemini | ProviderKind::Bedrock | ProviderKind::Vertex => None,
    }
}

/// Any OpenAI-compatible server: `base_url` from the config, a bearer key
/// only when the config names a secret.
pub const GENERIC: Preset = Preset {
    base_url: None,
    auth: Auth::Bearer,
    secret: None,
};

/// The Azure OpenAI `api-version` used when the config names none (GA).
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

// ---- Wire types --------------------------------------------------------------

/// The parts of a completion or chunk the gateway reads; everything else is
/// skipped without allocating.
#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// The parts of an embeddings list the gateway reads.
#[derive(Deserialize)]
struct EmbeddingsUsageOnly {
    #[serde(rename = "data")]
    _data: Vec<IgnoredAny>,
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
}

// ---- Request building ----------------------------------------------------------

/// The upstream request for a chat completion.
pub fn build_chat_request(
    target: &Target<'_>,
    preset: Preset,
    req: &ChatRequest<'_>,
    api_key: Option<&str>,
) -> UpstreamRequest {
    post(
        target,
        preset,
        "chat/completions",
        req.stream,
        api_key,
        req.to_openai_body(target.model),
    )
}

/// The upstream request for embeddings: the client's body, `model` rewritten.
pub fn build_embeddings_request(
    target: &Target<'_>,
    preset: Preset,
    req: &EmbeddingsRequest<'_>,
    api_key: Option<&str>,
) -> UpstreamRequest {
    post(
        target,
        preset,
        "embeddings",
        false,
        api_key,
        req.to_openai_body(target.model),
    )
}

/// The upstream request for an OpenAI Responses body (`POST /v1/responses`,
/// the client's body with `model` rewritten: see
/// [`crate::ingress::responses`]). OpenAI: `{base}/responses`. Azure:
/// `{base}/openai/v1/responses`, Azure's v1 API, the only one that serves
/// Responses: no deployment in the path (`model` names it) and no
/// `api-version`.
pub fn build_responses_request(
    target: &Target<'_>,
    body: Vec<u8>,
    stream: bool,
    api_key: Option<&str>,
) -> UpstreamRequest {
    let preset = preset(target.provider.kind).unwrap_or(GENERIC);
    post(target, preset, RESPONSES, stream, api_key, body)
}

/// The Responses endpoint, under the base URL.
const RESPONSES: &str = "responses";

/// A POST to `endpoint` (`chat/completions`, `embeddings`, `responses`)
/// under the vendor's base URL (Azure: under the deployment, or its v1 API
/// for Responses), with its auth header.
fn post(
    target: &Target<'_>,
    preset: Preset,
    endpoint: &str,
    stream: bool,
    api_key: Option<&str>,
    body: Vec<u8>,
) -> UpstreamRequest {
    let p = target.provider;
    let base = match (p.base_url.as_deref(), preset.base_url) {
        (Some(own), _) => Cow::Borrowed(own),
        // Workers AI's preset URL names the account.
        (None, Some(url)) if url.contains("{account_id}") => {
            Cow::Owned(url.replace("{account_id}", p.account_id.as_deref().unwrap_or_default()))
        }
        (None, url) => Cow::Borrowed(url.unwrap_or_default()),
    };
    let base = base.trim_end_matches('/');
    let url = match p.kind {
        ProviderKind::Azure if endpoint == RESPONSES => format!("{base}/openai/v1/{endpoint}"),
        ProviderKind::Azure => format!(
            "{base}/openai/deployments/{}/{endpoint}?api-version={}",
            target.model,
            p.api_version
                .as_deref()
                .unwrap_or(AZURE_DEFAULT_API_VERSION)
        ),
        _ => format!("{base}/{endpoint}"),
    };
    let mut headers = Vec::with_capacity(3 + p.headers.len());
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    if stream {
        headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
    }
    if let Some(key) = api_key {
        headers.push(auth_header(preset.auth, key));
    }
    headers.extend(p.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    UpstreamRequest {
        method: "POST",
        url,
        headers,
        body,
    }
}

fn auth_header(auth: Auth, key: &str) -> (String, String) {
    match auth {
        Auth::Bearer => ("authorization".to_owned(), format!("Bearer {key}")),
        Auth::ApiKeyHeader => ("api-key".to_owned(), key.to_owned()),
    }
}

// ---- Response parsing ------------------------------------------------------------

/// Checks a 2xx body and reads its usage. The body itself goes to the
/// client unchanged.
pub fn read_chat_response(target: &Target<'_>, body: &[u8]) -> Result<Option<Usage>, GatewayError> {
    serde_json::from_slice::<UsageOnly>(body)
        .map(|u| u.usage)
        .map_err(|e| GatewayError::UpstreamInvalidResponse {
            provider: target.name.to_owned(),
            message: format!("not a chat completion: {e}"),
        })
}

/// Checks a 2xx embeddings body (an object with a `data` array) and reads
/// its usage. The body itself goes to the client unchanged.
pub fn read_embeddings_response(
    target: &Target<'_>,
    body: &[u8],
) -> Result<Option<Usage>, GatewayError> {
    serde_json::from_slice::<EmbeddingsUsageOnly>(body)
        .map(|e| e.usage.map(Usage::from))
        .map_err(|e| GatewayError::UpstreamInvalidResponse {
            provider: target.name.to_owned(),
            message: format!("not an embeddings list: {e}"),
        })
}

/// The usage of a Responses `response` object, as OpenAI reports it.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResponsesUsage {
    /// Every input token, cached ones included.
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<ResponsesInputDetails>,
    /// Every output token, reasoning included.
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ResponsesInputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl ResponsesUsage {
    /// The gateway's usage, for settlement.
    pub(crate) fn to_usage(self) -> Usage {
        Usage::new(
            self.input_tokens,
            self.output_tokens,
            self.input_tokens_details.and_then(|d| d.cached_tokens),
        )
    }
}

/// The parts of a `response` object the gateway reads.
#[derive(Deserialize)]
struct ResponseUsageOnly {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    usage: Option<ResponsesUsage>,
}

/// Checks a 2xx Responses body (a `response` object) and reads its usage.
/// The body itself goes to the client unchanged.
pub fn read_responses_response(
    target: &Target<'_>,
    body: &[u8],
) -> Result<Option<Usage>, GatewayError> {
    let invalid = |message: String| GatewayError::UpstreamInvalidResponse {
        provider: target.name.to_owned(),
        message,
    };
    let r: ResponseUsageOnly =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a response: {e}")))?;
    if r.object.as_deref() != Some("response") {
        return Err(invalid("not a response object".to_owned()));
    }
    Ok(r.usage.map(ResponsesUsage::to_usage))
}

// ---- Stream decoding ---------------------------------------------------------------

/// Passes an OpenAI stream through, event by event, reading usage on the way
/// and dropping the usage chunk the gateway asked for on the client's behalf.
pub struct PassThrough {
    provider: String,
    client_wants_usage: bool,
    usage: Option<Usage>,
    finished: bool,
    done: bool,
}

impl PassThrough {
    /// A translator for one stream.
    pub fn new(target: &Target<'_>, client_wants_usage: bool) -> Self {
        PassThrough {
            provider: target.name.to_owned(),
            client_wants_usage,
            usage: None,
            finished: false,
            done: false,
        }
    }
}

impl StreamTranslator for PassThrough {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            out.extend_from_slice(DONE);
            return Ok(());
        }
        if data.starts_with("{\"error\"") {
            return Err(error_from_body(&self.provider, 500, None, data.as_bytes()));
        }
        // Most chunks carry no usage; a substring test spares them a parse.
        if super::field_value_starts_with(data, "usage", b'{') {
            let chunk: UsageOnly =
                serde_json::from_str(data).map_err(|e| GatewayError::UpstreamInvalidResponse {
                    provider: self.provider.clone(),
                    message: format!("invalid stream chunk: {e}"),
                })?;
            if chunk.usage.is_some() {
                self.usage = chunk.usage;
            }
            let usage_only = chunk.choices.as_ref().is_none_or(Vec::is_empty);
            if usage_only && !self.client_wants_usage {
                return Ok(());
            }
        }
        if !self.finished && super::field_value_starts_with(data, "finish_reason", b'"') {
            self.finished = true;
        }
        encode_data(out, data.as_bytes());
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        if self.finished {
            // Some compatible servers omit the sentinel after a complete answer.
            out.extend_from_slice(DONE);
            self.done = true;
            return Ok(());
        }
        Err(GatewayError::UpstreamUnreachable {
            provider: self.provider.clone(),
            message: "the stream ended before the answer was complete".into(),
        })
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn native_tail(&self) -> Option<super::NativeTail> {
        Some(super::NativeTail {
            strip_usage_only: !self.client_wants_usage,
            finished: self.finished,
            done: self.done,
        })
    }
}

// ---- Error mapping -------------------------------------------------------------------

/// Maps a provider's error response to the gateway's error. The message is
/// the provider's own when its body has one, else a bounded excerpt.
pub fn error_from_body(
    provider: &str,
    status: u16,
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: ErrorDetail { message: Some(m) },
        }) => m,
        _ => super::excerpt(body),
    };
    GatewayError::Upstream {
        provider: provider.to_owned(),
        status,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Provider};
    use crate::sse::SseParser;

    fn provider(json: &str) -> Provider {
        serde_json::from_str(json).unwrap()
    }

    fn target<'a>(p: &'a Provider, model: &'a str) -> Target<'a> {
        Target {
            name: "p",
            provider: p,
            model,
        }
    }

    #[test]
    fn every_openai_compatible_kind_has_a_preset() {
        let c = Config::bundled();
        for p in c.providers.values() {
            let own_format = matches!(
                p.kind,
                ProviderKind::Anthropic
                    | ProviderKind::Gemini
                    | ProviderKind::Bedrock
                    | ProviderKind::Vertex
            );
            assert_eq!(preset(p.kind).is_some(), !own_format, "{:?}", p.kind);
        }
    }

    #[test]
    fn openai_request_uses_bearer_and_rewrites_model() {
        let p = provider(r#"{"kind":"openai"}"#);
        let body = br#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2}}"#;
        let req = ChatRequest::parse(body).unwrap();
        let up = build_chat_request(
            &target(&p, "gpt-4o"),
            preset(p.kind).unwrap(),
            &req,
            Some("sk-1"),
        );
        assert_eq!(up.url, "https://api.openai.com/v1/chat/completions");
        assert!(
            up.headers
                .contains(&("authorization".into(), "Bearer sk-1".into()))
        );
        assert_eq!(
            up.body,
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2}}"#
        );
    }

    #[test]
    fn responses_requests_go_to_openai_and_to_azures_v1_api() {
        let body = br#"{"model":"gpt-5","input":"hi"}"#.to_vec();
        let p = provider(r#"{"kind":"openai"}"#);
        let up = build_responses_request(&target(&p, "gpt-5"), body.clone(), true, Some("sk-1"));
        assert_eq!(up.url, "https://api.openai.com/v1/responses");
        assert!(
            up.headers
                .contains(&("authorization".into(), "Bearer sk-1".into()))
        );
        assert!(
            up.headers
                .contains(&("accept".into(), "text/event-stream".into()))
        );
        let p = provider(
            r#"{"kind":"azure","base_url":"https://eu.openai.azure.com/","api_version":"2024-10-21"}"#,
        );
        let up = build_responses_request(&target(&p, "gpt5-eu"), body, false, Some("az-1"));
        assert_eq!(up.url, "https://eu.openai.azure.com/openai/v1/responses");
        assert!(up.headers.contains(&("api-key".into(), "az-1".into())));
    }

    #[test]
    fn responses_answers_are_checked_and_their_usage_read() {
        let p = provider(r#"{"kind":"openai"}"#);
        let t = target(&p, "gpt-5");
        let body = br#"{"id":"resp_1","object":"response","output":[],"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":20},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":37}}"#;
        assert_eq!(
            read_responses_response(&t, body).unwrap(),
            Some(Usage::new(30, 7, Some(20)))
        );
        for bad in [&br#"{"object":"chat.completion"}"#[..], b"[]", b"{"] {
            let e = read_responses_response(&t, bad).unwrap_err();
            assert!(e.is_retryable(), "{e:?}");
        }
    }

    #[test]
    fn azure_request_uses_deployment_url_and_api_key_header() {
        let p = provider(
            r#"{"kind":"azure","base_url":"https://eu.openai.azure.com/","api_version":"2025-01-01-preview"}"#,
        );
        let req = ChatRequest::parse(br#"{"model":"a","messages":[{}],"stream":true}"#).unwrap();
        let up = build_chat_request(
            &target(&p, "gpt4o-eu"),
            preset(p.kind).unwrap(),
            &req,
            Some("k"),
        );
        assert_eq!(
            up.url,
            "https://eu.openai.azure.com/openai/deployments/gpt4o-eu/chat/completions?api-version=2025-01-01-preview"
        );
        assert!(up.headers.contains(&("api-key".into(), "k".into())));
        assert!(!up.headers.iter().any(|(k, _)| k == "authorization"));
    }

    #[test]
    fn keyless_compatible_server_gets_no_auth_header() {
        let p = provider(
            r#"{"kind":"openai-compatible","base_url":"http://127.0.0.1:11434/v1","headers":{"x-extra":"1"}}"#,
        );
        let req = ChatRequest::parse(br#"{"model":"a","messages":[{}]}"#).unwrap();
        let up = build_chat_request(&target(&p, "llama3"), preset(p.kind).unwrap(), &req, None);
        assert_eq!(up.url, "http://127.0.0.1:11434/v1/chat/completions");
        assert_eq!(
            up.headers,
            [
                ("content-type".into(), "application/json".into()),
                ("x-extra".into(), "1".into())
            ]
        );
    }

    #[test]
    fn embeddings_request_goes_to_the_embeddings_endpoint_unchanged_but_for_model() {
        let body = br#"{"model":"alias","input":["a","b"],"encoding_format":"base64","dimensions":8,"user":"u"}"#;
        let req = EmbeddingsRequest::parse(body).unwrap();
        let p = provider(r#"{"kind":"openai"}"#);
        let up = build_embeddings_request(
            &target(&p, "text-embedding-3-small"),
            preset(p.kind).unwrap(),
            &req,
            Some("sk-1"),
        );
        assert_eq!(up.url, "https://api.openai.com/v1/embeddings");
        assert_eq!(
            up.headers,
            [
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), "Bearer sk-1".into())
            ]
        );
        assert_eq!(
            up.body,
            br#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"base64","dimensions":8,"user":"u"}"#
        );
        let p = provider(r#"{"kind":"azure","base_url":"https://eu.openai.azure.com"}"#);
        let up = build_embeddings_request(
            &target(&p, "emb-eu"),
            preset(p.kind).unwrap(),
            &req,
            Some("k"),
        );
        assert_eq!(
            up.url,
            "https://eu.openai.azure.com/openai/deployments/emb-eu/embeddings?api-version=2024-10-21"
        );
    }

    #[test]
    fn embeddings_usage_is_read_and_a_non_list_is_retryable() {
        let p = provider(r#"{"kind":"openai"}"#);
        let t = target(&p, "m");
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPw=="}],"model":"m","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        assert_eq!(
            read_embeddings_response(&t, body).unwrap(),
            Some(Usage::new(5, 0, None))
        );
        assert_eq!(
            read_embeddings_response(&t, br#"{"data":[]}"#).unwrap(),
            None
        );
        for bad in [&b"{\"id\": invalid"[..], br#"{"choices":[]}"#] {
            let e = read_embeddings_response(&t, bad).unwrap_err();
            assert!(e.is_retryable(), "{e:?}");
        }
    }

    fn run_stream(t: &mut PassThrough, input: &str) -> (String, Result<(), GatewayError>) {
        let mut parser = SseParser::new();
        parser.push(input.as_bytes());
        let mut out = vec![];
        while let Some(ev) = parser.finish() {
            if let Err(e) = t.on_event(ev, &mut out) {
                return (String::from_utf8(out).unwrap(), Err(e));
            }
        }
        let end = t.on_end(&mut out);
        (String::from_utf8(out).unwrap(), end)
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn usage_chunk_is_read_and_dropped_unless_the_client_asked() {
        let p = provider(r#"{"kind":"openai"}"#);
        let mut t = PassThrough::new(&target(&p, "m"), false);
        let (out, end) = run_stream(&mut t, STREAM);
        end.unwrap();
        assert_eq!(t.usage(), Some(Usage::new(5, 1, None)));
        assert!(!out.contains("prompt_tokens"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(out.matches("data: ").count(), 3);

        let mut t = PassThrough::new(&target(&p, "m"), true);
        let (out, _) = run_stream(&mut t, STREAM);
        assert!(out.contains("\"prompt_tokens\":5"), "{out}");
    }

    #[test]
    fn stream_cut_before_finish_is_an_error() {
        let p = provider(r#"{"kind":"openai"}"#);
        let mut t = PassThrough::new(&target(&p, "m"), false);
        let (out, end) = run_stream(
            &mut t,
            &STREAM[..STREAM
                .find("data: {\"choices\":[{\"index\":0,\"delta\":{}")
                .unwrap()],
        );
        assert!(out.contains("Hi"));
        assert!(matches!(end, Err(GatewayError::UpstreamUnreachable { .. })));
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn finished_stream_without_sentinel_is_completed() {
        let p = provider(r#"{"kind":"openai"}"#);
        let mut t = PassThrough::new(&target(&p, "m"), false);
        let (out, end) = run_stream(&mut t, &STREAM[..STREAM.find("data: [DONE]").unwrap()]);
        end.unwrap();
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn in_stream_error_becomes_an_upstream_error() {
        let p = provider(r#"{"kind":"openai"}"#);
        let mut t = PassThrough::new(&target(&p, "m"), false);
        let (_, end) = run_stream(
            &mut t,
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
        );
        match end {
            Err(GatewayError::Upstream { message, .. }) => assert_eq!(message, "overloaded"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_bodies_map_to_messages() {
        let e = error_from_body(
            "p",
            429,
            Some(2),
            br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
        );
        assert_eq!(e.retry_after(), Some(2));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("Rate limit reached"));
        let e = error_from_body("p", 502, None, b"<html>Bad Gateway</html>");
        assert!(e.to_string().contains("<html>Bad Gateway</html>"));
    }

    #[test]
    fn invalid_json_response_is_retryable() {
        let p = provider(r#"{"kind":"openai"}"#);
        let e = read_chat_response(&target(&p, "m"), b"{\"id\": invalid").unwrap_err();
        assert!(e.is_retryable());
        let u = read_chat_response(&target(&p, "m"), br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}}"#)
            .unwrap();
        assert_eq!(u, Some(Usage::new(1, 2, Some(1))));
    }
}
