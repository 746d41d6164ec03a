//! A world: R regions × N real gateway nodes, a provider, clients that send
//! LLM calls and admin operations, a fault schedule from the seed, and the
//! invariants checked while the faults run and again after everything heals.
//!
//! The clients are in `clients.rs`, the fault schedule and its driver in
//! `faults.rs`. What stays here is the world itself: its spec and node
//! configs, the views the checkers read, and the loop that runs it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use meridian_bugs::Bug;
use meridian_node::admission::Demand;
use meridian_node::clock::{Clock, SeededRng, SkewedClock};
use meridian_node::cluster::PeerNet;
use meridian_node::node::{Node, Seams};
use meridian_node::pricing::dollars_to_pico;
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use meridian_replication::crdt::{PeriodSpec, Window};

use crate::clients::{admin_client, llm_client};
use crate::faults::{Clocks, Plan, apply};
use crate::invariants::{self, Agreement, DurableView, HOLD, NodeView, View, overshoot};
use crate::net::SimUpstream;
pub(crate) use crate::oracle::Oracle;
use crate::upstream::{self, Provider};

pub const MASTER_KEY: &str = "sk-sim-master";
const SECRET: &str = "sim-cluster-secret";
/// The keys the clients use.
pub const PLAIN: &str = "sk-plain";
pub const AVAILABLE: &str = "sk-available";
pub const STRICT: &str = "sk-strict";
pub const REVOKED: &str = "sk-revoked";
/// Price per token of the world's one deployment.
const INPUT_COST: f64 = 0.000_001;
const OUTPUT_COST: f64 = 0.000_002;
pub(crate) const MAX_TOKENS: u64 = 20;
/// Every client call's one message.
pub(crate) const PROMPT: &str = "hi";
/// The simulated wall clock's start, in Unix seconds (a whole number of
/// minutes and days: period boundaries fall on the world's start).
const EPOCH_S: u64 = 1_800_000_000;
/// When the LLM clients start calling.
pub(crate) const TRAFFIC_FROM: Duration = Duration::from_secs(3);

/// What a world is made of. Everything else comes from the seed.
#[derive(Clone, Debug)]
pub struct Spec {
    pub seed: u64,
    pub regions: Vec<String>,
    pub nodes_per_region: u64,
    /// Faults run from here until the heal.
    pub faults_from: Duration,
    /// Length of the traffic-and-faults phase.
    pub faulty_for: Duration,
    /// Faults besides the split between regions.
    pub extra_faults: usize,
    /// Wall clocks differ by up to this much either way.
    pub max_skew: Duration,
    /// Clock jumps per world: a node's clock jumps by up to `max_jump`
    /// either way while it runs, and back again later.
    pub clock_jumps: usize,
    pub max_jump: Duration,
    /// After the heal, counters and metadata must agree within this.
    pub converge_within: Duration,
    /// A revoked key must be refused everywhere within this after the heal.
    pub revoke_within: Duration,
    /// `max_budget` (dollars per `budget_period`) of the strict key.
    pub budget: f64,
    pub budget_period: &'static str,
    /// The available key's budget and period. Small against what the
    /// world's calls would spend with no enforcement, and one period long
    /// for the whole world: the overshoot bound must be well below what a
    /// gateway that enforced nothing would spend, or it tests nothing.
    pub available_budget: f64,
    pub available_period: &'static str,
    /// Gap between one client's calls.
    pub call_every: Duration,
    pub gossip_interval: Duration,
    pub bugs: Vec<Bug>,
}

impl Spec {
    pub fn new(seed: u64) -> Spec {
        Spec {
            seed,
            regions: vec!["us-east".into(), "eu-west".into()],
            nodes_per_region: 3,
            faults_from: Duration::from_secs(4),
            faulty_for: Duration::from_secs(20),
            extra_faults: 4,
            max_skew: Duration::from_secs(2),
            clock_jumps: 1,
            max_jump: Duration::from_secs(3),
            converge_within: Duration::from_secs(10),
            revoke_within: Duration::from_secs(10),
            budget: 0.002,
            budget_period: "10s",
            available_budget: 0.0005,
            available_period: "1m",
            call_every: Duration::from_millis(60),
            gossip_interval: Duration::from_millis(100),
            bugs: Vec::new(),
        }
    }

    pub fn heal_at(&self) -> Duration {
        self.faults_from + self.faulty_for
    }

    pub fn node_hosts(&self) -> Vec<String> {
        self.regions
            .iter()
            .flat_map(|r| (1..=self.nodes_per_region).map(move |i| host(r, i)))
            .collect()
    }

    pub(crate) fn region_of(&self, host: &str) -> String {
        self.regions
            .iter()
            .find(|r| host.starts_with(&format!("{r}-")))
            .cloned()
            .unwrap_or_default()
    }

    /// Most one call can be charged: the larger of what the provider
    /// reports and the reservation's worst case (the prompt's upper bound
    /// and `max_tokens`), priced.
    pub fn worst_call(&self) -> u64 {
        let prompt = Demand::upper_bound(PROMPT.len(), 1).max(upstream::PROMPT_TOKENS);
        let completion = MAX_TOKENS.max(upstream::COMPLETION_TOKENS);
        dollars_to_pico(prompt as f64 * INPUT_COST + completion as f64 * OUTPUT_COST)
    }

    /// What one served call costs (the provider's reported usage, priced).
    pub fn served_call(&self) -> u64 {
        dollars_to_pico(
            upstream::PROMPT_TOKENS as f64 * INPUT_COST
                + upstream::COMPLETION_TOKENS as f64 * OUTPUT_COST,
        )
    }

    pub fn budget_pico(&self) -> u64 {
        dollars_to_pico(self.budget)
    }

    pub fn available_budget_pico(&self) -> u64 {
        dollars_to_pico(self.available_budget)
    }

    /// How many of the available key's budget periods the world's traffic
    /// spans, on any node's clock.
    pub fn available_periods(&self) -> u64 {
        let Ok(period) = self.available_period.parse::<PeriodSpec>() else {
            return 1;
        };
        let window = Window::Budget(period);
        let at = |t: Duration| (Duration::from_secs(EPOCH_S) + t).as_millis() as u64;
        let off = self.max_skew + self.max_jump;
        let first = window.index(at(TRAFFIC_FROM.saturating_sub(off)));
        let last = window.index(at(self.heal_at() + off));
        last - first + 1
    }
}

pub(crate) fn host(region: &str, i: u64) -> String {
    format!("{region}-{i}")
}

/// A running node, as the checkers reach it.
#[derive(Clone)]
pub struct Live {
    pub node: Arc<Node>,
}

pub type Registry = Arc<Mutex<BTreeMap<String, Live>>>;
pub(crate) type Shared<T> = Arc<Mutex<T>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub invariant: String,
    pub at_ms: u64,
    pub message: String,
}

/// What one world showed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub seed: u64,
    pub faults: Vec<String>,
    /// How long the regions were split.
    pub split_ms: u64,
    pub violations: Vec<Violation>,
    /// From the heal until every node first agreed on every counter and
    /// record.
    pub converged_after_ms: Option<u64>,
    /// From the heal until the agreement that lasted to the end began.
    pub settled_after_ms: Option<u64>,
    /// Worst overshoot of the `available` key's budget in one period,
    /// as a fraction of the budget; and the same for `strict` (must be 0).
    pub available_overshoot: f64,
    pub strict_overshoot: f64,
    /// The overshoot the guarantee allows this world's `available` key, and
    /// what its calls would have overshot with no enforcement, per period
    /// (both as fractions of the budget).
    pub available_bound: f64,
    pub available_unenforced: f64,
    pub served: u64,
    /// The oracle's trace and the checkers' samples: equal for equal seeds.
    pub trace: Vec<String>,
}

/// Simulated wall time: turmoil's clock from a fixed epoch.
pub struct SimClock;

impl Clock for SimClock {
    fn since_epoch(&self) -> Duration {
        turmoil::since_epoch().unwrap_or_default()
    }
}

fn config_yaml(spec: &Spec, host_name: &str, raft_id: u64) -> String {
    let region = spec.region_of(host_name);
    let peers: String = (1..=spec.nodes_per_region)
        .map(|i| {
            let h = host(&region, i);
            format!(
                "    - {{raft_id: {i}, cluster_addr: \"{h}:7000\", api_url: \"http://{h}:4000\"}}\n"
            )
        })
        .collect();
    let remote: String = spec
        .regions
        .iter()
        .filter(|r| **r != region)
        .map(|r| {
            let addrs: Vec<String> = (1..=spec.nodes_per_region)
                .map(|i| format!("\"{}:7000\"", host(r, i)))
                .collect();
            format!("    {r}: [{}]\n", addrs.join(", "))
        })
        .collect();
    let remote = if remote.is_empty() {
        "  remote_regions: {}\n".to_owned()
    } else {
        format!("  remote_regions:\n{remote}")
    };
    format!(
        "model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-sim
      api_base: http://upstream:9000/v1
      api_key: sk-provider
      input_cost_per_token: {INPUT_COST}
      output_cost_per_token: {OUTPUT_COST}
general_settings:
  master_key: {MASTER_KEY}
meridian:
  node_id: {host_name}
  region: {region}
  raft_id: {raft_id}
  cluster_listen: 0.0.0.0:7000
  cluster_secret: {SECRET}
  gossip_interval_ms: {gossip}
  peers:
{peers}{remote}",
        gossip = spec.gossip_interval.as_millis(),
    )
}

/// Starts one node on the current (simulated) host from `store`, registers
/// it, and serves its HTTP API until the host stops.
async fn run_node(
    spec: Spec,
    name: String,
    raft_id: u64,
    offset_ms: Arc<AtomicI64>,
    boot: u64,
    store: Arc<dyn meridian_storage::Store>,
    registry: Registry,
) -> Result<(), Box<dyn std::error::Error>> {
    let env = BTreeMap::<String, String>::new();
    let yaml = config_yaml(&spec, &name, raft_id);
    let config = meridian_node::config::parse_str(&yaml, "sim.yaml", &env, false)?;
    let clock: Arc<dyn Clock> = Arc::new(SkewedClock {
        inner: SimClock,
        offset_ms,
    });
    let seed = spec.seed ^ raft_id.wrapping_mul(0x9e37_79b9) ^ boot.wrapping_mul(0x85eb_ca6b);
    let seams = Seams {
        upstream: Arc::new(SimUpstream),
        clock: clock.clone(),
        rng: SeededRng::from_seed(seed ^ name.len() as u64),
    };
    let net = PeerNet {
        dialer: crate::sim_dialer(),
        own_addr: format!("{name}:7000"),
        serve: Box::new(|routes, shutdown| {
            Box::pin(async move {
                let listener = turmoil::net::TcpListener::bind("0.0.0.0:7000")
                    .await
                    .map_err(|e| meridian_link::Error::Serve(e.to_string()))?;
                crate::serve_peers(listener, routes, shutdown).await
            })
        }),
    };
    let running = NodeBuilder::new(config, Secret::new(MASTER_KEY), seams, store)
        .peers(Peers::Net {
            net,
            api_url: format!("http://{name}:4000"),
            seed,
        })
        .start()
        .await?;
    let node = running.node.clone();
    lock(&registry).insert(name, Live { node: node.clone() });
    let listener = crate::SimListener(turmoil::net::TcpListener::bind("0.0.0.0:4000").await?);
    running
        .serve(listener, None, std::future::pending())
        .await?;
    Ok(())
}

/// Reads every running node.
/// Each node's store, by host: a down node's durable state is read from it.
type Stores = BTreeMap<String, (String, u64, Arc<dyn meridian_storage::Store>)>;

fn view(
    registry: &Registry,
    stores: &Stores,
    oracle: &Shared<Oracle>,
    at: Duration,
) -> Result<View, String> {
    let running = lock(registry);
    let nodes = running
        .iter()
        .map(|(name, live)| NodeView::of(name, &live.node))
        .collect();
    let mut down = Vec::new();
    for (host, (region, raft_id, store)) in stores {
        if !running.contains_key(host) {
            down.extend(DurableView::read(host, region, *raft_id, store.clone())?);
        }
    }
    drop(running);
    let acknowledged = lock(oracle)
        .calls
        .iter()
        .map(|(key, calls)| (key.clone(), calls.acknowledged_pico))
        .collect();
    Ok(View {
        at,
        nodes,
        down,
        acknowledged,
    })
}

/// Runs one world to the end and reports what it showed. A setup error
/// (the world could not be built or stopped early) is an `Err`; a broken
/// guarantee is a [`Violation`] in the outcome.
pub fn run(spec: &Spec) -> Result<Outcome, String> {
    meridian_bugs::switch_on(&spec.bugs);
    let outcome = run_world(spec);
    meridian_bugs::switch_on(&[]);
    outcome
}

fn run_world(spec: &Spec) -> Result<Outcome, String> {
    let plan = Plan::generate(spec);
    let end =
        spec.heal_at() + spec.converge_within.max(spec.revoke_within) + Duration::from_secs(5);
    let mut sim = turmoil::Builder::new()
        .rng_seed(spec.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .simulation_duration(end + Duration::from_secs(30))
        .tcp_capacity(65_536)
        .build();
    let registry: Registry = Arc::default();
    let oracle: Shared<Oracle> = Arc::default();
    let provider = Arc::new(Provider::default());
    {
        let provider = provider.clone();
        sim.host("upstream", move || {
            let provider = provider.clone();
            async move {
                crate::upstream::serve(provider).await?;
                Ok(())
            }
        });
    }
    let boots: Shared<BTreeMap<String, u64>> = Arc::default();
    let mut stores = Stores::new();
    let mut clocks = Clocks::new();
    for region in &spec.regions {
        for i in 1..=spec.nodes_per_region {
            let name = host(region, i);
            let store: Arc<dyn meridian_storage::Store> =
                Arc::new(meridian_storage::MemStore::new());
            stores.insert(name.clone(), (region.clone(), i, store.clone()));
            let skew = plan.skew_ms.get(&name).copied().unwrap_or(0);
            let offset = Arc::new(AtomicI64::new(skew));
            clocks.insert(name.clone(), (skew, offset.clone()));
            let (spec, registry, boots) = (spec.clone(), registry.clone(), boots.clone());
            sim.host(name.clone(), move || {
                let boot = {
                    let mut b = lock(&boots);
                    let n = b.entry(name.clone()).or_default();
                    *n += 1;
                    *n
                };
                let (spec, name, store, registry, offset) = (
                    spec.clone(),
                    name.clone(),
                    store.clone(),
                    registry.clone(),
                    offset.clone(),
                );
                async move {
                    run_node(spec, name, i, offset, boot, store, registry)
                        .await
                        .map_err(|e| e.to_string().into())
                }
            });
        }
    }
    for region in &spec.regions {
        let (spec, region_name, oracle) = (spec.clone(), region.clone(), oracle.clone());
        sim.client(format!("client-{region}"), async move {
            llm_client(spec, region_name, oracle)
                .await
                .map_err(|e| e.to_string().into())
        });
    }
    {
        let (spec, oracle) = (spec.clone(), oracle.clone());
        sim.client("admin", async move {
            admin_client(spec, oracle)
                .await
                .map_err(|e| e.to_string().into())
        });
    }

    let mut checks = invariants::all(spec);
    let mut violations = Vec::new();
    let mut killed = BTreeMap::new();
    let mut started = vec![false; plan.events.len()];
    let mut ended = vec![false; plan.events.len()];
    let mut samples = Vec::new();
    // The final checks read converged state: once the clients are done, the
    // world runs on until every node has agreed, unbroken, for `HOLD` since
    // then (a call that ended just before has its last counter change still
    // in gossip), or until the convergence bound and `HOLD` have passed.
    let mut agreement = Agreement::default();
    let mut counters_agreement = Agreement::default();
    let mut clients_done_at: Option<Duration> = None;
    let sample_every = Duration::from_millis(20);
    let mut next_sample = Duration::ZERO;
    loop {
        let clients_done = sim.step().map_err(|e| e.to_string())?;
        let now = sim.elapsed();
        for (i, event) in plan.events.iter().enumerate() {
            let heal = now >= spec.heal_at();
            if !started[i] && now >= event.start && !heal {
                started[i] = true;
                apply(
                    &mut sim,
                    spec,
                    i,
                    &event.fault,
                    true,
                    &provider,
                    &registry,
                    &clocks,
                    &mut killed,
                );
            }
            if started[i] && !ended[i] && (now >= event.end || heal) {
                ended[i] = true;
                apply(
                    &mut sim,
                    spec,
                    i,
                    &event.fault,
                    false,
                    &provider,
                    &registry,
                    &clocks,
                    &mut killed,
                );
            }
        }
        if now >= next_sample {
            next_sample = now + sample_every;
            let v = view(&registry, &stores, &oracle, now)?;
            for check in &mut checks {
                if let Err(message) = check.during(&v) {
                    // The first breach of each guarantee is the one to read.
                    if !violations
                        .iter()
                        .any(|x: &Violation| x.invariant == check.name())
                    {
                        violations.push(Violation {
                            invariant: check.name().to_owned(),
                            at_ms: now.as_millis() as u64,
                            message,
                        });
                    }
                }
            }
            let all_up = v.nodes.len() == spec.node_hosts().len();
            if now >= spec.heal_at() {
                agreement.sample(now, all_up && invariants::agree(&v));
                counters_agreement.sample(
                    now,
                    all_up && invariants::counter_disagreement(&v).is_none(),
                );
            }
            if now.as_millis() % 1000 < 20 {
                samples.push(v.fingerprint());
            }
        }
        if clients_done && clients_done_at.is_none() {
            clients_done_at = Some(now);
        }
        let settled = match clients_done_at {
            None => false,
            Some(done) => {
                agreement
                    .since
                    .is_some_and(|since| now.saturating_sub(since.max(done)) >= HOLD)
                    || now
                        >= (spec.heal_at() + spec.converge_within).max(done + spec.converge_within)
                            + HOLD
            }
        };
        if settled {
            break;
        }
    }
    let last = view(&registry, &stores, &oracle, sim.elapsed())?;
    let oracle = lock(&oracle).clone();
    let end_state = invariants::End {
        oracle: &oracle,
        agreement: &agreement,
        counters: &counters_agreement,
    };
    for check in &mut checks {
        if let Err(message) = check.after(&last, &end_state) {
            violations.push(Violation {
                invariant: check.name().to_owned(),
                at_ms: last.at.as_millis() as u64,
                message,
            });
        }
    }
    let after_heal =
        |t: Option<Duration>| t.map(|t| t.saturating_sub(spec.heal_at()).as_millis() as u64);
    let measured = |name: &str| {
        checks
            .iter()
            .find(|c| c.name() == name)
            .and_then(|c| c.measure())
            .unwrap_or(0.0)
    };
    let mut trace = oracle.trace.clone();
    trace.extend(samples);
    Ok(Outcome {
        seed: spec.seed,
        faults: plan.labels(),
        split_ms: plan.split_length().as_millis() as u64,
        available_overshoot: measured("available_overshoot_bounded"),
        strict_overshoot: measured("strict_never_exceeded"),
        violations,
        converged_after_ms: after_heal(agreement.first),
        settled_after_ms: after_heal(agreement.since),
        available_bound: overshoot::bound(spec) as f64 / spec.available_budget_pico() as f64,
        available_unenforced: overshoot::unenforced(spec, &oracle) as f64
            / spec.available_budget_pico() as f64,
        served: oracle.calls.values().map(|c| c.served).sum(),
        trace,
    })
}
