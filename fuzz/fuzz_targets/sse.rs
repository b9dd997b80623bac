//! The SSE parser: any bytes, cut anywhere, give the same events; parsed
//! events encode and parse back to themselves.
#![no_main]

mod common;

use edge_llm_gateway::sse::{SseEvent, SseParser, encode_data, encode_event};
use libfuzzer_sys::fuzz_target;

fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.push(c);
        while let Some(ev) = p.next_event() {
            out.push(ev);
        }
    }
    while let Some(ev) = p.finish() {
        out.push(ev);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(4));
    let whole = parse(&[data]);
    assert_eq!(whole, parse(&common::split(data, seed)), "events depend on the cut");
    if data.len() <= 64 {
        assert_eq!(whole, parse(&common::bytewise(data)), "events depend on byte-by-byte delivery");
    }
    // Encode -> parse is the identity on what the parser produces.
    let mut encoded = Vec::new();
    for ev in &whole {
        match &ev.event {
            Some(name) => encode_event(&mut encoded, name, ev.data.as_bytes()),
            None => encode_data(&mut encoded, ev.data.as_bytes()),
        }
    }
    assert_eq!(parse(&[&encoded]), whole, "encode -> parse changed the events");
});
