//! The pure core timed natively: what the gateway adds per request on top of
//! the runtime, without the runtime.
//!
//! `#[ignore]`d, so `cargo test` never runs them; `scripts/bench` does:
//!
//! ```sh
//! cargo test --release --lib bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Each case runs a warm-up, then times batches and reports the median batch
//! (with min–max) as µs per operation and MB/s of input. Timings are for the
//! native target (x86-64 here), not for wasm on V8, which is typically 1.5–3×
//! slower for this kind of code; the workerd figures in `scripts/bench` carry
//! that cost.

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::{StreamExt, stream};

use crate::api::ChatRequest;
use crate::config::Config;
use crate::gateway::{self, Caller, Ctx, Request, Translated};
use crate::http::ByteStream;
use crate::providers;
use crate::routing::{self, Health, Origin};

/// The routing config the workerd benchmark uses (an OpenAI-compatible
/// upstream with its key in a secret, plus a second model to route past).
const CONFIG: &str = r#"{"version":1,
  "providers":{"up":{"kind":"openai-compatible","base_url":"http://127.0.0.1:9/v1","api_key_secret":"UPSTREAM_KEY"},
               "other":{"kind":"openai","api_key_secret":"OTHER_KEY"},
               "demo":{"kind":"mock"}},
  "models":{"bench":{"targets":[{"provider":"up","model":"bench-model"}]},
            "failover":{"targets":[{"provider":"other","model":"x"},{"provider":"up","model":"bench-model"}]},
            "demo":{"targets":[{"provider":"demo","model":"demo-1"}]}}}"#;

/// Secrets as the edge sees them.
fn secret(name: &str) -> Option<String> {
    (name == "UPSTREAM_KEY").then(|| "sk-upstream-bench-key".to_owned())
}

/// A chat body of about `target` bytes: a system prompt, then user/assistant
/// turns of ordinary text until the size is reached.
fn chat_body(target: usize, stream: bool) -> Vec<u8> {
    let mut messages = vec![
        r#"{"role":"system","content":"You are a helpful assistant. Answer briefly."}"#.to_owned(),
    ];
    let mut len = 200;
    let mut i = 0;
    loop {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let msg = format!(
            r#"{{"role":"{role}","content":"Turn {i}: the quick brown fox jumps over the lazy dog, \"quoted\" and caf\u00e9 too."}}"#
        );
        len += msg.len() + 1;
        messages.push(msg);
        i += 1;
        if len >= target {
            break;
        }
    }
    format!(
        r#"{{"model":"bench","messages":[{}],"temperature":0.2,"max_tokens":256,"stream":{stream}}}"#,
        messages.join(",")
    )
    .into_bytes()
}

/// An OpenAI stream of `n` content chunks, a finish chunk and `[DONE]`,
/// one network read per event (as a provider flushes them).
fn openai_stream(n: usize) -> Vec<Vec<u8>> {
    let head = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1763700000,"model":"bench-model","#;
    let mut events = Vec::with_capacity(n + 3);
    events.push(
        format!("data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n")
            .into_bytes(),
    );
    for i in 0..n {
        events.push(
            format!("data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n")
                .into_bytes(),
        );
    }
    events.push(
        format!("data: {head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n")
            .into_bytes(),
    );
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

/// Times `op` in batches of `per_batch` after a warm-up; returns µs per op
/// for each batch, sorted.
fn time_batches(batches: usize, per_batch: usize, mut op: impl FnMut()) -> Vec<f64> {
    let warm_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm_until {
        op();
    }
    let mut per_op: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                op();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op
}

/// Prints one result line; `scripts/bench` greps the `BENCH` lines.
fn report(name: &str, bytes: usize, per_op_us: &[f64]) {
    let median = per_op_us[per_op_us.len() / 2];
    let (min, max) = (per_op_us[0], per_op_us[per_op_us.len() - 1]);
    let mb_s = bytes as f64 / median; // bytes per µs = MB/s
    println!(
        "BENCH {name} us_per_op={median:.3} min={min:.3} max={max:.3} bytes={bytes} mb_per_s={mb_s:.1}"
    );
}

/// The synchronous request path before the upstream call, as the edge runs
/// it: `gateway::prepare` (parse, model check), the worst-case price,
/// `Prepared::route` (rules, residency, capabilities, strategy, health) and
/// `providers::build_chat_request`.
fn parse_route_build(config: &Config, health: &Health, body: &[u8]) -> usize {
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health,
    };
    let mut prepared = gateway::prepare(config, &ctx, body).expect("bench body parses");
    black_box(prepared.worst_case());
    let no_headers = |_: &str| None;
    let caller = Caller {
        origin: &Origin::default(),
        header: &no_headers,
        key_id: "bench",
        tier: None,
        jurisdictions: None,
        random: 0.5,
    };
    prepared.route(&ctx, &caller).expect("bench model routes");
    let Request::Chat(req) = &prepared.req else {
        unreachable!("a chat body")
    };
    let cand = &prepared.candidates[0];
    let signing = providers::Signing {
        now_s: 0,
        secret: &secret,
    };
    let up = providers::build_chat_request(&cand.target, req, cand.api_key.as_deref(), signing)
        .expect("bench request builds");
    up.body.len() + up.url.len()
}

#[test]
#[ignore = "benchmark: run by scripts/bench"]
fn bench_parse_route_build() {
    let config = Config::from_json(CONFIG).expect("bench config is valid");
    let health = Health::new();
    for (name, size) in [("small", 300), ("16k", 16 * 1024)] {
        let body = chat_body(size, false);
        let per_batch = if size > 1000 { 2_000 } else { 20_000 };
        let times = time_batches(7, per_batch, || {
            black_box(parse_route_build(&config, &health, black_box(&body)));
        });
        report(&format!("parse_route_build_{name}"), body.len(), &times);
    }
}

/// Times translating `events` from the model's first target to client
/// chunks, chunk by chunk as the edge does.
fn bench_stream(name: &str, config: &Config, events: &[Vec<u8>]) {
    let body = chat_body(300, true);
    let req = ChatRequest::parse(&body).expect("bench body parses");
    let candidates = routing::candidates(config, &req.model, &secret).expect("routes");
    let target = candidates[0].target;
    let bytes: usize = events.iter().map(Vec::len).sum();
    let times = time_batches(7, 500, || {
        // A ByteStream owns its chunks, as a response body does.
        let owned: Vec<Vec<u8>> = events.to_vec();
        let upstream: ByteStream = Box::pin(stream::iter(owned.into_iter().map(Ok)));
        let translator = providers::stream_translator(&target, &req, 0);
        let translated = Translated::new(target.name, upstream, translator);
        let out = block_on(translated.fold(0usize, |n, item| async move {
            n + item.expect("bench stream translates").len()
        }));
        assert!(out > bytes / 2, "the translation produced output");
        black_box(out);
    });
    report(name, bytes, &times);
}

#[test]
#[ignore = "benchmark: run by scripts/bench"]
fn bench_stream_openai_passthrough_100() {
    let config = Config::from_json(CONFIG).expect("bench config is valid");
    bench_stream(
        "stream_openai_passthrough_100_chunks",
        &config,
        &openai_stream(100),
    );
}

/// An Anthropic Messages stream of `n` text deltas.
fn anthropic_stream(n: usize) -> Vec<Vec<u8>> {
    let ev = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n").into_bytes();
    let mut events = vec![
        ev("message_start", r#"{"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#.to_owned()),
        ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
    ];
    for i in 0..n {
        events.push(ev(
            "content_block_delta",
            format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"tok{i} "}}}}"#),
        ));
    }
    events.push(ev(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#.to_owned(),
    ));
    events.push(ev(
        "message_delta",
        format!(r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{n}}}}}"#),
    ));
    events.push(ev("message_stop", r#"{"type":"message_stop"}"#.to_owned()));
    events
}

#[test]
#[ignore = "benchmark: run by scripts/bench"]
fn bench_stream_anthropic_translate_100() {
    let config = Config::from_json(
        r#"{"version":1,"providers":{"a":{"kind":"anthropic","api_key_secret":"UPSTREAM_KEY"}},
            "models":{"bench":{"targets":[{"provider":"a","model":"claude-bench"}]}}}"#,
    )
    .expect("bench config is valid");
    bench_stream(
        "stream_anthropic_translate_100_chunks",
        &config,
        &anthropic_stream(100),
    );
}
