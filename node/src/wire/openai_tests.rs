//! The OpenAI types: the output cap, usage, and same-format pass-through
//! (what a client sends reaches an OpenAI upstream unchanged but for the
//! fields the gateway sets).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

#[test]
fn an_output_cap_applies_only_to_requests_without_a_limit() {
    let mut open = ChatRequest::default();
    open.cap_output(4096);
    assert_eq!(open.max_tokens, Some(4096));
    let mut limited = ChatRequest {
        max_completion_tokens: Some(7),
        ..ChatRequest::default()
    };
    limited.cap_output(4096);
    assert_eq!(
        (limited.max_tokens, limited.output_limit()),
        (None, Some(7))
    );
}

#[test]
fn unknown_fields_pass_through_and_content_parts_parse() {
    let body = serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
            ]}
        ],
        "seed": 7,
        "logit_bias": {"42": 1}
    });
    let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(req.extra.get("seed"), Some(&serde_json::json!(7)));
    assert_eq!(
        req.messages[0].content.as_ref().unwrap().joined_text(),
        "hi"
    );
    assert_eq!(serde_json::to_value(&req).unwrap(), body);
}

#[test]
fn usage_reads_cached_tokens() {
    let probe: UsageProbe = serde_json::from_str(
        r#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":4}}}"#,
    )
    .unwrap();
    let usage = Usage::from(probe.usage.unwrap());
    assert_eq!(usage.cached_tokens, 4);
    assert_eq!(usage.total_tokens(), 13);
}

/// Any JSON object of unknown fields (names the types do not know).
fn unknown_fields() -> impl Strategy<Value = Map<String, Value>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z ]{0,8}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    });
    prop::collection::btree_map("x_[a-z]{1,6}", value, 0..3).prop_map(|m| m.into_iter().collect())
}

fn with(mut object: Value, extra: Map<String, Value>) -> Value {
    if let Value::Object(map) = &mut object {
        map.extend(extra);
    }
    object
}

/// A chat body with unknown fields at every level the gateway types (the
/// body, a message, text and image parts, a tool and its function) and a
/// content part of a type it does not know.
fn chat_body() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(unknown_fields(), 6),
        "[a-z_]{1,10}",
        any::<bool>(),
    )
        .prop_map(|(extras, part_type, stream)| {
            let mut e = extras.into_iter();
            let mut next = || e.next().unwrap_or_default();
            let text = with(json!({ "type": "text", "text": "hi" }), next());
            let image = with(
                json!({ "type": "image_url", "image_url": with(json!({ "url": "https://x/y.png" }), next()) }),
                next(),
            );
            let unknown = json!({ "type": format!("future_{part_type}"), "payload": [1, 2] });
            let message = with(json!({ "role": "user", "content": [text, image, unknown] }), next());
            let tool = with(
                json!({ "type": "function", "function": with(json!({ "name": "f", "parameters": { "type": "object" } }), next()) }),
                next(),
            );
            json!({ "model": "m", "messages": [message], "tools": [tool], "stream": stream, "seed": 7 })
        })
}

proptest! {
    /// Same format, same body: a chat request parsed and written again is
    /// the body the client sent, unknown fields and part types included.
    #[test]
    fn chat_bodies_survive_the_round_trip(body in chat_body()) {
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        prop_assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    /// Every chunk the gateway writes reads back as itself.
    #[test]
    fn chunks_survive_the_round_trip(
        content in prop::option::of("[a-z ]{0,12}"),
        finish in prop::option::of("(stop|length|tool_calls)"),
        args in prop::option::of("[{}a-z:\"]{0,12}"),
        prompt in 0u64..1_000_000,
        cached in 0u64..1_000,
        index in 0u32..4,
    ) {
        let chunk = ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            choices: Some(vec![ChunkChoice {
                index,
                delta: ChunkDelta {
                    role: None,
                    content,
                    tool_calls: args.map(|a| vec![ToolCallDelta {
                        index: Some(0),
                        function: Some(FunctionDelta { name: None, arguments: Some(a) }),
                        ..Default::default()
                    }]),
                },
                finish_reason: finish,
            }]),
            usage: Some(Usage { prompt_tokens: prompt, completion_tokens: 3, cached_tokens: cached.min(prompt), cache_creation_tokens: 0 }.to_openai()),
            error: None,
        };
        let read: ChatChunk = serde_json::from_slice(&serde_json::to_vec(&chunk).unwrap()).unwrap();
        prop_assert_eq!(read, chunk);
    }
}
