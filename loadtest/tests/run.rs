//! The load generator against the in-process fake upstream: counts, the
//! stream mix, the seeded error rate, the coordinated-omission correction and
//! the HTML report. No assertion on how fast anything is — a loaded 2-core
//! machine must pass too — only on counts and on lower bounds that hold by
//! construction.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meridian_loadtest::fake_upstream::{self, FakeUpstream, UpstreamOptions};
use meridian_loadtest::{Load, RunOptions, RunResult, Summary, report, run};

fn options(upstream: &FakeUpstream) -> RunOptions {
    RunOptions {
        url: upstream.base_url(),
        load: Load::Rate(200.0),
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(250),
        seed: 7,
        label: "fake".into(),
        ..RunOptions::default()
    }
}

fn assert_ordered(s: &Summary) {
    assert!(s.min_us > 0, "{s:?}");
    assert!(s.min_us <= s.p50_us, "{s:?}");
    assert!(s.p50_us <= s.p90_us, "{s:?}");
    assert!(s.p90_us <= s.p99_us, "{s:?}");
    assert!(s.p99_us <= s.p999_us, "{s:?}");
    assert!(s.p999_us <= s.max_us, "{s:?}");
    assert!(s.mean_us > 0.0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_every_scheduled_request() {
    let upstream = FakeUpstream::start_with(
        false,
        UpstreamOptions {
            output_tokens: Some(20),
            ..UpstreamOptions::default()
        },
    )
    .await
    .unwrap();
    let result = run(RunOptions {
        stream_fraction: 0.3,
        ..options(&upstream)
    })
    .await
    .unwrap();

    // 200/s for 1.5 s, the 0.25 s warm-up's 50 requests not counted.
    assert_eq!(result.requests, 300);
    assert_eq!(result.successes, 300, "{:?}", result.errors);
    assert!(result.errors.is_empty());
    // 30% of 300 is 90; the seeded choice is not exact.
    assert!((60..=120).contains(&result.streams), "{}", result.streams);
    assert_eq!(result.latency.count, 300);
    assert_eq!(result.ttfb.count, result.streams);
    assert_ordered(&result.latency);
    assert_ordered(&result.ttfb);
    // A stream's first byte comes no later than its last.
    assert!(result.ttfb.max_us <= result.latency.max_us);
    assert_eq!(result.per_second.iter().sum::<u64>(), 300);
    assert!(result.throughput_rps > 0.0);
    assert!(!result.latency_curve.is_empty());

    // The same seed sends the same mix.
    let again = run(RunOptions {
        stream_fraction: 0.3,
        ..options(&upstream)
    })
    .await
    .unwrap();
    assert_eq!(again.streams, result.streams);

    // And it survives the trip through JSON, for `compare` (floats to
    // within their printed precision).
    let json = serde_json::to_string(&result).unwrap();
    let back: RunResult = serde_json::from_str(&json).unwrap();
    assert_eq!(back.label, result.label);
    assert_eq!(back.load, result.load);
    assert_eq!(back.requests, result.requests);
    assert_eq!(back.errors, result.errors);
    assert_eq!(back.latency.p99_us, result.latency.p99_us);
    assert_eq!(back.latency_curve.len(), result.latency_curve.len());
    assert_eq!(back.per_second, result.per_second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_urls_share_the_load_evenly() {
    let first = FakeUpstream::start(true).await.unwrap();
    let second = FakeUpstream::start(true).await.unwrap();
    let result = run(RunOptions {
        extra_urls: vec![second.base_url()],
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        ..options(&first)
    })
    .await
    .unwrap();
    assert_eq!(result.requests, 100);
    assert_eq!(result.successes, 100, "{:?}", result.errors);
    assert_eq!(result.sent_total, 100);
    assert_eq!(first.take_requests().len(), 50);
    assert_eq!(second.take_requests().len(), 50);
    assert!(
        result.target.contains(&second.addr.to_string()),
        "{}",
        result.target
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_stream_too() {
    let upstream = FakeUpstream::start(false).await.unwrap();
    let result = run(RunOptions {
        path: "/v1/messages".into(),
        key: Some("sk-ant-test".into()),
        stream_fraction: 0.5,
        duration: Duration::from_millis(500),
        ..options(&upstream)
    })
    .await
    .unwrap();
    assert_eq!(result.requests, 100);
    assert_eq!(result.successes, 100, "{:?}", result.errors);
    assert!(result.streams > 0 && result.streams < 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_fails_the_seeded_requests() {
    let (seed, rate) = (42, 0.2);
    let upstream = FakeUpstream::start_with(
        false,
        UpstreamOptions {
            error_rate: rate,
            seed,
            ..UpstreamOptions::default()
        },
    )
    .await
    .unwrap();
    // No warm-up: every request the upstream numbers is measured.
    let result = run(RunOptions {
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        stream_fraction: 0.5,
        ..options(&upstream)
    })
    .await
    .unwrap();

    let expected = (0..200)
        .filter(|&n| fake_upstream::fails(seed, rate, n))
        .count() as u64;
    assert!((20..=60).contains(&expected), "{expected}"); // about 20% of 200
    assert_eq!(result.requests, 200);
    assert_eq!(result.errors.get("500").copied(), Some(expected));
    assert_eq!(result.errors.len(), 1, "{:?}", result.errors);
    assert_eq!(result.successes, 200 - expected);
    assert_eq!(result.latency.count, 200 - expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_answers_in_the_providers_shape() {
    let upstream = FakeUpstream::start_with(
        false,
        UpstreamOptions {
            error_rate: 1.0,
            ..UpstreamOptions::default()
        },
    )
    .await
    .unwrap();
    let client = reqwest_free_post(&upstream, "/v1/chat/completions").await;
    assert_eq!(client.0, 500);
    assert_eq!(client.1["error"]["type"], "fake_error");
    let anthropic = reqwest_free_post(&upstream, "/v1/messages").await;
    assert_eq!(anthropic.0, 500);
    assert_eq!(anthropic.1["type"], "error");
    assert_eq!(anthropic.1["error"]["type"], "fake_error");
}

/// One POST with hyper, the status and JSON body back.
async fn reqwest_free_post(upstream: &FakeUpstream, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(format!("{}{path}", upstream.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(br#"{"model":"m"}"#)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_counts_from_the_intended_send_time() {
    // Each answer takes 200 ms and only 2 may be in flight: at most 10/s get
    // through, but 40/s are due. A generator that waited for answers would
    // report ~200 ms for everything; this one must report the queueing too.
    let upstream = FakeUpstream::start_with(
        false,
        UpstreamOptions {
            latency: Duration::from_millis(200),
            ..UpstreamOptions::default()
        },
    )
    .await
    .unwrap();
    let result = run(RunOptions {
        load: Load::Rate(40.0),
        max_in_flight: 2,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        ..options(&upstream)
    })
    .await
    .unwrap();

    assert_eq!(result.requests, 20);
    assert_eq!(result.successes, 20, "{:?}", result.errors);
    // Request k (from 0) cannot leave before floor(k/2) answers of 200 ms
    // have come back, yet was due at k × 25 ms: every k >= 2 is late.
    assert!(result.late_sends >= 18, "{}", result.late_sends);
    // The last request was due at 475 ms and cannot be done before
    // 10 × 200 ms = 2 s: at least 1.5 s of latency, whatever the machine.
    assert!(result.latency.max_us >= 1_500_000, "{:?}", result.latency);
    // Request k's latency is at least 200 ms × (floor(k/2) + 1) − 25 ms × k;
    // the tenth smallest of those bounds (the median of 20) is 800 ms, four
    // times what a generator that waited for answers would report.
    assert!(result.latency.p50_us >= 750_000, "{:?}", result.latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_keeps_its_workers_busy() {
    let upstream = FakeUpstream::start(false).await.unwrap();
    let result = run(RunOptions {
        load: Load::Concurrency(4),
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        stream_fraction: 0.5,
        ..options(&upstream)
    })
    .await
    .unwrap();
    assert!(result.requests > 0, "{result:#?}");
    assert_eq!(result.successes, result.requests, "{result:#?}");
    assert_eq!(result.late_sends, 0, "{result:#?}");
    assert_ordered(&result.latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_with_a_gap_sends_one_request_at_a_time() {
    let upstream = FakeUpstream::start(true).await.unwrap();
    let result = run(RunOptions {
        load: Load::Concurrency(1),
        gap: Duration::from_millis(50),
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        headers: vec![("x-route".into(), "seq".into())],
        ..options(&upstream)
    })
    .await
    .unwrap();
    // Each request takes its exchange plus the 50 ms gap, so 500 ms hold at
    // most ten (and a last one started before the end): a bound by
    // construction, however slow the machine.
    assert!(result.requests >= 1, "{result:#?}");
    assert!(result.sent_total <= 11, "{result:#?}");
    assert_eq!(result.successes, result.requests, "{result:#?}");
    let seen = upstream.take_requests();
    assert_eq!(seen.len() as u64, result.sent_total);
    assert!(
        seen.iter()
            .all(|r| r.headers.get("x-route").map(String::as_str) == Some("seq"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_targets_count_as_transport_errors() {
    // Bound and dropped: nothing listens there any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let result = run(RunOptions {
        url: format!("http://127.0.0.1:{port}"),
        load: Load::Rate(50.0),
        duration: Duration::from_millis(200),
        warmup: Duration::ZERO,
        ..RunOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(result.requests, 10);
    assert_eq!(result.successes, 0);
    assert_eq!(result.errors.get("transport").copied(), Some(10));
    assert_eq!(result.latency, Summary::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_draws_every_run() {
    let upstream = FakeUpstream::start(false).await.unwrap();
    let short = |label: &str| RunOptions {
        label: label.into(),
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        stream_fraction: 0.5,
        ..options(&upstream)
    };
    let first = run(short("baseline")).await.unwrap();
    let second = run(short("with <gateway> & co")).await.unwrap();
    let page = report::html("two runs", &[first, second]);
    assert!(page.starts_with("<!doctype html>"));
    assert_eq!(page.matches("<svg").count(), 2);
    assert!(page.contains("baseline"));
    assert!(page.contains("with &lt;gateway&gt; &amp; co"));
    assert!(!page.contains("<gateway>"));
    // Self-contained: no script, nothing fetched.
    assert!(!page.contains("<script"));
    assert!(!page.contains("src="));
    assert!(!page.contains("href="));
}
