//! Streams for Anthropic Messages clients: relayed from an Anthropic
//! target, or translated from an OpenAI or Gemini one (provider translator,
//! then the chunk converter): chunk boundaries never change the output.
#![no_main]

mod common;

use edge_llm_gateway::config::ProviderKind;
use edge_llm_gateway::ingress::{Call, ClientRequest};
use libfuzzer_sys::fuzz_target;

const REQ: &[u8] = br#"{"model":"m","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{"type":"object"}}]}"#;

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(5));
    let (provider, kind) = match seed.first().copied().unwrap_or(0) % 3 {
        0 => ("anthropic", ProviderKind::Anthropic),
        1 => ("openai", ProviderKind::Openai),
        _ => ("gemini", ProviderKind::Gemini),
    };
    let mut client = ClientRequest::parse_messages(REQ).expect("parses");
    client.translate();
    let chat = client.chat_request().expect("translates");
    let target = common::target(provider);
    let make = || {
        let call = Call::for_target(&client, chat.as_ref(), kind).expect("a call");
        call.stream_translator(&target, common::NOW_S)
    };
    common::check_boundaries(&make, data, &seed[seed.len().min(1)..]);
});
