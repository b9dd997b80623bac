//! The built-in demo model: a deterministic OpenAI-format server inside the
//! worker.
//!
//! It lets a fresh `scripts/dev` answer with no provider key and no network,
//! and it goes through the same path as every provider (routing, the
//! OpenAI adapter, stream pass-through, accounting), so what works against
//! it works end to end. It answers at once; the answer echoes the last user
//! message so a caller can see its request arrived intact. It embeds too
//! (`/embeddings`): deterministic unit vectors, 8 dimensions unless
//! `dimensions` asks otherwise.
//!
//! Order: constants, request reading, response building, tests.

use futures::stream;

use crate::api::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChunkChoice, Delta,
    EmbeddingInput, EmbeddingList, EmbeddingsRequest, FinishReason, Role, Usage,
};
use crate::error::GatewayError;
use crate::http::{UpstreamRequest, UpstreamResponse};
use crate::sse::{DONE, encode_data};

/// The URL prefix that routes a request to this in-worker server.
pub const BASE_URL: &str = "mock://demo";

/// Longest echo of the user's message.
const ECHO_CHARS: usize = 200;

/// Size of a demo embedding when the request sets no `dimensions`.
const DEFAULT_DIMENSIONS: u32 = 8;

/// Largest `dimensions` served (OpenAI's largest embedding model's size).
const MAX_DIMENSIONS: u32 = 3072;

/// Answers an OpenAI chat-completions or embeddings request. `now_s` is
/// Unix seconds.
pub fn respond(req: &UpstreamRequest, now_s: u64) -> UpstreamResponse {
    let result = if req.url.ends_with("/embeddings") {
        embeddings_answer(&req.body).map(|body| (vec![body], "application/json"))
    } else {
        answer(&req.body, now_s)
    };
    match result {
        Ok((body, content_type)) => UpstreamResponse {
            status: 200,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: Box::pin(stream::iter(body.into_iter().map(Ok))),
            native: None,
        },
        Err(e) => UpstreamResponse {
            status: e.status(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: Box::pin(stream::iter([Ok(e.to_body())])),
            native: None,
        },
    }
}

// ---- Request reading --------------------------------------------------------------

/// Returns the body as chunks (one per stream event) and its content type.
fn answer(body: &[u8], now_s: u64) -> Result<(Vec<Vec<u8>>, &'static str), GatewayError> {
    let req = ChatRequest::parse(body)?;
    let messages = req.messages()?;
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .and_then(|m| m.content.as_ref())
        .map(|c| c.text().into_owned())
        .unwrap_or_default();
    let prompt_chars: usize = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| c.text().chars().count())
        .sum();
    let echo: String = last_user.chars().take(ECHO_CHARS).collect();
    let text = format!("Hello from the gateway's built-in demo model. You said: \"{echo}\"");
    let words = split_words(&text);
    // Roughly four characters a token, as tokenizers average on English.
    let usage = Usage::new(
        prompt_chars.div_ceil(4).max(1) as u64,
        words.len() as u64,
        Some(0),
    );
    let id = format!("chatcmpl-demo-{:016x}", super::fnv1a(body));
    let model = req.model.as_ref();
    if req.stream {
        Ok((
            stream_events(&id, model, now_s, &words, usage),
            "text/event-stream",
        ))
    } else {
        let completion = ChatCompletion {
            id,
            object: "chat.completion",
            created: now_s,
            model: model.to_owned(),
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: Some(text),
                    tool_calls: vec![],
                },
                finish_reason: Some(FinishReason::Stop),
                logprobs: None,
            }],
            usage: Some(usage),
        };
        Ok((vec![to_json(&completion)], "application/json"))
    }
}

/// An embeddings list: one deterministic unit vector per input, so equal
/// inputs embed equally and a client's similarity code has something real
/// to work on.
fn embeddings_answer(body: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let req = EmbeddingsRequest::parse(body)?;
    let inputs = req.inputs()?;
    let dimensions = req.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    if dimensions > MAX_DIMENSIONS {
        return Err(GatewayError::InvalidRequest {
            message: format!("`dimensions` must be at most {MAX_DIMENSIONS}."),
            param: Some("dimensions".to_owned()),
        });
    }
    let mut tokens = 0;
    let vectors = inputs
        .iter()
        .map(|input| {
            let seed = match input {
                EmbeddingInput::Text(text) => {
                    tokens += text.chars().count().div_ceil(4).max(1) as u64;
                    super::fnv1a(text.as_bytes())
                }
                EmbeddingInput::Tokens(ids) => {
                    tokens += ids.len() as u64;
                    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
                    super::fnv1a(&bytes)
                }
            };
            unit_vector(seed, dimensions)
        })
        .collect();
    let list = EmbeddingList::new(req.model.as_ref(), vectors, req.encoding_format, tokens);
    Ok(to_json(&list))
}

/// `dimensions` values from a xorshift64 sequence, scaled to unit length and
/// rounded to six decimals (short JSON; float32 keeps about seven digits).
fn unit_vector(seed: u64, dimensions: u32) -> Vec<f64> {
    let mut state = seed | 1;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|v| (v / norm * 1e6).round() / 1e6).collect()
}

/// Splits after each space, so the pieces concatenate back to `text`.
fn split_words(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

// ---- Response building ------------------------------------------------------------

fn stream_events<'a>(
    id: &'a str,
    model: &'a str,
    now_s: u64,
    words: &[&'a str],
    usage: Usage,
) -> Vec<Vec<u8>> {
    let chunk = |delta: Delta<'a>, finish: Option<FinishReason>| ChatCompletionChunk {
        id,
        object: "chat.completion.chunk",
        created: now_s,
        model,
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
            logprobs: None,
        }],
        usage: Some(None),
    };
    let mut events = Vec::with_capacity(words.len() + 4);
    let mut push = |value: &ChatCompletionChunk<'_>| {
        let mut out = Vec::new();
        encode_data(&mut out, &to_json(value));
        events.push(out);
    };
    push(&chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        },
        None,
    ));
    for word in words {
        push(&chunk(
            Delta {
                content: Some(word),
                ..Delta::default()
            },
            None,
        ));
    }
    push(&chunk(Delta::default(), Some(FinishReason::Stop)));
    push(&ChatCompletionChunk {
        choices: vec![],
        usage: Some(Some(usage)),
        ..chunk(Delta::default(), None)
    });
    events.push(DONE.to_vec());
    events
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;
    use futures::executor::block_on;
    use serde_json::Value;

    fn request(body: &str) -> UpstreamRequest {
        UpstreamRequest {
            method: "POST",
            url: format!("{BASE_URL}/chat/completions"),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn body_of(resp: UpstreamResponse) -> Vec<u8> {
        block_on(resp.collect(1 << 20)).unwrap()
    }

    #[test]
    fn non_stream_echoes_the_last_user_message() {
        let resp = respond(
            &request(
                r#"{"model":"demo-1","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":"ping"}]}"#,
            ),
            1_700_000_000,
        );
        assert_eq!(resp.status, 200);
        let v: Value = serde_json::from_slice(&body_of(resp)).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_700_000_000);
        assert_eq!(v["model"], "demo-1");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.ends_with("You said: \"ping\""), "{content}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"]["total_tokens"],
            v["usage"]["prompt_tokens"].as_u64().unwrap()
                + v["usage"]["completion_tokens"].as_u64().unwrap()
        );
    }

    #[test]
    fn stream_is_one_event_per_chunk_and_reassembles() {
        let resp = respond(
            &request(
                r#"{"model":"demo-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi there"}]}"#,
            ),
            1,
        );
        let mut parser = SseParser::new();
        parser.push(&body_of(resp));
        let mut text = String::new();
        let mut events = vec![];
        while let Some(ev) = parser.next_event() {
            events.push(ev.data);
        }
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        for c in &chunks {
            assert_eq!(c["id"], chunks[0]["id"]);
            if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
        assert!(text.ends_with("You said: \"hi there\""), "{text}");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(
            usage["completion_tokens"].as_u64().unwrap() as usize,
            split_words(&text).len()
        );
    }

    fn embed(body: &str) -> (u16, Value) {
        let resp = respond(
            &UpstreamRequest {
                method: "POST",
                url: format!("{BASE_URL}/embeddings"),
                headers: vec![],
                body: body.as_bytes().to_vec(),
            },
            1,
        );
        let status = resp.status;
        (status, serde_json::from_slice(&body_of(resp)).unwrap())
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors_in_either_encoding() {
        let (status, v) = embed(r#"{"model":"demo-1","input":["same","other","same"]}"#);
        assert_eq!(status, 200);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "demo-1");
        let vectors: Vec<Vec<f64>> = (0..3)
            .map(|i| serde_json::from_value(v["data"][i]["embedding"].clone()).unwrap())
            .collect();
        assert_eq!(vectors[0].len(), 8);
        assert_eq!(vectors[0], vectors[2]);
        assert_ne!(vectors[0], vectors[1]);
        let norm: f64 = vectors[1].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(v["data"][2]["index"], 2);
        assert_eq!(
            v["usage"],
            serde_json::json!({"prompt_tokens":4,"total_tokens":4})
        );

        let (_, b) = embed(r#"{"model":"demo-1","input":"same","encoding_format":"base64"}"#);
        let expected = crate::api::f32_le_base64(vectors[0].iter().map(|&x| x as f32));
        assert_eq!(b["data"][0]["embedding"], expected.as_str());

        let (_, d) = embed(r#"{"model":"demo-1","input":[1,2,3],"dimensions":3}"#);
        assert_eq!(d["data"][0]["embedding"].as_array().unwrap().len(), 3);
        assert_eq!(d["usage"]["prompt_tokens"], 3);
        let (status, e) = embed(r#"{"model":"demo-1","input":"x","dimensions":100000}"#);
        assert_eq!(
            (status, &e["error"]["param"]),
            (400, &Value::from("dimensions"))
        );
    }

    #[test]
    fn bad_request_gets_an_openai_error() {
        let resp = respond(
            &request(r#"{"model":"demo-1","messages":[{"role":"robot"}]}"#),
            1,
        );
        assert_eq!(resp.status, 400);
        let v: Value = serde_json::from_slice(&body_of(resp)).unwrap();
        assert_eq!(v["error"]["param"], "messages");
    }
}
