//! Whole answers, both directions: an Anthropic message becomes a
//! `chat.completion` for an OpenAI client ([`to_chat`]), and a
//! `chat.completion` becomes an Anthropic message for a `/v1/messages`
//! client ([`from_chat`]).

use serde_json::Value;

use super::{
    AnthropicUsage, ContentBlock, Message, UsageFields, finish_reason, message_id, stop_reason,
};
use crate::wire::openai::{
    AnswerContent, AnswerMessage, ChatCompletion, Choice, FunctionCall, ToolCall, Usage,
};

/// Translates an Anthropic message into an OpenAI `chat.completion`.
///
/// Returns the usage too, because the gateway charges from it and the OpenAI JSON
/// cannot carry cache-write tokens.
pub fn to_chat(
    message: Message,
    model: &str,
    created: u64,
) -> Result<(ChatCompletion, Usage), String> {
    let blocks = message
        .content
        .ok_or("Anthropic response has no `content` array")?;

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block {
            ContentBlock::Text { text: t } => text.push_str(&t),
            ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            // Thinking and server-tool blocks have no place in an OpenAI message.
            ContentBlock::Other => {}
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(AnswerContent::Text(text))
    };
    let mut counts = AnthropicUsage::default();
    counts.update(&message.usage);
    let usage = counts.to_usage();

    let chat = ChatCompletion {
        id: message.id,
        object: "chat.completion".into(),
        created,
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: Some(AnswerMessage {
                role: "assistant".into(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            }),
            logprobs: None,
            finish_reason: Some(finish_reason(message.stop_reason.as_deref()).to_owned()),
        }],
        usage: Some(usage.to_openai()),
    };
    Ok((chat, usage))
}

/// Translates a whole OpenAI `chat.completion` into an Anthropic message.
/// `model` is the name the client asked for, which is what Anthropic echoes.
/// `usage` is the call's usage as the gateway settled it, when it has it:
/// it keeps what the OpenAI-format body cannot carry (tokens written to the
/// provider's prompt cache).
pub fn from_chat(
    chat: ChatCompletion,
    model: &str,
    usage: Option<Usage>,
) -> Result<Message, String> {
    let choice = chat
        .choices
        .into_iter()
        .next()
        .ok_or("chat completion has no choices")?;
    let answer = choice
        .message
        .ok_or("chat completion choice has no message")?;

    let mut content = Vec::new();
    let text = answer
        .content
        .as_ref()
        .map(AnswerContent::text)
        .unwrap_or_default();
    if !text.is_empty() {
        content.push(ContentBlock::Text { text });
    }
    let calls = answer.tool_calls.unwrap_or_default();
    let has_tool_calls = !calls.is_empty();
    for call in calls {
        // A model can emit broken JSON; Anthropic clients expect an object regardless.
        let input = serde_json::from_str::<Value>(&call.function.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Default::default()));
        content.push(ContentBlock::ToolUse {
            id: call.id,
            name: call.function.name,
            input,
        });
    }
    let usage = usage.unwrap_or_else(|| chat.usage.map(Usage::from).unwrap_or_default());

    Ok(Message {
        id: message_id(&chat.id),
        kind: "message".into(),
        role: "assistant".into(),
        model: model.to_owned(),
        content: Some(content),
        stop_reason: Some(stop_reason(choice.finish_reason.as_deref(), has_tool_calls).to_owned()),
        stop_sequence: None,
        usage: AnthropicUsage::from_usage(&usage).fields(),
    })
}

/// Reads the usage of an Anthropic message without parsing the rest: what
/// a passed-through answer is billed from.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UsageProbe {
    #[serde(default)]
    pub usage: UsageFields,
}

impl UsageProbe {
    pub fn usage(&self) -> Usage {
        let mut counts = AnthropicUsage::default();
        counts.update(&self.usage);
        counts.to_usage()
    }
}
