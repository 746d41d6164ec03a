//! The request path's series, found once per request: the families a
//! settled request moves (spend, tokens, latencies) are one bundle, found
//! by one lookup on the interned labels, and then moved with atomics.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::wire::openai::Usage;

/// Values of several families that move together, each made once for its
/// labels. Keys are interned label sets (hashed by number), so a lookup
/// hashes a few integers.
pub struct Bundles<K, V> {
    map: RwLock<HashMap<K, Arc<V>, foldhash::fast::RandomState>>,
}

impl<K: Hash + Eq + Clone, V> Default for Bundles<K, V> {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Bundles<K, V> {
    /// The bundle of `key`, made by `make` when new; once `cap` bundles
    /// exist, a new key is replaced by `overflow(key)` first.
    pub fn get(
        &self,
        key: K,
        cap: usize,
        overflow: impl FnOnce(K) -> K,
        make: impl FnOnce(&K) -> V,
    ) -> Arc<V> {
        if let Some(held) = self.map.read().get(&key) {
            return held.clone();
        }
        let mut map = self.map.write();
        let key = if map.len() >= cap && !map.contains_key(&key) {
            overflow(key)
        } else {
            key
        };
        if let Some(held) = map.get(&key) {
            return held.clone();
        }
        let made = Arc::new(make(&key));
        map.insert(key, made.clone());
        made
    }
}

/// The series of one (caller, requested model, deployment): what its
/// answers' heads and settlements move.
pub struct Serving {
    pub(super) overhead: Histogram,
    pub(super) spend: Counter<f64, AtomicU64>,
    pub(super) input_tokens: Counter,
    pub(super) output_tokens: Counter,
    pub(super) total_tokens: Counter,
    pub(super) total_latency: Histogram,
    pub(super) api_latency: Histogram,
    pub(super) first_token: Histogram,
}

/// How long a settled request took.
pub struct Timing {
    /// From arrival to the end of the answer.
    pub total: Duration,
    /// The answering provider call, to its end.
    pub call: Duration,
    /// A stream's first chunk, from the call's start.
    pub first_chunk: Option<Duration>,
}

impl Serving {
    /// Series registered nowhere: what a node with metrics off moves.
    pub(super) fn unregistered() -> Self {
        let latency = super::latency;
        Self {
            overhead: latency(),
            spend: Counter::default(),
            input_tokens: Counter::default(),
            output_tokens: Counter::default(),
            total_tokens: Counter::default(),
            total_latency: latency(),
            api_latency: latency(),
            first_token: latency(),
        }
    }

    /// An answer's head is going out: the gateway's share of its latency.
    pub fn answered(&self, overhead: Duration) {
        self.overhead.observe(overhead.as_secs_f64());
    }

    /// The request was settled: what it used, cost and took.
    pub fn settled(&self, usage: &Usage, cost_usd: f64, timing: &Timing) {
        self.spend.inc_by(cost_usd);
        self.input_tokens.inc_by(usage.prompt_tokens);
        self.output_tokens.inc_by(usage.completion_tokens);
        self.total_tokens.inc_by(usage.total_tokens());
        self.total_latency.observe(timing.total.as_secs_f64());
        self.api_latency.observe(timing.call.as_secs_f64());
        if let Some(first) = timing.first_chunk {
            self.first_token.observe(first.as_secs_f64());
        }
    }
}

/// The series an answered provider call moves.
pub struct Answering {
    pub(super) total: Counter,
    pub(super) success: Counter,
    pub(super) state: Gauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_new_keys_share_the_overflow_bundle() {
        let bundles = Bundles::<u32, u32>::default();
        let made = |k: &u32| *k * 10;
        assert_eq!(*bundles.get(1, 2, |_| 0, made), 10);
        assert_eq!(*bundles.get(2, 2, |_| 0, made), 20);
        // Full: a new key is counted under the overflow key, once made.
        assert_eq!(*bundles.get(3, 2, |_| 0, made), 0);
        assert_eq!(*bundles.get(4, 2, |_| 0, made), 0);
        // Held keys keep their own.
        assert_eq!(*bundles.get(1, 2, |_| 0, |_| unreachable!()), 10);
        assert!(Arc::ptr_eq(
            &bundles.get(3, 2, |_| 0, made),
            &bundles.get(4, 2, |_| 0, made)
        ));
    }
}
