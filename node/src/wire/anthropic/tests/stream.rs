use serde_json::{Value, json};

use super::super::StreamEvent;
use super::super::stream::{ChunksToEvents, EventsToChunks};
use crate::wire::openai::Usage;

/// One event through [`EventsToChunks`], as JSON.
fn on_event(conv: &mut EventsToChunks, data: &Value) -> Result<Vec<Value>, String> {
    let event: StreamEvent = serde_json::from_value(data.clone()).map_err(|e| e.to_string())?;
    let chunks = conv.on_event(&event)?;
    Ok(chunks
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect())
}

type Event = (&'static str, Value);

fn as_json(events: Vec<StreamEvent>) -> Vec<Event> {
    events
        .into_iter()
        .map(|e| (e.name(), serde_json::to_value(&e).unwrap()))
        .collect()
}

/// One chunk through [`ChunksToEvents`], as JSON.
fn on_chunk(conv: &mut ChunksToEvents, chunk: &Value) -> Vec<Event> {
    as_json(conv.on_chunk(&serde_json::from_value(chunk.clone()).unwrap()))
}

fn finish(conv: &mut ChunksToEvents) -> Vec<Event> {
    as_json(conv.finish())
}

fn run(conv: &mut EventsToChunks, events: &[(&str, Value)]) -> Vec<Value> {
    events
        .iter()
        .flat_map(|(_, data)| on_event(conv, data).unwrap())
        .collect()
}

fn deltas(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .map(|c| c["choices"][0]["delta"].clone())
        .collect()
}

fn message_start() -> (&'static str, Value) {
    (
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_abc", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5", "stop_reason": null,
            "usage": {"input_tokens": 12, "output_tokens": 1,
                      "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5},
        }}),
    )
}

#[test]
fn text_stream_produces_openai_chunks() {
    let mut conv = EventsToChunks::new("alias", 42);
    let chunks = run(
        &mut conv,
        &[
            message_start(),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ],
    );
    assert_eq!(chunks.len(), 4);
    assert_eq!(
        chunks[0],
        json!({
            "id": "msg_abc",
            "object": "chat.completion.chunk",
            "created": 42,
            "model": "alias",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}],
        })
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": "lo"}));
    assert_eq!(
        chunks[3]["choices"][0],
        json!({"index": 0, "delta": {}, "finish_reason": "stop"})
    );
    assert_eq!(
        conv.usage(),
        Usage {
            prompt_tokens: 47,
            completion_tokens: 7,
            cached_tokens: 30,
            cache_creation_tokens: 5,
        }
    );
}

#[test]
fn tool_use_blocks_are_numbered_from_zero() {
    let mut conv = EventsToChunks::new("m", 1);
    let chunks = run(
        &mut conv,
        &[
            message_start(),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "xyz"}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}}),
            ),
        ],
    );
    assert_eq!(
        deltas(&chunks),
        vec![
            json!({"role": "assistant", "content": ""}),
            json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
            json!({}),
        ]
    );
    assert_eq!(
        chunks[5]["choices"][0]["finish_reason"],
        json!("tool_calls")
    );
}

#[test]
fn max_tokens_maps_to_length() {
    let mut conv = EventsToChunks::new("m", 1);
    let chunks = run(
        &mut conv,
        &[
            message_start(),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 3}}),
            ),
        ],
    );
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], json!("length"));
}

#[test]
fn error_event_returns_its_message() {
    let mut conv = EventsToChunks::new("m", 1);
    let err = on_event(
        &mut conv,
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
    .unwrap_err();
    assert_eq!(err, "Overloaded");
}

#[test]
fn input_delta_for_unknown_block_is_an_error() {
    let mut conv = EventsToChunks::new("m", 1);
    let err = on_event(&mut conv, &json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{"}}))
        .unwrap_err();
    assert_eq!(
        err,
        "input_json_delta for content block 3, which is not a tool_use block"
    );
}

#[test]
fn usage_chunk_has_no_choices_and_openai_usage() {
    let mut conv = EventsToChunks::new("alias", 9);
    run(
        &mut conv,
        &[
            message_start(),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 8}}),
            ),
        ],
    );
    assert_eq!(
        serde_json::to_value(conv.usage_chunk()).unwrap(),
        json!({
            "id": "msg_abc",
            "object": "chat.completion.chunk",
            "created": 9,
            "model": "alias",
            "choices": [],
            "usage": {
                "prompt_tokens": 47,
                "completion_tokens": 8,
                "total_tokens": 55,
                "prompt_tokens_details": {"cached_tokens": 30},
            },
        })
    );
}

#[test]
fn ignored_events_produce_nothing() {
    let mut conv = EventsToChunks::new("m", 1);
    for name in ["ping", "content_block_stop", "message_stop", "future_event"] {
        assert_eq!(
            on_event(&mut conv, &json!({"type": name})).unwrap(),
            Vec::<Value>::new()
        );
    }
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|(name, _)| *name).collect()
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

#[test]
fn text_stream_becomes_anthropic_events() {
    let mut conv = ChunksToEvents::new("claude-alias", "msg_1");
    let mut events = on_chunk(
        &mut conv,
        &chunk(json!({"role": "assistant", "content": ""}), None),
    );
    events.extend(on_chunk(&mut conv, &chunk(json!({"content": "Hel"}), None)));
    events.extend(on_chunk(
        &mut conv,
        &chunk(json!({"content": "lo"}), Some("stop")),
    ));
    events.extend(on_chunk(
        &mut conv,
        &json!({
            "id": "chatcmpl-1", "choices": [],
            "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32,
                      "prompt_tokens_details": {"cached_tokens": 10}},
        }),
    ));
    events.extend(finish(&mut conv));
    assert_eq!(
        names(&events),
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(
        events[0].1,
        json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-alias",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }})
    );
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        events[3].1,
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}})
    );
    assert_eq!(
        events[4].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[5].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"input_tokens": 20, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 0, "output_tokens": 2}})
    );
    assert_eq!(events[6].1, json!({"type": "message_stop"}));
    for (name, data) in &events {
        assert_eq!(data["type"], json!(name));
    }
    assert!(finish(&mut conv).is_empty());
}

#[test]
fn tool_call_stream_opens_one_block_per_call() {
    let mut conv = ChunksToEvents::new("m", "msg_2");
    let mut events = on_chunk(&mut conv, &chunk(json!({"content": "Checking."}), None));
    events.extend(on_chunk(
        &mut conv,
        &chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
            None,
        ),
    ));
    events.extend(on_chunk(
        &mut conv,
        &chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            None,
        ),
    ));
    events.extend(on_chunk(
        &mut conv,
        &chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "time", "arguments": "{}"}}]}),
            None,
        ),
    ));
    events.extend(on_chunk(&mut conv, &chunk(json!({}), Some("tool_calls"))));
    events.extend(finish(&mut conv));
    let summary: Vec<(&str, Value)> = events
        .iter()
        .map(|(name, data)| (*name, data.get("index").cloned().unwrap_or(Value::Null)))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("message_start", Value::Null),
            ("content_block_start", json!(0)),
            ("content_block_delta", json!(0)),
            ("content_block_stop", json!(0)),
            ("content_block_start", json!(1)),
            ("content_block_delta", json!(1)),
            ("content_block_stop", json!(1)),
            ("content_block_start", json!(2)),
            ("content_block_delta", json!(2)),
            ("content_block_stop", json!(2)),
            ("message_delta", Value::Null),
            ("message_stop", Value::Null),
        ]
    );
    assert_eq!(
        events[4].1["content_block"],
        json!({"type": "tool_use", "id": "call_a", "name": "weather", "input": {}})
    );
    assert_eq!(
        events[5].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"city\":"})
    );
    assert_eq!(events[7].1["content_block"]["id"], json!("call_b"));
    assert_eq!(events[10].1["delta"]["stop_reason"], json!("tool_use"));
    assert_eq!(events[10].1["usage"], json!({"output_tokens": 0}));
}

#[test]
fn empty_stream_still_forms_a_valid_message() {
    let mut conv = ChunksToEvents::new("m", "msg_3");
    let events = finish(&mut conv);
    assert_eq!(
        names(&events),
        vec!["message_start", "message_delta", "message_stop"]
    );
    assert_eq!(events[1].1["delta"]["stop_reason"], json!("end_turn"));
}

#[test]
fn tool_calls_with_stop_finish_report_tool_use() {
    let mut conv = ChunksToEvents::new("m", "msg_4");
    on_chunk(
        &mut conv,
        &chunk(
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
            Some("stop"),
        ),
    );
    let events = finish(&mut conv);
    assert_eq!(events[1].1["delta"]["stop_reason"], json!("tool_use"));
    assert_eq!(
        events[0].1,
        json!({"type": "content_block_stop", "index": 0})
    );
}
