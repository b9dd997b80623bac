//! The other client protocols through the whole request path, natively:
//! prepare, route, dispatch with failover and the stream commit, over a
//! scripted upstream; pass-through and translated targets alike.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use futures::executor::block_on;
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::api::Usage;
use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::{
    self, Caller, Ctx, Prepare, Reply, ReplyBody, StreamEnd, StreamOutcome, settlement,
};
use crate::http::{ByteStream, Upstream, UpstreamRequest, UpstreamResponse};
use crate::ingress::Ingress;
use crate::limits::Money;
use crate::routing::{Health, Origin};

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

/// What the fake upstream does for one request.
enum Script {
    /// A status and a body in these chunks.
    Reply(u16, Vec<Vec<u8>>),
    /// 200, these chunks, then the connection breaks.
    Broken(Vec<Vec<u8>>),
}

#[derive(Default)]
struct Scripted {
    script: RefCell<VecDeque<Script>>,
    seen: RefCell<Vec<UpstreamRequest>>,
}

impl Scripted {
    fn new(script: Vec<Script>) -> Self {
        Scripted {
            script: RefCell::new(script.into()),
            seen: RefCell::default(),
        }
    }

    fn seen(&self, i: usize) -> UpstreamRequest {
        self.seen.borrow()[i].clone()
    }
}

impl Upstream for Scripted {
    async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
        self.seen.borrow_mut().push(req);
        let step = self
            .script
            .borrow_mut()
            .pop_front()
            .expect("no scripted reply left");
        let (status, body): (u16, ByteStream) = match step {
            Script::Reply(status, chunks) => {
                (status, Box::pin(stream::iter(chunks.into_iter().map(Ok))))
            }
            Script::Broken(chunks) => {
                let items = chunks
                    .into_iter()
                    .map(Ok)
                    .chain([Err("connection reset".to_owned())]);
                (200, Box::pin(stream::iter(items)))
            }
        };
        Ok(UpstreamResponse {
            status,
            headers: vec![],
            body,
            native: None,
        })
    }

    fn sleep(&self, _ms: u64) -> crate::http::Sleep {
        Box::pin(futures::future::pending())
    }
}

const CONFIG: &str = r#"{"version":1,
  "providers":{"anthropic":{"kind":"anthropic","base_url":"http://claude.test","api_key_secret":"KEY",
                 "models":{"claude-x":{"input_per_mtok":3,"output_per_mtok":15,"cached_input_per_mtok":0.3}}},
               "beta":{"kind":"anthropic","base_url":"http://claude2.test","api_key_secret":"KEY","headers":{"anthropic-beta":"operator-feature"}},
               "openai":{"kind":"openai","base_url":"http://openai.test/v1","api_key_secret":"KEY"},
               "local":{"kind":"openai-compatible","base_url":"http://local.test/v1"},
               "gemini":{"kind":"gemini","base_url":"http://gemini.test/v1beta","api_key_secret":"KEY"},
               "demo":{"kind":"mock"}},
  "models":{"claude":{"targets":[{"provider":"anthropic","model":"claude-x"}]},
            "claude-beta":{"targets":[{"provider":"beta","model":"claude-x"}]},
            "claude-twice":{"targets":[{"provider":"anthropic","model":"claude-x"},{"provider":"beta","model":"claude-y"}]},
            "claude-or-local":{"targets":[{"provider":"anthropic","model":"claude-x"},{"provider":"local","model":"llama"}]},
            "local-or-claude":{"targets":[{"provider":"local","model":"llama"},{"provider":"anthropic","model":"claude-x"}]},
            "local":{"targets":[{"provider":"local","model":"llama"}]},
            "gemini":{"targets":[{"provider":"gemini","model":"gemini-2.5-flash"}]},
            "gpt":{"targets":[{"provider":"openai","model":"gpt-5"}]},
            "gpt-or-claude":{"targets":[{"provider":"openai","model":"gpt-5"},{"provider":"anthropic","model":"claude-x"}]},
            "demo":{"targets":[{"provider":"demo","model":"demo-1"}]}}}"#;

fn secret(name: &str) -> Option<String> {
    (name == "KEY").then(|| "sk-provider-key".to_owned())
}

/// Runs one request through prepare, route and dispatch, the client
/// sending `headers`; errors come back as the edge renders them.
fn run_with(
    up: &Scripted,
    prepare: Prepare,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
    end: Option<StreamEnd>,
) -> Reply {
    let config = Config::from_json(CONFIG).unwrap();
    let health = Health::new();
    let ctx = Ctx {
        now_ms: 1_700_000_000_000,
        clock: &|| 0,
        secret: &secret,
        health: &health,
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    let caller = Caller {
        origin: &Origin::default(),
        header: &header,
        key_id: "k",
        tier: None,
        jurisdictions: None,
        random: 0.0,
    };
    let result = (|| {
        let mut prepared = prepare(&config, &ctx, body.as_bytes())?;
        prepared.route(&ctx, &caller)?;
        block_on(gateway::dispatch(up, &ctx, &prepared, end))
    })();
    result
        .unwrap_or_else(|e| Reply::error(&e))
        .for_client(Ingress::of_path(path))
}

fn messages(up: &Scripted, body: &str) -> Reply {
    run_with(
        up,
        gateway::prepare_messages,
        "/v1/messages",
        body,
        &[],
        None,
    )
}

fn responses(up: &Scripted, body: &str) -> Reply {
    run_with(
        up,
        gateway::prepare_responses,
        "/v1/responses",
        body,
        &[],
        None,
    )
}

fn body_of(reply: Reply) -> String {
    let bytes = match reply.body {
        ReplyBody::Full(b) => b,
        ReplyBody::Stream(s) => block_on(s.map(Result::unwrap).concat()),
        ReplyBody::Native(_) => panic!("no native bodies in native tests"),
    };
    String::from_utf8(bytes).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn header<'a>(req: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The bytes in chunks of `n`, as a network delivers them.
fn chunks(text: &str, n: usize) -> Vec<Vec<u8>> {
    text.as_bytes().chunks(n).map(<[u8]>::to_vec).collect()
}

/// The names of the SSE events in `sse`, in order.
fn event_names(sse: &str) -> Vec<&str> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect()
}

const MESSAGE: &str =
    r#"{"model":"claude","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
const MESSAGE_STREAM: &str = r#"{"model":"claude","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn recorder() -> (Rc<RefCell<Vec<StreamOutcome>>>, StreamEnd) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&seen);
    (seen, Box::new(move |o| sink.borrow_mut().push(o)))
}

// ---- Messages to an Anthropic target: passed through --------------------------

#[test]
fn a_message_reaches_an_anthropic_target_as_sent_and_comes_back_as_sent() {
    let answer = fixture!("anthropic/response_text.anthropic.json");
    let up = Scripted::new(vec![Script::Reply(200, vec![answer.as_bytes().to_vec()])]);
    let reply = run_with(
        &up,
        gateway::prepare_messages,
        "/v1/messages",
        MESSAGE,
        &[
            ("anthropic-version", "2023-06-01"),
            (
                "anthropic-beta",
                "prompt-caching-2024-07-31,context-1m-2025-08-07",
            ),
            ("x-api-key", "sk-gateway-key"),
            ("user-agent", "claude-cli/2.0"),
        ],
        None,
    );
    assert_eq!(reply.status, 200);
    // Usage with cache reads and writes apart, for their prices.
    assert_eq!(
        reply.usage,
        Some(Usage::new(20, 4, Some(5)).with_cache_writes(3))
    );
    assert_eq!(body_of(reply), answer);
    let sent = up.seen(0);
    assert_eq!(sent.url, "http://claude.test/v1/messages");
    assert_eq!(
        sent.body,
        MESSAGE
            .replace(r#""model":"claude""#, r#""model":"claude-x""#)
            .as_bytes()
    );
    assert_eq!(header(&sent, "x-api-key"), Some("sk-provider-key"));
    assert_eq!(header(&sent, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        header(&sent, "anthropic-beta"),
        Some("prompt-caching-2024-07-31,context-1m-2025-08-07")
    );
    // Only the allow-listed client headers travel; each name once.
    assert_eq!(header(&sent, "user-agent"), None);
    let mut names: Vec<&str> = sent.headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "anthropic-beta",
            "anthropic-version",
            "content-type",
            "x-api-key"
        ]
    );
}

#[test]
fn anthropic_headers_default_and_join_the_operators() {
    let answer = fixture!("anthropic/response_text.anthropic.json").as_bytes();
    let up = Scripted::new(vec![
        Script::Reply(200, vec![answer.to_vec()]),
        Script::Reply(200, vec![answer.to_vec()]),
    ]);
    // No version sent: the default. The operator's beta stays.
    let body = MESSAGE.replace(r#""claude""#, r#""claude-beta""#);
    run_with(
        &up,
        gateway::prepare_messages,
        "/v1/messages",
        &body,
        &[],
        None,
    );
    let sent = up.seen(0);
    assert_eq!(sent.url, "http://claude2.test/v1/messages");
    assert_eq!(header(&sent, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&sent, "anthropic-beta"), Some("operator-feature"));
    // The client's beta joins the operator's; its version wins.
    let headers = [
        ("anthropic-version", "2099-01-01"),
        ("anthropic-beta", "client-feature"),
    ];
    run_with(
        &up,
        gateway::prepare_messages,
        "/v1/messages",
        &body,
        &headers,
        None,
    );
    let sent = up.seen(1);
    assert_eq!(header(&sent, "anthropic-version"), Some("2099-01-01"));
    assert_eq!(
        header(&sent, "anthropic-beta"),
        Some("operator-feature,client-feature")
    );
    assert_eq!(
        sent.headers
            .iter()
            .filter(|(k, _)| k == "anthropic-beta")
            .count(),
        1
    );
}

#[test]
fn a_claude_code_request_reaches_anthropic_byte_for_byte_but_the_model() {
    let body = fixture!("ingress/messages_request_claude_code.anthropic.json").replacen(
        r#""model":"claude-sonnet-4-5-20250929""#,
        r#""model":"claude""#,
        1,
    );
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![
            fixture!("anthropic/stream_text.anthropic.sse")
                .as_bytes()
                .to_vec(),
        ],
    )]);
    let reply = messages(&up, &body);
    assert_eq!(reply.status, 200);
    let sent = up.seen(0);
    let want = body.replacen(r#""model":"claude""#, r#""model":"claude-x""#, 1);
    assert_eq!(String::from_utf8(sent.body.clone()).unwrap(), want);
    assert_eq!(header(&sent, "accept"), Some("text/event-stream"));
}

#[test]
fn an_anthropic_stream_is_relayed_event_by_event_at_any_split() {
    let sse = fixture!("anthropic/stream_text.anthropic.sse");
    for n in [1, 7, 64, sse.len()] {
        let up = Scripted::new(vec![Script::Reply(200, chunks(sse, n))]);
        let (seen, end) = recorder();
        let reply = run_with(
            &up,
            gateway::prepare_messages,
            "/v1/messages",
            MESSAGE_STREAM,
            &[],
            Some(end),
        );
        assert_eq!(reply.status, 200);
        assert_eq!(body_of(reply), sse, "split every {n} bytes");
        let outcome = seen.borrow()[0].clone();
        assert!(outcome.complete);
        // message_start's input and cache counts, message_delta's output.
        assert_eq!(
            outcome.usage,
            Some(Usage::new(20, 6, Some(5)).with_cache_writes(3))
        );
    }
}

#[test]
fn a_streams_cache_tokens_are_charged_at_their_prices() {
    let sse = fixture!("anthropic/stream_text.anthropic.sse");
    let up = Scripted::new(vec![Script::Reply(200, vec![sse.as_bytes().to_vec()])]);
    let (seen, end) = recorder();
    let reply = run_with(
        &up,
        gateway::prepare_messages,
        "/v1/messages",
        MESSAGE_STREAM,
        &[],
        Some(end),
    );
    let served = reply.served.clone().unwrap();
    drop(body_of(reply));
    let usage = seen.borrow()[0].usage;
    let acc = crate::gateway::Accounting {
        model: "claude".into(),
        input_estimate: 0,
    };
    let (cost, _) = settlement(&acc, Some(&served), usage, 0, true, false);
    // 12 fresh × $3/M + 5 read × $0.30/M + 3 written × $3.75/M + 6 out × $15/M.
    assert_eq!(
        cost,
        Money(12 * 3_000_000 + 5 * 300_000 + 3 * 3_750_000 + 6 * 15_000_000)
    );
}

#[test]
fn a_failure_before_the_first_delta_is_invisible_on_a_relayed_stream() {
    let sse = fixture!("anthropic/stream_text.anthropic.sse");
    // message_start, ping and the block's start, then the connection breaks.
    let held = sse.split("event: content_block_delta").next().unwrap();
    for first in [
        Script::Reply(503, vec![br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_vec()]),
        Script::Broken(vec![held.as_bytes().to_vec()]),
        Script::Reply(
            200,
            vec![format!("{held}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n").into_bytes()],
        ),
    ] {
        let up = Scripted::new(vec![first, Script::Reply(200, vec![sse.as_bytes().to_vec()])]);
        let body = MESSAGE_STREAM.replace(r#""claude""#, r#""claude-twice""#);
        let reply = messages(&up, &body);
        assert_eq!(reply.status, 200);
        let attempts = reply
            .headers
            .iter()
            .find(|(k, _)| *k == "x-gateway-attempts")
            .map(|(_, v)| v.clone());
        assert_eq!(attempts.as_deref(), Some("2"));
        assert_eq!(body_of(reply), sse);
        assert_eq!(up.seen(1).url, "http://claude2.test/v1/messages");
    }
}

#[test]
fn an_upstream_error_after_the_commit_reaches_the_client_as_sent() {
    let sse = fixture!("anthropic/stream_text.anthropic.sse");
    let first_delta = sse.split("event: content_block_stop").next().unwrap();
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![first_delta.as_bytes().to_vec(), error.as_bytes().to_vec()],
    )]);
    let (seen, end) = recorder();
    let reply = run_with(
        &up,
        gateway::prepare_messages,
        "/v1/messages",
        MESSAGE_STREAM,
        &[],
        Some(end),
    );
    assert_eq!(body_of(reply), format!("{first_delta}{error}"));
    assert!(!seen.borrow()[0].complete);
    // A cut after the commit: Anthropic's error event, typed.
    let up = Scripted::new(vec![Script::Broken(vec![first_delta.as_bytes().to_vec()])]);
    let out = body_of(messages(&up, MESSAGE_STREAM));
    let last = out.rsplit("\n\n").nth(1).unwrap();
    assert!(
        last.starts_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\""
        ),
        "{last}"
    );
}

#[test]
fn errors_before_any_answer_take_anthropics_shape_and_statuses() {
    let overloaded = || {
        Script::Reply(
            529,
            vec![
                fixture!("anthropic/error_overloaded.anthropic.json")
                    .as_bytes()
                    .to_vec(),
            ],
        )
    };
    // Every target overloaded: Anthropic's 529.
    let up = Scripted::new(vec![overloaded(), Script::Reply(503, vec![b"{}".to_vec()])]);
    let body = MESSAGE.replace(r#""claude""#, r#""claude-twice""#);
    let reply = messages(&up, &body);
    assert_eq!(reply.status, 529);
    let b = json(&body_of(reply));
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "overloaded_error");
    // A 400 from the target stays a 400.
    let up = Scripted::new(vec![Script::Reply(
        400,
        vec![
            fixture!("anthropic/error_invalid_request.anthropic.json")
                .as_bytes()
                .to_vec(),
        ],
    )]);
    let reply = messages(&up, MESSAGE);
    assert_eq!(reply.status, 400);
    assert_eq!(
        json(&body_of(reply))["error"]["type"],
        "invalid_request_error"
    );
    // The request's own mistakes, in Anthropic's words.
    let up = Scripted::new(vec![]);
    let reply = messages(
        &up,
        r#"{"model":"claude","messages":[{"role":"user","content":"x"}]}"#,
    );
    assert_eq!(reply.status, 400);
    let b = json(&body_of(reply));
    assert_eq!(b["error"]["message"], "max_tokens: Field required");
    let reply = messages(&up, &MESSAGE.replace(r#""claude""#, r#""nope""#));
    assert_eq!(reply.status, 404);
    assert_eq!(json(&body_of(reply))["error"]["type"], "not_found_error");
}

#[test]
fn refusals_of_any_step_are_rendered_for_the_client_with_their_headers() {
    let limited = GatewayError::RateLimited {
        message: "Rate limit reached: 10 requests per minute.".into(),
        retry_after: Some(7),
    };
    let reply = Reply::error(&limited).for_client(Ingress::Messages);
    assert_eq!(reply.status, 429);
    assert!(reply.headers.contains(&("retry-after", "7".to_owned())));
    let b = json(&body_of(reply));
    assert_eq!(
        b,
        json!({"type":"error","error":{"type":"rate_limit_error","message":"Rate limit reached: 10 requests per minute."}})
    );
    let unauthorized = GatewayError::Unauthorized {
        message: "Incorrect API key provided.".into(),
    };
    let reply = Reply::error(&unauthorized).for_client(Ingress::Messages);
    assert_eq!(reply.status, 401);
    assert_eq!(
        json(&body_of(reply))["error"]["type"],
        "authentication_error"
    );
    // Responses and chat clients keep OpenAI's shape; answers are untouched.
    let reply = Reply::error(&unauthorized).for_client(Ingress::Responses);
    assert_eq!(json(&body_of(reply))["error"]["code"], "invalid_api_key");
    let ok = Reply::json(200, b"{}".to_vec()).for_client(Ingress::Messages);
    assert_eq!(body_of(ok), "{}");
}

#[test]
fn paths_name_their_protocol() {
    assert_eq!(Ingress::of_path("/v1/messages"), Ingress::Messages);
    assert_eq!(Ingress::of_path("/v1/messages/"), Ingress::Messages);
    assert_eq!(
        Ingress::of_path("/v1/messages/count_tokens"),
        Ingress::Messages
    );
    assert_eq!(Ingress::of_path("/v1/responses"), Ingress::Responses);
    assert_eq!(Ingress::of_path("/v1/chat/completions"), Ingress::Chat);
    assert_eq!(Ingress::of_path("/v1/models"), Ingress::Chat);
    // A mistyped path under Messages' is an Anthropic client's 404.
    assert_eq!(Ingress::of_path("/v1/messages/nope"), Ingress::Messages);
    assert_eq!(Ingress::of_path("/v1/messagesx"), Ingress::Chat);
}

// ---- Messages to other targets: translated -----------------------------------

#[test]
fn a_message_to_an_openai_compatible_target_is_translated_both_ways() {
    let completion = fixture!("ingress/response_text.openai.json");
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![completion.as_bytes().to_vec()],
    )]);
    let mut body = json(fixture!("ingress/messages_request_text.anthropic.json"));
    body["model"] = "local".into();
    body["stream"] = false.into();
    let reply = messages(&up, &body.to_string());
    assert_eq!(reply.status, 200);
    assert!(reply.usage.is_some());
    let mut got = json(&body_of(reply));
    let mut want = json(fixture!("ingress/response_text.anthropic.json"));
    // The model is the one the client named.
    assert_eq!(got["model"], "local");
    got["model"] = Value::Null;
    want["model"] = Value::Null;
    assert_eq!(got, want);
    let sent = up.seen(0);
    assert_eq!(sent.url, "http://local.test/v1/chat/completions");
    let mut sent_body = json(std::str::from_utf8(&sent.body).unwrap());
    let mut want_body = json(fixture!("ingress/messages_request_text.openai.json"));
    assert_eq!(sent_body["model"], "llama");
    assert!(sent_body.get("stream").is_none_or(|s| s == false));
    for b in [&mut sent_body, &mut want_body] {
        let b = b.as_object_mut().unwrap();
        for key in ["model", "stream", "stream_options"] {
            b.remove(key);
        }
    }
    assert_eq!(sent_body, want_body);
}

#[test]
fn a_translated_stream_commits_at_its_first_token_and_fails_over_unseen() {
    let sse = fixture!("ingress/stream_text.openai.sse");
    // The role chunk, then the connection breaks: not yet committed.
    let role_only = format!("{}\n\n", sse.split("\n\n").next().unwrap());
    let up = Scripted::new(vec![
        Script::Broken(vec![role_only.into_bytes()]),
        Script::Reply(
            200,
            vec![
                fixture!("anthropic/stream_text.anthropic.sse")
                    .as_bytes()
                    .to_vec(),
            ],
        ),
    ]);
    let body = MESSAGE_STREAM.replace(r#""claude""#, r#""local-or-claude""#);
    let out = body_of(messages(&up, &body));
    // The second target's stream, relayed: one message_start only.
    assert_eq!(out, fixture!("anthropic/stream_text.anthropic.sse"));
    // One target only: the translated events, well formed.
    let up = Scripted::new(vec![Script::Reply(200, chunks(sse, 13))]);
    let body = MESSAGE_STREAM.replace(r#""claude""#, r#""local""#);
    let (seen, end) = recorder();
    let out = body_of(run_with(
        &up,
        gateway::prepare_messages,
        "/v1/messages",
        &body,
        &[],
        Some(end),
    ));
    assert_eq!(
        event_names(&out),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(out.contains(r#""text":"Ciao""#), "{out}");
    assert!(seen.borrow()[0].complete);
    assert!(seen.borrow()[0].usage.is_some());
}

#[test]
fn a_translated_stream_ends_a_failure_after_the_commit_with_anthropics_error() {
    let sse = fixture!("ingress/stream_text.openai.sse");
    let two: Vec<&str> = sse.split("\n\n").take(2).collect();
    let up = Scripted::new(vec![Script::Broken(vec![
        format!("{}\n\n", two.join("\n\n")).into_bytes(),
    ])]);
    let body = MESSAGE_STREAM.replace(r#""claude""#, r#""local""#);
    let out = body_of(messages(&up, &body));
    assert!(out.contains(r#""text":"Ciao""#));
    let last = out.rsplit("\n\n").nth(1).unwrap();
    assert!(
        last.starts_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\""
        ),
        "{last}"
    );
}

#[test]
fn what_only_anthropic_can_take_goes_only_to_anthropic() {
    let document = r#"{"model":"M","max_tokens":10,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"x"}},{"type":"text","text":"sum up"}]}]}"#;
    // The OpenAI-compatible target first, but it cannot take a document.
    let answer = fixture!("anthropic/response_text.anthropic.json").as_bytes();
    let up = Scripted::new(vec![Script::Reply(200, vec![answer.to_vec()])]);
    let reply = messages(&up, &document.replace('M', "local-or-claude"));
    assert_eq!(reply.status, 200);
    assert_eq!(up.seen.borrow().len(), 1);
    assert_eq!(up.seen(0).url, "http://claude.test/v1/messages");
    // With no Anthropic target, the 400 says why.
    let up = Scripted::new(vec![]);
    let reply = messages(&up, &document.replace('M', "local"));
    assert_eq!(reply.status, 400);
    let b = json(&body_of(reply));
    assert_eq!(b["error"]["type"], "invalid_request_error");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("document"),
        "{b}"
    );
}

#[test]
fn a_message_to_a_gemini_target_and_to_the_demo_model_works() {
    let gemini = r#"{"candidates":[{"content":{"parts":[{"text":"Hallo"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1,"totalTokenCount":5}}"#;
    let up = Scripted::new(vec![Script::Reply(200, vec![gemini.as_bytes().to_vec()])]);
    let reply = messages(&up, &MESSAGE.replace(r#""claude""#, r#""gemini""#));
    assert_eq!(reply.status, 200);
    let b = json(&body_of(reply));
    assert_eq!(b["content"][0], json!({"type":"text","text":"Hallo"}));
    assert_eq!(b["usage"]["input_tokens"], 4);
    assert!(up.seen(0).url.contains(":generateContent"));
    let up = Scripted::new(vec![]);
    let reply = messages(&up, &MESSAGE_STREAM.replace(r#""claude""#, r#""demo""#));
    let out = body_of(reply);
    assert!(out.starts_with("event: message_start"), "{out}");
    assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

// ---- Token counting ----------------------------------------------------------------

#[test]
fn token_counts_are_exact_from_anthropic_estimated_elsewhere_and_free() {
    let body =
        r#"{"model":"M","messages":[{"role":"user","content":"Hello there, how are you?"}]}"#;
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![br#"{"input_tokens":14}"#.to_vec()],
    )]);
    let reply = run_with(
        &up,
        gateway::prepare_count_tokens,
        "/v1/messages/count_tokens",
        &body.replace('M', "claude"),
        &[("anthropic-beta", "token-counting-2024-11-01")],
        None,
    );
    assert_eq!(reply.usage, Some(Usage::default()));
    assert_eq!(body_of(reply), r#"{"input_tokens":14}"#);
    let sent = up.seen(0);
    assert_eq!(sent.url, "http://claude.test/v1/messages/count_tokens");
    assert_eq!(sent.body, body.replace('M', "claude-x").as_bytes());
    assert_eq!(
        header(&sent, "anthropic-beta"),
        Some("token-counting-2024-11-01")
    );
    assert_eq!(header(&sent, "accept"), None);
    // Elsewhere: the documented estimate, no upstream request.
    let up = Scripted::new(vec![]);
    let reply = run_with(
        &up,
        gateway::prepare_count_tokens,
        "/v1/messages/count_tokens",
        &body.replace('M', "local"),
        &[],
        None,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.usage, Some(Usage::default()));
    let n = json(&body_of(reply))["input_tokens"].as_u64().unwrap();
    // 4 tokens of framing + 25 bytes of text / 4.
    assert_eq!(n, 4 + 7);
    assert!(up.seen.borrow().is_empty());
    // Nothing reserved, nothing charged.
    let config = Config::from_json(CONFIG).unwrap();
    let health = Health::new();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &health,
    };
    let body = body.replace('M', "claude");
    let p = gateway::prepare_count_tokens(&config, &ctx, body.as_bytes()).unwrap();
    assert_eq!(p.worst_case(), (Money::ZERO, 0));
    assert_eq!(p.accounting().input_estimate, 0);
    assert!(!p.stream());
}

// ---- Responses -----------------------------------------------------------------------

const RESPONSE_REQUEST: &str =
    r#"{"model":"gpt","input":"hi","instructions":"Be brief.","store":false}"#;

#[test]
fn a_response_reaches_openai_as_sent_and_comes_back_as_sent() {
    let answer = fixture!("ingress/response_text.responses.json");
    let up = Scripted::new(vec![Script::Reply(200, vec![answer.as_bytes().to_vec()])]);
    let reply = responses(&up, RESPONSE_REQUEST);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.usage, Some(Usage::new(25, 7, Some(20))));
    assert_eq!(body_of(reply), answer);
    let sent = up.seen(0);
    assert_eq!(sent.url, "http://openai.test/v1/responses");
    assert_eq!(
        sent.body,
        RESPONSE_REQUEST
            .replace(r#""gpt""#, r#""gpt-5""#)
            .as_bytes()
    );
    assert_eq!(
        header(&sent, "authorization"),
        Some("Bearer sk-provider-key")
    );
}

#[test]
fn a_responses_stream_is_relayed_with_its_usage() {
    let sse = fixture!("ingress/stream_text.responses.sse");
    let body = RESPONSE_REQUEST.replace(r#""store""#, r#""stream":true,"store""#);
    for n in [5, sse.len()] {
        let up = Scripted::new(vec![Script::Reply(200, chunks(sse, n))]);
        let (seen, end) = recorder();
        let reply = run_with(
            &up,
            gateway::prepare_responses,
            "/v1/responses",
            &body,
            &[],
            Some(end),
        );
        assert_eq!(body_of(reply), sse);
        let outcome = seen.borrow()[0].clone();
        assert!(outcome.complete);
        assert_eq!(outcome.usage, Some(Usage::new(25, 7, Some(20))));
    }
    // Failing before the first delta: the next target, unseen (translated).
    let created = sse
        .split("event: response.output_item.added")
        .next()
        .unwrap();
    let up = Scripted::new(vec![
        Script::Broken(vec![created.as_bytes().to_vec()]),
        Script::Reply(
            200,
            vec![
                fixture!("anthropic/stream_text.anthropic.sse")
                    .as_bytes()
                    .to_vec(),
            ],
        ),
    ]);
    let two = body.replace(r#""gpt""#, r#""gpt-or-claude""#);
    let out = body_of(responses(&up, &two));
    assert_eq!(out.matches("event: response.created").count(), 1, "{out}");
    assert!(out.contains("event: response.completed"));
    assert!(out.contains(r#""delta":"Bonjour""#), "{out}");
    // A failure after the commit: the upstream's event as sent, else an
    // error and a response.failed built on response.created.
    let first_delta = sse
        .split("event: response.output_text.done")
        .next()
        .unwrap();
    let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":9,\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n";
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![first_delta.as_bytes().to_vec(), failed.as_bytes().to_vec()],
    )]);
    assert_eq!(
        body_of(responses(&up, &body)),
        format!("{first_delta}{failed}")
    );
    let up = Scripted::new(vec![Script::Broken(vec![first_delta.as_bytes().to_vec()])]);
    let out = body_of(responses(&up, &body));
    let tail = &out[first_delta.len()..];
    assert_eq!(event_names(tail), ["error", "response.failed"]);
    let events = event_names(first_delta).len();
    assert!(
        tail.contains(&format!(r#""sequence_number":{events},"#)),
        "{tail}"
    );
    assert!(tail.contains(r#""status":"failed""#));
    assert!(tail.contains(r#""id":"resp_3b4ced811437fc40fbb3f555""#));
}

#[test]
fn a_response_to_an_anthropic_target_is_translated_both_ways() {
    let answer = fixture!("anthropic/response_text.anthropic.json");
    let up = Scripted::new(vec![Script::Reply(200, vec![answer.as_bytes().to_vec()])]);
    let reply = responses(&up, &RESPONSE_REQUEST.replace(r#""gpt""#, r#""claude""#));
    assert_eq!(reply.status, 200);
    let b = json(&body_of(reply));
    assert_eq!(b["object"], "response");
    assert_eq!(b["model"], "claude");
    assert_eq!(b["output"][0]["type"], "message");
    assert_eq!(b["usage"]["input_tokens"], 20);
    let sent = up.seen(0);
    assert_eq!(sent.url, "http://claude.test/v1/messages");
    assert_eq!(
        json(std::str::from_utf8(&sent.body).unwrap())["system"],
        "Be brief."
    );
}

#[test]
fn what_only_openai_can_take_goes_only_to_openai() {
    let body = r#"{"model":"M","input":"and then?","previous_response_id":"resp_1"}"#;
    let answer = fixture!("ingress/response_text.responses.json").as_bytes();
    let up = Scripted::new(vec![Script::Reply(200, vec![answer.to_vec()])]);
    let reply = responses(&up, &body.replace('M', "gpt-or-claude"));
    assert_eq!(reply.status, 200);
    assert_eq!(up.seen(0).url, "http://openai.test/v1/responses");
    let up = Scripted::new(vec![]);
    let reply = responses(&up, &body.replace('M', "claude"));
    assert_eq!(reply.status, 400);
    let b = json(&body_of(reply));
    assert_eq!(b["error"]["param"], "previous_response_id");
}
