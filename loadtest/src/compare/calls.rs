//! The setup calls a comparison makes to a row's processes (never the load
//! itself, which is [`crate::run`]'s): one HTTP/1.1 exchange at a time, and
//! the readiness check of the pass-through rows, which have no health route
//! of their own worth trusting — they are ready when a chat completion
//! comes back through them.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::child::{Group, Proc};
use super::gateway::{MODEL, Ready, Start};
use crate::Error;

/// A plain HTTP/1.1 client for setup calls.
pub(crate) type Http = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One call; `None` when nothing answered in time. A body that is not JSON
/// comes back as a JSON string.
pub(crate) async fn call(
    http: &Http,
    method: http::Method,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    call_with(http, method, url, key, &[], body).await
}

/// [`call`] with more headers (a gateway's routing headers).
pub(crate) async fn call_with(
    http: &Http,
    method: http::Method,
    url: &str,
    key: Option<&str>,
    headers: &[(String, String)],
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let body = match body {
        Some(b) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).ok()?;
    let exchange = async {
        let response = http.request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Some((status, value))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

impl Start<'_> {
    /// Starts `command` as the row's one process, `name` (its output to
    /// `name.log` in the row's directory), ready once a chat completion with
    /// `key` and `headers` comes back through it on 127.0.0.1:`port`.
    pub(crate) async fn start_proxy(
        &self,
        name: &str,
        command: std::process::Command,
        port: u16,
        key: &str,
        headers: &[(String, String)],
    ) -> Result<Ready, Error> {
        let mut group = Group::default();
        let log = self.dir.join(format!("{name}.log"));
        group.procs.push(Proc::spawn(name, command, &log)?);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + self.timeout;
        self.wait_chat(&mut group, &url, key, headers, deadline)
            .await?;
        Ok(Ready {
            group,
            urls: vec![url],
            key: key.to_owned(),
        })
    }

    /// Until a chat completion through `url` (with `key` and `headers`, as
    /// load will send it) answers 200: the path load takes, end to end. An
    /// error naming the row's first process if it exits or the deadline
    /// passes.
    pub(crate) async fn wait_chat(
        &self,
        group: &mut Group,
        url: &str,
        key: &str,
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Result<(), Error> {
        let chat = format!("{url}/v1/chat/completions");
        let body = json!({"model": MODEL, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hello"}]});
        self.poll(
            group,
            0,
            deadline,
            "did not answer a test chat completion with 200",
            || {
                let (chat, body) = (chat.clone(), body.clone());
                async move {
                    call_with(
                        self.http,
                        http::Method::POST,
                        &chat,
                        Some(key),
                        headers,
                        Some(&body),
                    )
                    .await
                    .is_some_and(|(status, _)| status == 200)
                }
            },
        )
        .await
    }
}
