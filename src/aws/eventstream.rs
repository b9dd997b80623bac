//! The AWS event stream framing (`application/vnd.amazon.eventstream`), as
//! Bedrock's `ConverseStream` sends it.
//!
//! A stream is a sequence of binary messages, each:
//!
//! ```text
//! | total length u32 | headers length u32 | prelude CRC u32 | headers | payload | message CRC u32 |
//! ```
//!
//! Integers are big-endian; the prelude CRC covers the first 8 bytes, the
//! message CRC everything before it; both are CRC-32 (IEEE). A header is a
//! name (u8 length, then bytes), a type byte and a value whose size the type
//! decides: booleans none, byte 1, short 2, integer 4, long 8, timestamp 8,
//! UUID 16, byte array and string a u16 length then the bytes.
//!
//! [`Decoder`] takes whatever bytes arrived and returns complete messages;
//! a chunk boundary anywhere (inside the prelude, a header, the payload or a
//! CRC) is a normal state, never an error ("a partial input is a normal
//! result"). A CRC that does not match, or lengths no message can have, is
//! an error, and the decoder stays failed: a corrupt frame leaves no
//! trustworthy boundary to resynchronise on. Only string headers are kept
//! (the ones Bedrock's messages are told apart by: `:message-type`,
//! `:event-type`, `:exception-type`, `:content-type`); headers of every other
//! type are skipped by their exact size.

use std::fmt;

use super::crc32;

/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Bytes before the headers: two lengths and the prelude CRC.
const PRELUDE_LEN: usize = 12;
/// The smallest message: a prelude and a message CRC.
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;
/// The largest message AWS's own decoders accept (16 MiB); a larger length is
/// a corrupt prelude, not a reason to buffer.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// The largest headers section AWS's own decoders accept (128 KiB).
pub const MAX_HEADERS_LEN: usize = 128 * 1024;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The string-valued headers, in order (headers of other types skipped).
    pub headers: Vec<(String, String)>,
    /// The payload bytes (JSON for Bedrock).
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value by exact name (`:event-type`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A stream that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The prelude's CRC does not match its lengths.
    PreludeCrc {
        /// The CRC the prelude carries.
        expected: u32,
        /// The CRC of its first 8 bytes.
        actual: u32,
    },
    /// The lengths no message can have (shorter than a prelude and a CRC,
    /// longer than [`MAX_MESSAGE_LEN`], headers beyond the message).
    BadLength {
        /// The total length the prelude gives.
        total: u32,
        /// The headers length the prelude gives.
        headers: u32,
    },
    /// The message CRC does not match its bytes.
    MessageCrc {
        /// The CRC the message carries.
        expected: u32,
        /// The CRC of its bytes.
        actual: u32,
    },
    /// A header that cannot be read (unknown type, value past the headers,
    /// a name or string that is not UTF-8).
    BadHeader(String),
    /// The stream ended inside a message.
    Truncated {
        /// Bytes of the unfinished message that did arrive.
        buffered: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PreludeCrc { expected, actual } => write!(
                f,
                "event stream prelude CRC mismatch (carried {expected:08x}, computed {actual:08x})"
            ),
            Self::BadLength { total, headers } => write!(
                f,
                "event stream message with impossible lengths (total {total}, headers {headers})"
            ),
            Self::MessageCrc { expected, actual } => write!(
                f,
                "event stream message CRC mismatch (carried {expected:08x}, computed {actual:08x})"
            ),
            Self::BadHeader(why) => write!(f, "event stream header: {why}"),
            Self::Truncated { buffered } => write!(
                f,
                "the stream ended inside an event stream message ({buffered} bytes of it arrived)"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Incremental decoder: push bytes as they arrive, pull complete messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the undecoded part of `buf`.
    pos: usize,
    /// Set by the first error; every later call returns it.
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the network.
    pub fn push(&mut self, bytes: &[u8]) {
        // Reclaim decoded bytes without moving a large tail on every push.
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message; `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match decode_one(&self.buf[self.pos..]) {
            Ok(None) => Ok(None),
            Ok(Some((message, len))) => {
                self.pos += len;
                Ok(Some(message))
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// At end of stream: an error when part of a message is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.buf.len() - self.pos {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes the message at the start of `bytes`: the message and its length,
/// or `None` when it has not wholly arrived. The prelude is checked as soon
/// as it is complete, so a corrupt length never makes the decoder wait for
/// bytes that will not come.
fn decode_one(bytes: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    if bytes.len() < PRELUDE_LEN {
        return Ok(None);
    }
    let (total, headers_len) = (be32(&bytes[0..4]), be32(&bytes[4..8]));
    let (expected, actual) = (be32(&bytes[8..12]), crc32(&bytes[0..8]));
    if expected != actual {
        return Err(FrameError::PreludeCrc { expected, actual });
    }
    let (len, hlen) = (total as usize, headers_len as usize);
    if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&len)
        || hlen > MAX_HEADERS_LEN
        || hlen > len - MIN_MESSAGE_LEN
    {
        return Err(FrameError::BadLength {
            total,
            headers: headers_len,
        });
    }
    if bytes.len() < len {
        return Ok(None);
    }
    let (expected, actual) = (be32(&bytes[len - 4..len]), crc32(&bytes[..len - 4]));
    if expected != actual {
        return Err(FrameError::MessageCrc { expected, actual });
    }
    let headers = parse_headers(&bytes[PRELUDE_LEN..PRELUDE_LEN + hlen])?;
    let payload = bytes[PRELUDE_LEN + hlen..len - 4].to_vec();
    Ok(Some((Message { headers, payload }, len)))
}

/// Reads every header, keeping the string ones.
fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let bad = |why: String| FrameError::BadHeader(why);
    let mut out = Vec::new();
    while let Some((&name_len, rest)) = b.split_first() {
        let name_len = usize::from(name_len);
        let (name, rest) = take(rest, name_len).ok_or_else(|| bad("name past the end".into()))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("a name that is not UTF-8".into()))?;
        let (&kind, rest) = rest
            .split_first()
            .ok_or_else(|| bad(format!("{name}: no type")))?;
        let fixed = match kind {
            0 | 1 => Some(0), // true, false: the type is the value
            2 => Some(1),     // byte
            3 => Some(2),     // short
            4 => Some(4),     // integer
            5 | 8 => Some(8), // long, timestamp
            9 => Some(16),    // UUID
            6 | 7 => None,    // byte array, string: u16 length first
            other => return Err(bad(format!("{name}: unknown type {other}"))),
        };
        let (value, rest) = match fixed {
            Some(n) => take(rest, n),
            None => take(rest, 2).and_then(|(len, rest)| {
                take(rest, usize::from(u16::from_be_bytes([len[0], len[1]])))
            }),
        }
        .ok_or_else(|| bad(format!("{name}: value past the end")))?;
        if kind == 7 {
            let value = std::str::from_utf8(value)
                .map_err(|_| bad(format!("{name}: a string that is not UTF-8")))?;
            out.push((name.to_owned(), value.to_owned()));
        }
        b = rest;
    }
    Ok(out)
}

/// The first `n` bytes and the rest, if there are `n`.
fn take(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (b.len() >= n).then(|| b.split_at(n))
}

/// A header value of any type, for encoding test streams.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum HeaderValue<'a> {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(&'a [u8]),
    Str(&'a str),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// Encodes one message: the test side of [`Decoder`], and what fixtures
/// and the mock provider's streams are made of.
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, HeaderValue<'_>)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        match *value {
            HeaderValue::Bool(true) => h.push(0),
            HeaderValue::Bool(false) => h.push(1),
            HeaderValue::Byte(v) => {
                h.push(2);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Short(v) => {
                h.push(3);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int(v) => {
                h.push(4);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Long(v) => {
                h.push(5);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(v) => {
                h.push(6);
                h.extend_from_slice(&(v.len() as u16).to_be_bytes());
                h.extend_from_slice(v);
            }
            HeaderValue::Str(v) => {
                h.push(7);
                h.extend_from_slice(&(v.len() as u16).to_be_bytes());
                h.extend_from_slice(v.as_bytes());
            }
            HeaderValue::Timestamp(v) => {
                h.push(8);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(v) => {
                h.push(9);
                h.extend_from_slice(&v);
            }
        }
    }
    let total = (MIN_MESSAGE_LEN + h.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out
}

/// A Bedrock event: `:message-type: event`, its `:event-type`, JSON payload.
#[cfg(test)]
pub(crate) fn encode_event(event_type: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":event-type", HeaderValue::Str(event_type)),
            (":content-type", HeaderValue::Str("application/json")),
            (":message-type", HeaderValue::Str("event")),
        ],
        payload.as_bytes(),
    )
}

/// A Bedrock exception: `:message-type: exception`, its `:exception-type`.
#[cfg(test)]
pub(crate) fn encode_exception(exception_type: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":exception-type", HeaderValue::Str(exception_type)),
            (":content-type", HeaderValue::Str("application/json")),
            (":message-type", HeaderValue::Str("exception")),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Feeds `chunks` one by one; every message, then the end-of-stream check.
    fn decode_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Message>, FrameError> {
        let mut d = Decoder::new();
        let mut out = vec![];
        for c in chunks {
            d.push(c);
            while let Some(m) = d.next_message()? {
                out.push(m);
            }
        }
        d.finish()?;
        Ok(out)
    }

    fn assert_all_splits(input: &[u8], expected: &[Message]) {
        assert_eq!(decode_chunks([input]).unwrap(), expected, "whole");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(decode_chunks([a, b]).unwrap(), expected, "split at {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_chunks(bytes).unwrap(), expected, "byte by byte");
    }

    fn message(headers: &[(&str, &str)], payload: &[u8]) -> Message {
        Message {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: payload.to_vec(),
        }
    }

    /// Encoded messages published with AWS's own event stream codec tests
    /// (aws-c-event-stream): an empty message, and one with a string header.
    #[test]
    fn published_vectors_decode() {
        let empty = hex("000000100000000005c248eb7d98c8ff");
        assert_all_splits(&empty, &[Message::default()]);
        let with_header = hex(
            "0000003d0000002007fd83960c636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e7b27666f6f273a27626172277d8d9c08b1",
        );
        assert_all_splits(
            &with_header,
            &[message(
                &[("content-type", "application/json")],
                b"{'foo':'bar'}",
            )],
        );
        // The encoder writes the same bytes.
        assert_eq!(encode(&[], b""), empty);
        assert_eq!(
            encode(
                &[("content-type", HeaderValue::Str("application/json"))],
                b"{'foo':'bar'}"
            ),
            with_header
        );
    }

    #[test]
    fn every_header_type_is_skipped_exactly_and_strings_kept() {
        let headers = [
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("b", HeaderValue::Byte(-1)),
            ("s", HeaderValue::Short(0x1234)),
            (":event-type", HeaderValue::Str("contentBlockDelta")),
            ("i", HeaderValue::Int(-7)),
            ("l", HeaderValue::Long(1 << 40)),
            ("bytes", HeaderValue::Bytes(&[0, 7, 0xff, b':'])),
            ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
            ("id", HeaderValue::Uuid([7; 16])),
            (":content-type", HeaderValue::Str("application/json")),
        ];
        let one = encode(&headers, br#"{"a":1}"#);
        let two = encode(&[("x", HeaderValue::Str("é"))], b"");
        let input = [one, two].concat();
        let first = message(
            &[
                (":event-type", "contentBlockDelta"),
                (":content-type", "application/json"),
            ],
            br#"{"a":1}"#,
        );
        assert_all_splits(&input, &[first, message(&[("x", "é")], b"")]);
    }

    #[test]
    fn bedrock_messages_are_told_apart_by_string_headers() {
        let input = [
            encode_event("messageStart", r#"{"role":"assistant"}"#),
            encode_exception("throttlingException", r#"{"message":"slow down"}"#),
        ]
        .concat();
        let got = decode_chunks([input.as_slice()]).unwrap();
        assert_eq!(got[0].header(":message-type"), Some("event"));
        assert_eq!(got[0].header(":event-type"), Some("messageStart"));
        assert_eq!(got[1].header(":message-type"), Some("exception"));
        assert_eq!(
            got[1].header(":exception-type"),
            Some("throttlingException")
        );
        assert_eq!(got[1].header(":event-type"), None);
        assert_eq!(got[1].payload, br#"{"message":"slow down"}"#);
    }

    #[test]
    fn crc_mismatches_are_errors_and_stick() {
        let good = encode_event("messageStop", r#"{"stopReason":"end_turn"}"#);
        // A payload bit flipped: the message CRC catches it.
        let mut bad = good.clone();
        bad[20] ^= 1;
        let e = decode_chunks([bad.as_slice()]).unwrap_err();
        assert!(matches!(e, FrameError::MessageCrc { .. }), "{e}");
        // A length bit flipped: the prelude CRC catches it before any wait.
        let mut bad = good.clone();
        bad[3] ^= 1;
        let mut d = Decoder::new();
        d.push(&bad[..12]);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::PreludeCrc { .. })
        ));
        // The decoder stays failed, even when good bytes follow.
        d.push(&good);
        assert!(d.next_message().is_err());
        assert!(d.finish().is_err());
    }

    #[test]
    fn impossible_lengths_and_bad_headers_are_errors() {
        let prelude = |total: u32, headers: u32| {
            let mut b = total.to_be_bytes().to_vec();
            b.extend_from_slice(&headers.to_be_bytes());
            b.extend_from_slice(&crc32(&b).to_be_bytes());
            b
        };
        for (total, headers) in [(15, 0), (20, 5), (u32::MAX, 0), (17 * 1024 * 1024, 0)] {
            let mut d = Decoder::new();
            d.push(&prelude(total, headers));
            assert!(
                matches!(d.next_message(), Err(FrameError::BadLength { .. })),
                "{total} {headers}"
            );
        }
        // Headers whose declared type is unknown, or whose value overruns.
        let with_headers = |h: &[u8]| {
            let mut b = prelude((16 + h.len()) as u32, h.len() as u32);
            b.extend_from_slice(h);
            b.extend_from_slice(&crc32(&b).to_be_bytes());
            b
        };
        for h in [
            &b"\x01a\x0a"[..],
            b"\x01a\x07\x00\x05abc",
            b"\x05ab",
            b"\x01a",
        ] {
            let e = decode_chunks([with_headers(h).as_slice()]).unwrap_err();
            assert!(matches!(e, FrameError::BadHeader(_)), "{h:?}: {e}");
        }
    }

    #[test]
    fn a_stream_cut_inside_a_message_is_truncated() {
        let m = encode_event("messageStart", r#"{"role":"assistant"}"#);
        for cut in [1, 11, 12, m.len() - 1] {
            let e = decode_chunks([&m[..cut]]).unwrap_err();
            assert_eq!(e, FrameError::Truncated { buffered: cut });
        }
    }

    #[test]
    fn long_streams_do_not_grow_the_buffer_without_bound() {
        let m = encode_event("contentBlockDelta", r#"{"delta":{"text":"x"}}"#);
        let mut d = Decoder::new();
        for _ in 0..10_000 {
            d.push(&m[..5]);
            assert_eq!(d.next_message(), Ok(None));
            d.push(&m[5..]);
            assert!(d.next_message().unwrap().is_some());
        }
        assert!(d.buf.len() < 2 * m.len(), "buffer kept {}", d.buf.len());
    }
}
