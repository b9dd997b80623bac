//! The known parameters of each client protocol, checked for type and
//! range before any provider is called: a request a provider would refuse
//! gets the same 400 naming its `param` whichever target would have served
//! it, and a lenient upstream never answers 200 to `"temperature": "hot"`.
//! Unknown parameters pass (providers add them faster than gateways).
//!
//! The ranges are the providers' documented ones: OpenAI's chat
//! completions and Responses API references, Anthropic's Messages API
//! reference. `null` is accepted wherever a parameter is optional, as the
//! APIs do.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::error::GatewayError;

/// What a parameter must be.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// A number within the bounds.
    Number(f64, f64),
    /// An integer within the bounds.
    Integer(i64, i64),
    /// Any integer (seeds may exceed 64 bits signed).
    AnyInteger,
    Bool,
    Str,
    Object,
    /// An array of at most this many elements.
    Array(usize),
    /// An array of at most this many strings.
    Strings(usize),
    /// A string, or an array of at most this many strings (`stop`).
    StrOrStrings(usize),
    /// A string or an array (`input`, `system`).
    StrOrArray,
    /// A string or an object (`tool_choice`).
    StrOrObject,
}

const MAX_INT: i64 = i64::MAX;

/// OpenAI chat completions.
const CHAT: &[(&str, Rule)] = &[
    ("frequency_penalty", Rule::Number(-2.0, 2.0)),
    ("presence_penalty", Rule::Number(-2.0, 2.0)),
    ("temperature", Rule::Number(0.0, 2.0)),
    ("top_p", Rule::Number(0.0, 1.0)),
    ("n", Rule::Integer(1, 128)),
    ("max_tokens", Rule::Integer(1, MAX_INT)),
    ("max_completion_tokens", Rule::Integer(1, MAX_INT)),
    ("seed", Rule::AnyInteger),
    ("logprobs", Rule::Bool),
    ("top_logprobs", Rule::Integer(0, 20)),
    ("logit_bias", Rule::Object),
    ("stream", Rule::Bool),
    ("stream_options", Rule::Object),
    ("stop", Rule::StrOrStrings(4)),
    ("user", Rule::Str),
    ("tools", Rule::Array(usize::MAX)),
    ("tool_choice", Rule::StrOrObject),
    ("parallel_tool_calls", Rule::Bool),
    ("response_format", Rule::Object),
    ("metadata", Rule::Object),
    ("store", Rule::Bool),
    ("service_tier", Rule::Str),
    ("reasoning_effort", Rule::Str),
    ("verbosity", Rule::Str),
    ("modalities", Rule::Strings(8)),
    ("audio", Rule::Object),
    ("prediction", Rule::Object),
    ("web_search_options", Rule::Object),
    ("functions", Rule::Array(usize::MAX)),
    ("function_call", Rule::StrOrObject),
    ("prompt_cache_key", Rule::Str),
    ("safety_identifier", Rule::Str),
];

/// Anthropic Messages (and `count_tokens`, which takes a subset).
const MESSAGES: &[(&str, Rule)] = &[
    ("temperature", Rule::Number(0.0, 1.0)),
    ("top_p", Rule::Number(0.0, 1.0)),
    ("top_k", Rule::Integer(0, MAX_INT)),
    ("stop_sequences", Rule::Strings(usize::MAX)),
    ("stream", Rule::Bool),
    ("system", Rule::StrOrArray),
    ("metadata", Rule::Object),
    ("tools", Rule::Array(usize::MAX)),
    ("tool_choice", Rule::Object),
    ("thinking", Rule::Object),
    ("service_tier", Rule::Str),
];

/// OpenAI Responses.
const RESPONSES: &[(&str, Rule)] = &[
    ("temperature", Rule::Number(0.0, 2.0)),
    ("top_p", Rule::Number(0.0, 1.0)),
    ("max_output_tokens", Rule::Integer(16, MAX_INT)),
    ("top_logprobs", Rule::Integer(0, 20)),
    ("max_tool_calls", Rule::Integer(1, MAX_INT)),
    ("parallel_tool_calls", Rule::Bool),
    ("store", Rule::Bool),
    ("stream", Rule::Bool),
    ("background", Rule::Bool),
    ("instructions", Rule::Str),
    ("input", Rule::StrOrArray),
    ("tools", Rule::Array(usize::MAX)),
    ("tool_choice", Rule::StrOrObject),
    ("text", Rule::Object),
    ("reasoning", Rule::Object),
    ("truncation", Rule::Str),
    ("user", Rule::Str),
    ("metadata", Rule::Object),
    ("previous_response_id", Rule::Str),
    ("include", Rule::Strings(usize::MAX)),
    ("service_tier", Rule::Str),
    ("prompt_cache_key", Rule::Str),
    ("safety_identifier", Rule::Str),
    ("stream_options", Rule::Object),
    ("prompt", Rule::Object),
    ("conversation", Rule::StrOrObject),
];

/// Whose words an error is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's (chat completions, Responses).
    OpenAi,
    /// Anthropic's (Messages).
    Anthropic,
}

/// Which protocol's parameters to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/messages` and `/v1/messages/count_tokens`.
    Messages,
    /// `POST /v1/responses`.
    Responses,
}

impl Params {
    fn table(self) -> &'static [(&'static str, Rule)] {
        match self {
            Params::Chat => CHAT,
            Params::Messages => MESSAGES,
            Params::Responses => RESPONSES,
        }
    }

    fn dialect(self) -> Dialect {
        match self {
            Params::Chat | Params::Responses => Dialect::OpenAi,
            Params::Messages => Dialect::Anthropic,
        }
    }
}

/// Checks every known parameter present in `fields`; the first that is of
/// the wrong type or out of range is a 400 naming it.
pub fn check(params: Params, fields: &[(Cow<'_, str>, &RawValue)]) -> Result<(), GatewayError> {
    let table = params.table();
    for (key, raw) in fields {
        if let Some((name, rule)) = table.iter().find(|(name, _)| *name == key.as_ref()) {
            check_one(params.dialect(), name, *rule, raw.get())?;
        }
    }
    Ok(())
}

/// The JSON type of a raw value, by its first byte.
fn kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

fn check_one(d: Dialect, name: &str, rule: Rule, raw: &str) -> Result<(), GatewayError> {
    let raw = raw.trim();
    if raw == "null" {
        return Ok(());
    }
    let t = kind(raw);
    let wrong = |expected: &str, anthropic: &str| type_error(d, name, expected, anthropic, t);
    match rule {
        Rule::Number(min, max) => {
            if t != "number" {
                return Err(wrong("a decimal", "a valid number"));
            }
            let v: f64 = raw
                .parse()
                .map_err(|_| wrong("a decimal", "a valid number"))?;
            range(d, name, v, min, max, "decimal")
        }
        Rule::Integer(min, max) => {
            let v = integer(raw).ok_or_else(|| wrong("an integer", "a valid integer"))?;
            range(d, name, v as f64, min as f64, max as f64, "integer")
        }
        Rule::AnyInteger => {
            let digits = raw.strip_prefix('-').unwrap_or(raw);
            if t == "number" && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok(())
            } else {
                Err(wrong("an integer", "a valid integer"))
            }
        }
        Rule::Bool if t == "boolean" => Ok(()),
        Rule::Bool => Err(wrong("a boolean", "a valid boolean")),
        Rule::Str if t == "string" => Ok(()),
        Rule::Str => Err(wrong("a string", "a valid string")),
        Rule::Object if t == "object" => Ok(()),
        Rule::Object => Err(wrong("an object", "a valid dictionary")),
        Rule::StrOrObject if t == "string" || t == "object" => Ok(()),
        Rule::StrOrObject => Err(wrong("a string or an object", "a valid dictionary")),
        Rule::StrOrArray if t == "string" || t == "array" => Ok(()),
        Rule::StrOrArray => Err(wrong("a string or an array", "a valid list")),
        Rule::Array(max) => {
            if t != "array" {
                return Err(wrong("an array", "a valid list"));
            }
            array_len(d, name, raw, max, false)
        }
        Rule::Strings(max) => {
            if t != "array" {
                return Err(wrong("an array of strings", "a valid list"));
            }
            array_len(d, name, raw, max, true)
        }
        Rule::StrOrStrings(max) => match t {
            "string" => Ok(()),
            "array" => array_len(d, name, raw, max, true),
            _ => Err(wrong("a string or an array of strings", "a valid list")),
        },
    }
}

/// An integer literal (no fraction, no exponent) that fits 64 bits.
fn integer(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        // `2.0` is still an integer to the APIs' validators.
        let v: f64 = raw.parse().ok()?;
        return (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64);
    }
    // Larger than 64 bits: saturate, so the range check names it.
    Some(raw.parse::<i64>().unwrap_or(if raw.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    }))
}

fn array_len(
    d: Dialect,
    name: &str,
    raw: &str,
    max: usize,
    strings: bool,
) -> Result<(), GatewayError> {
    if max == usize::MAX && !strings {
        return Ok(());
    }
    let items: Vec<&RawValue> = serde_json::from_str(raw)
        .map_err(|_| type_error(d, name, "an array", "a valid list", "array"))?;
    if strings && let Some(i) = items.iter().position(|v| kind(v.get()) != "string") {
        return Err(type_error(
            d,
            &format!("{name}[{i}]"),
            "a string",
            "a valid string",
            kind(items[i].get()),
        ));
    }
    if items.len() > max {
        return Err(match d {
            Dialect::OpenAi => invalid(
                format!(
                    "Invalid '{name}': array too long. Expected an array with maximum length {max}, but got an array with length {} instead.",
                    items.len()
                ),
                name,
            ),
            Dialect::Anthropic => invalid(
                format!(
                    "{name}: List should have at most {max} items after validation, not {}",
                    items.len()
                ),
                name,
            ),
        });
    }
    Ok(())
}

fn range(
    d: Dialect,
    name: &str,
    v: f64,
    min: f64,
    max: f64,
    what: &str,
) -> Result<(), GatewayError> {
    let show = |x: f64| {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        }
    };
    let (side, bound, op) = if v < min {
        ("below minimum", min, ">=")
    } else if v > max {
        ("above maximum", max, "<=")
    } else if v.is_finite() {
        return Ok(());
    } else {
        ("not finite", max, "<=")
    };
    Err(match d {
        Dialect::OpenAi => invalid(
            format!(
                "Invalid '{name}': {what} {side} value. Expected a value {op} {}, but got {} instead.",
                show(bound),
                show(v)
            ),
            name,
        ),
        Dialect::Anthropic => {
            let words = if op == ">=" {
                "greater than or equal to"
            } else {
                "less than or equal to"
            };
            invalid(
                format!("{name}: Input should be {words} {}", show(bound)),
                name,
            )
        }
    })
}

fn type_error(d: Dialect, name: &str, expected: &str, anthropic: &str, got: &str) -> GatewayError {
    let message = match d {
        Dialect::OpenAi => {
            let article = if got.starts_with(['a', 'o']) {
                "an"
            } else {
                "a"
            };
            format!(
                "Invalid type for '{name}': expected {expected}, but got {article} {got} instead."
            )
        }
        Dialect::Anthropic => format!("{name}: Input should be {anthropic}"),
    };
    // The parameter, without an index (`stop`, not `stop[1]`).
    let param = name.split('[').next().unwrap_or(name);
    invalid(message, param)
}

fn invalid(message: String, param: &str) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: Some(param.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_object;

    fn check_body(params: Params, body: &str) -> Result<(), (String, String)> {
        let fields = parse_object(body.as_bytes()).unwrap();
        check(params, &fields).map_err(|e| match e {
            GatewayError::InvalidRequest { message, param } => (param.unwrap_or_default(), message),
            other => panic!("{other:?}"),
        })
    }

    const MSGS: &str = r#""messages":[{"role":"user","content":"hi"}]"#;

    fn chat(extra: &str) -> Result<(), (String, String)> {
        check_body(Params::Chat, &format!(r#"{{"model":"m",{MSGS}{extra}}}"#))
    }

    #[test]
    fn a_string_temperature_is_refused_naming_it() {
        let (param, message) = chat(r#","temperature":"hot""#).unwrap_err();
        assert_eq!(param, "temperature");
        assert_eq!(
            message,
            "Invalid type for 'temperature': expected a decimal, but got a string instead."
        );
    }

    #[test]
    fn chat_ranges_follow_openais_reference() {
        for (extra, param) in [
            (r#","temperature":2.5"#, "temperature"),
            (r#","temperature":-0.1"#, "temperature"),
            (r#","top_p":1.01"#, "top_p"),
            (r#","n":0"#, "n"),
            (r#","presence_penalty":-3"#, "presence_penalty"),
            (r#","frequency_penalty":2.1"#, "frequency_penalty"),
            (r#","max_tokens":0"#, "max_tokens"),
            (r#","max_completion_tokens":1.5"#, "max_completion_tokens"),
            (r#","top_logprobs":21"#, "top_logprobs"),
            (r#","logprobs":"yes""#, "logprobs"),
            (r#","stop":["a","b","c","d","e"]"#, "stop"),
            (r#","stop":[1]"#, "stop"),
            (r#","tools":{}"#, "tools"),
            (r#","seed":1.5"#, "seed"),
            (r#","user":7"#, "user"),
        ] {
            assert_eq!(chat(extra).unwrap_err().0, param, "{extra}");
        }
        assert_eq!(
            chat(r#","temperature":5"#).unwrap_err().1,
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 5 instead."
        );
        for ok in [
            r#","temperature":2,"top_p":0,"n":1,"max_tokens":1,"seed":12345678901234567890"#,
            r#","temperature":null,"stop":"x","tool_choice":"auto","presence_penalty":-2.0"#,
            r#","stop":["a","b","c","d"],"unknown_param":"anything","max_tokens":2.0"#,
        ] {
            assert_eq!(chat(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn messages_ranges_are_anthropics_in_anthropics_words() {
        let m = |extra: &str| {
            check_body(
                Params::Messages,
                &format!(r#"{{"model":"m","max_tokens":5,{MSGS}{extra}}}"#),
            )
        };
        assert_eq!(
            m(r#","temperature":1.5"#).unwrap_err(),
            (
                "temperature".to_owned(),
                "temperature: Input should be less than or equal to 1".to_owned()
            )
        );
        assert_eq!(m(r#","top_k":-1"#).unwrap_err().0, "top_k");
        assert_eq!(
            m(r#","stop_sequences":"x""#).unwrap_err().1,
            "stop_sequences: Input should be a valid list"
        );
        assert_eq!(
            m(r#","system":[{"type":"text","text":"x"}],"temperature":1"#),
            Ok(())
        );
    }

    #[test]
    fn responses_ranges_follow_openais_reference() {
        let r = |extra: &str| {
            check_body(
                Params::Responses,
                &format!(r#"{{"model":"m","input":"x"{extra}}}"#),
            )
        };
        assert_eq!(
            r(r#","max_output_tokens":8"#).unwrap_err().0,
            "max_output_tokens"
        );
        assert_eq!(r(r#","temperature":"hot""#).unwrap_err().0, "temperature");
        assert_eq!(r(r#","input":5"#).unwrap_err().0, "input");
        assert_eq!(
            r(r#","max_output_tokens":16,"top_p":1,"store":false"#),
            Ok(())
        );
    }
}
