//! `POST /v1/embeddings`: the ingress request and the list it is answered
//! with.
//!
//! [`EmbeddingsRequest`] is lossless like [`super::ChatRequest`]: every
//! top-level field is kept as raw JSON in its order, so an OpenAI-compatible
//! target gets the client's body with only `model` rewritten (`input`,
//! `encoding_format`, `dimensions`, `user` and unknown fields byte for byte).
//! The gateway checks the shape of what it decides on and parses `input`
//! only for adapters that translate ([`EmbeddingsRequest::inputs`]).
//!
//! [`EmbeddingList`] is the answer translating adapters build. With
//! `encoding_format: "base64"` each vector is the base64 of its
//! little-endian float32 bytes ([`f32_le_base64`]): what OpenAI sends, and
//! what the official SDKs ask for by default and decode.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Usage;
use super::request::{field, invalid, model_of, parse_field, parse_object, write_object};
use crate::error::GatewayError;

/// A parsed embeddings request that borrows from the body bytes.
#[derive(Debug)]
pub struct EmbeddingsRequest<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The model name the client asked for (a public alias in the config).
    pub model: Cow<'a, str>,
    /// `encoding_format`: floats (the default) or base64.
    pub encoding_format: EncodingFormat,
    /// `dimensions`, when given.
    pub dimensions: Option<u32>,
    /// `input` is a list of inputs (strings or token arrays) rather than one
    /// string or one token array.
    pub batch: bool,
}

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Base64 of little-endian float32 bytes.
    Base64,
}

/// One input to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    /// Text.
    Text(String),
    /// Token ids of the model's tokenizer.
    Tokens(Vec<u32>),
}

/// Every shape OpenAI accepts for `input`.
#[derive(Deserialize)]
#[serde(untagged)]
enum InputField {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

const INPUT_SHAPE: &str = "`input` must be a string, an array of strings, an array of token ids, or an array of token-id arrays.";

impl<'a> EmbeddingsRequest<'a> {
    /// Parses and validates the body. Errors are 400s naming the parameter.
    ///
    /// `input` is checked for its outer shape only (a string, or a non-empty
    /// array); its elements are the target's to judge, or
    /// [`EmbeddingsRequest::inputs`]' when an adapter translates them. That
    /// keeps a 2,048-string batch bound for an OpenAI-compatible target from
    /// being parsed at all.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        let fields = parse_object(body)?;
        let model = model_of(&fields)?;
        let batch = match field(&fields, "input").map(|raw| raw.get().trim_start()) {
            None => {
                return Err(invalid("You must provide an input parameter.", "input"));
            }
            Some(raw) if raw.starts_with('"') => false,
            Some(raw) if raw.starts_with('[') => match raw[1..].trim_start().as_bytes().first() {
                Some(b']') => {
                    return Err(invalid("`input` must contain at least one input.", "input"));
                }
                // An array of strings or of token arrays is several inputs;
                // an array of numbers is one input, as tokens.
                Some(b'"' | b'[') => true,
                _ => false,
            },
            Some(_) => return Err(invalid(INPUT_SHAPE, "input")),
        };
        let encoding_format = match parse_field::<Option<Cow<'_, str>>>(&fields, "encoding_format")?
            .as_deref()
        {
            None | Some("float") => EncodingFormat::Float,
            Some("base64") => EncodingFormat::Base64,
            Some(other) => {
                return Err(invalid(
                    &format!("`encoding_format` must be \"float\" or \"base64\", not {other:?}."),
                    "encoding_format",
                ));
            }
        };
        let dimensions = match parse_field::<Option<u32>>(&fields, "dimensions")? {
            Some(0) => return Err(invalid("`dimensions` must be at least 1.", "dimensions")),
            d => d,
        };
        Ok(EmbeddingsRequest {
            fields,
            model,
            encoding_format,
            dimensions,
            batch,
        })
    }

    /// The raw JSON of a top-level field.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        field(&self.fields, key)
    }

    /// Parses one top-level field into `T`; a type mismatch is a 400 naming it.
    pub fn parse_field<T: Deserialize<'a> + Default>(&self, key: &str) -> Result<T, GatewayError> {
        parse_field(&self.fields, key)
    }

    /// The inputs, in order, for adapters that translate them.
    pub fn inputs(&self) -> Result<Vec<EmbeddingInput>, GatewayError> {
        let parsed: Option<InputField> =
            parse_field(&self.fields, "input").map_err(|_| invalid(INPUT_SHAPE, "input"))?;
        let inputs = match parsed {
            None => vec![],
            Some(InputField::One(text)) => vec![EmbeddingInput::Text(text)],
            Some(InputField::Many(texts)) => texts.into_iter().map(EmbeddingInput::Text).collect(),
            Some(InputField::Tokens(tokens)) => vec![EmbeddingInput::Tokens(tokens)],
            Some(InputField::ManyTokens(lists)) => {
                lists.into_iter().map(EmbeddingInput::Tokens).collect()
            }
        };
        if inputs.is_empty()
            || inputs
                .iter()
                .any(|i| matches!(i, EmbeddingInput::Tokens(t) if t.is_empty()))
        {
            return Err(invalid("`input` must not be empty.", "input"));
        }
        Ok(inputs)
    }

    /// The body for an OpenAI-compatible upstream: the original fields in
    /// their order with `model` replaced.
    pub fn to_openai_body(&self, upstream_model: &str) -> Vec<u8> {
        write_object(&self.fields, upstream_model, None, b"")
    }
}

/// OpenAI's answer: `{"object":"list","data":[...],"model","usage"}`.
#[derive(Debug, Serialize)]
pub struct EmbeddingList<'a> {
    /// Always `list`.
    pub object: &'static str,
    /// One entry per input, in input order.
    pub data: Vec<Embedding>,
    /// The model that embedded.
    pub model: &'a str,
    /// Tokens read.
    pub usage: EmbeddingUsage,
}

impl<'a> EmbeddingList<'a> {
    /// The list for `vectors` (input order), written in `format`.
    pub fn new(
        model: &'a str,
        vectors: Vec<Vec<f64>>,
        format: EncodingFormat,
        prompt_tokens: u64,
    ) -> Self {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, values)| Embedding {
                object: "embedding",
                index: index as u32,
                embedding: Vector::encode(values, format),
            })
            .collect();
        EmbeddingList {
            object: "list",
            data,
            model,
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }
}

/// One vector.
#[derive(Debug, Serialize)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: &'static str,
    /// The input it belongs to.
    pub index: u32,
    /// The vector.
    pub embedding: Vector,
}

/// A vector as floats or as base64.
#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Vector {
    /// JSON numbers.
    Float(Vec<f64>),
    /// Base64 of little-endian float32 bytes.
    Base64(String),
}

impl Vector {
    /// `values` in `format`.
    pub fn encode(values: Vec<f64>, format: EncodingFormat) -> Vector {
        match format {
            EncodingFormat::Float => Vector::Float(values),
            EncodingFormat::Base64 => {
                Vector::Base64(f32_le_base64(values.iter().map(|&v| v as f32)))
            }
        }
    }
}

/// Usage of an embeddings answer: input only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    /// Tokens read.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// The same (embeddings write no tokens).
    #[serde(default)]
    pub total_tokens: u64,
}

impl From<EmbeddingUsage> for Usage {
    fn from(u: EmbeddingUsage) -> Usage {
        Usage::new(u.prompt_tokens, 0, None)
    }
}

/// The base64 (standard alphabet, padded) of the values' little-endian
/// float32 bytes: OpenAI's `encoding_format: "base64"`.
pub fn f32_le_base64(values: impl ExactSizeIterator<Item = f32>) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(v: &str) -> Result<EmbeddingsRequest<'_>, GatewayError> {
        EmbeddingsRequest::parse(v.as_bytes())
    }

    fn param(body: &str) -> String {
        match parse(body).and_then(|r| r.inputs().map(|_| r)) {
            Err(GatewayError::InvalidRequest { param, .. }) => param.unwrap(),
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn openai_body_rewrites_model_and_keeps_everything_else_exactly() {
        let body = r#"{"input":["a","b\u00e9"],"model":"alias","encoding_format":"base64","dimensions":256,"user":"u-1","x_custom":{"n":1.50}}"#;
        let r = parse(body).unwrap();
        assert_eq!(r.model, "alias");
        assert!(r.batch);
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert_eq!(r.dimensions, Some(256));
        assert_eq!(
            String::from_utf8(r.to_openai_body("text-embedding-3-small")).unwrap(),
            r#"{"input":["a","b\u00e9"],"model":"text-embedding-3-small","encoding_format":"base64","dimensions":256,"user":"u-1","x_custom":{"n":1.50}}"#
        );
    }

    #[test]
    fn every_input_shape_is_understood() {
        let inputs = |input: &str| {
            let body = format!(r#"{{"model":"m","input":{input}}}"#);
            let r = parse(&body).unwrap();
            (r.batch, r.inputs().unwrap())
        };
        use EmbeddingInput::{Text, Tokens};
        assert_eq!(inputs(r#""hi""#), (false, vec![Text("hi".into())]));
        assert_eq!(
            inputs(r#"[ "a", "b" ]"#),
            (true, vec![Text("a".into()), Text("b".into())])
        );
        assert_eq!(inputs("[1, 2]"), (false, vec![Tokens(vec![1, 2])]));
        assert_eq!(
            inputs("[[1],[2,3]]"),
            (true, vec![Tokens(vec![1]), Tokens(vec![2, 3])])
        );
        let r = parse(r#"{"model":"m","input":"x"}"#).unwrap();
        assert_eq!(
            (r.encoding_format, r.dimensions),
            (EncodingFormat::Float, None)
        );
    }

    #[test]
    fn invalid_requests_name_the_parameter() {
        assert_eq!(param(r#"{"input":"x"}"#), "model");
        assert_eq!(param(r#"{"model":"","input":"x"}"#), "model");
        assert_eq!(param(r#"{"model":"m"}"#), "input");
        assert_eq!(param(r#"{"model":"m","input":3}"#), "input");
        assert_eq!(param(r#"{"model":"m","input":null}"#), "input");
        assert_eq!(param(r#"{"model":"m","input":[ ]}"#), "input");
        assert_eq!(param(r#"{"model":"m","input":["a",1]}"#), "input");
        assert_eq!(param(r#"{"model":"m","input":[[]]}"#), "input");
        assert_eq!(
            param(r#"{"model":"m","input":"x","encoding_format":"int8"}"#),
            "encoding_format"
        );
        assert_eq!(
            param(r#"{"model":"m","input":"x","dimensions":0}"#),
            "dimensions"
        );
        assert_eq!(
            param(r#"{"model":"m","input":"x","dimensions":"8"}"#),
            "dimensions"
        );
        assert!(matches!(parse("[]"), Err(GatewayError::InvalidJson { .. })));
    }

    #[test]
    fn base64_is_little_endian_float32() {
        // Node: Buffer.from(new Float32Array([1]).buffer).toString('base64')
        assert_eq!(f32_le_base64([1.0f32].into_iter()), "AACAPw==");
        // [1, -2, 0.5]: 0000803f 000000c0 0000003f
        assert_eq!(
            f32_le_base64([1.0f32, -2.0, 0.5].into_iter()),
            "AACAPwAAAMAAAAA/"
        );
        assert_eq!(f32_le_base64([0.0f32; 2].into_iter()), "AAAAAAAAAAA=");
        assert_eq!(f32_le_base64(std::iter::empty::<f32>()), "");
    }

    #[test]
    fn list_serializes_as_openai_does() {
        let list = EmbeddingList::new("m", vec![vec![0.5, -1.0]], EncodingFormat::Float, 3);
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            json!({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1.0]}],
                   "model":"m","usage":{"prompt_tokens":3,"total_tokens":3}})
        );
        let list = EmbeddingList::new("m", vec![vec![1.0]], EncodingFormat::Base64, 1);
        let v: Value = serde_json::to_value(&list).unwrap();
        assert_eq!(v["data"][0]["embedding"], "AACAPw==");
        assert_eq!(Usage::from(list.usage), Usage::new(1, 0, None));
    }
}
