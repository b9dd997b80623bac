//! Whole (non-streamed) answers and error bodies of every provider, for
//! every client protocol: nothing panics, and what reaches a client is
//! JSON.
#![no_main]

mod common;

use edge_llm_gateway::api::ChatRequest;
use edge_llm_gateway::config::ProviderKind;
use edge_llm_gateway::ingress::{Call, ClientRequest};
use edge_llm_gateway::providers;
use libfuzzer_sys::fuzz_target;

const CHAT: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
const MESSAGES: &[u8] = br#"{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"x"}]}"#;
const RESPONSES: &[u8] = br#"{"model":"m","input":"x"}"#;

const TARGETS: [(&str, ProviderKind); 8] = [
    ("openai", ProviderKind::Openai),
    ("anthropic", ProviderKind::Anthropic),
    ("gemini", ProviderKind::Gemini),
    ("groq", ProviderKind::Groq),
    ("bedrock", ProviderKind::Bedrock),
    ("vertex", ProviderKind::Vertex),
    ("workers-ai", ProviderKind::WorkersAi),
    ("azure", ProviderKind::Azure),
];

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else { return };
    let (provider, kind) = TARGETS[(selector % 8) as usize];
    let target = common::target(provider);
    match (selector / 8) % 4 {
        0 => {
            let req = ChatRequest::parse(CHAT).expect("parses");
            if let Ok((out, _)) = providers::chat_response(&target, &req, body.to_vec(), common::NOW_S) {
                assert!(is_json(&out), "a chat answer that is not JSON");
            }
        }
        1 | 2 => {
            let raw = if selector / 8 % 4 == 1 { MESSAGES } else { RESPONSES };
            let mut client = if raw == MESSAGES {
                ClientRequest::parse_messages(raw)
            } else {
                ClientRequest::parse_responses(raw)
            }
            .expect("parses");
            client.translate();
            let chat = client.chat_request().expect("translates");
            let call = Call::for_target(&client, chat.as_ref(), kind).expect("a call");
            if let Ok((out, _)) = call.answer(&target, body.to_vec(), common::NOW_S) {
                assert!(is_json(&out), "an answer that is not JSON");
            }
        }
        _ => {
            let status = 400 + u16::from(selector) % 200;
            let headers = [("x-amzn-errortype".to_owned(), "ThrottlingException:x".to_owned())];
            let e = providers::error_from_response(&target, status, &headers[..usize::from(selector % 2)], None, body);
            assert!(is_json(&e.to_body()));
        }
    }
});
