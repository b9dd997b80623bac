//! Trust: what a request may carry and where it may go, checked before any
//! provider is called; and what may come back.
//!
//! - [`json`]    — the body's shape in one non-recursive pass (nesting
//!   depth, messages, tools, content parts: [`check_shape`]), and an
//!   in-place string rewriter for lossless bodies.
//! - [`params`]  — the known parameters of each client protocol, typed and
//!   ranged by the providers' references, on every path (pass-through
//!   included).
//! - [`pii`]     — personal data: detection, placeholders, incremental
//!   restoration.
//! - [`restore`] — originals put back into answers, whole and streamed, in
//!   each client protocol.
//! - [`headers`] — the provider-request header allow-list, client request
//!   ids, CORS.
//!
//! Data-class routing lives with routing ([`crate::routing::classes`]); the
//! request path's glue, with the gateway (`gateway::trust`).

pub mod headers;
pub mod json;
pub mod params;
pub mod pii;
pub mod restore;

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::api::{parse_object, write_json_string};
use crate::config::{Limits, PiiPolicy};
use crate::error::GatewayError;
use crate::ingress::Ingress;

use pii::{Detector, Vault};

/// Checks the body against the request limits before anything parses it:
/// nesting depth (any field, known or not), messages, tools and content
/// parts. Each refusal is a 400 saying which limit.
pub fn check_shape(limits: &Limits, body: &[u8], ingress: Ingress) -> Result<(), GatewayError> {
    // The roles each API documents for its messages, and which may leave
    // `content` out: an assistant's turn of tool calls (Responses: its
    // input's message items; its other items carry no role).
    let (messages, roles) = match ingress {
        Ingress::Responses => (
            "input",
            json::Roles {
                allowed: &["user", "assistant", "system", "developer"],
                content_optional: &[],
                role_required: false,
            },
        ),
        Ingress::Messages => (
            "messages",
            json::Roles {
                allowed: &["user", "assistant"],
                content_optional: &[],
                role_required: true,
            },
        ),
        Ingress::Chat => (
            "messages",
            json::Roles {
                allowed: &[
                    "system",
                    "developer",
                    "user",
                    "assistant",
                    "tool",
                    "function",
                ],
                content_optional: &["assistant"],
                role_required: true,
            },
        ),
    };
    let shape = json::shape(body, limits.max_json_depth, Some(messages), Some(&roles))
        .map_err(|at| too_deep(limits, at))?;
    if let Some(at) = shape.lone_surrogate {
        return Err(lone_surrogate(body, at));
    }
    let over = |what: &str, n: u32, max: u32, param: &str| GatewayError::InvalidRequest {
        message: format!("The request has {n} {what}; this gateway takes at most {max}."),
        param: Some(param.to_owned()),
    };
    if let Some(bad) = shape.bad_message {
        let at = format!("{messages}[{}]", bad.index);
        if let Some((start, end)) = bad.value {
            return Err(bad_role(
                ingress,
                &at,
                bad.index,
                &body[start..end],
                roles.allowed,
            ));
        }
        let message = match (ingress, bad.field, bad.found) {
            (Ingress::Messages, field, "missing") => {
                format!("{messages}.{}.{field}: Field required", bad.index)
            }
            (_, field, "missing") => format!("Missing required parameter: '{at}.{field}'."),
            (Ingress::Messages, "message", _) => format!(
                "{messages}.{}: Input should be a valid dictionary",
                bad.index
            ),
            (Ingress::Messages, "role", _) => format!(
                "{messages}.{}.role: Input should be a valid string",
                bad.index
            ),
            (Ingress::Messages, _, _) => format!(
                "{messages}.{}.content: Input should be a valid string or list",
                bad.index
            ),
            (_, "message", _) => format!(
                "Invalid type for '{at}': expected an object, but got {} instead.",
                article(bad.found)
            ),
            (_, "role", _) => format!(
                "Invalid type for '{at}.role': expected a string, but got {} instead.",
                article(bad.found)
            ),
            (_, _, _) => format!(
                "Invalid type for '{at}.content': expected one of a string or array of objects, but got {} instead.",
                article(bad.found)
            ),
        };
        return Err(GatewayError::InvalidRequest {
            message,
            param: Some(messages.to_owned()),
        });
    }
    if shape.messages > limits.max_messages {
        return Err(over(
            "messages",
            shape.messages,
            limits.max_messages,
            messages,
        ));
    }
    if shape.tools > limits.max_tools {
        return Err(over("tools", shape.tools, limits.max_tools, "tools"));
    }
    if shape.parts > limits.max_content_parts {
        return Err(over(
            "content parts",
            shape.parts,
            limits.max_content_parts,
            messages,
        ));
    }
    Ok(())
}

/// A message's role that its API does not have, in that API's words.
fn bad_role(ingress: Ingress, at: &str, index: u32, role: &[u8], roles: &[&str]) -> GatewayError {
    let role = String::from_utf8_lossy(role);
    if ingress == Ingress::Messages {
        return GatewayError::InvalidRequest {
            message: format!("messages.{index}.role: Input should be 'user' or 'assistant'"),
            param: Some("messages".to_owned()),
        };
    }
    let quoted: Vec<String> = roles.iter().map(|r| format!("'{r}'")).collect();
    let supported = match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => quoted.concat(),
    };
    GatewayError::InvalidRequest {
        message: format!("Invalid value: '{role}'. Supported values are: {supported}."),
        param: Some(format!("{at}.role")),
    }
}

/// Checks only the nesting depth of a body with no messages (embeddings).
pub fn check_depth(limits: &Limits, body: &[u8]) -> Result<(), GatewayError> {
    let shape =
        json::shape(body, limits.max_json_depth, None, None).map_err(|at| too_deep(limits, at))?;
    match shape.lone_surrogate {
        Some(at) => Err(lone_surrogate(body, at)),
        None => Ok(()),
    }
}

/// A `\u` escape at byte `at` that is half a surrogate pair: refused on
/// every path alike (a pass-through provider would take it or not, a
/// translator cannot decode it), with its line and column as a parser
/// gives them.
fn lone_surrogate(body: &[u8], at: usize) -> GatewayError {
    let before = &body[..at.min(body.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
    GatewayError::InvalidJson {
        message: format!(
            "the \\u escape at line {line} column {column} is half of a UTF-16 surrogate pair without its other half (a lone surrogate is not Unicode text)."
        ),
    }
}

fn too_deep(limits: &Limits, at: json::TooDeep) -> GatewayError {
    GatewayError::InvalidRequest {
        message: format!(
            "The request body nests arrays and objects deeper than {} levels (at byte {}).",
            limits.max_json_depth, at.at
        ),
        param: None,
    }
}

/// `a number`, `an object`.
fn article(t: &str) -> String {
    match t {
        "null" => t.to_owned(),
        _ if t.starts_with(['a', 'o']) => format!("an {t}"),
        _ => format!("a {t}"),
    }
}

/// The policy of several that apply (the key's, the model's, the data
/// classes'): the strictest mode, and every kind any of them names (all
/// kinds when one names none).
pub fn combined_policy<'p>(policies: impl IntoIterator<Item = &'p PiiPolicy>) -> Option<PiiPolicy> {
    let mut out: Option<PiiPolicy> = None;
    for p in policies {
        out = Some(match out {
            None => p.clone(),
            Some(prev) => PiiPolicy {
                mode: prev.mode.max(p.mode),
                kinds: match (prev.kinds, &p.kinds) {
                    (Some(mut a), Some(b)) => {
                        for k in b {
                            if !a.contains(k) {
                                a.push(k.clone());
                            }
                        }
                        Some(a)
                    }
                    _ => None,
                },
            },
        });
    }
    out
}

/// String values never redacted, by their key: identifiers, roles and
/// types, URLs and base64 data (images, files, documents), signed or
/// encrypted reasoning (changing it would void its signature), names.
const NOT_TEXT: [&str; 22] = [
    "type",
    "role",
    "id",
    "name",
    "url",
    "image_url",
    "data",
    "media_type",
    "mime_type",
    "file_id",
    "file_data",
    "file_url",
    "detail",
    "format",
    "signature",
    "thinking",
    "encrypted_content",
    "tool_use_id",
    "tool_call_id",
    "call_id",
    "cache_control",
    "status",
];

/// The top-level fields that carry a protocol's conversation text.
fn text_fields(ingress: Ingress) -> &'static [&'static str] {
    match ingress {
        Ingress::Chat => &["messages"],
        Ingress::Messages => &["messages", "system"],
        Ingress::Responses => &["input", "instructions"],
    }
}

/// The body with personal data in its conversation text replaced by
/// placeholders (the vault keeps the originals); `None` when none was
/// found. Only the strings change: fields, order, numbers and every other
/// byte stay as the client sent them, so a pass-through target receives the
/// client's own body, redacted.
pub fn redact_body(
    body: &[u8],
    ingress: Ingress,
    detector: &Detector,
    vault: &mut Vault,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let fields = parse_object(body)?;
    let mut rewritten: Vec<(usize, String)> = Vec::new();
    for (i, (key, raw)) in fields.iter().enumerate() {
        if !text_fields(ingress).contains(&key.as_ref()) {
            continue;
        }
        let new = json::rewrite_strings(raw.get(), Some(key), &mut |k, value| {
            if k.is_some_and(|k| NOT_TEXT.contains(&k)) {
                return None;
            }
            pii::redact(detector, value, vault)
        });
        if let Some(new) = new {
            rewritten.push((i, new));
        }
    }
    if rewritten.is_empty() {
        return Ok(None);
    }
    Ok(Some(write_fields(&fields, &rewritten)))
}

/// The object again, with some fields' values replaced.
fn write_fields(fields: &[(Cow<'_, str>, &RawValue)], replaced: &[(usize, String)]) -> Vec<u8> {
    let size: usize = fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + 64);
    out.push(b'{');
    for (i, (key, raw)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, key);
        out.push(b':');
        match replaced.iter().find(|(j, _)| *j == i) {
            Some((_, new)) => out.extend_from_slice(new.as_bytes()),
            None => out.extend_from_slice(raw.get().as_bytes()),
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PiiMode;
    use std::collections::BTreeMap;

    fn detector() -> Detector {
        Detector::with_patterns(&BTreeMap::new())
    }

    #[test]
    fn redaction_rewrites_only_conversation_text_in_place() {
        let body = r#"{"model":"m","temperature":0.70,"messages":[{"role":"user","content":[{"type":"text","text":"I am jane@corp.example"},{"type":"image_url","image_url":{"url":"data:image/png;base64,4111111111111111"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"email","arguments":"{\"to\":\"bob@corp.example\"}"}}]}],"user":"jane@corp.example","x":{"a":[1,2]}}"#;
        let mut vault = Vault::new();
        let out = redact_body(body.as_bytes(), Ingress::Chat, &detector(), &mut vault)
            .unwrap()
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","temperature":0.70,"messages":[{"role":"user","content":[{"type":"text","text":"I am [EMAIL_1]"},{"type":"image_url","image_url":{"url":"data:image/png;base64,4111111111111111"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"email","arguments":"{\"to\":\"[EMAIL_2]\"}"}}]}],"user":"jane@corp.example","x":{"a":[1,2]}}"#
        );
        assert_eq!(vault.counts()["email"], 2);
        let none = redact_body(
            br#"{"model":"m","messages":[]}"#,
            Ingress::Chat,
            &detector(),
            &mut vault,
        )
        .unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn messages_and_responses_redact_their_own_text_fields() {
        let mut vault = Vault::new();
        let body = br#"{"model":"m","system":"Agent for 415-555-0132","messages":[{"role":"user","content":[{"type":"thinking","thinking":"a@b.io","signature":"s"},{"type":"text","text":"a@b.io"}]}],"max_tokens":5}"#;
        let out = redact_body(body, Ingress::Messages, &detector(), &mut vault)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["system"], "Agent for [PHONE_1]");
        assert_eq!(v["messages"][0]["content"][0]["thinking"], "a@b.io");
        assert_eq!(v["messages"][0]["content"][1]["text"], "[EMAIL_1]");
        let body = br#"{"model":"m","instructions":"to a@b.io","input":"pay 4111 1111 1111 1111"}"#;
        let out = redact_body(body, Ingress::Responses, &detector(), &mut vault)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["instructions"], "to [EMAIL_1]");
        assert_eq!(v["input"], "pay [CARD_1]");
    }

    #[test]
    fn policies_combine_to_the_strictest_mode_and_all_kinds() {
        let p = |mode, kinds: Option<&[&str]>| PiiPolicy {
            mode,
            kinds: kinds.map(|k| k.iter().map(|s| s.to_string()).collect()),
        };
        let a = p(PiiMode::Restore, Some(&["email"]));
        let b = p(PiiMode::Redact, Some(&["phone", "email"]));
        let c = combined_policy([&a, &b]).unwrap();
        assert_eq!(c.mode, PiiMode::Redact);
        assert_eq!(c.kinds.unwrap(), ["email", "phone"]);
        let all = p(PiiMode::Block, None);
        assert_eq!(combined_policy([&a, &all]).unwrap(), all);
        assert!(combined_policy([]).is_none());
    }

    #[test]
    fn shape_limits_are_400s_naming_what_is_over() {
        let limits = Limits {
            max_messages: 2,
            max_tools: 1,
            max_content_parts: 3,
            max_json_depth: 8,
            ..Limits::default()
        };
        let param = |body: &str, ingress| match check_shape(&limits, body.as_bytes(), ingress) {
            Err(GatewayError::InvalidRequest { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        let user = r#"{"role":"user","content":"x"}"#;
        assert_eq!(
            param(
                &format!(r#"{{"messages":[{user},{user},{user}]}}"#),
                Ingress::Chat
            )
            .as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(r#"{"input":[{},{},{}]}"#, Ingress::Responses).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(r#"{"messages":[],"tools":[{},{}]}"#, Ingress::Chat).as_deref(),
            Some("tools")
        );
        assert_eq!(
            param(
                r#"{"messages":[{"role":"user","content":[1,2]},{"role":"assistant","content":[3,4]}]}"#,
                Ingress::Messages
            )
            .as_deref(),
            Some("messages")
        );
        assert_eq!(param(r#"{"x":[[[[[[[[[]]]]]]]]]}"#, Ingress::Chat), None);
        let message = |body: &str, ingress| match check_shape(&limits, body.as_bytes(), ingress) {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        };
        assert_eq!(
            message(r#"{"messages":[1]}"#, Ingress::Chat),
            "Invalid type for 'messages[0]': expected an object, but got a number instead."
        );
        assert_eq!(
            message(
                r#"{"messages":[{"role":"user","content":"x"},{"role":3}]}"#,
                Ingress::Messages
            ),
            "messages.1.role: Input should be a valid string"
        );
        assert_eq!(
            message(r#"{"input":[{"content":{}}]}"#, Ingress::Responses),
            "Invalid type for 'input[0].content': expected one of a string or array of objects, but got an object instead."
        );
        assert!(
            check_shape(
                &limits,
                br#"{"messages":[{"role":"user","content":[1]}],"tools":[{}]}"#,
                Ingress::Chat
            )
            .is_ok()
        );
    }

    #[test]
    fn a_role_the_api_does_not_have_is_refused_in_its_words() {
        let limits = Limits::default();
        let check = |body: &str, ingress| check_shape(&limits, body.as_bytes(), ingress);
        let refused = |body: &str, ingress| match check(body, ingress) {
            Err(GatewayError::InvalidRequest { message, param }) => {
                (message, param.unwrap_or_default())
            }
            other => panic!("{other:?}"),
        };
        let chat =
            r#"{"messages":[{"role":"system","content":"s"},{"content":"x","role":"wizard"}]}"#;
        assert_eq!(
            refused(chat, Ingress::Chat),
            (
                "Invalid value: 'wizard'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool', and 'function'.".to_owned(),
                "messages[1].role".to_owned()
            )
        );
        // Anthropic's messages take no system turn (it is a field of its own).
        assert_eq!(
            refused(chat, Ingress::Messages).0,
            "messages.0.role: Input should be 'user' or 'assistant'"
        );
        assert_eq!(
            refused(
                r#"{"input":[{"type":"message","role":"tool","content":"x"}]}"#,
                Ingress::Responses
            )
            .1,
            "input[0].role"
        );
        // A message needs a role, and content unless it is an assistant's
        // (tool calls); Responses' items without a role are other items.
        for (body, ingress, expected) in [
            (
                r#"{"messages":[{"role":"user"}]}"#,
                Ingress::Chat,
                "Missing required parameter: 'messages[0].content'.",
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"},{"content":null,"role":"tool"}]}"#,
                Ingress::Chat,
                "Invalid type for 'messages[1].content': expected one of a string or array of objects, but got null instead.",
            ),
            (
                r#"{"messages":[{"content":"a"}]}"#,
                Ingress::Chat,
                "Missing required parameter: 'messages[0].role'.",
            ),
            // A `content` below a message's own fields is not its content.
            (
                r#"{"messages":[{"role":"user","metadata":{"content":"x"},"x":[{"content":1}]}]}"#,
                Ingress::Chat,
                "Missing required parameter: 'messages[0].content'.",
            ),
            (
                r#"{"messages":[{"role":"assistant"}]}"#,
                Ingress::Messages,
                "messages.0.content: Field required",
            ),
            (
                r#"{"messages":[{"content":"a"}]}"#,
                Ingress::Messages,
                "messages.0.role: Field required",
            ),
            (
                r#"{"input":[{"type":"message","role":"user"}]}"#,
                Ingress::Responses,
                "Missing required parameter: 'input[0].content'.",
            ),
        ] {
            assert_eq!(refused(body, ingress).0, expected, "{body}");
        }
        // Every documented role passes; so do a role written with escapes
        // (left to the parser), items without one, an assistant's turn of
        // tool calls, and `role` keys that are not a message's own.
        for (body, ingress) in [
            (
                r#"{"messages":[{"role":"system","content":"s"},{"role":"developer","content":"d"},{"role":"user","content":[]},{"role":"assistant","tool_calls":[]},{"role":"tool","content":"t"},{"role":"function","content":"f"},{"role":"assistant","content":null}]}"#,
                Ingress::Chat,
            ),
            (r#"{"messages":[{"role":"us\u0065r"}]}"#, Ingress::Chat),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"text","role":"x"}]},{"content":"a","role":"assistant"}],"role":"y"}"#,
                Ingress::Messages,
            ),
            (
                r#"{"input":[{"type":"function_call_output","call_id":"c","output":"o"},{"role":"developer","content":"d"}]}"#,
                Ingress::Responses,
            ),
        ] {
            assert!(check(body, ingress).is_ok(), "{body}");
        }
    }
}
