//! Continuation: the seam, the second leg's rewriting, the request body.

use std::cell::RefCell;
use std::rc::Rc;

use futures::StreamExt;
use futures::executor::block_on;
use serde_json::{Value, json};

use super::*;
use crate::limits::Pricing;

fn chunk(id: &str, model: &str, delta: Value, finish: Option<&str>) -> Vec<u8> {
    let c = json!({
        "id": id, "object": "chat.completion.chunk", "created": 7, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    let mut out = Vec::new();
    encode_data(&mut out, c.to_string().as_bytes());
    out
}

fn text(id: &str, model: &str, t: &str) -> Vec<u8> {
    chunk(id, model, json!({"content": t}), None)
}

fn error_event() -> Vec<u8> {
    let mut out = Vec::new();
    encode_data(
        &mut out,
        br#"{"error":{"message":"cut","type":"upstream_error"}}"#,
    );
    out
}

fn usage_chunk(id: &str, p: u64, c: u64) -> Vec<u8> {
    let u = json!({"id": id, "object": "chat.completion.chunk", "created": 9, "model": "m2", "choices": [],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
    let mut out = Vec::new();
    encode_data(&mut out, u.to_string().as_bytes());
    out
}

fn stream_of(parts: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures::stream::iter(parts.into_iter().map(Ok)))
}

fn served(provider: &str) -> Served {
    Served {
        provider: provider.into(),
        model: "m".into(),
        pricing: Pricing::default(),
        attempts: 1,
        hedge_losers: Vec::new(),
    }
}

/// Runs a first leg through `continuable`, the second leg (if asked for)
/// being `second`: the client's events' data, the prefix asked with, and
/// the whole answer's outcome.
fn run(
    first: Vec<Vec<u8>>,
    second: Option<Vec<Vec<u8>>>,
) -> (Vec<String>, Option<String>, StreamOutcome) {
    let first_outcome = Rc::new(RefCell::new(Some(StreamOutcome {
        usage: None,
        events: 4,
        complete: false,
        continued: None,
    })));
    let asked = Rc::new(RefCell::new(None));
    let asked_in = asked.clone();
    let start: StartLeg = Box::new(move |prefix| {
        *asked_in.borrow_mut() = Some(prefix);
        Box::pin(async move {
            let parts = second?;
            Some(Leg {
                body: stream_of(parts),
                served: served("backup"),
                outcome: Rc::new(RefCell::new(Some(StreamOutcome {
                    usage: None,
                    events: 3,
                    complete: true,
                    continued: None,
                }))),
            })
        })
    });
    let reported = Rc::new(RefCell::new(None));
    let reported_in = reported.clone();
    let report: StreamEnd = Box::new(move |o| *reported_in.borrow_mut() = Some(o));
    let mut s = continuable(stream_of(first), first_outcome, 10, start, report);
    let bytes = block_on(async {
        let mut all = Vec::new();
        while let Some(b) = s.next().await {
            all.extend(b.unwrap());
        }
        all
    });
    drop(s);
    let mut parser = SseParser::new();
    parser.push(&bytes);
    let mut events = Vec::new();
    while let Some(ev) = parser.finish() {
        events.push(ev.data);
    }
    let asked = asked.borrow_mut().take();
    let outcome = reported.borrow_mut().take().expect("reported once");
    (events, asked, outcome)
}

fn content_of(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn overlap_is_the_repeated_end_from_a_word_boundary() {
    assert_eq!(
        overlap("The quick brown fo", "fox jumps"),
        2,
        "a word finished"
    );
    assert_eq!(
        overlap("The quick brown fo", "brown fox"),
        8,
        "a word repeated mid-way"
    );
    assert_eq!(overlap("The quick brown ", "brown fox"), 6);
    assert_eq!(overlap("The quick brown", "fox"), 0, "nothing repeated");
    assert_eq!(
        overlap("The quick brown fox", "brown fox jumps"),
        9,
        "words repeated"
    );
    assert_eq!(overlap("Hello ", " world"), 1, "a space repeated");
    assert_eq!(
        overlap("a cat", "t sat"),
        0,
        "a letter inside a word is no repeat"
    );
    assert_eq!(overlap("", "anything"), 0);
    assert_eq!(overlap("naïve é", "é then"), 2, "multi-byte characters");
}

#[test]
fn a_continuation_body_adds_the_turns_and_keeps_the_rest() {
    let req = ChatRequest::parse(
        br#"{"model":"m","messages":[{"role":"user","content":"Count"}],"stream":true,"temperature":0.2}"#,
    )
    .unwrap();
    let prefill: Value =
        serde_json::from_slice(&continuation_body(&req, "One, two, ", true).unwrap()).unwrap();
    assert_eq!(
        prefill["messages"],
        json!([{"role":"user","content":"Count"},{"role":"assistant","content":"One, two,"}])
    );
    assert_eq!(
        (prefill["stream"].clone(), prefill["temperature"].clone()),
        (json!(true), json!(0.2))
    );
    let prompted: Value =
        serde_json::from_slice(&continuation_body(&req, "One, two, ", false).unwrap()).unwrap();
    assert_eq!(
        prompted["messages"][2],
        json!({"role":"user","content":CONTINUATION_PROMPT})
    );
    assert!(prefills(ProviderKind::Anthropic) && prefills(ProviderKind::Gemini));
    assert!(!prefills(ProviderKind::Openai) && !prefills(ProviderKind::OpenaiCompatible));
}

#[test]
fn a_broken_stream_is_finished_by_the_second_leg_as_one_stream() {
    let first = vec![
        chunk(
            "c1",
            "m1",
            json!({"role": "assistant", "content": ""}),
            None,
        ),
        text("c1", "m1", "The quick "),
        text("c1", "m1", "brown fo"),
        error_event(),
    ];
    let second = vec![
        chunk(
            "c2",
            "m2",
            json!({"role": "assistant", "content": ""}),
            None,
        ),
        text("c2", "m2", "fox jumps over "),
        text("c2", "m2", "the lazy dog."),
        chunk("c2", "m2", json!({}), Some("stop")),
        usage_chunk("c2", 20, 5),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let (events, asked, outcome) = run(first, Some(second));
    assert_eq!(asked.as_deref(), Some("The quick brown fo"));
    assert_eq!(
        content_of(&events),
        "The quick brown fox jumps over the lazy dog."
    );
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == "c1" && c["model"] == "m1" && c["created"] == 7)
    );
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "the error event is gone"
    );
    let roles = chunks
        .iter()
        .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
        .count();
    assert_eq!(roles, 1, "one role");
    let finishes = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishes, 1, "one finish_reason");
    // Usage: the second leg's plus the first's estimate (input 10, 4 events).
    let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap()["usage"].clone();
    assert_eq!(
        usage,
        json!({"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39})
    );
    assert!(outcome.complete);
    let leg = outcome.continued.expect("a second leg");
    assert_eq!(
        (leg.served.provider.as_str(), leg.events, leg.prefix_bytes),
        ("backup", 3, 18)
    );
    assert_eq!(outcome.events, 4);
}

#[test]
fn a_long_repeat_is_held_until_it_stops_matching() {
    let said = "One two three four five six seven eight nine ten eleven twelve thirteen ";
    let first = vec![text("c1", "m1", said), error_event()];
    let second = vec![
        text("c2", "m2", "six seven eight nine ten "),
        text("c2", "m2", "eleven twelve thirteen "),
        text("c2", "m2", "fourteen."),
        chunk("c2", "m2", json!({}), Some("stop")),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let (events, _, _) = run(first, Some(second));
    assert_eq!(content_of(&events), format!("{said}fourteen."));
}

#[test]
fn a_stream_broken_in_a_tool_call_or_with_no_second_leg_ends_with_its_error() {
    let call = json!({"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"a"}}]});
    let first = vec![
        text("c1", "m1", "Let me look."),
        chunk("c1", "m1", call, None),
        error_event(),
    ];
    let (events, asked, outcome) = run(first, Some(vec![]));
    assert_eq!(asked, None, "a tool call is not continued");
    assert!(events.last().unwrap().contains("\"error\""));
    assert!(!outcome.complete && outcome.continued.is_none());

    let first = vec![text("c1", "m1", "Half an ans"), error_event()];
    let (events, asked, outcome) = run(first, None);
    assert_eq!(asked.as_deref(), Some("Half an ans"));
    assert!(
        events.last().unwrap().contains("\"error\""),
        "no target: the error"
    );
    assert!(!outcome.complete && outcome.continued.is_none());
}

#[test]
fn a_whole_first_leg_passes_unchanged() {
    let first = vec![
        text("c1", "m1", "All of it."),
        chunk("c1", "m1", json!({}), Some("stop")),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let (events, asked, outcome) = run(first, None);
    assert_eq!(asked, None);
    assert_eq!(content_of(&events), "All of it.");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(!outcome.complete || outcome.continued.is_none());
    assert!(outcome.continued.is_none());
}
