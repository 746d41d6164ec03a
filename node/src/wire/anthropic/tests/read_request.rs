use serde_json::{Value, json};

use crate::error::Error;
use crate::wire::anthropic::read_request::*;
use crate::wire::openai::*;

fn read(body: Value) -> Result<ChatRequest, Error> {
    match body {
        Value::Object(body) => messages_to_chat(&body),
        other => panic!("not an object: {other}"),
    }
}

fn param_of(err: Error) -> Option<String> {
    match err {
        Error::InvalidRequest { param, .. } => param,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[test]
fn simple_request_maps_every_parameter() {
    let req = read(json!({
        "model": "claude-sonnet",
        "max_tokens": 256,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.8,
        "stop_sequences": ["END"],
        "stream": true,
        "metadata": {"user_id": "cust-7"},
        "top_k": 5,
    }))
    .unwrap();
    assert_eq!(req.model, "claude-sonnet");
    assert_eq!(req.max_tokens, Some(256));
    assert_eq!(
        req.messages,
        vec![
            ChatMessage::text(Role::System, "be brief"),
            ChatMessage::text(Role::User, "hi"),
        ]
    );
    assert_eq!(req.temperature, Some(0.2));
    assert_eq!(req.top_p, Some(0.8));
    assert_eq!(req.stop, Some(Stop::Many(vec!["END".into()])));
    assert_eq!(req.stream, Some(true));
    assert!(req.wants_stream_usage());
    assert_eq!(req.user.as_deref(), Some("cust-7"));
    assert!(req.extra.is_empty());
}

#[test]
fn system_blocks_join_with_newline() {
    let req = read(json!({
        "model": "m", "max_tokens": 1,
        "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
    }))
    .unwrap();
    assert_eq!(req.messages[0], ChatMessage::text(Role::System, "a\nb"));
}

#[test]
fn images_and_text_blocks_become_parts() {
    let req = read(json!({
        "model": "m", "max_tokens": 1,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        ]}],
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&req.messages[0]).unwrap(),
        json!({"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        ]})
    );
}

#[test]
fn tool_use_and_results_map_to_openai_tool_messages() {
    let req = read(json!({
        "model": "m", "max_tokens": 1,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                    {"type": "text", "text": "14:00"}, {"type": "text", "text": "CET"},
                ]},
                {"type": "text", "text": "thanks"},
            ]},
        ],
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&req.messages).unwrap(),
        json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
            ]},
            {"role": "tool", "content": "12C", "tool_call_id": "toolu_1"},
            {"role": "tool", "content": "14:00\nCET", "tool_call_id": "toolu_2"},
            {"role": "user", "content": "thanks"},
        ])
    );
}

#[test]
fn tool_result_images_follow_as_a_user_message() {
    let req = read(json!({
        "model": "m", "max_tokens": 1,
        "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "screenshot"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QQ=="}},
            ]},
        ]}],
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&req.messages).unwrap(),
        json!([
            {"role": "tool", "content": "screenshot", "tool_call_id": "t1"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ=="}},
            ]},
        ])
    );
}

#[test]
fn tools_and_tool_choice_map() {
    let base = json!({
        "model": "m", "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "weather", "description": "Get weather",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    });
    let cases = [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "weather"}),
            json!({"type": "function", "function": {"name": "weather"}}),
        ),
    ];
    for (choice, expected) in cases {
        let mut body = base.clone();
        body["tool_choice"] = choice;
        let req = read(body).unwrap();
        assert_eq!(req.tool_choice, Some(expected));
    }
    let req = read(base.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(req.tools.unwrap()).unwrap(),
        json!([{"type": "function", "function": {
            "name": "weather", "description": "Get weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }}])
    );

    let mut body = base;
    body["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
    let req = read(body).unwrap();
    assert_eq!(req.extra.get("parallel_tool_calls"), Some(&json!(false)));
}

#[test]
fn invalid_fields_are_named_by_path() {
    let cases = [
        (json!({"max_tokens": 1, "messages": []}), "model"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "max_tokens": "10", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (json!({"model": "m", "max_tokens": 1}), "messages"),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": [{"text": "no type"}]},
            ]}),
            "messages[2].content[0].type",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [
                {"role": "user", "content": [{"type": "tool_result", "content": "x"}]},
            ]}),
            "messages[0].content[0].tool_use_id",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                   "tool_choice": {"type": "tool"}}),
            "tool_choice.name",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                   "stop_sequences": ["a", 3]}),
            "stop_sequences[1]",
        ),
    ];
    for (body, param) in cases {
        let err = read(body.clone()).unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some(param), "body: {body}");
    }
}
