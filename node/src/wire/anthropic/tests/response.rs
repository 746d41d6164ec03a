use serde_json::json;

use super::*;

#[test]
fn response_with_text_and_cache_usage() {
    let resp = json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Hello"},
            {"type": "text", "text": " world"},
        ],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        },
    });
    let (chat, usage) = to_chat_json(resp, "claude-alias", 1_700_000_000).unwrap();
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 130,
            completion_tokens: 5,
            cached_tokens: 100,
            cache_creation_tokens: 20,
        }
    );
    assert_eq!(
        chat,
        json!({
            "id": "msg_01",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": "claude-alias",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": 130,
                "completion_tokens": 5,
                "total_tokens": 135,
                "prompt_tokens_details": {"cached_tokens": 100},
            },
        })
    );
}

#[test]
fn response_with_tool_use_has_null_content() {
    let resp = json!({
        "id": "msg_02",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    });
    let (chat, usage) = to_chat_json(resp, "m", 1).unwrap();
    assert_eq!(
        chat["choices"][0]["message"],
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
            }],
        })
    );
    assert_eq!(chat["choices"][0]["finish_reason"], json!("tool_calls"));
    assert_eq!(usage.prompt_tokens, 3);
    assert_eq!(usage.cached_tokens, 0);
}

#[test]
fn finish_reasons_map() {
    assert_eq!(finish_reason(Some("end_turn")), "stop");
    assert_eq!(finish_reason(Some("stop_sequence")), "stop");
    assert_eq!(finish_reason(Some("max_tokens")), "length");
    assert_eq!(finish_reason(Some("tool_use")), "tool_calls");
    assert_eq!(finish_reason(Some("pause_turn")), "stop");
    assert_eq!(finish_reason(None), "stop");
}

#[test]
fn response_without_content_is_an_error() {
    let err = to_chat_json(json!({"id": "x"}), "m", 1).unwrap_err();
    assert_eq!(err, "Anthropic response has no `content` array");
}

#[test]
fn chat_response_with_text_and_tools() {
    let chat = json!({
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": "{oops"}},
            ],
        }}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 60}},
    });
    assert_eq!(
        from_chat_json(chat, "claude-alias", None).unwrap(),
        json!({
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "claude-alias",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "call_2", "name": "broken", "input": {}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 40, "output_tokens": 20, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0},
        })
    );
}

#[test]
fn chat_response_stop_reasons_and_id_prefix() {
    let make = |finish: &str| {
        json!({"id": "msg_x", "choices": [{"finish_reason": finish,
               "message": {"role": "assistant", "content": ""}}]})
    };
    let cases = [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "end_turn"),
    ];
    for (finish, expected) in cases {
        let msg = from_chat_json(make(finish), "m", None).unwrap();
        assert_eq!(msg["stop_reason"], json!(expected));
        assert_eq!(msg["id"], json!("msg_x"));
        assert_eq!(msg["content"], json!([]));
        assert_eq!(
            msg["usage"],
            json!({"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
        );
    }
    let err = from_chat_json(json!({"id": "x", "choices": []}), "m", None).unwrap_err();
    assert_eq!(err, "chat completion has no choices");
}

fn arb_message() -> impl proptest::strategy::Strategy<Value = Message> {
    use proptest::prelude::*;
    let call = (
        "toolu_[a-z0-9]{1,6}",
        "[a-z_]{1,8}",
        "[a-z]{1,4}",
        any::<i32>(),
    )
        .prop_map(|(id, name, key, n)| ContentBlock::ToolUse {
            id,
            name,
            input: json!({ key: n }),
        });
    (
        prop::option::of("[A-Za-z ,.]{1,24}"),
        prop::collection::vec(call, 0..3),
        any::<bool>(),
        [0u64..1_000_000, 0..1_000_000, 0..1_000_000, 0..1_000_000],
    )
        .prop_map(|(text, calls, cut_short, [input, output, read, written])| {
            let stop = if !calls.is_empty() {
                "tool_use"
            } else if cut_short {
                "max_tokens"
            } else {
                "end_turn"
            };
            let mut content: Vec<ContentBlock> = text
                .filter(|t| !t.trim().is_empty())
                .map(|text| ContentBlock::Text { text })
                .into_iter()
                .collect();
            content.extend(calls);
            Message {
                id: "msg_1".into(),
                model: "m".into(),
                content: Some(content),
                stop_reason: Some(stop.into()),
                usage: AnthropicUsage {
                    input_tokens: input,
                    output_tokens: output,
                    cache_read_input_tokens: read,
                    cache_creation_input_tokens: written,
                }
                .fields(),
                ..Message::skeleton()
            }
        })
}

proptest::proptest! {
    /// Both directions agree: an Anthropic answer translated for an OpenAI
    /// client, and that translated back for an Anthropic client, is the
    /// answer Anthropic gave (text, tool calls, stop reason, every usage
    /// counter).
    #[test]
    fn answers_survive_the_round_trip_through_chat(message in arb_message()) {
        let (chat, usage) = super::super::response::to_chat(message.clone(), "m", 1).unwrap();
        let wire = serde_json::to_vec(&chat).unwrap();
        let chat = serde_json::from_slice(&wire).unwrap();
        let back = super::super::response::from_chat(chat, "m", Some(usage)).unwrap();
        proptest::prop_assert_eq!(back, message);
    }
}
