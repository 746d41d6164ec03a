//! Shared by the fuzz tests: generators of hostile input (arbitrary JSON,
//! awkward text and numbers, mutations of valid bodies), a property runner
//! that reports the minimal failing input, and the checks every HTTP answer
//! must pass (never a 5xx, errors in the route's shape).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::Request;
use meridian_node::node::Node;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Number, Value};
use tower::ServiceExt;

/// Runs `test` on `cases` inputs from `strategy`; a failure panics with the
/// shrunk input, which is what goes into a regression test. A panic inside
/// `test` (the code under test panicking) is caught and shrunk the same way.
/// `PROPTEST_CASES` overrides `cases`, for a longer hunt than CI's.
pub fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    let config = Config {
        cases,
        // The runner is driven by hand, so proptest has no source file to
        // keep regressions next to; the panic message carries the input.
        failure_persistence: None,
        ..Config::default()
    };
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

/// One runtime per property: the node's Raft and flush tasks live on it
/// between cases.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Field names the gateway reads, so generated objects hit real code paths
/// and not only the "unknown field" branch.
pub const FIELDS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "user",
    "n",
    "best_of",
    "tags",
    "metadata",
    "fallbacks",
    "type",
    "text",
    "image_url",
    "url",
    "function",
    "name",
    "arguments",
    "parameters",
    "tool_calls",
    "tool_call_id",
    "id",
    "input",
    "prompt",
    "system",
    "stop_sequences",
    "source",
    "media_type",
    "data",
    "tool_use_id",
    "is_error",
    "input_schema",
    "cache_control",
    "key",
    "key_alias",
    "models",
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "team_id",
    "team_alias",
    "user_id",
    "duration",
    "model_name",
    "litellm_params",
    "model_info",
    "api_base",
    "api_key",
    "allowed_routes",
    "key_type",
    "enforcement",
    "blocked",
    "model_max_budget",
    "budget_limit",
    "mode",
    "region_name",
    "description",
];

/// Strings that have broken parsers before: number-like text, escapes,
/// surrogate-adjacent code points, names of real variants, paths.
pub const EDGE_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "-0",
    "1e400",
    "0x10",
    "null",
    "true",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "\u{202e}evil",
    "\u{fffd}",
    "\u{10ffff}",
    "🦀",
    "e\u{301}",
    "gpt",
    "claude",
    "user",
    "assistant",
    "system",
    "tool",
    "developer",
    "function",
    "text",
    "image",
    "image_url",
    "document",
    "tool_use",
    "tool_result",
    "auto",
    "none",
    "any",
    "required",
    "30d",
    "1mo",
    "0d",
    "99999999999999999999d",
    "-1s",
    "sk-",
    "os.environ/HOME",
    "../../etc/passwd",
    "data:image/png;base64,AAAA",
    "data:;base64,",
    "data:",
    "https://example.invalid/x.png",
    "%s%n%x",
    "{\"a\":1}",
    "[DONE]",
];

/// Awkward text: anything printable, anything at all, the edge list, long.
pub fn arb_text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => "\\PC{0,16}",
        2 => "(?s).{0,16}",
        3 => prop::sample::select(EDGE_STRINGS).prop_map(String::from),
        1 => (0usize..3000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Numbers at the edges of every integer type the gateway converts to.
pub fn arb_number() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN", |f| Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(vec![
            Value::from(0),
            Value::from(-1),
            Value::from(1),
            Value::from(u64::from(u32::MAX)),
            Value::from(u64::from(u32::MAX) + 1),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(0.5),
            Value::from(-0.0),
            Value::from(1e308),
            Value::from(-1e308),
            Value::from(5e-324),
        ]),
    ]
}

pub fn arb_key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(String::from),
        1 => arb_text(),
    ]
}

/// Any JSON value, at most `depth` containers deep.
pub fn arb_json_depth(depth: u32) -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub fn arb_json() -> impl Strategy<Value = Value> + Clone {
    arb_json_depth(4)
}

/// Raw JSON text no `Value` can produce: out-of-range and malformed
/// numbers, lone surrogates, truncated tokens.
pub const RAW_LITERALS: &[&str] = &[
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-",
    "01",
    "1.",
    ".5",
    "+1",
    "18446744073709551616",
    "-9223372036854775809",
    "1e-400",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\"",
    "[",
    "}",
    "tru",
    "nul",
    "\"unterminated",
    "\"\\x\"",
    "[1,]",
    "{\"a\" 1}",
];

/// One change to a valid body.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// The value at some path becomes `Value`.
    Replace(Index, Value),
    /// A field or element is dropped.
    Remove(Index),
    /// An object gains a field.
    Insert(Index, String, Value),
    /// The value at some path becomes raw JSON text (see [`RAW_LITERALS`]).
    Raw(Index, &'static str),
}

pub fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), arb_json_depth(2)).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        2 => (any::<Index>(), arb_key(), arb_json_depth(2))
            .prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
        1 => (any::<Index>(), prop::sample::select(RAW_LITERALS))
            .prop_map(|(i, r)| Mutation::Raw(i, r)),
    ]
}

/// `base` with one or two mutations, as body bytes.
pub fn arb_mutated(base: Value) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(arb_mutation(), 1..3).prop_map(move |ms| mutate(&base, &ms))
}

/// Marks where raw text goes; replaced after serializing.
const RAW_MARK: &str = "\u{1}raw-literal\u{1}";

pub fn mutate(base: &Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut value = base.clone();
    let mut raw = Vec::new();
    for m in mutations {
        let paths = paths(&value);
        let pick = |i: &Index| -> Vec<Seg> { i.get::<Vec<Seg>>(&paths).clone() };
        match m {
            Mutation::Replace(i, v) => *at(&mut value, &pick(i)) = v.clone(),
            Mutation::Remove(i) => {
                let path = pick(i);
                if let Some((last, parent)) = path.split_last() {
                    match (at(&mut value, parent), last) {
                        (Value::Object(m), Seg::Key(k)) => drop(m.shift_remove(k)),
                        (Value::Array(a), Seg::At(n)) => drop(a.remove(*n)),
                        _ => {}
                    }
                }
            }
            Mutation::Insert(i, k, v) => {
                if let Value::Object(m) = at(&mut value, &pick(i)) {
                    m.insert(k.clone(), v.clone());
                }
            }
            Mutation::Raw(i, r) => {
                *at(&mut value, &pick(i)) = Value::String(RAW_MARK.into());
                raw.push(*r);
            }
        }
    }
    let mut text = value.to_string();
    let mark = Value::String(RAW_MARK.into()).to_string();
    for r in raw {
        text = text.replacen(&mark, r, 1);
    }
    text.into_bytes()
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    At(usize),
}

/// Every path in `v`, the root first.
fn paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    here.push(Seg::Key(k.clone()));
                    walk(child, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (n, child) in a.iter().enumerate() {
                    here.push(Seg::At(n));
                    walk(child, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn at<'v>(mut v: &'v mut Value, path: &[Seg]) -> &'v mut Value {
    for seg in path {
        v = match (v, seg) {
            (Value::Object(m), Seg::Key(k)) => m.get_mut(k).unwrap(),
            (Value::Array(a), Seg::At(n)) => &mut a[*n],
            _ => unreachable!("paths come from the same value"),
        };
    }
    v
}

/// An answer, read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Posts each generated body, with `key`, to one of `paths` on `node`: every
/// answer must be a clean one ([`assert_clean`]).
pub fn post_bodies(
    rt: &tokio::runtime::Runtime,
    node: &Arc<Node>,
    key: &str,
    paths: Vec<&'static str>,
    cases: u32,
    bodies: impl Strategy<Value = Vec<u8>>,
) {
    check(
        cases,
        (prop::sample::select(paths), bodies),
        |(path, body)| {
            let r = rt.block_on(send(node, post(path, Some(key), body)));
            assert_clean(path, &r)
        },
    );
}

/// Calls the node in process. A handler that panics panics here (and the
/// property fails); a body that breaks off mid-way fails too, since a client
/// would see a dropped connection.
pub async fn send(node: &Arc<Node>, req: Request<Body>) -> Reply {
    let resp = meridian_node::api::router(node.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("the answer's body reads to its end");
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post(path: &str, key: Option<&str>, body: impl Into<Bytes>) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Body::from(body.into())).unwrap()
}

/// The property every answer to a client must have: not a 5xx, and an error
/// is a JSON object in the route's format (Anthropic's on `/v1/messages`,
/// OpenAI's elsewhere); a success is JSON or a complete event stream.
pub fn assert_clean(path: &str, r: &Reply) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(&r.body);
    prop_assert!(r.status < 500, "{path}: {} {shown}", r.status);
    let is_stream = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if r.status < 400 && is_stream {
        prop_assert!(
            std::str::from_utf8(&r.body).is_ok_and(|s| s.ends_with("\n\n")),
            "{path}: stream does not end with a complete event: {shown}"
        );
        return Ok(());
    }
    if r.status < 400 {
        // JSON by the grammar (RFC 8259). Providers' answers pass through
        // untouched, and a number past f64 (`1e400`) or a lone surrogate
        // escape in a field the gateway does not read is still JSON, though
        // serde_json's `Value` refuses it.
        let grammatical = serde_json::from_slice::<serde::de::IgnoredAny>(&r.body).is_ok();
        prop_assert!(grammatical, "{path}: {} not JSON: {shown}", r.status);
        return Ok(());
    }
    // Errors are the gateway's own: strictly JSON, in the route's shape.
    let body = r.json();
    prop_assert!(body.is_some(), "{path}: {} not JSON: {shown}", r.status);
    let body = body.unwrap_or_default();
    let anthropic = path == "/v1/messages";
    let message = body.pointer("/error/message").and_then(Value::as_str);
    prop_assert!(
        message.is_some_and(|m| !m.is_empty()),
        "{path}: error without a message: {body}"
    );
    prop_assert!(
        body.pointer("/error/type").is_some_and(Value::is_string),
        "{path}: error without a type: {body}"
    );
    if anthropic {
        prop_assert_eq!(body.get("type"), Some(&Value::from("error")), "{}", body);
    } else {
        prop_assert!(body.pointer("/error/code").is_some(), "{path}: {body}");
    }
    Ok(())
}
