//! Requests whose I/O the entry module's JavaScript does (`entry.mjs`).
//!
//! The request path is one Rust future ([`super::serve`]). Run the usual
//! way, wasm-bindgen's executor polls it, and its I/O goes through objects
//! built from Rust (the upstream `Request` and its headers, the fetch's
//! promise and the closures that wake the future, the answer's body read
//! through them). A probe estimated all of that at about 0.1 ms per
//! request; done here, it measured 0.03 ms (`tests/bench/README.md`, "Past
//! the floor"). Here the entry module drives the future instead:
//!
//! 1. [`drive`] polls it once, synchronously, with the request's body
//!    already read by JavaScript. Most requests reach their upstream call
//!    in that one poll with nothing else to wait for (config cached, key
//!    static or admitted from its lease).
//! 2. If the future is waiting on one whole-answer provider call and
//!    nothing else, that call is in the outbox: `drive` returns it as a
//!    plain array, `[task, url, method, headers, body, deadline ms]`, and
//!    JavaScript runs the `fetch` and reads the answer itself.
//! 3. [`drive_on`] hands the answer (status, the headers the core reads,
//!    body; or the transport's error) to the waiting call and polls again:
//!    a failover's next call comes back the same way, the finished
//!    request as its `Response`.
//! 4. Anything else the future waits on (KV, a key's object, a stream, a
//!    hedge's timer, the cache): the future goes to wasm-bindgen's executor
//!    as it always did, and `drive` returns its promise. From then on its
//!    calls are made from Rust as before.
//!
//! Only a call that nothing can abandon early (no abort controller: no
//! overlapped admission, no hedge) and whose answer is read whole is
//! driven; its deadline is JavaScript's `AbortSignal.timeout`, as it is
//! Rust's on the other path, so a hung provider still fails over on time.
//! The future is polled with a waker that does nothing: every poll after
//! the first is one of `drive_on`'s, or the executor's once handed over,
//! and a future handed over is polled at once, so no wake is lost.
//!
//! A request the runtime cancels while JavaScript waits on its call (its
//! client went away) never comes back to `drive_on`; its future is dropped
//! once its call is a minute past its deadline ([`ABANDONED_AFTER_MS`]), as
//! the executor's would be, so waiting futures cannot pile up. Dropped
//! unsettled, a lease's reservation stays charged (never undercharged).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};

use worker::js_sys::{Array, Uint8Array};
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::web_sys;
use worker::{Context, Env};

use super::upstream;
use crate::gateway::ReplyBody;
use crate::http::{UpstreamRequest, UpstreamResponse};

/// A request's future.
type Task = Pin<Box<dyn Future<Output = JsValue>>>;

/// Where a driven call's answer lands.
type Slot = Rc<RefCell<Option<Result<Answer, String>>>>;

/// A whole answer, as JavaScript read it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A call waiting for JavaScript to make it.
struct Outgoing {
    req: UpstreamRequest,
    deadline_ms: u64,
    slot: Slot,
}

/// How long past its call's deadline a waiting request is taken for
/// abandoned: the call's `AbortSignal.timeout` has ended it by then, so
/// only a request the runtime cancelled is still waiting.
const ABANDONED_AFTER_MS: u64 = 60_000;

/// A request waiting for its call's answer.
struct Waiting {
    task: Task,
    slot: Slot,
    /// When its call's deadline passes (Unix ms).
    due_ms: u64,
}

thread_local! {
    /// Requests waiting for a driven call's answer, by task number.
    static WAITING: RefCell<HashMap<u32, Waiting>> = RefCell::new(HashMap::new());
    /// When to look for abandoned requests next (Unix ms).
    static NEXT_SWEEP_MS: Cell<u64> = const { Cell::new(0) };
    static NEXT_TASK: Cell<u32> = const { Cell::new(0) };
    /// A driver's poll is on the stack: calls may be driven.
    static DRIVING: Cell<bool> = const { Cell::new(false) };
    /// The call the last poll asked for.
    static OUTBOX: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    /// Calls made by JavaScript so far (a test hook's figure).
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

/// How many provider calls JavaScript made for this isolate (test hook).
pub(super) fn calls() -> u64 {
    CALLS.get()
}

/// Whether a call can be driven from JavaScript: a driver is polling, no
/// other call is outstanding, nothing may abandon it early, and its answer
/// is read whole.
pub(super) fn may_drive(req: &UpstreamRequest, abortable: bool) -> bool {
    DRIVING.get() && !abortable && !req.wants_stream() && OUTBOX.with_borrow(Option::is_none)
}

/// A call for JavaScript to make; resolves when [`drive_on`] brings its
/// answer. The whole answer, body included, is bounded by `deadline_ms`.
pub(super) fn call(
    req: UpstreamRequest,
    deadline_ms: u64,
) -> impl Future<Output = Result<UpstreamResponse, String>> {
    let slot: Slot = Rc::new(RefCell::new(None));
    CALLS.set(CALLS.get() + 1);
    OUTBOX.set(Some(Outgoing {
        req,
        deadline_ms,
        slot: slot.clone(),
    }));
    std::future::poll_fn(move |_| match slot.borrow_mut().take() {
        None => Poll::Pending,
        Some(Err(e)) => Poll::Ready(Err(e)),
        Some(Ok(answer)) => Poll::Ready(Ok(UpstreamResponse {
            status: answer.status,
            headers: answer.headers,
            body: Box::pin(futures::stream::once(std::future::ready(Ok(answer.body)))),
            native: None,
        })),
    })
}

/// Starts a request: its first poll (step 1 above). `body`: the request's
/// body, when JavaScript read it.
#[allow(unreachable_pub)] // exported to JavaScript
#[wasm_bindgen]
pub fn drive(
    req: web_sys::Request,
    env: Env,
    ctx: worker::worker_sys::Context,
    body: Option<Vec<u8>>,
) -> JsValue {
    let ctx = Context::new(ctx);
    let task: Task = Box::pin(async move {
        let (reply, request_id) = super::serve(req, env, ctx, body).await;
        match reply.body {
            ReplyBody::Full(bytes) => reply_array(reply.status, &reply.headers, &request_id, bytes),
            _ => match super::into_response(reply, &request_id) {
                Ok(response) => response.into(),
                Err(e) => super::failed_response(&e.to_string()).into(),
            },
        }
    });
    step(task)
}

/// A driven call's answer (step 3 above): `status`, the response's
/// `headers` (only for a failure: a success's are not read) and `body`; or
/// the transport's `error` (`undefined` when there is none).
#[allow(unreachable_pub)] // exported to JavaScript
#[wasm_bindgen]
pub fn drive_on(
    task: u32,
    status: u16,
    headers: Option<web_sys::Headers>,
    body: Option<Vec<u8>>,
    error: JsValue,
) -> JsValue {
    // `null`: not waiting here (its instance was rebuilt after a trap, or it
    // was swept as abandoned); the entry module answers it as a trap's.
    let Some(Waiting { task, slot, .. }) = WAITING.with_borrow_mut(|w| w.remove(&task)) else {
        return JsValue::NULL;
    };
    let answer = if error.is_undefined() {
        Ok(Answer {
            status,
            headers: headers
                .map(|h| upstream::read_headers(&h))
                .unwrap_or_default(),
            body: body.unwrap_or_default(),
        })
    } else {
        Err(upstream::transport_error(error))
    };
    *slot.borrow_mut() = Some(answer);
    step(task)
}

/// The paths whose POST body the entry module reads itself
/// ([`crate::gateway::BODY_PATHS`]); asked once per isolate.
#[allow(unreachable_pub)] // exported to JavaScript
#[wasm_bindgen]
pub fn body_paths() -> Vec<String> {
    crate::gateway::BODY_PATHS
        .iter()
        .map(|p| (*p).to_owned())
        .collect()
}

/// The most a body the entry module reads may declare ([`super::BODY_CAP`]).
#[allow(unreachable_pub)] // exported to JavaScript
#[wasm_bindgen]
pub fn body_cap() -> f64 {
    super::BODY_CAP as f64
}

/// Polls a request once: its `Response` or whole reply, the call it waits
/// for, or the executor's promise of one of the first two.
fn step(mut task: Task) -> JsValue {
    DRIVING.set(true);
    let polled = super::with_poll_clock(|| {
        task.as_mut()
            .poll(&mut TaskContext::from_waker(futures::task::noop_waker_ref()))
    });
    DRIVING.set(false);
    let outgoing = OUTBOX.take();
    match (polled, outgoing) {
        (Poll::Ready(response), _) => response,
        (Poll::Pending, Some(out)) => {
            let id = NEXT_TASK.get().wrapping_add(1);
            NEXT_TASK.set(id);
            let now = super::now_ms();
            let waiting = Waiting {
                task,
                slot: out.slot,
                due_ms: now.saturating_add(out.deadline_ms),
            };
            let abandoned = WAITING.with_borrow_mut(|w| {
                w.insert(id, waiting);
                sweep(w, now)
            });
            // Dropped outside the borrow: a future's drop may run any code.
            drop(abandoned);
            outgoing_array(id, out.req, out.deadline_ms)
        }
        (Poll::Pending, None) => {
            let promise =
                worker::wasm_bindgen_futures::future_to_promise(async move { Ok(task.await) });
            promise.into()
        }
    }
}

/// Takes out the requests abandoned a minute past their call's deadline;
/// looks at most every ten seconds.
fn sweep(waiting: &mut HashMap<u32, Waiting>, now: u64) -> Vec<Waiting> {
    if now < NEXT_SWEEP_MS.get() {
        return Vec::new();
    }
    NEXT_SWEEP_MS.set(now + 10_000);
    let gone: Vec<u32> = waiting
        .iter()
        .filter(|(_, w)| now >= w.due_ms.saturating_add(ABANDONED_AFTER_MS))
        .map(|(id, _)| *id)
        .collect();
    gone.iter().filter_map(|id| waiting.remove(id)).collect()
}

#[wasm_bindgen(inline_js = r#"
export function reply(status, headers, body) {
  return [status, headers, body];
}
export function outgoing(task, url, method, headers, body, ms) {
  return [task, url, method, headers, body, ms];
}
"#)]
extern "C" {
    /// `[status, headers, body]`: an array literal (`Array.of` takes V8's
    /// generic path, about 6 µs a call).
    fn reply(status: u16, headers: Array, body: Uint8Array) -> JsValue;
    /// `[task, url, method, headers, body, deadline ms]`.
    fn outgoing(
        task: u32,
        url: &str,
        method: &str,
        headers: Array,
        body: JsValue,
        deadline_ms: f64,
    ) -> JsValue;
}

/// A whole reply for JavaScript to answer with: `[status, headers, body]`,
/// `headers` a flat array of names and values, `x-request-id` last.
fn reply_array(
    status: u16,
    headers: &[(&str, String)],
    request_id: &str,
    body: Vec<u8>,
) -> JsValue {
    let pairs = headers.iter().map(|(n, v)| (*n, v.as_str()));
    let flat = flat_headers(pairs.chain([("x-request-id", request_id)]));
    reply(status, flat, Uint8Array::from(body.as_slice()))
}

/// `[task, url, method, headers, body, deadline ms]`, `headers` a flat
/// array of names and values.
fn outgoing_array(task: u32, req: UpstreamRequest, deadline_ms: u64) -> JsValue {
    let headers = flat_headers(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let body: JsValue = if req.body.is_empty() {
        JsValue::UNDEFINED
    } else {
        Uint8Array::from(req.body.as_slice()).into()
    };
    outgoing(
        task,
        &req.url,
        req.method,
        headers,
        body,
        deadline_ms as f64,
    )
}

/// Names and values, in one flat array: `[name, value, name, value, ...]`.
fn flat_headers<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Array {
    let flat = Array::new();
    for (name, value) in pairs {
        flat.push(&JsValue::from_str(name));
        flat.push(&JsValue::from_str(value));
    }
    flat
}
