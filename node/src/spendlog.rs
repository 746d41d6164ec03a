//! Per-request spend rows (`/spend/logs`), kept on the node that served the
//! request for a retention period. Rows are local data: they are not
//! replicated, and a region's view is gathered by asking every node of the
//! region. The counters, not these rows, are what budgets are enforced on;
//! rows are written in batches off the request path, so a crash can lose the
//! last batch of rows (never any counted spend).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_storage::{Cf, Durability, Store, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::clock::Clock;

/// How long rows are kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// Rows buffered before a write is forced.
const BATCH: usize = 256;
/// Rows kept for a retry while writes fail; past it the oldest go (the node
/// takes no new calls while its writes fail, so only calls in flight add).
const MAX_PENDING: usize = 16 * BATCH;
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const COLLECT_EVERY: Duration = Duration::from_secs(60);

/// One served request, as `/spend/logs` shows it (LiteLLM's field names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendRow {
    pub request_id: String,
    /// SHA-256 of the virtual key (never the key); empty for the master key.
    pub api_key: String,
    pub team_id: Option<String>,
    pub user: Option<String>,
    /// The customer (the request's `user` field).
    pub end_user: Option<String>,
    /// The tags of the request, its key and its team.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_tags: Vec<String>,
    pub model_group: String,
    /// The deployment that served it.
    pub model_id: String,
    pub region: String,
    pub node: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// USD.
    pub spend: f64,
    /// Unix milliseconds.
    #[serde(rename = "startTime")]
    pub start_time: u64,
    #[serde(rename = "endTime")]
    pub end_time: u64,
}

/// Which rows a query wants.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    pub api_key: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub end_user: Option<String>,
    pub request_id: Option<String>,
    /// Unix milliseconds, inclusive.
    pub start_ms: Option<u64>,
    /// Unix milliseconds, exclusive.
    pub end_ms: Option<u64>,
}

impl Filter {
    pub fn matches(&self, row: &SpendRow) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        eq(&self.api_key, Some(&row.api_key))
            && eq(&self.team_id, row.team_id.as_deref())
            && eq(&self.user_id, row.user.as_deref())
            && eq(&self.end_user, row.end_user.as_deref())
            && eq(&self.request_id, Some(&row.request_id))
    }
}

pub struct SpendLog {
    store: Arc<dyn Store>,
    pending: Mutex<WriteBatch>,
    /// The latest write failed (logged when it starts and stops failing).
    failing: std::sync::atomic::AtomicBool,
    full: Notify,
    retention: Duration,
    /// One scan at a time: a scan runs on the caller's worker thread, and
    /// a node with two workers must keep one for requests and Raft.
    scans: tokio::sync::Semaphore,
}

/// Rows sort by the time they ended, then by request id.
fn row_key(end_ms: u64, request_id: &str) -> Vec<u8> {
    let mut key = end_ms.to_be_bytes().to_vec();
    key.extend(request_id.as_bytes());
    key
}

impl SpendLog {
    pub fn new(store: Arc<dyn Store>, retention: Duration) -> Self {
        Self {
            store,
            pending: Mutex::new(WriteBatch::default()),
            failing: Default::default(),
            full: Notify::new(),
            retention,
            scans: tokio::sync::Semaphore::new(1),
        }
    }

    /// [`Self::query`], one at a time on this node, reading at most
    /// `max_scanned` rows (at most [`MAX_SCANNED`]).
    pub async fn query_bounded(
        &self,
        filter: &Filter,
        limit: usize,
        max_scanned: usize,
    ) -> Vec<SpendRow> {
        let Ok(_turn) = self.scans.acquire().await else {
            return Vec::new();
        };
        self.scan(filter, limit, max_scanned.min(MAX_SCANNED))
    }

    /// Queues a row; it is written with the next batch.
    pub fn record(&self, row: &SpendRow) {
        let Ok(value) = serde_json::to_vec(row) else {
            return;
        };
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.put(Cf::SpendLog, row_key(row.end_time, &row.request_id), value);
        if pending.ops.len() >= BATCH {
            self.full.notify_one();
        }
    }

    /// Writes queued rows. When the write fails they are queued again, in
    /// front of rows recorded meanwhile, for the next flush.
    /// Rows waiting to be written.
    pub fn queued(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ops
            .len()
    }

    pub fn flush(&self) {
        use std::sync::atomic::Ordering;
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        match self.store.write(batch.clone(), Durability::Process) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("writing spend log rows works again");
                }
            }
            Err(e) => {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let newer = std::mem::replace(&mut *pending, batch);
                pending.ops.extend(newer.ops);
                let excess = pending.ops.len().saturating_sub(MAX_PENDING);
                pending.ops.drain(..excess);
                drop(pending);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "writing spend log rows failed; kept for a retry");
                }
                if excess > 0 {
                    tracing::warn!(rows = excess, "spend log rows dropped: writes keep failing");
                }
            }
        }
    }

    /// Rows older than the retention go.
    pub fn collect(&self, now_ms: u64) {
        let keep_from = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::SpendLog, Vec::new(), keep_from.to_be_bytes().to_vec());
        if let Err(e) = self.store.write(batch, Durability::Process) {
            tracing::warn!(error = %e, "collecting old spend log rows failed");
        }
    }

    /// Flushes every 200 ms (sooner when a batch fills) and collects old rows
    /// every minute, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        clock: Arc<dyn Clock>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut collect = tokio::time::interval(COLLECT_EVERY);
        loop {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => self.flush(),
                () = self.full.notified() => self.flush(),
                _ = collect.tick() => self.collect(clock.since_epoch().as_millis() as u64),
                () = &mut shutdown => break,
            }
        }
        self.flush();
    }

    /// This node's rows matching `filter`, newest first, at most `limit`.
    /// Rows are read newest first and the read stops at `limit` matches, or
    /// after [`MAX_SCANNED`] rows: a query costs a bounded amount of memory
    /// and time however long the retention.
    pub fn query(&self, filter: &Filter, limit: usize) -> Vec<SpendRow> {
        self.scan(filter, limit, MAX_SCANNED)
    }

    fn scan(&self, filter: &Filter, limit: usize, max_scanned: usize) -> Vec<SpendRow> {
        self.flush();
        let from = filter.start_ms.unwrap_or(0).to_be_bytes();
        let to = filter.end_ms.map(u64::to_be_bytes);
        let mut rows = Vec::new();
        let mut scanned = 0usize;
        let read = self.store.scan_back(
            Cf::SpendLog,
            &from,
            to.as_ref().map(|t| t.as_slice()),
            &mut |_, value| {
                scanned += 1;
                if let Ok(row) = serde_json::from_slice::<SpendRow>(value)
                    && filter.matches(&row)
                {
                    rows.push(row);
                }
                Ok(if rows.len() >= limit || scanned >= max_scanned {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                })
            },
        );
        if let Err(e) = read {
            tracing::warn!(error = %e, "reading spend log rows failed");
        }
        rows
    }
}

/// The most rows one query reads (a filter that matches little over a long
/// range stops here rather than reading the whole log).
pub const MAX_SCANNED: usize = 200_000;

/// The most rows a caller who sees only its own key's rows has read for it.
pub const MAX_SCANNED_OWN: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_storage::MemStore;

    fn row(id: &str, end: u64, key: &str) -> SpendRow {
        SpendRow {
            request_id: id.into(),
            api_key: key.into(),
            end_time: end,
            ..SpendRow::default()
        }
    }

    #[test]
    fn rows_survive_a_failing_disk_up_to_a_bound() {
        let disk = Arc::new(meridian_storage::Faulty::new(MemStore::new()));
        let log = SpendLog::new(disk.clone(), Duration::from_secs(60));
        log.record(&row("a", 1_000, "k1"));
        disk.fail_writes(true);
        log.flush();
        log.record(&row("b", 2_000, "k1"));
        log.flush();
        disk.fail_writes(false);
        log.flush();
        let ids: Vec<_> = log
            .query(&Filter::default(), 10)
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ["b", "a"], "nothing lost to the failed writes");

        disk.fail_writes(true);
        for i in 0..MAX_PENDING + 10 {
            log.record(&row(&format!("r{i:05}"), 10_000 + i as u64, "k1"));
            if i % BATCH == 0 {
                log.flush();
            }
        }
        log.flush();
        let pending = log.pending.lock().unwrap().ops.len();
        assert_eq!(pending, MAX_PENDING, "bounded while writes fail");
    }

    #[test]
    fn rows_are_kept_filtered_and_collected() {
        let log = SpendLog::new(Arc::new(MemStore::new()), Duration::from_secs(60));
        log.record(&row("a", 1_000, "k1"));
        log.record(&row("b", 2_000, "k2"));
        log.record(&row("c", 3_000, "k1"));
        let all = log.query(&Filter::default(), 10);
        let ids: Vec<_> = all.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["c", "b", "a"], "newest first");
        let k1 = Filter {
            api_key: Some("k1".into()),
            ..Filter::default()
        };
        assert_eq!(log.query(&k1, 10).len(), 2);
        let window = Filter {
            start_ms: Some(1_500),
            end_ms: Some(3_000),
            ..Filter::default()
        };
        assert_eq!(log.query(&window, 10)[0].request_id, "b");
        assert_eq!(log.query(&Filter::default(), 1).len(), 1);
        log.collect(62_500);
        let left: Vec<_> = log
            .query(&Filter::default(), 10)
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(left, ["c"], "rows that ended before now - 60 s are gone");
    }
}
