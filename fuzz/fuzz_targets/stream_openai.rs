//! OpenAI-format streams (OpenAI, Azure, the compatible presets) passed
//! through to chat clients, and Workers AI binding streams translated for
//! them: chunk boundaries never change the output.
#![no_main]

mod common;

use edge_llm_gateway::api::ChatRequest;
use edge_llm_gateway::providers;
use libfuzzer_sys::fuzz_target;

const REQ: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#;

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(5));
    let provider = match seed.first().copied().unwrap_or(0) % 4 {
        0 => "openai",
        1 => "azure",
        2 => "groq",
        _ => "workers-ai",
    };
    let req = ChatRequest::parse(REQ).expect("the fuzz request parses");
    let target = common::target(provider);
    let make = || providers::stream_translator(&target, &req, common::NOW_S);
    common::check_boundaries(&make, data, &seed[seed.len().min(1)..]);
});
