//! Anthropic Messages streams (Anthropic, and Claude on Vertex) translated
//! to OpenAI chunks for chat clients: chunk boundaries never change the
//! output.
#![no_main]

mod common;

use edge_llm_gateway::api::ChatRequest;
use edge_llm_gateway::providers;
use libfuzzer_sys::fuzz_target;

const REQS: [&[u8]; 2] = [
    br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"tools":[{"type":"function","function":{"name":"f"}}]}"#,
];

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(5));
    let selector = seed.first().copied().unwrap_or(0) as usize;
    let req = ChatRequest::parse(REQS[selector % 2]).expect("parses");
    let target = if selector / 2 % 2 == 0 {
        common::target("anthropic")
    } else {
        common::target_model("vertex", "claude-sonnet-4-5@20250929")
    };
    let make = || providers::stream_translator(&target, &req, common::NOW_S);
    common::check_boundaries(&make, data, &seed[seed.len().min(1)..]);
});
