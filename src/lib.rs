//! An OpenAI-compatible LLM gateway that runs as a Cloudflare Worker.
//!
//! # Module map
//!
//! Everything except [`edge`] is sans-IO: bytes and values in, bytes and
//! values out, unit-tested on the native target. `edge` is compiled only for
//! `wasm32` and is the one module that touches the Workers runtime.
//!
//! - [`error`]     — the one error enum: HTTP status, retryability, failing side,
//!   and the OpenAI-shaped JSON body every error is rendered as.
//! - [`api`]       — OpenAI wire types: the lossless ingress requests (chat
//!   completions, embeddings), responses, stream chunks, usage, model lists.
//! - [`sse`]       — incremental Server-Sent Events parser (any chunk boundary)
//!   and encoder.
//! - [`config`]    — routing config: serde types, the bundled default,
//!   validation with path-named errors.
//! - [`providers`] — one adapter per wire format (OpenAI-compatible presets,
//!   Anthropic Messages, Google Gemini, the built-in demo model): request
//!   building, response and stream translation, error mapping.
//! - [`routing`]   — config + request -> ordered candidate list.
//! - [`limits`]    — per-key state machines (counters now; rate limits and
//!   budgets next), time passed in.
//! - [`gateway`]   — the request path as plain async Rust over the
//!   [`gateway::Upstream`] seam: parse, route, send, fail over, translate.
//! - [`http`]      — the [`http::Upstream`] seam: neutral request/response types.
//! - [`keys`]      — gateway key checks and key fingerprints.
//! - `edge`        — (wasm32 only) fetch handler, KV config cache, the per-key
//!   Durable Object, outbound fetch.

pub mod api;
pub mod config;
pub mod error;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod limits;
pub mod providers;
pub mod routing;
pub mod sse;

#[cfg(test)]
mod bench;

#[cfg(target_arch = "wasm32")]
mod edge;
