//! The seam between the gateway and the network towards providers.
//!
//! Provider adapters never call an HTTP library directly: they build an
//! [`UpstreamRequest`] and hand it to an [`UpstreamClient`]. Production uses
//! [`HttpUpstream`] (reqwest, pooled keep-alive connections, rustls); simulations
//! plug in a client that dials over the simulated network. Deadlines are applied
//! here with `tokio::time`, so they hold (and are simulated) whichever client runs.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, StatusCode};

use crate::error::{Error, Result};

/// Bytes of a response body as they arrive. An item error is a transport failure.
pub type BodyStream = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, String>> + Send>>;

pub struct UpstreamRequest {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

/// Sends one HTTP request to a provider. Errors are transport failures (refused,
/// reset, TLS, DNS) described for an operator; HTTP error statuses are responses.
pub trait UpstreamClient: Send + Sync + 'static {
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, std::result::Result<UpstreamResponse, String>>;
}

/// Largest non-streaming upstream body we accept (a runaway or hostile upstream
/// must not exhaust memory).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// Sends `req` and waits at most `deadline` for the response head.
pub async fn send(
    client: &dyn UpstreamClient,
    req: UpstreamRequest,
    deployment: &str,
    deadline: Duration,
) -> Result<UpstreamResponse> {
    match tokio::time::timeout(deadline, client.send(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(reason)) => Err(Error::UpstreamUnreachable {
            deployment: deployment.to_owned(),
            reason,
        }),
        Err(_) => Err(Error::UpstreamTimeout {
            deployment: deployment.to_owned(),
            after: deadline,
        }),
    }
}

/// Reads a whole (non-streaming) body, bounded in size and by `deadline`.
pub async fn read_body(
    mut body: BodyStream,
    deployment: &str,
    deadline: Duration,
) -> Result<Bytes> {
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|reason| Error::UpstreamUnreachable {
                deployment: deployment.to_owned(),
                reason,
            })?;
            if buf.len() + chunk.len() > MAX_UPSTREAM_BODY {
                return Err(Error::protocol(deployment, "response body too large"));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| {
            Err(Error::UpstreamTimeout {
                deployment: deployment.to_owned(),
                after: deadline,
            })
        })
}

/// Wraps a streaming body so that a silence longer than `idle` ends it with a
/// timeout error instead of hanging the client forever.
pub fn with_idle_timeout(body: BodyStream, deployment: String, idle: Duration) -> BodyStream {
    Box::pin(futures_util::stream::unfold(Some(body), move |state| {
        let deployment = deployment.clone();
        async move {
            let mut body = state?;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(format!(
                        "no data from `{deployment}` for {}s",
                        idle.as_secs_f64()
                    )),
                    None,
                )),
            }
        }
    }))
}

/// The production client: one reqwest client (one connection pool) for all
/// deployments, HTTP/1.1 keep-alive and HTTP/2 where the provider offers it.
#[derive(Clone)]
pub struct HttpUpstream {
    client: reqwest::Client,
    urls: Arc<Mutex<Urls>>,
}

/// URLs already parsed: a deployment calls the same few endpoints on every
/// request, and parsing one was ~1.4 % of a loaded node's CPU (a copy of a
/// parsed one is one allocation).
#[derive(Default)]
struct Urls(HashMap<String, reqwest::Url>);

/// Distinct URLs kept; past it the map starts again (a config with more
/// endpoints than this parses some on every call, as it did before).
const MAX_PARSED_URLS: usize = 256;

impl Urls {
    fn parsed(&mut self, url: &str) -> Option<reqwest::Url> {
        if let Some(parsed) = self.0.get(url) {
            return Some(parsed.clone());
        }
        let parsed = reqwest::Url::parse(url).ok()?;
        if self.0.len() >= MAX_PARSED_URLS {
            self.0.clear();
        }
        self.0.insert(url.to_owned(), parsed.clone());
        Some(parsed)
    }
}

/// reqwest is built without a bundled TLS crypto provider; ring is ours. Call
/// before building any reqwest client; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl HttpUpstream {
    pub fn new() -> Result<Self> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            client,
            urls: Arc::default(),
        })
    }
}

impl UpstreamClient for HttpUpstream {
    fn send(
        &self,
        req: UpstreamRequest,
    ) -> BoxFuture<'static, std::result::Result<UpstreamResponse, String>> {
        // An unparsable URL goes to reqwest as it is, which says why.
        let parsed = self
            .urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .parsed(&req.url);
        let builder = match parsed {
            Some(url) => self.client.request(req.method, url),
            None => self.client.request(req.method, &req.url),
        }
        .headers(req.headers)
        .body(req.body);
        Box::pin(async move {
            let mut resp = builder.send().await.map_err(describe_reqwest_error)?;
            let status = resp.status();
            let headers = std::mem::take(resp.headers_mut());
            let body: BodyStream = Box::pin(
                resp.bytes_stream()
                    .map(|r| r.map_err(describe_reqwest_error)),
            );
            Ok(UpstreamResponse {
                status,
                headers,
                body,
            })
        })
    }
}

/// reqwest's error text can include the URL; ours never carries credentials in
/// URLs (keys go in headers), but strip the URL anyway so nothing user-supplied in
/// a query string is echoed.
fn describe_reqwest_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: Vec<&'static str>) -> BodyStream {
        Box::pin(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes()))),
        ))
    }

    #[test]
    fn parsed_urls_are_kept_and_bounded() {
        let mut urls = Urls::default();
        let a = urls
            .parsed("http://127.0.0.1:9/v1/chat/completions")
            .unwrap();
        assert_eq!(a.as_str(), "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(urls.parsed(a.as_str()), Some(a));
        assert!(urls.parsed("not a url").is_none());
        for i in 0..MAX_PARSED_URLS + 3 {
            urls.parsed(&format!("http://h{i}/")).unwrap();
        }
        assert!(urls.0.len() <= MAX_PARSED_URLS);
    }

    #[tokio::test]
    async fn read_body_concatenates() {
        let body = read_body(body_of(vec!["ab", "cd"]), "d", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&body[..], b"abcd");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_a_silent_stream() {
        let silent: BodyStream = Box::pin(futures_util::stream::pending());
        let mut wrapped = with_idle_timeout(silent, "dep".into(), Duration::from_secs(5));
        let item = wrapped.next().await.unwrap();
        assert!(item.unwrap_err().contains("no data from `dep` for 5s"));
        assert!(wrapped.next().await.is_none());
    }
}
