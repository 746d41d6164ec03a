//! The recorded provider answers under `fixtures/` (its README says what each
//! holds), compiled in and named once: the fake upstream answers with them and
//! the node's tests compare against them. The simulator's provider, which does
//! not link this crate, reads `openai/chat.json` itself.

/// A `chat.completion` answer.
pub const OPENAI_CHAT: &str = include_str!("../../fixtures/openai/chat.json");
/// A `chat.completion` whose answer is a tool call.
pub const OPENAI_CHAT_TOOL: &str = include_str!("../../fixtures/openai/chat_tool_call.json");
/// `chat.completion.chunk`s, one per line; the last is the usage chunk.
pub const OPENAI_CHAT_STREAM: &str = include_str!("../../fixtures/openai/chat_stream.jsonl");
/// A legacy text completion.
pub const OPENAI_COMPLETION: &str = include_str!("../../fixtures/openai/completion.json");
/// A legacy text completion's chunks, one per line; the last is the usage chunk.
pub const OPENAI_COMPLETION_STREAM: &str =
    include_str!("../../fixtures/openai/completion_stream.jsonl");
/// An embeddings list.
pub const OPENAI_EMBEDDINGS: &str = include_str!("../../fixtures/openai/embeddings.json");
/// A Messages API answer.
pub const ANTHROPIC_MESSAGES: &str = include_str!("../../fixtures/anthropic/messages.json");
/// A Messages API answer that calls a tool.
pub const ANTHROPIC_TOOL_USE: &str =
    include_str!("../../fixtures/anthropic/messages_tool_use.json");
/// Streaming events, one `{"event", "data"}` per line.
pub const ANTHROPIC_STREAM: &str = include_str!("../../fixtures/anthropic/messages_stream.jsonl");
