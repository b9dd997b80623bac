//! Workers AI through the Worker's binding: the I/O for
//! [`crate::providers::workers_ai`]. The upstream hands a request to the
//! pseudo-URL `workers-ai:{binding}/{model}` here instead of fetching it:
//! `env[binding].run(model, input)`, whose answer is a JSON object or (for
//! `stream: true`) a `ReadableStream` of SSE bytes. A failure becomes the
//! status its message stands for ([`binding_error_status`]), so failover
//! and cooling treat it as any provider's; a binding that is not bound is
//! a transport failure (the next target is tried).
//!
//! Untested locally: `wrangler dev` cannot run Workers AI models without
//! an account, so the e2e suite covers the REST preset, and the mapping
//! around this call is unit-tested in the pure core.

use futures::{StreamExt, stream};
use worker::js_sys::{self, JSON};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::ReadableStream;
use worker::{ByteStream as RuntimeStream, Env};

use crate::http::{ByteStream, UpstreamResponse};
use crate::providers::workers_ai::{binding_error_body, binding_error_status};

/// Runs `model` on the binding named `binding` with the JSON `input`.
pub(super) async fn run(
    env: &Env,
    binding: &str,
    model: &str,
    input: &[u8],
) -> Result<UpstreamResponse, String> {
    let ai = env
        .ai(binding)
        .map_err(|_| format!("no Workers AI binding `{binding}` in this Worker"))?;
    let text = std::str::from_utf8(input).map_err(|e| e.to_string())?;
    let input = JSON::parse(text).map_err(|e| describe(&e))?;
    let sys: &worker::worker_sys::Ai = ai.as_ref().unchecked_ref();
    let output = match JsFuture::from(sys.run(model, input)).await {
        Ok(output) => output,
        Err(e) => {
            let message = describe(&e);
            return Ok(answer(
                binding_error_status(&message),
                "application/json",
                single(binding_error_body(&message)),
            ));
        }
    };
    if let Some(stream) = output.dyn_ref::<ReadableStream>() {
        let chunks = RuntimeStream::from(stream.clone()).map(|c| c.map_err(|e| e.to_string()));
        return Ok(answer(200, "text/event-stream", Box::pin(chunks)));
    }
    let json = JSON::stringify(&output)
        .map(String::from)
        .map_err(|e| describe(&e))?;
    Ok(answer(200, "application/json", single(json.into_bytes())))
}

fn answer(status: u16, content_type: &str, body: ByteStream) -> UpstreamResponse {
    UpstreamResponse {
        status,
        headers: vec![("content-type".to_owned(), content_type.to_owned())],
        body,
        native: None,
    }
}

fn single(bytes: Vec<u8>) -> ByteStream {
    Box::pin(stream::once(async move { Ok(bytes) }))
}

/// A thrown value's message.
fn describe(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "unknown error".to_owned())
}
