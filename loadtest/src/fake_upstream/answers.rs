//! The bodies the fake answers with, built once from the shared fixtures
//! and the options.

use super::*;

/// Every body the fake sends outside the named test behaviours, built once
/// from the fixtures and the options: answering costs a reference-count bump,
/// not a serialization.
pub(super) struct Answers {
    pub(super) chat: Bytes,
    pub(super) messages: Bytes,
    pub(super) chat_stream: OpenAiStream,
    pub(super) completion_stream: OpenAiStream,
    pub(super) messages_stream: Arc<[Bytes]>,
    pub(super) openai_500: Bytes,
    pub(super) anthropic_500: Bytes,
}

/// An OpenAI stream's SSE frames with and without the final usage chunk.
pub(super) struct OpenAiStream {
    pub(super) with_usage: Arc<[Bytes]>,
    pub(super) without_usage: Arc<[Bytes]>,
}

impl OpenAiStream {
    pub(super) fn new(lines: &[String]) -> Self {
        Self {
            with_usage: openai_frames(lines, true),
            without_usage: openai_frames(lines, false),
        }
    }

    pub(super) fn pick(&self, include_usage: bool) -> Arc<[Bytes]> {
        if include_usage {
            self.with_usage.clone()
        } else {
            self.without_usage.clone()
        }
    }
}

impl Answers {
    pub(super) fn build(output_tokens: Option<u32>) -> Self {
        let fixture = |text: &'static str| Bytes::from_static(text.trim_ascii_end().as_bytes());
        let (chat, messages) = match output_tokens {
            None => (fixture(OPENAI_CHAT), fixture(ANTHROPIC_MESSAGES)),
            Some(n) => (openai_chat(n), anthropic_messages(n)),
        };
        let to_bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
        Self {
            chat,
            messages,
            chat_stream: OpenAiStream::new(&openai_chat_stream(output_tokens)),
            completion_stream: OpenAiStream::new(&jsonl_lines(OPENAI_COMPLETION_STREAM)),
            messages_stream: anthropic_frames(output_tokens),
            openai_500: to_bytes(&error_body(Api::Chat, 500)),
            anthropic_500: to_bytes(&error_body(Api::Messages, 500)),
        }
    }
}

pub(super) fn jsonl_lines(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// OpenAI's streaming: chunks as `data:` lines; the usage chunk (the last line)
/// only when asked for; then `[DONE]`.
pub(super) fn openai_frames(lines: &[String], include_usage: bool) -> Arc<[Bytes]> {
    let keep = if include_usage {
        lines.len()
    } else {
        lines.len().saturating_sub(1)
    };
    lines
        .iter()
        .take(keep)
        .map(|l| Bytes::from(format!("data: {l}\n\n")))
        .chain([Bytes::from_static(b"data: [DONE]\n\n")])
        .collect()
}

/// The words of generated answers, in turn: one per token.
pub(super) const WORDS: [&str; 5] = ["Hello", " from", " the", " fake", " upstream."];

pub(super) fn word(i: u32) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

pub(super) fn text(tokens: u32) -> String {
    (0..tokens).map(word).collect()
}

/// A fixture as a JSON tree. The fixtures are compiled in; one that did not
/// parse would be answered as `null` rather than take the process down.
pub(super) fn parse_fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn set(value: &mut Value, pointer: &str, to: impl Into<Value>) {
    if let Some(slot) = value.pointer_mut(pointer) {
        *slot = to.into();
    }
}

pub(super) fn openai_usage(chunk: &mut Value, tokens: u32) {
    let prompt = chunk
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    set(chunk, "/usage/completion_tokens", tokens);
    set(chunk, "/usage/total_tokens", prompt + u64::from(tokens));
}

pub(super) fn openai_chat(tokens: u32) -> Bytes {
    let mut answer = parse_fixture(OPENAI_CHAT);
    set(&mut answer, "/choices/0/message/content", text(tokens));
    openai_usage(&mut answer, tokens);
    Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())
}

pub(super) fn anthropic_messages(tokens: u32) -> Bytes {
    let mut answer = parse_fixture(ANTHROPIC_MESSAGES);
    set(&mut answer, "/content/0/text", text(tokens));
    set(&mut answer, "/usage/output_tokens", tokens);
    Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())
}

/// Replaces a stream's content events with `tokens` copies of the first one,
/// each carrying one word (via `set_word`); the events before and after stay,
/// passed through `fix_rest` (for the usage they report).
pub(super) fn regenerate(
    events: Vec<Value>,
    is_content: impl Fn(&Value) -> bool,
    tokens: u32,
    set_word: impl Fn(&mut Value, &'static str),
    fix_rest: impl Fn(&mut Value),
) -> Vec<Value> {
    let (Some(first), Some(last)) = (
        events.iter().position(&is_content),
        events.iter().rposition(&is_content),
    ) else {
        return events;
    };
    let template = events[first].clone();
    let mut out = events[..first].to_vec();
    out.extend((0..tokens).map(|i| {
        let mut event = template.clone();
        set_word(&mut event, word(i));
        event
    }));
    out.extend(events[last + 1..].iter().cloned().map(|mut event| {
        fix_rest(&mut event);
        event
    }));
    out
}

pub(super) fn openai_chat_stream(tokens: Option<u32>) -> Vec<String> {
    let Some(tokens) = tokens else {
        return jsonl_lines(OPENAI_CHAT_STREAM);
    };
    let chunks = jsonl_lines(OPENAI_CHAT_STREAM)
        .iter()
        .map(|l| parse_fixture(l))
        .collect();
    let is_content = |c: &Value| {
        c.pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    regenerate(
        chunks,
        is_content,
        tokens,
        |c, w| set(c, "/choices/0/delta/content", w),
        |c| openai_usage(c, tokens),
    )
    .iter()
    .map(Value::to_string)
    .collect()
}

/// Anthropic's streaming: named events, each `event:` then `data:`.
pub(super) fn anthropic_frames(tokens: Option<u32>) -> Arc<[Bytes]> {
    let events: Vec<Value> = jsonl_lines(ANTHROPIC_STREAM)
        .iter()
        .map(|l| parse_fixture(l))
        .collect();
    let events = match tokens {
        None => events,
        Some(tokens) => regenerate(
            events,
            |e| e["event"] == "content_block_delta",
            tokens,
            |e, w| set(e, "/data/delta/text", w),
            |e| {
                if e["event"] == "message_delta" {
                    set(e, "/data/usage/output_tokens", tokens);
                }
            },
        ),
    };
    events
        .iter()
        .map(|v| {
            Bytes::from(format!(
                "event: {}\ndata: {}\n\n",
                v["event"].as_str().unwrap_or("message"),
                v["data"]
            ))
        })
        .collect()
}
