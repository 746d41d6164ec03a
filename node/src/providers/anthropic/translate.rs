//! Translation between the gateway's OpenAI chat format and Anthropic's Messages API,
//! for deployments whose upstream is Anthropic: the chat request becomes a
//! `/v1/messages` body, and the Anthropic response becomes a `chat.completion`.
//!
//! Pure functions over JSON values, so the HTTP adapter stays thin and every mapping
//! rule is testable without a network.

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::types::{ChatMessage, ChatRequest, Content, ContentPart, Role, Usage};

/// Builds the `/v1/messages` request body for `req`.
///
/// `default_max_tokens` applies when the client set no output cap, because Anthropic
/// rejects a request without `max_tokens`.
pub fn chat_to_messages(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<Value, Error> {
    if req.messages.is_empty() {
        return Err(Error::invalid(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }

    let mut system: Vec<SystemText> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, msg) in req.messages.iter().enumerate() {
        let (role, mut blocks) = match msg.role {
            Role::System | Role::Developer => {
                let text = msg
                    .content
                    .as_ref()
                    .map(Content::joined_text)
                    .unwrap_or_default();
                if !text.trim().is_empty() {
                    system.push(SystemText {
                        text,
                        cache_control: msg.extra.get("cache_control").cloned(),
                    });
                }
                continue;
            }
            Role::User => ("user", content_blocks(msg.content.as_ref(), i)?),
            Role::Assistant => ("assistant", assistant_blocks(msg, i)?),
            Role::Tool => ("user", vec![tool_result_block(msg, i)?]),
            Role::Function => {
                // The legacy `function` role carries no call id, and Anthropic cannot
                // pair a result with its call without one.
                return Err(Error::invalid(
                    "role `function` is not supported for this model; send tool results with role `tool` and a `tool_call_id`",
                    Some(&format!("messages[{i}].role")),
                ));
            }
        };
        // Anthropic rejects messages without content; an empty OpenAI message says nothing.
        if blocks.is_empty() {
            continue;
        }
        // LiteLLM clients mark prompt-cache breakpoints on the message; Anthropic wants
        // them on a block, and the last one caches the whole message.
        if let Some(cc) = msg.extra.get("cache_control")
            && let Some(Value::Object(last)) = blocks.last_mut()
        {
            last.insert("cache_control".into(), cc.clone());
        }
        // Anthropic requires user and assistant turns to alternate.
        match turns.last_mut() {
            Some(turn) if turn.role == role => turn.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    if turns.is_empty() {
        return Err(Error::invalid(
            "`messages` must contain at least one user or assistant message with content",
            Some("messages"),
        ));
    }

    let messages: Vec<Value> = turns
        .into_iter()
        .map(|turn| {
            let mut blocks = turn.blocks;
            if turn.role == "user" {
                // Anthropic rejects a user turn where text precedes its tool results.
                let (mut results, rest): (Vec<Value>, Vec<Value>) =
                    blocks.into_iter().partition(is_tool_result);
                results.extend(rest);
                blocks = results;
            }
            json!({ "role": turn.role, "content": blocks })
        })
        .collect();

    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert(
        "max_tokens".into(),
        json!(req.output_limit().unwrap_or(default_max_tokens)),
    );
    if let Some(system) = system_value(system) {
        body.insert("system".into(), system);
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = &req.stop {
        let stops = stop.clone().into_vec();
        if !stops.is_empty() {
            body.insert("stop_sequences".into(), json!(stops));
        }
    }
    if let Some(stream) = req.stream {
        body.insert("stream".into(), json!(stream));
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }

    let tools = tools_value(req)?;
    // `tool_choice` is validated even without tools so a typo is reported, but only
    // sent with them: Anthropic rejects a choice among no tools.
    let parallel = req
        .extra
        .get("parallel_tool_calls")
        .and_then(Value::as_bool);
    let choice = match &req.tool_choice {
        Some(choice) => Some(tool_choice_value(choice, parallel)?),
        None if parallel == Some(false) => Some(json!({
            "type": "auto",
            "disable_parallel_tool_use": true,
        })),
        None => None,
    };
    if let Some(tools) = tools {
        body.insert("tools".into(), tools);
        if let Some(choice) = choice {
            body.insert("tool_choice".into(), choice);
        }
    }

    Ok(Value::Object(body))
}

/// Translates an Anthropic message response into an OpenAI `chat.completion`.
///
/// Returns the usage too, because the gateway charges from it and the OpenAI JSON
/// cannot carry cache-write tokens.
pub fn messages_response_to_chat(
    resp: &Value,
    model: &str,
    created: u64,
) -> Result<(Value, Usage), String> {
    let blocks = resp
        .get("content")
        .and_then(Value::as_array)
        .ok_or("Anthropic response has no `content` array")?;

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "arguments": input.to_string(),
                    },
                }));
            }
            // Thinking and server-tool blocks have no place in an OpenAI message.
            _ => {}
        }
    }

    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }

    let usage = resp
        .get("usage")
        .map(|u| {
            let mut counts = AnthropicUsage::default();
            counts.update(u);
            counts.to_usage()
        })
        .unwrap_or_default();

    let chat = json!({
        "id": resp.get("id").and_then(Value::as_str).unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason(resp.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage.to_openai_json(),
    });
    Ok((chat, usage))
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub(crate) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
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
    /// Takes every counter present in `usage`, keeping the others: `message_delta`
    /// may carry only `output_tokens`.
    pub fn update(&mut self, usage: &Value) {
        let take = |key: &str, slot: &mut u64| {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *slot = n;
            }
        };
        take("input_tokens", &mut self.input_tokens);
        take("output_tokens", &mut self.output_tokens);
        take("cache_read_input_tokens", &mut self.cache_read_input_tokens);
        take(
            "cache_creation_input_tokens",
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

    /// The `usage` object of an Anthropic message.
    pub fn to_json(self) -> Value {
        serde_json::json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        })
    }
}

struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

struct SystemText {
    text: String,
    cache_control: Option<Value>,
}

/// A plain string when it can be, since that is the common form; text blocks only
/// when a cache breakpoint must ride on one.
fn system_value(system: Vec<SystemText>) -> Option<Value> {
    if system.is_empty() {
        return None;
    }
    if system.iter().all(|s| s.cache_control.is_none()) {
        let texts: Vec<String> = system.into_iter().map(|s| s.text).collect();
        return Some(Value::String(texts.join("\n")));
    }
    let blocks = system
        .into_iter()
        .map(|s| {
            let mut block = json!({ "type": "text", "text": s.text });
            if let (Some(cc), Value::Object(obj)) = (s.cache_control, &mut block) {
                obj.insert("cache_control".into(), cc);
            }
            block
        })
        .collect();
    Some(Value::Array(blocks))
}

fn is_tool_result(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("tool_result")
}

/// Anthropic rejects text blocks that are empty or only whitespace.
fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({ "type": "text", "text": text }))
}

fn content_blocks(content: Option<&Content>, i: usize) -> Result<Vec<Value>, Error> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(text_block(text).into_iter().collect()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .enumerate()
            .filter_map(|(j, part)| part_block(part, i, j).transpose())
            .collect(),
    }
}

fn part_block(part: &ContentPart, i: usize, j: usize) -> Result<Option<Value>, Error> {
    match part {
        ContentPart::Text { text } => Ok(text_block(text)),
        ContentPart::ImageUrl { image_url } => {
            let source = image_source(&image_url.url).ok_or_else(|| {
                Error::invalid(
                    "image_url.url must be an http(s) URL or a base64 `data:` URL",
                    Some(&format!("messages[{i}].content[{j}].image_url.url")),
                )
            })?;
            Ok(Some(json!({ "type": "image", "source": source })))
        }
        ContentPart::File { file } => {
            let source = file
                .get("file_data")
                .and_then(Value::as_str)
                .and_then(parse_data_url)
                .ok_or_else(|| {
                    Error::invalid(
                        "file parts must carry `file_data` as a base64 `data:` URL for this model",
                        Some(&format!("messages[{i}].content[{j}].file.file_data")),
                    )
                })?;
            Ok(Some(json!({
                "type": "document",
                "source": {
                    "type": "base64",
                    "media_type": source.media_type,
                    "data": source.data,
                },
            })))
        }
        ContentPart::InputAudio { .. } => Err(Error::invalid(
            "audio input is not supported for this model",
            Some(&format!("messages[{i}].content[{j}].type")),
        )),
    }
}

fn image_source(url: &str) -> Option<Value> {
    if let Some(data) = parse_data_url(url) {
        return Some(json!({
            "type": "base64",
            "media_type": data.media_type,
            "data": data.data,
        }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(json!({ "type": "url", "url": url }));
    }
    None
}

struct DataUrl<'a> {
    media_type: &'a str,
    data: &'a str,
}

/// `data:<media-type>[;param]*;base64,<data>`. Only base64 is accepted because that is
/// all Anthropic takes.
fn parse_data_url(url: &str) -> Option<DataUrl<'_>> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let header = header.strip_suffix(";base64")?;
    let media_type = header.split(';').next().unwrap_or_default();
    if media_type.is_empty() || data.is_empty() {
        return None;
    }
    Some(DataUrl { media_type, data })
}

fn assistant_blocks(msg: &ChatMessage, i: usize) -> Result<Vec<Value>, Error> {
    let mut blocks = content_blocks(msg.content.as_ref(), i)?;
    for (j, call) in msg.tool_calls.iter().flatten().enumerate() {
        let path = format!("messages[{i}].tool_calls[{j}].function.arguments");
        let args = call.function.arguments.trim();
        // Streaming clients reassemble a no-argument call as "", which means {}.
        let input = if args.is_empty() {
            json!({})
        } else {
            serde_json::from_str::<Value>(args).map_err(|e| {
                Error::invalid(
                    format!("tool call arguments are not valid JSON: {e}"),
                    Some(&path),
                )
            })?
        };
        if !input.is_object() {
            return Err(Error::invalid(
                "tool call arguments must be a JSON object",
                Some(&path),
            ));
        }
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": input,
        }));
    }
    Ok(blocks)
}

fn tool_result_block(msg: &ChatMessage, i: usize) -> Result<Value, Error> {
    let id = msg.tool_call_id.as_deref().ok_or_else(|| {
        Error::invalid(
            "tool messages require `tool_call_id`",
            Some(&format!("messages[{i}].tool_call_id")),
        )
    })?;
    let mut block = Map::new();
    block.insert("type".into(), json!("tool_result"));
    block.insert("tool_use_id".into(), json!(id));
    let content = match &msg.content {
        None => None,
        Some(Content::Text(text)) => Some(Value::String(text.clone())),
        Some(content @ Content::Parts(parts)) => {
            if parts.iter().all(|p| matches!(p, ContentPart::Text { .. })) {
                Some(Value::String(content.joined_text()))
            } else {
                Some(Value::Array(content_blocks(Some(content), i)?))
            }
        }
    };
    // `content` is optional for Anthropic; leaving out an empty one avoids its
    // empty-text check.
    match content {
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(c) => {
            block.insert("content".into(), c);
        }
        None => {}
    }
    Ok(Value::Object(block))
}

fn tools_value(req: &ChatRequest) -> Result<Option<Value>, Error> {
    let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(tools.len());
    for (k, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(Error::invalid(
                format!("tool type `{}` is not supported for this model", tool.kind),
                Some(&format!("tools[{k}].type")),
            ));
        }
        let mut def = Map::new();
        def.insert("name".into(), json!(tool.function.name));
        if let Some(d) = &tool.function.description {
            def.insert("description".into(), json!(d));
        }
        def.insert(
            "input_schema".into(),
            tool.function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
        );
        out.push(Value::Object(def));
    }
    Ok(Some(Value::Array(out)))
}

fn tool_choice_value(choice: &Value, parallel: Option<bool>) -> Result<Value, Error> {
    let invalid = || {
        Error::invalid(
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
            Some("tool_choice"),
        )
    };
    let mut value = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            // Anthropic takes no parallelism flag on "none".
            "none" => return Ok(json!({ "type": "none" })),
            _ => return Err(invalid()),
        },
        Value::Object(obj) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| obj.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(invalid)?;
            json!({ "type": "tool", "name": name })
        }
        _ => return Err(invalid()),
    };
    if parallel == Some(false)
        && let Value::Object(obj) = &mut value
    {
        obj.insert("disable_parallel_tool_use".into(), json!(true));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        /// One mapping, both ways: Anthropic's counters become the gateway's
        /// usage (what is billed) and come back unchanged for an Anthropic
        /// client, prompt-cache writes included.
        #[test]
        fn anthropic_usage_survives_the_round_trip(
            input in 0u64..1_000_000_000,
            output in 0u64..1_000_000_000,
            read in 0u64..1_000_000_000,
            written in 0u64..1_000_000_000,
        ) {
            let theirs = AnthropicUsage {
                input_tokens: input,
                output_tokens: output,
                cache_read_input_tokens: read,
                cache_creation_input_tokens: written,
            };
            let usage = theirs.to_usage();
            proptest::prop_assert_eq!(usage.prompt_tokens, input + read + written);
            proptest::prop_assert_eq!(AnthropicUsage::from_usage(&usage), theirs);
        }
    }
    use super::*;
    use crate::types::{FunctionCall, FunctionDef, ImageUrl, Stop, Tool, ToolCall};

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
                ContentPart::Text {
                    text: "what is this".into(),
                },
                ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: "data:image/png;base64,iVBORw0KGgo=".into(),
                        detail: None,
                    },
                },
                ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: "https://example.com/cat.jpg".into(),
                        detail: Some("high".into()),
                    },
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
                },
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
                },
            },
            Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: "noop".into(),
                    description: None,
                    parameters: None,
                    strict: None,
                },
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
            },
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
        let (chat, usage) =
            messages_response_to_chat(&resp, "claude-alias", 1_700_000_000).unwrap();
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
        let (chat, usage) = messages_response_to_chat(&resp, "m", 1).unwrap();
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
        let err = messages_response_to_chat(&json!({"id": "x"}), "m", 1).unwrap_err();
        assert_eq!(err, "Anthropic response has no `content` array");
    }
}
