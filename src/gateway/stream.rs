//! Streams from provider bytes to client bytes.
//!
//! [`Translated`] decodes the upstream framing incrementally — Server-Sent
//! Events, or AWS's binary event stream for Bedrock, as the provider's
//! [`Translator`] says — and runs each event through the translator as it
//! arrives: nothing is buffered beyond one partial event. It yields `Err`
//! when the upstream breaks or reports an error, so the failover loop can
//! still move on while nothing has reached the client. The translator also
//! says when its bytes first carry output ([`Translated::has_output`], the
//! commit point) and how an error reads in the client's protocol. Once
//! committed, [`into_client_stream`] turns such an error into that error
//! event and a clean end, so a broken stream never looks complete and never
//! hangs.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use std::any::Any;

use crate::api::Usage;
use crate::aws::eventstream;
use crate::error::GatewayError;
use crate::http::{ByteStream, NativeBody, Sleep};
use crate::providers::{NativeTail, StreamTranslator, Translator};
use crate::sse::{SseEvent, SseParser, encode_data};

/// A framing decoder's output side (bytes go in by its own `push`): the
/// provider's events. A partial event is `Ok(None)`, never an error.
trait Framing {
    /// What one decoded event is.
    type Event;
    /// The next complete event; at end of stream, also one whose end
    /// marker never came (SSE). An `Err` is a corrupt stream.
    fn next(&mut self, at_eof: bool) -> Result<Option<Self::Event>, String>;
    /// At end of stream: an `Err` when the stream was cut inside an event.
    fn finish(&self) -> Result<(), String>;
}

impl Framing for SseParser {
    type Event = SseEvent;
    fn next(&mut self, at_eof: bool) -> Result<Option<SseEvent>, String> {
        Ok(if at_eof {
            self.finish_whole()
        } else {
            self.next_event()
        })
    }
    fn finish(&self) -> Result<(), String> {
        // A whole unterminated last event was dispatched by `next`; one cut
        // inside its JSON was not, and the stream was cut.
        if self.was_cut() {
            Err("the stream was cut inside an event".into())
        } else {
            Ok(())
        }
    }
}

impl Framing for eventstream::Decoder {
    type Event = eventstream::Message;
    fn next(&mut self, _at_eof: bool) -> Result<Option<eventstream::Message>, String> {
        self.next_message().map_err(|e| e.to_string())
    }
    fn finish(&self) -> Result<(), String> {
        eventstream::Decoder::finish(self).map_err(|e| e.to_string())
    }
}

/// A provider's framing decoder with the translator of its events.
enum Decoder {
    Sse(SseParser, Box<dyn StreamTranslator>),
    EventStream(
        eventstream::Decoder,
        Box<dyn StreamTranslator<eventstream::Message>>,
    ),
}

/// Upstream bytes -> translated client bytes, chunk by chunk.
pub struct Translated {
    provider: String,
    upstream: ByteStream,
    /// The runtime's handle on `upstream`, to hand the rest over natively.
    native: Option<NativeBody>,
    decoder: Decoder,
    /// An error to yield after the bytes that preceded it.
    pending_error: Option<GatewayError>,
    ended: bool,
    /// Some translated bytes carried output (the translator's own test):
    /// the stream may be committed.
    output: bool,
    /// Upstream events handled: an output-token estimate when a stream is
    /// cut before its usage arrives (providers send about a token an event).
    events: u64,
}

impl Translated {
    /// Wraps an upstream body; the translator's variant picks the decoder.
    pub fn new(provider: &str, upstream: ByteStream, translator: Translator) -> Self {
        let decoder = match translator {
            Translator::Sse(t) => Decoder::Sse(SseParser::new(), t),
            Translator::EventStream(t) => Decoder::EventStream(eventstream::Decoder::new(), t),
        };
        Translated {
            provider: provider.to_owned(),
            upstream,
            native: None,
            decoder,
            pending_error: None,
            ended: false,
            output: false,
            events: 0,
        }
    }

    /// The runtime's handle on the upstream body ([`Translated::detach`]).
    pub fn with_native(mut self, native: Option<NativeBody>) -> Self {
        self.native = native;
        self
    }

    /// Hands the rest of the stream over to be piped natively, when its
    /// translator passes events on unchanged and the runtime holds the body
    /// ([`NativeBody`]): the raw bytes read but not yet passed on, the
    /// body, and what the pipe must know. `None` leaves the stream as it
    /// was, translated here chunk by chunk (always for AWS's event stream,
    /// which no client reads as it is).
    pub fn detach(&mut self) -> Option<Detached> {
        if self.ended || self.pending_error.is_some() {
            return None;
        }
        let Decoder::Sse(parser, translator) = &mut self.decoder else {
            return None;
        };
        let tail = translator.native_tail().filter(|t| !t.done)?;
        let native = self.native.take()?;
        let partial = parser.detach()?;
        match native.detach() {
            Some(body) => Some(Detached {
                partial,
                body,
                tail,
                events: self.events,
            }),
            None => {
                // Not handed over: the parser takes its bytes back.
                parser.push(&partial);
                None
            }
        }
    }

    /// Whether the bytes yielded so far carry output the client must not
    /// lose ([`StreamTranslator::carries_output`]): the commit point.
    pub fn has_output(&self) -> bool {
        self.output
    }

    /// A failure after the commit, in the client's protocol
    /// ([`StreamTranslator::write_error`]).
    pub fn error_event(&mut self, e: &GatewayError) -> Vec<u8> {
        let mut out = Vec::new();
        match &mut self.decoder {
            Decoder::Sse(_, t) => t.write_error(e, &mut out),
            Decoder::EventStream(_, t) => t.write_error(e, &mut out),
        }
        out
    }

    /// Usage the provider reported so far.
    pub fn usage(&self) -> Option<Usage> {
        match &self.decoder {
            Decoder::Sse(_, t) => t.usage(),
            Decoder::EventStream(_, t) => t.usage(),
        }
    }

    /// Decodes `bytes` and runs every complete event through the translator.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match &mut self.decoder {
            Decoder::Sse(f, _) => f.push(bytes),
            Decoder::EventStream(f, _) => f.push(bytes),
        }
        self.drain_events(out, false);
    }

    /// Runs every complete event through the translator; at end of stream,
    /// ends the translation too.
    fn drain_events(&mut self, out: &mut Vec<u8>, at_eof: bool) {
        let from = out.len();
        let (provider, events) = (&self.provider, &mut self.events);
        let result = match &mut self.decoder {
            Decoder::Sse(f, t) => drain(f, t.as_mut(), provider, out, at_eof, events),
            Decoder::EventStream(f, t) => drain(f, t.as_mut(), provider, out, at_eof, events),
        };
        // Only until the commit: afterwards nothing asks.
        if !self.output && out.len() > from {
            let written = &out[from..];
            self.output = match &self.decoder {
                Decoder::Sse(_, t) => t.carries_output(written),
                Decoder::EventStream(_, t) => t.carries_output(written),
            };
        }
        if at_eof || result.is_err() {
            self.ended = true;
        }
        if let Err(e) = result {
            self.pending_error = Some(e);
        }
    }
}

/// The decode-translate loop of one framing: an `Err` ends the stream (a
/// corrupt frame, an in-stream provider error, a cut or incomplete answer).
fn drain<F: Framing>(
    framing: &mut F,
    translator: &mut dyn StreamTranslator<F::Event>,
    provider: &str,
    out: &mut Vec<u8>,
    at_eof: bool,
    events: &mut u64,
) -> Result<(), GatewayError> {
    loop {
        match framing.next(at_eof) {
            Ok(Some(ev)) => {
                *events += 1;
                translator.on_event(ev, out)?;
            }
            Ok(None) => break,
            Err(message) => {
                return Err(GatewayError::UpstreamInvalidResponse {
                    provider: provider.to_owned(),
                    message,
                });
            }
        }
    }
    if at_eof {
        framing
            .finish()
            .map_err(|message| GatewayError::UpstreamUnreachable {
                provider: provider.to_owned(),
                message,
            })?;
        translator.on_end(out)?;
    }
    Ok(())
}

impl Stream for Translated {
    type Item = Result<Vec<u8>, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(this.pending_error.take().map(Err));
            }
            let mut out = Vec::new();
            match this.upstream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => this.push(&bytes, &mut out),
                Poll::Ready(Some(Err(message))) => {
                    this.ended = true;
                    this.pending_error = Some(GatewayError::UpstreamUnreachable {
                        provider: std::mem::take(&mut this.provider),
                        message,
                    });
                }
                Poll::Ready(None) => this.drain_events(&mut out, true),
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out)));
            }
        }
    }
}

/// A stream handed over by [`Translated::detach`].
pub struct Detached {
    /// Upstream bytes read but not yet passed on (an event in progress).
    pub partial: Vec<u8>,
    /// The runtime's body ([`NativeBody`]).
    pub body: Box<dyn Any>,
    /// What the pipe must do and knows so far.
    pub tail: NativeTail,
    /// Upstream events handled so far.
    pub events: u64,
}

/// Renders an upstream error event's data as the client's last event.
pub type RenderError = Box<dyn Fn(&str) -> Vec<u8>>;

/// A committed stream whose rest the edge pipes natively: the bytes the
/// client gets first, the raw rest, and how it is to end. The edge's pipe
/// calls [`NativeStream::end`] once, with what it saw.
pub struct NativeStream {
    /// Translated bytes, sent first.
    pub head: Vec<u8>,
    /// Raw upstream bytes of the event in progress, sent next as they are.
    pub partial: Vec<u8>,
    /// The runtime's body, read on from where the gateway stopped.
    pub body: Box<dyn Any>,
    /// What the pipe must do and knows so far.
    pub tail: NativeTail,
    /// Upstream events handled so far.
    pub events: u64,
    /// Time left before the stream ends with [`NativeStream::timeout_event`].
    pub total_ms: u64,
    /// The last event when the upstream breaks or ends unfinished.
    pub cut_event: Vec<u8>,
    /// The last event when the total time runs out.
    pub timeout_event: Vec<u8>,
    /// Renders an upstream `{"error":...}` event's data as the client's last
    /// event (the provider's message, its key redacted should it echo it).
    pub render_error: RenderError,
    on_end: Option<StreamEnd>,
}

impl NativeStream {
    /// The pipe ended: `usage_json` is the `usage` object of the stream's
    /// usage chunk if one came, `events` every event the stream had,
    /// `complete` whether it ended normally. Reports once.
    pub fn end(&mut self, usage_json: Option<&str>, events: u64, complete: bool) {
        if let Some(f) = self.on_end.take() {
            let usage = usage_json.and_then(|u| serde_json::from_str::<Usage>(u).ok());
            f(StreamOutcome {
                usage,
                events,
                complete,
                continued: None,
            });
        }
    }

    /// Takes the settlement callback, for a pipe that reports elsewhere.
    pub fn take_on_end(&mut self) -> Option<StreamEnd> {
        self.on_end.take()
    }
}

impl Drop for NativeStream {
    /// Never piped (the response was not built): settle as cut.
    fn drop(&mut self) {
        let events = self.events;
        self.end(None, events, false);
    }
}

/// The committed rest of a stream handed over by [`Translated::detach`].
pub fn native_stream(
    head: Vec<u8>,
    rest: &mut Translated,
    detached: Detached,
    on_end: Option<StreamEnd>,
    total: (u64, GatewayError),
    render_error: RenderError,
) -> NativeStream {
    let cut = GatewayError::UpstreamUnreachable {
        provider: rest.provider.clone(),
        message: "the stream ended before the answer was complete".into(),
    };
    NativeStream {
        render_error,
        head,
        partial: detached.partial,
        body: detached.body,
        tail: detached.tail,
        events: detached.events,
        total_ms: total.0,
        cut_event: rest.error_event(&cut),
        timeout_event: rest.error_event(&total.1),
        on_end,
    }
}

/// How a committed stream ended, for settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutcome {
    /// Usage the provider reported, if it did before the end.
    pub usage: Option<Usage>,
    /// Upstream events handled.
    pub events: u64,
    /// The answer ended normally (not cut, not an error, not abandoned).
    pub complete: bool,
    /// The second leg that finished the answer after the first broke
    /// ([`super::continuation`]).
    pub continued: Option<super::continuation::Continued>,
}

/// Called once when a committed stream ends, fails, or is dropped because
/// the client went away.
pub type StreamEnd = Box<dyn FnOnce(StreamOutcome)>;

/// The client-facing stream once the first bytes are committed: `first`,
/// then the rest, with an error rendered by the translator as the last
/// event (for OpenAI chunks a `data: {"error":...}` event, what the OpenAI
/// SDKs raise on, and no `[DONE]`). When the
/// `deadline` timer fires first, the stream ends with its error.
pub fn into_client_stream(
    first: Vec<u8>,
    rest: Translated,
    on_end: Option<StreamEnd>,
    deadline: Option<(Sleep, GatewayError)>,
) -> ByteStream {
    Box::pin(ClientStream {
        first: Some(first),
        rest,
        failed: false,
        on_end,
        deadline,
    })
}

struct ClientStream {
    first: Option<Vec<u8>>,
    rest: Translated,
    failed: bool,
    on_end: Option<StreamEnd>,
    deadline: Option<(Sleep, GatewayError)>,
}

impl ClientStream {
    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(StreamOutcome {
                usage: self.rest.usage(),
                events: self.rest.events,
                complete,
                continued: None,
            });
        }
    }
}

impl Stream for ClientStream {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let past_deadline = this
            .deadline
            .as_mut()
            .is_some_and(|(timer, _)| timer.as_mut().poll(cx).is_ready());
        if past_deadline && let Some((_, e)) = this.deadline.take() {
            // Past the total time: end with the timeout, once.
            this.rest.ended = true;
            this.rest.pending_error = None;
            this.failed = true;
            return Poll::Ready(Some(Ok(this.rest.error_event(&e))));
        }
        match this.rest.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Ok(this.rest.error_event(&e))))
            }
            Poll::Ready(None) => {
                let complete = !this.failed;
                this.finish(complete);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for ClientStream {
    /// The client went away (or the runtime dropped the body): settle for
    /// what was sent.
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Whether translated chunk bytes carry something the client must not
/// lose: text, a tool call, a finish, an error or the end. Until they do
/// (a role-only first chunk), the stream is not committed and a failing
/// provider can still be replaced without the client noticing. The OpenAI
/// chunks' test; [`Translated::has_output`] asks the stream's translator.
pub fn carries_output(bytes: &[u8]) -> bool {
    crate::providers::chunk_carries_output(bytes)
}

/// An in-stream error event in OpenAI's shape.
pub fn error_event(e: &GatewayError) -> Vec<u8> {
    let mut out = Vec::new();
    encode_data(&mut out, &e.to_body());
    out
}
