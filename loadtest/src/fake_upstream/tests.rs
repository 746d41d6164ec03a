//! Tests of the fake upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::answers::*;
use super::*;

fn data_lines(frames: &[Bytes]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|f| {
            let text = std::str::from_utf8(f).unwrap();
            let data = text.lines().find_map(|l| l.strip_prefix("data: "))?;
            serde_json::from_str(data).ok()
        })
        .collect()
}

#[test]
fn default_answers_are_the_fixtures_as_recorded() {
    let answers = Answers::build(None);
    assert_eq!(answers.chat, OPENAI_CHAT.trim_end().as_bytes());
    assert_eq!(answers.messages, ANTHROPIC_MESSAGES.trim_end().as_bytes());
    let lines: Vec<&str> = OPENAI_CHAT_STREAM.lines().collect();
    let frames = answers.chat_stream.pick(false);
    assert_eq!(frames.len(), lines.len()); // the usage line dropped, [DONE] added
    assert_eq!(frames[1], format!("data: {}\n\n", lines[1]).as_bytes());
    assert_eq!(frames.last().unwrap(), &b"data: [DONE]\n\n"[..]);
    assert_eq!(answers.chat_stream.pick(true).len(), lines.len() + 1);
    assert_eq!(
        answers.messages_stream.len(),
        ANTHROPIC_STREAM.lines().count()
    );
}

#[test]
fn output_tokens_shape_usage_and_chunks() {
    let answers = Answers::build(Some(12));
    let chat: Value = serde_json::from_slice(&answers.chat).unwrap();
    assert_eq!(chat["usage"]["completion_tokens"], 12);
    assert_eq!(chat["usage"]["total_tokens"], 24);
    assert_eq!(chat["choices"][0]["message"]["content"], text(12));

    let chunks = data_lines(&answers.chat_stream.pick(true));
    let content = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content, 12);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);

    let messages: Value = serde_json::from_slice(&answers.messages).unwrap();
    assert_eq!(messages["usage"]["output_tokens"], 12);
    let events = data_lines(&answers.messages_stream);
    let deltas = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .count();
    assert_eq!(deltas, 12);
    let usage = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(usage["usage"]["output_tokens"], 12);
    assert_eq!(events.last().unwrap()["type"], "message_stop");
}

#[test]
fn zero_output_tokens_is_an_empty_answer() {
    let answers = Answers::build(Some(0));
    let chunks = data_lines(&answers.chat_stream.pick(true));
    assert_eq!(chunks.len(), 3); // role, finish, usage
}

#[test]
fn peek_reads_typed_and_lenient_bodies_alike() {
    let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function"}]}"#;
    let peek = Peek::parse(body);
    assert_eq!(peek.model.as_deref(), Some("gpt-4o"));
    assert_eq!(peek.stream, Some(true));
    assert_eq!(peek.tools.map(|t| t.len()), Some(1));
    // A field of an unexpected type does not lose the others.
    let peek = Peek::parse(br#"{"model":"m","stream":"yes"}"#);
    assert_eq!(peek.model.as_deref(), Some("m"));
    assert_eq!(peek.stream, None);
    assert!(Peek::parse(b"not json").model.is_none());
}

#[test]
fn options_are_validated() {
    assert!(UpstreamOptions::default().validate().is_ok());
    let bad = UpstreamOptions {
        error_rate: 1.5,
        ..UpstreamOptions::default()
    };
    assert!(bad.validate().is_err());
    let nan = UpstreamOptions {
        error_rate: f64::NAN,
        ..UpstreamOptions::default()
    };
    assert!(nan.validate().is_err());
}
