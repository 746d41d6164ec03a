//! What a request asks of the limits before a deployment is chosen: its
//! token estimates, completions and customer, and the output reserved when
//! it sets no `max_tokens`.

/// Output tokens reserved against budgets when a request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 256;

/// Under a `strict` token or budget limit, a request that sets no
/// `max_tokens` reserves this many output tokens and is sent to the provider
/// with `max_tokens` set to it, so its cost cannot exceed its reservation.
pub const STRICT_OUTPUT_CAP: u64 = 4096;

/// What a request asks for, as far as limits are concerned.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    /// The request's `user` field: the customer (end user) it is for.
    pub customer: Option<String>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// An upper bound of the prompt's tokens (its text bytes: a token is at
    /// least one byte), reserved under `strict` limits.
    pub prompt_tokens_max: u64,
    /// The request's `max_tokens` (or `max_completion_tokens`).
    pub max_tokens: Option<u64>,
    /// The request's tags (`tags`, `metadata.tags`, `x-litellm-tags`).
    pub tags: Vec<String>,
    /// How many completions the provider generates for it (`n`, or
    /// completions' `best_of`): each may use the whole output limit.
    pub choices: u64,
    /// Already counted against requests-per-minute limits: a retry or
    /// fallback of the same client request is admitted again (the next
    /// deployment's price), but counts once.
    pub counted: bool,
}

/// The most completions a request asks for among `fields` (at least one).
/// Read leniently, as a lenient provider would (`8`, `8.0`, `"8"`): a
/// reservation must never count fewer completions than are made.
fn choices(extra: &serde_json::Map<String, serde_json::Value>, fields: &[&str]) -> u64 {
    fields
        .iter()
        .filter_map(|f| {
            let v = extra.get(*f)?;
            let n = match v {
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
                other => other.as_f64()?,
            };
            // Saturating: a huge count makes a huge reservation, refused.
            (n.is_finite() && n > 0.0).then(|| n.ceil() as u64)
        })
        .max()
        .unwrap_or(1)
        .max(1)
}

impl Demand {
    pub fn for_chat(req: &crate::wire::openai::ChatRequest) -> Self {
        let text: usize = req
            .messages
            .iter()
            .map(|m| m.content.as_ref().map_or(0, |c| c.text_len()))
            .sum();
        Self {
            customer: req.user.clone(),
            prompt_tokens: Self::estimate(text, req.messages.len()),
            prompt_tokens_max: Self::upper_bound(text, req.messages.len()),
            max_tokens: req.output_limit().map(u64::from),
            tags: Vec::new(),
            choices: choices(&req.extra, &["n"]),
            counted: false,
        }
    }

    pub fn for_completion(req: &crate::wire::openai::CompletionRequest) -> Self {
        let (text, n) = match &req.prompt {
            crate::wire::openai::Prompt::One(p) => (p.len(), 1),
            crate::wire::openai::Prompt::Many(ps) => (ps.iter().map(String::len).sum(), ps.len()),
        };
        Self {
            customer: req.user.clone(),
            prompt_tokens: Self::estimate(text, n),
            prompt_tokens_max: Self::upper_bound(text, n),
            max_tokens: req.max_tokens.map(u64::from),
            tags: Vec::new(),
            choices: choices(&req.extra, &["n", "best_of"]),
            counted: false,
        }
    }

    pub fn for_embeddings(req: &crate::wire::openai::EmbeddingsRequest) -> Self {
        let text = match &req.input {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => s.len(),
                    // Token arrays: about four bytes per token.
                    serde_json::Value::Array(tokens) => tokens.len() * 4,
                    _ => 4,
                })
                .sum(),
            _ => 0,
        };
        Self {
            customer: req.user.clone(),
            prompt_tokens: Self::estimate(text, 0),
            // Token arrays are counted at four "bytes" a token: an upper bound
            // of their length too.
            prompt_tokens_max: Self::upper_bound(text, 0),
            max_tokens: Some(0),
            tags: Vec::new(),
            choices: 1,
            counted: false,
        }
    }

    /// A rough prompt estimate from the text the request carries: about four
    /// bytes per token, plus a little per message. Settlement corrects it.
    pub fn estimate(text_bytes: usize, messages: usize) -> u64 {
        crate::providers::estimate_tokens(text_bytes) + 4 * messages as u64
    }

    /// At least as many tokens as the prompt can have: one per byte of text,
    /// plus the providers' per-message framing. (Images and audio are not
    /// text; their tokens are not bounded here.)
    pub fn upper_bound(text_bytes: usize, messages: usize) -> u64 {
        text_bytes as u64 + 8 * messages as u64 + 8
    }
}
