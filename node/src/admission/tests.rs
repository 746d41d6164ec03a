//! The admission decision over the in-memory store: one node's counters,
//! one region's metadata, no network. Each test names the limit it checks.

use std::sync::Arc;

use meridian_consensus::metadata::{Command, Enforcement, Kind, MetadataState, Proposal, UserRole};
use meridian_replication::Counters;
use meridian_storage::{Durability, MemStore};
use serde_json::json;

use super::decide::{Step, try_admit};
use super::{Demand, LimitKind, Reservation};
use crate::auth::{Caller, Principal};
use crate::config::Deployment;
use crate::error::Error;
use crate::pricing::{Cost, Price};
use crate::wire::openai::Usage;

const TOKEN: &str = "5d41402abc4b2a76b9719d911017c592aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NOW_MS: u64 = 1_800_000_000_000;

struct World {
    counters: Arc<Counters>,
    state: MetadataState,
    key: Principal,
    deployment: Deployment,
}

/// A node with one key whose record carries `limits` (LiteLLM's fields:
/// `rpm_limit`, `tpm_limit`, `max_budget`, ...), and a deployment priced at
/// $1 per million tokens each way.
fn world(limits: serde_json::Value) -> World {
    let mut record = json!({ "token": TOKEN, "key_name": "sk-...test", "models": [] });
    if let (Some(r), Some(l)) = (record.as_object_mut(), limits.as_object()) {
        r.extend(l.clone());
    }
    let mut state = MetadataState::new("us");
    state.apply(&Proposal {
        at_ms: NOW_MS,
        command: Command::Create {
            kind: Kind::Key,
            record,
        },
    });
    let key = state.key(TOKEN).expect("the key was created").clone();
    let counters = Counters::open(
        "us",
        1,
        Arc::new(MemStore::new()),
        Durability::Process,
        || 7,
    )
    .expect("counters open");
    let mut deployment =
        crate::config::Config::embedded(&std::collections::BTreeMap::<String, String>::new())
            .deployments[0]
            .clone();
    deployment.price = Some(Price {
        input: crate::pricing::dollars_to_pico(0.000_001),
        output: crate::pricing::dollars_to_pico(0.000_001),
        cache_read: None,
        cache_write: None,
    });
    World {
        counters: Arc::new(counters),
        state,
        key: Principal::Key(Arc::new(Caller {
            key,
            team: None,
            user: None,
            role: None,
        })),
        deployment,
    }
}

fn demand(prompt_tokens: u64, max_tokens: u64) -> Demand {
    Demand {
        prompt_tokens,
        prompt_tokens_max: prompt_tokens,
        max_tokens: Some(max_tokens),
        choices: 1,
        ..Demand::default()
    }
}

impl World {
    fn admit_as(&self, who: &Principal, d: &Demand) -> Result<Reservation, Error> {
        match try_admit(
            &self.counters,
            &self.state,
            who,
            d,
            &self.deployment,
            NOW_MS,
            Enforcement::Available,
        )? {
            Step::Admitted { reservation, .. } => Ok(*reservation),
            Step::Short(_) => panic!("no strict limit here"),
        }
    }

    fn admit(&self, d: &Demand) -> Result<Reservation, Error> {
        self.admit_as(&self.key, d)
    }
}

fn refused_by(result: Result<Reservation, Error>) -> LimitKind {
    match result {
        Err(Error::LimitExceeded(e)) => e.kind,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("admitted"),
    }
}

#[test]
fn requests_per_minute_admit_up_to_the_limit() {
    let w = world(json!({ "rpm_limit": 2 }));
    let _a = w.admit(&demand(10, 10)).unwrap();
    let _b = w.admit(&demand(10, 10)).unwrap();
    assert_eq!(refused_by(w.admit(&demand(10, 10))), LimitKind::Requests);
    // A retry of an admitted request counts once.
    let retry = Demand {
        counted: true,
        ..demand(10, 10)
    };
    assert!(w.admit(&retry).is_ok());
}

#[test]
fn a_refused_request_reserves_nothing() {
    // 600 tokens fit; the first request asks for 700 and is refused on
    // tokens. Had it taken its request on the way, the 1-rpm limit would
    // refuse the next one.
    let w = world(json!({ "rpm_limit": 1, "tpm_limit": 600 }));
    assert_eq!(refused_by(w.admit(&demand(400, 300))), LimitKind::Tokens);
    let fits = w.admit(&demand(300, 300));
    assert!(fits.is_ok(), "{:?}", fits.err().map(|e| e.to_string()));
}

#[test]
fn a_budget_holds_the_worst_case_until_settled() {
    // $0.001 = 1,000 tokens at $1 per million.
    let w = world(json!({ "max_budget": 0.001 }));
    let mut first = w.admit(&demand(300, 300)).unwrap();
    assert_eq!(
        first.worst_cost,
        Cost(u128::from(crate::pricing::dollars_to_pico(0.0006)))
    );
    // 600 reserved: another 600 would pass $0.001.
    assert_eq!(refused_by(w.admit(&demand(300, 300))), LimitKind::Budget);
    // Settled at its real use (100 tokens), the rest is free again.
    let used = Usage {
        prompt_tokens: 50,
        completion_tokens: 50,
        ..Usage::default()
    };
    let _ = first.settle(
        &used,
        Cost(u128::from(crate::pricing::dollars_to_pico(0.0001))),
    );
    assert!(w.admit(&demand(300, 300)).is_ok());
}

#[test]
fn proxy_admins_are_not_limited() {
    let w = world(json!({ "rpm_limit": 1 }));
    let _a = w.admit(&demand(10, 10)).unwrap();
    assert_eq!(refused_by(w.admit(&demand(10, 10))), LimitKind::Requests);
    assert!(w.admit_as(&Principal::Master, &demand(10, 10)).is_ok());
    // The same key, held by a proxy admin: its limits do not apply.
    let Principal::Key(caller) = &w.key else {
        unreachable!("world() makes a key")
    };
    let admin = Principal::Key(Arc::new(Caller {
        role: Some(UserRole::ProxyAdmin),
        ..(**caller).clone()
    }));
    assert!(w.admit_as(&admin, &demand(10, 10)).is_ok());
}
