//! Shared by the integration tiers: a real gateway on an ephemeral port of
//! 127.0.0.1, configured from YAML, talking to upstreams over real sockets.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_node::clock::{SeededRng, SystemClock};
use meridian_node::config::{self, Config};
use meridian_node::node::Seams;
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use meridian_node::upstream::HttpUpstream;
use serde_json::Value;

pub const MASTER_KEY: &str = "sk-test-master-key-0001";

pub struct Gateway {
    pub base: String,
    pub client: reqwest::Client,
    _data: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

pub async fn start_yaml(yaml: &str) -> Gateway {
    let env: BTreeMap<String, String> = BTreeMap::new();
    let config = config::parse_str(yaml, "test.yaml", &env, false).expect("test config parses");
    start(config).await
}

pub async fn start(config: Config) -> Gateway {
    start_on(config, Arc::new(meridian_storage::MemStore::new())).await
}

/// [`start`] on a given store (a test that breaks the disk keeps a handle).
pub async fn start_on(mut config: Config, store: Arc<dyn meridian_storage::Store>) -> Gateway {
    let data = tempfile::tempdir().unwrap();
    config.node.data_dir = data.path().to_path_buf();
    let seams = Seams {
        upstream: Arc::new(HttpUpstream::new().unwrap()),
        clock: Arc::new(SystemClock),
        rng: SeededRng::from_seed(42),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let running = NodeBuilder::new(config, Secret::new(MASTER_KEY), seams, store)
        .peers(Peers::Alone)
        .api_addr(addr)
        .start()
        .await
        .unwrap();
    let base = format!("http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        running
            .serve(
                meridian_node::listener::tcp_no_delay(listener),
                None,
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
    });
    Gateway {
        base,
        client: reqwest::Client::new(),
        _data: data,
        _shutdown: tx,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `data:` payloads of an SSE body, in order (comments and `event:` lines
    /// are skipped; use [`Reply::events`] for named events).
    pub fn data_lines(&self) -> Vec<String> {
        self.text
            .split("\n\n")
            .filter_map(|frame| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// `(event, data)` pairs of an Anthropic-style SSE body.
    pub fn events(&self) -> Vec<(String, Value)> {
        self.text
            .split("\n\n")
            .filter_map(|frame| {
                let event = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((event.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect()
    }
}

impl Gateway {
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.post_raw(path, body.to_string(), Some(MASTER_KEY))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: String, key: Option<&str>) -> Reply {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        reply(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        reply(req.send().await.unwrap()).await
    }
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

/// Concatenated `delta.content` of OpenAI chat chunks.
pub fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

/// The `data:` payloads before `[DONE]`, parsed; panics if `[DONE]` is missing.
pub fn openai_chunks(reply: &Reply) -> Vec<Value> {
    let lines = reply.data_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("[DONE]"),
        "stream must end with [DONE]: {}",
        reply.text
    );
    lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
