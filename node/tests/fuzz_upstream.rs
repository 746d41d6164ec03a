//! Fuzzing what providers send back, through the whole request path in
//! process: a fake upstream client answers each call with chosen bytes
//! (arbitrary, arbitrary JSON, or a recorded answer with fields broken), in
//! chunks cut anywhere, with any status. The OpenAI and Anthropic adapters,
//! their stream mappers and the translation back to the client's format
//! must turn all of it into an answer or a clean error: the client sees a 2xx,
//! a 4xx, a 502 for an unreadable answer, or the provider's own error status
//! — never a 500 the provider did not send, never a panic, never a stream
//! that breaks off without a complete event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use fuzz_support::{Reply, arb_json, arb_mutated, assert_clean, check, post, runtime, send};
use http::{HeaderMap, HeaderValue, StatusCode};
use meridian_loadtest::fixtures;
use meridian_node::clock::{Clock, SeededRng};
use meridian_node::config;
use meridian_node::node::{Node, Seams};
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use meridian_node::upstream::{UpstreamClient, UpstreamRequest, UpstreamResponse};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

const MASTER: &str = "sk-fuzz-upstream-master";

/// What the fake upstream answers next.
#[derive(Clone, Debug, Default)]
struct Canned {
    status: u16,
    retry_after: Option<Vec<u8>>,
    chunks: Vec<Bytes>,
}

#[derive(Default)]
struct FakeUpstream(Mutex<Canned>);

impl UpstreamClient for FakeUpstream {
    fn send(&self, _req: UpstreamRequest) -> BoxFuture<'static, Result<UpstreamResponse, String>> {
        let canned = self.0.lock().unwrap().clone();
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            if let Some(v) = canned
                .retry_after
                .and_then(|v| HeaderValue::from_bytes(&v).ok())
            {
                headers.insert(http::header::RETRY_AFTER, v);
            }
            Ok(UpstreamResponse {
                status: StatusCode::from_u16(canned.status).unwrap(),
                headers,
                body: Box::pin(futures_util::stream::iter(
                    canned.chunks.into_iter().map(Ok),
                )),
            })
        })
    }
}

/// Streams name `created` from the clock; a fixed one keeps answers
/// comparable between calls.
struct FixedClock;

impl Clock for FixedClock {
    fn since_epoch(&self) -> Duration {
        Duration::from_secs(1_800_000_000)
    }
}

/// One deployment per adapter and mode. No retries and no cooldowns: each
/// answer reaches the client as its adapter mapped it.
const CONFIG: &str = "model_list:
  - model_name: oa
    litellm_params: {model: openai/gpt-4o, api_base: http://upstream.invalid/v1, api_key: sk-up}
  - model_name: oa-text
    litellm_params: {model: openai/gpt-3.5-turbo-instruct, api_base: http://upstream.invalid/v1, api_key: sk-up}
    model_info: {mode: completion}
  - model_name: oa-embed
    litellm_params: {model: openai/text-embedding-3-small, api_base: http://upstream.invalid/v1, api_key: sk-up}
    model_info: {mode: embedding}
  - model_name: an
    litellm_params: {model: anthropic/claude-3-5-sonnet-20241022, api_base: http://upstream.invalid, api_key: sk-up}
router_settings:
  num_retries: 0
  disable_cooldowns: true
";

async fn node(upstream: Arc<FakeUpstream>) -> Arc<Node> {
    let env = BTreeMap::<String, String>::new();
    let config = config::parse_str(CONFIG, "fuzz.yaml", &env, false).unwrap();
    let seams = Seams {
        upstream,
        clock: Arc::new(FixedClock),
        rng: SeededRng::from_seed(7),
    };
    let store: Arc<dyn meridian_storage::Store> = Arc::new(meridian_storage::MemStore::new());
    NodeBuilder::new(config, Secret::new(MASTER), seams, store)
        .peers(Peers::Alone)
        .start()
        .await
        .unwrap()
        .node
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    OpenAi,
    Anthropic,
}

/// A client route, the model group it calls, and whether it streams.
#[derive(Clone, Copy, Debug)]
struct Route {
    path: &'static str,
    model: &'static str,
    upstream: Format,
    stream: bool,
}

fn routes() -> Vec<Route> {
    let mut out = Vec::new();
    for stream in [false, true] {
        for (path, model, upstream) in [
            ("/v1/chat/completions", "oa", Format::OpenAi),
            ("/v1/chat/completions", "an", Format::Anthropic),
            ("/v1/messages", "oa", Format::OpenAi),
            ("/v1/messages", "an", Format::Anthropic),
            ("/v1/completions", "oa-text", Format::OpenAi),
        ] {
            out.push(Route {
                path,
                model,
                upstream,
                stream,
            });
        }
    }
    out.push(Route {
        path: "/v1/embeddings",
        model: "oa-embed",
        upstream: Format::OpenAi,
        stream: false,
    });
    out
}

fn request_body(r: &Route) -> String {
    match r.path {
        "/v1/messages" => json!({ "model": r.model, "max_tokens": 16, "stream": r.stream, "messages": [{ "role": "user", "content": "hi" }] }),
        "/v1/completions" => json!({ "model": r.model, "prompt": "hi", "stream": r.stream }),
        "/v1/embeddings" => json!({ "model": r.model, "input": "hi" }),
        _ => json!({ "model": r.model, "stream": r.stream, "messages": [{ "role": "user", "content": "hi" }] }),
    }
    .to_string()
}

/// The recorded answer the provider would send for `r`: one JSON body, or
/// the stream's events as (`event:` name, data).
fn recorded(r: &Route) -> Vec<(Option<String>, Value)> {
    let text = match (r.upstream, r.stream, r.path) {
        (Format::Anthropic, false, _) => fixtures::ANTHROPIC_MESSAGES,
        (Format::Anthropic, true, _) => fixtures::ANTHROPIC_STREAM,
        (_, false, "/v1/embeddings") => fixtures::OPENAI_EMBEDDINGS,
        (_, false, "/v1/completions") => fixtures::OPENAI_COMPLETION,
        (_, false, _) => fixtures::OPENAI_CHAT,
        (_, true, "/v1/completions") => fixtures::OPENAI_COMPLETION_STREAM,
        (_, true, _) => fixtures::OPENAI_CHAT_STREAM,
    };
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| match (r.upstream, r.stream) {
            // Anthropic's stream fixture holds `{"event", "data"}` per line.
            (Format::Anthropic, true) => (v["event"].as_str().map(String::from), v["data"].clone()),
            _ => (None, v),
        })
        .collect()
}

/// The body the provider sends: the JSON itself, or SSE frames in the
/// provider's framing (OpenAI ends with `[DONE]`).
fn encode(r: &Route, events: &[(Option<String>, Vec<u8>)]) -> Vec<u8> {
    if !r.stream {
        return events.first().map(|(_, d)| d.clone()).unwrap_or_default();
    }
    let mut out = Vec::new();
    for (name, data) in events {
        if let Some(n) = name {
            out.extend_from_slice(format!("event: {n}\n").as_bytes());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\n\n");
    }
    if r.upstream == Format::OpenAi {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
    out
}

/// The recorded answer with one event (or the body) mutated, or replaced by
/// any JSON; or bytes that are no answer at all.
fn arb_body(r: Route) -> BoxedStrategy<Vec<u8>> {
    let events = recorded(&r);
    let n = events.len();
    let encoded = move |events: &[(Option<String>, Value)], at: usize, data: Vec<u8>| {
        let mut raw: Vec<(Option<String>, Vec<u8>)> = events
            .iter()
            .map(|(name, v)| (name.clone(), v.to_string().into_bytes()))
            .collect();
        raw[at].1 = within_bound(data);
        encode(&r, &raw)
    };
    let mutated = {
        let events = events.clone();
        (0..n).prop_flat_map(move |at| {
            let events = events.clone();
            arb_mutated(events[at].1.clone()).prop_map(move |data| encoded(&events, at, data))
        })
    };
    let replaced = {
        let events = events.clone();
        (0..n, arb_json()).prop_map(move |(at, v)| encoded(&events, at, v.to_string().into_bytes()))
    };
    // Usage near u64::MAX panics today (see the two ignored tests below):
    // the property keeps every counter under 2^52, so that even 256 answers'
    // worth, summed into one minute's count, fit.
    let bound = MAX_COUNTER;
    let counters = prop::collection::vec(
        prop_oneof![0..1000u64, (bound - 1000)..=bound, 0..=bound],
        8,
    );
    let usage = counters.prop_map(move |c| {
        let raw: Vec<(Option<String>, Vec<u8>)> = events
            .iter()
            .map(|(name, v)| {
                let mut v = v.clone();
                set_counters(&mut v, &mut c.iter().copied().cycle());
                (name.clone(), v.to_string().into_bytes())
            })
            .collect();
        encode(&r, &raw)
    });
    prop_oneof![
        4 => mutated,
        2 => replaced,
        2 => usage,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
    .boxed()
}

/// The largest token count the property's providers report; see
/// `arb_body`.
const MAX_COUNTER: u64 = 1 << 52;

/// `data` with any token counter a mutation made larger than
/// [`MAX_COUNTER`] brought down to it (the known overflows stay out of the
/// property; bytes that are not JSON carry no counter the gateway reads).
fn within_bound(data: Vec<u8>) -> Vec<u8> {
    fn clamp(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    match child.as_u64() {
                        Some(n) if k.ends_with("_tokens") && n > MAX_COUNTER => {
                            *child = Value::from(MAX_COUNTER);
                        }
                        _ => clamp(child),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(clamp),
            _ => {}
        }
    }
    match serde_json::from_slice::<Value>(&data) {
        Ok(mut v) => {
            clamp(&mut v);
            v.to_string().into_bytes()
        }
        Err(_) => data,
    }
}

/// Sets every token counter in `v`, wherever it is nested, from `values`.
fn set_counters(v: &mut Value, values: &mut impl Iterator<Item = u64>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k.ends_with("_tokens") && child.is_u64() {
                    *child = Value::from(values.next().unwrap_or(0));
                } else {
                    set_counters(child, values);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| set_counters(c, values)),
        _ => {}
    }
}

fn chunked(bytes: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.extend([0, bytes.len()]);
    at.sort_unstable();
    at.windows(2)
        .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
        .collect()
}

async fn call(node: &Arc<Node>, upstream: &FakeUpstream, r: &Route, canned: Canned) -> Reply {
    *upstream.0.lock().unwrap() = canned;
    let mut req = post(r.path, Some(MASTER), request_body(r));
    // A fixed id keeps Anthropic stream message ids equal between calls.
    req.headers_mut()
        .insert("x-request-id", HeaderValue::from_static("fuzz-request"));
    send(node, req).await
}

/// What the client may see when the provider answered `status`.
fn assert_fair(r: &Route, upstream_status: u16, reply: &Reply) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(&reply.body);
    let passed_on = upstream_status >= 400 && reply.status == upstream_status;
    let unreadable = reply.status == 502;
    if !passed_on && !unreadable {
        assert_clean(r.path, reply)?;
    }
    prop_assert!(
        reply.status < 500 || passed_on || unreadable,
        "{r:?}: upstream {upstream_status}, client {} {shown}",
        reply.status
    );
    Ok(())
}

/// Status 200 with a broken answer, and error statuses with any body.
#[test]
fn any_upstream_answer_reaches_the_client_as_an_answer_or_a_clean_error() {
    let rt = runtime();
    let upstream = Arc::new(FakeUpstream::default());
    let node = rt.block_on(node(upstream.clone()));
    let status = prop_oneof![
        6 => Just(200u16),
        1 => 100u16..600,
        1 => prop::sample::select(vec![400u16, 401, 404, 413, 429, 500, 503, 529]),
    ];
    let retry_after = prop::option::of(prop_oneof![
        "[0-9.eE+-]{0,8}".prop_map(String::into_bytes),
        prop::sample::select(vec!["inf", "NaN", "-1", "1e30", "18446744073709551616"])
            .prop_map(|s| s.as_bytes().to_vec()),
    ]);
    let cases = prop::sample::select(routes()).prop_flat_map(move |r| {
        (
            Just(r),
            status.clone(),
            retry_after.clone(),
            arb_body(r),
            prop::collection::vec(any::<Index>(), 0..6),
        )
    });
    check(256, cases, |(r, status, retry_after, body, cuts)| {
        let canned = Canned {
            status,
            retry_after,
            chunks: chunked(&body, &cuts),
        };
        let reply = rt.block_on(call(&node, &upstream, &r, canned));
        assert_fair(&r, status, &reply)
    });
}

/// The recorded answers, cut anywhere, reach the client whole and the same
/// as when sent in one piece.
#[test]
fn recorded_answers_split_anywhere_give_the_same_answer() {
    let rt = runtime();
    let upstream = Arc::new(FakeUpstream::default());
    let node = rt.block_on(node(upstream.clone()));
    let cases = (
        prop::sample::select(routes()),
        prop::collection::vec(any::<Index>(), 0..12),
    );
    check(64, cases, |(r, cuts)| {
        let events: Vec<(Option<String>, Vec<u8>)> = recorded(&r)
            .into_iter()
            .map(|(n, v)| (n, v.to_string().into_bytes()))
            .collect();
        let bytes = encode(&r, &events);
        let canned = |chunks| Canned {
            status: 200,
            retry_after: None,
            chunks,
        };
        let whole = rt.block_on(call(
            &node,
            &upstream,
            &r,
            canned(vec![Bytes::from(bytes.clone())]),
        ));
        prop_assert_eq!(
            whole.status,
            200,
            "{:?} {}",
            r,
            String::from_utf8_lossy(&whole.body)
        );
        assert_clean(r.path, &whole)?;
        let split = rt.block_on(call(&node, &upstream, &r, canned(chunked(&bytes, &cuts))));
        prop_assert_eq!(
            String::from_utf8_lossy(&split.body),
            String::from_utf8_lossy(&whole.body)
        );
        Ok(())
    });
}

/// The recorded OpenAI chat answer, reporting `usage`.
fn chat_answer(usage: Value) -> Canned {
    let mut body: Value = serde_json::from_str(fixtures::OPENAI_CHAT).unwrap();
    body["usage"] = usage;
    Canned {
        status: 200,
        retry_after: None,
        chunks: vec![Bytes::from(body.to_string())],
    }
}

/// Found by `any_upstream_answer_…`: an answer reporting usage near
/// u64::MAX saturates the deployment's token count for the minute
/// (`Live::correct_tokens`), and the next request to that deployment adds
/// its estimate to it unchecked (`Live::start`): a panic in debug builds, a
/// wrapped count in release builds.
#[test]
fn a_huge_reported_usage_does_not_break_the_next_request() {
    let rt = runtime();
    let upstream = Arc::new(FakeUpstream::default());
    let node = rt.block_on(node(upstream.clone()));
    let chat = routes()[0];
    let huge = chat_answer(json!({ "prompt_tokens": u64::MAX, "completion_tokens": 0 }));
    let first = rt.block_on(call(&node, &upstream, &chat, huge));
    assert_fair(&chat, 200, &first).unwrap();
    let normal = chat_answer(json!({ "prompt_tokens": 12, "completion_tokens": 7 }));
    let second = rt.block_on(call(&node, &upstream, &chat, normal));
    assert_eq!(second.status, 200);
}

/// Found by `any_anthropic_answer_…` in `fuzz_translate`, here end to end:
/// Anthropic's input counters are summed unchecked
/// (`AnthropicUsage::to_usage`), so an answer whose `input_tokens` and
/// `cache_read_input_tokens` add past u64::MAX panics the request (the
/// client's connection drops) in debug builds and wraps the billed prompt
/// tokens in release builds.
#[test]
fn anthropic_usage_counters_that_overflow_are_a_clean_answer() {
    let rt = runtime();
    let upstream = Arc::new(FakeUpstream::default());
    let node = rt.block_on(node(upstream.clone()));
    let route = routes()[1];
    assert_eq!(route.upstream, Format::Anthropic);
    let body = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "stop_reason": "end_turn",
        "usage": { "input_tokens": u64::MAX, "cache_read_input_tokens": 1, "output_tokens": 0 },
    });
    let canned = Canned {
        status: 200,
        retry_after: None,
        chunks: vec![Bytes::from(body.to_string())],
    };
    let reply = rt.block_on(call(&node, &upstream, &route, canned));
    assert_fair(&route, 200, &reply).unwrap();
}
