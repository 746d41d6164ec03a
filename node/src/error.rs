//! The node's one error type. Every failure on a request path is a variant here;
//! `api::error_response` maps it to an HTTP status and an OpenAI- or
//! Anthropic-shaped body at the edge, and nowhere else.

use std::time::Duration;

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which side of the gateway a failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The caller sent something wrong; retrying the same request cannot help.
    Client,
    /// The provider failed or misbehaved.
    Upstream,
    /// The gateway itself failed.
    Gateway,
}

#[derive(Debug, Error)]
pub enum Error {
    /// The body is not valid JSON or a field has the wrong type. `param` names the
    /// field by its path (`messages[0].role`) when one is to blame.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },

    #[error(
        "Invalid model name passed in model={model}. Call `/v1/models` to view available models for your key."
    )]
    ModelNotFound { model: String },

    #[error("model `{model}` does not support {operation}")]
    Unsupported {
        model: String,
        operation: &'static str,
    },

    #[error(
        "No api key passed in. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`."
    )]
    MissingKey,

    #[error("Authentication Error, invalid api key.")]
    InvalidKey,

    /// A known key that may not be used now (blocked, expired, team blocked).
    #[error("Authentication Error: {0}.")]
    KeyRefused(String),

    /// Authenticated, but not allowed; the message says what was missing.
    #[error("{0}")]
    Forbidden(String),

    #[error("key not allowed to access model `{model}`; this key can use: {allowed}")]
    ModelNotAllowed { model: String, allowed: String },

    #[error("{0}")]
    NotFound(String),

    /// The change conflicts with the current state (it already exists, ...).
    #[error("{0}")]
    Conflict(String),

    /// The region's replicated metadata could not be read or written.
    #[error("{0}")]
    Consensus(#[from] meridian_consensus::Error),

    /// The home region of a `strict` limit did not answer a request for
    /// rights (its reason names inter-node addresses: logged, never sent).
    #[error("region {home} (which issues this limit's rights) could not be reached: {reason}")]
    RightsUnreachable { home: String, reason: String },

    /// This region's rights ledger could not take a request (no leader, or
    /// the outcome is unknown).
    #[error("the rights ledger: {0}")]
    RightsLedger(String),

    /// A budget or rate limit refused the request (429).
    #[error("{}", .0.message())]
    LimitExceeded(Box<crate::admission::Exceeded>),

    /// Every deployment of the group is cooling down or over its limits (429,
    /// in LiteLLM's wording, with when to retry), or none is one the request
    /// may use (`retry_after: None`: residency, tags; 400).
    #[error("{}", no_deployments_message(model_group, reason, *retry_after))]
    NoDeployments {
        model_group: String,
        reason: String,
        retry_after: Option<Duration>,
    },

    #[error("Request body is larger than the limit of {limit_bytes} bytes.")]
    PayloadTooLarge { limit_bytes: usize },

    /// The request body did not arrive within the listener's limit (408).
    #[error("The request body did not arrive within {}s.", .0.as_secs_f64())]
    RequestTimeout(Duration),

    #[error("The {feature} endpoints are disabled on this node.")]
    Disabled { feature: &'static str },

    /// The provider answered with an error status; its message is passed through.
    #[error("{message}")]
    UpstreamStatus {
        status: u16,
        message: String,
        /// The provider's own error type (`invalid_request_error`, ...), if it sent one.
        kind: Option<String>,
        code: Option<String>,
        /// Seconds from the provider's `retry-after`, passed on to the client.
        retry_after: Option<u64>,
        /// What the provider's error says about the request, read once
        /// where its body is decoded; routing classifies on this, never on
        /// the message.
        rejection: Option<Rejection>,
    },

    #[error("The upstream deployment `{deployment}` did not answer within {}s.", after.as_secs_f64())]
    UpstreamTimeout { deployment: String, after: Duration },

    /// Connection refused, reset, DNS failure: nothing usable came back.
    #[error("Could not reach the upstream deployment `{deployment}`: {reason}")]
    UpstreamUnreachable { deployment: String, reason: String },

    /// The provider answered, but not in a shape we can read.
    #[error("The upstream deployment `{deployment}` sent an invalid response: {reason}")]
    UpstreamProtocol { deployment: String, reason: String },

    /// A configuration file is wrong. Always names the file and the key's path.
    #[error("{file}: `{path}`: {expected}")]
    Config {
        file: String,
        path: String,
        expected: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// This node's writes are failing (a full or broken disk): it cannot
    /// make what a call costs durable, so it takes no new calls and withholds
    /// answers whose cost it could not record (503). The cause is logged.
    #[error(
        "This node cannot write to its storage, so it cannot record what calls cost; it takes no calls until its writes work again. Retry on another node."
    )]
    StorageFailing,

    #[error("internal error: {0}")]
    Internal(String),
}

fn no_deployments_message(group: &str, reason: &str, retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(
            "No deployments available for selected model, Try again in {} seconds. Passed model={group}. {reason}.",
            d.as_secs_f64().ceil().max(1.0)
        ),
        None => {
            format!("No deployments available for selected model. Passed model={group}. {reason}.")
        }
    }
}

/// Why a provider refused a request it understood, when its error says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The prompt (with the output asked for) exceeds the model's context.
    ContextWindowExceeded,
    /// The provider's content policy refused it.
    ContentPolicy,
}

impl Rejection {
    /// Reads a provider's error: its `code` and `type` (OpenAI:
    /// `context_length_exceeded`, `content_policy_violation`), else the
    /// wording providers use when they send no code (Anthropic: "prompt is
    /// too long"; OpenAI-compatible servers: "maximum context length").
    pub fn read(
        status: u16,
        code: Option<&str>,
        kind: Option<&str>,
        message: &str,
    ) -> Option<Self> {
        if !(400..500).contains(&status) || matches!(status, 401 | 403 | 404 | 408 | 429) {
            return None;
        }
        let said = |needle: &str| {
            [code, kind, Some(message)]
                .into_iter()
                .flatten()
                .any(|s| s.to_ascii_lowercase().contains(needle))
        };
        if said("context_length_exceeded")
            || said("context length")
            || said("context window")
            || said("prompt is too long")
        {
            Some(Rejection::ContextWindowExceeded)
        } else if said("content_policy") || said("content policy") {
            Some(Rejection::ContentPolicy)
        } else {
            None
        }
    }
}

impl Error {
    /// Seconds the provider asked to wait before trying again (its
    /// `retry-after`).
    pub fn upstream_retry_after(&self) -> Option<u64> {
        match self {
            Error::UpstreamStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn protocol(deployment: &str, reason: impl Into<String>) -> Self {
        Error::UpstreamProtocol {
            deployment: deployment.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Error::InvalidRequest { .. }
            | Error::ModelNotFound { .. }
            | Error::Unsupported { .. }
            | Error::MissingKey
            | Error::InvalidKey
            | Error::KeyRefused(_)
            | Error::Forbidden(_)
            | Error::ModelNotAllowed { .. }
            | Error::NotFound(_)
            | Error::Conflict(_)
            | Error::PayloadTooLarge { .. }
            | Error::RequestTimeout(_)
            | Error::LimitExceeded(_)
            | Error::Disabled { .. } => Side::Client,
            Error::NoDeployments { .. } => Side::Upstream,
            Error::UpstreamStatus { .. }
            | Error::UpstreamTimeout { .. }
            | Error::UpstreamUnreachable { .. }
            | Error::UpstreamProtocol { .. } => Side::Upstream,
            Error::Config { .. }
            | Error::Io { .. }
            | Error::Internal(_)
            | Error::Consensus(_)
            | Error::RightsUnreachable { .. }
            | Error::RightsLedger(_)
            | Error::StorageFailing => Side::Gateway,
        }
    }
}
