//! The ingress request parsers (chat completions, Messages, count_tokens,
//! Responses, embeddings), behind the body-shape check the gateway runs
//! first. Properties: parse -> serialise -> parse keeps every field; a
//! translated request always parses as a chat request; a redacted body
//! always parses again; rewriting every string to itself keeps the JSON.
#![no_main]

use std::collections::BTreeMap;

use edge_llm_gateway::api::{ChatRequest, EmbeddingsRequest};
use edge_llm_gateway::config::Limits;
use edge_llm_gateway::ingress::messages::MessagesRequest;
use edge_llm_gateway::ingress::responses::ResponsesRequest;
use edge_llm_gateway::ingress::{ClientRequest, Ingress};
use edge_llm_gateway::trust::{self, json, pii};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

/// The body's fields as a map (a repeated key keeps its last value, as the
/// gateway's parser does).
fn fields(body: &[u8]) -> BTreeMap<String, String> {
    serde_json::from_slice::<BTreeMap<String, &RawValue>>(body)
        .map(|m| m.into_iter().map(|(k, v)| (k, v.get().to_owned())).collect())
        .unwrap_or_default()
}

/// Every field but those named survives `out` exactly.
fn same_fields(body: &[u8], out: &[u8], except: &[&str]) {
    let (a, b) = (fields(body), fields(out));
    for (k, v) in &a {
        if except.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(b.get(k), Some(v), "field {k} changed in the round trip");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else { return };
    let ingress = match selector % 5 {
        0 | 4 => Ingress::Chat,
        1 | 2 => Ingress::Messages,
        _ => Ingress::Responses,
    };
    let list = match ingress {
        Ingress::Responses => "input",
        Ingress::Chat | Ingress::Messages => "messages",
    };
    let shape = json::shape(body, 64, Some(list), None);
    let checked = if selector % 5 == 4 {
        trust::check_depth(&Limits::default(), body)
    } else {
        trust::check_shape(&Limits::default(), body, ingress)
    };
    if checked.is_err() {
        return;
    }
    assert!(shape.is_ok());
    // Rewriting every string to itself re-encodes it: same JSON value.
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(before) = serde_json::from_str::<serde_json::Value>(text)
    {
        let same = json::rewrite_strings(text, None, &mut |_, v| Some(v.to_owned()));
        let after: serde_json::Value =
            serde_json::from_str(same.as_deref().unwrap_or(text)).expect("rewritten JSON parses");
        assert_eq!(before, after, "rewriting strings to themselves changed the JSON");
    }
    match selector % 5 {
        0 => {
            if let Ok(req) = ChatRequest::parse(body) {
                let out = req.to_openai_body("upstream-model");
                let again = ChatRequest::parse(&out).expect("a serialised request parses");
                assert_eq!(again.model, "upstream-model");
                let except: &[&str] = if req.stream { &["model", "stream_options"] } else { &["model"] };
                same_fields(body, &out, except);
            }
        }
        1 => {
            if let Ok(req) = MessagesRequest::parse(body) {
                let out = req.to_anthropic_body("upstream-model");
                MessagesRequest::parse(&out).expect("a serialised request parses");
                same_fields(body, &out, &["model"]);
            }
            if let Ok(mut client) = ClientRequest::parse_messages(body) {
                client.translate();
                // A translation that succeeded is a valid chat request.
                client.chat_request().expect("a translated request parses");
            }
        }
        2 => {
            if let Ok(mut client) = ClientRequest::parse_count_tokens(body) {
                client.translate();
                let _ = client.chat_request().expect("no translation error for token counts");
            }
        }
        3 => {
            if let Ok(req) = ResponsesRequest::parse(body) {
                let out = req.to_openai_body("upstream-model");
                ResponsesRequest::parse(&out).expect("a serialised request parses");
                same_fields(body, &out, &["model"]);
            }
            if let Ok(mut client) = ClientRequest::parse_responses(body) {
                client.translate();
                client.chat_request().expect("a translated request parses");
            }
        }
        _ => {
            let _ = EmbeddingsRequest::parse(body);
        }
    }
    // A body that parsed still parses once redacted.
    let parses = |b: &[u8]| match ingress {
        Ingress::Chat => ChatRequest::parse(b).is_ok(),
        Ingress::Messages => MessagesRequest::parse(b).is_ok(),
        Ingress::Responses => ResponsesRequest::parse(b).is_ok(),
    };
    if parses(body) {
        let detector = pii::Detector::with_patterns(&BTreeMap::new());
        let mut vault = pii::Vault::new();
        if let Ok(Some(redacted)) = trust::redact_body(body, ingress, &detector, &mut vault) {
            assert!(parses(&redacted), "a redacted body no longer parses");
        }
    }
});
