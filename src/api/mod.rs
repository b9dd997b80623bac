//! OpenAI-compatible wire types: what clients send and what they receive.

mod embeddings;
mod request;
mod response;

pub use embeddings::{
    Embedding, EmbeddingInput, EmbeddingList, EmbeddingUsage, EmbeddingsRequest, EncodingFormat,
    Vector, f32_le_base64,
};
pub use request::{
    ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, JsonSchemaFormat,
    Message, NamedFunction, ResponseFormat, Role, Stop, Tool, ToolCall, ToolChoice, ToolChoiceMode,
    write_json_string,
};
pub use response::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta,
    FinishReason, FunctionDelta, FunctionOut, ModelList, ModelObject, PromptTokensDetails,
    ToolCallDelta, ToolCallOut, Usage,
};
