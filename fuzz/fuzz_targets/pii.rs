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
    // The stream restorer: the redacted text as three OpenAI deltas, the
    // SSE bytes cut at the same points.
    let mut sse = Vec::new();
    for piece in [&redacted[..a], &redacted[a..b], &redacted[b..]] {
        let chunk = serde_json::json!({"id":"c","choices":[{"index":0,"delta":{"content":piece},"finish_reason":null}]});
        sse.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    sse.extend_from_slice(b"data: [DONE]\n\n");
    let mut sr = StreamRestorer::new(Rc::new(vault), Ingress::Chat);
    let mut bytes = Vec::new();
    for piece in common::split(&sse, &seed[seed.len().min(2)..]) {
        sr.push(piece, &mut bytes);
    }
    sr.finish(&mut bytes);
    let streamed: String = String::from_utf8(bytes)
        .expect("restored SSE is UTF-8")
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            let v: serde_json::Value = serde_json::from_str(d).expect("restored chunks are JSON");
            v["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(streamed, whole, "the stream restorer depends on the cut");
});
