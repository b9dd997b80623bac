//! The request path driven natively through a scripted [`Upstream`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Poll;

use futures::channel::mpsc;
use futures::executor::block_on;
use futures::{StreamExt, poll, stream};
use serde_json::Value;

use super::*;

/// What the fake upstream does for one request.
enum Script {
    /// Answer with a status, headers and body.
    Reply(u16, Vec<(&'static str, &'static str)>, Vec<Vec<u8>>),
    /// Answer 200 and then break the body after these chunks.
    BrokenBody(Vec<Vec<u8>>),
    /// Fail to connect.
    Transport(&'static str),
    /// Answer 200 with a body fed through a channel by the test.
    Channel(mpsc::UnboundedReceiver<Result<Vec<u8>, String>>),
    /// Never answer.
    Hang,
    /// Send these bytes into another request's channel and close it, then
    /// answer with this status and body.
    Feeding(
        mpsc::UnboundedSender<Result<Vec<u8>, String>>,
        Vec<u8>,
        u16,
        Vec<u8>,
    ),
}

#[derive(Default)]
struct Scripted {
    script: RefCell<VecDeque<Script>>,
    seen: RefCell<Vec<UpstreamRequest>>,
    /// Timers fire at once (every timeout passes); otherwise never.
    timers_fire: bool,
    /// Timers of exactly this many ms fire at once (a hedge's delay), the
    /// others never.
    fire_only: Option<u64>,
    /// Every timer asked for, in ms.
    sleeps: RefCell<Vec<u64>>,
    /// Offer each body natively too, as the edge does: handing it over
    /// yields this marker.
    native: bool,
    /// Enforce whole-answer deadlines itself, as the edge does; each one
    /// asked for is recorded.
    deadlines: Option<RefCell<Vec<u64>>>,
}

impl Scripted {
    fn new(script: Vec<Script>) -> Self {
        Scripted {
            script: RefCell::new(script.into()),
            seen: RefCell::default(),
            timers_fire: false,
            fire_only: None,
            sleeps: RefCell::default(),
            native: false,
            deadlines: None,
        }
    }
}

impl Upstream for Scripted {
    async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
        self.seen.borrow_mut().push(req);
        let step = self
            .script
            .borrow_mut()
            .pop_front()
            .expect("no scripted response left");
        let native = self.native;
        let ok = |status, headers: Vec<(&str, &str)>, body: ByteStream| UpstreamResponse {
            status,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body,
            native: native.then(|| {
                crate::http::NativeBody(Box::new(|| {
                    Some(Box::new("native body") as Box<dyn std::any::Any>)
                }))
            }),
        };
        match step {
            Script::Reply(status, headers, chunks) => Ok(ok(
                status,
                headers,
                Box::pin(stream::iter(chunks.into_iter().map(Ok))),
            )),
            Script::BrokenBody(chunks) => {
                let broken = "connection reset".to_owned();
                let items = chunks.into_iter().map(Ok).chain([Err(broken)]);
                Ok(ok(200, vec![], Box::pin(stream::iter(items))))
            }
            Script::Transport(msg) => Err(msg.to_owned()),
            Script::Channel(rx) => Ok(ok(200, vec![], Box::pin(rx))),
            Script::Hang => futures::future::pending().await,
            Script::Feeding(tx, bytes, status, body) => {
                let _ = tx.unbounded_send(Ok(bytes));
                drop(tx);
                Ok(ok(status, vec![], Box::pin(stream::iter([Ok(body)]))))
            }
        }
    }

    fn enforces_deadlines(&self) -> bool {
        self.deadlines.is_some()
    }

    async fn send_until(&self, req: UpstreamRequest, ms: u64) -> Result<UpstreamResponse, String> {
        if let Some(d) = &self.deadlines {
            d.borrow_mut().push(ms);
        }
        self.send(req).await
    }

    fn sleep(&self, ms: u64) -> crate::http::Sleep {
        self.sleeps.borrow_mut().push(ms);
        if self.timers_fire || self.fire_only == Some(ms) {
            Box::pin(futures::future::ready(()))
        } else {
            Box::pin(futures::future::pending())
        }
    }
}

const CONFIG: &str = r#"{"version":1,
  "providers":{"a":{"kind":"openai","base_url":"http://a.test/v1","api_key_secret":"A_KEY"},
               "b":{"kind":"openai-compatible","base_url":"http://b.test/v1"},
               "g":{"kind":"gemini","base_url":"http://g.test/v1beta"},
               "c":{"kind":"anthropic","base_url":"http://c.test","api_key_secret":"A_KEY"},
               "demo":{"kind":"mock"}},
  "models":{"m":{"targets":[{"provider":"a","model":"ma"},{"provider":"b","model":"mb"}]},
            "gm":{"targets":[{"provider":"g","model":"gemini-2.5-flash"},{"provider":"b","model":"mb"}]},
            "demo":{"targets":[{"provider":"demo","model":"demo-1"}]},
            "solo":{"targets":[{"provider":"a","model":"ma"}]},
            "claude":{"targets":[{"provider":"c","model":"claude-x"}]},
            "mixed":{"targets":[{"provider":"c","model":"claude-x"},{"provider":"g","model":"gemini-embedding-001"},{"provider":"a","model":"ma"}]}}}"#;

fn secret(name: &str) -> Option<String> {
    match name {
        "A_KEY" => Some("sk-provider-secret-a".to_owned()),
        "GEMINI_API_KEY" => Some("AIza-provider-secret-g".to_owned()),
        _ => None,
    }
}

fn run(up: &Scripted, body: &str) -> Result<Reply, GatewayError> {
    let config = Config::from_json(CONFIG).unwrap();
    let ctx = Ctx {
        now_ms: 1_700_000_000_000,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    block_on(chat_completions(up, &config, &ctx, body.as_bytes()))
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

fn full_body(r: Reply) -> Vec<u8> {
    match r.body {
        ReplyBody::Full(b) => b,
        ReplyBody::Stream(s) => block_on(s.map(Result::unwrap).concat()),
        ReplyBody::Native(_) => panic!("no native bodies in native tests"),
    }
}

const NON_STREAM: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const COMPLETION: &str = r#"{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;

fn chunk(text: &str) -> Vec<u8> {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n").into_bytes()
}

fn finish_chunks() -> Vec<u8> {
    b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n".to_vec()
}

#[test]
fn fails_over_on_503_to_the_next_target() {
    let up = Scripted::new(vec![
        Script::Reply(
            503,
            vec![],
            vec![b"{\"error\":{\"message\":\"down\"}}".to_vec()],
        ),
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
    ]);
    let reply = run(&up, NON_STREAM).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(header(&reply, "x-gateway-model"), Some("mb"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
    assert_eq!(reply.usage, Some(Usage::new(3, 4, None)));
    let seen = up.seen.borrow();
    assert_eq!(seen[0].url, "http://a.test/v1/chat/completions");
    assert!(
        seen[0]
            .headers
            .contains(&("authorization".into(), "Bearer sk-provider-secret-a".into()))
    );
    assert_eq!(seen[1].url, "http://b.test/v1/chat/completions");
    assert!(!seen[1].headers.iter().any(|(k, _)| k == "authorization"));
    let body: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(body["model"], "mb");
}

#[test]
fn fails_over_on_connect_error_and_invalid_json() {
    let up = Scripted::new(vec![
        Script::Transport("connection refused"),
        Script::Reply(200, vec![], vec![b"{\"id\": invalid".to_vec()]),
    ]);
    let err = run(&up, NON_STREAM).err().unwrap();
    match &err {
        GatewayError::AllTargetsFailed { attempts } => {
            assert_eq!(attempts.len(), 2);
            assert_eq!(attempts[0].provider, "a");
            assert_eq!(attempts[0].status, None);
            assert!(attempts[0].reason.contains("connection refused"));
            assert!(attempts[1].reason.contains("not a chat completion"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.status(), 503);
    // The error reply says how many targets were tried, as an answer does.
    assert_eq!(header(&Reply::error(&err), "x-gateway-attempts"), Some("2"));
}

#[test]
fn does_not_fail_over_on_400() {
    let up = Scripted::new(vec![Script::Reply(
        400,
        vec![],
        vec![b"{\"error\":{\"message\":\"bad temperature\"}}".to_vec()],
    )]);
    let err = run(&up, NON_STREAM).err().unwrap();
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("bad temperature"));
    assert_eq!(up.seen.borrow().len(), 1);
}

#[test]
fn single_target_429_keeps_status_and_retry_after() {
    let up = Scripted::new(vec![Script::Reply(
        429,
        vec![("retry-after", "7")],
        vec![b"{\"error\":{\"message\":\"slow down\"}}".to_vec()],
    )]);
    let err = run(
        &up,
        r#"{"model":"solo","messages":[{"role":"user","content":"x"}]}"#,
    )
    .err()
    .unwrap();
    let reply = Reply::error(&err);
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply, "retry-after"), Some("7"));
}

#[test]
fn provider_key_echoed_in_an_error_is_redacted() {
    let up = Scripted::new(vec![Script::Reply(
        401,
        vec![],
        vec![
            b"{\"error\":{\"message\":\"Incorrect API key provided: sk-provider-secret-a\"}}"
                .to_vec(),
        ],
    )]);
    let err = run(&up, NON_STREAM).err().unwrap();
    let body = String::from_utf8(err.to_body()).unwrap();
    assert!(!body.contains("sk-provider-secret-a"), "{body}");
    assert!(body.contains("[redacted]"));
    assert_eq!(err.status(), 502);
}

#[test]
fn stream_that_breaks_before_its_first_byte_fails_over() {
    let mut second = chunk("Hello");
    second.extend(finish_chunks());
    let up = Scripted::new(vec![
        Script::BrokenBody(vec![]),
        Script::Reply(200, vec![], vec![second]),
    ]);
    let reply = run(&up, STREAM).unwrap();
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
    let text = String::from_utf8(full_body(reply)).unwrap();
    assert!(
        text.contains("Hello") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(
        !text.contains("prompt_tokens"),
        "usage was not asked for: {text}"
    );
}

#[test]
fn stream_that_breaks_after_its_first_byte_ends_with_an_error_event() {
    let up = Scripted::new(vec![Script::BrokenBody(vec![chunk("Hel")])]);
    let reply = run(&up, STREAM).unwrap();
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(full_body(reply)).unwrap();
    assert!(text.starts_with("data: {\"choices\""), "{text}");
    assert!(text.contains("\"error\":{"), "{text}");
    assert!(text.contains("connection reset"), "{text}");
    assert!(
        !text.contains("[DONE]"),
        "a broken stream must not look complete: {text}"
    );
}

#[test]
fn stream_cut_cleanly_mid_answer_is_reported_not_completed() {
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![],
        vec![chunk("Hel"), chunk("lo")],
    )]);
    let text = String::from_utf8(full_body(run(&up, STREAM).unwrap())).unwrap();
    assert!(
        text.contains("ended before the answer was complete"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"));
}

#[test]
fn a_stream_cut_inside_an_event_ends_with_a_clean_error_event_not_the_fragment() {
    let mut cut = chunk("lo");
    cut.truncate(cut.len() / 2);
    let up = Scripted::new(vec![Script::Reply(200, vec![], vec![chunk("Hel"), cut])]);
    let text = String::from_utf8(full_body(run(&up, STREAM).unwrap())).unwrap();
    // The fragment is not written; the error event is whole and parses.
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    for e in &events {
        let data = e
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("{e:?} in {text}"));
        assert!(
            serde_json::from_str::<serde_json::Value>(data).is_ok(),
            "{data} in {text}"
        );
    }
    assert!(events.last().unwrap().contains("\"error\":{"), "{text}");
    assert!(text.contains("cut inside an event"), "{text}");
}

#[test]
fn stream_is_passed_through_chunk_by_chunk() {
    let (tx, rx) = mpsc::unbounded();
    tx.unbounded_send(Ok(chunk("one"))).unwrap();
    let up = Scripted::new(vec![Script::Channel(rx)]);
    let reply = run(&up, STREAM).unwrap();
    let ReplyBody::Stream(mut body) = reply.body else {
        panic!("not a stream")
    };
    block_on(async {
        let first = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8(first).unwrap().contains("one"));
        // Nothing more has arrived upstream, so nothing is ready downstream.
        assert!(matches!(poll!(body.next()), Poll::Pending));
        // Half an event is not forwarded until it completes.
        let second = chunk("two");
        let (a, b) = second.split_at(10);
        tx.unbounded_send(Ok(a.to_vec())).unwrap();
        assert!(matches!(poll!(body.next()), Poll::Pending));
        tx.unbounded_send(Ok(b.to_vec())).unwrap();
        let got = body.next().await.unwrap().unwrap();
        assert_eq!(got, second);
        tx.unbounded_send(Ok(finish_chunks())).unwrap();
        drop(tx);
        let rest = body.map(Result::unwrap).concat().await;
        assert!(
            String::from_utf8(rest)
                .unwrap()
                .ends_with("data: [DONE]\n\n")
        );
    });
}

#[test]
fn a_committed_pass_through_stream_is_handed_to_the_runtime_to_pipe() {
    // The first content chunk commits; half of the next event has arrived.
    let mut first = chunk("one");
    let second = chunk("two");
    first.extend_from_slice(&second[..12]);
    let up = Scripted {
        native: true,
        ..Scripted::new(vec![Script::Reply(200, vec![], vec![first])])
    };
    let config = Config::from_json(CONFIG).unwrap();
    let ctx = Ctx {
        now_ms: 1_700_000_000_000,
        clock: &|| 1_700_000_000_000,
        secret: &secret,
        health: &Health::new(),
    };
    let mut prepared = prepare(&config, &ctx, STREAM.as_bytes()).unwrap();
    route_anonymous(&mut prepared, &ctx).unwrap();
    let outcome = std::rc::Rc::new(RefCell::new(None));
    let seen = outcome.clone();
    let on_end: StreamEnd = Box::new(move |o| *seen.borrow_mut() = Some(o));
    let reply = block_on(dispatch(&up, &ctx, &prepared, Some(on_end))).unwrap();
    let ReplyBody::Native(mut native) = reply.body else {
        panic!("not handed over")
    };
    assert!(String::from_utf8_lossy(&native.head).contains("one"));
    assert_eq!(
        native.partial,
        second[..12].to_vec(),
        "the raw event in progress"
    );
    assert_eq!(native.body.downcast_ref::<&str>(), Some(&"native body"));
    assert!(
        native.tail.strip_usage_only,
        "the client did not ask for usage"
    );
    assert!(!native.tail.finished);
    assert_eq!(native.events, 1);
    assert_eq!(native.total_ms, 600_000);
    let cut = String::from_utf8(native.cut_event.clone()).unwrap();
    assert!(
        cut.starts_with("data: {\"error\"") && !cut.contains("[DONE]"),
        "{cut}"
    );
    // The pipe reports how the stream ended; settlement gets the usage.
    native.end(
        Some(r#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}"#),
        9,
        true,
    );
    let o = outcome.borrow_mut().take().unwrap();
    assert_eq!((o.events, o.complete), (9, true));
    assert_eq!(o.usage.map(|u| u.completion_tokens), Some(7));
    // Reported once.
    native.end(None, 1, false);
    assert!(outcome.borrow().is_none());
}

#[test]
fn a_translated_stream_is_never_handed_over() {
    let answer = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":1,\"output_tokens\":0}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
    let up = Scripted {
        native: true,
        ..Scripted::new(vec![Script::Reply(
            200,
            vec![],
            vec![answer.as_bytes().to_vec()],
        )])
    };
    let reply = run(
        &up,
        r#"{"model":"claude","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    assert!(matches!(reply.body, ReplyBody::Stream(_)));
}

const HEDGED: &str = r#"{"version":1,
  "providers":{"a":{"kind":"openai","base_url":"http://a.test/v1","api_key_secret":"A_KEY","models":{"ma":{"input_per_mtok":1,"output_per_mtok":2}}},
               "b":{"kind":"openai-compatible","base_url":"http://b.test/v1","models":{"mb":{"input_per_mtok":3,"output_per_mtok":4}}}},
  "models":{"m":{"targets":[{"provider":"a","model":"ma"},{"provider":"b","model":"mb"}],"hedge":{"after_ms":300}},
            "p":{"targets":[{"provider":"a","model":"ma"},{"provider":"b","model":"mb"}],"hedge":{"after_percentile":95,"after_ms":5000}}}}"#;

#[test]
fn a_stream_with_no_first_token_by_the_hedge_delay_races_the_next_target() {
    let mut second = chunk("from b");
    second.extend(finish_chunks());
    let up = Scripted {
        fire_only: Some(300),
        ..Scripted::new(vec![Script::Hang, Script::Reply(200, vec![], vec![second])])
    };
    let reply = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        STREAM,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(header(&reply, "x-gateway-hedge"), Some("lost=a/ma"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
    let served = reply.served.clone().unwrap();
    assert_eq!(served.hedge_losers.len(), 1);
    assert_eq!(up.seen.borrow().len(), 2, "both targets were called");
    assert!(
        String::from_utf8(full_body(reply))
            .unwrap()
            .contains("from b")
    );
}

#[test]
fn a_whole_answer_is_hedged_too_and_the_loser_is_charged_its_input() {
    let up = Scripted {
        fire_only: Some(300),
        ..Scripted::new(vec![
            Script::Hang,
            Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
        ])
    };
    let reply = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        NON_STREAM,
    )
    .unwrap();
    let served = reply.served.clone().unwrap();
    assert_eq!(served.provider, "b");
    // b's answer: 3 in at $3, 4 out at $4 per million; a read the same 3
    // tokens before it was aborted, at its $1.
    let acc = Accounting {
        model: "m".into(),
        input_estimate: 99,
    };
    let (cost, event) = settlement(&acc, Some(&served), reply.usage, 0, true, false);
    assert_eq!(cost, Money(3 * 3_000_000 + 4 * 4_000_000 + 3 * 1_000_000));
    // The loser's input is counted with the tokens used, as it is charged.
    assert_eq!((event.input_tokens, event.output_tokens), (6, 4));
}

#[test]
fn an_answer_before_the_hedge_delay_starts_nothing_else() {
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![],
        vec![COMPLETION.as_bytes().to_vec()],
    )]);
    let reply = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        NON_STREAM,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("a"));
    assert_eq!(header(&reply, "x-gateway-hedge"), None);
    assert_eq!(up.seen.borrow().len(), 1);
    assert!(up.sleeps.borrow().contains(&300), "the hedge timer was set");
}

#[test]
fn a_failed_hedged_attempt_waits_for_the_other() {
    // a fails at once; b (started on a's failure) answers: an ordinary
    // failover, no hedge reported.
    let up = Scripted::new(vec![
        Script::Reply(503, vec![], vec![b"{}".to_vec()]),
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
    ]);
    let reply = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        NON_STREAM,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(header(&reply, "x-gateway-hedge"), None);
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
}

#[test]
fn the_hedge_delay_follows_the_targets_time_to_first_byte_percentile() {
    let health = Health::new();
    let key = crate::routing::target_key("a", "ma");
    for ms in [80, 90, 100, 110, 120, 100, 95, 105, 115, 100] {
        health.record_success(&key, 1_700_000_000_000, ms);
        health.record_first_token(&key, ms);
    }
    let streamed = || {
        let mut second = chunk("from b");
        second.extend(finish_chunks());
        second
    };
    // p95 of ~100 ms first tokens: the 127 ms bucket's bound.
    let up = Scripted {
        fire_only: Some(127),
        ..Scripted::new(vec![
            Script::Hang,
            Script::Reply(200, vec![], vec![streamed()]),
        ])
    };
    let stream = r#"{"model":"p","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = run_in(&up, &Config::from_json(HEDGED).unwrap(), &health, stream).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    // A whole answer's time is its whole generation's: after_ms applies.
    let whole = r#"{"model":"p","messages":[{"role":"user","content":"hi"}]}"#;
    for (samples, fire) in [(&health, 5_000), (&Health::new(), 5_000)] {
        let up = Scripted {
            fire_only: Some(fire),
            ..Scripted::new(vec![
                Script::Hang,
                Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
            ])
        };
        let reply = run_in(&up, &Config::from_json(HEDGED).unwrap(), samples, whole).unwrap();
        assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    }
    // Without samples, after_ms applies to a stream too.
    let up = Scripted {
        fire_only: Some(5_000),
        ..Scripted::new(vec![
            Script::Hang,
            Script::Reply(200, vec![], vec![streamed()]),
        ])
    };
    let reply = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        stream,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
}

#[test]
fn a_hedge_survives_a_failure_no_other_target_would_fix() {
    // a hangs, then answers; the hedge to b is refused with a 400: a's
    // answer is the client's, not b's 400.
    let (tx, rx) = mpsc::unbounded();
    let refused =
        br#"{"error":{"message":"context too long for mb","type":"invalid_request_error"}}"#;
    let up = Scripted {
        fire_only: Some(300),
        ..Scripted::new(vec![
            Script::Channel(rx),
            Script::Feeding(tx, COMPLETION.as_bytes().to_vec(), 400, refused.to_vec()),
        ])
    };
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let reply = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        body,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("a"));
    assert_eq!(
        header(&reply, "x-gateway-hedge"),
        Some("lost=none"),
        "a hedge ran, none lost"
    );
    let served = reply.served.unwrap();
    assert!(served.hedged && served.hedge_losers.is_empty());
    // Alone, the 400 is the client's.
    let up = Scripted::new(vec![Script::Reply(
        400,
        vec![],
        vec![br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#.to_vec()],
    )]);
    let only_b = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let e = run_in(
        &up,
        &Config::from_json(HEDGED).unwrap(),
        &Health::new(),
        only_b,
    )
    .err()
    .unwrap();
    assert_eq!(e.status(), 400);
}

#[test]
fn gemini_target_is_translated_both_ways() {
    let answer = br#"{"candidates":[{"content":{"parts":[{"text":"Bonjour"}],"role":"model"},"finishReason":"STOP","index":0}],
        "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
    let up = Scripted::new(vec![Script::Reply(200, vec![], vec![answer.to_vec()])]);
    let reply = run(
        &up,
        r#"{"model":"gm","messages":[{"role":"system","content":"French."},{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("g"));
    assert_eq!(reply.usage, Some(Usage::new(3, 1, None)));
    let v: Value = serde_json::from_slice(&full_body(reply)).unwrap();
    assert_eq!(v["id"], "chatcmpl-r1");
    assert_eq!(v["created"], 1_700_000_000);
    assert_eq!(v["choices"][0]["message"]["content"], "Bonjour");
    let seen = up.seen.borrow();
    assert_eq!(
        seen[0].url,
        "http://g.test/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert!(
        seen[0]
            .headers
            .contains(&("x-goog-api-key".into(), "AIza-provider-secret-g".into()))
    );
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "French.");
}

#[test]
fn gemini_stream_is_translated_as_it_arrives() {
    // Gemini separates events with CRLF CRLF and sends no [DONE].
    let event = |json: &str| format!("data: {json}\r\n\r\n").into_bytes();
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![],
        vec![
            event(
                r#"{"candidates":[{"content":{"parts":[{"text":"Bon"}]},"index":0}],"responseId":"r2"}"#,
            ),
            event(
                r#"{"candidates":[{"content":{"parts":[{"text":"jour"}]},"finishReason":"STOP","index":0}]}"#,
            ),
        ],
    )]);
    let reply = run(
        &up,
        r#"{"model":"gm","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    let text = String::from_utf8(full_body(reply)).unwrap();
    assert!(
        up.seen.borrow()[0]
            .url
            .ends_with(":streamGenerateContent?alt=sse")
    );
    assert!(
        text.starts_with(
            r#"data: {"id":"chatcmpl-r2","object":"chat.completion.chunk","created":1700000000,"#
        ),
        "{text}"
    );
    assert!(
        text.contains("\"content\":\"Bon\"") && text.contains("\"content\":\"jour\""),
        "{text}"
    );
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[test]
fn gemini_rate_limit_fails_over_to_the_next_target() {
    let limited = br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED",
        "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"20s"}]}}"#;
    let up = Scripted::new(vec![
        Script::Reply(429, vec![], vec![limited.to_vec()]),
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
    ]);
    let reply = run(
        &up,
        r#"{"model":"gm","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
}

#[test]
fn demo_model_answers_without_the_network() {
    let up = Scripted::new(vec![]);
    let reply = run(
        &up,
        r#"{"model":"demo","messages":[{"role":"user","content":"ping"}]}"#,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("demo"));
    let v: Value = serde_json::from_slice(&full_body(reply)).unwrap();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("ping")
    );
    assert!(up.seen.borrow().is_empty());
}

#[test]
fn unknown_model_is_404_before_any_upstream_call() {
    let up = Scripted::new(vec![]);
    let err = run(
        &up,
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    )
    .err()
    .unwrap();
    assert_eq!(err.status(), 404);
    assert_eq!(Reply::error(&err).status, 404);
}

#[test]
fn body_paths_are_the_client_protocols_endpoints() {
    for path in BODY_PATHS {
        let r = route("POST", path).unwrap();
        assert!(
            matches!(
                r,
                Route::ChatCompletions
                    | Route::Embeddings
                    | Route::Messages
                    | Route::CountTokens
                    | Route::Responses
            ),
            "{path}: {r:?}"
        );
    }
}

#[test]
fn routes_map_methods_and_paths() {
    assert_eq!(
        route("POST", "/v1/chat/completions"),
        Ok(Route::ChatCompletions)
    );
    assert_eq!(
        route("POST", "/v1/chat/completions/"),
        Ok(Route::ChatCompletions)
    );
    assert_eq!(
        route("GET", "/v1/models/meta-llama%2Fx"),
        Ok(Route::Model("meta-llama/x".into()))
    );
    assert_eq!(route("HEAD", "/health"), Ok(Route::Health));
    assert_eq!(
        route("PUT", "/admin/config"),
        Ok(Route::Admin(AdminRoute::Config))
    );
    assert_eq!(
        route("POST", "/admin/keys"),
        Ok(Route::Admin(AdminRoute::Keys))
    );
    assert_eq!(
        route("PATCH", "/admin/keys/abc"),
        Ok(Route::Admin(AdminRoute::Key("abc".into())))
    );
    assert_eq!(
        route("POST", "/admin/keys/abc/rotate"),
        Ok(Route::Admin(AdminRoute::RotateKey("abc".into())))
    );
    assert_eq!(
        route("POST", "/admin/keys/abc/revoke"),
        Ok(Route::Admin(AdminRoute::RevokeKey("abc".into())))
    );
    assert_eq!(
        route("GET", "/admin/keys/abc/other").unwrap_err().status(),
        404
    );
    assert_eq!(
        route("GET", "/admin/keys/abc/rotate").unwrap_err().status(),
        405
    );
    let e = route("GET", "/v1/chat/completions").unwrap_err();
    assert_eq!(e.status(), 405);
    let reply = Reply::error(&e);
    assert_eq!(header(&reply, "allow"), Some("POST"));
    assert_eq!(route("GET", "/v2/nothing").unwrap_err().status(), 404);
    assert_eq!(route("GET", "/v1/models/"), Ok(Route::Models));
    assert_eq!(percent_decode("a%2"), "a%2");
}

#[test]
fn worst_case_takes_the_dearest_candidate_and_the_output_cap() {
    let config = Config::from_json(
        r#"{"version":1,
          "providers":{"cheap":{"kind":"openai-compatible","base_url":"http://a.test/v1","models":{"c":{"input_per_mtok":1,"output_per_mtok":2,"max_output_tokens":100}}},
                       "dear":{"kind":"openai-compatible","base_url":"http://b.test/v1","models":{"d":{"input_per_mtok":10,"output_per_mtok":20}}}},
          "models":{"m":{"targets":[{"provider":"cheap","model":"c"},{"provider":"dear","model":"d"}]}}}"#,
    )
    .unwrap();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let p = prepare(&config, &ctx, body).unwrap();
    let input = body.len() as u64;
    let (cost, tokens) = p.worst_case();
    // The dear target with the default output cap is the worst case.
    assert_eq!(
        cost,
        Pricing {
            input_per_mtok: 10.0,
            output_per_mtok: 20.0,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
        }
        .cost(input, DEFAULT_OUTPUT_CAP, 0)
    );
    assert_eq!(tokens, input + DEFAULT_OUTPUT_CAP);
    let capped = br#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#;
    let p = prepare(&config, &ctx, capped).unwrap();
    assert_eq!(p.worst_case().1, capped.len() as u64 + 3_000 + 7);
    // A whole answer with no usage: its output estimated from its bytes,
    // within the request's cap.
    assert_eq!(p.whole_output_estimate(&[b'x'; 20]), 5);
    assert_eq!(p.whole_output_estimate(&[b'x'; 400]), 7);
    let uncapped = prepare(&config, &ctx, body).unwrap();
    assert_eq!(uncapped.whole_output_estimate(&[b'x'; 401]), 101);
}

#[test]
fn settlement_charges_reported_usage_or_an_estimate() {
    let config = Config::from_json(CONFIG).unwrap();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    let p = prepare(&config, &ctx, NON_STREAM.as_bytes()).unwrap();
    let acc = p.accounting();
    let served = Served {
        provider: "a".into(),
        model: "ma".into(),
        pricing: Pricing {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            cached_input_per_mtok: Some(0.5),
            cache_write_per_mtok: None,
        },
        attempts: 1,
        hedge_losers: vec![],
        hedged: false,
        failed: Vec::new(),
    };
    let (cost, ev) = settlement(
        &acc,
        Some(&served),
        Some(Usage::new(1_000, 10, Some(400))),
        99,
        true,
        false,
    );
    assert_eq!(cost, served.pricing.cost(1_000, 10, 400));
    assert_eq!(
        (
            ev.model.as_str(),
            ev.input_tokens,
            ev.output_tokens,
            ev.cached_tokens
        ),
        ("m", 1_000, 10, 400)
    );
    let (_, ev) = settlement(&acc, Some(&served), None, 12, false, true);
    assert_eq!(
        (ev.input_tokens, ev.output_tokens, ev.error),
        (acc.input_estimate, 12, true)
    );
    assert_eq!(settlement(&acc, None, None, 0, false, true).0, Money::ZERO);
    // An unfinished stream's usage can be partial (Anthropic's comes at its
    // start with a placeholder output, its total at the end): it is charged
    // at least an output token an event sent, never less than reported.
    let partial = Some(Usage::new(2, 1, None));
    let (cost, ev) = settlement(&acc, Some(&served), partial, 12, false, true);
    assert_eq!((ev.input_tokens, ev.output_tokens), (2, 12));
    assert_eq!(cost, served.pricing.cost(2, 12, 0));
    let (_, ev) = settlement(
        &acc,
        Some(&served),
        Some(Usage::new(2, 30, None)),
        12,
        false,
        true,
    );
    assert_eq!(ev.output_tokens, 30);
    // A finished stream's usage is the provider's, as it says.
    let (_, ev) = settlement(&acc, Some(&served), partial, 12, true, false);
    assert_eq!(ev.output_tokens, 1);
    // A continued answer's first leg was cut, the answer not an error: its
    // partial usage is raised the same way, and the record is no error.
    let (_, ev) = settlement(&acc, Some(&served), partial, 12, false, false);
    assert_eq!((ev.output_tokens, ev.error), (12, false));
}

#[test]
fn settlement_charges_cache_reads_and_writes_at_their_prices() {
    let config = Config::from_json(CONFIG).unwrap();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    let acc = prepare(&config, &ctx, NON_STREAM.as_bytes())
        .unwrap()
        .accounting();
    // Claude Sonnet 4.5's prices; the write price left to the default for
    // an Anthropic provider, 1.25 × input = $3.75 per million.
    let anthropic: crate::config::Provider = serde_json::from_str(
        r#"{"kind":"anthropic","models":{"s":{"input_per_mtok":3,"output_per_mtok":15,"cached_input_per_mtok":0.3}}}"#,
    )
    .unwrap();
    let served = Served {
        provider: "anthropic".into(),
        model: "s".into(),
        pricing: anthropic.model_info("s").pricing(),
        attempts: 1,
        hedge_losers: vec![],
        hedged: false,
        failed: Vec::new(),
    };
    // Anthropic's usage: 1,000 fresh, 6,000 read, 3,000 written; 500 out.
    let usage = Usage::new(10_000, 500, Some(6_000)).with_cache_writes(3_000);
    let (cost, ev) = settlement(&acc, Some(&served), Some(usage), 0, true, false);
    // 1,000 × 3,000,000 + 6,000 × 300,000 + 3,000 × 3,750,000 + 500 × 15,000,000.
    assert_eq!(cost, Money(23_550_000_000));
    assert_eq!((ev.input_tokens, ev.cached_tokens), (10_000, 6_000));
}

fn recorder() -> (Rc<RefCell<Vec<StreamOutcome>>>, StreamEnd) {
    let seen = Rc::new(RefCell::new(vec![]));
    let sink = seen.clone();
    (seen, Box::new(move |o| sink.borrow_mut().push(o)))
}

fn run_with_end(up: &Scripted, body: &str, end: StreamEnd) -> Reply {
    let config = Config::from_json(CONFIG).unwrap();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    let mut p = prepare(&config, &ctx, body.as_bytes()).unwrap();
    p.route(&ctx, &anyone()).unwrap();
    block_on(dispatch(up, &ctx, &p, Some(end))).unwrap()
}

/// A caller with no key scope and no location.
fn anyone() -> Caller<'static> {
    Caller {
        origin: &NOWHERE,
        header: &|_| None,
        key_id: "k",
        tier: None,
        jurisdictions: None,
        random: 0.0,
    }
}

static NOWHERE: Origin = Origin {
    colo: None,
    country: None,
    continent: None,
    is_eu: false,
    location: None,
};

#[test]
fn a_finished_stream_reports_its_usage_once() {
    let mut body = chunk("Hi");
    body.extend(finish_chunks());
    let up = Scripted::new(vec![Script::Reply(200, vec![], vec![body])]);
    let (seen, end) = recorder();
    let reply = run_with_end(&up, STREAM, end);
    assert_eq!(reply.served.as_ref().unwrap().provider, "a");
    full_body(reply);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].complete);
    assert_eq!(seen[0].usage, Some(Usage::new(1, 2, None)));
}

#[test]
fn a_stream_the_client_abandons_reports_what_was_sent() {
    let (tx, rx) = mpsc::unbounded();
    tx.unbounded_send(Ok(chunk("one"))).unwrap();
    let up = Scripted::new(vec![Script::Channel(rx)]);
    let (seen, end) = recorder();
    let reply = run_with_end(&up, STREAM, end);
    let ReplyBody::Stream(mut body) = reply.body else {
        panic!("not a stream")
    };
    block_on(body.next()).unwrap().unwrap();
    assert!(seen.borrow().is_empty());
    drop(body);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].complete, seen[0].events, seen[0].usage),
        (false, 1, None)
    );
}

#[test]
fn a_broken_stream_reports_incomplete() {
    let up = Scripted::new(vec![Script::BrokenBody(vec![chunk("Hel")])]);
    let (seen, end) = recorder();
    full_body(run_with_end(&up, STREAM, end));
    assert_eq!(seen.borrow().len(), 1);
    assert!(!seen.borrow()[0].complete);
}

fn run_in(
    up: &Scripted,
    config: &Config,
    health: &Health,
    body: &str,
) -> Result<Reply, GatewayError> {
    let ctx = Ctx {
        now_ms: 1_000,
        clock: &|| 1_000,
        secret: &secret,
        health,
    };
    block_on(chat_completions(up, config, &ctx, body.as_bytes()))
}

#[test]
fn a_target_silent_past_the_headers_timeout_fails_over() {
    let up = Scripted {
        timers_fire: true,
        ..Scripted::new(vec![
            Script::Hang,
            Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
        ])
    };
    let reply = run_in(
        &up,
        &Config::from_json(CONFIG).unwrap(),
        &Health::new(),
        NON_STREAM,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
}

#[test]
fn a_whole_answer_gets_the_first_byte_timeout_for_headers_and_body_with_one_timer() {
    // Providers write a non-streamed answer's headers when it is ready: a
    // 20-second generation is not a provider silent past the connect timeout.
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![],
        vec![COMPLETION.as_bytes().to_vec()],
    )]);
    let config = Config::from_json(&CONFIG.replacen(
        r#""models""#,
        r#""failover":{"connect_timeout_ms":15000,"first_byte_timeout_ms":60000},"models""#,
        1,
    ))
    .unwrap();
    run_in(&up, &config, &Health::new(), NON_STREAM).unwrap();
    assert_eq!(*up.sleeps.borrow(), vec![60_000]);
}

#[test]
fn the_runtime_times_a_whole_answer_when_it_can_and_a_miss_fails_over() {
    let up = Scripted {
        deadlines: Some(RefCell::default()),
        ..Scripted::new(vec![
            Script::Transport(crate::http::DEADLINE_PASSED),
            Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
        ])
    };
    let reply = run_in(
        &up,
        &Config::from_json(CONFIG).unwrap(),
        &Health::new(),
        NON_STREAM,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
    assert_eq!(
        *up.deadlines.as_ref().unwrap().borrow(),
        vec![60_000, 60_000]
    );
    assert!(up.sleeps.borrow().is_empty(), "no timer of the core's own");
}

#[test]
fn a_missed_runtime_deadline_is_reported_as_a_timeout() {
    let up = Scripted {
        deadlines: Some(RefCell::default()),
        ..Scripted::new(vec![Script::Transport(crate::http::DEADLINE_PASSED)])
    };
    let Err(e) = run(
        &up,
        r#"{"model":"solo","messages":[{"role":"user","content":"hi"}]}"#,
    ) else {
        panic!("answered")
    };
    assert!(
        matches!(
            e,
            GatewayError::Timeout {
                phase: "complete answer",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_stream_without_a_first_token_in_time_fails_over() {
    let (_tx, rx) = mpsc::unbounded();
    let mut second = chunk("late but fine");
    second.extend(finish_chunks());
    let up = Scripted {
        timers_fire: true,
        ..Scripted::new(vec![
            Script::Channel(rx),
            Script::Reply(200, vec![], vec![second]),
        ])
    };
    let reply = run_in(
        &up,
        &Config::from_json(CONFIG).unwrap(),
        &Health::new(),
        STREAM,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
}

#[test]
fn a_429_cools_the_target_for_its_retry_after_within_the_cap() {
    let config = Config::from_json(CONFIG).unwrap();
    let health = Health::new();
    let up = Scripted::new(vec![
        Script::Reply(429, vec![("retry-after", "5")], vec![b"{}".to_vec()]),
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
    ]);
    run_in(&up, &config, &health, NON_STREAM).unwrap();
    assert_eq!(
        health.availability("a/ma", 1_000),
        crate::routing::Availability::Until(6_000)
    );
    // While it cools, the next request goes straight to the other target.
    let reply = run_in(&up, &config, &health, NON_STREAM).unwrap();
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("1"));
    assert_eq!(up.seen.borrow().len(), 3);
    assert!(up.seen.borrow()[2].url.starts_with("http://b.test"));
}

#[test]
fn the_breaker_opens_after_repeated_failures_and_skips_the_target() {
    let config = Config::from_json(
        &CONFIG.replace(r#""models":{"m""#, r#""failover":{"breaker":{"failures":2,"window_ms":60000,"cooldown_ms":30000}},"models":{"m""#),
    )
    .unwrap();
    let health = Health::new();
    let fail_then_ok = || {
        vec![
            Script::Reply(500, vec![], vec![b"{}".to_vec()]),
            Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
        ]
    };
    let mut script = fail_then_ok();
    script.extend(fail_then_ok());
    script.push(Script::Reply(
        200,
        vec![],
        vec![COMPLETION.as_bytes().to_vec()],
    ));
    let up = Scripted::new(script);
    run_in(&up, &config, &health, NON_STREAM).unwrap();
    run_in(&up, &config, &health, NON_STREAM).unwrap();
    // Open: the third request does not try `a` at all.
    let reply = run_in(&up, &config, &health, NON_STREAM).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("1"));
    assert_eq!(up.seen.borrow().len(), 5);
}

#[test]
fn the_region_header_names_the_serving_deployment() {
    let config = Config::from_json(&CONFIG.replace(
        r#""b":{"kind":"openai-compatible","base_url":"http://b.test/v1"}"#,
        r#""b":{"kind":"openai-compatible","base_url":"http://b.test/v1","region":"westeurope","jurisdiction":"eu"}"#,
    ))
    .unwrap();
    let up = Scripted::new(vec![
        Script::Reply(503, vec![], vec![b"{}".to_vec()]),
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
    ]);
    let reply = run_in(&up, &config, &Health::new(), NON_STREAM).unwrap();
    assert_eq!(header(&reply, "x-gateway-region"), Some("westeurope"));
}

fn run_embeddings(up: &Scripted, body: &str) -> Result<Reply, GatewayError> {
    let config = Config::from_json(CONFIG).unwrap();
    let ctx = Ctx {
        now_ms: 1_700_000_000_000,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    block_on(embeddings(up, &config, &ctx, body.as_bytes()))
}

const EMBEDDINGS_LIST: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPw=="},{"object":"embedding","index":1,"embedding":"AAAAwA=="}],"model":"ma","usage":{"prompt_tokens":5,"total_tokens":5}}"#;

#[test]
fn embeddings_pass_through_to_an_openai_target_with_model_rewritten() {
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![],
        vec![EMBEDDINGS_LIST.as_bytes().to_vec()],
    )]);
    let reply = run_embeddings(
        &up,
        r#"{"input":["a","b"],"model":"solo","encoding_format":"base64","dimensions":1,"user":"u-1"}"#,
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(header(&reply, "x-gateway-provider"), Some("a"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("1"));
    assert_eq!(reply.usage, Some(Usage::new(5, 0, None)));
    assert_eq!(reply.served.as_ref().unwrap().model, "ma");
    assert_eq!(full_body(reply), EMBEDDINGS_LIST.as_bytes());
    let seen = up.seen.borrow();
    assert_eq!(seen[0].url, "http://a.test/v1/embeddings");
    assert!(
        seen[0]
            .headers
            .contains(&("authorization".into(), "Bearer sk-provider-secret-a".into()))
    );
    assert_eq!(
        seen[0].body,
        br#"{"input":["a","b"],"model":"ma","encoding_format":"base64","dimensions":1,"user":"u-1"}"#
    );
}

#[test]
fn embeddings_fail_over_like_chat() {
    let up = Scripted::new(vec![
        Script::Reply(
            503,
            vec![],
            vec![b"{\"error\":{\"message\":\"down\"}}".to_vec()],
        ),
        Script::Reply(200, vec![], vec![EMBEDDINGS_LIST.as_bytes().to_vec()]),
    ]);
    let reply = run_embeddings(&up, r#"{"model":"m","input":"x"}"#).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
    assert_eq!(up.seen.borrow()[1].url, "http://b.test/v1/embeddings");

    // Not a list: retryable, so both targets are tried and both listed.
    let up = Scripted::new(vec![
        Script::Reply(200, vec![], vec![COMPLETION.as_bytes().to_vec()]),
        Script::Transport("connection refused"),
    ]);
    match run_embeddings(&up, r#"{"model":"m","input":"x"}"#) {
        Err(GatewayError::AllTargetsFailed { attempts }) => {
            assert!(attempts[0].reason.contains("not an embeddings list"));
            assert_eq!(attempts.len(), 2);
        }
        other => panic!("{:?}", other.err()),
    }

    // A 400 is the caller's: no second target; a lone 429 stays a 429.
    let up = Scripted::new(vec![Script::Reply(
        400,
        vec![],
        vec![b"{\"error\":{\"message\":\"bad input\"}}".to_vec()],
    )]);
    let err = run_embeddings(&up, r#"{"model":"m","input":"x"}"#)
        .err()
        .unwrap();
    assert_eq!(err.status(), 400);
    assert_eq!(up.seen.borrow().len(), 1);
    let up = Scripted::new(vec![Script::Reply(
        429,
        vec![("retry-after", "3")],
        vec![b"{\"error\":{\"message\":\"slow\"}}".to_vec()],
    )]);
    let reply = Reply::error(
        &run_embeddings(&up, r#"{"model":"solo","input":"x"}"#)
            .err()
            .unwrap(),
    );
    assert_eq!(
        (reply.status, header(&reply, "retry-after")),
        (429, Some("3"))
    );
}

#[test]
fn embeddings_skip_targets_without_them_and_refuse_a_model_with_none() {
    let up = Scripted::new(vec![]);
    let err = run_embeddings(&up, r#"{"model":"claude","input":"x"}"#)
        .err()
        .unwrap();
    assert_eq!(err.status(), 400);
    let body: Value = serde_json::from_slice(&err.to_body()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`claude` does not support embeddings"),
        "{body}"
    );
    assert!(up.seen.borrow().is_empty());

    // Anthropic first, then Gemini (which fails over), then OpenAI.
    let up = Scripted::new(vec![
        Script::Reply(
            500,
            vec![],
            vec![br#"{"error":{"code":500,"message":"boom","status":"INTERNAL"}}"#.to_vec()],
        ),
        Script::Reply(200, vec![], vec![EMBEDDINGS_LIST.as_bytes().to_vec()]),
    ]);
    let reply = run_embeddings(&up, r#"{"model":"mixed","input":"x"}"#).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("a"));
    assert_eq!(header(&reply, "x-gateway-attempts"), Some("2"));
    let seen = up.seen.borrow();
    assert_eq!(
        seen[0].url,
        "http://g.test/v1beta/models/gemini-embedding-001:embedContent"
    );
    assert!(!seen.iter().any(|r| r.url.contains("c.test")));
}

#[test]
fn gemini_embeddings_are_translated_both_ways() {
    let answer = br#"{"embeddings":[{"values":[1.0,-2.0]},{"values":[0.5,0.25]}]}"#;
    let up = Scripted::new(vec![Script::Reply(200, vec![], vec![answer.to_vec()])]);
    let reply = run_embeddings(
        &up,
        r#"{"model":"mixed","input":["hello","world!"],"encoding_format":"base64","dimensions":2}"#,
    )
    .unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("g"));
    // Gemini counts no tokens: four bytes of text a token.
    assert_eq!(reply.usage, Some(Usage::new(4, 0, None)));
    let v: Value = serde_json::from_slice(&full_body(reply)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"object":"list","data":[
            {"object":"embedding","index":0,"embedding":"AACAPwAAAMA="},
            {"object":"embedding","index":1,"embedding":"AAAAPwAAgD4="}],
            "model":"gemini-embedding-001","usage":{"prompt_tokens":4,"total_tokens":4}})
    );
    let seen = up.seen.borrow();
    assert_eq!(
        seen[0].url,
        "http://g.test/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert!(
        seen[0]
            .headers
            .contains(&("x-goog-api-key".into(), "AIza-provider-secret-g".into()))
    );
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body["requests"][1],
        serde_json::json!({"model":"models/gemini-embedding-001","content":{"parts":[{"text":"world!"}]},"outputDimensionality":2})
    );
}

#[test]
fn demo_model_embeds_without_the_network() {
    let up = Scripted::new(vec![]);
    let reply = run_embeddings(&up, r#"{"model":"demo","input":"ping"}"#).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("demo"));
    assert_eq!(reply.usage, Some(Usage::new(1, 0, None)));
    let v: Value = serde_json::from_slice(&full_body(reply)).unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert!(up.seen.borrow().is_empty());
}

#[test]
fn embeddings_requests_are_checked_before_routing() {
    let up = Scripted::new(vec![]);
    let status = |body: &str| run_embeddings(&up, body).err().unwrap().status();
    assert_eq!(status(r#"{"model":"m"}"#), 400);
    assert_eq!(status(r#"{"model":"nope","input":"x"}"#), 404);
    assert_eq!(status("{"), 400);
    assert_eq!(route("POST", "/v1/embeddings"), Ok(Route::Embeddings));
    let e = route("GET", "/v1/embeddings").unwrap_err();
    assert_eq!(header(&Reply::error(&e), "allow"), Some("POST"));
    assert!(up.seen.borrow().is_empty());
}

#[test]
fn embeddings_reserve_input_only_and_report_their_model() {
    let config = Config::from_json(
        r#"{"version":1,
          "providers":{"o":{"kind":"openai-compatible","base_url":"http://a.test/v1","models":{"e":{"input_per_mtok":1,"output_per_mtok":50}}}},
          "models":{"emb":{"targets":[{"provider":"o","model":"e"}]}}}"#,
    )
    .unwrap();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    let body = br#"{"model":"emb","input":["a","b"]}"#;
    // Both endpoints prepare through one function type, so the edge can
    // serve them with one request path.
    let prepare_fn: Prepare = prepare_embeddings;
    let p = prepare_fn(&config, &ctx, body).unwrap();
    assert_eq!((p.model(), p.stream()), ("emb", false));
    let input = body.len() as u64;
    let pricing = Pricing {
        input_per_mtok: 1.0,
        output_per_mtok: 50.0,
        cached_input_per_mtok: None,
        cache_write_per_mtok: None,
    };
    assert_eq!(p.worst_case(), (pricing.cost(input, 0, 0), input));
    assert_eq!(
        p.accounting(),
        Accounting {
            model: "emb".into(),
            input_estimate: input.div_ceil(4)
        }
    );
    let chat: Prepare = prepare;
    let streamed = STREAM.replace("\"m\"", "\"emb\"");
    let p = chat(&config, &ctx, streamed.as_bytes()).unwrap();
    assert_eq!((p.model(), p.stream()), ("emb", true));
}

#[test]
fn targets_without_embeddings_do_not_use_up_the_attempts() {
    // One attempt allowed: the Anthropic target listed first must not be it.
    let config = Config::from_json(
        r#"{"version":1,"failover":{"max_attempts":1},
          "providers":{"c":{"kind":"anthropic","base_url":"http://c.test","api_key_secret":"A_KEY"},
                       "b":{"kind":"openai-compatible","base_url":"http://b.test/v1"}},
          "models":{"mixed":{"targets":[{"provider":"c","model":"claude-x"},{"provider":"b","model":"mb"}]}}}"#,
    )
    .unwrap();
    let ctx = Ctx {
        now_ms: 0,
        clock: &|| 0,
        secret: &secret,
        health: &Health::new(),
    };
    let up = Scripted::new(vec![Script::Reply(
        200,
        vec![],
        vec![EMBEDDINGS_LIST.as_bytes().to_vec()],
    )]);
    let body = br#"{"model":"mixed","input":"x"}"#;
    let reply = block_on(embeddings(&up, &config, &ctx, body)).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    assert_eq!(up.seen.borrow()[0].url, "http://b.test/v1/embeddings");
    // Chat still starts with the Anthropic target.
    let mut p = prepare(
        &config,
        &ctx,
        br#"{"model":"mixed","messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap();
    route_anonymous(&mut p, &ctx).unwrap();
    assert_eq!(p.candidates[0].target.name, "c");
}

#[test]
fn a_stream_that_breaks_after_only_its_role_chunk_still_fails_over() {
    let role = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n".to_vec();
    let mut second = chunk("from b");
    second.extend(finish_chunks());
    let up = Scripted::new(vec![
        Script::BrokenBody(vec![role]),
        Script::Reply(200, vec![], vec![second]),
    ]);
    let reply = run(&up, STREAM).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
    let text = String::from_utf8(full_body(reply)).unwrap();
    assert_eq!(
        text.matches("\"role\"").count(),
        0,
        "b's chunks only: {text}"
    );
    assert!(text.contains("from b") && text.ends_with("data: [DONE]\n\n"));
}

#[test]
fn each_attempt_gets_its_own_first_token_allowance() {
    // The clock advances 400 ms per reading; the first-token allowance is
    // 1,000 ms. The first target never sends a token; the second does, on
    // its first poll. Were the allowance counted from the request's start,
    // the second attempt would already be out of time.
    let config = Config::from_json(&CONFIG.replace(
        r#""models":{"m""#,
        r#""failover":{"first_byte_timeout_ms":1000},"models":{"m""#,
    ))
    .unwrap();
    let ticks = std::cell::Cell::new(0u64);
    let clock = || {
        ticks.set(ticks.get() + 400);
        ticks.get()
    };
    let (_tx, rx) = mpsc::unbounded();
    let mut second = chunk("on time");
    second.extend(finish_chunks());
    let up = Scripted {
        timers_fire: true,
        ..Scripted::new(vec![
            Script::Channel(rx),
            Script::Reply(200, vec![], vec![second]),
        ])
    };
    let health = Health::new();
    let ctx = Ctx {
        now_ms: 0,
        clock: &clock,
        secret: &secret,
        health: &health,
    };
    let reply = block_on(chat_completions(&up, &config, &ctx, STREAM.as_bytes())).unwrap();
    assert_eq!(header(&reply, "x-gateway-provider"), Some("b"));
}
