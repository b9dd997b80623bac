//! [`Upstream`] over the runtime's `fetch`, with timers and cancellation.
//!
//! Written against the raw `web_sys` types rather than `worker`'s wrappers:
//! on the hot path each wrapper costs crossings of the JS boundary the
//! request does not need (a `Request` object built then copied into
//! `fetch`, a whole answer read chunk by chunk through a stream reader
//! instead of one `arrayBuffer()`), and `scripts/bench`'s profile showed
//! them (tests/bench/README.md, "Where the CPU goes").

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use futures::stream;
use worker::Env;
use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{self, AbortController};

use crate::http::{
    ByteStream, DEADLINE_PASSED, NativeBody, Sleep, UPSTREAM_HEADERS, Upstream, UpstreamRequest,
    UpstreamResponse,
};
use crate::providers::workers_ai;

/// Sends provider requests with the runtime's `fetch`, or (Workers AI with
/// a binding) runs them on the binding.
pub(super) struct FetchUpstream<'e> {
    env: &'e Env,
    /// Whether a whole answer may be abandoned before its deadline (an
    /// admission that runs beside it may refuse): its fetch then gets an
    /// abort controller. Otherwise only the deadline ends it, and the
    /// runtime's timeout signal alone does (no controller, no combined
    /// signal: three objects fewer per request).
    abortable: bool,
}

impl<'e> FetchUpstream<'e> {
    /// An upstream for one request.
    pub(super) fn new(env: &'e Env, abortable: bool) -> Self {
        FetchUpstream { env, abortable }
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

    /// The controller, for whoever aborts the fetch from now on.
    pub(super) fn take(&mut self) -> Option<AbortController> {
        self.0.take()
    }
}

/// A response body handed back to the edge ([`crate::http::NativeBody`]):
/// its reader, read on from where the gateway stopped, and the abort of its
/// fetch. The reader itself changes hands: releasing its lock would cost a
/// rejected promise and an error object with a stack trace.
pub(super) struct NativeParts {
    pub(super) reader: web_sys::ReadableStreamDefaultReader,
    pub(super) guard: AbortOnDrop,
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
        fetch(req, None, true).await
    }

    fn enforces_deadlines(&self) -> bool {
        true
    }

    async fn send_until(&self, req: UpstreamRequest, ms: u64) -> Result<UpstreamResponse, String> {
        if let Some((binding, model)) = workers_ai::parse_binding_url(&req.url) {
            // The binding has no abort signal: race it with a timer.
            let run = std::pin::pin!(super::workers_ai::run(self.env, binding, model, &req.body));
            let timer = Timer::new(ms);
            return match futures::future::select(run, timer).await {
                futures::future::Either::Left((answer, _)) => answer,
                futures::future::Either::Right(((), _)) => Err(DEADLINE_PASSED.to_owned()),
            };
        }
        // A whole answer that nothing abandons early, while the entry
        // module drives the request: JavaScript makes the call.
        if super::driven::may_drive(&req, self.abortable) {
            return super::driven::call(req, ms).await;
        }
        fetch(req, Some(ms), self.abortable).await
    }

    fn sleep(&self, ms: u64) -> Sleep {
        Box::pin(Timer::new(ms))
    }

    async fn sign_rs256(&self, pkcs8_der: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
        super::webcrypto::sign_rs256(pkcs8_der, message).await
    }
}

/// The [`UPSTREAM_HEADERS`] a provider's response has.
pub(super) fn read_headers(headers: &web_sys::Headers) -> Vec<(String, String)> {
    UPSTREAM_HEADERS
        .iter()
        .filter_map(|&name| {
            let value = headers.get(name).ok().flatten()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

/// The runtime's error, or [`DEADLINE_PASSED`] when it is the timeout's.
pub(super) fn transport_error(e: worker::wasm_bindgen::JsValue) -> String {
    let name = js_sys::Reflect::get(&e, &"name".into())
        .ok()
        .and_then(|n| n.as_string());
    if name.as_deref() == Some("TimeoutError") {
        return DEADLINE_PASSED.to_owned();
    }
    js_error(e)
}

#[wasm_bindgen(inline_js = r#"
export function timeout_signal(ms) {
  return AbortSignal.timeout(ms);
}
export function signal_or_timeout(signal, ms) {
  return AbortSignal.any([signal, AbortSignal.timeout(ms)]);
}
export function timer(ms) {
  let id;
  const done = new Promise((resolve) => {
    id = setTimeout(resolve, ms);
  });
  return [done, id];
}
export function clear_timer(id) {
  clearTimeout(id);
}
"#)]
extern "C" {
    /// A signal that fires after `ms`: the runtime's own timer, with no
    /// task or closure of ours behind it.
    #[wasm_bindgen(catch, js_name = timeout_signal)]
    fn timeout_signal_js(ms: f64) -> Result<web_sys::AbortSignal, JsValue>;
    /// `signal`, or the runtime's timer after `ms`, whichever fires first
    /// (an array literal: `Array.of` takes V8's generic path).
    #[wasm_bindgen(catch, js_name = signal_or_timeout)]
    fn signal_or_timeout_js(
        signal: &web_sys::AbortSignal,
        ms: f64,
    ) -> Result<web_sys::AbortSignal, JsValue>;
    /// `[promise, id]`: a promise resolved after `ms` by `setTimeout`.
    fn timer(ms: f64) -> js_sys::Array;
    /// `clearTimeout(id)`.
    fn clear_timer(id: &JsValue);
}

/// A timer whose wake reaches the task's waker as of its latest poll.
/// (`worker::Delay` keeps the waker of its first poll: a timer first polled
/// in a driven poll, whose waker does nothing, never woke its request once
/// the executor took it over: a stream's hedge and its connect timeout did
/// not fire on their own; `tests/e2e/timers.test.mjs`.) Dropped, it clears
/// its timeout (a no-op once it has fired).
struct Timer {
    done: JsFuture,
    id: JsValue,
}

impl Timer {
    /// Starts a timer of `ms`.
    fn new(ms: u64) -> Self {
        let pair = timer(ms as f64);
        Timer {
            done: JsFuture::from(js_sys::Promise::from(pair.get(0))),
            id: pair.get(1),
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.done).poll(cx).map(|_| ())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timer(&self.id);
    }
}

/// A signal that fires after `ms`.
fn timeout_signal(ms: u64) -> Result<web_sys::AbortSignal, String> {
    timeout_signal_js(ms as f64).map_err(js_error)
}

/// `signal`, or the runtime's timer after `ms`, whichever fires first.
fn with_timeout(signal: &web_sys::AbortSignal, ms: u64) -> Result<web_sys::AbortSignal, String> {
    signal_or_timeout_js(signal, ms as f64).map_err(js_error)
}

/// One fetch; `deadline`: the whole answer must arrive within it (ms);
/// `abortable`: dropping it aborts it.
async fn fetch(
    req: UpstreamRequest,
    deadline: Option<u64>,
    abortable: bool,
) -> Result<UpstreamResponse, String> {
    // Adapters ask for streams by their `accept` header (SSE, or Bedrock's
    // binary event stream): those are read chunk by chunk.
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
    let controller = match deadline {
        Some(ms) if !abortable => {
            init.set_signal(Some(&timeout_signal(ms)?));
            None
        }
        Some(ms) => {
            let c = AbortController::new().map_err(js_error)?;
            init.set_signal(Some(&with_timeout(&c.signal(), ms)?));
            Some(c)
        }
        None => {
            let c = AbortController::new().map_err(js_error)?;
            init.set_signal(Some(&c.signal()));
            Some(c)
        }
    };
    let mut guard = AbortOnDrop(controller);
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let resp: web_sys::Response = JsFuture::from(global.fetch_with_str_and_init(&req.url, &init))
        .await
        .map_err(transport_error)?
        .unchecked_into();
    let status = resp.status();
    // The core reads these headers of failures only (`Retry-After`):
    // a success costs no header lookup.
    let headers = if (200..300).contains(&status) {
        Vec::new()
    } else {
        read_headers(&resp.headers())
    };
    // The body owns the guard: dropping it early aborts the fetch.
    let streamed = if wants_stream { resp.body() } else { None };
    let mut native = None;
    let body: ByteStream = match streamed {
        Some(raw) => {
            let reader: web_sys::ReadableStreamDefaultReader = raw.get_reader().unchecked_into();
            let shared = Rc::new(RefCell::new(Some(Reading {
                reader,
                guard,
                busy: false,
            })));
            native = Some(detach_handle(shared.clone()));
            Box::pin(ChunkStream {
                shared,
                pending: None,
            })
        }
        None => {
            // A whole answer in one `arrayBuffer()`: one copy across the
            // boundary, no reader, no promise per chunk.
            Box::pin(stream::once(async move {
                let buf = resp.array_buffer().map_err(js_error)?;
                let buf = JsFuture::from(buf).await.map_err(transport_error)?;
                guard.disarm();
                Ok(Uint8Array::new(&buf).to_vec())
            }))
        }
    };
    Ok(UpstreamResponse {
        status,
        headers,
        body,
        native,
    })
}

/// A streamed body being read: its reader (locked) and its abort.
struct Reading {
    reader: web_sys::ReadableStreamDefaultReader,
    guard: AbortOnDrop,
    /// A read is pending (the reader cannot be released then).
    busy: bool,
}

/// Hands the body over: its reader and abort, unless a read is pending.
/// The chunk stream then ends.
fn detach_handle(shared: Rc<RefCell<Option<Reading>>>) -> NativeBody {
    NativeBody(Box::new(move || {
        let mut slot = shared.borrow_mut();
        if slot.as_ref().is_none_or(|r| r.busy) {
            return None;
        }
        let r = slot.take()?;
        Some(Box::new(NativeParts {
            reader: r.reader,
            guard: r.guard,
        }) as Box<dyn std::any::Any>)
    }))
}

/// An upstream body read chunk by chunk; disarms its abort at the end.
struct ChunkStream {
    shared: Rc<RefCell<Option<Reading>>>,
    pending: Option<JsFuture>,
}

impl futures::Stream for ChunkStream {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.pending.is_none() {
            let mut slot = this.shared.borrow_mut();
            let Some(r) = slot.as_mut() else {
                return Poll::Ready(None); // handed over
            };
            r.busy = true;
            this.pending = Some(JsFuture::from(r.reader.read()));
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = futures::ready!(std::pin::Pin::new(pending).poll(cx));
        this.pending = None;
        let mut slot = this.shared.borrow_mut();
        if let Some(r) = slot.as_mut() {
            r.busy = false;
        }
        Poll::Ready(match result {
            Err(e) => Some(Err(js_error(e))),
            Ok(result) => {
                let done = js_sys::Reflect::get(&result, &"done".into())
                    .ok()
                    .and_then(|d| d.as_bool())
                    .unwrap_or(true);
                if done {
                    if let Some(mut r) = slot.take() {
                        r.guard.disarm();
                    }
                    None
                } else {
                    let value = js_sys::Reflect::get(&result, &"value".into()).unwrap_or_default();
                    Some(Ok(Uint8Array::new(&value).to_vec()))
                }
            }
        })
    }
}
