//! What the fuzz targets share: a config with a provider of every wire
//! format, input splitting, and a stream driven through the gateway's own
//! `Translated` (SSE parser + translator), as the request path drives it.
#![allow(dead_code)]

use std::sync::OnceLock;

use edge_llm_gateway::config::Config;
use edge_llm_gateway::error::GatewayError;
use edge_llm_gateway::gateway::Translated;
use edge_llm_gateway::providers::{Target, Translator};
use futures::StreamExt;

/// Unix seconds the translators date their output with: fixed, so two runs
/// of one input are comparable.
pub const NOW_S: u64 = 1_700_000_000;

const CONFIG: &str = r#"{"version":1,
  "providers":{
    "openai":{"kind":"openai","base_url":"https://openai.example/v1"},
    "azure":{"kind":"azure","base_url":"https://azure.example","api_version":"2024-10-21"},
    "groq":{"kind":"groq"},
    "anthropic":{"kind":"anthropic","base_url":"https://anthropic.example"},
    "gemini":{"kind":"gemini","base_url":"https://gemini.example"},
    "bedrock":{"kind":"bedrock","region":"eu-central-1"},
    "vertex":{"kind":"vertex","project":"p","region":"europe-west4"},
    "workers-ai":{"kind":"workers-ai","binding":"AI"}},
  "models":{"m":{"targets":[{"provider":"openai","model":"m"}]}}}"#;

/// The fuzzers' config.
pub fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_json(CONFIG).expect("the fuzz config is valid"))
}

/// The target of a provider in [`config`].
pub fn target(provider: &'static str) -> Target<'static> {
    target_model(provider, "m")
}

/// The target of a provider in [`config`] for a given model (Vertex picks
/// its wire format by the model's publisher).
pub fn target_model(provider: &'static str, model: &'static str) -> Target<'static> {
    let c = config();
    let (name, p) = c.providers.get_key_value(provider).expect("known provider");
    Target { name, provider: p, model }
}

/// `data` cut at two points chosen by `seed` (pieces may be empty).
pub fn split<'a>(data: &'a [u8], seed: &[u8]) -> Vec<&'a [u8]> {
    if data.is_empty() {
        return vec![data];
    }
    let at = |i: usize| {
        let b = seed.get(i).copied().unwrap_or(0) as usize;
        let c = seed.get(i + 1).copied().unwrap_or(0) as usize;
        (b << 8 | c) % (data.len() + 1)
    };
    let (mut a, mut b) = (at(0), at(2));
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    vec![&data[..a], &data[a..b], &data[b..]]
}

/// Every byte on its own.
pub fn bytewise(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(1).collect()
}

/// The client bytes and the closing error (its message) of an upstream
/// body arriving in `chunks`, through the gateway's stream translation.
pub fn translate(translator: Translator, chunks: &[&[u8]]) -> (Vec<u8>, Option<String>) {
    let owned: Vec<Result<Vec<u8>, String>> = chunks.iter().map(|c| Ok(c.to_vec())).collect();
    let upstream = Box::pin(futures::stream::iter(owned));
    let mut stream = Translated::new("fuzz", upstream, translator);
    let mut out = Vec::new();
    let mut error: Option<String> = None;
    futures::executor::block_on(async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => {
                    assert!(error.is_none(), "a second error after {error:?}: {e}");
                    error = Some(describe(&e));
                }
            }
        }
    });
    (out, error)
}

fn describe(e: &GatewayError) -> String {
    e.to_string()
}

/// Translating `data` whole and cut in three gives the same bytes and the
/// same error: chunk boundaries never matter (SSE and AWS event-stream
/// framing alike: the gateway picks the decoder by the translator). (Byte-by-byte delivery of
/// every fixture is a unit test; here random cuts over millions of inputs
/// cover the boundaries at a third less cost per input.)
pub fn check_boundaries(make: &dyn Fn() -> Translator, data: &[u8], seed: &[u8]) {
    let whole = translate(make(), &[data]);
    let cut = translate(make(), &split(data, seed));
    assert_eq!(whole, cut, "output depends on where the input was cut");
}
