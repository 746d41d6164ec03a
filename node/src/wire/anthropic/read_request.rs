//! Requests from `/v1/messages` clients: an Anthropic Messages body read
//! into the gateway's chat request, for routing, admission and every
//! provider that is not Anthropic (an Anthropic deployment gets the client's
//! own body instead).
//!
//! It validates as it goes, naming the offending field by path, since this
//! is the first code that reads the client's body; the client gets the same
//! error whichever deployment would have served it.

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::wire::openai::{
    ChatMessage, ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, Role,
    Stop, StreamOptions, Tool, ToolCall,
};

/// A `/v1/messages` request: the client's body as sent (less the gateway's
/// own fields, taken out before), and the same request read into the chat
/// format — validated once, whichever deployment serves it.
#[derive(Clone, Debug)]
pub struct MessagesRequest {
    /// What an Anthropic deployment is sent, with only `model` changed.
    pub body: Map<String, Value>,
    /// What routing, admission and every other provider work on.
    pub chat: ChatRequest,
    /// Set when the body holds content blocks the chat format has no place
    /// for: `chat` leaves them out, and any other provider answers with this
    /// refusal. (Anthropic's server tools are refused outright: the gateway
    /// does not price their per-call fees.)
    pub no_chat_form: Option<NoChatForm>,
}

impl MessagesRequest {
    /// Reads (and validates) a client's body.
    pub fn read(body: Map<String, Value>) -> Result<Self, Error> {
        let mut no_chat_form = None;
        let chat = read_chat(&body, &mut no_chat_form)?;
        Ok(Self {
            body,
            chat,
            no_chat_form,
        })
    }
}

/// The first thing the chat form had to leave out, and where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoChatForm {
    message: String,
    param: String,
}

impl NoChatForm {
    /// The refusal a provider other than Anthropic answers with.
    pub fn error(&self) -> Error {
        invalid(&self.message, &self.param)
    }
}

/// Notes what the chat form leaves out; the first is kept.
fn note(nc: &mut Option<NoChatForm>, message: &str, param: &str) {
    nc.get_or_insert_with(|| NoChatForm {
        message: message.to_owned(),
        param: param.to_owned(),
    });
}

/// Parses an Anthropic Messages request into the gateway's chat request,
/// refusing what the chat format cannot carry.
pub fn messages_to_chat(body: &Map<String, Value>) -> Result<ChatRequest, Error> {
    let mut no_chat_form = None;
    let chat = read_chat(body, &mut no_chat_form)?;
    match no_chat_form {
        Some(refusal) => Err(refusal.error()),
        None => Ok(chat),
    }
}

fn read_chat(body: &Map<String, Value>, nc: &mut Option<NoChatForm>) -> Result<ChatRequest, Error> {
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
        convert_message(msg, i, &mut messages, nc)?;
    }

    let stream = optional_bool(body, "stream")?;
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
        temperature: optional_f64(body, "temperature")?,
        top_p: optional_f64(body, "top_p")?,
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

fn invalid(message: &str, param: &str) -> Error {
    Error::invalid(message, Some(param))
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
fn convert_message(
    msg: &Value,
    i: usize,
    out: &mut Vec<ChatMessage>,
    nc: &mut Option<NoChatForm>,
) -> Result<(), Error> {
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
        Role::Assistant => out.push(assistant_message(blocks, &path, nc)?),
        _ => {
            if blocks.is_empty() {
                return Err(invalid(
                    "user messages must have non-empty content",
                    &format!("{path}.content"),
                ));
            }
            user_messages(blocks, &path, out, nc)?;
        }
    }
    Ok(())
}

fn assistant_message(
    blocks: &[Value],
    path: &str,
    nc: &mut Option<NoChatForm>,
) -> Result<ChatMessage, Error> {
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
            other => note(
                nc,
                &format!("content block type `{other}` is not supported in assistant messages"),
                &format!("{path}.type"),
            ),
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
fn user_messages(
    blocks: &[Value],
    path: &str,
    out: &mut Vec<ChatMessage>,
    nc: &mut Option<NoChatForm>,
) -> Result<(), Error> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("{path}.content[{j}]");
        match block_type(block, &path)? {
            "text" => parts.push(ContentPart::text(
                required_str(block, "text", &path)?.to_owned(),
            )),
            "image" => parts.push(image_part(block, &path)?),
            "document" => parts.push(document_part(block, &path)?),
            "tool_result" => {
                let id = required_str(block, "tool_use_id", &path)?.to_owned();
                let (text, images) = tool_result_content(block.get("content"), &path, nc)?;
                out.push(ChatMessage {
                    tool_call_id: Some(id),
                    ..ChatMessage::text(Role::Tool, text)
                });
                // OpenAI tool messages cannot hold images; the next user message can,
                // so the model still sees them.
                parts.extend(images);
            }
            other => note(
                nc,
                &format!("content block type `{other}` is not supported in user messages"),
                &format!("{path}.type"),
            ),
        }
    }
    let content = match parts.as_slice() {
        [] => return Ok(()),
        [ContentPart::Text { text, .. }] => Content::Text(text.clone()),
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
    nc: &mut Option<NoChatForm>,
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
                    other => note(
                        nc,
                        &format!("content block type `{other}` is not supported in tool results"),
                        &format!("{path}.type"),
                    ),
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
        image_url: ImageUrl {
            url,
            detail: None,
            extra: Map::new(),
        },
        extra: Map::new(),
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
        "text" => Ok(ContentPart::text(
            required_str(source, "data", &source_path)?.to_owned(),
        )),
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
            // Refused even for an Anthropic deployment: their use is billed
            // per call (a web search, a code run), which the gateway does not
            // price, so a budget could not hold.
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
                extra: Default::default(),
            },
            extra: Default::default(),
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
