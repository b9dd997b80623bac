//! Streams for OpenAI Responses clients: relayed from an OpenAI target, or
//! translated from Anthropic, Gemini or an OpenAI-compatible one: chunk
//! boundaries never change the output.
#![no_main]

mod common;

use edge_llm_gateway::config::ProviderKind;
use edge_llm_gateway::ingress::{Call, ClientRequest};
use libfuzzer_sys::fuzz_target;

const REQ: &[u8] = br#"{"model":"m","stream":true,"input":"x","tools":[{"type":"function","name":"f","parameters":{"type":"object"}}]}"#;

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(5));
    let (provider, kind) = match seed.first().copied().unwrap_or(0) % 4 {
        0 => ("openai", ProviderKind::Openai),
        1 => ("anthropic", ProviderKind::Anthropic),
        2 => ("gemini", ProviderKind::Gemini),
        _ => ("groq", ProviderKind::Groq),
    };
    let mut client = ClientRequest::parse_responses(REQ).expect("parses");
    client.translate();
    let chat = client.chat_request().expect("translates");
    let target = common::target(provider);
    let make = || {
        let call = Call::for_target(&client, chat.as_ref(), kind).expect("a call");
        call.stream_translator(&target, common::NOW_S)
    };
    common::check_boundaries(&make, data, &seed[seed.len().min(1)..]);
});
