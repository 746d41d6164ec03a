//! Built-in mock models: deterministic answers with realistic usage, so the
//! gateway works (and is testable) without any provider account. The behaviour
//! is chosen by the model name after `mock/`:
//!
//! | name            | behaviour                                                   |
//! |-----------------|-------------------------------------------------------------|
//! | anything else   | answers, echoing the last user message                      |
//! | `slow-<ms>`     | answers after `<ms>` milliseconds (streams: before the first chunk) |
//! | `error-<code>`  | fails with HTTP `<code>` in OpenAI's error shape            |
//! | `timeout`       | never answers; the deployment's timeout fires               |
//! | `garbage`       | answers with something that is not JSON                     |
//!
//! With `tools` in the request, the answer to a user message is a call to the
//! first tool (or the one `tool_choice` names); the answer to a tool result
//! quotes it. Embeddings are unit vectors derived from the input's SHA-256.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{CallContext, Chunk, Completed, Outcome, Provider, estimate_tokens};
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::wire::openai::{ChatRequest, CompletionRequest, EmbeddingsRequest, Prompt, Role, Usage};

pub struct Mock;

/// Dimensions of mock embeddings.
const EMBEDDING_DIMS: usize = 16;

enum Behaviour {
    Answer { latency: Duration },
    Fail(u16),
    Hang,
    Garbage,
}

fn behaviour(d: &Deployment) -> Behaviour {
    let name = d.upstream_model.as_str();
    if let Some(code) = name
        .strip_prefix("error-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return Behaviour::Fail(code);
    }
    if let Some(ms) = name
        .strip_prefix("slow-")
        .and_then(|c| c.parse::<u64>().ok())
    {
        return Behaviour::Answer {
            latency: Duration::from_millis(ms),
        };
    }
    match name {
        "timeout" => Behaviour::Hang,
        "garbage" => Behaviour::Garbage,
        _ => Behaviour::Answer {
            latency: Duration::ZERO,
        },
    }
}

/// Applies the named behaviour; `Ok(())` means "answer now".
async fn act(d: &Deployment, stream: bool) -> Result<()> {
    let timeout = if stream { d.stream_timeout } else { d.timeout };
    match behaviour(d) {
        Behaviour::Answer { latency } if latency <= timeout => {
            tokio::time::sleep(latency).await;
            Ok(())
        }
        Behaviour::Answer { .. } | Behaviour::Hang => {
            tokio::time::sleep(timeout).await;
            Err(Error::UpstreamTimeout {
                deployment: d.id.clone(),
                after: timeout,
            })
        }
        Behaviour::Fail(status) => Err(Error::UpstreamStatus {
            status,
            message: format!("Mock error {status} from deployment {}", d.id),
            kind: Some(
                if status == 429 {
                    "rate_limit_error"
                } else {
                    "mock_error"
                }
                .into(),
            ),
            code: Some(status.to_string()),
            retry_after: (status == 429).then_some(1),
            rejection: None,
        }),
        Behaviour::Garbage => Err(Error::protocol(
            &d.id,
            "response is not the expected JSON: expected value at line 1 column 1",
        )),
    }
}

/// What the mock says and how it bills it.
struct Answer {
    text: Option<String>,
    tool_call: Option<(String, String)>,
    finish_reason: &'static str,
    usage: Usage,
}

fn answer(req: &ChatRequest) -> Answer {
    let prompt_text: String = req
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref().map(|c| c.joined_text()))
        .collect::<Vec<_>>()
        .join("\n");
    let prompt_tokens = estimate_tokens(prompt_text.len()).max(1) + 3 * req.messages.len() as u64;
    let last = req.messages.last();
    let wants_tool = req.tools.as_ref().is_some_and(|t| !t.is_empty())
        && req.tool_choice.as_ref().and_then(|c| c.as_str()) != Some("none")
        && last.is_some_and(|m| m.role == Role::User);
    if wants_tool {
        let named = req
            .tool_choice
            .as_ref()
            .and_then(|c| c.pointer("/function/name"))
            .and_then(|n| n.as_str());
        let name = named
            .or_else(|| {
                req.tools
                    .as_ref()
                    .and_then(|t| t.first())
                    .map(|t| t.function.name.as_str())
            })
            .unwrap_or("tool")
            .to_owned();
        let said = last
            .and_then(|m| m.content.as_ref())
            .map(|c| c.joined_text())
            .unwrap_or_default();
        let arguments = json!({ "input": said }).to_string();
        let completion_tokens = estimate_tokens(arguments.len()).max(1) + 5;
        return Answer {
            text: None,
            tool_call: Some((name, arguments)),
            finish_reason: "tool_calls",
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                ..Usage::default()
            },
        };
    }
    let said = last
        .and_then(|m| m.content.as_ref())
        .map(|c| c.joined_text())
        .unwrap_or_default();
    let said: String = said.chars().take(200).collect();
    let full = match last.map(|m| m.role) {
        Some(Role::Tool) => format!("The tool answered: {said}"),
        _ => format!("Hi! This is Meridian's mock model. You said: {said}"),
    };
    let (text, completion_tokens, finish_reason) = truncate_words(&full, req.output_limit());
    Answer {
        text: Some(text),
        tool_call: None,
        finish_reason,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        },
    }
}

/// One word is one mock token; `limit` cuts the answer like `max_tokens` does.
fn truncate_words(text: &str, limit: Option<u32>) -> (String, u64, &'static str) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let keep = limit.map_or(words.len(), |l| (l as usize).min(words.len()));
    let reason = if keep < words.len() { "length" } else { "stop" };
    (words[..keep].join(" "), keep as u64, reason)
}

fn id_for(kind: &str, seed: &str) -> String {
    format!(
        "{kind}-mock-{}",
        hex::encode(&Sha256::digest(seed.as_bytes())[..12])
    )
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// A stream chunk the mock made: its bytes, and the same chunk parsed.
fn chunk_of(v: Value, usage: Option<Usage>) -> Chunk {
    let parsed = serde_json::from_value(v.clone()).unwrap_or_default();
    Chunk::OpenAi {
        json: to_bytes(&v),
        parsed: Box::new(parsed),
        usage,
    }
}

impl Provider for Mock {
    fn chat<'a>(&'a self, cx: CallContext<'a>, req: ChatRequest) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            let d = cx.deployment;
            act(d, req.is_stream()).await?;
            let a = answer(&req);
            let id = id_for(
                "chatcmpl",
                &serde_json::to_string(&req.messages).unwrap_or_default(),
            );
            let created = cx.clock.unix_secs();
            let model = d.upstream_model.as_str();
            let tool_calls = a.tool_call.as_ref().map(|(name, args)| {
                json!([{ "id": id_for("call", args), "type": "function",
                         "function": { "name": name, "arguments": args } }])
            });
            if !req.is_stream() {
                let mut message = json!({ "role": "assistant", "content": a.text });
                if let Some(calls) = tool_calls {
                    message["tool_calls"] = calls;
                }
                let body = json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": a.finish_reason }],
                    "usage": a.usage.to_openai_json(),
                });
                return Ok(Outcome::Complete(Completed {
                    body: to_bytes(&body),
                    usage: a.usage,
                }));
            }
            let chunk = |delta: Value, finish: Option<&str>| {
                chunk_of(
                    json!({
                        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
                    }),
                    None,
                )
            };
            let mut chunks = vec![chunk(json!({ "role": "assistant", "content": "" }), None)];
            if let Some(text) = &a.text {
                for (i, word) in text.split(' ').enumerate() {
                    let piece = if i == 0 {
                        word.to_owned()
                    } else {
                        format!(" {word}")
                    };
                    chunks.push(chunk(json!({ "content": piece }), None));
                }
            }
            if let Some(calls) = tool_calls {
                let mut calls = calls;
                if let Some(c) = calls.get_mut(0) {
                    c["index"] = json!(0);
                }
                chunks.push(chunk(json!({ "tool_calls": calls }), None));
            }
            chunks.push(chunk(json!({}), Some(a.finish_reason)));
            chunks.push(chunk_of(
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": a.usage.to_openai_json(),
                }),
                Some(a.usage),
            ));
            Ok(Outcome::Stream(Box::pin(futures_util::stream::iter(
                chunks.into_iter().map(Ok),
            ))))
        })
    }

    fn completion<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: CompletionRequest,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            let d = cx.deployment;
            let stream = req.stream.unwrap_or(false);
            act(d, stream).await?;
            let prompt = match &req.prompt {
                Prompt::One(p) => p.clone(),
                Prompt::Many(ps) => ps.join("\n"),
            };
            let (text, completion_tokens, finish) = truncate_words(
                &format!("This is Meridian's mock completion of: {prompt}"),
                req.max_tokens,
            );
            let usage = Usage {
                prompt_tokens: estimate_tokens(prompt.len()).max(1),
                completion_tokens,
                ..Usage::default()
            };
            let id = id_for("cmpl", &prompt);
            let created = cx.clock.unix_secs();
            let model = d.upstream_model.as_str();
            let body = |text: &str, finish: Option<&str>| {
                json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }],
                })
            };
            if !stream {
                let mut full = body(&text, Some(finish));
                full["usage"] = usage.to_openai_json();
                return Ok(Outcome::Complete(Completed {
                    body: to_bytes(&full),
                    usage,
                }));
            }
            let mut chunks: Vec<Chunk> = text
                .split(' ')
                .enumerate()
                .map(|(i, w)| {
                    let piece = if i == 0 {
                        w.to_owned()
                    } else {
                        format!(" {w}")
                    };
                    chunk_of(body(&piece, None), None)
                })
                .collect();
            chunks.push(chunk_of(body("", Some(finish)), None));
            let mut last = body("", None);
            last["choices"] = json!([]);
            last["usage"] = usage.to_openai_json();
            chunks.push(chunk_of(last, Some(usage)));
            Ok(Outcome::Stream(Box::pin(futures_util::stream::iter(
                chunks.into_iter().map(Ok),
            ))))
        })
    }

    fn embeddings<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: EmbeddingsRequest,
    ) -> BoxFuture<'a, Result<Completed>> {
        Box::pin(async move {
            let d = cx.deployment;
            act(d, false).await?;
            let inputs: Vec<String> = match &req.input {
                Value::String(s) => vec![s.clone()],
                Value::Array(items) if items.iter().all(Value::is_string) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                // Token arrays: one array of ints, or a list of them.
                Value::Array(items) if items.iter().all(Value::is_number) => {
                    vec![req.input.to_string()]
                }
                Value::Array(items) if items.iter().all(Value::is_array) => {
                    items.iter().map(Value::to_string).collect()
                }
                _ => {
                    return Err(Error::invalid(
                        "`input` must be a string, a list of strings, or token arrays",
                        Some("input"),
                    ));
                }
            };
            let base64 = req.extra.get("encoding_format").and_then(Value::as_str) == Some("base64");
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    let v = embed(text);
                    let embedding = if base64 {
                        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        json!(v)
                    };
                    json!({ "object": "embedding", "index": i, "embedding": embedding })
                })
                .collect();
            let prompt_tokens: u64 = inputs.iter().map(|t| estimate_tokens(t.len()).max(1)).sum();
            let usage = Usage {
                prompt_tokens,
                ..Usage::default()
            };
            let body = json!({
                "object": "list", "data": data, "model": d.upstream_model,
                "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
            });
            Ok(Completed {
                body: to_bytes(&body),
                usage,
            })
        })
    }
}

/// A unit vector from the text's hash: equal texts embed equally.
fn embed(text: &str) -> Vec<f32> {
    let hash = Sha256::digest(text.as_bytes());
    let raw: Vec<f32> = hash
        .iter()
        .take(EMBEDDING_DIMS)
        .map(|b| *b as f32 - 127.5)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::openai::ChatMessage;

    fn req(text: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::text(Role::User, text)],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn answers_are_deterministic_and_respect_max_tokens() {
        let a = answer(&req("hello there"));
        assert_eq!(
            a.text.as_deref(),
            Some("Hi! This is Meridian's mock model. You said: hello there")
        );
        assert_eq!((a.usage.completion_tokens, a.finish_reason), (10, "stop"));
        let mut short = req("hello");
        short.max_tokens = Some(3);
        let a = answer(&short);
        assert_eq!(
            (a.text.as_deref(), a.finish_reason),
            (Some("Hi! This is"), "length")
        );
    }

    #[test]
    fn embeddings_are_unit_vectors() {
        let v = embed("x");
        assert_eq!(v.len(), EMBEDDING_DIMS);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(embed("x"), v);
        assert_ne!(embed("y"), v);
    }
}
