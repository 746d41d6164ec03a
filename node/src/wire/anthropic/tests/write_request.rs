use serde_json::{Map, json};

use crate::error::Error;
use crate::wire::anthropic::write_request;

/// The body as JSON, as it goes on the wire.
fn chat_to_messages(req: &ChatRequest, model: &str, max: u32) -> Result<serde_json::Value, Error> {
    write_request::chat_to_messages(req, model, max).map(|b| serde_json::to_value(b).unwrap())
}
use crate::wire::openai::*;

fn request(messages: Vec<ChatMessage>) -> ChatRequest {
    ChatRequest {
        model: "claude".into(),
        messages,
        ..Default::default()
    }
}

fn assistant_call(id: &str, name: &str, args: &str) -> ChatMessage {
    ChatMessage {
        role: Role::Assistant,
        content: None,
        name: None,
        tool_calls: Some(vec![ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: args.into(),
            },
        }]),
        tool_call_id: None,
        extra: Map::new(),
    }
}

fn tool_result(id: &str, text: &str) -> ChatMessage {
    ChatMessage {
        tool_call_id: Some(id.into()),
        ..ChatMessage::text(Role::Tool, text)
    }
}

fn param_of(err: Error) -> Option<String> {
    match err {
        Error::InvalidRequest { param, .. } => param,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[test]
fn basic_request_maps_system_params_and_defaults() {
    let mut req = request(vec![
        ChatMessage::text(Role::System, "be brief"),
        ChatMessage::text(Role::Developer, "use metric"),
        ChatMessage::text(Role::User, "hi"),
    ]);
    req.temperature = Some(0.5);
    req.top_p = Some(0.9);
    req.stop = Some(Stop::One("END".into()));
    req.stream = Some(true);
    req.user = Some("cust-1".into());
    let body = chat_to_messages(&req, "claude-sonnet-4-5", 4096).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude-sonnet-4-5",
            "system": "be brief\nuse metric",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 4096,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "cust-1"},
        })
    );
}

#[test]
fn output_limit_overrides_default_max_tokens() {
    let mut req = request(vec![ChatMessage::text(Role::User, "hi")]);
    req.max_tokens = Some(100);
    req.max_completion_tokens = Some(50);
    let body = chat_to_messages(&req, "m", 4096).unwrap();
    assert_eq!(body["max_tokens"], json!(50));
}

#[test]
fn images_become_base64_and_url_sources() {
    let req = request(vec![ChatMessage {
        content: Some(Content::Parts(vec![
            ContentPart::text("what is this"),
            ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: "data:image/png;base64,iVBORw0KGgo=".into(),
                    detail: None,
                    extra: Default::default(),
                },
                extra: Default::default(),
            },
            ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: "https://example.com/cat.jpg".into(),
                    detail: Some("high".into()),
                    extra: Default::default(),
                },
                extra: Default::default(),
            },
        ])),
        ..ChatMessage::text(Role::User, "")
    }]);
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
}

#[test]
fn bad_image_url_names_the_part() {
    let req = request(vec![ChatMessage {
        content: Some(Content::Parts(vec![ContentPart::ImageUrl {
            image_url: ImageUrl {
                url: "ftp://x/y.png".into(),
                detail: None,
                extra: Default::default(),
            },
            extra: Default::default(),
        }])),
        ..ChatMessage::text(Role::User, "")
    }]);
    let err = chat_to_messages(&req, "m", 10).unwrap_err();
    assert_eq!(
        param_of(err).as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
}

#[test]
fn tool_round_trip_merges_consecutive_results() {
    let mut first = assistant_call("call_1", "weather", r#"{"city":"Oslo"}"#);
    first.content = Some(Content::Text("Checking.".into()));
    if let Some(calls) = first.tool_calls.as_mut() {
        calls.push(ToolCall {
            id: "call_2".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "time".into(),
                arguments: String::new(),
            },
        });
    }
    let req = request(vec![
        ChatMessage::text(Role::User, "weather and time in Oslo?"),
        first,
        tool_result("call_1", "12C"),
        tool_result("call_2", "14:00"),
        ChatMessage::text(Role::User, "thanks"),
    ]);
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "weather and time in Oslo?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "12C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "14:00"},
                {"type": "text", "text": "thanks"},
            ]},
        ])
    );
}

#[test]
fn tool_results_are_moved_before_text_in_a_merged_user_turn() {
    let req = request(vec![
        ChatMessage::text(Role::User, "go"),
        assistant_call("call_1", "f", "{}"),
        ChatMessage::text(Role::User, "note"),
        tool_result("call_1", "done"),
    ]);
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["messages"][2]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "call_1", "content": "done"},
            {"type": "text", "text": "note"},
        ])
    );
}

#[test]
fn consecutive_user_messages_merge_and_empty_ones_drop() {
    let req = request(vec![
        ChatMessage::text(Role::User, "a"),
        ChatMessage::text(Role::Assistant, ""),
        ChatMessage::text(Role::User, "b"),
    ]);
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "text", "text": "b"},
        ]}])
    );
}

#[test]
fn invalid_tool_arguments_name_the_field() {
    let req = request(vec![
        ChatMessage::text(Role::User, "go"),
        assistant_call("call_1", "f", "{not json"),
    ]);
    let err = chat_to_messages(&req, "m", 10).unwrap_err();
    assert_eq!(
        param_of(err).as_deref(),
        Some("messages[1].tool_calls[0].function.arguments")
    );
}

#[test]
fn tool_message_without_call_id_is_rejected() {
    let req = request(vec![
        ChatMessage::text(Role::User, "go"),
        ChatMessage::text(Role::Tool, "x"),
    ]);
    let err = chat_to_messages(&req, "m", 10).unwrap_err();
    assert_eq!(param_of(err).as_deref(), Some("messages[1].tool_call_id"));
}

#[test]
fn empty_or_system_only_conversations_are_rejected() {
    let err = chat_to_messages(&request(vec![]), "m", 10).unwrap_err();
    assert_eq!(param_of(err).as_deref(), Some("messages"));
    let err = chat_to_messages(
        &request(vec![ChatMessage::text(Role::System, "sys")]),
        "m",
        10,
    )
    .unwrap_err();
    assert_eq!(param_of(err).as_deref(), Some("messages"));
}

#[test]
fn tools_and_tool_choice_map() {
    let mut req = request(vec![ChatMessage::text(Role::User, "hi")]);
    req.tools = Some(vec![
        Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: "weather".into(),
                description: Some("Get weather".into()),
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                ),
                strict: None,
                extra: Default::default(),
            },
            extra: Default::default(),
        },
        Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: "noop".into(),
                description: None,
                parameters: None,
                strict: None,
                extra: Default::default(),
            },
            extra: Default::default(),
        },
    ]);
    let cases = [
        (json!("auto"), json!({"type": "auto"})),
        (json!("required"), json!({"type": "any"})),
        (json!("none"), json!({"type": "none"})),
        (
            json!({"type": "function", "function": {"name": "weather"}}),
            json!({"type": "tool", "name": "weather"}),
        ),
    ];
    for (choice, expected) in cases {
        req.tool_choice = Some(choice);
        let body = chat_to_messages(&req, "m", 10).unwrap();
        assert_eq!(body["tool_choice"], expected);
    }
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["tools"],
        json!([
            {"name": "weather", "description": "Get weather",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
        ])
    );

    req.tool_choice = Some(json!("sometimes"));
    let err = chat_to_messages(&req, "m", 10).unwrap_err();
    assert_eq!(param_of(err).as_deref(), Some("tool_choice"));
}

#[test]
fn parallel_tool_calls_false_disables_parallel_use() {
    let mut req = request(vec![ChatMessage::text(Role::User, "hi")]);
    req.tools = Some(vec![Tool {
        kind: "function".into(),
        function: FunctionDef {
            name: "f".into(),
            description: None,
            parameters: None,
            strict: None,
            extra: Default::default(),
        },
        extra: Default::default(),
    }]);
    req.extra.insert("parallel_tool_calls".into(), json!(false));
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    req.tool_choice = Some(json!("required"));
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn tool_choice_without_tools_is_omitted() {
    let mut req = request(vec![ChatMessage::text(Role::User, "hi")]);
    req.tool_choice = Some(json!("auto"));
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(body.get("tool_choice"), None);
    assert_eq!(body.get("tools"), None);
}

#[test]
fn message_cache_control_lands_on_last_block_and_forces_system_blocks() {
    let mut sys = ChatMessage::text(Role::System, "long context");
    sys.extra
        .insert("cache_control".into(), json!({"type": "ephemeral"}));
    let mut user = ChatMessage::text(Role::User, "q");
    user.extra
        .insert("cache_control".into(), json!({"type": "ephemeral"}));
    let req = request(vec![sys, ChatMessage::text(Role::System, "more"), user]);
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["system"],
        json!([
            {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "more"},
        ])
    );
    assert_eq!(
        body["messages"][0]["content"],
        json!([{"type": "text", "text": "q", "cache_control": {"type": "ephemeral"}}])
    );
}

#[test]
fn pdf_file_part_becomes_document() {
    let req = request(vec![ChatMessage {
        content: Some(Content::Parts(vec![ContentPart::File {
            file: json!({"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}),
        }])),
        ..ChatMessage::text(Role::User, "")
    }]);
    let body = chat_to_messages(&req, "m", 10).unwrap();
    assert_eq!(
        body["messages"][0]["content"],
        json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}])
    );
}
