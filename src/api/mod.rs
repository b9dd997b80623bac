//! OpenAI-compatible wire types: what clients send and what they receive.

mod embeddings;
mod request;
mod response;

pub use embeddings::{
    Embedding, EmbeddingInput, EmbeddingList, EmbeddingUsage, EmbeddingsRequest, EncodingFormat,
    Vector, f32_le_base64,
};
// Shared with the other ingress protocols (`crate::ingress`), which keep
// their requests as the same ordered list of raw fields.
pub use request::{
    ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, JsonSchemaFormat,
    Message, NamedFunction, ResponseFormat, Role, Stop, Tool, ToolCall, ToolChoice, ToolChoiceMode,
    write_json_string,
};
pub(crate) use request::{field, parse_field, parse_object, write_object};
pub use response::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta,
    FinishReason, FunctionDelta, FunctionOut, ModelList, ModelObject, PromptTokensDetails,
    ToolCallDelta, ToolCallOut, Usage,
};
