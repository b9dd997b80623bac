//! Cloudflare Workers AI through the Worker's `AI` binding.
//!
//! Workers AI is reached two ways. Without a `binding` in its config, a
//! `workers-ai` provider is a preset of the OpenAI family (`openai.rs`):
//! `https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/v1`, a
//! bearer `CLOUDFLARE_API_TOKEN`. With one, requests go through the binding —
//! `env.AI.run(model, {messages, stream, ...})`, no egress, no token, on
//! Cloudflare's network — and this adapter maps them: the OpenAI request to
//! the binding's input, and its answer (a JSON object, or a stream of SSE
//! events `data: {"response":"..."}` ending `data: [DONE]`) back.
//!
//! The binding is I/O and lives in the edge; the seam stays the
//! [`crate::http::Upstream`]: [`build_chat_request`] makes a request to the
//! pseudo-URL `workers-ai:{binding}/{model}` whose body is the binding's
//! input, and the edge's upstream runs it on the binding instead of
//! fetching ([`parse_binding_url`]), answering with the binding's output
//! (or an error status from [`binding_error_status`]). Local `wrangler dev`
//! cannot reach Workers AI without an account, so the binding path is
//! tested here (its mappings) and not end to end; the REST preset is tested
//! end to end against the mock provider.
//!
//! # OpenAI parameters and the binding's input
//!
//! | OpenAI | binding input |
//! |---|---|
//! | `messages` (`system`/`developer`, `user`, `assistant`, `tool`) | `messages` of `{role, content}` (`developer` as `system`); text parts joined; an image or other part is a 400; assistant `tool_calls` and tool `tool_call_id` kept |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens` |
//! | `temperature`, `top_p`, `top_k`, `seed`, `frequency_penalty`, `presence_penalty`, `repetition_penalty` | the same names |
//! | `tools`, `response_format` | passed as given |
//! | `stream` | `stream` |
//! | `n` > 1 | 400 |
//! | anything else | dropped |
//!
//! Answers: `response` is the content (an object, as JSON mode answers, is
//! serialized), `tool_calls` (`{name, arguments}` or OpenAI's shape) become
//! `tool_calls`, `usage` is passed on.
//!
//! Order: constants, wire types, request building, response parsing,
//! stream decoding, error mapping, tests.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::{
    AssistantMessage, ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta,
    FinishReason, FunctionDelta, FunctionOut, Message, Role, ToolCallDelta, ToolCallOut, Usage,
};
use crate::config::{Location, Provider, ProviderKind};
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::sse::{DONE, SseEvent};

use super::{ChunkWriter, StreamTranslator, Target};

// ---- Constants ---------------------------------------------------------------

/// The scheme of the pseudo-URL the edge runs on the binding.
pub const BINDING_SCHEME: &str = "workers-ai:";

/// Sampling fields passed to the binding under the same name.
const PASSED_NUMBERS: [&str; 7] = [
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
];

/// A Workers AI jurisdiction preset: where the operator has arranged for
/// inference to stay (Cloudflare's data localization for the account); the
/// gateway cannot check it, so it is the operator's statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// The preset's name, as `region` in the config.
    pub code: &'static str,
    /// Its jurisdiction.
    pub jurisdiction: &'static str,
    /// Roughly its centre.
    pub location: Location,
}

/// The presets: `eu` and `us`.
pub const REGIONS: &[Region] = &[
    Region {
        code: "eu",
        jurisdiction: "eu",
        location: Location {
            lat: 50.0,
            lon: 8.0,
        },
    },
    Region {
        code: "us",
        jurisdiction: "us",
        location: Location {
            lat: 39.0,
            lon: -95.0,
        },
    },
];

/// A preset by name.
pub fn region(code: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.code == code)
}

/// Whether the provider runs on the Worker's own binding: inference on
/// Cloudflare's network, as near the caller as it gets — nearest-first
/// routing counts it as no distance at all.
pub fn runs_at_edge(p: &Provider) -> bool {
    p.kind == ProviderKind::WorkersAi && p.binding.is_some()
}

// ---- Wire types --------------------------------------------------------------

/// What `AI.run` answers for a text-generation model, whole or per stream
/// event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunOutput {
    response: Option<Value>,
    tool_calls: Vec<RunToolCall>,
    usage: Option<RunUsage>,
}

/// A tool call, in Workers AI's `{name, arguments}` or OpenAI's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunToolCall {
    id: Option<String>,
    name: Option<String>,
    arguments: Option<Value>,
    function: Option<RunFunction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunFunction {
    name: String,
    arguments: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(default)]
struct RunUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl RunToolCall {
    /// The name and the arguments as OpenAI's JSON string.
    fn into_parts(self) -> (Option<String>, String, String) {
        let (name, args) = match self.function {
            Some(f) => (f.name, f.arguments),
            None => (self.name.unwrap_or_default(), self.arguments),
        };
        let arguments = match args {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => "{}".to_owned(),
        };
        (self.id, name, arguments)
    }
}

// ---- Request building ----------------------------------------------------------

/// The pseudo-request the edge runs on the binding: `workers-ai:{binding}/{model}`
/// with the binding's input as its body.
pub fn build_chat_request(
    target: &Target<'_>,
    req: &ChatRequest<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    let binding = target.provider.binding.as_deref().unwrap_or("AI");
    let body = openai_request_to_binding_input(req)?;
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if req.stream {
        headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
    }
    Ok(UpstreamRequest {
        method: "POST",
        url: format!("{BINDING_SCHEME}{binding}/{}", target.model),
        headers,
        body,
    })
}

/// The binding and the model a pseudo-URL names, if it is one.
pub fn parse_binding_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix(BINDING_SCHEME)?
        .split_once('/')
        .filter(|(b, m)| !b.is_empty() && !m.is_empty())
}

/// The binding's input for an OpenAI chat request.
fn openai_request_to_binding_input(req: &ChatRequest<'_>) -> Result<Vec<u8>, GatewayError> {
    if req.parse_field::<Option<u64>>("n")?.is_some_and(|n| n > 1) {
        return Err(invalid("n > 1 is not supported by Workers AI", "n"));
    }
    let messages = req
        .messages()?
        .into_iter()
        .enumerate()
        .map(|(i, m)| openai_message_to_binding(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut input = Map::new();
    input.insert("messages".into(), Value::Array(messages));
    if req.stream {
        input.insert("stream".into(), Value::Bool(true));
    }
    if let Some(n) = req.max_tokens {
        input.insert("max_tokens".into(), n.into());
    }
    for field in PASSED_NUMBERS {
        if let Some(v) = req
            .parse_field::<Option<Value>>(field)?
            .filter(Value::is_number)
        {
            input.insert(field.into(), v);
        }
    }
    for field in ["tools", "response_format"] {
        if let Some(v) = req.parse_field::<Option<Value>>(field)? {
            input.insert(field.into(), v);
        }
    }
    serde_json::to_vec(&input).map_err(|e| GatewayError::Internal {
        message: format!("serializing a Workers AI input: {e}"),
    })
}

fn openai_message_to_binding(i: usize, m: Message) -> Result<Value, GatewayError> {
    let role = match m.role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => {
            return Err(invalid(
                "the legacy `function` role is not supported by Workers AI; use `tool`",
                &format!("messages[{i}].role"),
            ));
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match part {
                    ContentPart::Text { text: t } => text.push_str(&t),
                    ContentPart::ImageUrl { .. } | ContentPart::Other => {
                        return Err(invalid(
                            "only text parts are supported by Workers AI chat models",
                            &format!("messages[{i}].content[{j}]"),
                        ));
                    }
                }
            }
            text
        }
    };
    let mut out = Map::new();
    out.insert("role".into(), role.into());
    out.insert("content".into(), content.into());
    if let Some(calls) = m.tool_calls.filter(|c| !c.is_empty()) {
        let calls = calls
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                })
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = m.tool_call_id {
        out.insert("tool_call_id".into(), id.into());
    }
    Ok(Value::Object(out))
}

fn invalid(message: &str, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.to_owned(),
        param: Some(param.to_owned()),
    }
}

// ---- Response parsing ----------------------------------------------------------

/// Converts the binding's whole answer to a `chat.completion`, and reads
/// its usage.
pub fn chat_response(
    target: &Target<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
    let out: RunOutput =
        serde_json::from_slice(body).map_err(|e| GatewayError::UpstreamInvalidResponse {
            provider: target.name.to_owned(),
            message: format!("not a Workers AI answer: {e}"),
        })?;
    let id = format!("chatcmpl-wai-{:016x}", super::fnv1a(body));
    let tool_calls: Vec<ToolCallOut> = out
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(n, call)| {
            let (own_id, name, arguments) = call.into_parts();
            ToolCallOut {
                id: own_id.unwrap_or_else(|| format!("call_wai_{n}")),
                kind: "function",
                function: FunctionOut { name, arguments },
            }
        })
        .collect();
    let text = response_text(out.response);
    let finish = if tool_calls.is_empty() {
        FinishReason::Stop
    } else {
        FinishReason::ToolCalls
    };
    let usage = out
        .usage
        .map(|u| Usage::new(u.prompt_tokens, u.completion_tokens, None));
    let completion = ChatCompletion {
        id,
        object: "chat.completion",
        created: now_s,
        model: target.model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                // Null content is how OpenAI marks a tool-calls-only answer.
                content: if text.is_empty() && !tool_calls.is_empty() {
                    None
                } else {
                    Some(text)
                },
                tool_calls,
            },
            finish_reason: Some(finish),
            logprobs: None,
        }],
        usage,
    };
    let bytes = serde_json::to_vec(&completion).map_err(|e| GatewayError::Internal {
        message: format!("serializing a completion: {e}"),
    })?;
    Ok((bytes, usage))
}

/// `response` as text: a string as is, a JSON-mode object serialized.
fn response_text(response: Option<Value>) -> String {
    match response {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

// ---- Stream decoding ---------------------------------------------------------------

/// Translates the binding's SSE events (`{"response":"piece"}`, maybe
/// `usage` and `tool_calls`, then `[DONE]`) into OpenAI chunks.
pub struct BindingStream {
    provider: String,
    chunks: ChunkWriter,
    started: bool,
    calls: u32,
    usage: Option<Usage>,
    done: bool,
}

impl BindingStream {
    /// A translator for one stream; `now_s` (Unix seconds) dates its chunks.
    pub fn new(target: &Target<'_>, client_wants_usage: bool, now_s: u64) -> Self {
        BindingStream {
            provider: target.name.to_owned(),
            chunks: ChunkWriter {
                id: String::new(),
                model: target.model.to_owned(),
                created: now_s,
                client_wants_usage,
            },
            started: false,
            calls: 0,
            usage: None,
            done: false,
        }
    }

    fn start(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.chunks.id = format!("chatcmpl-wai-{:016x}", super::fnv1a(data.as_bytes()));
        let role = Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        };
        self.chunks.delta(out, role, None);
    }
}

impl StreamTranslator for BindingStream {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let data = ev.data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        if data == "[DONE]" {
            self.start(data, out);
            self.done = true;
            let finish = if self.calls > 0 {
                FinishReason::ToolCalls
            } else {
                FinishReason::Stop
            };
            self.chunks.delta(out, Delta::default(), Some(finish));
            return Ok(());
        }
        let event: RunOutput =
            serde_json::from_str(data).map_err(|e| GatewayError::UpstreamInvalidResponse {
                provider: self.provider.clone(),
                message: format!("invalid stream event: {e}"),
            })?;
        self.start(data, out);
        if let Some(u) = event.usage {
            self.usage = Some(Usage::new(u.prompt_tokens, u.completion_tokens, None));
        }
        let text = response_text(event.response);
        if !text.is_empty() {
            let delta = Delta {
                content: Some(&text),
                ..Delta::default()
            };
            self.chunks.delta(out, delta, None);
        }
        for call in event.tool_calls {
            let (own_id, name, arguments) = call.into_parts();
            let id = own_id.unwrap_or_else(|| format!("call_wai_{}", self.calls));
            let delta = Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: self.calls,
                    id: Some(&id),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(&name),
                        arguments: &arguments,
                    },
                }]),
                ..Delta::default()
            };
            self.chunks.delta(out, delta, None);
            self.calls += 1;
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if !self.done {
            return Err(GatewayError::UpstreamUnreachable {
                provider: self.provider.clone(),
                message: "stream ended before [DONE]".into(),
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

/// The HTTP status a binding failure stands for, from its message (the
/// binding throws `AiError`s whose text carries Workers AI's error code):
/// capacity and rate limits are 429 (another target, and cool this one),
/// input the model refuses is 400 (the caller's), an unknown model 404,
/// anything else 500 (another target).
pub fn binding_error_status(message: &str) -> u16 {
    let has = |needles: &[&str]| needles.iter().any(|n| message.contains(n));
    if has(&[
        "3040",
        "3036",
        "Capacity",
        "capacity",
        "rate limit",
        "Rate limit",
    ]) {
        429
    } else if has(&[
        "5006",
        "Input validation",
        "oneOf",
        "must have required property",
    ]) {
        400
    } else if has(&["5007", "No such model", "model not found"]) {
        404
    } else {
        500
    }
}

/// The body the edge answers a binding failure with: OpenAI's error shape,
/// which [`super::openai::error_from_body`] reads.
pub fn binding_error_body(message: &str) -> Vec<u8> {
    serde_json::json!({"error": {"message": format!("Workers AI: {message}")}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sse::SseParser;

    fn config() -> Config {
        Config::from_json(
            r#"{"version":1,
              "providers":{"wai":{"kind":"workers-ai","binding":"AI","region":"eu"},
                           "rest":{"kind":"workers-ai","account_id":"abc123"}},
              "models":{"m":{"targets":[{"provider":"wai","model":"@cf/meta/llama-3.1-8b-instruct"}]}}}"#,
        )
        .unwrap()
    }

    fn target(c: &Config) -> Target<'_> {
        Target {
            name: "wai",
            provider: &c.providers["wai"],
            model: "@cf/meta/llama-3.1-8b-instruct",
        }
    }

    /// The golden file `tests/fixtures/workers_ai/{name}`; with
    /// `UPDATE_FIXTURES=1`, `actual` is written to it first.
    fn golden(name: &str, actual: Option<&str>) -> String {
        let path = format!(
            "{}/tests/fixtures/workers_ai/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        if let Some(actual) = actual.filter(|_| std::env::var_os("UPDATE_FIXTURES").is_some()) {
            std::fs::write(&path, actual).unwrap();
        }
        std::fs::read_to_string(&path).unwrap()
    }

    fn pretty(json: &[u8]) -> String {
        let v: Value = serde_json::from_slice(json).unwrap();
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    }

    #[test]
    fn golden_binding_input_answer_and_stream_of_a_tool_round_trip() {
        let c = config();
        let t = target(&c);
        let body = golden("request_tools.openai.json", None);
        let up = build_chat_request(&t, &ChatRequest::parse(body.as_bytes()).unwrap()).unwrap();
        let input = pretty(&up.body);
        assert_eq!(input, golden("request_tools.binding.json", Some(&input)));

        let answer = golden("response_tool.binding.json", None);
        let (completion, _) = chat_response(&t, answer.as_bytes(), 1_700_000_000).unwrap();
        let completion = pretty(&completion);
        assert_eq!(
            completion,
            golden("response_tool.openai.json", Some(&completion))
        );

        let sse = golden("stream_tool.binding.sse", None);
        let whole = translate(&sse, 0, true).unwrap();
        for split in 1..sse.len() {
            assert_eq!(
                translate(&sse, split, true).unwrap(),
                whole,
                "split {split}"
            );
        }
        assert_eq!(whole, golden("stream_tool.openai.sse", Some(&whole)));
    }

    #[test]
    fn the_request_runs_on_the_binding_with_mapped_input() {
        let c = config();
        let body = br#"{"model":"m","stream":true,"max_tokens":64,"temperature":0.2,"seed":7,"logit_bias":{"1":2},
            "messages":[{"role":"developer","content":"Be brief."},
                        {"role":"user","content":[{"type":"text","text":"Weather "},{"type":"text","text":"in Paris?"}]},
                        {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                        {"role":"tool","tool_call_id":"c1","content":"sunny"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#;
        let req = ChatRequest::parse(body).unwrap();
        let up = build_chat_request(&target(&c), &req).unwrap();
        assert_eq!(up.url, "workers-ai:AI/@cf/meta/llama-3.1-8b-instruct");
        assert_eq!(
            parse_binding_url(&up.url),
            Some(("AI", "@cf/meta/llama-3.1-8b-instruct"))
        );
        assert!(up.wants_stream());
        let input: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            input,
            serde_json::json!({
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                ],
                "stream": true,
                "max_tokens": 64,
                "temperature": 0.2,
                "seed": 7,
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            })
        );
    }

    #[test]
    fn images_and_several_choices_are_refused_naming_the_parameter() {
        let c = config();
        let param =
            |body: &[u8]| match build_chat_request(&target(&c), &ChatRequest::parse(body).unwrap())
            {
                Err(GatewayError::InvalidRequest { param, .. }) => param.unwrap(),
                other => panic!("expected a 400, got {other:?}"),
            };
        assert_eq!(
            param(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#),
            "messages[0].content[0]"
        );
        assert_eq!(
            param(br#"{"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}"#),
            "n"
        );
    }

    #[test]
    fn a_whole_answer_becomes_a_chat_completion() {
        let c = config();
        let (body, usage) = chat_response(
            &target(&c),
            br#"{"response":"Sunny in Paris.","usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}"#,
            1_700_000_000,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "@cf/meta/llama-3.1-8b-instruct");
        assert_eq!(v["choices"][0]["message"]["content"], "Sunny in Paris.");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 16);
        assert_eq!(usage.unwrap().completion_tokens, 4);

        let (body, _) = chat_response(
            &target(&c),
            br#"{"response":null,"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#,
            0,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(call["id"], "call_wai_0");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

        let (body, _) = chat_response(&target(&c), br#"{"response":{"city":"Paris"}}"#, 0).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "{\"city\":\"Paris\"}"
        );
        assert!(chat_response(&target(&c), b"<html>", 0).is_err());
    }

    /// Runs an SSE text through the translator, split at `split`.
    fn translate(sse: &str, split: usize, usage: bool) -> Result<String, GatewayError> {
        let c = config();
        let mut t = BindingStream::new(&target(&c), usage, 1);
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for part in [&sse.as_bytes()[..split], &sse.as_bytes()[split..]] {
            parser.push(part);
            while let Some(ev) = parser.next_event() {
                t.on_event(ev, &mut out)?;
            }
        }
        t.on_end(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_stream_translates_at_any_split() {
        let sse = "data: {\"response\":\"Sun\",\"p\":\"abc\"}\n\ndata: {\"response\":\"ny.\"}\n\ndata: {\"response\":\"\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let whole = translate(sse, 0, true).unwrap();
        for split in 1..sse.len() {
            assert_eq!(translate(sse, split, true).unwrap(), whole, "split {split}");
        }
        let chunks: Vec<Value> = whole
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Sunny.");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
        assert!(whole.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn a_stream_cut_before_done_is_a_failure_and_tool_calls_stream_whole() {
        assert!(translate("data: {\"response\":\"Sun\"}\n\n", 0, false).is_err());
        let out = translate(
            "data: {\"tool_calls\":[{\"name\":\"get_time\",\"arguments\":{\"city\":\"Oslo\"}}]}\n\ndata: [DONE]\n\n",
            0,
            false,
        )
        .unwrap();
        assert!(out.contains(r#""name":"get_time""#), "{out}");
        assert!(
            out.contains(r#""arguments":"{\"city\":\"Oslo\"}""#),
            "{out}"
        );
        assert!(out.contains(r#""finish_reason":"tool_calls""#));
    }

    #[test]
    fn binding_failures_map_to_statuses_worth_acting_on() {
        assert_eq!(
            binding_error_status("AiError: 3040: Capacity temporarily exceeded"),
            429
        );
        assert_eq!(
            binding_error_status("AiError: 5006: Error: oneOf at '/' not met"),
            400
        );
        assert_eq!(binding_error_status("AiError: No such model @cf/x"), 404);
        assert_eq!(
            binding_error_status("InferenceUpstreamError: connection reset"),
            500
        );
        let body: Value = serde_json::from_slice(&binding_error_body("oops")).unwrap();
        assert_eq!(body["error"]["message"], "Workers AI: oops");
    }

    #[test]
    fn presets_and_validation() {
        let c = config();
        assert_eq!(c.providers["wai"].jurisdiction.as_deref(), Some("eu"));
        assert!(runs_at_edge(&c.providers["wai"]));
        assert!(!runs_at_edge(&c.providers["rest"]));
        let errors = |p: &str| match Config::from_json(&format!(
            r#"{{"version":1,"providers":{{"a":{p}}},"models":{{"m":{{"targets":[{{"provider":"a","model":"x"}}]}}}}}}"#
        )) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            errors(r#"{"kind":"workers-ai"}"#),
            [
                "providers.a.account_id: required for kind WorkersAi without a binding (the account of the REST endpoint)"
            ]
        );
        assert_eq!(
            errors(r#"{"kind":"workers-ai","binding":"A I","api_key_secret":"T"}"#),
            [
                r#"providers.a.binding: must be a binding name of letters, digits and _, got "A I""#,
                "providers.a.api_key_secret: a Workers AI binding takes no token; name a secret only for the REST endpoint",
            ]
        );
        assert_eq!(
            errors(r#"{"kind":"openai","binding":"AI"}"#),
            ["providers.a.binding: only kind WorkersAi takes `binding`, not Openai"]
        );
    }
}
