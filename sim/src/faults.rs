//! Faults, all derived from the world's seed: what goes wrong, where, when
//! and for how long (the same seed always yields the same schedule), and
//! what starting or ending each one does to a running world.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::upstream::{Provider, Trouble};
use crate::world::{Registry, Spec, lock};

/// One thing that goes wrong for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every link between the regions is cut.
    SplitRegions,
    /// One node is cut off from every other node.
    Isolate(String),
    /// Messages from the first node to the second are lost (one way).
    OneWay(String, String),
    /// Messages between two nodes are held, then delivered all at once.
    Hold(String, String),
    /// Each message between two nodes is lost with this probability (in
    /// thousandths); a lost TCP message breaks the connection.
    Lossy(String, String, u32),
    /// The node's process dies, then starts again from its store.
    Crash(String),
    /// Whoever leads the region when the fault starts dies, then restarts.
    KillLeader(String),
    /// The provider fails every n-th request.
    UpstreamErrors(u64),
    /// The provider answers this many milliseconds late.
    UpstreamSlow(u64),
    /// The node's wall clock jumps by this many milliseconds (forward or
    /// back) at the start, and back again at the end: two jumps, opposite
    /// ways, while the node runs.
    ClockJump(String, i64),
}

impl Fault {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            Fault::SplitRegions => "split".into(),
            Fault::Isolate(h) => format!("isolate {h}"),
            Fault::OneWay(a, b) => format!("oneway {a}>{b}"),
            Fault::Hold(a, b) => format!("hold {a}-{b}"),
            Fault::Lossy(a, b, p) => format!("lossy {a}-{b} {p}‰"),
            Fault::Crash(h) => format!("crash {h}"),
            Fault::KillLeader(r) => format!("kill-leader {r}"),
            Fault::UpstreamErrors(n) => format!("upstream-5xx 1/{n}"),
            Fault::UpstreamSlow(ms) => format!("upstream-slow {ms}ms"),
            Fault::ClockJump(h, ms) => format!("clock-jump {h} {ms:+}ms"),
        }
    }
}

/// A fault and when it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub start: Duration,
    pub end: Duration,
    pub fault: Fault,
}

/// Everything the seed decides about a world's faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Each node's wall-clock offset, in milliseconds.
    pub skew_ms: BTreeMap<String, i64>,
    /// Sorted by start.
    pub events: Vec<Event>,
}

impl Plan {
    pub fn generate(spec: &Spec) -> Plan {
        let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x5eed_fa17);
        let hosts = spec.node_hosts();
        let max_skew = spec.max_skew.as_millis() as i64;
        let skew_ms = hosts
            .iter()
            .map(|h| (h.clone(), rng.random_range(-max_skew..=max_skew)))
            .collect();
        let (from, to) = (spec.faults_from, spec.heal_at());
        let window = (to - from).as_millis() as u64;
        let mut events = Vec::new();
        // The partition between regions whose length the sweep plots
        // against: present in every world with two or more regions.
        if spec.regions.len() > 1 {
            let len = rng.random_range(window / 10..=window * 6 / 10);
            let start = rng.random_range(0..=window - len);
            events.push(event(from, start, len, Fault::SplitRegions));
        }
        let pick = |rng: &mut StdRng| hosts[rng.random_range(0..hosts.len())].clone();
        for _ in 0..spec.extra_faults {
            let fault = match rng.random_range(0..8u32) {
                0 => Fault::Isolate(pick(&mut rng)),
                1 => Fault::OneWay(pick(&mut rng), pick(&mut rng)),
                2 => Fault::Hold(pick(&mut rng), pick(&mut rng)),
                3 => Fault::Lossy(pick(&mut rng), pick(&mut rng), rng.random_range(5..50)),
                4 => Fault::Crash(pick(&mut rng)),
                5 => {
                    Fault::KillLeader(spec.regions[rng.random_range(0..spec.regions.len())].clone())
                }
                6 => Fault::UpstreamErrors(rng.random_range(2..6)),
                _ => Fault::UpstreamSlow(rng.random_range(100..1500)),
            };
            if let Fault::OneWay(a, b) | Fault::Hold(a, b) | Fault::Lossy(a, b, _) = &fault
                && a == b
            {
                continue;
            }
            let len = rng.random_range(300..=(window / 3).max(301));
            let start = rng.random_range(0..=window.saturating_sub(len));
            events.push(event(from, start, len, fault));
        }
        // Clock jumps come from their own stream, so adding them left every
        // other draw (and the worlds' other faults) as it was.
        let mut jumps = StdRng::seed_from_u64(spec.seed ^ 0xc10c_0f75);
        let max_jump = spec.max_jump.as_millis() as i64;
        for _ in 0..spec.clock_jumps {
            if max_jump < 1 {
                break;
            }
            let host = hosts[jumps.random_range(0..hosts.len())].clone();
            let by = jumps.random_range(1..=max_jump);
            let by = if jumps.random_bool(0.5) { by } else { -by };
            let len = jumps.random_range(300..=(window / 3).max(301));
            let start = jumps.random_range(0..=window.saturating_sub(len));
            events.push(event(from, start, len, Fault::ClockJump(host, by)));
        }
        events.sort_by_key(|e| e.start);
        Plan { skew_ms, events }
    }

    /// How long the regions were split (zero if never).
    pub fn split_length(&self) -> Duration {
        self.events
            .iter()
            .filter(|e| e.fault == Fault::SplitRegions)
            .map(|e| e.end - e.start)
            .sum()
    }

    pub fn labels(&self) -> Vec<String> {
        self.events.iter().map(|e| e.fault.label()).collect()
    }
}

fn event(from: Duration, start_ms: u64, len_ms: u64, fault: Fault) -> Event {
    let start = from + Duration::from_millis(start_ms);
    Event {
        start,
        end: start + Duration::from_millis(len_ms),
        fault,
    }
}

// The driver: what starting or ending a fault does to a running world.

/// Each node's wall-clock skew, and the offset its clock reads now (the
/// skew, plus a jump while one lasts). It outlives the node's restarts.
pub(crate) type Clocks = BTreeMap<String, (i64, Arc<AtomicI64>)>;

/// Applies the start (`on`) or end of a fault to the world.
/// `killed` remembers, per event, which leader a `KillLeader` took down.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    sim: &mut turmoil::Sim<'_>,
    spec: &Spec,
    index: usize,
    fault: &Fault,
    on: bool,
    provider: &Provider,
    registry: &Registry,
    clocks: &Clocks,
    killed: &mut BTreeMap<usize, String>,
) {
    let hosts = spec.node_hosts();
    let cross = |sim: &turmoil::Sim<'_>, on: bool| {
        for a in &hosts {
            for b in &hosts {
                if a < b && spec.region_of(a) != spec.region_of(b) {
                    if on {
                        sim.partition(a.as_str(), b.as_str());
                    } else {
                        sim.repair(a.as_str(), b.as_str());
                    }
                }
            }
        }
    };
    match fault {
        Fault::SplitRegions => cross(sim, on),
        Fault::Isolate(h) => {
            for other in hosts.iter().filter(|o| *o != h) {
                if on {
                    sim.partition(h.as_str(), other.as_str());
                } else {
                    sim.repair(h.as_str(), other.as_str());
                }
            }
        }
        Fault::OneWay(a, b) => {
            if on {
                sim.partition_oneway(a.as_str(), b.as_str());
            } else {
                sim.repair_oneway(a.as_str(), b.as_str());
            }
        }
        Fault::Hold(a, b) => {
            if on {
                sim.hold(a.as_str(), b.as_str());
            } else {
                sim.release(a.as_str(), b.as_str());
            }
        }
        Fault::Lossy(a, b, permille) => {
            let rate = if on {
                f64::from(*permille) / 1000.0
            } else {
                0.0
            };
            sim.set_link_fail_rate(a.as_str(), b.as_str(), rate);
        }
        Fault::Crash(h) => crash_or_restart(sim, h, on, registry),
        Fault::KillLeader(region) => {
            if on {
                let leader = lock(registry).iter().find_map(|(name, live)| {
                    (spec.region_of(name) == *region && live.node.metadata.is_leader())
                        .then(|| name.clone())
                });
                if let Some(leader) = leader {
                    crash_or_restart(sim, &leader, true, registry);
                    killed.insert(index, leader);
                }
            } else if let Some(leader) = killed.remove(&index) {
                crash_or_restart(sim, &leader, false, registry);
            }
        }
        Fault::UpstreamErrors(n) => {
            let now = provider.current();
            provider.set(Trouble {
                fail_every: if on { *n } else { 0 },
                ..now
            });
        }
        Fault::UpstreamSlow(ms) => {
            let now = provider.current();
            provider.set(Trouble {
                slow: if on {
                    Duration::from_millis(*ms)
                } else {
                    Duration::ZERO
                },
                ..now
            });
        }
        Fault::ClockJump(h, by) => {
            if let Some((skew, offset)) = clocks.get(h) {
                offset.store(if on { skew + by } else { *skew }, Ordering::Relaxed);
            }
        }
    }
}

fn crash_or_restart(sim: &mut turmoil::Sim<'_>, host: &str, crash: bool, registry: &Registry) {
    if crash {
        if sim.is_host_running(host) {
            lock(registry).remove(host);
            sim.crash(host);
        }
    } else if !sim.is_host_running(host) {
        sim.bounce(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_schedule() {
        let a = Plan::generate(&Spec::new(3));
        assert_eq!(a, Plan::generate(&Spec::new(3)));
        assert_ne!(a, Plan::generate(&Spec::new(4)));
        let spec = Spec::new(3);
        for e in &a.events {
            assert!(
                e.start >= spec.faults_from && e.end <= spec.heal_at(),
                "{e:?}"
            );
        }
        assert!(a.split_length() > Duration::ZERO);
        assert!(a.skew_ms.values().all(|s| s.unsigned_abs() <= 2000));
        let jumps: Vec<i64> = (0..40)
            .flat_map(|seed| Plan::generate(&Spec::new(seed)).events)
            .filter_map(|e| match e.fault {
                Fault::ClockJump(_, ms) => Some(ms),
                _ => None,
            })
            .collect();
        assert_eq!(jumps.len(), 40 * spec.clock_jumps);
        assert!(jumps.iter().all(|ms| ms.unsigned_abs() <= 3000));
        assert!(jumps.iter().any(|ms| *ms < 0) && jumps.iter().any(|ms| *ms > 0));
    }
}
