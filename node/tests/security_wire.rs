//! Adversarial clients against a real `meridian serve` process's public
//! listener over raw sockets: slowloris heads, oversized and numerous
//! headers, trickled bodies, hostile JSON, connection floods. Each attack is
//! bounded in time, and each ends by checking that the process is alive and
//! serves a legitimate client. HTTP/2 floods are in `security_wire_h2.rs`.
//!
//! The node runs with small limits (`LIMITS`) so a timeout is observed in a
//! second, not in the defaults' ten.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;
mod security_support;

use std::time::Duration;

use process_support::Server;
use security_support::wire;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
const BODY_TIMEOUT: Duration = Duration::from_millis(1000);
const PER_IP: usize = 20;
const LIMITS: &str = "meridian:
  header_read_timeout_ms: 1000
  body_read_timeout_ms: 1000
  max_connections_per_ip: 20
  max_header_bytes: 8192
general_settings:
  max_request_size_mb: 1
";

/// A node with `LIMITS` and no connection of the test's own left open (the
/// start-up probe's pooled connection would hold one of the per-address
/// places).
async fn node() -> Server {
    let mut s = Server::start(LIMITS).await;
    s.http = reqwest::Client::new();
    sleep(Duration::from_millis(100)).await;
    s
}

/// A request a legitimate client makes: it must be answered 200.
async fn served(s: &Server) {
    let reply = wire::request(s.port, &wire::get("/health/liveliness"), b"").await;
    assert_eq!(reply.map(|r| r.status), Some(200), "a legitimate request");
    let (status, body) = s.call("GET", "/v1/models", &s.master, None).await;
    assert_eq!(status, 200, "{body}");
}

/// An OpenAI-shaped error: `{"error": {"message", "type", "code"}}`.
fn assert_openai_error(reply: &wire::Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["code"], json!(status.to_string()), "{body}");
}

/// How one slowloris connection ended.
#[derive(Debug)]
struct Loris {
    /// From connect to the server's close; `None`: still open at the end.
    closed_after: Option<Duration>,
    /// Bytes of the request head it got to send.
    sent: usize,
}

/// Connects and sends a request head that never ends, one byte every
/// `gap`, until the server closes the connection or `give_up` passes.
async fn slowloris(port: u16, gap: Duration, give_up: Duration) -> Loris {
    let start = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec();
    head.resize(4096, b'a');
    let mut sent = 0;
    let closed_after = loop {
        if start.elapsed() > give_up {
            break None;
        }
        if wire::closed_within(&mut stream, gap).await.is_some() {
            break Some(start.elapsed());
        }
        if stream.write_all(&head[sent..=sent]).await.is_err() {
            break Some(start.elapsed());
        }
        sent += 1;
    };
    Loris { closed_after, sent }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_at_the_header_timeout_and_others_are_served() {
    let mut s = node().await;
    let gap = Duration::from_millis(100);
    let give_up = Duration::from_secs(8);
    // Under the cap: one place short of it, a legitimate client still gets in
    // and is answered at once while the slow heads keep coming.
    let first: Vec<_> = (0..PER_IP - 1)
        .map(|_| tokio::spawn(slowloris(s.port, gap, give_up)))
        .collect();
    sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let reply = wire::request(s.port, &wire::get("/health/liveliness"), b"").await;
    let answered_in = asked.elapsed();
    assert_eq!(
        reply.map(|r| r.status),
        Some(200),
        "served beside 19 slow heads"
    );
    assert!(answered_in < HEADER_TIMEOUT / 2, "{answered_in:?}");
    sleep(Duration::from_millis(100)).await;
    // Over the cap: one more takes the last place, ten are closed at accept.
    let second: Vec<_> = (0..11)
        .map(|_| tokio::spawn(slowloris(s.port, gap, give_up)))
        .collect();
    let mut outcomes = Vec::new();
    for task in first.into_iter().chain(second) {
        outcomes.push(task.await.unwrap());
    }
    let refused: Vec<&Loris> = outcomes
        .iter()
        .filter(|o| {
            o.closed_after
                .is_some_and(|d| d < Duration::from_millis(300))
        })
        .collect();
    let held: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| o.closed_after)
        .filter(|d| *d >= Duration::from_millis(300))
        .collect();
    assert!(
        outcomes.iter().all(|o| o.closed_after.is_some()),
        "every slow head is cut: {outcomes:?}"
    );
    assert_eq!(
        refused.len(),
        10,
        "over the cap, closed at once: {outcomes:?}"
    );
    assert_eq!(held.len(), PER_IP, "{outcomes:?}");
    // Each admitted head was cut by the header timeout, which runs from its
    // first byte (sent `gap` after connecting): not before, not much after.
    let (shortest, longest) = (held.iter().min().unwrap(), held.iter().max().unwrap());
    assert!(*shortest >= HEADER_TIMEOUT, "{held:?}");
    assert!(*longest <= HEADER_TIMEOUT * 2, "{held:?}");
    eprintln!(
        "slowloris: {} refused at accept, {} cut after {shortest:?}..{longest:?} (head bytes sent: {:?})",
        refused.len(),
        held.len(),
        outcomes.iter().map(|o| o.sent).max()
    );
    assert!(s.alive());
    served(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers_are_refused_and_the_node_keeps_serving() {
    let mut s = node().await;
    let probe = |extra: String| {
        format!(
            "GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    // A control just under the limit is served, so the refusals below are
    // the limit's doing.
    let under = probe(format!("X-Fill: {}\r\n", "a".repeat(6000)));
    let reply = wire::request(s.port, &under, b"").await;
    assert_eq!(reply.map(|r| r.status), Some(200));

    let cases = [
        (
            "one 16 KiB header",
            format!("X-Big: {}\r\n", "a".repeat(16 * 1024)),
        ),
        (
            "one 1 MiB header",
            format!("X-Big: {}\r\n", "a".repeat(1 << 20)),
        ),
        (
            "200 small headers",
            (0..200).map(|i| format!("X-H{i}: v\r\n")).collect(),
        ),
        (
            "5000 small headers",
            (0..5000).map(|i| format!("X-H{i}: v\r\n")).collect(),
        ),
    ];
    for (name, extra) in cases {
        // A refusal that comes while the client is still writing may be
        // lost to the reset of the unread rest: a close is a refusal too.
        let reply = wire::request(s.port, &probe(extra), b"").await;
        if let Some(r) = &reply {
            assert_eq!(r.status, 431, "{name}: {}", r.text());
        }
        eprintln!(
            "headers: {name}: {}",
            reply.map_or("closed without an answer".to_owned(), |r| r
                .status
                .to_string())
        );
        assert!(s.alive(), "{name}: {}", s.log());
        let after = wire::request(s.port, &probe(String::new()), b"").await;
        assert_eq!(after.map(|r| r.status), Some(200), "served after {name}");
    }
    served(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_slower_than_the_body_timeout_is_answered_408() {
    let mut s = node().await;
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "x".repeat(400)}]})
        .to_string()
        .into_bytes();
    for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            s.master,
            body.len()
        );
        let mut stream = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let start = Instant::now();
        // One byte every 100 ms: the whole body would take 40 s.
        let (reply, sent) = wire::trickle_until_reply(
            &mut stream,
            &body,
            Duration::from_millis(100),
            Duration::from_secs(10),
        )
        .await;
        let took = start.elapsed();
        let reply = reply.unwrap_or_else(|| panic!("{path}: no answer within 10 s"));
        if anthropic {
            assert_eq!(reply.status, 408, "{}", reply.text());
            assert_eq!(reply.json()["type"], "error", "{}", reply.text());
        } else {
            assert_openai_error(&reply, 408);
        }
        assert!(
            took >= BODY_TIMEOUT - Duration::from_millis(100),
            "{took:?}"
        );
        assert!(took <= BODY_TIMEOUT * 3, "{took:?}");
        // Once answered, the connection must not stay open for the rest of
        // the body: the trickler would hold it long after the timeout.
        let closed = wire::closed_within(&mut stream, HEADER_TIMEOUT * 3).await;
        eprintln!(
            "trickled body {path}: 408 after {took:?} ({sent} of {} bytes sent), then closed after {closed:?}",
            body.len()
        );
        assert!(
            closed.is_some(),
            "{path}: connection still open 3 s after the 408"
        );
    }
    assert!(s.alive());
    served(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_bodies_are_refused_with_400_or_413() {
    let mut s = node().await;
    let post = |path: &str, len: usize, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {MASTER}\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}Content-Length: {len}\r\n\r\n",
            MASTER = process_support::MASTER
        )
    };
    let deep_arrays = format!(
        "{{\"model\":\"gpt\",\"messages\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let mut invalid_utf8 = br#"{"model":"gpt","messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend([0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend(br#""}]}"#);
    let not_objects: [&[u8]; 6] = [b"[1,2,3]", b"\"gpt\"", b"42", b"null", b"true", b""];
    let routes = ["/v1/chat/completions", "/v1/messages", "/key/generate"];
    for path in routes {
        let mut bodies: Vec<(&str, Vec<u8>)> = vec![
            (
                "arrays nested 100000 deep",
                deep_arrays.clone().into_bytes(),
            ),
            (
                "objects nested 100000 deep",
                deep_objects.clone().into_bytes(),
            ),
            ("invalid UTF-8", invalid_utf8.clone()),
        ];
        for b in not_objects {
            bodies.push(("valid JSON, not an object", b.to_vec()));
        }
        for (name, body) in bodies {
            let reply = wire::request(s.port, &post(path, body.len(), ""), &body)
                .await
                .unwrap_or_else(|| panic!("{path} {name}: no answer"));
            assert_eq!(reply.status, 400, "{path} {name}: {}", reply.text());
            if path != "/v1/messages" {
                assert_openai_error(&reply, 400);
            }
        }
        assert!(s.alive(), "{path}: {}", s.log());
    }
    // Over `max_request_size_mb` (1 MiB): refused on the declared length
    // before any of it is read...
    let big = 2 << 20;
    let reply = wire::request(s.port, &post("/v1/chat/completions", big, ""), b"")
        .await
        .unwrap();
    assert_openai_error(&reply, 413);
    // ...and, sent chunked with no length, once the limit is crossed (a
    // little past it and no more: bytes the server never reads would make
    // its close a reset, which can destroy the answer in flight).
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        .to_owned()
        + &s.master
        + "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut chunked = Vec::new();
    let piece = vec![b' '; 64 * 1024];
    for _ in 0..17 {
        chunked.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend(&piece);
        chunked.extend(b"\r\n");
    }
    let reply = wire::request(s.port, &head, &chunked).await.unwrap();
    assert_openai_error(&reply, 413);
    assert!(s.alive());
    served(&s).await;
    let (status, body) = s
        .call(
            "POST",
            "/v1/chat/completions",
            &s.master,
            Some(json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_over_the_per_address_cap_are_closed_at_once() {
    let mut s = node().await;
    let mut open = Vec::new();
    for _ in 0..PER_IP + 5 {
        open.push(TcpStream::connect(("127.0.0.1", s.port)).await.unwrap());
    }
    sleep(Duration::from_millis(200)).await;
    // All looked at together, well within the header timeout (after it,
    // silent connections are closed too: see the next test).
    let checks = open
        .iter_mut()
        .map(|c| wire::closed_within(c, Duration::from_millis(50)));
    let refused: Vec<(usize, Duration)> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(i, closed)| closed.map(|d| (i, d)))
        .collect();
    let refused_ids: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        refused_ids,
        (PER_IP..PER_IP + 5).collect::<Vec<_>>(),
        "the five over the cap are closed, the first twenty held"
    );
    // One more, while twenty are held: closed at accept.
    let mut extra = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let closed = wire::closed_within(&mut extra, Duration::from_millis(500)).await;
    assert!(closed.is_some(), "a connection over the cap is closed");
    eprintln!("cap: 20 held, 6 closed at accept (the last after {closed:?})");
    drop(open);
    drop(extra);
    sleep(Duration::from_millis(200)).await;
    // Their places are free again: a full cap of new connections is served.
    let mut answers = Vec::new();
    for _ in 0..PER_IP {
        let port = s.port;
        answers.push(tokio::spawn(async move {
            wire::request(port, &wire::get("/health/liveliness"), b"").await
        }));
    }
    for a in answers {
        assert_eq!(a.await.unwrap().map(|r| r.status), Some(200));
    }
    assert!(s.alive());
    served(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_within_the_header_timeout() {
    let mut s = node().await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // What each connection sends before falling silent. (One that sends the
    // first byte of an HTTP/1 head is cut at the header timeout: see the
    // slowloris test.)
    let openers: Vec<(&str, &[u8])> = vec![
        ("nothing", b""),
        ("the HTTP/2 preface's first byte", &preface[..1]),
        ("23 of the 24 preface bytes", &preface[..23]),
    ];
    let mut conns = Vec::new();
    for (_, opener) in &openers {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        c.write_all(opener).await.unwrap();
        conns.push(c);
    }
    // The rest of the address's places, taken by connections that send
    // nothing.
    for _ in openers.len()..PER_IP {
        conns.push(TcpStream::connect(("127.0.0.1", s.port)).await.unwrap());
    }
    let start = Instant::now();
    let wait = HEADER_TIMEOUT * 3;
    let mut held = Vec::new();
    for ((name, _), c) in openers.iter().zip(conns.iter_mut()) {
        let closed = wire::closed_within(c, wait.saturating_sub(start.elapsed())).await;
        eprintln!(
            "silent: after {name}: {}",
            closed.map_or(format!("still open after {:?}", start.elapsed()), |_| {
                format!("closed after {:?}", start.elapsed())
            })
        );
        if closed.is_none() {
            held.push(*name);
        }
    }
    let still_open = conns
        .iter_mut()
        .skip(openers.len())
        .map(|c| wire::closed_within(c, Duration::from_millis(1)))
        .collect::<Vec<_>>();
    let mut silent_open = 0;
    for c in still_open {
        silent_open += usize::from(c.await.is_none());
    }
    // Every connection has had its header timeout three times over: the
    // address must be usable again.
    let served_after = wire::request(s.port, &wire::get("/health/liveliness"), b"").await;
    eprintln!(
        "silent: {silent_open} more silent connections still open; after {:?} a new request got {:?}",
        start.elapsed(),
        served_after.as_ref().map(|r| r.status)
    );
    assert!(held.is_empty(), "still open 3 s later: {held:?}");
    assert_eq!(served_after.map(|r| r.status), Some(200));
    assert!(s.alive());
}
