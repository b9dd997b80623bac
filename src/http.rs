//! The one seam between the pure core and the network.
//!
//! [`Upstream`] sends an [`UpstreamRequest`] and returns a status, the few
//! headers the gateway reads, and a byte stream. `edge` implements it with the
//! Workers `fetch`; tests implement it with scripted fakes, so failover,
//! translation and streaming run natively.

pub mod url;

use std::pin::Pin;

use futures::{Stream, StreamExt};

/// A body arriving chunk by chunk; an `Err` is the transport's message (the
/// core knows which provider it came from). Not `Send`: Workers are
/// single-threaded.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>>>>;

/// Response headers the gateway reads from providers' failures. The edge
/// copies only these out of the runtime, and only for a non-2xx status, so
/// a success costs no lookup. Bedrock names its error type in
/// `x-amzn-errortype`.
pub const UPSTREAM_HEADERS: [&str; 4] = [
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-amzn-errortype",
];

/// An outbound request to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// `POST` or `GET`.
    pub method: &'static str,
    /// Full URL, query included.
    pub url: String,
    /// Headers, credentials included (never logged).
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl UpstreamRequest {
    /// Whether the answer is a stream, to be read chunk by chunk as it
    /// arrives: adapters ask for one with `accept: text/event-stream`, or
    /// Bedrock's `accept: application/vnd.amazon.eventstream`.
    pub fn wants_stream(&self) -> bool {
        self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("accept")
                && (v.contains("text/event-stream")
                    || v.contains(crate::aws::eventstream::CONTENT_TYPE))
        })
    }
}

/// A provider's response, body not yet read.
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// Lower-case names from [`UPSTREAM_HEADERS`] that were present.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: ByteStream,
    /// The runtime's own handle on the body, when it has one (the edge's;
    /// `None` in tests and for the in-worker demo model).
    pub native: Option<NativeBody>,
}

/// Takes a response body back from [`UpstreamResponse::body`] in the
/// runtime's own form: once nothing in the rest of a stream needs
/// translating, the edge pipes it to the client without carrying every
/// chunk into Rust and back. Called at most once; after it, `body` yields
/// nothing more. `None` when the body cannot be handed over.
pub struct NativeBody(pub Box<dyn FnOnce() -> Option<Box<dyn std::any::Any>>>);

impl NativeBody {
    /// Hands the body over.
    pub fn detach(self) -> Option<Box<dyn std::any::Any>> {
        (self.0)()
    }
}

impl UpstreamResponse {
    /// A header's value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Seconds to wait from `retry-after-ms` or `retry-after` (seconds form;
    /// an HTTP date is rare from APIs and is ignored).
    pub fn retry_after_secs(&self) -> Option<u64> {
        if let Some(ms) = self
            .header("retry-after-ms")
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            return Some((ms / 1000.0).ceil().max(0.0) as u64);
        }
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| s.ceil().max(0.0) as u64)
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn collect(self, limit: usize) -> Result<Vec<u8>, String> {
        let mut body = self.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(format!("response body larger than {limit} bytes"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// A timer future.
pub type Sleep = Pin<Box<dyn Future<Output = ()>>>;

/// Sends requests to providers, and keeps time for their timeouts. A
/// transport failure (DNS, connect, reset) is an `Err` with the transport's
/// message; any HTTP status is an `Ok`. Dropping the future or the body
/// cancels the request.
#[allow(async_fn_in_trait)] // Workers futures are not Send, and need not be.
pub trait Upstream {
    /// Sends one request.
    async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, String>;
    /// Completes after `ms` milliseconds.
    fn sleep(&self, ms: u64) -> Sleep;
    /// Signs `message` with RSASSA-PKCS1-v1_5 over SHA-256 (RS256) under a
    /// PKCS #8 DER private key: Google service-account JWTs. The edge uses
    /// the runtime's WebCrypto; without one, signing fails.
    async fn sign_rs256(&self, pkcs8_der: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
        let _ = (pkcs8_der, message);
        Err("RS256 signing is not available here".to_owned())
    }
    /// Whether [`Upstream::send_until`] enforces its deadline itself: the
    /// core then sets no timer of its own for a whole answer.
    fn enforces_deadlines(&self) -> bool {
        false
    }
    /// Sends a request whose whole answer, body included, must arrive
    /// within `ms`: past it, the send or the body's read fails with
    /// [`DEADLINE_PASSED`]. The default ignores `ms` (the caller times it).
    async fn send_until(&self, req: UpstreamRequest, ms: u64) -> Result<UpstreamResponse, String> {
        let _ = ms;
        self.send(req).await
    }
}

/// The transport error of a request past its [`Upstream::send_until`]
/// deadline.
pub const DEADLINE_PASSED: &str = "deadline passed";
