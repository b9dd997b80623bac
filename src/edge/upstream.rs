//! [`Upstream`] over the Workers `fetch`, with timers and cancellation.

use std::time::Duration;

use futures::{StreamExt, stream};
use worker::js_sys::Uint8Array;
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

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

/// Aborts the fetch when dropped: a request abandoned by a timeout, by
/// failover or by a client that went away stops at once instead of running
/// (and being billed) to the end.
struct AbortOnDrop(Option<AbortController>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.abort();
        }
    }
}

impl Upstream for FetchUpstream<'_> {
    async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
        if let Some((binding, model)) = workers_ai::parse_binding_url(&req.url) {
            return super::workers_ai::run(self.env, binding, model, &req.body).await;
        }
        // Adapters ask for streams by their `accept` header (SSE, or
        // Bedrock's binary event stream): those are read chunk by chunk.
        let wants_stream = req.wants_stream();
        let headers = Headers::new();
        for (name, value) in &req.headers {
            headers.set(name, value).map_err(|e| e.to_string())?;
        }
        let mut init = RequestInit::new();
        init.with_method(if req.method == "GET" {
            Method::Get
        } else {
            Method::Post
        })
        .with_headers(headers);
        if !req.body.is_empty() {
            init.with_body(Some(Uint8Array::from(req.body.as_slice()).into()));
        }
        let request = Request::new_with_init(&req.url, &init).map_err(|e| e.to_string())?;
        let controller = AbortController::default();
        let signal = controller.signal();
        let guard = AbortOnDrop(Some(controller));
        let mut resp = Fetch::Request(request)
            .send_with_signal(&signal)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status_code();
        let headers = UPSTREAM_HEADERS
            .iter()
            .filter_map(|&name| {
                let value = resp.headers().get(name).ok().flatten()?;
                Some((name.to_owned(), value))
            })
            .collect();
        // The body owns the guard: dropping it early aborts the fetch.
        let body: ByteStream = if wants_stream {
            let chunks = resp.stream().map_err(|e| e.to_string())?;
            Box::pin(chunks.map(move |chunk| {
                let _owned = &guard;
                chunk.map_err(|e| e.to_string())
            }))
        } else {
            // A whole answer is read in one call when first polled: one copy
            // across the JS boundary instead of a reader and a copy per chunk.
            Box::pin(stream::once(async move {
                let _owned = guard;
                resp.bytes().await.map_err(|e| e.to_string())
            }))
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
