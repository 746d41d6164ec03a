//! The request path: one function, [`run`], drives every LLM call through
//! five named stages, each in its own module. Handlers (`api/`) only decode
//! the request into an [`Operation`] and encode the [`Finished`] result.
//!
//! ```text
//! authorize ─► ┌─ attempt ──────────────────────────┐ ─► settle
//!              │ route ─► admit ─► call (provider)  │
//!              └────────────────────────────────────┘
//!                 ▲ retry: same group, after backoff (retryable class)
//!                 ▲ fallback: next group, once the group is out of retries
//! ```
//!
//! Modules import each other in one direction only: `authorize`, `route`
//! and `admit` are leaves; `call` runs attempts over `route` and `admit`;
//! `settle` bills what `call` returned; this file drives them in order.
//! Nothing here waits on another node: authorization, routing and
//! admission read memory (a `strict` limit may ask its home region for
//! rights), and the only I/O is the upstream call and one batched local
//! write. `docs/request-path.md` draws the same chart with its edges.

pub mod admit;
pub mod authorize;
pub mod call;
pub mod route;
pub mod settle;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

pub use self::settle::Settlement;
use crate::admission::{Demand, Headroom};
use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::Result;
use crate::node::Node;
use crate::pricing::Cost;
use crate::providers::{CallContext, ChunkStream, Outcome, Provider};
use crate::wire::anthropic::read_request::MessagesRequest;
use crate::wire::openai::{ChatRequest, CompletionRequest, EmbeddingsRequest};

/// Per-request facts the stages share.
pub struct RequestCtx {
    pub request_id: String,
    pub principal: Principal,
    /// When the gateway received the request.
    pub received: Instant,
    /// Tags from the `x-litellm-tags` header (the body's are added to them).
    pub tags: Vec<String>,
    /// The caller and the model asked for, as metrics label them.
    pub asker: crate::metrics::Asker,
}

impl RequestCtx {
    /// Notes which model the request asks for (metrics' `requested_model`).
    pub fn asks_for(&mut self, node: &Node, model: &str) {
        self.asker = node
            .metrics
            .asker(self.asker.who.clone(), model, node.serves(model));
    }
}

/// What a request asks for, decoded. The answer comes back in the same
/// format.
pub enum Operation {
    Chat(ChatRequest),
    /// Anthropic's Messages API (`/v1/messages`): routed and admitted as
    /// the chat it reads as; an Anthropic deployment gets the body itself.
    Messages(Box<MessagesRequest>),
    Completion(CompletionRequest),
    Embeddings(EmbeddingsRequest),
}

impl Operation {
    /// The model group (or deployment id) the request names.
    pub fn model(&self) -> &str {
        match self {
            Operation::Chat(r) => &r.model,
            Operation::Messages(r) => &r.chat.model,
            Operation::Completion(r) => &r.model,
            Operation::Embeddings(r) => &r.model,
        }
    }

    /// What the request asks of the limits, before the deployment is known.
    fn demand(&self) -> Demand {
        match self {
            Operation::Chat(r) => Demand::for_chat(r),
            Operation::Messages(r) => Demand::for_chat(&r.chat),
            Operation::Completion(r) => Demand::for_completion(r),
            Operation::Embeddings(r) => Demand::for_embeddings(r),
        }
    }

    /// The gateway's own fields of the body (tags, fallbacks): taken out,
    /// since the provider is not told them.
    fn take_routing(&mut self, header_tags: &[String]) -> Result<Routing> {
        let extra = match self {
            Operation::Chat(r) => &mut r.extra,
            Operation::Messages(r) => &mut r.body,
            Operation::Completion(r) => &mut r.extra,
            Operation::Embeddings(r) => &mut r.extra,
        };
        Routing::take(extra, header_tags)
    }

    /// One attempt's provider call, the output capped where the admitted
    /// reservation says (a budget that covers fewer output tokens than the
    /// request allows).
    fn call<'a>(
        &'a self,
        provider: &'a dyn Provider,
        cx: CallContext<'a>,
    ) -> BoxFuture<'a, Result<Outcome>> {
        match self {
            Operation::Chat(r) => {
                let mut req = r.clone();
                if let Some(cap) = cx.output_cap {
                    req.cap_output(cap);
                }
                provider.chat(cx, req)
            }
            // `max_tokens` is required in the Messages API: never uncapped.
            Operation::Messages(r) => provider.messages(cx, r),
            Operation::Completion(r) => {
                let mut req = r.clone();
                if req.max_tokens.is_none()
                    && let Some(cap) = cx.output_cap
                {
                    req.max_tokens = Some(u32::try_from(cap).unwrap_or(u32::MAX));
                }
                provider.completion(cx, req)
            }
            Operation::Embeddings(r) => {
                let call = provider.embeddings(cx, r.clone());
                Box::pin(async move { call.await.map(Outcome::Complete) })
            }
        }
    }
}

/// The gateway's own fields of a request: its tags (the header's, then the
/// body's) and its own `fallbacks`.
pub struct Routing {
    pub tags: Vec<String>,
    pub fallbacks: Option<Vec<String>>,
}

impl Routing {
    /// Takes the routing fields out of a body's fields (the provider is not
    /// told them), after the header's tags.
    pub fn take(
        extra: &mut serde_json::Map<String, serde_json::Value>,
        header_tags: &[String],
    ) -> Result<Self> {
        let mut tags = header_tags.to_vec();
        crate::tags::take_from_body(extra, &mut tags)?;
        let fallbacks = crate::config::request_fallbacks(extra)?;
        Ok(Self { tags, fallbacks })
    }
}

/// The extra attempts a request took (`x-meridian-attempted-retries`,
/// `x-meridian-attempted-fallbacks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    pub retries: u32,
    pub fallbacks: u32,
}

/// A finished request: its output, and what its headers say.
pub struct Finished {
    pub output: Output,
    pub answered: Answered,
}

pub enum Output {
    /// A whole answer in the operation's format, settled, its cost durable
    /// on this node; `usage` as settled.
    Complete {
        body: Bytes,
        cost: Cost,
        usage: crate::wire::openai::Usage,
    },
    /// A stream of chunks (a Messages stream may carry OpenAI chunks, for
    /// the edge to translate); the settlement bills it when it ends (or is
    /// dropped).
    Stream {
        chunks: ChunkStream,
        settlement: Box<Settlement>,
    },
}

/// What the headers of an answer say about the call behind it.
pub struct Answered {
    pub deployment: Arc<Deployment>,
    /// Time spent waiting on the provider (the rest is the gateway's).
    pub upstream_time: Duration,
    pub headroom: Headroom,
    pub tries: Tries,
}

/// Runs one request through the stages. `routing` is given when the edge
/// took the routing fields from a body before reading it
/// (`/v1/messages`); otherwise they are taken from the operation's body
/// here.
pub async fn run(
    node: &Node,
    ctx: &RequestCtx,
    mut op: Operation,
    routing: Option<Routing>,
) -> Result<Finished> {
    // A node that cannot write cannot record what a call costs: it takes
    // none (before any provider is paid) until its writes work again.
    if let Err(e) = meridian_storage::Store::writable(&*node.store) {
        tracing::debug!(error = %e, "refused: storage writes are failing");
        return Err(crate::error::Error::StorageFailing);
    }
    let routing = match routing {
        Some(r) => r,
        None => op.take_routing(&ctx.tags)?,
    };
    let demand = Demand {
        tags: routing.tags,
        ..op.demand()
    };
    let authorized = authorize::authorize(node, ctx, op.model(), &demand)?;
    let called = call::attempts(
        node,
        ctx,
        &op,
        &demand,
        authorized.residency.as_deref(),
        routing.fallbacks.as_deref(),
    )
    .await?;
    let answered = Answered {
        deployment: called.deployment.clone(),
        upstream_time: called.upstream_time,
        headroom: called.reservation.headroom,
        tries: called.tries,
    };
    let serving = node.metrics.serving(&ctx.asker, &called.place);
    serving.answered(ctx.received.elapsed().saturating_sub(called.upstream_time));
    let mut settlement = Settlement::new(
        node,
        ctx,
        called.deployment,
        serving,
        called.reservation,
        called.attempt,
    );
    let output = match called.output {
        Outcome::Complete(done) => {
            settlement.observe(done.usage);
            let cost = settlement.finish();
            settlement.durable().await?;
            Output::Complete {
                body: done.body,
                cost,
                usage: done.usage,
            }
        }
        Outcome::Stream(chunks) => Output::Stream {
            chunks,
            settlement: Box::new(settlement),
        },
    };
    Ok(Finished { output, answered })
}
