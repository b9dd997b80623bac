//! [`Upstream`] over the Workers `fetch`.

use futures::StreamExt;
use worker::js_sys::Uint8Array;
use worker::{Fetch, Headers, Method, Request, RequestInit};

use crate::http::{UPSTREAM_HEADERS, Upstream, UpstreamRequest, UpstreamResponse};

/// Sends provider requests with the runtime's `fetch`.
pub(super) struct FetchUpstream;

impl Upstream for FetchUpstream {
    async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String> {
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
        let mut resp = Fetch::Request(request)
            .send()
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
        let body = resp.stream().map_err(|e| e.to_string())?;
        Ok(UpstreamResponse {
            status,
            headers,
            body: Box::pin(body.map(|chunk| chunk.map_err(|e| e.to_string()))),
        })
    }
}
