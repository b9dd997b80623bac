//! Server-Sent Events: an incremental parser and the encoder.
//!
//! The parser follows the WHATWG event-stream rules: lines end in `\n`,
//! `\r\n` or a lone `\r`; a line starting with `:` is a comment; `data:` lines
//! of one event join with `\n`; one space after the colon is dropped; an empty
//! line dispatches the event, and an event with no data is not dispatched.
//! A chunk boundary anywhere (mid-line, mid-`\r\n`, mid-UTF-8 character) is a
//! normal state, never an error: [`SseParser::next_event`] returns `None`
//! until a whole event has arrived. At end of stream, [`SseParser::finish`]
//! dispatches an event whose closing blank line never came, which some
//! providers omit.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` name, when one was given.
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// Incremental parser: push bytes as they arrive, pull complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Start of the unparsed part of `buf`.
    pos: usize,
    /// The last line ended in `\r`; a `\n` at the start of the next bytes
    /// belongs to it.
    skip_lf: bool,
    /// Nothing has been parsed yet (a leading BOM is skipped).
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// [`SseParser::finish_whole`] dropped a last event cut short.
    cut: bool,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the network.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(line_end) = self.next_line_end() {
            let (start, end, next) = line_end;
            self.pos = next;
            if let Some(ev) = self.process_line(start, end) {
                return Some(ev);
            }
        }
        None
    }

    /// At end of stream: dispatches a pending event whose blank line never
    /// came (an unterminated last line counts as a line).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.next_event() {
            return Some(ev);
        }
        if self.pos < self.buf.len() {
            let (start, end) = (self.pos, self.buf.len());
            self.pos = end;
            if let Some(ev) = self.process_line(start, end) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    /// [`SseParser::finish`] for a relay: a last event whose blank line
    /// never came is dispatched only when its data is whole (`[DONE]`, or
    /// JSON that parses); one cut inside its JSON is dropped, and
    /// [`SseParser::was_cut`] says so, so that nothing half-written reaches
    /// a client ahead of the error that ends its stream.
    pub fn finish_whole(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.next_event() {
            return Some(ev);
        }
        let ev = self.finish()?;
        let whole =
            ev.data == "[DONE]" || serde_json::from_str::<serde::de::IgnoredAny>(&ev.data).is_ok();
        if whole {
            Some(ev)
        } else {
            self.cut = true;
            None
        }
    }

    /// Whether [`SseParser::finish_whole`] dropped a last event cut short.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// Finds the next complete line: (start, end excluding terminator, next pos).
    fn next_line_end(&mut self) -> Option<(usize, usize, usize)> {
        if !self.started {
            if self.buf.len() - self.pos < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf[self.pos..]) {
                return None; // might still be a BOM
            }
            self.started = true;
            if self.buf[self.pos..].starts_with(b"\xEF\xBB\xBF") {
                self.pos += 3;
            }
        }
        if self.skip_lf && self.pos < self.buf.len() {
            self.skip_lf = false;
            if self.buf[self.pos] == b'\n' {
                self.pos += 1;
            }
        }
        let start = self.pos;
        let rel = self.buf[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')?;
        let end = start + rel;
        if self.buf[end] == b'\r' {
            // `\r\n` counts once; if the `\n` has not arrived yet, skip it later.
            if end + 1 < self.buf.len() {
                let next = if self.buf[end + 1] == b'\n' {
                    end + 2
                } else {
                    end + 1
                };
                return Some((start, end, next));
            }
            self.skip_lf = true;
        }
        Some((start, end, end + 1))
    }

    fn process_line(&mut self, start: usize, end: usize) -> Option<SseEvent> {
        if start == end {
            return self.dispatch();
        }
        // Line terminators are ASCII, so a complete line never splits a
        // UTF-8 character; invalid bytes become U+FFFD rather than an error.
        let line = String::from_utf8_lossy(&self.buf[start..end]);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {} // `id`, `retry` and unknown fields do not matter to a proxy
        }
        None
    }

    /// Hands over what is buffered, as raw SSE bytes another parser can
    /// carry on from: the lines of an event not yet dispatched (as `event:`
    /// and `data:` lines) and the bytes not yet parsed. The parser is left
    /// empty. `None` (and nothing taken) while a `\r\n` may be split across
    /// the boundary, which another parser could not tell.
    pub fn detach(&mut self) -> Option<Vec<u8>> {
        if self.skip_lf || !self.started {
            return None;
        }
        let mut out = Vec::new();
        if let Some(name) = self.event.take() {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
        }
        if std::mem::take(&mut self.has_data) {
            for line in std::mem::take(&mut self.data).split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out.extend_from_slice(&self.buf[self.pos..]);
        self.buf.clear();
        self.pos = 0;
        Some(out)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

/// Appends `data: <data>\n\n` (one `data:` line per line of `data`).
pub fn encode_data(out: &mut Vec<u8>, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends `event: <name>\ndata: <data>\n\n`.
pub fn encode_event(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    encode_data(out, data);
}

/// The OpenAI stream terminator.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_bytes_parse_to_the_same_events_as_the_rest() {
        let input = b"data: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let whole = parse_chunks([&input[..]]);
        for cut in 1..input.len() {
            let mut p = SseParser::new();
            p.push(&input[..cut]);
            let mut events = vec![];
            while let Some(e) = p.next_event() {
                events.push(e);
            }
            let Some(mut rest) = p.detach() else {
                panic!("no CR here, so always detachable (cut at {cut})");
            };
            rest.extend_from_slice(&input[cut..]);
            events.extend(parse_chunks([&rest[..]]));
            assert_eq!(events, whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_last_event_cut_inside_its_json_is_dropped_for_a_relay() {
        let mut p = SseParser::new();
        p.push(b"data: {\"a\":1}\n\ndata: {\"b\":");
        assert_eq!(p.finish_whole(), Some(ev(None, r#"{"a":1}"#)));
        assert_eq!(p.finish_whole(), None);
        assert!(p.was_cut());
        // Whole but unterminated: kept (a provider that forgot the blank line).
        for last in [
            &b"data: [DONE]"[..],
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n",
        ] {
            let mut p = SseParser::new();
            p.push(last);
            assert!(
                p.finish_whole().is_some(),
                "{}",
                String::from_utf8_lossy(last)
            );
            assert!(!p.was_cut());
        }
    }

    #[test]
    fn a_split_crlf_is_not_detached() {
        let mut p = SseParser::new();
        p.push(b"data: x\r");
        assert_eq!(p.next_event(), None);
        assert_eq!(p.detach(), None);
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    /// Feeds `chunks` one by one and collects every event, then finishes.
    fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = vec![];
        for c in chunks {
            p.push(c);
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        while let Some(e) = p.finish() {
            out.push(e);
        }
        out
    }

    /// Asserts that every split of `input` at one or two offsets yields `expected`.
    fn assert_all_splits(input: &[u8], expected: &[SseEvent]) {
        assert_eq!(parse_chunks([input]), expected, "whole input");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(parse_chunks([a, b]), expected, "split at {i}");
        }
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = parse_chunks([&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, expected, "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_chunks(bytes), expected, "byte by byte");
    }

    #[test]
    fn openai_stream_with_done_sentinel() {
        let input =
            b"data: {\"a\":1}\n\ndata: {\"b\":\"\xc3\xa9\xe2\x82\xac\"}\n\ndata: [DONE]\n\n";
        assert_all_splits(
            input,
            &[
                ev(None, "{\"a\":1}"),
                ev(None, "{\"b\":\"é€\"}"),
                ev(None, "[DONE]"),
            ],
        );
    }

    #[test]
    fn anthropic_named_events_and_comments() {
        let input = b": keep-alive\nevent: ping\ndata: {\"type\":\"ping\"}\n\nevent: message_stop\ndata: {}\n\n";
        assert_all_splits(
            input,
            &[
                ev(Some("ping"), "{\"type\":\"ping\"}"),
                ev(Some("message_stop"), "{}"),
            ],
        );
    }

    #[test]
    fn crlf_and_lone_cr_line_endings() {
        let expected = [ev(None, "1"), ev(None, "2")];
        assert_all_splits(b"data: 1\r\n\r\ndata: 2\r\n\r\n", &expected);
        assert_all_splits(b"data: 1\r\rdata: 2\r\r", &expected);
        assert_all_splits(b"data: 1\n\r\ndata: 2\r\n\n", &expected);
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        assert_all_splits(b"data: a\ndata:b\ndata\n\n", &[ev(None, "a\nb\n")]);
    }

    #[test]
    fn missing_trailing_blank_line_is_dispatched_at_eof() {
        assert_all_splits(b"data: 1\n\ndata: 2", &[ev(None, "1"), ev(None, "2")]);
        assert_all_splits(b"data: 1\n\ndata: 2\n", &[ev(None, "1"), ev(None, "2")]);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert_all_splits(b"event: x\n\nid: 3\nretry: 10\n\n:c\n\n", &[]);
    }

    #[test]
    fn leading_bom_is_skipped_and_invalid_utf8_replaced() {
        assert_all_splits(b"\xEF\xBB\xBFdata: 1\n\n", &[ev(None, "1")]);
        assert_eq!(
            parse_chunks([&b"data: \xff\n\n"[..]]),
            [ev(None, "\u{fffd}")]
        );
    }

    #[test]
    fn long_streams_do_not_grow_the_buffer_without_bound() {
        let mut p = SseParser::new();
        for i in 0..10_000 {
            p.push(format!("data: {i}\n\n").as_bytes());
            assert_eq!(p.next_event().unwrap().data, i.to_string());
        }
        assert!(p.buf.len() < 64, "buffer kept {} bytes", p.buf.len());
    }

    #[test]
    fn random_chunking_matches_whole_parse() {
        let input: Vec<u8> = (0..200)
            .flat_map(|i| {
                format!("event: e{i}\r\ndata: {{\"i\":{i},\"s\":\"ü\"}}\r\n\r\n").into_bytes()
            })
            .collect();
        let expected = parse_chunks([input.as_slice()]);
        assert_eq!(expected.len(), 200);
        // A fixed linear congruential generator: deterministic "random" cuts.
        let mut seed: u64 = 42;
        for _ in 0..50 {
            let mut chunks = vec![];
            let mut rest = input.as_slice();
            while !rest.is_empty() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = 1 + (seed >> 33) as usize % 37;
                let (a, b) = rest.split_at(n.min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            assert_eq!(parse_chunks(chunks), expected);
        }
    }

    #[test]
    fn encoder_round_trips() {
        let mut out = vec![];
        encode_event(&mut out, "x", b"line1\nline2");
        encode_data(&mut out, b"{}");
        out.extend_from_slice(DONE);
        assert_eq!(
            parse_chunks([out.as_slice()]),
            [
                ev(Some("x"), "line1\nline2"),
                ev(None, "{}"),
                ev(None, "[DONE]")
            ]
        );
    }
}
