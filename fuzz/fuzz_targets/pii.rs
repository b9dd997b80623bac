//! PII detection, redaction and restoration. Properties: matches are
//! ordered, disjoint and on character boundaries; restoring a redaction
//! gives the text back exactly; the incremental restorer, cut anywhere, and
//! the stream restorer over OpenAI chunks, cut anywhere, both give what
//! restoring the whole text gives.
#![no_main]

mod common;

use std::collections::BTreeMap;
use std::rc::Rc;

use edge_llm_gateway::config::CustomPattern;
use edge_llm_gateway::ingress::Ingress;
use edge_llm_gateway::trust::pii::{self, Detector, Escape, Restorer, Vault};
use edge_llm_gateway::trust::restore::StreamRestorer;
use libfuzzer_sys::fuzz_target;

fn detector() -> &'static Detector {
    static D: std::sync::OnceLock<Detector> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let mut patterns = BTreeMap::new();
        patterns.insert(
            "employee_id".to_owned(),
            CustomPattern { masks: vec!["EMP-#{4,6}".into(), "@@*{2}#{3,5}".into()], terms: vec!["Project Falcon".into()] },
        );
        Detector::with_patterns(&patterns)
    })
}

/// The largest char boundary of `s` at or below `i`.
fn floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fuzz_target!(|input: &[u8]| {
    let (seed, data) = input.split_at(input.len().min(4));
    let text = String::from_utf8_lossy(data);
    let d = detector();
    let matches = d.find(&text);
    let mut last = 0;
    for m in &matches {
        assert!(m.start >= last && m.start < m.end, "overlapping or empty match");
        assert!(text.is_char_boundary(m.start) && text.is_char_boundary(m.end));
        last = m.end;
    }
    let mut vault = Vault::new();
    let Some(redacted) = pii::redact(d, &text, &mut vault) else {
        assert!(matches.is_empty());
        return;
    };
    // Exact restoration. (A text that holds `[` may hold a literal
    // placeholder the vault also hands out; the model could not tell them
    // apart either, so only bracket-free texts are held to exactness.)
    let whole = vault.restore_all(&redacted, Escape::None).unwrap_or_else(|| redacted.clone());
    if !text.contains('[') {
        assert_eq!(whole, text, "restore(redact(text)) != text");
    }
    // The incremental restorer, cut at two points.
    let cuts: Vec<usize> = common::split(redacted.as_bytes(), seed)
        .iter()
        .scan(0, |at, piece| {
            *at += piece.len();
            Some(*at)
        })
        .collect();
    let (a, b) = (floor(&redacted, cuts[0]), floor(&redacted, cuts[1.min(cuts.len() - 1)]));
    let (a, b) = (a.min(b), a.max(b));
    let mut r = Restorer::new(Escape::None);
    let mut out = String::new();
    for piece in [&redacted[..a], &redacted[a..b], &redacted[b..]] {
        r.push(&vault, piece, &mut out);
    }
    r.finish(&mut out);
    assert_eq!(out, whole, "the incremental restorer depends on the cut");
    // The stream restorer, in the protocol the first seed byte picks: the
    // redacted text as three text deltas, the SSE bytes cut at the same
    // points; the text the client reassembles is the whole restoration.
    let pieces = [&redacted[..a], &redacted[a..b], &redacted[b..]];
    let protocol = match seed.first().copied().unwrap_or(0) % 3 {
        0 => Ingress::Chat,
        1 => Ingress::Messages,
        _ => Ingress::Responses,
    };
    let sse = stream_of(protocol, &pieces);
    let mut sr = StreamRestorer::new(Rc::new(vault), protocol);
    let mut bytes = Vec::new();
    for piece in common::split(&sse, &seed[seed.len().min(2)..]) {
        sr.push(piece, &mut bytes);
    }
    sr.finish(&mut bytes);
    let text = String::from_utf8(bytes).expect("restored SSE is UTF-8");
    assert_eq!(text_of(protocol, &text), whole, "the stream restorer depends on the cut");
});

/// Text deltas in a protocol's stream events.
fn stream_of(protocol: Ingress, pieces: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    match protocol {
        Ingress::Chat => {
            for p in pieces {
                let v = serde_json::json!({"id":"c","choices":[{"index":0,"delta":{"content":p},"finish_reason":null}]});
                out.push_str(&format!("data: {v}\n\n"));
            }
            out.push_str("data: [DONE]\n\n");
        }
        Ingress::Messages => {
            out.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
            for p in pieces {
                let v = serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":p}});
                out.push_str(&format!("event: content_block_delta\ndata: {v}\n\n"));
            }
            out.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
        }
        Ingress::Responses => {
            let mut seq = 0;
            for p in pieces {
                let v = serde_json::json!({"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":p,"sequence_number":seq});
                out.push_str(&format!("event: response.output_text.delta\ndata: {v}\n\n"));
                seq += 1;
            }
            let v = serde_json::json!({"type":"response.output_text.done","item_id":"m","output_index":0,"content_index":0,"text":pieces.concat(),"sequence_number":seq});
            out.push_str(&format!("event: response.output_text.done\ndata: {v}\n\n"));
        }
    }
    out.into_bytes()
}

/// The text a client reassembles from the deltas (and, for Responses,
/// checks against the `.done` text and the sequence numbers).
fn text_of(protocol: Ingress, sse: &str) -> String {
    let events: Vec<serde_json::Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("restored events are JSON"))
        .collect();
    let field = |v: &serde_json::Value, ptr: &str| v.pointer(ptr).and_then(|s| s.as_str()).unwrap_or("").to_owned();
    match protocol {
        Ingress::Chat => events.iter().map(|v| field(v, "/choices/0/delta/content")).collect(),
        Ingress::Messages => events.iter().map(|v| field(v, "/delta/text")).collect(),
        Ingress::Responses => {
            let seqs: Vec<u64> = events.iter().filter_map(|v| v["sequence_number"].as_u64()).collect();
            assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64), "sequence numbers {seqs:?}");
            let deltas: String = events
                .iter()
                .filter(|v| v["type"] == "response.output_text.delta")
                .map(|v| field(v, "/delta"))
                .collect();
            let done = events.iter().find(|v| v["type"] == "response.output_text.done").map(|v| field(v, "/text"));
            assert_eq!(done.as_deref(), Some(deltas.as_str()), "the done text differs from the deltas");
            deltas
        }
    }
}
