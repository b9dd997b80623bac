//! Streamed bodies to the client as native byte streams: the rest of a
//! committed OpenAI-to-OpenAI stream, piped by a small JavaScript reader
//! ([`pipe`]), and a stream Rust produces chunk by chunk ([`write`]).
//!
//! Until its first token a stream goes through Rust chunk by chunk (the
//! commit point, failover, translation). After it, an OpenAI chunk stream
//! going to an OpenAI client needs no translation, only three things the
//! gateway must know at its end — its usage, whether it finished, how many
//! events it had — and one edit — the usage-only chunk the gateway asked for
//! on the client's behalf is dropped. Carrying every chunk into wasm and back
//! costs two copies across the JS boundary, two promises and their closures
//! per chunk; `scripts/bench` measured it at most of the gateway's CPU per
//! streamed answer (tests/bench/README.md). So the rest is read by the small
//! JavaScript function below, which passes events on as they come, keeps the
//! little it must know, and calls back into Rust once, at the end.
//!
//! Both bodies are native byte streams (`IdentityTransformStream`) that the
//! runtime pumps to the client itself, written without waiting for each
//! chunk to be taken until 64 KiB wait for a slow client: a body built in
//! JavaScript (`new ReadableStream`) costs a `pull` call, its promise and
//! the runtime's draining of a JavaScript queue per chunk
//! (`tests/bench/ab.mjs`: −0.083 ms per 20-chunk piped stream, −0.066 per
//! translated one). A client that goes away errors the body (the runtime
//! notices at the next chunk written), which stops the provider's fetch.
//!
//! The JavaScript is deliberately dumb: it splits events on blank lines,
//! passes on whole events only (a provider that cuts a stream inside an event
//! must not leave half of it ahead of the error event that ends the client's
//! stream), and parses only the event that carries `"usage":{`. The last events are
//! rendered by Rust: ahead of time for a cut or a timeout ([`NativeStream`]'s
//! events), or at the end, by the one callback, for an upstream error event.

use std::any::Any;

use futures::StreamExt;
use futures::future::{Either, select};
use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::prelude::*;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::{self, JsFuture};
use worker::web_sys;

use super::upstream::NativeParts;
use crate::gateway::NativeStream;
use crate::http::ByteStream;

#[wasm_bindgen(inline_js = r#"
const enc = new TextEncoder();
const DONE = enc.encode('data: [DONE]\n\n');

/** Bytes of a body that may wait for a slow client before its writer waits. */
const HIGH_WATER = 65536;
const ignore = () => {};

/**
 * A native byte stream for a response body (the runtime pumps it to the
 * client itself), and the writer that feeds it.
 */
export function byte_pipe() {
  const { readable, writable } = new IdentityTransformStream({ highWaterMark: HIGH_WATER });
  return [readable, writable.getWriter()];
}

/**
 * Writes `bytes` without waiting for the client to take them (a failed
 * write means the client is gone, which `writer.closed` tells); answers
 * whether there is room for more.
 */
function write(writer, bytes) {
  writer.write(bytes).catch(ignore);
  return writer.desiredSize > 0;
}

/** `write` of a copy of `bytes`, a view of wasm memory. */
export function put(writer, bytes) {
  return write(writer, bytes.slice());
}

/** Ends the body: closed after what was written, or cut with `error`. */
export function finish(writer, error) {
  (error === undefined ? writer.close() : writer.abort(new Error(error))).catch(ignore);
}

/** Whether an event's data is whole: `[DONE]`, or JSON that parses. */
function whole(data) {
  if (data === null || data === '[DONE]') return true;
  try {
    JSON.parse(data);
    return true;
  } catch (_) {
    return false;
  }
}

/** The `data:` lines of one event joined, or null for an event without data. */
function dataOf(ev) {
  let data = null;
  for (const line of ev.split('\n')) {
    if (line.startsWith('data:')) {
      const v = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
      data = data === null ? v : `${data}\n${v}`;
    }
  }
  return data;
}

export function pipe_openai_sse(reader, head, partial, strip, finished, events, totalMs, cut, timeout, abort, onEnd) {
  const [readable, writer] = byte_pipe();
  const put = (bytes) => write(writer, bytes);
  const dec = new TextDecoder();
  let text = dec.decode(partial, { stream: true }).replace(/\r\n/g, '\n');
  let usage = null, done = false, failed = null, over = false;
  const stop = () => {
    abort.abort();
    reader.cancel().catch(() => {});
  };
  // Reports to Rust once; it answers the bytes of an upstream error event's
  // rendering (empty otherwise), written after `last`, then the body ends.
  // `client`: false once the client has gone.
  const end = (client, complete, last) => {
    if (over) return;
    over = true;
    clearTimeout(timer);
    const rendered = onEnd(usage, events, complete, failed);
    if (client) {
      if (last && last.length) put(last);
      if (rendered.length) put(rendered);
      writer.close().catch(() => {});
    }
  };
  // Takes the complete events off `text`; returns those to pass on. Only
  // whole events are written, so a stream cut inside one never sends the
  // client half an event ahead of the error that ends it; at the end, a
  // last event whose blank line never came goes only if its data is whole.
  const scan = (final) => {
    let out = '';
    for (;;) {
      const i = text.indexOf('\n\n');
      let ev;
      if (i !== -1) { ev = text.slice(0, i); text = text.slice(i + 2); }
      else if (final && text.trim() !== '') {
        ev = text;
        text = '';
        if (!whole(dataOf(ev))) break; // cut inside it: dropped, and the end says cut
      }
      else break;
      const data = dataOf(ev);
      let keep = true;
      if (data !== null) {
        events++;
        if (data === '[DONE]') done = true;
        else if (data.startsWith('{"error"')) { failed = data; keep = false; }
        else {
          if (!finished && /"finish_reason"\s*:\s*"/.test(data)) finished = true;
          if (/"usage"\s*:\s*\{/.test(data)) {
            try {
              const j = JSON.parse(data);
              if (j.usage) usage = JSON.stringify(j.usage);
              if (strip && Array.isArray(j.choices) && j.choices.length === 0) keep = false;
            } catch (_) { /* not JSON: passed on as it is */ }
          }
        }
      }
      if (keep) out += `${ev}\n\n`;
      if (failed !== null) break;
    }
    return out;
  };
  const timer = setTimeout(() => {
    stop();
    end(true, false, timeout);
  }, totalMs);
  // The client went away (the runtime cancelled its body).
  writer.closed.catch(() => {
    if (over) return;
    stop();
    end(false, false);
  });
  const pass = async () => {
    put(head);
    // Whole events read before the hand-over; a part of one waits in `text`.
    const first = scan(false);
    if (first) put(enc.encode(first));
    for (;;) {
      let r;
      try {
        r = await reader.read();
      } catch (_) {
        end(true, false, cut);
        return;
      }
      if (over) return;
      if (r.done) {
        text += dec.decode();
        const out = scan(true);
        if (out) put(enc.encode(out));
        if (failed !== null) end(true, false);
        else if (done) end(true, true);
        else if (finished) end(true, true, DONE);
        else end(true, false, cut);
        return;
      }
      text = (text + dec.decode(r.value, { stream: true })).replace(/\r\n/g, '\n');
      const out = scan(false);
      if (failed !== null) {
        if (out) put(enc.encode(out));
        stop();
        end(true, false);
        return;
      }
      // Only part of an event: nothing to write yet.
      if (!out) continue;
      const chunk = enc.encode(out);
      // Past the high-water mark: wait for the client to take some.
      if (!put(chunk)) {
        try {
          await writer.ready;
        } catch (_) {
          return; // the client gone: ended by `writer.closed`
        }
      }
    }
  };
  pass().catch(() => {
    stop();
    end(true, false, cut);
  });
  return readable;
}
"#)]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn pipe_openai_sse(
        reader: &web_sys::ReadableStreamDefaultReader,
        head: Uint8Array,
        partial: Uint8Array,
        strip: bool,
        finished: bool,
        events: f64,
        total_ms: f64,
        cut: Uint8Array,
        timeout: Uint8Array,
        abort: &web_sys::AbortController,
        on_end: &JsValue,
    ) -> web_sys::ReadableStream;
    fn byte_pipe() -> js_sys::Array;
    fn put(writer: &web_sys::WritableStreamDefaultWriter, bytes: &[u8]) -> bool;
    fn finish(writer: &web_sys::WritableStreamDefaultWriter, error: Option<String>);
}

/// The client's body for a stream handed over to the runtime, or `None`
/// when the handle is not the edge's (the stream is then not sent).
pub(super) fn pipe(mut native: Box<NativeStream>) -> Option<web_sys::ReadableStream> {
    let body = std::mem::replace(&mut native.body, Box::new(()) as Box<dyn Any>);
    let parts = body.downcast::<NativeParts>().ok()?;
    let NativeParts { reader, mut guard } = *parts;
    // From here the pipe aborts the fetch itself (on cancel or timeout).
    let abort = guard.take()?;
    let bytes = |b: &[u8]| Uint8Array::from(b);
    let head = bytes(&native.head);
    let partial = bytes(&native.partial);
    let cut = bytes(&native.cut_event);
    let timeout = bytes(&native.timeout_event);
    let (strip, finished) = (native.tail.strip_usage_only, native.tail.finished);
    let (events, total_ms) = (native.events as f64, native.total_ms as f64);
    // Called exactly once, whichever way the stream ends (done, cut,
    // timeout, client gone), so the closure is freed by its call.
    let on_end = Closure::once_into_js(
        move |usage: JsValue, events: f64, complete: bool, failed: JsValue| -> Uint8Array {
            let rendered = failed
                .as_string()
                .map(|data| (native.render_error)(&data))
                .unwrap_or_default();
            native.end(usage.as_string().as_deref(), events as u64, complete);
            Uint8Array::from(rendered.as_slice())
        },
    );
    let readable = pipe_openai_sse(
        &reader, head, partial, strip, finished, events, total_ms, cut, timeout, &abort, &on_end,
    );
    Some(readable)
}

/// The client's body for a stream Rust produces (a translated stream, a
/// continued one, one the cache keeps), fed chunk by chunk by a task. A
/// client that goes away errors the writer; the task then drops the
/// stream, which aborts its provider call and reports it incomplete. A
/// failed stream aborts the body, which the client sees cut.
pub(super) fn write(mut stream: ByteStream) -> web_sys::ReadableStream {
    let pair = byte_pipe();
    let readable: web_sys::ReadableStream = pair.get(0).unchecked_into();
    let writer: web_sys::WritableStreamDefaultWriter = pair.get(1).unchecked_into();
    wasm_bindgen_futures::spawn_local(async move {
        let mut gone = JsFuture::from(writer.closed());
        loop {
            let item = match select(stream.next(), &mut gone).await {
                Either::Left((item, _)) => item,
                // The client went away (or the body was closed): stop.
                Either::Right(_) => return,
            };
            match item {
                // Past the high-water mark: wait for the client to take some.
                Some(Ok(bytes)) => {
                    if !put(&writer, &bytes) {
                        let room = JsFuture::from(writer.ready());
                        if select(room, &mut gone).await.factor_first().0.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e)) => return finish(&writer, Some(e)),
                None => return finish(&writer, None),
            }
        }
    });
    readable
}
