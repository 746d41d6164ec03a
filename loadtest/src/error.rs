//! The crate's one error type. The binary wraps it in `anyhow` at `main`.

/// What can go wrong setting up or running a load test.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option out of range or contradicting another; says which and why.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The target URL does not parse or is not plain `http://`.
    #[error("bad target URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// Binding a socket, writing a report.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Reading or writing a result file.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A request the generator could not even build (a bad header value).
    #[error("building a request: {0}")]
    Request(#[from] http::Error),
    /// `/proc` could not be read or parsed.
    #[error("reading /proc: {0}")]
    Proc(String),
    /// A child process (gateway, fake upstream) could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A gateway under comparison did not come up, refused its setup calls,
    /// or died; `reason` ends with the tail of its log when there is one.
    #[error("{row}: {reason}")]
    Gateway { row: String, reason: String },
}
