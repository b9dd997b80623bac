//! The ingress request of `POST /v1/chat/completions`.
//!
//! [`ChatRequest`] keeps every top-level field as raw JSON in its original
//! order and extracts only what the gateway decides on (model, stream, usage
//! option, token caps). Forwarding to an OpenAI-compatible target then
//! rewrites one or two fields and copies the rest byte for byte: unknown
//! fields pass through unchanged, numbers keep their exact spelling, and the
//! hot path never builds a `serde_json::Value` tree. Typed messages
//! ([`Message`]) are parsed only by adapters that translate.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// A parsed chat-completions request that borrows from the body bytes.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The model name the client asked for (a public alias in the config).
    pub model: Cow<'a, str>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// Whether a committed stream's rest may be piped by the runtime
    /// untouched (an OpenAI target's stream): not when the answer must be
    /// rewritten on its way, as PII restoration does.
    pub native_pipe: bool,
}

impl<'a> ChatRequest<'a> {
    /// Parses and validates the body. Errors are 400s naming the parameter.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        let fields = parse_object(body)?;
        let model = model_of(&fields)?;
        let mut req = ChatRequest {
            fields,
            model,
            stream: false,
            include_usage: false,
            max_tokens: None,
            native_pipe: true,
        };
        match req.get("messages").map(|raw| raw.get().trim_start()) {
            None => {
                return Err(invalid(
                    "You must provide a messages parameter.",
                    "messages",
                ));
            }
            Some(raw) if !raw.starts_with('[') => {
                return Err(invalid("`messages` must be an array.", "messages"));
            }
            Some(raw) if raw[1..].trim_start().starts_with(']') => {
                return Err(invalid(
                    "`messages` must contain at least one message.",
                    "messages",
                ));
            }
            Some(_) => {}
        }
        // Types and ranges first, so that a bad value is refused in
        // OpenAI's words before the typed reads below meet it.
        crate::trust::params::check(crate::trust::params::Params::Chat, &req.fields)?;
        req.stream = req.parse_field::<Option<bool>>("stream")?.unwrap_or(false);
        if let Some(opts) = req.parse_field::<Option<StreamOptions>>("stream_options")? {
            if !req.stream {
                // OpenAI's own refusal, word for word.
                return Err(invalid(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    "stream_options",
                ));
            }
            req.include_usage = opts.include_usage.unwrap_or(false);
        }
        let cap = |name: &str| req.parse_field::<Option<u64>>(name);
        req.max_tokens = match cap("max_completion_tokens")? {
            Some(n) => Some(n),
            None => cap("max_tokens")?,
        };
        Ok(req)
    }

    /// The raw JSON of a top-level field.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        field(&self.fields, key)
    }

    /// Every top-level field, in the body's order, as raw JSON.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.fields.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Parses one top-level field into `T`; a type mismatch is a 400 naming it.
    pub fn parse_field<T: Deserialize<'a> + Default>(&self, key: &str) -> Result<T, GatewayError> {
        parse_field(&self.fields, key)
    }

    /// The typed messages, for adapters that translate them.
    pub fn messages(&self) -> Result<Vec<Message>, GatewayError> {
        self.parse_field("messages")
    }

    /// The body for an OpenAI-compatible upstream: the original fields in
    /// their order with `model` replaced, and, for streams, usage requested
    /// (the gateway needs it to account; the client sees it only if it asked).
    pub fn to_openai_body(&self, upstream_model: &str) -> Vec<u8> {
        if self.stream {
            write_object(
                &self.fields,
                upstream_model,
                Some("stream_options"),
                b"\"stream_options\":{\"include_usage\":true}",
            )
        } else {
            write_object(&self.fields, upstream_model, None, b"")
        }
    }
}

/// Writes `fields` back as a JSON object in their order, `model` replaced
/// by `upstream_model`, the field `skip` left out and `append` (a `"key":value`
/// pair, or nothing) added last. Every other value is copied byte for byte.
pub(crate) fn write_object(
    fields: &[(Cow<'_, str>, &RawValue)],
    upstream_model: &str,
    skip: Option<&str>,
    append: &[u8],
) -> Vec<u8> {
    let size: usize = fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + upstream_model.len() + append.len() + 16);
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    for (key, raw) in fields {
        match key.as_ref() {
            "model" => {
                sep(&mut out);
                out.extend_from_slice(b"\"model\":");
                write_json_string(&mut out, upstream_model);
            }
            k if Some(k) == skip => {}
            _ => {
                sep(&mut out);
                write_json_string(&mut out, key);
                out.push(b':');
                out.extend_from_slice(raw.get().as_bytes());
            }
        }
    }
    if !append.is_empty() {
        sep(&mut out);
        out.extend_from_slice(append);
    }
    out.push(b'}');
    out
}

/// The body as an ordered list of top-level fields; a body that is not a
/// JSON object is a 400 `invalid_json`.
pub(crate) fn parse_object(body: &[u8]) -> Result<Vec<(Cow<'_, str>, &RawValue)>, GatewayError> {
    let text = std::str::from_utf8(body).map_err(|e| GatewayError::InvalidJson {
        message: format!("body is not UTF-8 ({e})"),
    })?;
    let RawObject(fields) = serde_json::from_str(text).map_err(|e| GatewayError::InvalidJson {
        message: e.to_string(),
    })?;
    Ok(fields)
}

/// The raw value of a top-level field.
pub(crate) fn field<'a>(
    fields: &[(Cow<'a, str>, &'a RawValue)],
    key: &str,
) -> Option<&'a RawValue> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Parses one top-level field into `T` (its default when absent); a type
/// mismatch is a 400 naming it.
pub(crate) fn parse_field<'a, T: Deserialize<'a> + Default>(
    fields: &[(Cow<'a, str>, &'a RawValue)],
    key: &str,
) -> Result<T, GatewayError> {
    match field(fields, key) {
        None => Ok(T::default()),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| GatewayError::InvalidRequest {
            message: format!("Invalid type for `{key}`: {e}"),
            param: Some(key.to_owned()),
        }),
    }
}

/// The required, non-empty `model`.
pub(super) fn model_of<'a>(
    fields: &[(Cow<'a, str>, &'a RawValue)],
) -> Result<Cow<'a, str>, GatewayError> {
    match field(fields, "model") {
        None => Err(invalid("You must provide a model parameter.", "model")),
        Some(raw) => match serde_json::from_str::<Cow<'a, str>>(raw.get()) {
            Ok(m) if !m.trim().is_empty() => Ok(m),
            _ => Err(invalid("`model` must be a non-empty string.", "model")),
        },
    }
}

/// A 400 naming the parameter.
pub(super) fn invalid(message: &str, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.to_owned(),
        param: Some(param.to_owned()),
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is exact and allocation-free into a Vec.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// A JSON object as an ordered list of (key, raw value); a repeated key
/// keeps its last value, as `JSON.parse` and Python's `json` do.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(16);
                while let Some(Key(k)) = map.next_key()? {
                    let v: &'de RawValue = map.next_value()?;
                    match fields.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => fields.push((k, v)),
                    }
                }
                Ok(RawObject(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key that borrows from the input unless it contains escapes (serde's own
/// `Cow<str>` always allocates).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A message of the conversation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Text or parts; absent or null for assistant messages with tool calls.
    #[serde(default)]
    pub content: Option<Content>,
    /// Optional participant name.
    #[serde(default)]
    pub name: Option<String>,
    /// Tool calls an assistant message made.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `tool` messages: the call this answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// The author of a message.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions (older name).
    System,
    /// Instructions (newer name for reasoning models).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// A legacy function result.
    Function,
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Multi-part content (text, images, ...).
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text of the content, parts joined; images and other parts skipped.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(s) => Cow::Borrowed(s),
            Content::Parts(parts) => Cow::Owned(
                parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(""),
            ),
        }
    }
}

/// One part of multi-part content.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// A text part.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL or data URI.
    ImageUrl {
        /// The image reference.
        image_url: ImageUrl,
    },
    /// Any other part type (audio, files, ...), kept opaque.
    #[serde(other)]
    Other,
}

/// An image reference.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ImageUrl {
    /// `https://...` or `data:image/png;base64,...`.
    pub url: String,
    /// `low`, `high` or `auto`.
    #[serde(default)]
    pub detail: Option<String>,
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ToolCall {
    /// The call's id, echoed by the tool message that answers it.
    pub id: String,
    /// The function called.
    pub function: FunctionCall,
}

/// A function name and its JSON-encoded arguments.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
}

/// A tool the model may call (`tools[]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Tool {
    /// Always `function` today.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function's declaration.
    pub function: FunctionDef,
}

fn function_kind() -> String {
    "function".to_owned()
}

/// A function declaration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FunctionDef {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    /// OpenAI structured-outputs strictness.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`: a mode or one named function.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `"auto"`, `"none"` or `"required"`.
    Mode(ToolChoiceMode),
    /// `{"type":"function","function":{"name":...}}`.
    Named {
        /// The function to call.
        function: NamedFunction,
    },
}

/// The modes of `tool_choice`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
}

/// A function named by `tool_choice`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// The schema of a `json_schema` response format.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: String,
    /// The JSON Schema.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// Strict adherence.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `stop`: one sequence or several.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Up to four.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(v: &str) -> Result<ChatRequest<'_>, GatewayError> {
        ChatRequest::parse(v.as_bytes())
    }

    #[test]
    fn extracts_the_fields_the_gateway_decides_on() {
        let r = parse(
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],
                "stream":true,"stream_options":{"include_usage":true},"max_tokens":50}"#,
        )
        .unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(50));
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let r = parse(r#"{"model":"m","messages":[{}],"max_tokens":5,"max_completion_tokens":9}"#)
            .unwrap();
        assert_eq!(r.max_tokens, Some(9));
    }

    #[test]
    fn openai_body_rewrites_model_and_keeps_everything_else_exactly() {
        let body = r#"{"temperature":0.70,"model":"alias","messages":[{"role":"user","content":"h\u00e9"}],"x_custom":{"a":[1,2]},"seed":12345678901234567890}"#;
        let out = parse(body).unwrap().to_openai_body("gpt-4o-mini");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"temperature":0.70,"model":"gpt-4o-mini","messages":[{"role":"user","content":"h\u00e9"}],"x_custom":{"a":[1,2]},"seed":12345678901234567890}"#
        );
    }

    #[test]
    fn stream_body_always_asks_for_usage() {
        let out = parse(r#"{"model":"a","stream":true,"stream_options":{"include_usage":false},"messages":[{}]}"#)
            .unwrap()
            .to_openai_body("b");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"model":"b","stream":true,"messages":[{}],"stream_options":{"include_usage":true}})
        );
    }

    #[test]
    fn stream_options_need_a_stream() {
        for body in [
            r#"{"model":"a","stream_options":{"include_usage":true},"messages":[{}]}"#,
            r#"{"model":"a","stream":false,"stream_options":{},"messages":[{}]}"#,
        ] {
            match parse(body) {
                Err(GatewayError::InvalidRequest { message, param }) => {
                    assert_eq!(param.as_deref(), Some("stream_options"));
                    assert!(message.contains("only allowed when 'stream' is enabled"));
                }
                other => panic!("{body}: {:?}", other.map(|r| r.model)),
            }
        }
        // `null` is no options.
        assert!(parse(r#"{"model":"a","stream_options":null,"messages":[{}]}"#).is_ok());
    }

    #[test]
    fn repeated_key_keeps_the_last_value() {
        let r = parse(r#"{"model":"a","messages":[{}],"model":"b"}"#).unwrap();
        assert_eq!(r.model, "b");
        let v: Value = serde_json::from_slice(&r.to_openai_body("c")).unwrap();
        assert_eq!(v, json!({"model":"c","messages":[{}]}));
    }

    #[test]
    fn escaped_keys_are_understood() {
        let r = parse(r#"{"mod\u0065l":"a","messages":[{}]}"#).unwrap();
        assert_eq!(r.model, "a");
    }

    #[test]
    fn invalid_requests_name_the_parameter() {
        let param = |body: &str| match parse(body) {
            Err(GatewayError::InvalidRequest { param, .. }) => param.unwrap(),
            other => panic!("expected InvalidRequest, got {other:?}"),
        };
        assert_eq!(param(r#"{"messages":[{}]}"#), "model");
        assert_eq!(param(r#"{"model":"","messages":[{}]}"#), "model");
        assert_eq!(param(r#"{"model":3,"messages":[{}]}"#), "model");
        assert_eq!(param(r#"{"model":"m"}"#), "messages");
        assert_eq!(param(r#"{"model":"m","messages":{}}"#), "messages");
        assert_eq!(param(r#"{"model":"m","messages":[ ]}"#), "messages");
        assert_eq!(
            param(r#"{"model":"m","messages":[{}],"stream":"yes"}"#),
            "stream"
        );
        assert_eq!(
            param(r#"{"model":"m","messages":[{}],"max_tokens":-1}"#),
            "max_tokens"
        );
        // In OpenAI's words, not serde's.
        let message = |body: &str| parse(body).unwrap_err().to_string();
        assert_eq!(
            message(r#"{"model":"m","messages":[{}],"stream":"yes"}"#),
            "Invalid type for 'stream': expected a boolean, but got a string instead."
        );
        assert!(
            message(r#"{"model":"m","messages":[{}],"max_tokens":-1}"#)
                .starts_with("Invalid 'max_tokens': integer below minimum value."),
        );
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        for body in ["", "{", "[1]", "{\"model\":}", "\u{0}"] {
            assert!(
                matches!(parse(body), Err(GatewayError::InvalidJson { .. })),
                "{body:?}"
            );
        }
        assert!(matches!(
            ChatRequest::parse(b"\xff\xfe"),
            Err(GatewayError::InvalidJson { .. })
        ));
    }

    #[test]
    fn typed_messages_cover_parts_and_tool_calls() {
        let r = parse(
            r#"{"model":"m","messages":[
              {"role":"system","content":"be brief"},
              {"role":"user","content":[{"type":"text","text":"what is "},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}},{"type":"text","text":"this?"},{"type":"input_audio","input_audio":{}}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
              {"role":"tool","tool_call_id":"c1","content":"42"}]}"#,
        )
        .unwrap();
        let m = r.messages().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].content.as_ref().unwrap().text(), "what is this?");
        assert_eq!(m[2].tool_calls.as_ref().unwrap()[0].function.name, "f");
        assert_eq!(m[3].role, Role::Tool);
    }

    #[test]
    fn tools_tool_choice_response_format_and_stop_parse() {
        let r = parse(
            r#"{"model":"m","messages":[{}],
              "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],
              "tool_choice":{"type":"function","function":{"name":"get_weather"}},
              "response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object"},"strict":true}},
              "stop":"END"}"#,
        )
        .unwrap();
        let tools: Option<Vec<Tool>> = r.parse_field("tools").unwrap();
        assert_eq!(tools.unwrap()[0].function.name, "get_weather");
        let choice: Option<ToolChoice> = r.parse_field("tool_choice").unwrap();
        assert!(
            matches!(choice, Some(ToolChoice::Named { function }) if function.name == "get_weather")
        );
        let auto: ToolChoice = serde_json::from_str(r#""required""#).unwrap();
        assert_eq!(auto, ToolChoice::Mode(ToolChoiceMode::Required));
        let format: Option<ResponseFormat> = r.parse_field("response_format").unwrap();
        assert!(
            matches!(format, Some(ResponseFormat::JsonSchema { json_schema }) if json_schema.strict == Some(true))
        );
        let stop: Option<Stop> = r.parse_field("stop").unwrap();
        assert_eq!(stop.unwrap().into_vec(), ["END"]);
    }
}
