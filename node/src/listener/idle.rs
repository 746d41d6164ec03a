//! A connection's activity: how many of its requests are being answered
//! (until their response bodies are done), and since when none has been.
//! HTTP/2 has no idle limit of its own in hyper — a client that answers
//! pings could hold a connection forever without asking anything.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// Shared by a connection's requests and its idle watch.
#[derive(Clone)]
pub struct Activity(Arc<Inner>);

struct Inner {
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection began).
    quiet_since: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            in_flight: AtomicUsize::new(0),
            quiet_since: Mutex::new(Instant::now()),
        }))
    }

    /// A request begins; it ends when the guard drops (with its response
    /// body).
    pub fn start(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.0.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let since = *self
                .0
                .quiet_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = since + idle;
            if self.0.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= due {
                return;
            }
            // Busy, or quiet for less than `idle`: look again later.
            tokio::time::sleep_until(due.max(Instant::now() + idle / 4)).await;
        }
    }
}

/// One request being answered.
pub struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .quiet_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is done.
pub struct Guarded {
    pub inner: axum::body::Body,
    pub _request: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
