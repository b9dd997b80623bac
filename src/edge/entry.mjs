// The worker's entry module: the Rust worker that worker-build makes
// (build/index.js + build/index_bg.wasm) behind one small wrapper, so that a
// panic answers like any other gateway error.
//
// Why JavaScript: release builds use `panic = "abort"` (stable Rust cannot
// unwind in wasm32), so a panic traps the whole wasm instance and no Rust
// code can run after it to write a response. Worse, the trap happens inside
// a microtask that polls the request's future, so the fetch promise never
// settles: the runtime waits, decides the request "hung", and answers a
// plain-text 500. worker-build's shim already rebuilds the instance for the
// next request; what it cannot do is answer this one. The wrapper can:
// a request whose future the executor runs races its promise against the
// isolate's next trap (the global `error` event a `WebAssembly.RuntimeError`
// raises), and a trap answers every such request still waiting with an
// OpenAI-shaped JSON 500 (an Anthropic-shaped one on /v1/messages), since
// none of them can finish on the dead instance: one promise and a Set entry
// each. A trap in a poll this module drives (below) is thrown to it
// instead: it answers that request the same way and fails the executor's.
// A driven request waiting on its provider call needs no race: its answer
// comes back to the rebuilt instance, which no longer knows it, and it is
// answered the same way then.
//
// It drives the request: the Rust request path is one future, polled here
// (`drive`, then `drive_on` with each provider answer) instead of by
// wasm-bindgen's executor, and a plain request's provider calls (a whole
// answer, nothing that may abandon it early) are made here with `fetch`
// and `AbortSignal.timeout`, their answers read whole and handed to Rust.
// Anything else the path waits on hands the future to the executor as
// before (src/edge/driven.rs has the protocol). The client's response of
// a whole reply is built here too. Measured with tests/bench/ab.mjs: -0.013
// ms per request at 1 connection, -0.019 at 16, -0.031 for a virtual key,
// -0.033 at steady state (AB_WARM=30).
//
// It also gives the isolate a cheaper `queueMicrotask`. The Rust side's
// executor (wasm-bindgen's) schedules every poll of a request's future with
// it (a request handed to it, and every task in `waitUntil`), once more per
// streamed chunk read in Rust.
// workerd's own costs about 6 µs of CPU a call, a reaction on a resolved
// promise about 1.5 µs: measured with tests/bench/ab.mjs, the swap takes
// 0.02-0.05 ms off every request (tests/bench/README.md, "Where the CPU
// goes"). The order is the same (both queue a microtask, first in first
// out); an exception in a callback, which the native one reports as an
// uncaught error, is reported the same way here: a trap answers the
// requests in flight as below, anything else is logged.

import { WorkerEntrypoint } from 'cloudflare:workers';
import Gateway from '../../build/index.js';

export { KeyObject, AnalyticsObject, AlertsObject } from '../../build/index.js';

/** Rejecters of the requests in flight in this isolate. */
const inFlight = new Set();

/** A trap: every request in flight fails, and the next one gets a new instance. */
function trapped(error) {
  // What worker-build's shim does on the `error` event: its next
  // construction re-instantiates the module.
  if (globalThis.__worker_init_state) globalThis.__worker_init_state.criticalError = true;
  for (const fail of inFlight) fail(error);
  inFlight.clear();
}

addEventListener('error', (event) => {
  if (event.error instanceof WebAssembly.RuntimeError) trapped(event.error);
});

const resolved = Promise.resolve();
const nativeQueueMicrotask = globalThis.queueMicrotask;
globalThis.queueMicrotask = function queueMicrotask(callback) {
  // Not a function: the native one throws the TypeError it always did.
  if (typeof callback !== 'function') return nativeQueueMicrotask.call(globalThis, callback);
  resolved.then(callback).catch((error) => {
    if (error instanceof WebAssembly.RuntimeError) trapped(error);
    console.error('Uncaught', error);
  });
};

/** A request id for a reply the Rust side never got to write. */
function requestId(request) {
  const own = request.headers.get('x-request-id');
  if (own && /^[A-Za-z0-9._:-]{1,128}$/.test(own)) return own;
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return 'req_' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The JSON 500 for a request the gateway failed to finish. */
function panicReply(request, error) {
  const id = requestId(request);
  const message = 'Internal gateway error: the request failed unexpectedly and was not completed; retrying it is safe.';
  console.error(JSON.stringify({ event: 'panic', request_id: id, error: String(error) }));
  const path = new URL(request.url).pathname.replace(/\/+$/, '');
  const anthropic = path === '/v1/messages' || path.startsWith('/v1/messages/');
  const body = anthropic
    ? { type: 'error', error: { type: 'api_error', message } }
    : { error: { message, type: 'server_error', code: 'internal_error', param: null } };
  return new Response(JSON.stringify(body), {
    status: 500,
    headers: { 'content-type': 'application/json', 'x-request-id': id },
  });
}

/**
 * The paths whose POST body is read here, and the most such a body may
 * declare: asked of the Rust side once per isolate (gateway::BODY_PATHS,
 * edge::BODY_CAP).
 */
let bodyPaths = null;
let bodyCap = 0;

/** Whether to read the body here: a POST to a gateway path with a declared length within the cap. */
function readsBody(gateway, request) {
  if (request.method !== 'POST') return false;
  const length = request.headers.get('content-length');
  if (length === null) return false;
  if (bodyPaths === null) {
    bodyPaths = new Set(gateway.body_paths());
    bodyCap = gateway.body_cap();
  }
  const declared = Number(length);
  if (!Number.isSafeInteger(declared) || declared < 0 || declared > bodyCap) return false;
  const url = request.url;
  const start = url.indexOf('/', url.indexOf('://') + 3);
  if (start < 0) return false;
  let end = url.indexOf('?', start);
  if (end < 0) end = url.length;
  while (end - start > 1 && url.charCodeAt(end - 1) === 47) end--;
  return bodyPaths.has(url.slice(start, end));
}

/**
 * A request driven from here (src/edge/driven.rs): the Rust future is polled
 * by `drive`, and each provider call it hands back is made here, its answer
 * read whole and handed on with `drive_on`, until it is a `Response` (or
 * the executor's promise of one, for a request that waits on anything else).
 */
async function driven(gateway, request, env, ctx) {
  let body;
  if (readsBody(gateway, request)) {
    try {
      body = new Uint8Array(await request.arrayBuffer());
    } catch {
      body = undefined; // the Rust side reads it again and reports the failure
    }
  }
  let step = synchronously(() => gateway.drive(request, env, ctx, body));
  for (;;) {
    // Handed to the executor: its promise of a response or a whole reply,
    // which a trap would leave unsettled.
    if (step instanceof Promise) step = await untilTrap(step);
    // Its instance rebuilt after a trap while its call was out: lost.
    if (step === null) throw new Error('the request was lost with its wasm instance');
    if (!Array.isArray(step)) return step;
    if (step.length === 3) return wholeReply(step);
    const [task, url, method, flat, payload, ms] = step;
    let status = 0;
    let failed; // a failure's headers (the Rust side reads the few it needs)
    let answer;
    let error; // the transport's, worded by the Rust side
    try {
      const init = { method, headers: headersOf(flat), body: payload, signal: AbortSignal.timeout(ms) };
      const res = await fetch(url, init);
      status = res.status;
      if (status < 200 || status > 299) failed = res.headers;
      answer = new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      error = e ?? new Error('fetch failed');
    }
    step = synchronously(() => gateway.drive_on(task, status, failed, answer, error));
  }
}

/** The client's response of a whole reply: `[status, [name, value, ...], body]`. */
function wholeReply([status, flat, body]) {
  return new Response(body, { status, headers: headersOf(flat) });
}

/** `Headers` from `[name, value, name, value, ...]`. */
function headersOf(flat) {
  const headers = new Headers();
  for (let i = 0; i < flat.length; i += 2) headers.set(flat[i], flat[i + 1]);
  return headers;
}

/** `promise`, or the isolate's next trap, whichever comes first. */
function untilTrap(promise) {
  let fail;
  const trap = new Promise((_, reject) => {
    fail = reject;
  });
  inFlight.add(fail);
  return Promise.race([promise, trap]).finally(() => inFlight.delete(fail));
}

/**
 * A call into Rust. A trap thrown here (a panic in a driven poll) is no
 * uncaught `error` event, so it fails the other requests in flight itself.
 */
function synchronously(call) {
  try {
    return call();
  } catch (error) {
    if (error instanceof WebAssembly.RuntimeError) trapped(error);
    throw error;
  }
}

/**
 * The Rust worker's entry object, one per isolate: `drive` and `drive_on`
 * take the request's `env` and `ctx` as arguments and use nothing of the
 * object's own, and constructing one through worker-build's shim (a class
 * behind two proxies) cost 5 µs a request. Its proxies still rebuild the
 * wasm instance before the next call after a trap.
 */
let gateway = null;
function gatewayOf(ctx, env) {
  gateway ??= new Gateway(ctx, env);
  return gateway;
}

export default class extends WorkerEntrypoint {
  fetch(request) {
    return driven(gatewayOf(this.ctx, this.env), request, this.env, this.ctx).catch((error) =>
      panicReply(request, error),
    );
  }
}
