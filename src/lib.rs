//! An OpenAI-compatible LLM gateway that runs as a Cloudflare Worker.
//!
//! # Module map
//!
//! Everything except `edge` is sans-IO: bytes and values in, bytes and
//! values out, unit-tested on the native target. `edge` is compiled only for
//! `wasm32` and is the one module that touches the Workers runtime.
//!
//! - [`error`]     — the one error enum: HTTP status, retryability, failing side,
//!   and the OpenAI-shaped JSON body every error is rendered as.
//! - [`api`]       — OpenAI wire types: the lossless ingress requests (chat
//!   completions, embeddings), responses, stream chunks, usage, model lists.
//! - [`sse`]       — incremental Server-Sent Events parser (any chunk boundary)
//!   and encoder.
//! - [`aws`]       — AWS protocol pieces for Bedrock: the binary event stream
//!   framing (decoded incrementally, CRC checked), Signature Version 4, and
//!   regions with their jurisdictions and coordinates.
//! - [`azure`]     — Azure regions with their jurisdictions and coordinates.
//! - [`google`]    — Google Cloud protocol pieces for Vertex AI: the
//!   service-account JWT and token exchange, the token cache's policy, and
//!   Vertex locations with their hosts, jurisdictions and coordinates.
//! - [`config`]    — the routing config: serde types (providers, models,
//!   strategies, rules, residency, failover policy), the bundled default,
//!   validation with path-named errors (a parse error's path found from its
//!   position: `config::json_path`); its JSON Schema is generated from them.
//! - [`providers`] — one adapter per wire format (OpenAI-compatible presets,
//!   Workers AI's REST endpoint among them; Anthropic Messages, Google
//!   Gemini, Amazon Bedrock Converse, Google Vertex AI over the Gemini and
//!   Anthropic adapters, Workers AI's binding, the built-in demo model):
//!   request building (signing, OAuth tokens), response and stream
//!   translation, error mapping.
//! - [`ingress`]   — the other client protocols, Anthropic Messages and
//!   OpenAI Responses: lossless pass-through and relayed streams for their
//!   own providers, translation to and from the chat format for the others
//!   (requests, answers, incremental stream conversion, error shapes), and
//!   the per-attempt `Call` the gateway runs for either.
//! - [`cache`]     — the exact-match response cache: which requests, under
//!   which key (scope and canonical request, hashed), entries that answer
//!   streamed and whole, replay.
//! - [`routing`]   — config + request + caller -> ordered candidates: rules,
//!   data residency, capabilities, strategies (nearest that holds), per-target
//!   health (breaker, 429 cooling, time-to-first-byte EWMA) and its snapshot
//!   shared within a location.
//! - [`limits`]    — the per-key state machine its Durable Object runs (key
//!   records, one-second-bucket rate windows, budgets reserved then settled
//!   in exact picodollars, leases on slices of the limits, usage rollups,
//!   stored as rows), and the isolate's side (`limits::local`: admission
//!   from leases, settlements in batches); time passed in.
//! - [`gateway`]   — the request path as plain async Rust over the
//!   [`http::Upstream`] seam: route, prepare, dispatch with timeouts,
//!   failover and hedging, stream decoding (SSE or AWS event stream) and
//!   commit at the first token (then, for a stream with nothing to
//!   translate, the rest handed to the runtime), mid-stream continuation
//!   (`gateway::continuation`), settlement.
//! - [`http`]      — the [`http::Upstream`] seam: neutral request/response
//!   types, timers and deadlines, RS256 signing, the runtime's handle on a
//!   body; the parts of a request's URL the gateway reads (`http::url`).
//! - [`trust`]     — what a request may carry and where it may go: body
//!   shape limits, parameter types and ranges, PII detection, redaction and
//!   restoration, the provider-request header allow-list, request ids, CORS
//!   (data-class routing is in [`routing::classes`]).
//! - [`observe`]   — what the gateway did: usage rolled up per hour and
//!   dimension with mergeable latency sketches, stored per UTC day and
//!   queried across days; opt-in request logs with redaction; breaker,
//!   model and budget alerts with cooldowns and signed webhooks.
//! - [`keys`]      — gateway keys: static and virtual key formats, constant-time
//!   checks, hashes.
//! - `edge`        — (wasm32 only) the fetch handler and its numbered request
//!   path, admission and batched accounting, the admin API, the KV config
//!   cache, the per-key Durable Object, outbound fetch with abort, streamed
//!   bodies as native byte streams (the runtime-side pipe of committed
//!   streams, the chunks Rust produces), health and the response cache
//!   in the Cache API, WebCrypto signatures, the Workers AI binding, the
//!   analytics and alerts objects, request logs in R2, the dashboard's
//!   admin API; `edge/entry.mjs`, the entry module, answers a panic with a
//!   JSON 500 and makes a plain request's provider calls itself, polling the
//!   Rust request path between them (`edge::driven`).
//! - `bench`       — (tests only, ignored) the pure core timed natively, run
//!   by `scripts/bench`.

pub mod api;
pub mod aws;
pub mod azure;
pub mod cache;
pub mod config;
pub mod error;
pub mod gateway;
pub mod google;
pub mod http;
pub mod ingress;
pub mod keys;
pub mod limits;
pub mod observe;
pub mod providers;
pub mod routing;
pub mod sse;
pub mod trust;

#[cfg(test)]
mod bench;

#[cfg(target_arch = "wasm32")]
mod edge;
