//! Client protocols besides OpenAI chat completions: Anthropic Messages
//! ([`messages`]) and OpenAI Responses ([`responses`]), on the same request
//! path as chat completions (keys, limits, budgets, routing, residency,
//! failover, the stream commit, settlement).
//!
//! Everything here is sans-IO: bytes and values in, bytes and values out.
//! When the target speaks the client's protocol (Messages to an Anthropic
//! target, Responses to OpenAI or Azure) the request is passed through with
//! only `model` rewritten and the answer relayed as sent, usage read on the
//! way; otherwise it goes through the gateway's one internal
//! representation, the OpenAI chat format that the provider adapters in
//! [`crate::providers`] take and give, and back, never through a
//! translator per pair.
//!
//! # The integration API
//!
//! - [`Ingress`]: the client's protocol, by path ([`Ingress::of_path`]);
//!   which provider kinds speak it ([`Ingress::is_native_to`]); an error's
//!   status and body in it ([`Ingress::error`]).
//! - [`ClientRequest`]: the parsed request (`parse_messages`,
//!   `parse_count_tokens`, `parse_responses`), what routing and pricing
//!   read of it, the client headers native targets receive
//!   ([`ClientRequest::keep_headers`]) and its translation, made once
//!   ([`ClientRequest::translate`]).
//! - [`Call`]: one attempt at one candidate, whatever the pair of protocols:
//!   [`Call::for_target`] picks native, translated or (token counts)
//!   estimated; then `local_answer`, `build_request`, `stream_translator`
//!   and `answer` are the steps of an attempt. Streams get a
//!   [`crate::providers::StreamTranslator`] that writes the client's
//!   protocol and answers the gateway's two questions in it: has output
//!   been committed yet (`carries_output`: the relays know their events,
//!   a translated stream asks the OpenAI chunks' test) and how does a
//!   failure after the commit read (`write_error`: `event: error` for
//!   Messages, `error` and `response.failed` for Responses).
//!
//! # How the gateway uses it (`crate::gateway`, done)
//!
//! 1. **prepare** — [`crate::gateway::prepare_messages`],
//!    [`crate::gateway::prepare_count_tokens`] and
//!    [`crate::gateway::prepare_responses`] have the type of
//!    [`crate::gateway::prepare`] (`gateway::Prepare`) and hold a
//!    `gateway::Request::Ingress(ClientRequest)`: model, stream, worst case
//!    (a token count reserves and costs nothing), accounting.
//! 2. **route** — [`crate::gateway::Prepared::route`] keeps the allow-listed
//!    client headers, translates once if a candidate needs it, and drops
//!    the candidates that cannot take what only the client's protocol
//!    carries (a `document` block, a `previous_response_id`): their 400 is
//!    the answer only when no candidate is left.
//! 3. **dispatch** — the one failover loop; per candidate `Call::for_target`,
//!    and `try_chat` runs the call's steps: the commit still waits for the
//!    first output, so a 503 or a broken stream before it stays invisible.
//! 4. **errors** — `Reply::error` keeps the error; `Reply::for_client`
//!    renders it in the client's protocol (Anthropic's shape and statuses:
//!    401 `authentication_error`, 429 `rate_limit_error`, 529
//!    `overloaded_error` when every target is overloaded).
//! 5. **settle** — unchanged: usage comes from the call (`answer`) or from
//!    the stream's translator; Anthropic's cache writes travel in
//!    `Usage::cache_write_tokens` and are charged at their price.
//!
//! # At the edge
//!
//! The route table ([`crate::gateway::route`]) has `POST /v1/messages`,
//! `POST /v1/messages/count_tokens` and `POST /v1/responses`; the edge
//! serves each with the chat request path (`prepare_messages`,
//! `prepare_count_tokens`, `prepare_responses`), and renders every reply
//! with `Reply::for_client(Ingress::of_path(path))`, so each refusal (auth,
//! limits, budgets, routing, upstream) reaches an Anthropic client in
//! Anthropic's shape.
//!
//! A token count passes through the same admission as any request (it
//! reserves nothing, but it counts against a key's requests per minute).
//!
//! # Inside
//!
//! The translated paths: [`messages::messages_request_to_chat_body`] and
//! [`responses::responses_request_to_chat_body`] (each with its table of
//! what happens to every parameter), [`messages::chat_response_to_message`]
//! and [`responses::chat_response_to_response`], and the stream converters
//! [`messages::ChunksToMessageEvents`] and
//! [`responses::ChunksToResponseEvents`] behind the provider's own
//! translator. The chat body always asks for `stream_options.include_usage`,
//! so the usage chunk arrives. `message_start` must announce input tokens
//! before the target has counted any: the estimate is four bytes a token
//! plus Anthropic's image cost, and the final `message_delta` carries the
//! real counts, which the SDKs adopt. The pass-through paths:
//! [`messages::build_anthropic_request`] (headers in
//! [`messages::FORWARDED_HEADERS`]), [`messages::MessageEventsRelay`],
//! [`messages::read_anthropic_message`];
//! [`crate::providers::openai::build_responses_request`],
//! [`responses::ResponseEventsRelay`], [`responses::read_openai_response`].
//!
//! Shared here: the reader that turns an OpenAI chunk stream into content
//! blocks opened, filled and closed one at a time (Anthropic's content
//! blocks and the Responses output items have that same shape), the parsed
//! `chat.completion`, usage, stop reasons and stable ids.

pub mod messages;
pub mod responses;

#[cfg(test)]
mod flow_tests;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::{ChatRequest, Usage};
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::http::UpstreamRequest;
use crate::providers::{self, StreamTranslator, Target, Translator, fnv1a, openai};
use crate::sse::{SseEvent, SseParser};

use messages::{ChunksToMessageEvents, MessageEventsRelay, MessagesRequest};
use responses::{ChunksToResponseEvents, ResponseEventsRelay, ResponsesRequest};

// ---- The integration API ----------------------------------------------------------

/// The client protocol a request came in, by its path: the shape of its
/// body, of its answer and of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// OpenAI chat completions, and every other OpenAI-shaped endpoint.
    Chat,
    /// Anthropic Messages: `POST /v1/messages` and
    /// `POST /v1/messages/count_tokens`.
    Messages,
    /// OpenAI Responses: `POST /v1/responses`.
    Responses,
}

impl Ingress {
    /// The protocol of a path (trailing `/` ignored, as the route table
    /// does): Messages for `/v1/messages` and `/v1/messages/count_tokens`,
    /// Responses for `/v1/responses`, Chat for anything else.
    pub fn of_path(path: &str) -> Ingress {
        let path = path.trim_end_matches('/');
        match path {
            messages::MESSAGES_PATH | messages::COUNT_TOKENS_PATH => Ingress::Messages,
            responses::RESPONSES_PATH => Ingress::Responses,
            // An Anthropic client's mistyped path is told so in its shape.
            _ if path
                .strip_prefix(messages::MESSAGES_PATH)
                .is_some_and(|rest| rest.starts_with('/')) =>
            {
                Ingress::Messages
            }
            _ => Ingress::Chat,
        }
    }

    /// Whether a provider kind speaks this protocol itself, so that a
    /// request in it is passed through rather than translated: Anthropic
    /// for Messages, OpenAI and Azure for Responses. Chat completions have
    /// their own path through the provider adapters (always `false`).
    pub fn is_native_to(self, kind: ProviderKind) -> bool {
        match self {
            Ingress::Chat => false,
            Ingress::Messages => kind == ProviderKind::Anthropic,
            Ingress::Responses => matches!(kind, ProviderKind::Openai | ProviderKind::Azure),
        }
    }

    /// An error's status and body in this protocol: Anthropic's shape and
    /// statuses for Messages ([`messages::anthropic_error_status`],
    /// [`messages::anthropic_error_body`]); OpenAI's for the others, which
    /// the Responses API shares.
    pub fn error(self, e: &GatewayError) -> (u16, Vec<u8>) {
        match self {
            Ingress::Messages => (
                messages::anthropic_error_status(e),
                messages::anthropic_error_body(e),
            ),
            Ingress::Chat | Ingress::Responses => (e.status(), e.to_body()),
        }
    }
}

/// A request of another client protocol, parsed, as the gateway prepares,
/// routes and sends it. It borrows the client's body, kept for targets that
/// speak the protocol ([`Call::Native`]); for the others it is translated
/// once, when routing finds one among the candidates ([`Self::translate`]).
#[derive(Debug)]
pub struct ClientRequest<'a> {
    body: ClientBody<'a>,
    /// The body's size (an input-token estimate's basis).
    body_len: usize,
    /// The chat-completions body for translated targets, once made.
    chat: Option<Result<Vec<u8>, GatewayError>>,
    /// Client headers that native targets receive.
    forwarded: Vec<(&'static str, String)>,
}

/// The parsed body, by endpoint.
#[derive(Debug)]
enum ClientBody<'a> {
    Messages(MessagesRequest<'a>),
    CountTokens(MessagesRequest<'a>),
    Responses(ResponsesRequest<'a>),
}

impl<'a> ClientRequest<'a> {
    /// Parses a `POST /v1/messages` body (400s in Anthropic's words).
    pub fn parse_messages(body: &'a [u8]) -> Result<Self, GatewayError> {
        Ok(Self::new(
            ClientBody::Messages(MessagesRequest::parse(body)?),
            body,
        ))
    }

    /// Parses a `POST /v1/messages/count_tokens` body.
    pub fn parse_count_tokens(body: &'a [u8]) -> Result<Self, GatewayError> {
        Ok(Self::new(
            ClientBody::CountTokens(MessagesRequest::parse_count_tokens(body)?),
            body,
        ))
    }

    /// Parses a `POST /v1/responses` body.
    pub fn parse_responses(body: &'a [u8]) -> Result<Self, GatewayError> {
        Ok(Self::new(
            ClientBody::Responses(ResponsesRequest::parse(body)?),
            body,
        ))
    }

    fn new(body: ClientBody<'a>, bytes: &[u8]) -> Self {
        ClientRequest {
            body,
            body_len: bytes.len(),
            chat: None,
            forwarded: Vec::new(),
        }
    }

    /// The protocol.
    pub fn ingress(&self) -> Ingress {
        match self.body {
            ClientBody::Messages(_) | ClientBody::CountTokens(_) => Ingress::Messages,
            ClientBody::Responses(_) => Ingress::Responses,
        }
    }

    /// The model the client asked for.
    pub fn model(&self) -> &str {
        match &self.body {
            ClientBody::Messages(r) | ClientBody::CountTokens(r) => &r.model,
            ClientBody::Responses(r) => &r.model,
        }
    }

    /// Whether the answer is streamed.
    pub fn stream(&self) -> bool {
        match &self.body {
            ClientBody::Messages(r) => r.stream,
            ClientBody::CountTokens(_) => false,
            ClientBody::Responses(r) => r.stream,
        }
    }

    /// A token count costs nothing and uses no tokens: the gateway reserves
    /// nothing for it and charges nothing ([`Call::answer`] reports zero
    /// usage).
    pub fn is_free(&self) -> bool {
        matches!(self.body, ClientBody::CountTokens(_))
    }

    /// The output cap the client set (`max_tokens`, `max_output_tokens`).
    pub fn max_output_tokens(&self) -> Option<u64> {
        match &self.body {
            ClientBody::Messages(r) => Some(r.max_tokens),
            ClientBody::CountTokens(_) => Some(0),
            ClientBody::Responses(r) => r.max_output_tokens,
        }
    }

    /// Images (and documents, which Anthropic bills as images per page),
    /// whose tokens the body's bytes do not bound.
    pub fn images(&self) -> usize {
        match &self.body {
            ClientBody::Messages(r) | ClientBody::CountTokens(r) => r.images + r.documents,
            ClientBody::Responses(r) => r.images,
        }
    }

    /// Whether it offers tools.
    pub fn has_tools(&self) -> bool {
        match &self.body {
            ClientBody::Messages(r) | ClientBody::CountTokens(r) => r.has_tools,
            ClientBody::Responses(r) => r.has_tools,
        }
    }

    /// Whether it asks for JSON output (`output_config.format`,
    /// `text.format` of a JSON type).
    pub fn wants_json(&self) -> bool {
        let (raw, needle) = match &self.body {
            ClientBody::Messages(r) | ClientBody::CountTokens(r) => {
                (r.get("output_config"), "json_schema")
            }
            ClientBody::Responses(r) => (r.get("text"), "json_"),
        };
        raw.is_some_and(|raw| raw.get().contains(needle))
    }

    /// The end user for routing rules: `metadata.user_id`, or `user` (else
    /// `safety_identifier`).
    pub fn user(&self) -> Option<String> {
        match &self.body {
            ClientBody::Messages(r) | ClientBody::CountTokens(r) => r.user_id(),
            ClientBody::Responses(r) => r.user(),
        }
    }

    /// The string fields of `metadata`, for routing rules.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let metadata = match &self.body {
            ClientBody::Messages(r) | ClientBody::CountTokens(r) => r.get("metadata"),
            ClientBody::Responses(r) => r.get("metadata"),
        };
        metadata
            .and_then(|raw| {
                serde_json::from_str::<BTreeMap<String, serde_json::Value>>(raw.get()).ok()
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect()
    }

    /// Keeps the client headers that native targets receive
    /// ([`messages::FORWARDED_HEADERS`]; none for Responses: OpenAI's
    /// `OpenAI-Organization` and `OpenAI-Project` name the operator's account,
    /// not the client's).
    pub fn keep_headers(&mut self, header: &dyn Fn(&str) -> Option<String>) {
        self.forwarded = match self.body {
            ClientBody::Messages(_) | ClientBody::CountTokens(_) => {
                messages::forwarded_headers(header)
            }
            ClientBody::Responses(_) => Vec::new(),
        };
    }

    /// Whether a target of this kind takes the request as it is.
    pub fn is_native_to(&self, kind: ProviderKind) -> bool {
        self.ingress().is_native_to(kind)
    }

    /// Makes the chat-completions body that targets of other wire formats
    /// need, once; a request that cannot be translated keeps its 400
    /// ([`Self::translation_error`]). A token count needs none: other
    /// targets estimate it.
    pub fn translate(&mut self) {
        if self.chat.is_some() {
            return;
        }
        let model = self.model().to_owned();
        self.chat = match &self.body {
            ClientBody::Messages(r) => Some(messages::messages_request_to_chat_body(r, &model)),
            ClientBody::Responses(r) => Some(responses::responses_request_to_chat_body(r, &model)),
            ClientBody::CountTokens(_) => None,
        };
    }

    /// Why the request cannot go to a target of another wire format (a
    /// 400 naming what would be lost), once [`Self::translate`] ran.
    pub fn translation_error(&self) -> Option<&GatewayError> {
        match &self.chat {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// The translated request, when [`Self::translate`] made one.
    pub fn chat_request(&self) -> Result<Option<ChatRequest<'_>>, GatewayError> {
        match &self.chat {
            Some(Ok(body)) => {
                ChatRequest::parse(body)
                    .map(Some)
                    .map_err(|e| GatewayError::Internal {
                        message: format!("a translated request does not parse: {e}"),
                    })
            }
            _ => Ok(None),
        }
    }

    /// Input tokens to announce before the target reports any (Anthropic's
    /// `message_start`): four bytes a token, plus Anthropic's image cost.
    fn input_estimate(&self) -> u64 {
        (self.body_len as u64).div_ceil(4) + self.images() as u64 * messages::TOKENS_PER_IMAGE
    }
}

/// One attempt's protocol work at one candidate: what the gateway's
/// attempt (`gateway::try_chat`) asks at each step, whatever the client's
/// protocol and the target's wire format.
#[derive(Debug, Clone, Copy)]
pub enum Call<'r> {
    /// A chat-completions request: the provider adapters' own path.
    Chat(&'r ChatRequest<'r>),
    /// Another protocol to a target that speaks it: passed through, the
    /// answer relayed.
    Native(&'r ClientRequest<'r>),
    /// Another protocol to a target that does not: through the chat
    /// format (the translated request) and back.
    Translated(&'r ClientRequest<'r>, &'r ChatRequest<'r>),
    /// A token count for a target that cannot count: estimated here, with
    /// no upstream request ([`Call::local_answer`]).
    Estimate(&'r MessagesRequest<'r>),
}

impl<'r> Call<'r> {
    /// The call for a candidate of `kind`: native when it speaks the
    /// client's protocol, else translated. A 400 when the request could not
    /// be translated (routing leaves such candidates out).
    pub fn for_target(
        client: &'r ClientRequest<'r>,
        chat: Option<&'r ChatRequest<'r>>,
        kind: ProviderKind,
    ) -> Result<Call<'r>, GatewayError> {
        if client.is_native_to(kind) {
            return Ok(Call::Native(client));
        }
        if let ClientBody::CountTokens(r) = &client.body {
            return Ok(Call::Estimate(r));
        }
        if let Some(chat) = chat {
            return Ok(Call::Translated(client, chat));
        }
        Err(client
            .translation_error()
            .cloned()
            .unwrap_or_else(|| GatewayError::Internal {
                message: "a request for another wire format was not translated".into(),
            }))
    }

    /// Whether the answer is streamed.
    pub fn stream(&self) -> bool {
        match self {
            Call::Chat(r) => r.stream,
            Call::Native(c) | Call::Translated(c, _) => c.stream(),
            Call::Estimate(_) => false,
        }
    }

    /// The answer when this call needs no upstream request: a token count
    /// estimated for a target that cannot count
    /// ([`messages::count_tokens_estimate`]), with zero usage (it is free).
    pub fn local_answer(&self) -> Option<Result<(Vec<u8>, Usage), GatewayError>> {
        match self {
            Call::Estimate(r) => Some(
                messages::count_tokens_estimate(r)
                    .map(|n| (messages::count_tokens_body(n), Usage::default())),
            ),
            Call::Chat(_) | Call::Native(_) | Call::Translated(..) => None,
        }
    }

    /// The upstream request; `signing` is what a signing provider needs
    /// besides its key (Bedrock's SigV4).
    pub fn build_request(
        &self,
        target: &Target<'_>,
        api_key: Option<&str>,
        signing: providers::Signing<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        match self {
            Call::Chat(r) | Call::Translated(_, r) => {
                providers::build_chat_request(target, r, api_key, signing)
            }
            Call::Native(c) => Ok(match &c.body {
                ClientBody::Messages(r) => {
                    messages::build_anthropic_request(target, r, false, &c.forwarded, api_key)
                }
                ClientBody::CountTokens(r) => {
                    messages::build_anthropic_request(target, r, true, &c.forwarded, api_key)
                }
                ClientBody::Responses(r) => openai::build_responses_request(
                    target,
                    r.to_openai_body(target.model),
                    r.stream,
                    api_key,
                ),
            }),
            Call::Estimate(_) => Err(GatewayError::Internal {
                message: "a token estimate has no upstream request".into(),
            }),
        }
    }

    /// The stream's translator: upstream events in, the client's protocol
    /// out, with its own commit test and post-commit error events.
    /// `now_s` (Unix seconds) dates what a translator builds.
    pub fn stream_translator(&self, target: &Target<'_>, now_s: u64) -> Translator {
        match self {
            // A stream rewritten or kept on its way (PII restoration, a
            // cached or continued answer) is never handed to the runtime's
            // pipe. An event stream never is anyway.
            Call::Chat(r) if !r.native_pipe => match providers::stream_translator(target, r, now_s)
            {
                Translator::Sse(inner) => Translator::Sse(Box::new(InRust(inner))),
                other => other,
            },
            Call::Chat(r) => providers::stream_translator(target, r, now_s),
            Call::Native(c) => Translator::Sse(match c.body {
                ClientBody::Messages(_) | ClientBody::CountTokens(_) => {
                    Box::new(MessageEventsRelay::new(target))
                }
                ClientBody::Responses(_) => Box::new(ResponseEventsRelay::new(target)),
            }),
            Call::Translated(c, chat) => {
                let converter: Box<dyn ChunkConverter> = match &c.body {
                    ClientBody::Messages(r) | ClientBody::CountTokens(r) => {
                        Box::new(ChunksToMessageEvents::new(&r.model, c.input_estimate()))
                    }
                    ClientBody::Responses(r) => Box::new(ChunksToResponseEvents::new(r, now_s)),
                };
                // Whatever the provider's framing, its chunks are converted.
                match providers::stream_translator(target, chat, now_s) {
                    Translator::Sse(inner) => Translator::Sse(Box::new(Converted {
                        inner,
                        converter,
                        chunks: Vec::new(),
                        output: false,
                    })),
                    Translator::EventStream(inner) => {
                        Translator::EventStream(Box::new(Converted {
                            inner,
                            converter,
                            chunks: Vec::new(),
                            output: false,
                        }))
                    }
                }
            }
            // Never streamed (a token count answers whole).
            Call::Estimate(_) => Translator::Sse(Box::new(MessageEventsRelay::new(target))),
        }
    }

    /// A 2xx non-streamed answer in the client's protocol, and its usage.
    /// An answer that is not what the target's format promises is the
    /// upstream's fault (and worth another target).
    pub fn answer(
        &self,
        target: &Target<'_>,
        body: Vec<u8>,
        now_s: u64,
    ) -> Result<(Vec<u8>, Option<Usage>), GatewayError> {
        match self {
            Call::Chat(r) => providers::chat_response(target, r, body, now_s),
            Call::Native(c) => {
                let usage = match c.body {
                    ClientBody::Messages(_) => {
                        messages::read_anthropic_message(target.name, &body)?
                    }
                    ClientBody::CountTokens(_) => {
                        messages::read_anthropic_count(target.name, &body)?;
                        Some(Usage::default())
                    }
                    ClientBody::Responses(_) => responses::read_openai_response(target, &body)?,
                };
                Ok((body, usage))
            }
            Call::Translated(c, chat) => {
                let (completion, usage) = providers::chat_response(target, chat, body, now_s)?;
                let body = match &c.body {
                    ClientBody::Messages(r) | ClientBody::CountTokens(r) => {
                        messages::chat_response_to_message(target.name, &completion, &r.model)?
                    }
                    ClientBody::Responses(r) => {
                        responses::chat_response_to_response(target.name, &completion, r, now_s)?
                    }
                };
                Ok((body, usage))
            }
            Call::Estimate(r) => {
                let n = messages::count_tokens_estimate(r)?;
                Ok((messages::count_tokens_body(n), Some(Usage::default())))
            }
        }
    }
}

/// A translator whose stream stays in Rust to its end: everything but
/// [`StreamTranslator::native_tail`] (which says `None`) is the inner one's.
struct InRust(Box<dyn StreamTranslator>);

impl StreamTranslator for InRust {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        self.0.on_event(ev, out)
    }

    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        self.0.on_end(out)
    }

    fn usage(&self) -> Option<Usage> {
        self.0.usage()
    }

    fn carries_output(&self, written: &[u8]) -> bool {
        self.0.carries_output(written)
    }

    fn write_error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        self.0.write_error(e, out);
    }
}

/// A provider's translator to OpenAI chunks, then a converter to the
/// client's protocol: one [`StreamTranslator`] to the gateway. The commit
/// test is the OpenAI chunks' (what the same answer would commit at for a
/// chat client); errors after the commit are the converter's, from the
/// gateway's error itself (an overload stays Anthropic's 529).
struct Converted<E> {
    inner: Box<dyn StreamTranslator<E>>,
    converter: Box<dyn ChunkConverter>,
    /// The inner translator's chunks, reused between events.
    chunks: Vec<u8>,
    output: bool,
}

impl<E> Converted<E> {
    fn pass(&mut self, out: &mut Vec<u8>) {
        if !self.output && !self.chunks.is_empty() {
            self.output = providers::chunk_carries_output(&self.chunks);
        }
        self.converter.push(&self.chunks, out);
        self.chunks.clear();
    }
}

impl<E> StreamTranslator<E> for Converted<E> {
    fn on_event(&mut self, ev: E, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let result = self.inner.on_event(ev, &mut self.chunks);
        self.pass(out);
        result
    }

    fn on_end(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let result = self.inner.on_end(&mut self.chunks);
        self.pass(out);
        if result.is_ok() {
            self.converter.finish(out);
        }
        result
    }

    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }

    fn carries_output(&self, _written: &[u8]) -> bool {
        self.output
    }

    fn write_error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        self.converter.error(e, out);
    }
}

// ---- The stream converters' common interface -----------------------------------

/// Turns the gateway's OpenAI `chat.completion.chunk` stream into a client
/// protocol's events, incrementally.
pub trait ChunkConverter {
    /// Handles whatever bytes of the OpenAI SSE stream arrived (split
    /// anywhere), appending the client's bytes to `out`.
    fn push(&mut self, openai_sse: &[u8], out: &mut Vec<u8>);
    /// The OpenAI stream ended: closes the client's stream, or reports it
    /// cut short when the answer never finished.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Ends the client's stream with this error (nothing more is written).
    fn error(&mut self, e: &GatewayError, out: &mut Vec<u8>);
    /// Usage from the stream's usage chunk, once it has been seen.
    fn usage(&self) -> Option<Usage>;
}

// ---- What the converters read from OpenAI -----------------------------------------

/// OpenAI usage as the converters read it (every count optional: servers
/// differ in what they send, and some send `null`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    completion_tokens_details: Option<TokenDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
struct TokenDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageIn {
    /// Input tokens, cached ones included (OpenAI's `prompt_tokens`).
    pub(crate) fn prompt(&self) -> u64 {
        self.prompt_tokens.unwrap_or(0)
    }

    /// Input tokens read from the provider's cache.
    pub(crate) fn cached(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }

    /// Output tokens, reasoning included.
    pub(crate) fn completion(&self) -> u64 {
        self.completion_tokens.unwrap_or(0)
    }

    /// Output tokens spent reasoning, when the provider says.
    pub(crate) fn reasoning(&self) -> Option<u64> {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
    }

    /// The gateway's usage type, for settlement.
    pub(crate) fn to_usage(self) -> Usage {
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens);
        Usage::new(self.prompt(), self.completion(), cached)
    }
}

/// Why the answer stopped, in the terms both client protocols need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A natural end (or an unknown reason).
    EndTurn,
    /// One of the request's stop sequences, when the upstream says which
    /// (vLLM's `stop_reason`); OpenAI's own format does not.
    Sequence(String),
    /// The token cap.
    MaxTokens,
    /// The model called tools.
    ToolUse,
    /// A content filter or a refusal.
    Refusal,
}

/// Reads a finish reason. A `stop` that came with tool calls is a tool
/// stop (some servers say `stop` there; agents loop on the tool stop).
pub(crate) fn finish_reason_to_stop(
    finish_reason: Option<&str>,
    stop_reason: Option<&serde_json::Value>,
    called_tools: bool,
) -> Stop {
    match finish_reason {
        Some("length") => Stop::MaxTokens,
        Some("content_filter") => Stop::Refusal,
        Some("tool_calls" | "function_call") => Stop::ToolUse,
        _ if called_tools => Stop::ToolUse,
        _ => match stop_reason.and_then(serde_json::Value::as_str) {
            Some(seq) => Stop::Sequence(seq.to_owned()),
            None => Stop::EndTurn,
        },
    }
}

/// A non-streamed `chat.completion`, reduced to what the client protocols
/// carry: the first choice's reasoning, text and tool calls.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// The upstream's completion id (may be empty).
    pub(crate) id: String,
    pub(crate) reasoning: Option<String>,
    pub(crate) text: Option<String>,
    /// `(call id, function name, JSON arguments)`.
    pub(crate) tool_calls: Vec<(String, String, String)>,
    pub(crate) stop: Option<Stop>,
    pub(crate) usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct CompletionIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Option<Vec<CompletionChoiceIn>>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct CompletionChoiceIn {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<CompletionMessageIn>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    stop_reason: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct CompletionMessageIn {
    #[serde(default)]
    content: Option<TextIn>,
    #[serde(default)]
    reasoning_content: Option<TextIn>,
    #[serde(default)]
    reasoning: Option<TextIn>,
    #[serde(default)]
    refusal: Option<TextIn>,
    #[serde(default)]
    tool_calls: Option<Vec<CompletionToolCallIn>>,
}

/// A text field that some servers send as a string and others as a list
/// of `{"type":"text","text"}` parts; anything else reads as no text.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextIn {
    Text(String),
    Parts(Vec<TextPartIn>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct TextPartIn {
    #[serde(default)]
    text: Option<String>,
}

impl TextIn {
    fn into_text(self) -> Option<String> {
        match self {
            TextIn::Text(s) => Some(s),
            TextIn::Parts(parts) => Some(parts.into_iter().filter_map(|p| p.text).collect()),
            TextIn::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct CompletionToolCallIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<CompletionFunctionIn>,
}

#[derive(Deserialize)]
struct CompletionFunctionIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Parses a `chat.completion` body; one that is not such an object is the
/// upstream's fault (and worth another target).
pub(crate) fn parse_completion(provider: &str, body: &[u8]) -> Result<Answer, GatewayError> {
    let invalid = |message: String| GatewayError::UpstreamInvalidResponse {
        provider: provider.to_owned(),
        message,
    };
    let completion: CompletionIn =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a chat completion: {e}")))?;
    let id = completion.id.unwrap_or_default();
    let choice = completion
        .choices
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0)
        .ok_or_else(|| invalid("a chat completion without choices".to_owned()))?;
    let mut answer = Answer {
        id,
        usage: completion.usage,
        ..Answer::default()
    };
    if let Some(m) = choice.message {
        let nonempty = |t: Option<TextIn>| t.and_then(TextIn::into_text).filter(|s| !s.is_empty());
        answer.reasoning = nonempty(m.reasoning_content).or_else(|| nonempty(m.reasoning));
        answer.text = match (nonempty(m.content), nonempty(m.refusal)) {
            (Some(text), _) => Some(text),
            (None, refusal) => refusal,
        };
        for (i, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let function = call.function.unwrap_or(CompletionFunctionIn {
                name: None,
                arguments: None,
            });
            let call_id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| generated_call_id(&answer.id, i));
            answer.tool_calls.push((
                call_id,
                function.name.unwrap_or_default(),
                function.arguments.unwrap_or_default(),
            ));
        }
    }
    answer.stop = Some(finish_reason_to_stop(
        choice.finish_reason.as_deref(),
        choice.stop_reason.as_ref(),
        !answer.tool_calls.is_empty(),
    ));
    Ok(answer)
}

// ---- The chunk reader ----------------------------------------------------------------

/// What the answer streams, one block at a time: Anthropic's content
/// blocks and the Responses API's output items alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// `reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter,
    /// Ollama) deltas.
    Reasoning,
    /// `content` (and `refusal`) deltas.
    Text,
    /// One tool call's argument fragments.
    Tool,
}

/// One step of the answer, in order.
#[derive(Debug)]
pub(crate) enum Part<'a> {
    /// The first chunk arrived; `id` is the upstream's (may be empty).
    Start { id: &'a str },
    /// Block `index` (0, 1, ... in order) opens. The previous one, if any,
    /// was closed first.
    Open {
        index: usize,
        kind: BlockKind,
        /// Tool blocks: the call id and the function's name.
        call_id: &'a str,
        name: &'a str,
    },
    /// Text for block `index`. Normally the open block; a fragment of a
    /// tool call that arrives after another block opened (no upstream the
    /// gateway knows does this) goes to its own, closed, block index.
    Delta { index: usize, text: &'a str },
    /// Block `index` is complete; `cut` when the token cap or a content
    /// filter ended it.
    Close { index: usize, cut: bool },
    /// The answer is complete (every block closed).
    End { stop: Stop, usage: Option<UsageIn> },
    /// The stream failed; nothing follows.
    Fail(Failure),
}

/// A failure to report in the client's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The HTTP status it stands for (529 for an overload, as
    /// [`messages::anthropic_error_status`] decides).
    pub(crate) status: u16,
    /// OpenAI's `error.code`.
    pub(crate) code: String,
    /// A sentence.
    pub(crate) message: String,
}

impl Failure {
    /// From the gateway's error.
    pub(crate) fn from_error(e: &GatewayError) -> Failure {
        let code = serde_json::from_slice::<ErrorBodyIn>(&e.to_body())
            .ok()
            .and_then(|b| b.error.code)
            .unwrap_or_else(|| "server_error".to_owned());
        Failure {
            status: messages::anthropic_error_status(e),
            code,
            message: e.to_string(),
        }
    }

    /// From the OpenAI error event `into_client_stream` writes. The status
    /// is read back from the code, and for a provider's error from its
    /// message (`Provider `x` returned 529: ...`), so an overload stays one.
    fn from_openai_error_event(data: &str) -> Failure {
        let Ok(ErrorBodyIn { error }) = serde_json::from_str::<ErrorBodyIn>(data) else {
            return Failure::invalid(format!("an unreadable error event: {data}"));
        };
        let message = error.message.unwrap_or_else(|| "stream error".to_owned());
        let code = error.code.unwrap_or_default();
        let status = match (code.as_str(), error.kind.as_deref()) {
            ("rate_limit_exceeded" | "insufficient_quota", _) | (_, Some("rate_limit_error")) => {
                429
            }
            ("upstream_timeout", _) => 504,
            ("no_target_available", _) => 503,
            ("invalid_api_key", _) | (_, Some("authentication_error")) => 401,
            (_, Some("invalid_request_error")) => 400,
            ("upstream_error", _) => provider_status_in(&message).unwrap_or(502),
            _ => 500,
        };
        let status = if matches!(status, 503 | 529) {
            529
        } else {
            status
        };
        Failure {
            status,
            code: if code.is_empty() {
                "server_error".to_owned()
            } else {
                code
            },
            message,
        }
    }

    /// The upstream sent what is not an OpenAI chunk stream.
    fn invalid(message: String) -> Failure {
        Failure {
            status: 502,
            code: "upstream_invalid_response".to_owned(),
            message,
        }
    }
}

/// The status in `Provider `name` returned 503: ...` ([`GatewayError`]'s
/// own wording).
fn provider_status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("` returned ")?;
    rest.get(..3)?.parse().ok()
}

#[derive(Deserialize)]
struct ErrorBodyIn {
    error: ErrorIn,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// One `chat.completion.chunk`, as the reader reads it. Text fields are
/// kept raw and read leniently: a server that sends an odd shape in one of
/// them must not break the stream.
#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChunkChoiceIn<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    delta: Option<ChunkDeltaIn<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    stop_reason: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkDeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ChunkToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct ChunkToolCallIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<ChunkFunctionIn<'a>>,
}

#[derive(Deserialize)]
struct ChunkFunctionIn<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// A raw JSON string's text (borrowed when it has no escapes); `None` for
/// null or any other value.
fn json_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let s = raw?.get();
    if !s.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(s) {
        Ok(text) => Some(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(s).ok().map(Cow::Owned),
    }
}

/// A tool call of the stream.
#[derive(Debug)]
struct ToolSlot {
    /// OpenAI's `index`.
    openai_index: u32,
    call_id: String,
    block: usize,
}

/// OpenAI chunk SSE -> [`Part`]s. Incremental: bytes may be split anywhere.
#[derive(Debug, Default)]
pub(crate) struct ChunkReader {
    parser: SseParser,
    started: bool,
    ended: bool,
    upstream_id: String,
    /// Kind of each block, by index.
    blocks: Vec<BlockKind>,
    /// The open block, if any.
    open: Option<usize>,
    tools: Vec<ToolSlot>,
    finish_reason: Option<String>,
    stop_reason: Option<serde_json::Value>,
    usage: Option<UsageIn>,
}

/// Where parts go.
pub(crate) type PartSink<'s> = dyn FnMut(Part<'_>) + 's;

impl ChunkReader {
    /// Usage from the usage chunk, once seen.
    pub(crate) fn usage(&self) -> Option<UsageIn> {
        self.usage
    }

    /// Reads the bytes that arrived.
    pub(crate) fn push(&mut self, bytes: &[u8], sink: &mut PartSink<'_>) {
        if self.ended {
            return;
        }
        self.parser.push(bytes);
        while let Some(ev) = self.parser.next_event() {
            self.on_data(&ev.data, sink);
            if self.ended {
                return;
            }
        }
    }

    /// The upstream ended. Without `[DONE]` the answer is complete only if
    /// a finish reason came (some servers omit the sentinel).
    pub(crate) fn finish(&mut self, sink: &mut PartSink<'_>) {
        if self.ended {
            return;
        }
        while let Some(ev) = self.parser.finish() {
            self.on_data(&ev.data, sink);
            if self.ended {
                return;
            }
        }
        if self.finish_reason.is_some() {
            self.end(sink);
        } else {
            self.fail(
                Failure {
                    status: 502,
                    code: "upstream_unreachable".to_owned(),
                    message: "The stream ended before the answer was complete.".to_owned(),
                },
                sink,
            );
        }
    }

    /// Ends the stream with a failure.
    pub(crate) fn fail(&mut self, failure: Failure, sink: &mut PartSink<'_>) {
        if self.ended {
            return;
        }
        self.ended = true;
        sink(Part::Fail(failure));
    }

    fn on_data(&mut self, data: &str, sink: &mut PartSink<'_>) {
        let data = data.trim();
        if data == "[DONE]" {
            self.end(sink);
            return;
        }
        if data.starts_with("{\"error\"") {
            self.fail(Failure::from_openai_error_event(data), sink);
            return;
        }
        let chunk: ChunkIn<'_> = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.fail(Failure::invalid(format!("invalid stream chunk: {e}")), sink);
                return;
            }
        };
        if !self.started {
            self.started = true;
            self.upstream_id = chunk.id.as_deref().unwrap_or_default().to_owned();
            sink(Part::Start {
                id: &self.upstream_id,
            });
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        // One answer per request: only the first choice is read.
        for choice in chunk.choices.iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = &choice.delta {
                let reasoning = json_text(delta.reasoning_content)
                    .filter(|t| !t.is_empty())
                    .or_else(|| json_text(delta.reasoning));
                for (kind, text) in [
                    (BlockKind::Reasoning, reasoning),
                    (BlockKind::Text, json_text(delta.content)),
                    (BlockKind::Text, json_text(delta.refusal)),
                ] {
                    if let Some(text) = text.filter(|t| !t.is_empty()) {
                        let index = self.ensure_open(kind, "", "", sink);
                        sink(Part::Delta { index, text: &text });
                    }
                }
                for (position, call) in delta.tool_calls.iter().flatten().enumerate() {
                    self.tool_fragment(position, call, sink);
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.to_string());
                self.stop_reason = choice.stop_reason.clone();
                self.close(sink);
            }
        }
    }

    /// The open block of `kind`, opening one (and closing another) if need be.
    fn ensure_open(
        &mut self,
        kind: BlockKind,
        call_id: &str,
        name: &str,
        sink: &mut PartSink<'_>,
    ) -> usize {
        if kind != BlockKind::Tool
            && let Some(index) = self.open
            && self.blocks.get(index) == Some(&kind)
        {
            return index;
        }
        self.close(sink);
        let index = self.blocks.len();
        self.blocks.push(kind);
        self.open = Some(index);
        sink(Part::Open {
            index,
            kind,
            call_id,
            name,
        });
        index
    }

    fn tool_fragment(
        &mut self,
        position: usize,
        call: &ChunkToolCallIn<'_>,
        sink: &mut PartSink<'_>,
    ) {
        let openai_index = call
            .index
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let id = call.id.as_deref().filter(|id| !id.is_empty());
        let args = call
            .function
            .as_ref()
            .and_then(|f| f.arguments.as_deref())
            .unwrap_or_default();
        // A known call, unless a new id reuses its index (some servers send
        // every call at index 0).
        let known = self
            .tools
            .iter()
            .rev()
            .find(|t| t.openai_index == openai_index)
            .filter(|t| id.is_none_or(|id| id == t.call_id))
            .map(|t| t.block);
        let block = match known {
            Some(block) => block,
            None => {
                let call_id = match id {
                    Some(id) => id.to_owned(),
                    None => generated_call_id(&self.upstream_id, self.tools.len()),
                };
                let name = call
                    .function
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or_default();
                let block = self.ensure_open(BlockKind::Tool, &call_id, name, sink);
                self.tools.push(ToolSlot {
                    openai_index,
                    call_id,
                    block,
                });
                block
            }
        };
        if !args.is_empty() {
            sink(Part::Delta {
                index: block,
                text: args,
            });
        }
    }

    fn close(&mut self, sink: &mut PartSink<'_>) {
        if let Some(index) = self.open.take() {
            let cut = matches!(
                self.finish_reason.as_deref(),
                Some("length" | "content_filter")
            );
            sink(Part::Close { index, cut });
        }
    }

    fn end(&mut self, sink: &mut PartSink<'_>) {
        if !self.started {
            // `[DONE]` with no chunk at all: nothing was answered.
            self.fail(
                Failure::invalid("The stream ended without any answer.".to_owned()),
                sink,
            );
            return;
        }
        self.close(sink);
        self.ended = true;
        let stop = finish_reason_to_stop(
            self.finish_reason.as_deref(),
            self.stop_reason.as_ref(),
            !self.tools.is_empty(),
        );
        sink(Part::End {
            stop,
            usage: self.usage,
        });
    }
}

// ---- Small shared helpers --------------------------------------------------------------

/// A stable id: `prefix` and 24 hex digits derived from `seed`, so the same
/// upstream answer always gets the same id and no randomness is needed.
pub(crate) fn stable_id(prefix: &str, seed: &str) -> String {
    let a = fnv1a(seed.as_bytes());
    let b = fnv1a(format!("{seed}#").as_bytes());
    format!("{prefix}{a:016x}{:08x}", b >> 32)
}

/// A call id for a tool call the upstream sent without one.
fn generated_call_id(upstream_id: &str, n: usize) -> String {
    stable_id("call_", &format!("{upstream_id}/{n}"))
}

/// How many objects in the JSON text have `"type": "<value>"`: a cheap count
/// of images or documents for routing and pricing, without a parse. A false
/// positive needs a string with escaped quotes, which never matches here.
pub(crate) fn count_type_values(json: &str, value: &str) -> usize {
    let bytes = json.as_bytes();
    let mut count = 0;
    let mut from = 0;
    while let Some(i) = json[from..].find("\"type\"") {
        let mut j = from + i + 6;
        from = j;
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if bytes.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let rest = &json[j..];
        if rest.starts_with('"')
            && rest[1..].starts_with(value)
            && rest[1 + value.len()..].starts_with('"')
        {
            count += 1;
        }
    }
    count
}

/// Removes the whitespace between JSON tokens (OpenAI's `arguments` are
/// compact); the order and spelling of everything else are kept.
pub(crate) fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// A 400 naming the parameter.
pub(crate) fn invalid(message: String, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: Some(param.to_owned()),
    }
}

/// Serializes a value the gateway built (plain strings, numbers and raw
/// JSON, which cannot fail to serialize).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part the reader emits for `input`, fed in `chunks`, as text.
    fn parts(chunks: &[&[u8]]) -> Vec<String> {
        let mut reader = ChunkReader::default();
        let mut seen = Vec::new();
        let mut sink = |p: Part<'_>| seen.push(format!("{p:?}"));
        for c in chunks {
            reader.push(c, &mut sink);
        }
        reader.finish(&mut sink);
        seen
    }

    #[test]
    fn blocks_open_one_at_a_time_in_order() {
        let input = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
            "data: [DONE]\n\n",
        );
        let got = parts(&[input.as_bytes()]);
        assert_eq!(
            got,
            [
                r#"Start { id: "c1" }"#,
                r#"Open { index: 0, kind: Reasoning, call_id: "", name: "" }"#,
                r#"Delta { index: 0, text: "hm" }"#,
                r#"Close { index: 0, cut: false }"#,
                r#"Open { index: 1, kind: Text, call_id: "", name: "" }"#,
                r#"Delta { index: 1, text: "Hi" }"#,
                r#"Close { index: 1, cut: false }"#,
                r#"Open { index: 2, kind: Tool, call_id: "t1", name: "f" }"#,
                r#"Delta { index: 2, text: "{\"a\"" }"#,
                r#"Delta { index: 2, text: ":1}" }"#,
                r#"Close { index: 2, cut: false }"#,
                "End { stop: ToolUse, usage: Some(UsageIn { prompt_tokens: Some(3), completion_tokens: Some(4), prompt_tokens_details: None, completion_tokens_details: None }) }",
            ]
        );
    }

    #[test]
    fn parallel_calls_at_one_index_with_new_ids_are_new_calls() {
        let input = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        );
        let got = parts(&[input.as_bytes()]);
        assert!(
            got.contains(&r#"Open { index: 1, kind: Tool, call_id: "b", name: "g" }"#.to_owned())
        );
        // `stop` with tool calls is a tool stop; no [DONE] after a finish is fine.
        assert!(
            got.last().unwrap().starts_with("End { stop: ToolUse"),
            "{got:?}"
        );
    }

    #[test]
    fn a_stream_cut_before_its_finish_fails_and_an_error_event_is_read() {
        let got = parts(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"]);
        assert!(
            got.last()
                .unwrap()
                .starts_with("Fail(Failure { status: 502"),
            "{got:?}"
        );
        let got = parts(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            b"data: {\"error\":{\"message\":\"Provider `anthropic` returned 529: Overloaded\",\"type\":\"server_error\",\"code\":\"upstream_error\",\"param\":null}}\n\n",
        ]);
        assert!(
            got.last()
                .unwrap()
                .starts_with("Fail(Failure { status: 529, code: \"upstream_error\""),
            "{got:?}"
        );
        let got = parts(&[b"data: {\"choices\":[{\"delta\":{\"content\":"]);
        assert!(
            got.last()
                .unwrap()
                .starts_with("Fail(Failure { status: 502"),
            "{got:?}"
        );
        let got = parts(&[b"data: {not json}\n\n"]);
        assert!(got[0].contains("invalid stream chunk"), "{got:?}");
    }

    #[test]
    fn odd_text_fields_are_read_leniently() {
        let input = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":null,\"reasoning\":{\"x\":1},\"refusal\":\"no\\u00e9\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let got = parts(&[input.as_bytes()]);
        assert_eq!(got[2], r#"Delta { index: 0, text: "noé" }"#);
        assert!(got.last().unwrap().starts_with("End { stop: Refusal"));
    }

    #[test]
    fn finish_reasons_map_to_stops() {
        let f = finish_reason_to_stop;
        assert_eq!(f(Some("stop"), None, false), Stop::EndTurn);
        assert_eq!(f(None, None, false), Stop::EndTurn);
        assert_eq!(f(Some("length"), None, true), Stop::MaxTokens);
        assert_eq!(f(Some("tool_calls"), None, false), Stop::ToolUse);
        assert_eq!(f(Some("stop"), None, true), Stop::ToolUse);
        assert_eq!(f(Some("content_filter"), None, false), Stop::Refusal);
        let seq = serde_json::json!("END");
        assert_eq!(
            f(Some("stop"), Some(&seq), false),
            Stop::Sequence("END".into())
        );
        // vLLM reports a stop token id as a number: not a stop sequence.
        let token = serde_json::json!(128_009);
        assert_eq!(f(Some("stop"), Some(&token), false), Stop::EndTurn);
    }

    #[test]
    fn type_values_are_counted_as_values_only() {
        let json = r#"[{"type":"image","source":{}},{"type" : "image"},{"type":"images"},{"text":"\"type\":\"image\""}]"#;
        assert_eq!(count_type_values(json, "image"), 2);
        assert_eq!(count_type_values("", "image"), 0);
    }

    #[test]
    fn stable_ids_are_stable_and_distinct() {
        assert_eq!(stable_id("msg_", "a"), stable_id("msg_", "a"));
        assert_ne!(stable_id("msg_", "a"), stable_id("msg_", "b"));
        assert_eq!(stable_id("msg_", "a").len(), 4 + 24);
    }

    #[test]
    fn compact_json_keeps_strings_and_order() {
        assert_eq!(
            compact_json("{ \"b\" : [1, 2],\n \"a\": \"x y \\\" }\" }"),
            r#"{"b":[1,2],"a":"x y \" }"}"#
        );
    }

    #[test]
    fn completions_are_read_with_reasoning_refusals_and_generated_ids() {
        let body = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't.","reasoning_content":"think","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":null}}}"#;
        let a = parse_completion("p", body).unwrap();
        assert_eq!(a.text.as_deref(), Some("I can't."));
        assert_eq!(a.reasoning.as_deref(), Some("think"));
        assert!(a.tool_calls[0].0.starts_with("call_"));
        assert_eq!(a.stop, Some(Stop::ToolUse));
        assert_eq!(a.usage.unwrap().cached(), 0);
        let e = parse_completion("p", br#"{"id":"c","choices":[]}"#).unwrap_err();
        assert!(matches!(e, GatewayError::UpstreamInvalidResponse { .. }));
        assert!(parse_completion("p", b"[]").is_err());
    }
}
