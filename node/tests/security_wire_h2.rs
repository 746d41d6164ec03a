//! HTTP/2 with prior knowledge against a real `meridian serve` process's
//! public listener, written frame by frame so the client can break the rules
//! a real client library enforces on itself: more streams than the server
//! allows, streams opened and reset in a loop, header lists over the limit,
//! a header block that never ends. Every read is bounded; each test ends by
//! checking that the process is alive and serves a legitimate client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;
mod security_support;

use std::collections::BTreeMap;
use std::time::Duration;

use process_support::Server;
use security_support::h2::{self, Seen, open, read_frame, u32_at, watch};
use security_support::wire;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout};

const MAX_HEADER_BYTES: u32 = 8192;
/// `MAX_H2_STREAMS` in `node/src/listener.rs`.
const MAX_STREAMS: u32 = 256;
const LIMITS: &str = "meridian:
  max_header_bytes: 8192
  header_read_timeout_ms: 1000
";

/// The node answers HTTP/2 and HTTP/1 clients alike.
async fn still_serves(s: &mut Server) {
    assert!(s.alive(), "{}", s.log());
    let (mut c, _) = open(s.port).await;
    c.write_all(&h2::header_frames(1, &h2::get("/health/liveliness"), true))
        .await
        .unwrap();
    let seen = watch(&mut c, Duration::from_secs(5), |s| !s.statuses.is_empty()).await;
    assert_eq!(seen.statuses.get(&1), Some(&Some(200)), "{seen:?}");
    let reply = wire::request(s.port, &wire::get("/health/liveliness"), b"").await;
    assert_eq!(reply.map(|r| r.status), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused() {
    let mut s = Server::start(LIMITS).await;
    let (mut c, settings) = open(s.port).await;
    assert_eq!(
        settings.get(&h2::MAX_CONCURRENT_STREAMS),
        Some(&MAX_STREAMS)
    );
    assert_eq!(
        settings.get(&h2::MAX_HEADER_LIST_SIZE),
        Some(&MAX_HEADER_BYTES)
    );
    // A thousand requests whose streams the client never ends: each stays
    // open on the server after its answer, so only the first 256 fit.
    let n = 1000u32;
    let ids: Vec<u32> = (0..n).map(|i| 2 * i + 1).collect();
    let mut flood = Vec::new();
    for id in &ids {
        flood.extend(h2::header_frames(
            *id,
            &h2::get("/health/liveliness"),
            false,
        ));
    }
    c.write_all(&flood).await.unwrap();
    // An answered stream may be reset after its answer too (NO_ERROR: the
    // server wants no more of its body); a refused one gets a reset only.
    let settled = |seen: &Seen| {
        let answered = seen.statuses.len();
        answered
            + seen
                .resets
                .keys()
                .filter(|id| !seen.statuses.contains_key(id))
                .count()
    };
    let seen = watch(&mut c, Duration::from_secs(10), |seen| {
        settled(seen) >= n as usize
    })
    .await;
    let answered = seen.statuses.len();
    let refused = seen
        .resets
        .iter()
        .filter(|(id, code)| **code == h2::REFUSED_STREAM && !seen.statuses.contains_key(id))
        .count();
    let mut after_answer: BTreeMap<u32, usize> = BTreeMap::new();
    for (id, code) in &seen.resets {
        if seen.statuses.contains_key(id) {
            *after_answer.entry(*code).or_default() += 1;
        }
    }
    eprintln!(
        "h2 flood: {n} streams: {answered} answered (then reset, by code: {after_answer:?}), {refused} refused (RST_STREAM REFUSED_STREAM), goaway {:?}",
        seen.goaway
    );
    assert!(answered <= MAX_STREAMS as usize, "{seen:?}");
    assert!(seen.statuses.values().all(|s| *s == Some(200)), "{seen:?}");
    let beyond_goaway = seen
        .goaway
        .map_or(0, |(last, _)| ids.iter().filter(|id| **id > last).count());
    assert_eq!(
        answered + refused + beyond_goaway,
        n as usize,
        "every stream answered or refused: {seen:?}"
    );
    drop(c);
    still_serves(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_and_reset_in_a_loop_do_not_stall_the_node() {
    let mut s = Server::start(LIMITS).await;
    let (c, _) = open(s.port).await;
    let (mut read, mut write) = c.into_split();
    // Requests cancelled as soon as they are sent (CVE-2023-44487): each
    // costs the server a task; the client nothing.
    let n = 20_000u32;
    let writer = tokio::spawn(async move {
        let mut sent = 0u32;
        for batch in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut bytes = Vec::new();
            for i in batch {
                let id = 2 * i + 1;
                bytes.extend(h2::header_frames(id, &h2::get("/health/liveliness"), true));
                bytes.extend(h2::frame(h2::RST_STREAM, 0, id, &h2::CANCEL.to_be_bytes()));
            }
            if write.write_all(&bytes).await.is_err() {
                break;
            }
            sent += batch.len() as u32;
        }
        sent
    });
    let start = Instant::now();
    let mut goaway = None;
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(20) {
        match timeout(Duration::from_secs(20), read_frame(&mut read)).await {
            Ok(Some(f)) if f.kind == h2::GOAWAY => {
                goaway = Some((u32_at(&f.payload, 0), u32_at(&f.payload, 4)));
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let sent = timeout(Duration::from_secs(20), writer)
        .await
        .expect("the writer stops")
        .unwrap();
    eprintln!(
        "h2 rapid reset: {sent} of {n} streams opened and cancelled; goaway {goaway:?}, closed {closed}, after {:?}",
        start.elapsed()
    );
    // hyper's defence (a cap on streams reset before they were served)
    // ends the connection long before the flood does.
    assert!(
        goaway.is_some() || closed,
        "the connection took all {sent} resets"
    );
    still_serves(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_over_the_limit_are_refused() {
    let mut s = Server::start(LIMITS).await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("one 9 KiB header, in one frame", {
            let mut b = h2::get("/health/liveliness");
            h2::literal(&mut b, "x-big", &vec![b'a'; 9 * 1024]);
            b
        }),
        ("one 64 KiB header", {
            let mut b = h2::get("/health/liveliness");
            h2::literal(&mut b, "x-big", &vec![b'a'; 64 * 1024]);
            b
        }),
        ("2000 small headers", {
            let mut b = h2::get("/health/liveliness");
            for i in 0..2000 {
                h2::literal(&mut b, &format!("x-h{i}"), b"v");
            }
            b
        }),
    ];
    for (name, block) in cases {
        let (mut c, _) = open(s.port).await;
        c.write_all(&h2::header_frames(1, &block, true))
            .await
            .unwrap();
        // A request within the limit on the same connection, after it.
        c.write_all(&h2::header_frames(3, &h2::get("/health/liveliness"), true))
            .await
            .unwrap();
        let seen = watch(&mut c, Duration::from_secs(5), |s| {
            s.statuses.contains_key(&3) || s.resets.contains_key(&3)
        })
        .await;
        eprintln!(
            "h2 headers: {name}: status {:?}, reset {:?}; the next stream: {:?}; goaway {:?}",
            seen.statuses.get(&1),
            seen.resets.get(&1),
            seen.statuses.get(&3),
            seen.goaway
        );
        assert_ne!(seen.statuses.get(&1), Some(&Some(200)), "{name}: served");
        let refused = seen.statuses.get(&1) == Some(&Some(431))
            || seen.resets.contains_key(&1)
            || seen.goaway.is_some()
            || seen.closed;
        assert!(
            refused,
            "{name}: neither answered 431 nor refused: {seen:?}"
        );
        assert!(s.alive(), "{name}: {}", s.log());
    }
    still_serves(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_that_never_ends_is_cut_off() {
    let mut s = Server::start(LIMITS).await;
    let (c, _) = open(s.port).await;
    let (mut read, mut write) = c.into_split();
    // HEADERS without END_HEADERS, then CONTINUATION frames forever
    // (CVE-2024-27316 and kin): up to 64 MiB unless the server stops it.
    let cap = 64usize << 20;
    let writer = tokio::spawn(async move {
        let mut first = h2::get("/health/liveliness");
        h2::literal(&mut first, "x-a", b"b");
        if write
            .write_all(&h2::frame(h2::HEADERS, h2::END_STREAM, 1, &first))
            .await
            .is_err()
        {
            return 0;
        }
        let mut piece = Vec::new();
        while piece.len() < h2::MAX_FRAME - 64 {
            h2::literal(&mut piece, "x-more", &[b'c'; 100]);
        }
        let continuation = h2::frame(h2::CONTINUATION, 0, 1, &piece);
        let mut sent = 0;
        while sent < cap {
            // A server that stops reading without closing would block this
            // write for good: bounded.
            match timeout(
                Duration::from_secs(5),
                write.write_all(&continuation.repeat(16)),
            )
            .await
            {
                Ok(Ok(())) => sent += 16 * continuation.len(),
                _ => break,
            }
        }
        sent
    });
    let start = Instant::now();
    let mut ended = None;
    while start.elapsed() < Duration::from_secs(30) {
        match timeout(Duration::from_secs(30), read_frame(&mut read)).await {
            Ok(Some(f)) if f.kind == h2::GOAWAY => {
                ended = Some(format!("GOAWAY code {}", u32_at(&f.payload, 4)));
                break;
            }
            Ok(Some(f)) if f.kind == h2::RST_STREAM && f.stream == 1 => {
                ended = Some(format!("RST_STREAM code {}", u32_at(&f.payload, 0)));
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                ended.get_or_insert_with(|| "closed".to_owned());
                break;
            }
            Err(_) => break,
        }
    }
    let sent = timeout(Duration::from_secs(35), writer)
        .await
        .expect("the writer stops")
        .unwrap();
    eprintln!(
        "h2 CONTINUATION flood: {ended:?} after {:?}; {} KiB of header block sent",
        start.elapsed(),
        sent / 1024
    );
    assert!(
        ended.is_some(),
        "the server never cut the endless header block off"
    );
    assert!(sent < cap, "all {} MiB were taken", cap >> 20);
    still_serves(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_asks_nothing_is_closed_when_idle() {
    let idle = Duration::from_millis(1500);
    let mut s = Server::start(&format!(
        "{LIMITS}  idle_timeout_ms: {}\n",
        idle.as_millis()
    ))
    .await;
    // A well-behaved client that answers pings but never asks anything.
    let (mut quiet, _) = open(s.port).await;
    let start = Instant::now();
    let seen = watch(&mut quiet, idle * 4, |_| false).await;
    let after = start.elapsed();
    assert!(seen.goaway.is_some() || seen.closed, "{seen:?}");
    assert!(after >= idle && after < idle * 3, "closed after {after:?}");
    // One that asks and then falls quiet is closed as well, after its answer.
    let (mut asked, _) = open(s.port).await;
    asked
        .write_all(&h2::header_frames(1, &h2::get("/health/liveliness"), true))
        .await
        .unwrap();
    let seen = watch(&mut asked, idle * 4, |_| false).await;
    assert_eq!(seen.statuses.get(&1), Some(&Some(200)), "{seen:?}");
    assert!(seen.goaway.is_some() || seen.closed, "{seen:?}");
    eprintln!("idle h2: closed after {after:?}");
    still_serves(&mut s).await;
}
