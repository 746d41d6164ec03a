//! Requests to Anthropic deployments from OpenAI clients: the gateway's chat
//! request written as a typed Messages body ([`MessagesBody`]).

use serde_json::{Value, json};

use super::request::{
    InputBlock, InputMessage, MessagesBody, Metadata, Source, System, ToolChoice, ToolDef,
    ToolResultContent, TurnRole,
};
use crate::error::Error;
use crate::wire::openai::{ChatMessage, ChatRequest, Content, ContentPart, Role};

/// Builds the Messages request body for `req`.
///
/// `default_max_tokens` applies when the client set no output cap, because Anthropic
/// rejects a request without `max_tokens`.
pub fn chat_to_messages(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<MessagesBody, Error> {
    if req.messages.is_empty() {
        return Err(Error::invalid(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }

    let mut system: Vec<SystemText> = Vec::new();
    let mut turns: Vec<InputMessage> = Vec::new();
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
            Role::User => (TurnRole::User, content_blocks(msg.content.as_ref(), i)?),
            Role::Assistant => (TurnRole::Assistant, assistant_blocks(msg, i)?),
            Role::Tool => (TurnRole::User, vec![tool_result_block(msg, i)?]),
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
            && let Some(last) = blocks.last_mut()
        {
            last.set_cache_control(cc.clone());
        }
        // Anthropic requires user and assistant turns to alternate.
        match turns.last_mut() {
            Some(turn) if turn.role == role => turn.content.extend(blocks),
            _ => turns.push(InputMessage {
                role,
                content: blocks,
            }),
        }
    }
    if turns.is_empty() {
        return Err(Error::invalid(
            "`messages` must contain at least one user or assistant message with content",
            Some("messages"),
        ));
    }
    for turn in &mut turns {
        if turn.role == TurnRole::User {
            // Anthropic rejects a user turn where text precedes its tool results.
            let (mut results, rest): (Vec<InputBlock>, Vec<InputBlock>) =
                std::mem::take(&mut turn.content)
                    .into_iter()
                    .partition(InputBlock::is_tool_result);
            results.extend(rest);
            turn.content = results;
        }
    }

    let tools = tools_value(req)?;
    // `tool_choice` is validated even without tools so a typo is reported, but only
    // sent with them: Anthropic rejects a choice among no tools.
    let parallel = req
        .extra
        .get("parallel_tool_calls")
        .and_then(Value::as_bool);
    let mut choice = match &req.tool_choice {
        Some(choice) => Some(tool_choice_value(choice)?),
        None if parallel == Some(false) => Some(ToolChoice::Auto {
            disable_parallel_tool_use: None,
        }),
        None => None,
    };
    if parallel == Some(false)
        && let Some(choice) = &mut choice
    {
        choice.one_call_at_a_time();
    }
    let stop_sequences = req
        .stop
        .clone()
        .map(|stop| stop.into_vec())
        .filter(|stops| !stops.is_empty());

    Ok(MessagesBody {
        model: upstream_model.to_owned(),
        messages: turns,
        max_tokens: req.output_limit().unwrap_or(default_max_tokens),
        system: system_value(system),
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences,
        stream: req.stream,
        metadata: req.user.as_ref().map(|user| Metadata {
            user_id: user.clone(),
        }),
        tool_choice: choice.filter(|_| tools.is_some()),
        tools,
    })
}

struct SystemText {
    text: String,
    cache_control: Option<Value>,
}

/// A plain string when it can be, since that is the common form; text blocks only
/// when a cache breakpoint must ride on one.
fn system_value(system: Vec<SystemText>) -> Option<System> {
    if system.is_empty() {
        return None;
    }
    if system.iter().all(|s| s.cache_control.is_none()) {
        let texts: Vec<String> = system.into_iter().map(|s| s.text).collect();
        return Some(System::Text(texts.join("\n")));
    }
    let blocks = system
        .into_iter()
        .map(|s| InputBlock::Text {
            text: s.text,
            cache_control: s.cache_control,
        })
        .collect();
    Some(System::Blocks(blocks))
}

/// Anthropic rejects text blocks that are empty or only whitespace.
fn text_block(text: &str) -> Option<InputBlock> {
    (!text.trim().is_empty()).then(|| InputBlock::text(text))
}

fn content_blocks(content: Option<&Content>, i: usize) -> Result<Vec<InputBlock>, Error> {
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

fn part_block(part: &ContentPart, i: usize, j: usize) -> Result<Option<InputBlock>, Error> {
    match part {
        ContentPart::Text { text, .. } => Ok(text_block(text)),
        ContentPart::ImageUrl { image_url, .. } => {
            let source = image_source(&image_url.url).ok_or_else(|| {
                Error::invalid(
                    "image_url.url must be an http(s) URL or a base64 `data:` URL",
                    Some(&format!("messages[{i}].content[{j}].image_url.url")),
                )
            })?;
            Ok(Some(InputBlock::Image {
                source,
                cache_control: None,
            }))
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
            Ok(Some(InputBlock::Document {
                source,
                cache_control: None,
            }))
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

fn image_source(url: &str) -> Option<Source> {
    if let Some(data) = parse_data_url(url) {
        return Some(data);
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(Source::Url {
            url: url.to_owned(),
        });
    }
    None
}

/// `data:<media-type>[;param]*;base64,<data>`. Only base64 is accepted because that is
/// all Anthropic takes.
fn parse_data_url(url: &str) -> Option<Source> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let header = header.strip_suffix(";base64")?;
    let media_type = header.split(';').next().unwrap_or_default();
    if media_type.is_empty() || data.is_empty() {
        return None;
    }
    Some(Source::Base64 {
        media_type: media_type.to_owned(),
        data: data.to_owned(),
    })
}

fn assistant_blocks(msg: &ChatMessage, i: usize) -> Result<Vec<InputBlock>, Error> {
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
        blocks.push(InputBlock::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input,
            cache_control: None,
        });
    }
    Ok(blocks)
}

fn tool_result_block(msg: &ChatMessage, i: usize) -> Result<InputBlock, Error> {
    let id = msg.tool_call_id.as_deref().ok_or_else(|| {
        Error::invalid(
            "tool messages require `tool_call_id`",
            Some(&format!("messages[{i}].tool_call_id")),
        )
    })?;
    let content = match &msg.content {
        None => None,
        Some(Content::Text(text)) => Some(ToolResultContent::Text(text.clone())),
        Some(content @ Content::Parts(parts)) => {
            if parts.iter().all(|p| matches!(p, ContentPart::Text { .. })) {
                Some(ToolResultContent::Text(content.joined_text()))
            } else {
                Some(ToolResultContent::Blocks(content_blocks(Some(content), i)?))
            }
        }
    };
    // `content` is optional for Anthropic; leaving out an empty one avoids its
    // empty-text check.
    let content = content.filter(|c| match c {
        ToolResultContent::Text(s) => !s.is_empty(),
        ToolResultContent::Blocks(b) => !b.is_empty(),
    });
    Ok(InputBlock::ToolResult {
        tool_use_id: id.to_owned(),
        content,
        cache_control: None,
    })
}

fn tools_value(req: &ChatRequest) -> Result<Option<Vec<ToolDef>>, Error> {
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
        out.push(ToolDef {
            name: tool.function.name.clone(),
            description: tool.function.description.clone(),
            input_schema: tool
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
        });
    }
    Ok(Some(out))
}

fn tool_choice_value(choice: &Value) -> Result<ToolChoice, Error> {
    let invalid = || {
        Error::invalid(
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
            Some("tool_choice"),
        )
    };
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto {
                disable_parallel_tool_use: None,
            }),
            "required" => Ok(ToolChoice::Any {
                disable_parallel_tool_use: None,
            }),
            "none" => Ok(ToolChoice::None),
            _ => Err(invalid()),
        },
        Value::Object(obj) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| obj.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(invalid)?;
            Ok(ToolChoice::Tool {
                name: name.to_owned(),
                disable_parallel_tool_use: None,
            })
        }
        _ => Err(invalid()),
    }
}
