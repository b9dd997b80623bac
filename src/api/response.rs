//! OpenAI response shapes the gateway produces: completions, stream chunks,
//! usage and model lists. Adapters that translate build these; OpenAI-format
//! upstream bodies are passed through and only [`Usage`] is read from them.

use serde::{Deserialize, Serialize};

/// Token usage, as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// Cached input tokens, when the provider reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`), part of `prompt_tokens`. Settlement
    /// charges them at the cache-write price. Not on OpenAI's wire, which
    /// has no such count: never serialized, and 0 when read from OpenAI.
    #[serde(skip)]
    pub cache_write_tokens: u64,
}

/// Breakdown of prompt tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Input tokens served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    /// Usage from input and output counts.
    pub fn new(prompt: u64, completion: u64, cached: Option<u64>) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: cached
                .map(|cached_tokens| PromptTokensDetails { cached_tokens }),
            cache_write_tokens: 0,
        }
    }

    /// The same usage with `n` of its prompt tokens written to the cache.
    pub fn with_cache_writes(self, n: u64) -> Self {
        Usage {
            cache_write_tokens: n,
            ..self
        }
    }

    /// Input tokens read from the provider's cache (0 when not reported).
    pub fn cache_read_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// Why generation stopped, in OpenAI's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// The token cap was reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// The provider's safety system stopped it.
    ContentFilter,
}

/// A non-streamed `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The choices (one unless `n` > 1).
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a completion.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Position among the choices.
    pub index: u32,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
    /// Always null here.
    pub logprobs: Option<()>,
}

/// The assistant message of a choice.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text, or null when the model only called tools.
    pub content: Option<String>,
    /// Tool calls, when any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A complete tool call in a response.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    /// The call id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Name and arguments.
    pub function: FunctionOut,
}

/// A function name with its JSON-encoded arguments.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON string.
    pub arguments: String,
}

/// A streamed `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk<'a> {
    /// Same for every chunk of a stream.
    pub id: &'a str,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds, same for every chunk.
    pub created: u64,
    /// The model that answers.
    pub model: &'a str,
    /// Zero or one choice deltas (zero on the usage chunk).
    pub choices: Vec<ChunkChoice<'a>>,
    /// Present (possibly null) only when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// The delta of one choice in a chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice<'a> {
    /// Position among the choices.
    pub index: u32,
    /// What this chunk adds.
    pub delta: Delta<'a>,
    /// Set on the last content chunk.
    pub finish_reason: Option<FinishReason>,
    /// Always null here.
    pub logprobs: Option<()>,
}

/// What a chunk adds to the message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta<'a> {
    /// `assistant` on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// A text fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    /// Tool-call fragments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

/// A tool-call fragment: `id`, `type` and `name` only on the call's first
/// fragment; `index` stable for the whole call.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta<'a> {
    /// The call's position, stable across its fragments.
    pub index: u32,
    /// The call id, first fragment only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// `function`, first fragment only.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Name (first fragment) and argument text.
    pub function: FunctionDelta<'a>,
}

/// A fragment of a function call.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionDelta<'a> {
    /// The name, first fragment only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// A piece of the JSON arguments.
    pub arguments: &'a str,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelObject>,
}

/// One model of the list.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    /// The public model name to use in requests.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds; the gateway reports 0 (aliases have no creation date).
    pub created: u64,
    /// Who serves it: the first enabled target's provider.
    pub owned_by: String,
}
