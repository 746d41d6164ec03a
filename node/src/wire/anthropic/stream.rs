//! Streams, both directions, one event at a time so nothing is buffered:
//! Anthropic events become OpenAI `chat.completion.chunk`s for an OpenAI
//! client on an Anthropic deployment ([`EventsToChunks`]), and OpenAI chunks
//! become Anthropic events for a `/v1/messages` client on any other
//! provider ([`ChunksToEvents`]). Both take the event already parsed and
//! return typed values, serialized once by the caller.

use super::{
    AnthropicUsage, ContentBlock, Delta, Message, MessageDelta, StreamEvent, UsageFields,
    finish_reason, stop_reason,
};
use crate::wire::openai::{
    ChatChunk, ChunkChoice, ChunkDelta, FunctionDelta, ToolCallDelta, Usage,
};

/// Stateful converter from one Anthropic stream to OpenAI chunks.
#[derive(Debug)]
pub struct EventsToChunks {
    model: String,
    created: u64,
    /// The Anthropic message id, learnt from `message_start`.
    id: String,
    usage: AnthropicUsage,
    /// Anthropic numbers content blocks across text and tools; OpenAI numbers tool
    /// calls alone. Maps an Anthropic block index to its OpenAI tool-call index.
    tool_blocks: Vec<(u64, u64)>,
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

    /// Consumes one event, returning the chunks it produces. An `error` event
    /// becomes `Err` with Anthropic's message.
    pub fn on_event(&mut self, event: &StreamEvent) -> Result<Vec<ChatChunk>, String> {
        if let Some(usage) = event.usage() {
            self.usage.update(usage);
        }
        let delta = match event {
            StreamEvent::MessageStart { message } => {
                message.id.clone_into(&mut self.id);
                ChunkDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    tool_calls: None,
                }
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                ContentBlock::ToolUse { id, name, .. } => {
                    let k = self.tool_blocks.len() as u64;
                    self.tool_blocks.push((*index, k));
                    tool_delta(ToolCallDelta {
                        index: Some(k),
                        id: Some(id.clone()),
                        kind: Some("function".into()),
                        function: Some(FunctionDelta {
                            name: Some(name.clone()),
                            arguments: Some(String::new()),
                        }),
                    })
                }
                // A text block normally starts empty; its text arrives as deltas.
                ContentBlock::Text { text } if !text.is_empty() => text_delta(text),
                _ => return Ok(Vec::new()),
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                Delta::TextDelta { text } if !text.is_empty() => text_delta(text),
                // Anthropic opens every tool input with an empty delta; it adds nothing.
                Delta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    let k = self
                        .tool_blocks
                        .iter()
                        .find(|(block, _)| block == index)
                        .map(|(_, k)| *k)
                        .ok_or_else(|| {
                            format!("input_json_delta for content block {index}, which is not a tool_use block")
                        })?;
                    tool_delta(ToolCallDelta {
                        index: Some(k),
                        function: Some(FunctionDelta {
                            name: None,
                            arguments: Some(partial_json.clone()),
                        }),
                        ..Default::default()
                    })
                }
                // Reasoning has no field in the chat format; dropped as in non-streaming.
                _ => return Ok(Vec::new()),
            },
            StreamEvent::MessageDelta { delta, .. } => {
                return Ok(vec![self.chunk(
                    ChunkDelta::default(),
                    Some(finish_reason(delta.stop_reason.as_deref())),
                )]);
            }
            StreamEvent::Error { error } => {
                return Err(error.message.clone().unwrap_or_else(|| {
                    "Anthropic stream reported an error without a message".into()
                }));
            }
            // ping, content_block_stop, message_stop, and event types added later.
            _ => return Ok(Vec::new()),
        };
        Ok(vec![self.chunk(delta, None)])
    }

    /// Usage so far; complete once `message_delta` has been seen.
    pub fn usage(&self) -> Usage {
        self.usage.to_usage()
    }

    /// The final chunk OpenAI sends when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self) -> ChatChunk {
        ChatChunk {
            choices: Some(Vec::new()),
            usage: Some(self.usage().to_openai()),
            ..self.skeleton()
        }
    }

    fn skeleton(&self) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            ..Default::default()
        }
    }

    fn chunk(&self, delta: ChunkDelta, finish_reason: Option<&str>) -> ChatChunk {
        ChatChunk {
            choices: Some(vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
            }]),
            ..self.skeleton()
        }
    }
}

fn text_delta(text: &str) -> ChunkDelta {
    ChunkDelta {
        content: Some(text.to_owned()),
        ..Default::default()
    }
}

fn tool_delta(call: ToolCallDelta) -> ChunkDelta {
    ChunkDelta {
        tool_calls: Some(vec![call]),
        ..Default::default()
    }
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
    next_index: u64,
    open: Option<OpenBlock>,
    /// OpenAI tool-call index → Anthropic content-block index, for every tool call seen.
    tool_blocks: Vec<(u64, u64)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenBlock {
    Text(u64),
    Tool { call: u64, index: u64 },
}

impl OpenBlock {
    fn index(self) -> u64 {
        match self {
            OpenBlock::Text(index) | OpenBlock::Tool { index, .. } => index,
        }
    }
}

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

    /// Consumes one `chat.completion.chunk`, returning the events it yields.
    pub fn on_chunk(&mut self, chunk: &ChatChunk) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        self.start(&mut events);

        if let Some(usage) = &chunk.usage {
            self.usage = Some(Usage::from(usage.clone()));
        }
        let Some(choice) = chunk.choices.as_ref().and_then(|c| c.first()) else {
            return events;
        };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            self.text_delta(text, &mut events);
        }
        for (pos, call) in choice.delta.tool_calls.iter().flatten().enumerate() {
            self.tool_call_delta(call, pos, &mut events);
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish_reason = Some(reason.clone());
        }
        events
    }

    /// Ends the stream: closes the open block, then `message_delta` and
    /// `message_stop`. A second call yields nothing.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
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
            Some(u) => AnthropicUsage::from_usage(u).fields(),
            None => UsageFields {
                output_tokens: Some(0),
                ..Default::default()
            },
        };
        events.push(StreamEvent::MessageDelta {
            delta: MessageDelta {
                stop_reason: Some(
                    stop_reason(self.finish_reason.as_deref(), !self.tool_blocks.is_empty())
                        .to_owned(),
                ),
                stop_sequence: None,
            },
            usage: Some(usage),
        });
        events.push(StreamEvent::MessageStop);
        events
    }

    fn start(&mut self, events: &mut Vec<StreamEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        events.push(StreamEvent::MessageStart {
            message: Message {
                id: self.message_id.clone(),
                model: self.model.clone(),
                content: Some(Vec::new()),
                usage: UsageFields {
                    input_tokens: Some(0),
                    output_tokens: Some(0),
                    ..Default::default()
                },
                ..Message::skeleton()
            },
        });
    }

    fn close(&mut self, events: &mut Vec<StreamEvent>) {
        if let Some(block) = self.open.take() {
            events.push(StreamEvent::ContentBlockStop {
                index: block.index(),
            });
        }
    }

    fn open(&mut self, block: ContentBlock, events: &mut Vec<StreamEvent>) -> u64 {
        self.close(events);
        let index = self.next_index;
        self.next_index += 1;
        events.push(StreamEvent::ContentBlockStart {
            index,
            content_block: block,
        });
        index
    }

    fn text_delta(&mut self, text: &str, events: &mut Vec<StreamEvent>) {
        let index = match self.open {
            Some(OpenBlock::Text(index)) => index,
            _ => {
                let index = self.open(
                    ContentBlock::Text {
                        text: String::new(),
                    },
                    events,
                );
                self.open = Some(OpenBlock::Text(index));
                index
            }
        };
        events.push(StreamEvent::ContentBlockDelta {
            index,
            delta: Delta::TextDelta {
                text: text.to_owned(),
            },
        });
    }

    fn tool_call_delta(&mut self, call: &ToolCallDelta, pos: usize, events: &mut Vec<StreamEvent>) {
        // Some OpenAI-compatible servers leave out `index` when a chunk holds whole calls.
        let k = call.index.unwrap_or(pos as u64);
        let function = call.function.as_ref();
        let index = match self.open {
            Some(OpenBlock::Tool { call, index }) if call == k => index,
            _ => match self.tool_blocks.iter().find(|(c, _)| *c == k) {
                // Blocks cannot be reopened; a late fragment of an earlier call still
                // belongs to that call's block, which is where SDKs accumulate it.
                Some(&(_, index)) => index,
                None => {
                    let id = call
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("toolu_{}_{k}", self.message_id));
                    let name = function.and_then(|f| f.name.clone()).unwrap_or_default();
                    let index = self.open(
                        ContentBlock::ToolUse {
                            id,
                            name,
                            input: serde_json::Value::Object(Default::default()),
                        },
                        events,
                    );
                    self.open = Some(OpenBlock::Tool { call: k, index });
                    self.tool_blocks.push((k, index));
                    index
                }
            },
        };
        if let Some(args) = function
            .and_then(|f| f.arguments.as_deref())
            .filter(|a| !a.is_empty())
        {
            events.push(StreamEvent::ContentBlockDelta {
                index,
                delta: Delta::InputJsonDelta {
                    partial_json: args.to_owned(),
                },
            });
        }
    }
}
