//! Cache keys, entries and replays.

use super::*;
use crate::config::{CachePolicy, CacheScope};

fn policy(scope: CacheScope, sampled: bool) -> CachePolicy {
    CachePolicy {
        ttl_s: 60,
        scope,
        sampled,
    }
}

const ME: Asker<'static> = Asker {
    key_id: "k1",
    team: Some("search"),
    targets: "a/m\nb/m",
};

fn key_of(body: &str, p: &CachePolicy, asker: Asker<'_>) -> Option<String> {
    let req = ChatRequest::parse(body.as_bytes()).unwrap();
    key(&req, p, asker)
}

const Q: &str =
    r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"What is 2+2?"}]}"#;

#[test]
fn field_order_spacing_and_delivery_do_not_change_the_key() {
    let p = policy(CacheScope::Key, false);
    let a = key_of(Q, &p, ME).unwrap();
    let b = key_of(
        r#"{ "messages": [ {"content":"What is 2+2?", "role":"user"} ], "stream": true,
             "stream_options":{"include_usage":true}, "user":"u-9", "temperature": 0, "model": "m" }"#,
        &p,
        ME,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 64, "a SHA-256, no prompt text");
    assert!(!a.contains("2+2"));
    let other = key_of(&Q.replace("2+2", "2+3"), &p, ME).unwrap();
    assert_ne!(a, other);
    let tools = key_of(
        &Q.replace(r#""temperature":0"#, r#""temperature":0,"max_tokens":5"#),
        &p,
        ME,
    )
    .unwrap();
    assert_ne!(a, tools, "sampling parameters are part of the request");
}

#[test]
fn scopes_keep_keys_and_teams_apart() {
    let other_key = Asker { key_id: "k2", ..ME };
    let other_team = Asker {
        key_id: "k3",
        team: Some("ads"),
        ..ME
    };
    let key = policy(CacheScope::Key, false);
    assert_ne!(key_of(Q, &key, ME), key_of(Q, &key, other_key));
    let team = policy(CacheScope::Team, false);
    assert_eq!(key_of(Q, &team, ME), key_of(Q, &team, other_key));
    assert_ne!(key_of(Q, &team, ME), key_of(Q, &team, other_team));
    let global = policy(CacheScope::Global, false);
    assert_eq!(key_of(Q, &global, ME), key_of(Q, &global, other_team));
    assert_ne!(
        key_of(Q, &global, ME),
        key_of(Q, &key, ME),
        "scopes never share"
    );
    // Routed to other targets (another jurisdiction, tier or rule): never
    // the same entry, whatever the scope.
    let eu_only = Asker {
        targets: "b/m",
        ..ME
    };
    assert_ne!(key_of(Q, &global, ME), key_of(Q, &global, eu_only));
}

#[test]
fn sampled_requests_are_cached_only_when_the_policy_says_so() {
    let no = policy(CacheScope::Key, false);
    let yes = policy(CacheScope::Key, true);
    let warm = Q.replace(r#""temperature":0"#, r#""temperature":0.7"#);
    let default = Q.replace(r#""temperature":0,"#, "");
    assert!(key_of(&warm, &no, ME).is_none());
    assert!(
        key_of(&default, &no, ME).is_none(),
        "no temperature: the default of 1"
    );
    assert!(key_of(&warm, &yes, ME).is_some());
    let several = Q.replace(r#""temperature":0"#, r#""temperature":0,"n":2"#);
    assert!(key_of(&several, &yes, ME).is_none());
}

#[test]
fn cache_control_directives_are_read() {
    assert_eq!(directive(None), Directive::Normal);
    assert_eq!(directive(Some("no-cache")), Directive::Refresh);
    assert_eq!(directive(Some("max-age=0, No-Store")), Directive::Bypass);
}

const STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Four\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" it is.\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn a_streamed_answer_replays_as_it_came_and_whole() {
    let e = Entry::from_stream(STREAM.as_bytes()).unwrap();
    let replayed = String::from_utf8(e.to_stream(true)).unwrap();
    assert_eq!(
        replayed, STREAM,
        "the original chunking, usage chunk and [DONE]"
    );
    let without = String::from_utf8(e.to_stream(false)).unwrap();
    assert!(!without.contains("prompt_tokens") && without.ends_with("data: [DONE]\n\n"));
    let whole: Value = serde_json::from_slice(&e.to_completion()).unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["id"], "c1");
    assert_eq!(whole["choices"][0]["message"]["content"], "Four it is.");
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole["usage"]["completion_tokens"], 3);
    // It survives storage.
    let stored = serde_json::to_vec(&e).unwrap();
    let back = serde_json::from_slice::<Entry>(&stored).unwrap();
    assert_eq!(back.to_stream(true), e.to_stream(true));
    assert_eq!(back.to_completion(), e.to_completion());
}

#[test]
fn a_whole_answer_replays_as_a_stream() {
    let body = br#"{"id":"c2","object":"chat.completion","created":9,"model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"add","arguments":"{\"a\":2}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}"#;
    let e = Entry::from_completion(body).unwrap();
    assert_eq!(e.to_completion(), body.to_vec(), "byte for byte");
    let sse = String::from_utf8(e.to_stream(false)).unwrap();
    // Reassembled from its own chunks: the same answer.
    let again = Entry::from_stream(sse.as_bytes()).unwrap();
    let a: Value = serde_json::from_slice(&again.to_completion()).unwrap();
    assert_eq!(
        a["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":2}"
    );
    assert_eq!(a["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn only_complete_answers_are_stored() {
    let cut = &STREAM[..STREAM.find("data: [DONE]").unwrap()];
    assert!(Entry::from_stream(cut.as_bytes()).is_none(), "no [DONE]");
    let unfinished = STREAM.replace("\"finish_reason\":\"stop\"", "\"finish_reason\":null");
    assert!(Entry::from_stream(unfinished.as_bytes()).is_none());
    let failed = format!(
        "{}data: {{\"error\":{{\"message\":\"boom\"}}}}\n\n",
        &STREAM[..200]
    );
    assert!(Entry::from_stream(failed.as_bytes()).is_none());
    assert!(Entry::from_completion(br#"{"error":{"message":"x"}}"#).is_none());
}

#[test]
fn the_plan_follows_the_policy_the_protocol_and_the_client() {
    let p = policy(CacheScope::Key, false);
    let req = ChatRequest::parse(Q.as_bytes()).unwrap();
    assert_eq!(plan(None, Some(&req), None, ME), Plan::Off);
    assert_eq!(
        plan(Some(&p), None, None, ME),
        Plan::Bypass,
        "another protocol"
    );
    assert_eq!(
        plan(Some(&p), Some(&req), Some("no-store"), ME),
        Plan::Bypass
    );
    let Plan::Use {
        key: k,
        ttl_s,
        lookup,
    } = plan(Some(&p), Some(&req), None, ME)
    else {
        panic!("a cacheable request");
    };
    assert_eq!((k.len(), ttl_s, lookup), (64, 60, true));
    assert!(matches!(
        plan(Some(&p), Some(&req), Some("no-cache"), ME),
        Plan::Use { lookup: false, .. }
    ));
    let sampled =
        ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap();
    assert_eq!(plan(Some(&p), Some(&sampled), None, ME), Plan::Bypass);
}

#[test]
fn a_capture_hands_over_a_whole_stream_only() {
    use futures::StreamExt;
    let parts = |n: usize| -> crate::http::ByteStream {
        Box::pin(futures::stream::iter(
            (0..n).map(|i| Ok::<_, String>(format!("part{i};").into_bytes())),
        ))
    };
    // Read to its end: every byte, in order.
    let (mut s, rx) = capture(parts(3));
    let passed: Vec<u8> = futures::executor::block_on(async {
        let mut all = Vec::new();
        while let Some(b) = s.next().await {
            all.extend(b.unwrap());
        }
        all
    });
    let kept = futures::executor::block_on(rx).unwrap();
    assert_eq!(kept, passed);
    assert_eq!(kept, b"part0;part1;part2;");
    // Dropped before its end (the client went away): nothing.
    let (mut s, rx) = capture(parts(3));
    futures::executor::block_on(s.next());
    drop(s);
    assert!(futures::executor::block_on(rx).is_err());
    // Too large to store: nothing.
    let big: crate::http::ByteStream = Box::pin(futures::stream::iter(
        (0..3).map(|_| Ok::<_, String>(vec![b'x'; MAX_ENTRY_BYTES / 2])),
    ));
    let (mut s, rx) = capture(big);
    futures::executor::block_on(async { while s.next().await.is_some() {} });
    assert!(futures::executor::block_on(rx).is_err());
}

#[test]
fn a_stream_stored_without_its_usage_chunk_gets_the_settled_usage() {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let sse = format!(
        "{}{}data: [DONE]\n\n",
        chunk(r#"{"content":"Hi"}"#, "null"),
        chunk("{}", r#""stop""#)
    );
    let usage = crate::api::Usage::new(5, 1, None);
    let e = Entry::from_stream(sse.as_bytes())
        .unwrap()
        .with_usage(Some(&usage));
    let replay = String::from_utf8(e.to_stream(true)).unwrap();
    assert!(
        replay.contains(r#""usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}"#),
        "{replay}"
    );
    assert!(
        !String::from_utf8(e.to_stream(false))
            .unwrap()
            .contains("usage")
    );
    // A client that does not stream gets it in its completion.
    let whole: Value = serde_json::from_slice(&e.to_completion()).unwrap();
    assert_eq!(whole["usage"]["total_tokens"], 6);
    assert_eq!(whole["choices"][0]["message"]["content"], "Hi");
}
