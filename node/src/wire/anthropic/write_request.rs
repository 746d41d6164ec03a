//! Requests to Anthropic deployments from OpenAI clients: the gateway's chat
//! request written as a `/v1/messages` body.

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::wire::openai::{ChatMessage, ChatRequest, Content, ContentPart, Role};

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
        ContentPart::Text { text, .. } => Ok(text_block(text)),
        ContentPart::ImageUrl { image_url, .. } => {
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
        ContentPart::Other(_) => Err(Error::invalid(
            "this content part type is not supported for this model",
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
