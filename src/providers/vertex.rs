//! Google Vertex AI: Gemini and Anthropic models in one location of one
//! Google Cloud project, authorized by a service account.
//!
//! Not a wire format of its own: Gemini models take the Gemini body
//! ([`super::gemini`]) and Anthropic's models the Messages body
//! ([`super::anthropic`]), and answer in those formats, so their adapters
//! translate both ways. A Vertex target differs only in:
//!
//! | | Gemini on Vertex | Claude on Vertex |
//! |---|---|---|
//! | URL | `{host}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` | `…/publishers/anthropic/models/{model}:rawPredict`, `:streamRawPredict` |
//! | body | as the Gemini API | as Messages, without `model` (the URL names it), with `"anthropic_version": "vertex-2023-10-16"` |
//! | auth | `Authorization: Bearer <access token>` | the same |
//! | errors | Google's `{"error":{code,message,status}}` | Google's for the platform (quota, auth), Anthropic's for the model: both carry `error.message` |
//!
//! The host is the location's ([`crate::google::regions::endpoint`]):
//! `{region}-aiplatform.googleapis.com`, `aiplatform.{eu|us}.rep.googleapis.com`
//! for the multi-regions, `aiplatform.googleapis.com` for `global`; a
//! `base_url` replaces it (Private Service Connect, the mock provider).
//! The publisher is told by the model id: `claude-*` is Anthropic's,
//! anything else Google's.
//!
//! The access token comes from the service-account key file in the secret
//! ([`DEFAULT_SECRET`] unless `api_key_secret` names another), exchanged and
//! cached per isolate by [`crate::google::oauth`] ([`access_token`]).
//!
//! Order: constants, request building, response parsing, stream decoding,
//! error mapping, tests.

use crate::api::{ChatRequest, Usage};
use crate::error::GatewayError;
use crate::google::{oauth, regions};
use crate::http::{Upstream, UpstreamRequest};

use super::{Target, Translator, anthropic, gemini};

// ---- Constants ---------------------------------------------------------------

/// The secret holding the service-account key file, by default.
pub const DEFAULT_SECRET: &str = "GOOGLE_SERVICE_ACCOUNT_JSON";

/// The Messages API version Anthropic's models on Vertex take, in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Whose format a model on Vertex speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// Google's Gemini models: the Gemini format.
    Google,
    /// Anthropic's Claude models: the Messages format.
    Anthropic,
}

impl Publisher {
    /// The publisher of a model id: Claude models are Anthropic's.
    pub fn of(model: &str) -> Publisher {
        if model.starts_with("claude") {
            Publisher::Anthropic
        } else {
            Publisher::Google
        }
    }

    /// The publisher's segment in the model's resource name.
    fn segment(self) -> &'static str {
        match self {
            Publisher::Google => "google",
            Publisher::Anthropic => "anthropic",
        }
    }
}

// ---- Request building ----------------------------------------------------------

/// The provider's access token if this isolate holds a good one.
pub fn cached_access_token(service_account_json: Option<&str>, now_s: u64) -> Option<String> {
    oauth::cached_token(service_account_json?, now_s)
}

/// An access token for the provider's service account: from this isolate's
/// cache, or exchanged through `upstream` ([`oauth::access_token`]).
pub async fn access_token<U: Upstream>(
    upstream: &U,
    target: &Target<'_>,
    service_account_json: Option<&str>,
    now_s: u64,
) -> Result<String, GatewayError> {
    // Routing enables the provider only when its secret is set.
    let json = service_account_json.ok_or_else(|| GatewayError::Internal {
        message: format!("provider `{}`: no service account", target.name),
    })?;
    oauth::access_token(upstream, target.name, json, now_s).await
}

/// The upstream request for a chat completion, authorized by
/// `access_token`.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    access_token: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    let p = target.provider;
    let missing = |field: &str| GatewayError::Internal {
        message: format!("provider `{}` has no {field}", target.name),
    };
    // Validation requires both for this kind.
    let region = p.region.as_deref().ok_or_else(|| missing("region"))?;
    let project = p.project.as_deref().ok_or_else(|| missing("project"))?;
    let host = match &p.base_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => regions::endpoint(region),
    };
    let publisher = Publisher::of(target.model);
    let (method, body) = match (publisher, req.stream) {
        (Publisher::Google, false) => ("generateContent", gemini::openai_request_to_gemini(req)?),
        (Publisher::Google, true) => (
            "streamGenerateContent?alt=sse",
            gemini::openai_request_to_gemini(req)?,
        ),
        (Publisher::Anthropic, stream) => (
            if stream {
                "streamRawPredict"
            } else {
                "rawPredict"
            },
            anthropic::chat_request_to_platform_body(req, ANTHROPIC_VERSION)?,
        ),
    };
    let model = gemini::model_path_segment(target.model);
    let mut headers = Vec::with_capacity(4 + p.headers.len());
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    if req.stream {
        headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
    }
    if let Some(token) = access_token {
        headers.push(("authorization".to_owned(), format!("Bearer {token}")));
    }
    headers.extend(p.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(UpstreamRequest {
        method: "POST",
        url: format!(
            "{host}/v1/projects/{project}/locations/{region}/publishers/{}/models/{model}:{method}",
            publisher.segment()
        ),
        headers,
        body,
    })
}

// ---- Response parsing ----------------------------------------------------------

/// Converts a 2xx non-stream body to the client's body, and reads usage:
/// by the publisher's format.
pub fn chat_response(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    match Publisher::of(target.model) {
        Publisher::Google => gemini::read_chat_response(target, body, now_s),
        Publisher::Anthropic => anthropic::chat_response(target, req, body, now_s),
    }
}

// ---- Stream decoding ----------------------------------------------------------

/// The translator of a streamed answer: both publishers stream SSE in their
/// own format.
pub fn stream_translator(target: &Target<'_>, req: &ChatRequest<'_>, now_s: u64) -> Translator {
    match Publisher::of(target.model) {
        Publisher::Google => Translator::Sse(Box::new(gemini::GeminiStream::new(
            target,
            req.include_usage,
            now_s,
        ))),
        Publisher::Anthropic => {
            Translator::Sse(Box::new(anthropic::EventsToChunks::new(target, req, now_s)))
        }
    }
}

// ---- Error mapping ----------------------------------------------------------

/// Maps a non-2xx answer. Vertex answers platform errors (quota, auth, a
/// model not enabled) in Google's envelope and passes the model's own
/// errors through; both put the text in `error.message`, which Google's
/// mapper reads, and the status decides the rest.
pub fn error_from_body(
    provider: &str,
    status: u16,
    retry_after: Option<u64>,
    body: &[u8],
) -> GatewayError {
    gemini::error_from_body(provider, status, retry_after, body)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use futures::executor::block_on;
    use futures::stream;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::Config;
    use crate::gateway::{self, Ctx, ReplyBody};
    use crate::http::{Sleep, UpstreamResponse};
    use crate::routing::Health;

    const ACCOUNT: &str = r#"{"type":"service_account","project_id":"p","private_key_id":"k1",
      "private_key":"-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n",
      "client_email":"gw@p.iam.gserviceaccount.com","token_uri":"https://oauth2.example/token"}"#;

    fn config(base_url: Option<&str>) -> Config {
        let base = base_url.map_or(String::new(), |u| format!(r#","base_url":"{u}""#));
        Config::from_json(&format!(
            r#"{{"version":1,
              "providers":{{"vx":{{"kind":"vertex","region":"europe-west4","project":"acme-prod"{base}}}}},
              "models":{{"gemini":{{"targets":[{{"provider":"vx","model":"gemini-2.5-flash"}}]}},
                        "claude":{{"targets":[{{"provider":"vx","model":"claude-sonnet-4-5@20250929"}}]}}}}}}"#
        ))
        .unwrap()
    }

    fn target<'c>(c: &'c Config, model: &'c str) -> Target<'c> {
        Target {
            name: "vx",
            provider: &c.providers["vx"],
            model,
        }
    }

    fn chat(body: &str) -> ChatRequest<'_> {
        ChatRequest::parse(body.as_bytes()).unwrap()
    }

    const HELLO: &str =
        r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":50}"#;
    const HELLO_STREAM: &str =
        r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;

    /// Compares `actual` with the golden file `tests/fixtures/vertex/{name}`
    /// (`UPDATE_FIXTURES=1` writes it instead).
    fn golden(name: &str, actual: &str) {
        let path = format!(
            "{}/tests/fixtures/vertex/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert_eq!(actual, want, "{name}");
    }

    fn pretty(json: &[u8]) -> String {
        let v: Value = serde_json::from_slice(json).unwrap();
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    }

    #[test]
    fn golden_claude_and_gemini_bodies_of_a_streamed_tool_round_trip() {
        let c = config(None);
        let body = std::fs::read_to_string(format!(
            "{}/tests/fixtures/vertex/request_tools.openai.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let req = chat(&body);
        for (model, file, method) in [
            (
                "claude-sonnet-4-5@20250929",
                "request_tools.claude.json",
                ":streamRawPredict",
            ),
            (
                "gemini-2.5-flash",
                "request_tools.gemini.json",
                ":streamGenerateContent?alt=sse",
            ),
        ] {
            let up = build_chat_request(&target(&c, model), &req, Some("t")).unwrap();
            assert!(up.url.ends_with(method), "{}", up.url);
            golden(file, &pretty(&up.body));
        }
    }

    #[test]
    fn region_presets_make_europe_west4_an_eu_deployment() {
        let c = config(None);
        let p = &c.providers["vx"];
        assert_eq!(p.jurisdiction.as_deref(), Some("eu"));
        assert_eq!(p.location.unwrap().lat, 53.44);
    }

    #[test]
    fn gemini_goes_to_the_regional_generate_content_url_with_a_bearer_token() {
        let c = config(None);
        let up = build_chat_request(
            &target(&c, "gemini-2.5-flash"),
            &chat(HELLO),
            Some("ya29.t"),
        )
        .unwrap();
        assert_eq!(
            up.url,
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/acme-prod/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
        );
        assert!(
            up.headers
                .contains(&("authorization".into(), "Bearer ya29.t".into()))
        );
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["contents"][0]["parts"][0]["text"], "Hi");
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 50);
        let stream = build_chat_request(
            &target(&c, "gemini-2.5-flash"),
            &chat(HELLO_STREAM),
            Some("t"),
        )
        .unwrap();
        assert!(stream.url.ends_with(":streamGenerateContent?alt=sse"));
        assert!(stream.wants_stream());
    }

    #[test]
    fn claude_goes_to_raw_predict_with_the_vertex_version_in_the_body_and_no_model() {
        let c = config(None);
        let t = target(&c, "claude-sonnet-4-5@20250929");
        let up = build_chat_request(&t, &chat(HELLO), Some("t")).unwrap();
        assert_eq!(
            up.url,
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/acme-prod/locations/europe-west4/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
        );
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["anthropic_version"], ANTHROPIC_VERSION);
        assert!(body.get("model").is_none(), "the URL names the model");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["messages"][0]["content"], "Hi");
        let stream = build_chat_request(&t, &chat(HELLO_STREAM), Some("t")).unwrap();
        assert!(stream.url.ends_with(":streamRawPredict"));
        let body: Value = serde_json::from_slice(&stream.body).unwrap();
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn multi_region_and_global_locations_use_their_hosts() {
        for (region, host) in [
            ("eu", "https://aiplatform.eu.rep.googleapis.com"),
            ("global", "https://aiplatform.googleapis.com"),
        ] {
            let c = Config::from_json(&format!(
                r#"{{"version":1,"providers":{{"vx":{{"kind":"vertex","region":"{region}","project":"p"}}}},
                    "models":{{"m":{{"targets":[{{"provider":"vx","model":"gemini-2.5-pro"}}]}}}}}}"#
            ))
            .unwrap();
            let up = build_chat_request(&target(&c, "gemini-2.5-pro"), &chat(HELLO), None).unwrap();
            assert!(
                up.url
                    .starts_with(&format!("{host}/v1/projects/p/locations/{region}/")),
                "{}",
                up.url
            );
        }
    }

    #[test]
    fn vertex_providers_are_validated() {
        let errors = |providers: &str| match Config::from_json(&format!(
            r#"{{"version":1,"providers":{providers},"models":{{"m":{{"targets":[{{"provider":"a","model":"x"}}]}}}}}}"#
        )) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            errors(r#"{"a":{"kind":"vertex"}}"#),
            [
                "providers.a.region: required for kind Vertex (the Vertex AI location: europe-west4, eu, global, ...)",
                "providers.a.project: required for kind Vertex (the Google Cloud project id)",
            ]
        );
        let e = errors(
            r#"{"a":{"kind":"vertex","region":"global","project":"p","jurisdiction":"eu"}}"#,
        );
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "providers.a.jurisdiction: region `global` processes requests anywhere"
            )
        );
        assert_eq!(
            errors(r#"{"a":{"kind":"openai","project":"p"}}"#),
            ["providers.a.project: only kind Vertex takes a Google Cloud project, not Openai"]
        );
        assert!(
            errors(r#"{"a":{"kind":"vertex","region":"us-east5","project":"acme-123"}}"#)
                .is_empty()
        );
    }

    /// A scripted upstream: the token endpoint and Vertex, in order; it
    /// records requests and signs with a fixed "signature".
    struct Scripted {
        replies: RefCell<VecDeque<(u16, &'static str, Vec<u8>)>>,
        seen: RefCell<Vec<UpstreamRequest>>,
        signed: RefCell<Vec<Vec<u8>>>,
    }

    impl Scripted {
        fn new(replies: Vec<(u16, &'static str, Vec<u8>)>) -> Self {
            Scripted {
                replies: RefCell::new(replies.into()),
                seen: RefCell::new(vec![]),
                signed: RefCell::new(vec![]),
            }
        }
    }

    impl Upstream for Scripted {
        async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
            self.seen.borrow_mut().push(req);
            let (status, content_type, body) = self
                .replies
                .borrow_mut()
                .pop_front()
                .ok_or("no scripted reply")?;
            Ok(UpstreamResponse {
                status,
                headers: vec![("content-type".into(), content_type.into())],
                body: Box::pin(stream::iter(vec![Ok(body)])),
                native: None,
            })
        }

        fn sleep(&self, _ms: u64) -> Sleep {
            Box::pin(futures::future::pending())
        }

        async fn sign_rs256(&self, pkcs8_der: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
            assert_eq!(pkcs8_der, [0, 1, 2, 3, 4, 5], "the PEM's DER");
            self.signed.borrow_mut().push(message.to_vec());
            Ok(vec![0xAB; 4])
        }
    }

    fn run(up: &Scripted, c: &Config, body: &str, now_ms: u64) -> gateway::Reply {
        let secret = |name: &str| (name == DEFAULT_SECRET).then(|| ACCOUNT.to_owned());
        let clock = move || now_ms;
        let health = Health::new();
        let ctx = Ctx {
            now_ms,
            clock: &clock,
            secret: &secret,
            health: &health,
        };
        block_on(gateway::chat_completions(up, c, &ctx, body.as_bytes())).unwrap()
    }

    fn full(reply: gateway::Reply) -> Value {
        match reply.body {
            ReplyBody::Full(b) => serde_json::from_slice(&b).unwrap(),
            ReplyBody::Stream(_) | ReplyBody::Native(_) => panic!("expected a whole body"),
        }
    }

    const TOKEN: &str = r#"{"access_token":"ya29.first","expires_in":3599,"token_type":"Bearer"}"#;
    const GEMINI_ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hallo"}]},"finishReason":"STOP"}],
        "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4},"modelVersion":"gemini-2.5-flash"}"#;
    const CLAUDE_ANSWER: &str = r#"{"id":"msg_vrtx_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
        "content":[{"type":"text","text":"Bonjour"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#;

    #[test]
    fn the_token_is_exchanged_once_then_reused_until_shortly_before_expiry() {
        let c = config(Some("https://vertex.example"));
        let up = Scripted::new(vec![
            (200, "application/json", TOKEN.into()),
            (200, "application/json", GEMINI_ANSWER.into()),
            (200, "application/json", CLAUDE_ANSWER.into()),
            (
                200,
                "application/json",
                br#"{"access_token":"ya29.second","expires_in":3599}"#.to_vec(),
            ),
            (200, "application/json", GEMINI_ANSWER.into()),
        ]);
        let t0 = 1_800_000_000_000;
        let gemini = full(run(&up, &c, &HELLO.replace("\"m\"", "\"gemini\""), t0));
        assert_eq!(gemini["choices"][0]["message"]["content"], "Hallo");
        let claude = full(run(
            &up,
            &c,
            &HELLO.replace("\"m\"", "\"claude\""),
            t0 + 60_000,
        ));
        assert_eq!(claude["choices"][0]["message"]["content"], "Bonjour");
        // Five minutes before the hour is up, a new token is fetched.
        let later = t0 + (3599 - oauth::REFRESH_BEFORE_EXPIRY_S) * 1000;
        run(&up, &c, &HELLO.replace("\"m\"", "\"gemini\""), later);

        let seen = up.seen.borrow();
        let urls: Vec<&str> = seen.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(urls[0], "https://oauth2.example/token");
        assert!(urls[1].ends_with("/publishers/google/models/gemini-2.5-flash:generateContent"));
        assert!(
            urls[2].ends_with("/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict")
        );
        assert_eq!(urls[3], "https://oauth2.example/token", "renewed");
        let bearer = |i: usize| {
            seen[i]
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(bearer(1).as_deref(), Some("Bearer ya29.first"));
        assert_eq!(bearer(2).as_deref(), Some("Bearer ya29.first"), "cached");
        assert_eq!(bearer(4).as_deref(), Some("Bearer ya29.second"));
        // The token request carries the signed JWT: signing input + signature.
        let form = String::from_utf8(seen[0].body.clone()).unwrap();
        let jwt = form.split("assertion=").nth(1).unwrap();
        let signed = up.signed.borrow();
        assert_eq!(signed.len(), 2);
        assert_eq!(
            jwt,
            format!("{}.q6urqw", String::from_utf8(signed[0].clone()).unwrap())
        );
    }

    #[test]
    fn a_refused_service_account_is_an_auth_failure_and_a_down_token_endpoint_fails_over() {
        let c = config(Some("https://vertex.example"));
        let refused = Scripted::new(vec![(
            400,
            "application/json",
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#.to_vec(),
        )]);
        let secret = |name: &str| (name == DEFAULT_SECRET).then(|| ACCOUNT.replace("k1", "k2"));
        let clock = || 1_000_000;
        let health = Health::new();
        let ctx = Ctx {
            now_ms: 1_000_000,
            clock: &clock,
            secret: &secret,
            health: &health,
        };
        let body = HELLO.replace("\"m\"", "\"gemini\"");
        let e = block_on(gateway::chat_completions(
            &refused,
            &c,
            &ctx,
            body.as_bytes(),
        ))
        .err()
        .unwrap();
        assert_eq!(e.status(), 502);
        assert!(!e.is_retryable());
        let text = String::from_utf8(e.to_body()).unwrap();
        assert!(
            text.contains("upstream_auth_failed") && text.contains("Invalid JWT Signature"),
            "{text}"
        );
        assert!(!text.contains("PRIVATE KEY"));

        let down = Scripted::new(vec![(503, "text/plain", b"unavailable".to_vec())]);
        let secret = |name: &str| (name == DEFAULT_SECRET).then(|| ACCOUNT.replace("k1", "k3"));
        let ctx = Ctx {
            secret: &secret,
            ..ctx
        };
        let e = block_on(gateway::chat_completions(&down, &c, &ctx, body.as_bytes()))
            .err()
            .unwrap();
        assert!(e.is_retryable(), "{e:?}");
    }

    #[test]
    fn streams_translate_by_publisher() {
        let c = config(Some("https://vertex.example"));
        let claude_sse = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Salut\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let gemini_sse = "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hoi\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1}}\r\n\r\n";
        let up = Scripted::new(vec![
            (200, "application/json", TOKEN.into()),
            (200, "text/event-stream", claude_sse.into()),
            (200, "text/event-stream", gemini_sse.into()),
        ]);
        for (model, text) in [("claude", "Salut"), ("gemini", "Hoi")] {
            let reply = run(
                &up,
                &c,
                &HELLO_STREAM.replace("\"m\"", &format!("\"{model}\"")),
                2_000_000_000_000,
            );
            let ReplyBody::Stream(s) = reply.body else {
                panic!("a stream")
            };
            let bytes: Vec<u8> = block_on(futures::StreamExt::collect::<Vec<_>>(s))
                .into_iter()
                .flat_map(Result::unwrap)
                .collect();
            let out = String::from_utf8(bytes).unwrap();
            assert!(out.contains(&format!("\"content\":\"{text}\"")), "{out}");
            assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        }
        let seen = up.seen.borrow();
        assert!(seen[1].url.ends_with(":streamRawPredict"));
        assert!(seen[2].url.ends_with(":streamGenerateContent?alt=sse"));
    }

    #[test]
    fn platform_and_model_errors_both_map_by_status() {
        let e = error_from_body(
            "vx",
            429,
            Some(3),
            br#"{"error":{"code":429,"message":"Quota exceeded for aiplatform.googleapis.com","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(3));
        let e = error_from_body(
            "vx",
            529,
            None,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(e.is_retryable());
        assert!(
            String::from_utf8(e.to_body())
                .unwrap()
                .contains("Overloaded")
        );
        let e = error_from_body(
            "vx",
            400,
            None,
            &serde_json::to_vec(
                &json!({"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}),
            )
            .unwrap(),
        );
        assert_eq!(e.status(), 400);
    }
}
