//! Fuzzing the request headers the gateway reads — `authorization`,
//! `x-api-key`, `api-key`, `x-litellm-tags`, `x-request-id` — with any bytes
//! a header value may hold (visible ASCII, tab, and the obs-text bytes
//! 0x80–0xFF, which are not UTF-8 on their own). The answer is a 200, 400 or
//! 401 in the route's error shape, never a 5xx; without the master key it is
//! always a 401; and a sane request id comes back unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;
mod router_support;

use axum::body::Body;
use fuzz_support::{EDGE_STRINGS, assert_clean, check, runtime, send};
use http::{HeaderValue, Request};
use proptest::prelude::*;
use router_support::MASTER;
use serde_json::json;

/// Bytes `HeaderValue::from_bytes` accepts.
fn arb_header_bytes() -> impl Strategy<Value = Vec<u8>> + Clone {
    let byte = prop_oneof![
        8 => 0x20u8..=0x7e,
        2 => 0x80u8..=0xff,
        1 => Just(b'\t'),
    ];
    prop_oneof![
        4 => prop::collection::vec(byte, 0..64),
        1 => prop::collection::vec(0x21u8..=0x7e, 129..200),
        2 => prop::sample::select(EDGE_STRINGS)
            .prop_map(|s| s.as_bytes().to_vec())
            .prop_filter("a header value", |b| HeaderValue::from_bytes(b).is_ok()),
    ]
}

/// A header value built around the master key or not at all.
#[derive(Clone, Debug)]
enum Key {
    Absent,
    Garbage(Vec<u8>),
    /// `Bearer <master>`, or the bare master key for `x-api-key`.
    Master,
    /// The master key with bytes before or after it.
    Wrapped(Vec<u8>, Vec<u8>),
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        Just(Key::Absent),
        arb_header_bytes().prop_map(Key::Garbage),
        Just(Key::Master),
        (arb_header_bytes(), arb_header_bytes()).prop_map(|(a, b)| Key::Wrapped(a, b)),
    ]
}

impl Key {
    fn bytes(&self, bearer: bool) -> Option<Vec<u8>> {
        let master = if bearer {
            format!("Bearer {MASTER}")
        } else {
            MASTER.to_owned()
        };
        match self {
            Key::Absent => None,
            Key::Garbage(b) => Some(b.clone()),
            Key::Master => Some(master.into_bytes()),
            Key::Wrapped(a, b) => Some([a.as_slice(), master.as_bytes(), b].concat()),
        }
    }

    /// Whether the header could present the master key at all.
    fn may_hold_master(&self) -> bool {
        !matches!(self, Key::Absent | Key::Garbage(_))
    }
}

#[derive(Clone, Debug)]
struct Headers {
    authorization: Key,
    x_api_key: Key,
    api_key: Key,
    tags: Option<Vec<u8>>,
    request_id: Option<Vec<u8>>,
}

fn arb_headers() -> impl Strategy<Value = Headers> {
    let tags = prop_oneof![
        arb_header_bytes(),
        prop::collection::vec("[a-z0-9 ,-]{0,12}", 0..40).prop_map(|t| t.join(",").into_bytes()),
    ];
    (
        arb_key(),
        arb_key(),
        arb_key(),
        prop::option::of(tags),
        prop::option::of(arb_header_bytes()),
    )
        .prop_map(
            |(authorization, x_api_key, api_key, tags, request_id)| Headers {
                authorization,
                x_api_key,
                api_key,
                tags,
                request_id,
            },
        )
}

fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

fn request(path: &str, h: &Headers) -> Request<Body> {
    let mut b = Request::builder().uri(path);
    let get = path == "/v1/models";
    b = b.method(if get { "GET" } else { "POST" });
    let put = |b: http::request::Builder, name: &str, v: Option<Vec<u8>>| match v {
        Some(v) => b.header(name, HeaderValue::from_bytes(&v).unwrap()),
        None => b,
    };
    b = put(b, "authorization", h.authorization.bytes(true));
    b = put(b, "x-api-key", h.x_api_key.bytes(false));
    b = put(b, "api-key", h.api_key.bytes(false));
    b = put(b, "x-litellm-tags", h.tags.clone());
    b = put(b, "x-request-id", h.request_id.clone());
    let body = match path {
        "/v1/models" => String::new(),
        "/v1/messages" => json!({ "model": "claude", "max_tokens": 8, "messages": [{ "role": "user", "content": "hi" }] }).to_string(),
        _ => json!({ "model": "gpt", "messages": [{ "role": "user", "content": "hi" }] }).to_string(),
    };
    b.header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[test]
fn any_header_values_get_a_200_400_or_401() {
    let rt = runtime();
    let node = rt.block_on(router_support::node(""));
    let paths = vec!["/v1/chat/completions", "/v1/messages", "/v1/models"];
    check(
        256,
        (prop::sample::select(paths), arb_headers()),
        |(path, h)| {
            let r = rt.block_on(send(&node, request(path, &h)));
            assert_clean(path, &r)?;
            prop_assert!(
                [200, 400, 401].contains(&r.status),
                "{path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            let no_master = !h.authorization.may_hold_master()
                && !h.x_api_key.may_hold_master()
                && !h.api_key.may_hold_master();
            if no_master {
                prop_assert_eq!(r.status, 401);
            }
            let plain_master = matches!(h.authorization, Key::Master);
            if plain_master && h.tags.is_none() {
                prop_assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
            if r.status == 200 && path != "/v1/models" {
                let echoed = r.headers.get("x-request-id").map(HeaderValue::as_bytes);
                prop_assert!(echoed.is_some_and(is_sane_request_id));
                match &h.request_id {
                    Some(id) if is_sane_request_id(id) => {
                        prop_assert_eq!(echoed, Some(id.as_slice()));
                    }
                    _ => {}
                }
            }
            Ok(())
        },
    );
    rt.block_on(async {
        let ok = Headers {
            authorization: Key::Master,
            x_api_key: Key::Absent,
            api_key: Key::Absent,
            tags: None,
            request_id: None,
        };
        assert_eq!(
            send(&node, request("/v1/chat/completions", &ok))
                .await
                .status,
            200
        );
    });
}
