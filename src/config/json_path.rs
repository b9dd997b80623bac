//! The path of the value a `serde_json` error is about
//! (`models.gpt-4o.targets[1].provider`), found from the error's line and
//! column by walking the document's structure up to that point.
//!
//! `serde_json` reports where it stopped, not what it was reading; a typed
//! deserializer that tracked the path itself (`serde_path_to_error`) would
//! compile a second copy of every config type's deserializer into the
//! module (about 100 KB of wasm, 23 KB gzipped). The error is raised right
//! after the token it is about (a key for an unknown field, a value for a
//! bad type or variant, an object's `}` for a missing field), so the open
//! containers and their current keys and indices at that point are its path.

/// One open container while walking.
enum Frame {
    /// An object and the key whose value is being read, once read.
    Object { key: Option<String> },
    /// An array, the index of its current element, and whether that
    /// element has started.
    Array { index: usize, started: bool },
}

/// The path `error` (from parsing `text`) is about, dotted as
/// `a.b[2].c`; empty at the top level.
pub(crate) fn of_error(text: &[u8], error: &serde_json::Error) -> String {
    let end = offset(text, error.line(), error.column());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        let byte = text[i];
        i += 1;
        match byte {
            b'{' | b'[' => {
                start_value(&mut stack);
                stack.push(if byte == b'{' {
                    Frame::Object { key: None }
                } else {
                    Frame::Array {
                        index: 0,
                        started: false,
                    }
                });
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { key }) => *key = None,
                Some(Frame::Array { index, started }) => {
                    *index += 1;
                    *started = false;
                }
                None => {}
            },
            b'"' => {
                let start = i - 1;
                i = string_end(text, i).min(end);
                match stack.last_mut() {
                    Some(Frame::Object { key }) if key.is_none() => {
                        // The key as written, unescaped when complete.
                        let raw = &text[start..i];
                        *key = Some(
                            serde_json::from_slice::<String>(raw)
                                .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned()),
                        );
                    }
                    _ => start_value(&mut stack),
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            _ => start_value(&mut stack),
        }
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key) } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Array {
                index,
                started: true,
            } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
            _ => {}
        }
    }
    path
}

/// Marks the current array element as started (an object's value needs no
/// mark: its key is already set).
fn start_value(stack: &mut [Frame]) {
    if let Some(Frame::Array { started, .. }) = stack.last_mut() {
        *started = true;
    }
}

/// The index just past the string whose opening quote precedes `i`.
fn string_end(text: &[u8], mut i: usize) -> usize {
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// The byte offset just past what was read: `serde_json`'s line is
/// one-based and its column counts the bytes read on that line.
fn offset(text: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].iter().position(|&b| b == b'\n') {
            Some(n) => start += n + 1,
            None => return text.len(),
        }
    }
    (start + column).min(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        version: u32,
        #[serde(default)]
        models: BTreeMap<String, Model>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Model {
        targets: Vec<Target>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Target {
        provider: Kind,
        #[serde(default)]
        weight: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Openai,
        Anthropic,
    }

    fn path(text: &str) -> String {
        let e = serde_json::from_str::<Doc>(text).unwrap_err();
        of_error(text.as_bytes(), &e)
    }

    #[test]
    fn names_the_value_an_error_is_about() {
        let doc = r#"{"version":1,"models":{"a":{"targets":[{"provider":"openai"},{"provider":"opnai"}]}}}"#;
        assert_eq!(path(doc), "models.a.targets[1].provider");
        // A bad type, an unknown field, a missing field (the object's own
        // path), an array's own problem, the top level.
        assert_eq!(
            path(
                r#"{"version":1,"models":{"a":{"targets":[{"provider":"openai","weight":"x"}]}}}"#
            ),
            "models.a.targets[0].weight"
        );
        assert_eq!(
            path(r#"{"version":1,"models":{"a":{"targets":[],"weight":1}}}"#),
            "models.a.weight"
        );
        assert_eq!(
            path(r#"{"version":1,"models":{"a":{"targets":[{"weight":1}]}}}"#),
            "models.a.targets[0]"
        );
        assert_eq!(
            path(r#"{"version":1,"models":{"a":{"targets":{}}}}"#),
            "models.a.targets"
        );
        assert_eq!(path(r#"{"models":{}}"#), "");
        assert_eq!(path("[]"), "");
        assert_eq!(path(r#"{"version":-1}"#), "version");
    }

    #[test]
    fn reads_keys_as_written_across_lines() {
        // Escaped and multi-byte keys, strings holding brackets and commas,
        // and an error several lines down.
        let doc = "{\n  \"version\": 1,\n  \"models\": {\n    \"a\\\"b,[{\": {\"targets\": []},\n    \"é\": {\"targets\": [\n      {\"provider\": \"anthropic\"},\n      {\"provider\": \"anthropic\", \"extra\": true}\n    ]}\n  }\n}";
        assert_eq!(path(doc), "models.é.targets[1].extra");
        let doc = "{\"version\":1,\"models\":{\"a\\\"b,[{\":{\"targets\":[],\"x\":1}}}";
        assert_eq!(path(doc), "models.a\"b,[{.x");
    }

    #[test]
    fn syntax_errors_and_truncation_still_give_a_path() {
        // The parser reads a token's next byte before it reports, so a bad
        // literal's error lands past the `]` that closes its array.
        assert_eq!(
            path(r#"{"version":1,"models":{"a":{"targets":[{"provider":"openai"},"#),
            "models.a.targets"
        );
        assert_eq!(
            path(r#"{"version":1,"models":{"a":{"targets":[{"provider":"ope"#),
            "models.a.targets[0].provider"
        );
        assert_eq!(
            path(r#"{"version":1,"models":{"a":{"targets":[tru]}}}"#),
            "models.a.targets"
        );
        assert_eq!(path(""), "");
    }
}
