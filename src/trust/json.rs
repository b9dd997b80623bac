//! Two passes over raw JSON text that never build a tree and never recurse:
//! [`shape`], the nesting depth and the sizes the request limits bound,
//! taken before anything parses a body (so a body nested 200,000 deep is a
//! 400, not a stack overflow); and [`rewrite_strings`], which replaces
//! string values in place, everything else copied byte for byte (what
//! redaction and restoration need on lossless paths).

use std::borrow::Cow;

use crate::api::write_json_string;

/// What the request limits bound, counted in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Deepest nesting of arrays and objects (`{}` is 1).
    pub depth: u32,
    /// Elements of the top-level `messages` array, or of `input` when it is
    /// an array (Responses).
    pub messages: u32,
    /// Elements of the top-level `tools` array.
    pub tools: u32,
    /// Elements of every `content` array below the top level (content
    /// parts and blocks, tool results' blocks included).
    pub parts: u32,
    /// The first message of the wrong shape, if any: not an object, or a
    /// `role` that is not a string (or not one of the roles asked for), or
    /// a `content` that is not a string, an array or null. What every
    /// provider refuses on sight, found here without parsing a message.
    pub bad_message: Option<BadMessage>,
    /// The offset of the first `\u` escape that is half a UTF-16
    /// surrogate pair with no other half: JSON's grammar lets it through,
    /// no Unicode text holds it, and providers (and this gateway's
    /// translators) refuse it, each in its own way.
    pub lone_surrogate: Option<usize>,
}

/// A message of the wrong shape ([`Shape::bad_message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMessage {
    /// Its index in `messages` (or `input`).
    pub index: u32,
    /// What is wrong: `message` (not an object), `role` or `content`.
    pub field: &'static str,
    /// The JSON type found instead (`number`, `object`, ...); `string` for
    /// a role that is a string but not one of the roles asked for.
    pub found: &'static str,
    /// That role's bytes in the body (between its quotes), when it is one.
    pub value: Option<(usize, usize)>,
}

/// The JSON type of a value by its first byte.
pub fn type_of(first: u8) -> &'static str {
    match first {
        b'"' => "string",
        b'{' => "object",
        b'[' => "array",
        b't' | b'f' => "boolean",
        b'n' => "null",
        _ => "number",
    }
}

/// The body nests deeper than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// Byte offset where the limit was passed.
    pub at: usize,
}

/// Which keys the counts follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Messages,
    Tools,
    Content,
    Role,
    Other,
}

fn key_of(raw: &str, list: Option<&str>) -> Key {
    let decoded: Cow<'_, str> = if raw.contains('\\') {
        serde_json::from_str::<String>(raw).map_or(Cow::Borrowed(""), Cow::Owned)
    } else {
        // An unterminated key (the body ends inside it) has no closing
        // quote: the last character may be any UTF-8 sequence.
        let inner = raw.strip_prefix('"').unwrap_or(raw);
        Cow::Borrowed(inner.strip_suffix('"').unwrap_or(inner))
    };
    match decoded.as_ref() {
        k if Some(k) == list => Key::Messages,
        "tools" => Key::Tools,
        "content" => Key::Content,
        "role" => Key::Role,
        _ => Key::Other,
    }
}

/// One open array or object.
#[derive(Debug, Clone, Copy)]
struct Frame {
    array: bool,
    /// The key this container is the value of.
    key: Key,
    /// Objects: the key of the value being read; arrays: unused.
    current: Key,
    /// Objects: a key is expected next.
    expect_key: bool,
}

/// What a message's `role` may be, and which roles may leave `content` out
/// (or null); a message with no `role` is a bad message when one is
/// required.
#[derive(Debug, Clone, Copy)]
pub struct Roles<'a> {
    /// The roles the API documents.
    pub allowed: &'a [&'a str],
    /// Those whose message may have no `content` (an assistant's tool calls).
    pub content_optional: &'a [&'a str],
    /// Every message must have a `role` (Responses' other items have none).
    pub role_required: bool,
}

/// What the scan has seen of the message it is in.
#[derive(Debug, Clone, Copy, Default)]
struct Message {
    /// Its `role`, once read: whether that role must have `content`.
    content_required: Option<bool>,
    /// A `content` other than null was read.
    has_content: bool,
    /// A `content` of null was read.
    null_content: bool,
}

/// The shape of a JSON text, or where it nests deeper than `max_depth`;
/// `list` names the top-level array of messages (`messages`, Responses'
/// `input`), if the body has one, and `roles` what its messages' roles may
/// be (none: any string, `content` never required). Linear and
/// non-recursive; it does not validate (the parser that runs next does),
/// and no input makes it panic.
pub fn shape(
    json: &[u8],
    max_depth: u32,
    list: Option<&str>,
    roles: Option<&Roles<'_>>,
) -> Result<Shape, TooDeep> {
    let mut stack: Vec<Frame> = Vec::with_capacity(16);
    let mut out = Shape::default();
    let mut message = Message::default();
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        match b {
            b'"' => {
                let end = if out.lone_surrogate.is_none() {
                    let mut pairs = Surrogates::default();
                    let end = string_end_with(json, i, |at| pairs.escape(json, at));
                    out.lone_surrogate = pairs.lone();
                    end
                } else {
                    string_end(json, i)
                };
                let is_key = stack.last().is_some_and(|f| !f.array && f.expect_key);
                if is_key {
                    let raw = std::str::from_utf8(&json[i..end]).unwrap_or("\"\"");
                    let key = if raw.len() >= 2 {
                        key_of(raw, list)
                    } else {
                        Key::Other
                    };
                    if let Some(f) = stack.last_mut() {
                        f.current = key;
                        f.expect_key = false;
                    }
                } else {
                    count_value(&stack, &mut out, b, &mut message);
                    if let Some(roles) = roles
                        && out.bad_message.is_none()
                        && in_message(&stack)
                    {
                        check_role(
                            &mut out,
                            json,
                            (i + 1, end - 1),
                            roles,
                            &stack,
                            &mut message,
                        );
                    }
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                count_value(&stack, &mut out, b, &mut message);
                let key = match stack.last() {
                    Some(f) if !f.array => f.current,
                    Some(f) => f.key,
                    None => Key::Other,
                };
                stack.push(Frame {
                    array: b == b'[',
                    key,
                    current: Key::Other,
                    expect_key: b == b'{',
                });
                let depth = stack.len() as u32;
                if depth > max_depth {
                    return Err(TooDeep { at: i });
                }
                out.depth = out.depth.max(depth);
            }
            b'}' | b']' => {
                if let Some(roles) = roles
                    && in_message(&stack)
                {
                    end_message(&mut out, roles, message);
                }
                stack.pop();
            }
            b',' => {
                if let Some(f) = stack.last_mut()
                    && !f.array
                {
                    f.expect_key = true;
                }
            }
            b':' | b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // A number or literal: one value, read to its end.
                count_value(&stack, &mut out, b, &mut message);
                while i + 1 < json.len()
                    && !matches!(
                        json[i + 1],
                        b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t' | b'"' | b'{' | b'['
                    )
                {
                    i += 1;
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

/// A value starting with `first` in the innermost container: count it
/// where it counts, and check a message's shape.
fn count_value(stack: &[Frame], out: &mut Shape, first: u8, message: &mut Message) {
    let Some(f) = stack.last() else { return };
    let bad = |out: &mut Shape, field: &'static str| {
        if out.bad_message.is_none() {
            out.bad_message = Some(BadMessage {
                index: out.messages.saturating_sub(1),
                field,
                found: type_of(first),
                value: None,
            });
        }
    };
    if !f.array {
        let in_message = in_message(stack);
        match f.current {
            Key::Role if in_message && first != b'"' => bad(out, "role"),
            Key::Content if in_message && !matches!(first, b'"' | b'[' | b'n') => {
                bad(out, "content")
            }
            Key::Content if in_message && first == b'n' => message.null_content = true,
            Key::Content if in_message => message.has_content = true,
            _ => {}
        }
        return;
    }
    match (f.key, stack.len()) {
        (Key::Messages, 2) => {
            out.messages = out.messages.saturating_add(1);
            *message = Message::default();
            if first != b'{' {
                bad(out, "message");
            }
        }
        (Key::Tools, 2) => out.tools = out.tools.saturating_add(1),
        (Key::Content, n) if n > 2 => out.parts = out.parts.saturating_add(1),
        _ => {}
    }
}

/// Whether the innermost container is a message: `messages[i]`, whose
/// fields are `messages[i].role`, `messages[i].content`.
fn in_message(stack: &[Frame]) -> bool {
    stack.len() == 3 && stack[1].array && stack[1].key == Key::Messages
}

/// A message's string value at `span`: if it is its `role`, one of the
/// allowed roles (a role written with escapes is left to the parser).
fn check_role(
    out: &mut Shape,
    json: &[u8],
    span: (usize, usize),
    roles: &Roles<'_>,
    stack: &[Frame],
    message: &mut Message,
) {
    if stack.last().is_none_or(|f| f.current != Key::Role) || span.1 < span.0 {
        return;
    }
    let value = &json[span.0..span.1];
    let is = |r: &&str| r.as_bytes() == value;
    if value.contains(&b'\\') {
        message.content_required = Some(false);
        return;
    }
    if roles.allowed.iter().any(is) {
        message.content_required = Some(!roles.content_optional.iter().any(is));
        return;
    }
    out.bad_message = Some(BadMessage {
        index: out.messages.saturating_sub(1),
        field: "role",
        found: "string",
        value: Some(span),
    });
}

/// The end of a message: one without a `role` where one is required, or
/// without `content` where its role needs one, is a bad message.
fn end_message(out: &mut Shape, roles: &Roles<'_>, message: Message) {
    if out.bad_message.is_some() {
        return;
    }
    let (field, found) = match message.content_required {
        None if roles.role_required => ("role", "missing"),
        Some(true) if message.null_content => ("content", "null"),
        Some(true) if !message.has_content => ("content", "missing"),
        _ => return,
    };
    out.bad_message = Some(BadMessage {
        index: out.messages.saturating_sub(1),
        field,
        found,
        value: None,
    });
}

/// The `\u` escapes of one string, paired: a high surrogate must be
/// followed at once by a low one, and a low one preceded by a high one.
#[derive(Default)]
struct Surrogates {
    /// A high surrogate's escape (its backslash), waiting for its low half.
    high: Option<usize>,
    /// The first escape found unpaired.
    lone: Option<usize>,
}

impl Surrogates {
    /// The escape whose backslash is at `at`.
    fn escape(&mut self, json: &[u8], at: usize) {
        if self.lone.is_some() {
            return;
        }
        let unit = (json.get(at + 1) == Some(&b'u'))
            .then(|| json.get(at + 2..at + 6))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok());
        let low = matches!(unit, Some(0xDC00..=0xDFFF));
        if let Some(high) = self.high.take() {
            if low && at == high + 6 {
                return;
            }
            self.lone = Some(high);
            return;
        }
        match unit {
            Some(0xD800..=0xDBFF) => self.high = Some(at),
            _ if low => self.lone = Some(at),
            _ => {}
        }
    }

    /// The first unpaired escape, once the string has ended.
    fn lone(&self) -> Option<usize> {
        self.lone.or(self.high)
    }
}

/// The offset just past the string that starts at `start` (a `"`), or the
/// end of the input for an unterminated one. Strings are most of a body's
/// bytes, so they are skipped eight at a time while no byte of the eight is
/// a quote or a backslash.
fn string_end(json: &[u8], start: usize) -> usize {
    string_end_with(json, start, |_| {})
}

/// [`string_end`], telling `escape` where each backslash escape starts.
fn string_end_with(json: &[u8], start: usize, mut escape: impl FnMut(usize)) -> usize {
    let mut i = start + 1;
    loop {
        while i + 8 <= json.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&json[i..i + 8]);
            let w = u64::from_le_bytes(word);
            if has_byte(w, b'"') || has_byte(w, b'\\') {
                break;
            }
            i += 8;
        }
        match json.get(i) {
            None => return json.len(),
            Some(b'\\') => {
                escape(i);
                i += 2;
            }
            Some(b'"') => return i + 1,
            Some(_) => i += 1,
        }
    }
}

/// Whether any byte of `w` is `b` (the classic SWAR zero-byte test).
fn has_byte(w: u64, b: u8) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = w ^ (u64::from(b) * ONES);
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// One open container while rewriting.
#[derive(Debug, Clone)]
struct RewriteFrame {
    array: bool,
    /// The nearest key for values directly inside.
    key: Option<String>,
    expect_key: bool,
}

/// Rewrites the string values of a JSON text: `f(key, value)` gets each
/// string value (decoded) with its nearest key (for a string in an array,
/// the array's key; `top_key` at the top) and may return a replacement.
/// Keys, numbers, whitespace, order and untouched strings are copied
/// exactly. `None` when nothing changed. Non-recursive; a text that is not
/// JSON comes back unchanged or partly rewritten, never with a panic.
pub fn rewrite_strings(
    json: &str,
    top_key: Option<&str>,
    f: &mut dyn FnMut(Option<&str>, &str) -> Option<String>,
) -> Option<String> {
    let bytes = json.as_bytes();
    let mut stack: Vec<RewriteFrame> = Vec::with_capacity(16);
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `json` already in `out`
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                let raw = &json[i..end];
                let is_key = stack.last().is_some_and(|fr| !fr.array && fr.expect_key);
                if is_key {
                    let key = decode(raw).into_owned();
                    if let Some(fr) = stack.last_mut() {
                        fr.key = Some(key);
                        fr.expect_key = false;
                    }
                } else {
                    let key = match stack.last() {
                        Some(fr) => fr.key.as_deref(),
                        None => top_key,
                    };
                    if raw.len() >= 2
                        && let Some(new) = f(key, &decode(raw))
                    {
                        let o = out.get_or_insert_with(|| String::with_capacity(json.len() + 64));
                        o.push_str(&json[copied..i]);
                        let mut buf = Vec::with_capacity(new.len() + 2);
                        write_json_string(&mut buf, &new);
                        o.push_str(std::str::from_utf8(&buf).unwrap_or("\"\""));
                        copied = end;
                    }
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                let key = match stack.last() {
                    Some(fr) => fr.key.clone(),
                    None => top_key.map(str::to_owned),
                };
                let array = bytes[i] == b'[';
                stack.push(RewriteFrame {
                    array,
                    // An object's values have their own keys.
                    key: if array { key } else { None },
                    expect_key: !array,
                });
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(fr) = stack.last_mut()
                    && !fr.array
                {
                    fr.expect_key = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.map(|mut o| {
        o.push_str(&json[copied..]);
        o
    })
}

/// A string literal's value (`raw` includes the quotes).
fn decode(raw: &str) -> Cow<'_, str> {
    if raw.len() < 2 {
        return Cow::Borrowed("");
    }
    if !raw.contains('\\') {
        return Cow::Borrowed(&raw[1..raw.len() - 1]);
    }
    serde_json::from_str::<String>(raw).map_or(Cow::Borrowed(""), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATLIKE: Roles<'static> = Roles {
        allowed: &["user"],
        content_optional: &[],
        role_required: true,
    };

    #[test]
    fn shape_counts_messages_tools_and_content_parts() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":"hi"},{"role":"tool","content":[{"type":"text","text":"]}[{"}]}],
            "tools":[{"type":"function"},{"type":"function"},{"type":"function"}],"x":{"messages":[1,2,3,4]}}"#;
        let s = shape(body, 64, Some("messages"), None).unwrap();
        assert_eq!((s.messages, s.tools, s.parts), (3, 3, 3));
        assert_eq!(s.depth, 6);
        let responses = br#"{"input":[{"type":"message","content":[{"type":"input_text","text":"x"}]},{"type":"function_call_output"}]}"#;
        let s = shape(responses, 64, Some("input"), None).unwrap();
        assert_eq!((s.messages, s.parts), (2, 1));
    }

    #[test]
    fn a_body_that_ends_inside_a_key_is_measured_not_a_panic() {
        // Found by the `ingress` fuzz target: the key's last character was
        // cut as if it were the closing quote.
        for (body, messages) in [
            ("{\"ab\u{53e}", 0),
            ("{\"\u{53e}", 0),
            ("{\"messages\":[{\"r\u{1f600}", 1),
            ("{\"", 0),
        ] {
            let s = shape(body.as_bytes(), 64, Some("messages"), None).unwrap();
            assert_eq!(s.messages, messages, "{body:?}");
        }
    }

    #[test]
    fn shape_finds_the_first_message_of_the_wrong_shape() {
        let bad = |body: &str, list| {
            shape(body.as_bytes(), 16, Some(list), None)
                .unwrap()
                .bad_message
        };
        assert_eq!(
            bad(
                r#"{"messages":[{"role":"user","content":"x"},{"role":"a","content":[]},{"content":null}]}"#,
                "messages"
            ),
            None
        );
        assert_eq!(
            bad(r#"{"messages":[{"role":"user"},7]}"#, "messages"),
            Some(BadMessage {
                index: 1,
                field: "message",
                found: "number",
                value: None,
            })
        );
        assert_eq!(
            bad(r#"{"messages":[{"role":{"x":1},"content":5}]}"#, "messages"),
            Some(BadMessage {
                index: 0,
                field: "role",
                found: "object",
                value: None,
            })
        );
        assert_eq!(
            bad(r#"{"input":[{"type":"message","content":true}]}"#, "input"),
            Some(BadMessage {
                index: 0,
                field: "content",
                found: "boolean",
                value: None,
            })
        );
        // Only messages are held to it.
        assert_eq!(
            bad(
                r#"{"x":[{"role":1}],"messages":[{"content":[{"role":2,"content":3}]}]}"#,
                "messages"
            ),
            None
        );
        // Embeddings' `input` is no list of messages.
        let embeddings = shape(br#"{"input":["a","b"]}"#, 8, None, None).unwrap();
        assert_eq!(embeddings.bad_message, None);
    }

    #[test]
    fn shape_follows_escaped_keys_as_the_parser_reads_them() {
        let s = shape(
            br#"{"m\u0065ssages":[1,2],"tools":[]}"#,
            8,
            Some("messages"),
            None,
        )
        .unwrap();
        assert_eq!((s.messages, s.tools), (2, 0));
    }

    #[test]
    fn shape_stops_at_the_depth_limit_without_recursing() {
        let mut body = b"{\"messages\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 200_000));
        body.extend(std::iter::repeat_n(b']', 200_000));
        body.push(b'}');
        assert_eq!(shape(&body, 64, None, None), Err(TooDeep { at: 12 + 63 }));
        assert!(shape(b"[[[]]]", 3, None, None).is_ok());
        assert!(shape(b"[[[[]]]]", 3, None, None).is_err());
        // Brackets in strings do not count.
        assert_eq!(shape(br#"["[[[[[["]"#, 2, None, None).unwrap().depth, 1);
    }

    #[test]
    fn a_lone_surrogate_escape_is_found_and_pairs_are_not() {
        let lone = |body: &str| {
            shape(body.as_bytes(), 64, Some("messages"), None)
                .unwrap()
                .lone_surrogate
        };
        // A pair (U+1F600), escaped in either case, in a key or a value.
        assert_eq!(lone(r#"{"a":"x\ud83d\ude00y"}"#), None);
        assert_eq!(lone(r#"{"\uD83D\uDE00":"\u00e9\n"}"#), None);
        // An escaped backslash before `u` is text, not an escape.
        assert_eq!(lone(r#"{"a":"\\ud800"}"#), None);
        // A high half alone (at the end, or before something else), a low half alone.
        assert_eq!(lone(r#"{"a":"\ud800"}"#), Some(6));
        assert_eq!(lone(r#"{"a":"\ud800x\udc00"}"#), Some(6));
        assert_eq!(lone(r#"{"a":"\ud800\u0041"}"#), Some(6));
        assert_eq!(lone(r#"{"a":"ok","b":"\uDC00"}"#), Some(15));
        // Truncated escapes are the parser's to refuse, not a panic here.
        assert_eq!(lone(r#"{"a":"\ud8"#), None);
        assert_eq!(lone("\"\\\\"), None);
    }

    #[test]
    fn strings_end_at_their_unescaped_quote_wherever_it_falls() {
        for pad in 0..20 {
            let body = format!("\"{}\\\"x\\\\\"rest", "a".repeat(pad));
            // `"aaa\"x\\"` then `rest`: the escaped quote is skipped, the
            // escaped backslash is not an escape of the quote after it.
            assert_eq!(string_end(body.as_bytes(), 0), body.len() - 4, "{body}");
        }
        assert_eq!(string_end(b"\"unterminated", 0), 13);
        assert_eq!(string_end(b"\"ends in \\", 0), 10);
        assert!(has_byte(u64::from_le_bytes(*b"abcdefg\""), b'"'));
        assert!(!has_byte(u64::from_le_bytes(*b"abcdefgh"), b'"'));
    }

    #[test]
    fn shape_never_panics_on_garbage() {
        for junk in [
            &b""[..],
            b"]]]}}",
            b"\"",
            b"\"\\",
            b"{\"a",
            b"{\"a\":",
            b"[1,",
        ] {
            let _ = shape(junk, 4, Some("messages"), Some(&CHATLIKE));
        }
    }

    #[test]
    fn rewrite_touches_only_string_values_and_keeps_the_rest_exactly() {
        let json = r#"[ {"role" : "user", "content":"a@b.io", "n":1.50,"parts":["x", {"text":"y\u00e9"}]} ]"#;
        let mut seen = vec![];
        let out = rewrite_strings(json, Some("messages"), &mut |key, value| {
            seen.push((key.map(str::to_owned), value.to_owned()));
            (value == "a@b.io").then(|| "[EMAIL_1]".to_owned())
        })
        .unwrap();
        assert_eq!(
            out,
            r#"[ {"role" : "user", "content":"[EMAIL_1]", "n":1.50,"parts":["x", {"text":"y\u00e9"}]} ]"#
        );
        let keys: Vec<_> = seen
            .iter()
            .map(|(k, _)| k.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(keys, ["role", "content", "parts", "text"]);
        assert_eq!(seen[3].1, "yé");
        assert!(rewrite_strings(json, None, &mut |_, _| None).is_none());
        // A top-level string has the top key.
        let out = rewrite_strings(r#""hi""#, Some("system"), &mut |k, _| {
            assert_eq!(k, Some("system"));
            Some("a\"b".into())
        });
        assert_eq!(out.unwrap(), r#""a\"b""#);
    }
}
