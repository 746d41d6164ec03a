//! Anthropic's Messages API: its response and stream-event types, its token
//! counters, and both directions of the translation to and from the
//! gateway's chat format, one file per kind of thing translated:
//!
//! | | Anthropic → chat | chat → Anthropic |
//! |---|---|---|
//! | request | [`read_request`] (a `/v1/messages` client) | [`write_request`] (an Anthropic deployment; the body typed in [`request`]) |
//! | whole answer | [`response::to_chat`] | [`response::from_chat`] |
//! | stream | [`stream::EventsToChunks`] | [`stream::ChunksToEvents`] |
//!
//! An Anthropic client on an Anthropic deployment needs none of them: its
//! body passes through (`providers::anthropic::messages`), so fields the
//! chat format has no place for (`top_k`, `thinking`, …) reach the provider.
//!
//! The client's request is read as JSON, not into [`request`]'s types: it
//! is validated field by field so an error names the offending path
//! (`messages[0].content[1].source.type`), and it is passed through as sent.
//!
//! Types are lenient where Anthropic adds things over time (unknown block,
//! delta and event types are [`ContentBlock::Other`], [`Delta::Other`],
//! [`StreamEvent::Other`]) and strict where a wrong type means the body is
//! not what it claims to be.

pub mod read_request;
pub mod request;
pub mod response;
pub mod stream;
pub mod write_request;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::openai::Usage;

/// An Anthropic `message` object: a whole answer, or the skeleton
/// `message_start` carries.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Message {
    #[serde(default)]
    pub id: String,
    /// Always `"message"`.
    #[serde(rename = "type", default = "message_kind")]
    pub kind: String,
    #[serde(default = "assistant")]
    pub role: String,
    #[serde(default)]
    pub model: String,
    /// `None` when the body had no `content` array (a protocol error for a
    /// whole answer).
    #[serde(default)]
    pub content: Option<Vec<ContentBlock>>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: UsageFields,
}

impl Message {
    /// An empty assistant message: what a translated answer or
    /// `message_start` fills in.
    pub fn skeleton() -> Self {
        Self {
            kind: message_kind(),
            role: assistant(),
            ..Default::default()
        }
    }
}

fn message_kind() -> String {
    "message".into()
}

fn assistant() -> String {
    "assistant".into()
}

/// A content block of an answer (or of `content_block_start`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default = "empty_object")]
        input: Value,
    },
    /// Thinking, server tools and block types added later: no place in the
    /// chat format.
    #[serde(other)]
    Other,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// The `delta` of a `content_block_delta` event.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    /// Thinking and signature deltas, and delta types added later.
    #[serde(other)]
    Other,
}

/// The `delta` of a `message_delta` event.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct MessageDelta {
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// The body of an `error` event (and of an error response).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ErrorBody {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// One event of a Messages stream (its `data:`, tagged by `type`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: Message,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u64,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u64,
        delta: Delta,
    },
    ContentBlockStop {
        #[serde(default)]
        index: u64,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDelta,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<UsageFields>,
    },
    MessageStop,
    Ping,
    Error {
        #[serde(default)]
        error: ErrorBody,
    },
    /// Event types added later: relayed or skipped, never an error.
    #[serde(other)]
    Other,
}

impl StreamEvent {
    /// The SSE `event:` name Anthropic sends with this event.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Ping => "ping",
            StreamEvent::Error { .. } => "error",
            StreamEvent::Other => "other",
        }
    }

    /// The usage counters this event reports, if any.
    pub fn usage(&self) -> Option<&UsageFields> {
        match self {
            StreamEvent::MessageStart { message } => Some(&message.usage),
            StreamEvent::MessageDelta { usage, .. } => usage.as_ref(),
            _ => None,
        }
    }
}

/// Anthropic's `usage` object as sent: a stream's `message_delta` may carry
/// only some counters, so each is optional.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct UsageFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
}

/// Anthropic's token counters. Kept apart from [`Usage`] because Anthropic counts
/// cached input separately from `input_tokens`, and streams report the counters in
/// two events. Both directions of the mapping are here ([`Self::to_usage`],
/// [`Self::from_usage`]), for answers from Anthropic and answers to Anthropic
/// clients alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

impl AnthropicUsage {
    /// Takes every counter present in `fields`, keeping the others.
    pub fn update(&mut self, fields: &UsageFields) {
        let take = |from: Option<u64>, slot: &mut u64| {
            if let Some(n) = from {
                *slot = n;
            }
        };
        take(fields.input_tokens, &mut self.input_tokens);
        take(fields.output_tokens, &mut self.output_tokens);
        take(
            fields.cache_read_input_tokens,
            &mut self.cache_read_input_tokens,
        );
        take(
            fields.cache_creation_input_tokens,
            &mut self.cache_creation_input_tokens,
        );
    }

    /// OpenAI's `prompt_tokens` includes cached tokens; Anthropic's `input_tokens`
    /// does not, so the cache counts are added back.
    pub fn to_usage(self) -> Usage {
        Usage {
            // Counts from the provider: never trusted not to overflow.
            prompt_tokens: self
                .input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_creation_input_tokens),
            completion_tokens: self.output_tokens,
            cached_tokens: self.cache_read_input_tokens,
            cache_creation_tokens: self.cache_creation_input_tokens,
        }
    }

    /// The inverse of [`Self::to_usage`]: what an Anthropic client is told.
    pub fn from_usage(usage: &Usage) -> Self {
        Self {
            input_tokens: usage
                .prompt_tokens
                .saturating_sub(usage.cached_tokens)
                .saturating_sub(usage.cache_creation_tokens),
            output_tokens: usage.completion_tokens,
            cache_read_input_tokens: usage.cached_tokens,
            cache_creation_input_tokens: usage.cache_creation_tokens,
        }
    }

    /// The `usage` object of an Anthropic message, every counter set.
    pub fn fields(self) -> UsageFields {
        UsageFields {
            input_tokens: Some(self.input_tokens),
            output_tokens: Some(self.output_tokens),
            cache_read_input_tokens: Some(self.cache_read_input_tokens),
            cache_creation_input_tokens: Some(self.cache_creation_input_tokens),
        }
    }
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`. Some providers finish a
/// tool call with "stop"; Anthropic clients decide whether to run tools by
/// `tool_use`, so tool calls win over a plain stop.
pub fn stop_reason(finish_reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "end_turn",
        _ if has_tool_calls => "tool_use",
        _ => "end_turn",
    }
}

/// Anthropic message ids start with `msg_`; clients may rely on the prefix.
pub fn message_id(chat_id: &str) -> String {
    if chat_id.starts_with("msg_") {
        chat_id.to_owned()
    } else {
        format!("msg_{chat_id}")
    }
}
