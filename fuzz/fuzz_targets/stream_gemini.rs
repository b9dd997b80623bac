//! Gemini `streamGenerateContent` streams (Gemini, and Gemini on Vertex)
//! translated to OpenAI chunks: chunk boundaries never change the output.
#![no_main]

mod common;

use edge_llm_gateway::api::ChatRequest;
use edge_llm_gateway::providers;
use libfuzzer_sys::fuzz_target;

const REQ: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#;

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(5));
    let req = ChatRequest::parse(REQ).expect("parses");
    let target = if seed.first().copied().unwrap_or(0) % 2 == 0 {
        common::target("gemini")
    } else {
        common::target_model("vertex", "gemini-2.5-flash")
    };
    let make = || providers::stream_translator(&target, &req, common::NOW_S);
    common::check_boundaries(&make, data, &seed[seed.len().min(1)..]);
});
