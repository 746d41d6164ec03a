//! HTTP over turmoil's network: the nodes' upstream client (provider calls
//! and node-to-node admin forwarding go through the same seam as production's
//! reqwest client) and the one-shot requests simulated clients send.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use meridian_node::upstream::{UpstreamClient, UpstreamRequest, UpstreamResponse};

/// The node's [`UpstreamClient`] under turmoil: one connection per request.
pub struct SimUpstream;

impl UpstreamClient for SimUpstream {
    fn send(&self, req: UpstreamRequest) -> BoxFuture<'static, Result<UpstreamResponse, String>> {
        Box::pin(async move {
            let (status, headers, body) =
                exchange(req.method, &req.url, req.headers, req.body).await?;
            let body = body
                .into_data_stream()
                .map(|chunk| chunk.map_err(|e| e.to_string()));
            Ok(UpstreamResponse {
                status,
                headers,
                body: Box::pin(body),
            })
        })
    }
}

/// Sends one request and returns the response head and its body.
async fn exchange(
    method: http::Method,
    url: &str,
    headers: http::HeaderMap,
    body: Bytes,
) -> Result<(http::StatusCode, http::HeaderMap, hyper::body::Incoming), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("no host in {url}"))?
        .to_string();
    let stream = turmoil::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    request.headers_mut().extend(headers);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    Ok((parts.status, parts.headers, body))
}

/// What a simulated client saw.
#[derive(Debug)]
pub enum Answer {
    /// A complete response.
    Got {
        status: u16,
        headers: http::HeaderMap,
        body: serde_json::Value,
    },
    /// The connection could not be made: the request never reached a node.
    Unsent(String),
    /// Sent, but no complete answer within the deadline: it may or may not
    /// have been served.
    InDoubt(String),
}

/// POSTs (or GETs, without a body) JSON with a bearer key, within `deadline`.
pub async fn call(
    url: &str,
    key: &str,
    body: Option<&serde_json::Value>,
    deadline: Duration,
) -> Answer {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return Answer::Unsent(e.to_string()),
    };
    let Some(authority) = uri.authority().map(ToString::to_string) else {
        return Answer::Unsent(format!("no host in {url}"));
    };
    let connected = tokio::time::timeout(
        deadline,
        turmoil::net::TcpStream::connect(authority.as_str()),
    )
    .await;
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Answer::Unsent(e.to_string()),
        Err(_) => return Answer::Unsent("connect timed out".into()),
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let method = if body.is_some() { "POST" } else { "GET" };
        let request = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                body.map(ToString::to_string).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok::<_, String>((parts.status.as_u16(), parts.headers, json))
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok((status, headers, body))) => Answer::Got {
            status,
            headers,
            body,
        },
        Ok(Err(e)) => Answer::InDoubt(e),
        Err(_) => Answer::InDoubt("no answer within the deadline".into()),
    }
}
