//! [`Upstream`] over the runtime's `fetch`, with timers and cancellation.
//!
//! Written against the raw `web_sys` types rather than `worker`'s wrappers:
//! on the hot path each wrapper costs crossings of the JS boundary the
//! request does not need (a `Request` object built then copied into
//! `fetch`, a whole answer read chunk by chunk through a stream reader
//! instead of one `arrayBuffer()`), and `scripts/bench`'s profile showed
//! them (tests/bench/README.md, "Where the CPU goes").

use std::time::Duration;

use futures::stream;
use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::JsCast;
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{self, AbortController};
use worker::{Delay, Env};

use crate::http::{
    ByteStream, Sleep, UPSTREAM_HEADERS, Upstream, UpstreamRequest, UpstreamResponse,
};
use crate::providers::workers_ai;

/// Sends provider requests with the runtime's `fetch`, or (Workers AI with
/// a binding) runs them on the binding.
pub(super) struct FetchUpstream<'e> {
    env: &'e Env,
}

impl<'e> FetchUpstream<'e> {
    /// An upstream for one request.
    pub(super) fn new(env: &'e Env) -> Self {
        FetchUpstream { env }
    }
}

/// Aborts the fetch when dropped unless disarmed: a request abandoned by a
/// timeout, by failover or by a client that went away stops at once instead
/// of running (and being billed) to the end. A request read to its end is
/// disarmed: aborting it then would be work for nothing.
pub(super) struct AbortOnDrop(Option<AbortController>);

impl AbortOnDrop {
    /// The fetch completed: nothing left to abort.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.abort();
        }
    }
}

fn js_error(e: worker::wasm_bindgen::JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

impl Upstream for FetchUpstream<'_> {
    async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
        if let Some((binding, model)) = workers_ai::parse_binding_url(&req.url) {
            return super::workers_ai::run(self.env, binding, model, &req.body).await;
        }
        // Adapters ask for streams by their `accept` header (SSE, or
        // Bedrock's binary event stream): those are read chunk by chunk.
        let wants_stream = req.wants_stream();
        let headers = web_sys::Headers::new().map_err(js_error)?;
        for (name, value) in &req.headers {
            headers.set(name, value).map_err(js_error)?;
        }
        let init = web_sys::RequestInit::new();
        init.set_method(req.method);
        init.set_headers(&headers);
        if !req.body.is_empty() {
            init.set_body(&Uint8Array::from(req.body.as_slice()));
        }
        let controller = AbortController::new().map_err(js_error)?;
        init.set_signal(Some(&controller.signal()));
        let mut guard = AbortOnDrop(Some(controller));
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let resp: web_sys::Response =
            JsFuture::from(global.fetch_with_str_and_init(&req.url, &init))
                .await
                .map_err(js_error)?
                .unchecked_into();
        let status = resp.status();
        // The core reads these headers of failures only (`Retry-After`):
        // a success costs no header lookup.
        let headers = if (200..300).contains(&status) {
            Vec::new()
        } else {
            let resp_headers = resp.headers();
            UPSTREAM_HEADERS
                .iter()
                .filter_map(|&name| {
                    let value = resp_headers.get(name).ok().flatten()?;
                    Some((name.to_owned(), value))
                })
                .collect()
        };
        // The body owns the guard: dropping it early aborts the fetch.
        let streamed = if wants_stream { resp.body() } else { None };
        let body: ByteStream = match streamed {
            Some(raw) => {
                let chunks =
                    wasm_streams::ReadableStream::from_raw(raw.unchecked_into()).into_stream();
                Box::pin(ChunkStream {
                    chunks,
                    guard: Some(guard),
                })
            }
            _ => {
                // A whole answer in one `arrayBuffer()`: one copy across the
                // boundary, no reader, no promise per chunk.
                Box::pin(stream::once(async move {
                    let buf = resp.array_buffer().map_err(js_error)?;
                    let buf = JsFuture::from(buf).await.map_err(js_error)?;
                    guard.disarm();
                    Ok(Uint8Array::new(&buf).to_vec())
                }))
            }
        };
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }

    fn sleep(&self, ms: u64) -> Sleep {
        Box::pin(Delay::from(Duration::from_millis(ms)))
    }

    async fn sign_rs256(&self, pkcs8_der: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
        super::webcrypto::sign_rs256(pkcs8_der, message).await
    }
}

/// An upstream body read chunk by chunk; disarms its abort at the end.
struct ChunkStream {
    chunks: wasm_streams::readable::IntoStream<'static>,
    guard: Option<AbortOnDrop>,
}

impl futures::Stream for ChunkStream {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use futures::StreamExt;
        let item = futures::ready!(self.chunks.poll_next_unpin(cx));
        std::task::Poll::Ready(match item {
            Some(Ok(chunk)) => Some(Ok(Uint8Array::new(&chunk).to_vec())),
            Some(Err(e)) => Some(Err(js_error(e))),
            None => {
                if let Some(mut g) = self.guard.take() {
                    g.disarm();
                }
                None
            }
        })
    }
}
