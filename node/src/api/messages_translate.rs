//! Translation for Meridian's own `POST /v1/messages` endpoint: clients speak
//! Anthropic's Messages API, while routing and every provider adapter work in the
//! OpenAI chat format. The request goes Anthropic → chat; the response, whole or
//! streamed, goes chat → Anthropic.
//!
//! The request side validates as it goes, naming the offending field by path, since
//! this is the first code that reads the client's body.
//!
//! Size: past the ~600-line rule, knowingly for now. It holds both
//! directions of one translation over `serde_json::Value`. Issue 16, item 3
//! replaces it with typed wire structs per format (Anthropic's in one place,
//! beside `providers/anthropic/translate.rs`), which splits it by direction.

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::providers::anthropic::translate::AnthropicUsage;
use crate::types::{
    ChatMessage, ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl,
    OpenAiUsage, Role, Stop, StreamOptions, Tool, ToolCall, Usage,
};

/// Parses an Anthropic Messages request into the gateway's chat request.
pub fn messages_to_chat(body: Value) -> Result<ChatRequest, Error> {
    let Value::Object(body) = body else {
        return Err(Error::invalid("request body must be a JSON object", None));
    };

    let model = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(invalid("`model` must be a non-empty string", "model")),
        None => return Err(invalid("`model` is required", "model")),
    };
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err(invalid("`max_tokens` is required", "max_tokens")),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid("`max_tokens` must be a positive integer", "max_tokens"))?,
    };

    let mut messages = Vec::new();
    if let Some(system) = system_text(body.get("system"))? {
        messages.push(ChatMessage::text(Role::System, system));
    }
    let raw_messages = match body.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "`messages` must contain at least one message",
                "messages",
            ));
        }
        Some(_) => return Err(invalid("`messages` must be an array", "messages")),
        None => return Err(invalid("`messages` is required", "messages")),
    };
    for (i, msg) in raw_messages.iter().enumerate() {
        convert_message(msg, i, &mut messages)?;
    }

    let stream = optional_bool(&body, "stream")?;
    let mut req = ChatRequest {
        model,
        messages,
        stream,
        // The Anthropic stream reports output tokens in `message_delta`, so the
        // upstream must send its usage chunk whatever the client asked.
        stream_options: (stream == Some(true)).then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        max_tokens: Some(max_tokens),
        temperature: optional_f64(&body, "temperature")?,
        top_p: optional_f64(&body, "top_p")?,
        stop: stop_sequences(body.get("stop_sequences"))?,
        tools: tools(body.get("tools"))?,
        user: metadata_user(body.get("metadata"))?,
        ..Default::default()
    };
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = tool_choice(choice)?;
        req.tool_choice = Some(choice);
        if parallel == Some(false) && req.tools.is_some() {
            req.extra.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(req)
}

/// Translates a whole OpenAI `chat.completion` into an Anthropic message object.
/// `model` is the name the client asked for, which is what Anthropic echoes.
/// `usage` is the call's usage as the gateway settled it, when it has it:
/// it keeps what the OpenAI-format body cannot carry (tokens written to the
/// provider's prompt cache).
pub fn chat_response_to_messages(
    chat: &Value,
    model: &str,
    usage: Option<Usage>,
) -> Result<Value, String> {
    let choice = chat
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("chat completion has no choices")?;
    let message = choice
        .get("message")
        .ok_or("chat completion choice has no message")?;

    let mut content = Vec::new();
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some OpenAI-compatible servers answer with content parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({ "type": "text", "text": text }));
    }
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for call in calls {
        let function = call.get("function");
        let arguments = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        // A model can emit broken JSON; Anthropic clients expect an object regardless.
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
            "name": function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default(),
            "input": input,
        }));
    }

    let usage = usage.unwrap_or_else(|| {
        chat.get("usage")
            .and_then(|u| serde_json::from_value::<OpenAiUsage>(u.clone()).ok())
            .map(Usage::from)
            .unwrap_or_default()
    });
    let id = chat.get("id").and_then(Value::as_str).unwrap_or_default();

    Ok(json!({
        "id": message_id(id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(
            choice.get("finish_reason").and_then(Value::as_str),
            !calls.is_empty(),
        ),
        "stop_sequence": null,
        "usage": anthropic_usage(&usage),
    }))
}

/// Stateful converter from OpenAI chat chunks to Anthropic stream events for one
/// response.
#[derive(Debug)]
pub struct ChunksToEvents {
    model: String,
    message_id: String,
    started: bool,
    finished: bool,
    /// Index the next content block gets.
    next_index: usize,
    open: Option<OpenBlock>,
    /// OpenAI tool-call index → Anthropic content-block index, for every tool call seen.
    tool_blocks: Vec<(u64, usize)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenBlock {
    Text(usize),
    Tool { call: u64, index: usize },
}

impl OpenBlock {
    fn index(self) -> usize {
        match self {
            OpenBlock::Text(index) | OpenBlock::Tool { index, .. } => index,
        }
    }
}

type Event = (&'static str, Value);

impl ChunksToEvents {
    pub fn new(model: &str, message_id: &str) -> Self {
        Self {
            model: model.to_owned(),
            message_id: message_id.to_owned(),
            started: false,
            finished: false,
            next_index: 0,
            open: None,
            tool_blocks: Vec::new(),
            finish_reason: None,
            usage: None,
        }
    }

    /// Takes the usage the gateway read from the provider's own stream (it
    /// keeps what the OpenAI-format chunk cannot carry: tokens written to the
    /// prompt cache) over the chunk's.
    pub fn observe_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// Consumes one parsed `chat.completion.chunk`, returning the events it yields.
    pub fn on_chunk(&mut self, chunk: &Value) -> Vec<Event> {
        let mut events = Vec::new();
        self.start(&mut events);

        if let Some(usage) = chunk
            .get("usage")
            .filter(|u| u.is_object())
            .and_then(|u| serde_json::from_value::<OpenAiUsage>(u.clone()).ok())
        {
            self.usage = Some(Usage::from(usage));
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return events;
        };

        if let Some(delta) = choice.get("delta") {
            if let Some(text) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.text_delta(text, &mut events);
            }
            let calls = delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (pos, call) in calls.iter().enumerate() {
                self.tool_call_delta(call, pos, &mut events);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        events
    }

    /// Ends the stream: closes the open block, then `message_delta` and
    /// `message_stop`. A second call yields nothing.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.start(&mut events);
        self.close(&mut events);
        self.finished = true;

        // message_start went out before the upstream counted the prompt; Anthropic's
        // own message_delta also carries the input counts, and SDKs take them from it.
        let usage = match &self.usage {
            Some(u) => AnthropicUsage::from_usage(u).to_json(),
            None => json!({ "output_tokens": 0 }),
        };
        events.push((
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(
                        self.finish_reason.as_deref(),
                        !self.tool_blocks.is_empty(),
                    ),
                    "stop_sequence": null,
                },
                "usage": usage,
            }),
        ));
        events.push(("message_stop", json!({ "type": "message_stop" })));
        events
    }

    fn start(&mut self, events: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        events.push((
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 },
                },
            }),
        ));
    }

    fn close(&mut self, events: &mut Vec<Event>) {
        if let Some(block) = self.open.take() {
            events.push((
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": block.index() }),
            ));
        }
    }

    fn open(&mut self, block: Value, events: &mut Vec<Event>) -> usize {
        self.close(events);
        let index = self.next_index;
        self.next_index += 1;
        events.push((
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
        ));
        index
    }

    fn text_delta(&mut self, text: &str, events: &mut Vec<Event>) {
        let index = match self.open {
            Some(OpenBlock::Text(index)) => index,
            _ => {
                let index = self.open(json!({ "type": "text", "text": "" }), events);
                self.open = Some(OpenBlock::Text(index));
                index
            }
        };
        events.push((
            "content_block_delta",
            json!({
                "type": "content_block_delta",
                "index": index,
                "delta": { "type": "text_delta", "text": text },
            }),
        ));
    }

    fn tool_call_delta(&mut self, call: &Value, pos: usize, events: &mut Vec<Event>) {
        // Some OpenAI-compatible servers leave out `index` when a chunk holds whole calls.
        let k = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let index = match self.open {
            Some(OpenBlock::Tool { call, index }) if call == k => index,
            _ => match self.tool_blocks.iter().find(|(c, _)| *c == k) {
                // Blocks cannot be reopened; a late fragment of an earlier call still
                // belongs to that call's block, which is where SDKs accumulate it.
                Some(&(_, index)) => index,
                None => {
                    let function = call.get("function");
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("toolu_{}_{k}", self.message_id));
                    let name = function
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let index = self.open(
                        json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                        events,
                    );
                    self.open = Some(OpenBlock::Tool { call: k, index });
                    self.tool_blocks.push((k, index));
                    index
                }
            },
        };
        if let Some(args) = call
            .get("function")
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            events.push((
                "content_block_delta",
                json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": { "type": "input_json_delta", "partial_json": args },
                }),
            ));
        }
    }
}

fn invalid(message: &str, param: &str) -> Error {
    Error::invalid(message, Some(param))
}

/// Anthropic message ids start with `msg_`; clients may rely on the prefix.
fn message_id(chat_id: &str) -> String {
    if chat_id.starts_with("msg_") {
        chat_id.to_owned()
    } else {
        format!("msg_{chat_id}")
    }
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`. Some providers finish a
/// tool call with "stop"; Anthropic clients decide whether to run tools by
/// `tool_use`, so tool calls win over a plain stop.
fn stop_reason(finish_reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "end_turn",
        _ if has_tool_calls => "tool_use",
        _ => "end_turn",
    }
}

/// Anthropic counts cached tokens apart from `input_tokens`; OpenAI includes them.
fn anthropic_usage(usage: &Usage) -> Value {
    AnthropicUsage::from_usage(usage).to_json()
}

fn optional_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(&format!("`{key}` must be a boolean"), key)),
    }
}

fn optional_f64(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(&format!("`{key}` must be a number"), key)),
    }
}

fn system_text(system: Option<&Value>) -> Result<Option<String>, Error> {
    let text = match system {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.iter().enumerate() {
                let path = format!("system[{k}]");
                if block_type(block, &path)? != "text" {
                    return Err(invalid(
                        "system blocks must be of type `text`",
                        &format!("{path}.type"),
                    ));
                }
                texts.push(required_str(block, "text", &path)?.to_owned());
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(invalid(
                "`system` must be a string or an array of text blocks",
                "system",
            ));
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

fn block_type<'a>(block: &'a Value, path: &str) -> Result<&'a str, Error> {
    if !block.is_object() {
        return Err(invalid("content block must be an object", path));
    }
    block.get("type").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            "content block needs a string `type`",
            &format!("{path}.type"),
        )
    })
}

fn required_str<'a>(obj: &'a Value, key: &str, path: &str) -> Result<&'a str, Error> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        invalid(
            &format!("`{key}` is required and must be a string"),
            &format!("{path}.{key}"),
        )
    })
}

/// Appends the chat messages for Anthropic message `i` to `out`.
fn convert_message(msg: &Value, i: usize, out: &mut Vec<ChatMessage>) -> Result<(), Error> {
    let path = format!("messages[{i}]");
    if !msg.is_object() {
        return Err(invalid("message must be an object", &path));
    }
    let role = match msg.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(invalid(
                "`role` must be \"user\" or \"assistant\"",
                &format!("{path}.role"),
            ));
        }
    };
    let blocks = match msg.get("content") {
        Some(Value::String(s)) => {
            out.push(ChatMessage::text(role, s.clone()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                "`content` must be a string or an array of content blocks",
                &format!("{path}.content"),
            ));
        }
    };
    match role {
        Role::Assistant => out.push(assistant_message(blocks, &path)?),
        _ => {
            if blocks.is_empty() {
                return Err(invalid(
                    "user messages must have non-empty content",
                    &format!("{path}.content"),
                ));
            }
            user_messages(blocks, &path, out)?;
        }
    }
    Ok(())
}

fn assistant_message(blocks: &[Value], path: &str) -> Result<ChatMessage, Error> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("{path}.content[{j}]");
        match block_type(block, &path)? {
            "text" => text.push_str(required_str(block, "text", &path)?),
            "tool_use" => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(ToolCall {
                    id: required_str(block, "id", &path)?.to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: required_str(block, "name", &path)?.to_owned(),
                        arguments: input.to_string(),
                    },
                });
            }
            // Earlier model reasoning has no place in the chat format.
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(invalid(
                    &format!("content block type `{other}` is not supported in assistant messages"),
                    &format!("{path}.type"),
                ));
            }
        }
    }
    let content = if text.is_empty() && !calls.is_empty() {
        None
    } else {
        Some(Content::Text(text))
    };
    Ok(ChatMessage {
        role: Role::Assistant,
        content,
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        extra: Map::new(),
    })
}

/// OpenAI carries each tool result as its own `tool` message, and they must directly
/// follow the assistant's calls, so results come first and the rest of the user turn
/// follows as a user message.
fn user_messages(blocks: &[Value], path: &str, out: &mut Vec<ChatMessage>) -> Result<(), Error> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("{path}.content[{j}]");
        match block_type(block, &path)? {
            "text" => parts.push(ContentPart::Text {
                text: required_str(block, "text", &path)?.to_owned(),
            }),
            "image" => parts.push(image_part(block, &path)?),
            "document" => parts.push(document_part(block, &path)?),
            "tool_result" => {
                let id = required_str(block, "tool_use_id", &path)?.to_owned();
                let (text, images) = tool_result_content(block.get("content"), &path)?;
                out.push(ChatMessage {
                    tool_call_id: Some(id),
                    ..ChatMessage::text(Role::Tool, text)
                });
                // OpenAI tool messages cannot hold images; the next user message can,
                // so the model still sees them.
                parts.extend(images);
            }
            other => {
                return Err(invalid(
                    &format!("content block type `{other}` is not supported in user messages"),
                    &format!("{path}.type"),
                ));
            }
        }
    }
    let content = match parts.as_slice() {
        [] => return Ok(()),
        [ContentPart::Text { text }] => Content::Text(text.clone()),
        _ => Content::Parts(parts),
    };
    out.push(ChatMessage {
        content: Some(content),
        ..ChatMessage::text(Role::User, "")
    });
    Ok(())
}

fn tool_result_content(
    content: Option<&Value>,
    path: &str,
) -> Result<(String, Vec<ContentPart>), Error> {
    match content {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (k, block) in blocks.iter().enumerate() {
                let path = format!("{path}.content[{k}]");
                match block_type(block, &path)? {
                    "text" => texts.push(required_str(block, "text", &path)?),
                    "image" => images.push(image_part(block, &path)?),
                    other => {
                        return Err(invalid(
                            &format!(
                                "content block type `{other}` is not supported in tool results"
                            ),
                            &format!("{path}.type"),
                        ));
                    }
                }
            }
            Ok((texts.join("\n"), images))
        }
        Some(_) => Err(invalid(
            "tool_result `content` must be a string or an array of content blocks",
            &format!("{path}.content"),
        )),
    }
}

fn source_of<'a>(block: &'a Value, path: &str) -> Result<(&'a Value, &'a str), Error> {
    let source = block
        .get("source")
        .filter(|s| s.is_object())
        .ok_or_else(|| invalid("`source` must be an object", &format!("{path}.source")))?;
    let kind = required_str(source, "type", &format!("{path}.source"))?;
    Ok((source, kind))
}

fn image_part(block: &Value, path: &str) -> Result<ContentPart, Error> {
    let (source, kind) = source_of(block, path)?;
    let source_path = format!("{path}.source");
    let url = match kind {
        "base64" => format!(
            "data:{};base64,{}",
            required_str(source, "media_type", &source_path)?,
            required_str(source, "data", &source_path)?,
        ),
        "url" => required_str(source, "url", &source_path)?.to_owned(),
        _ => {
            return Err(invalid(
                "image source type must be `base64` or `url`",
                &format!("{source_path}.type"),
            ));
        }
    };
    Ok(ContentPart::ImageUrl {
        image_url: ImageUrl { url, detail: None },
    })
}

fn document_part(block: &Value, path: &str) -> Result<ContentPart, Error> {
    let (source, kind) = source_of(block, path)?;
    let source_path = format!("{path}.source");
    match kind {
        "base64" => {
            let mut file = Map::new();
            if let Some(title) = block.get("title").and_then(Value::as_str) {
                file.insert("filename".into(), json!(title));
            }
            file.insert(
                "file_data".into(),
                json!(format!(
                    "data:{};base64,{}",
                    required_str(source, "media_type", &source_path)?,
                    required_str(source, "data", &source_path)?,
                )),
            );
            Ok(ContentPart::File {
                file: Value::Object(file),
            })
        }
        // A plain-text document is just text to a chat model.
        "text" => Ok(ContentPart::Text {
            text: required_str(source, "data", &source_path)?.to_owned(),
        }),
        _ => Err(invalid(
            "document source type must be `base64` or `text`",
            &format!("{source_path}.type"),
        )),
    }
}

fn stop_sequences(value: Option<&Value>) -> Result<Option<Stop>, Error> {
    let items = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(invalid(
                "`stop_sequences` must be an array of strings",
                "stop_sequences",
            ));
        }
    };
    let mut stops = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let s = item.as_str().ok_or_else(|| {
            invalid(
                "stop sequences must be strings",
                &format!("stop_sequences[{k}]"),
            )
        })?;
        stops.push(s.to_owned());
    }
    Ok((!stops.is_empty()).then_some(Stop::Many(stops)))
}

fn tools(value: Option<&Value>) -> Result<Option<Vec<Tool>>, Error> {
    let items = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("`tools` must be an array", "tools")),
    };
    let mut tools = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let path = format!("tools[{k}]");
        if !item.is_object() {
            return Err(invalid("tool must be an object", &path));
        }
        // Anthropic's server tools (web search, bash, ...) run inside Anthropic and
        // cannot be offered to an arbitrary provider.
        match item.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "custom" => {}
            Some(other) => {
                return Err(invalid(
                    &format!(
                        "tool type {other} is not supported; only custom tools with an `input_schema` are"
                    ),
                    &format!("{path}.type"),
                ));
            }
        }
        let name = required_str(item, "name", &path)?.to_owned();
        let description = match item.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(invalid(
                    "`description` must be a string",
                    &format!("{path}.description"),
                ));
            }
        };
        let schema = item
            .get("input_schema")
            .filter(|s| s.is_object())
            .cloned()
            .ok_or_else(|| {
                invalid(
                    "`input_schema` is required and must be an object",
                    &format!("{path}.input_schema"),
                )
            })?;
        tools.push(Tool {
            kind: "function".into(),
            function: FunctionDef {
                name,
                description,
                parameters: Some(schema),
                strict: None,
            },
        });
    }
    Ok((!tools.is_empty()).then_some(tools))
}

/// The OpenAI `tool_choice` and, when the client set `disable_parallel_tool_use`,
/// the matching `parallel_tool_calls`.
fn tool_choice(value: &Value) -> Result<(Value, Option<bool>), Error> {
    if !value.is_object() {
        return Err(invalid("`tool_choice` must be an object", "tool_choice"));
    }
    let choice = match value.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = required_str(value, "name", "tool_choice")?;
            json!({ "type": "function", "function": { "name": name } })
        }
        _ => {
            return Err(invalid(
                "`tool_choice.type` must be one of auto, any, tool, none",
                "tool_choice.type",
            ));
        }
    };
    let parallel = match value.get("disable_parallel_tool_use") {
        Some(Value::Bool(disable)) => Some(!disable),
        _ => None,
    };
    Ok((choice, parallel))
}

fn metadata_user(value: Option<&Value>) -> Result<Option<String>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(meta)) => match meta.get("user_id") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(u)) => Ok(Some(u.clone())),
            Some(_) => Err(invalid(
                "`metadata.user_id` must be a string",
                "metadata.user_id",
            )),
        },
        Some(_) => Err(invalid("`metadata` must be an object", "metadata")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(err: Error) -> Option<String> {
        match err {
            Error::InvalidRequest { param, .. } => param,
            other => panic!("expected InvalidRequest, got {other:?}"),
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
    fn simple_request_maps_every_parameter() {
        let req = messages_to_chat(json!({
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
        let req = messages_to_chat(json!({
            "model": "m", "max_tokens": 1,
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        assert_eq!(req.messages[0], ChatMessage::text(Role::System, "a\nb"));
    }

    #[test]
    fn images_and_text_blocks_become_parts() {
        let req = messages_to_chat(json!({
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
        let req = messages_to_chat(json!({
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
        let req = messages_to_chat(json!({
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
            let req = messages_to_chat(body).unwrap();
            assert_eq!(req.tool_choice, Some(expected));
        }
        let req = messages_to_chat(base.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(req.tools.unwrap()).unwrap(),
            json!([{"type": "function", "function": {
                "name": "weather", "description": "Get weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }}])
        );

        let mut body = base;
        body["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
        let req = messages_to_chat(body).unwrap();
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
            let err = messages_to_chat(body.clone()).unwrap_err();
            assert_eq!(param_of(err).as_deref(), Some(param), "body: {body}");
        }
        let err = messages_to_chat(json!([1])).unwrap_err();
        assert_eq!(param_of(err), None);
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
            chat_response_to_messages(&chat, "claude-alias", None).unwrap(),
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
            let msg = chat_response_to_messages(&make(finish), "m", None).unwrap();
            assert_eq!(msg["stop_reason"], json!(expected));
            assert_eq!(msg["id"], json!("msg_x"));
            assert_eq!(msg["content"], json!([]));
            assert_eq!(
                msg["usage"],
                json!({"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
            );
        }
        let err =
            chat_response_to_messages(&json!({"id": "x", "choices": []}), "m", None).unwrap_err();
        assert_eq!(err, "chat completion has no choices");
    }

    #[test]
    fn text_stream_becomes_anthropic_events() {
        let mut conv = ChunksToEvents::new("claude-alias", "msg_1");
        let mut events = conv.on_chunk(&chunk(json!({"role": "assistant", "content": ""}), None));
        events.extend(conv.on_chunk(&chunk(json!({"content": "Hel"}), None)));
        events.extend(conv.on_chunk(&chunk(json!({"content": "lo"}), Some("stop"))));
        events.extend(conv.on_chunk(&json!({
            "id": "chatcmpl-1", "choices": [],
            "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32,
                      "prompt_tokens_details": {"cached_tokens": 10}},
        })));
        events.extend(conv.finish());
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
        assert!(conv.finish().is_empty());
    }

    #[test]
    fn tool_call_stream_opens_one_block_per_call() {
        let mut conv = ChunksToEvents::new("m", "msg_2");
        let mut events = conv.on_chunk(&chunk(json!({"content": "Checking."}), None));
        events.extend(conv.on_chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                   "function": {"name": "weather", "arguments": ""}}]}),
            None,
        )));
        events.extend(conv.on_chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            None,
        )));
        events.extend(conv.on_chunk(&chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                   "function": {"name": "time", "arguments": "{}"}}]}),
            None,
        )));
        events.extend(conv.on_chunk(&chunk(json!({}), Some("tool_calls"))));
        events.extend(conv.finish());
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
        let events = conv.finish();
        assert_eq!(
            names(&events),
            vec!["message_start", "message_delta", "message_stop"]
        );
        assert_eq!(events[1].1["delta"]["stop_reason"], json!("end_turn"));
    }

    #[test]
    fn tool_calls_with_stop_finish_report_tool_use() {
        let mut conv = ChunksToEvents::new("m", "msg_4");
        conv.on_chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
            Some("stop"),
        ));
        let events = conv.finish();
        assert_eq!(events[1].1["delta"]["stop_reason"], json!("tool_use"));
        assert_eq!(
            events[0].1,
            json!({"type": "content_block_stop", "index": 0})
        );
    }
}
