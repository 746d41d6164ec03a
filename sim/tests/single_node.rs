//! The smallest world: one real gateway node on a simulated host, one client.
//! Shows that the node runs under turmoil through its seams (listener, clock,
//! RNG, upstream client) and that a seed replays the run exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meridian_node::clock::SeededRng;
use meridian_node::config::Config;
use meridian_node::node::Seams;
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use meridian_node::upstream::{UpstreamClient, UpstreamRequest, UpstreamResponse};
use meridian_sim::SimListener;
use meridian_sim::world::SimClock;

const KEY: &str = "sk-sim";

/// The mock models never call out; anything that tries is a test bug.
struct NoUpstream;

impl UpstreamClient for NoUpstream {
    fn send(
        &self,
        _: UpstreamRequest,
    ) -> futures_util::future::BoxFuture<'static, Result<UpstreamResponse, String>> {
        Box::pin(async { Err("no upstream in this world".to_owned()) })
    }
}

/// Runs one world and returns what the client saw: (status, request id, body).
fn run(seed: u64) -> (u16, String, serde_json::Value) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(Duration::from_secs(10))
        .build();
    sim.host("gateway", move || async move {
        let mut config = Config::embedded(&BTreeMap::<String, String>::new());
        config.node.data_dir = "/nonexistent-in-sim".into();
        let seams = Seams {
            upstream: Arc::new(NoUpstream),
            clock: Arc::new(SimClock),
            rng: SeededRng::from_seed(seed),
        };
        let store: Arc<dyn meridian_storage::Store> = Arc::new(meridian_storage::MemStore::new());
        let running = NodeBuilder::new(config, Secret::new(KEY), seams, store)
            .peers(Peers::Alone)
            .start()
            .await?;
        let listener = SimListener(turmoil::net::TcpListener::bind("0.0.0.0:4000").await?);
        running
            .serve(listener, None, std::future::pending())
            .await?;
        Ok(())
    });
    let seen = Arc::new(std::sync::Mutex::new(None));
    let out = seen.clone();
    sim.client("client", async move {
        let stream = turmoil::net::TcpStream::connect("gateway:4000").await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let body = r#"{"model":"mock-chat","messages":[{"role":"user","content":"hello sim"}]}"#;
        let req = http::Request::post("http://gateway/v1/chat/completions")
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let id = resp.headers()["x-request-id"].to_str()?.to_owned();
        let bytes = resp.into_body().collect().await?.to_bytes();
        *out.lock().unwrap() = Some((status, id, serde_json::from_slice(&bytes)?));
        Ok(())
    });
    sim.run().unwrap();
    seen.lock().unwrap().take().expect("client finished")
}

#[test]
fn a_node_serves_inside_the_simulation() {
    let (status, _, body) = run(7);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hi! This is Meridian's mock model. You said: hello sim"
    );
    // `created` comes from the injected clock: the simulation's epoch.
    assert_eq!(body["created"], 1_800_000_000u64);
}

#[test]
fn a_seed_replays_exactly() {
    assert_eq!(run(11), run(11));
    assert_ne!(run(11).1, run(12).1, "request ids come from the seeded RNG");
}
