//! Turns an Anthropic Messages event stream into OpenAI `chat.completion.chunk`
//! objects, one event at a time, so a client of the OpenAI API can stream from an
//! Anthropic deployment without the gateway buffering the response.

use serde_json::{Value, json};

use super::translate::{AnthropicUsage, finish_reason};
use crate::types::Usage;

/// Stateful converter for one Anthropic stream.
#[derive(Debug)]
pub struct EventsToChunks {
    model: String,
    created: u64,
    /// The Anthropic message id, learnt from `message_start`.
    id: String,
    usage: AnthropicUsage,
    /// Anthropic numbers content blocks across text and tools; OpenAI numbers tool
    /// calls alone. Maps an Anthropic block index to its OpenAI tool-call index.
    tool_blocks: Vec<(u64, usize)>,
}

impl EventsToChunks {
    pub fn new(model: &str, created: u64) -> Self {
        Self {
            model: model.to_owned(),
            created,
            id: String::new(),
            usage: AnthropicUsage::default(),
            tool_blocks: Vec::new(),
        }
    }

    /// Consumes one event (`event:` name and parsed `data:`), returning the chunks it
    /// produces. An `error` event becomes `Err` with Anthropic's message.
    pub fn on_event(&mut self, event: &str, data: &Value) -> Result<Vec<Value>, String> {
        match event {
            "message_start" => {
                let message = data.get("message");
                if let Some(id) = message.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    id.clone_into(&mut self.id);
                }
                if let Some(usage) = message.and_then(|m| m.get("usage")) {
                    self.usage.update(usage);
                }
                Ok(vec![self.chunk(
                    json!({ "role": "assistant", "content": "" }),
                    None,
                )])
            }
            "content_block_start" => {
                let Some(block) = data.get("content_block") else {
                    return Ok(Vec::new());
                };
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let k = self.tool_blocks.len();
                        self.tool_blocks.push((block_index(data), k));
                        Ok(vec![self.chunk(
                            json!({ "tool_calls": [{
                                "index": k,
                                "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                                "type": "function",
                                "function": {
                                    "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                                    "arguments": "",
                                },
                            }]}),
                            None,
                        )])
                    }
                    // A text block normally starts empty; its text arrives as deltas.
                    Some("text") => Ok(block
                        .get("text")
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                        .map(|t| self.chunk(json!({ "content": t }), None))
                        .into_iter()
                        .collect()),
                    _ => Ok(Vec::new()),
                }
            }
            "content_block_delta" => {
                let Some(delta) = data.get("delta") else {
                    return Ok(Vec::new());
                };
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => Ok(delta
                        .get("text")
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                        .map(|t| self.chunk(json!({ "content": t }), None))
                        .into_iter()
                        .collect()),
                    Some("input_json_delta") => {
                        let partial = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        // Anthropic opens every tool input with an empty delta; it adds nothing.
                        if partial.is_empty() {
                            return Ok(Vec::new());
                        }
                        let index = block_index(data);
                        let k = self
                            .tool_blocks
                            .iter()
                            .find(|(block, _)| *block == index)
                            .map(|(_, k)| *k)
                            .ok_or_else(|| {
                                format!("input_json_delta for content block {index}, which is not a tool_use block")
                            })?;
                        Ok(vec![self.chunk(
                            json!({ "tool_calls": [{
                                "index": k,
                                "function": { "arguments": partial },
                            }]}),
                            None,
                        )])
                    }
                    // Reasoning has no field in the chat format; dropped as in non-streaming.
                    _ => Ok(Vec::new()),
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.usage.update(usage);
                }
                let stop = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                Ok(vec![self.chunk(json!({}), Some(finish_reason(stop)))])
            }
            "error" => Err(data
                .get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("Anthropic stream reported an error without a message")
                .to_owned()),
            // ping, content_block_stop, message_stop, and event types added later.
            _ => Ok(Vec::new()),
        }
    }

    /// Usage so far; complete once `message_delta` has been seen.
    pub fn usage(&self) -> Usage {
        self.usage.to_usage()
    }

    /// The final chunk OpenAI sends when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage().to_openai_json(),
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason,
            }],
        })
    }
}

fn block_index(data: &Value) -> u64 {
    data.get("index").and_then(Value::as_u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(conv: &mut EventsToChunks, events: &[(&str, Value)]) -> Vec<Value> {
        events
            .iter()
            .flat_map(|(name, data)| conv.on_event(name, data).unwrap())
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
        let err = conv
            .on_event(
                "error",
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            )
            .unwrap_err();
        assert_eq!(err, "Overloaded");
    }

    #[test]
    fn input_delta_for_unknown_block_is_an_error() {
        let mut conv = EventsToChunks::new("m", 1);
        let err = conv
            .on_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{"}}),
            )
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
            conv.usage_chunk(),
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
                conv.on_event(name, &json!({"type": name})).unwrap(),
                Vec::<Value>::new()
            );
        }
    }
}
