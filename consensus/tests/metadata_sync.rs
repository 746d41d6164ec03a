//! Metadata sync between real regions over TCP on loopback (each a Raft group
//! on in-memory storage, serving Raft and sync on one listener per node): a
//! key made in one region authenticates in the other, blocks and deletes win
//! everywhere, concurrent edits converge on every node, a region cut off
//! catches up, nothing without the cluster secret merges anything, and a
//! region at rest sends nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sync_harness;

use std::time::Duration;

use meridian_consensus::metadata::{Command, Kind};
use meridian_link::SECRET_HEADER;
use meridian_proto::sync::v1 as pb;
use serde_json::json;
use sync_harness::*;
use tokio::time::{Instant, sleep};

#[tokio::test(flavor = "multi_thread")]
async fn metadata_converges_across_regions() {
    let started = Instant::now();
    let directory = directory().await;
    let us = start_region(US, 3, &directory).await;
    let eu = start_region(EU, 3, &directory).await;
    println!("two regions of three up in {:?}", started.elapsed());

    // (a) A key created in us-east authenticates on every eu-west node.
    us.propose(create_key(1)).await;
    let made = Instant::now();
    eventually("the key on every eu-west node", || {
        eu.all(|n| has_key(n, 1))
    })
    .await;
    println!("key visible in eu-west after {:?}", made.elapsed());

    // A region-scoped model travels with its scope (the node serves it only
    // where the scope includes its region).
    us.propose(Command::Create {
        kind: Kind::Model,
        record: json!({
            "model_id": "m-us", "model_name": "gpt", "litellm_params": {"model": "gpt-4o"},
            "scope": {"kind": "regions", "regions": [US]},
        }),
    })
    .await;
    eventually("the scoped model in eu-west", || {
        eu.all(|n| n.read(|s| s.model("m-us").is_some_and(|m| !m.scope.includes(EU))))
    })
    .await;

    // (b) A block made in eu-west is applied in us-east.
    eu.propose(update(Kind::Key, &token(1), json!({"blocked": true})))
        .await;
    eventually("the block in us-east", || {
        us.all(|n| n.read(|s| s.key(&token(1)).is_some_and(|k| k.blocked)))
    })
    .await;

    // A team and a second key, known to both regions.
    us.propose(Command::Create {
        kind: Kind::Team,
        record: json!({"team_id": "t1", "models": ["gpt"]}),
    })
    .await;
    us.propose(create_key(2)).await;
    eventually("team and key in eu-west", || {
        eu.all(|n| has_key(n, 2) && n.read(|s| s.team("t1").is_some()))
    })
    .await;

    // Concurrent edits while the regions cannot talk:
    // (c) us-east deletes key 2 while eu-west updates it;
    // (d) each region sets a different field of team t1.
    cut(&directory, EU, true);
    sleep(Duration::from_millis(200)).await; // rounds in flight finish
    us.propose(Command::Delete {
        kind: Kind::Key,
        ids: vec![token(2)],
    })
    .await;
    eu.propose(update(Kind::Key, &token(2), json!({"rpm_limit": 9})))
        .await;
    us.propose(update(Kind::Team, "t1", json!({"rpm_limit": 100})))
        .await;
    eu.propose(update(Kind::Team, "t1", json!({"team_alias": "eu-team"})))
        .await;
    sleep(Duration::from_millis(300)).await;
    assert!(
        eu.all(|n| has_key(n, 2)),
        "cut off: the delete has not arrived"
    );
    cut(&directory, EU, false);

    eventually("the delete wins everywhere", || {
        us.all(|n| !has_key(n, 2)) && eu.all(|n| !has_key(n, 2))
    })
    .await;
    eventually("team t1 converges on every node", || {
        converged(&[&us, &eu], Kind::Team, "t1")
    })
    .await;
    let team = json_of(&us.nodes[0].region, Kind::Team, "t1").unwrap();
    assert_eq!(
        (&team["rpm_limit"], &team["team_alias"]),
        (&json!(100), &json!("eu-team")),
        "{team}"
    );
    eventually("keys converge on every node", || {
        converged(&[&us, &eu], Kind::Key, &token(1)) && converged(&[&us, &eu], Kind::Key, &token(2))
    })
    .await;

    // (g) At rest: a sync round sends nothing.
    sleep(Duration::from_millis(300)).await;
    let (us_before, eu_before) = (us.stats(), eu.stats());
    sleep(Duration::from_millis(500)).await; // ~10 rounds
    let (us_after, eu_after) = (us.stats(), eu.stats());
    assert!(us_after.rounds > us_before.rounds + 4, "{us_after:?}");
    assert_eq!(
        (us_after.pushes, us_after.docs_sent),
        (us_before.pushes, us_before.docs_sent),
        "us-east at rest sends nothing"
    );
    assert_eq!(
        (eu_after.pushes, eu_after.docs_sent),
        (eu_before.pushes, eu_before.docs_sent),
        "eu-west at rest sends nothing"
    );
    println!("us-east {us_after:?}; eu-west {eu_after:?}");
    // Each document went out about once per change, not once per round.
    assert!(us_after.docs_sent < 20, "{us_after:?}");

    for node in us.nodes.iter().chain(&eu.nodes) {
        node.region.shutdown().await;
    }
    println!("whole run: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_cut_off_catches_up() {
    let directory = directory().await;
    let us = start_region(US, 1, &directory).await;
    let eu = start_region(EU, 1, &directory).await;
    us.propose(create_key(1)).await;
    eventually("first key in eu-west", || eu.all(|n| has_key(n, 1))).await;

    cut(&directory, EU, true);
    sleep(Duration::from_millis(200)).await;
    let failures = us.stats().failures;
    for n in 2..40 {
        us.propose(create_key(n)).await;
    }
    eu.propose(create_key(100)).await;
    sleep(Duration::from_millis(500)).await;
    assert!(eu.all(|n| !has_key(n, 2)), "nothing arrives while cut off");
    assert!(us.all(|n| !has_key(n, 100)));
    assert!(us.stats().failures > failures, "the sync task kept trying");

    cut(&directory, EU, false);
    eventually("eu-west caught up", || {
        eu.all(|n| (1..40).all(|k| has_key(n, k)))
    })
    .await;
    eventually("us-east caught up", || us.all(|n| has_key(n, 100))).await;
    for region in [&us, &eu] {
        let cursor = region.nodes[0]
            .region
            .read(|s| s.sync_cursors().values().copied().collect::<Vec<_>>());
        assert_eq!(cursor.len(), 1, "{}: {cursor:?}", region.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_without_the_cluster_secret_merges() {
    let directory = directory().await;
    let us = start_region(US, 1, &directory).await;
    let eu = start_region(EU, 1, &directory).await;
    // Stop the regions syncing: only the calls below reach eu-west.
    cut(&directory, EU, true);
    us.propose(create_key(7)).await;
    let region = &us.nodes[0].region;
    // A real batch, as us-east's sync task would send it.
    let entities: Vec<pb::EntityChanges> = region.read(|s| {
        let limits = meridian_consensus::metadata::OutboxLimits {
            max_docs: 100,
            max_bytes: 1 << 20,
            max_scan: 100,
        };
        s.outbox(0, EU, limits)
            .docs
            .iter()
            .map(|d| {
                let doc = meridian_consensus::metadata::EntityDoc::load(&d.saved).unwrap();
                pb::EntityChanges {
                    kind: pb::Kind::Key.into(),
                    id: d.id.clone(),
                    changes: doc.changes_since(&[]),
                    heads: vec![],
                }
            })
            .collect()
    });
    let push = |to: &str, entities: Vec<pb::EntityChanges>| pb::PushRequest {
        from_region: US.into(),
        to_region: to.into(),
        since: 0,
        through: 1,
        entities,
    };
    let eu_addr = directory.lock().unwrap().regions[EU][0].clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{eu_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::metadata_sync_client::MetadataSyncClient::new(channel);
    let eu_node = &eu.nodes[0].region;
    let last_log = eu_node.status().last_log_index;
    let call = |request: pb::PushRequest, secret: Option<&str>| {
        let mut request = tonic::Request::new(request);
        if let Some(secret) = secret {
            request
                .metadata_mut()
                .insert(SECRET_HEADER, secret.parse().unwrap());
        }
        request
    };

    for secret in [None, Some("wrong-secret")] {
        let status = client
            .push(call(push(EU, entities.clone()), secret))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        let status = client.cursor(call_cursor(secret)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    // With the secret, but meant for another region, or from eu-west itself.
    let status = client
        .push(call(push("ap-south", entities.clone()), Some(SECRET)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let mut own = push(EU, entities.clone());
    own.from_region = EU.into();
    let status = client.push(call(own, Some(SECRET))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // Garbage changes: refused by the state machine, nothing applied.
    let mut garbage = entities.clone();
    garbage[0].changes = b"not automerge".to_vec();
    let status = client
        .push(call(push(EU, garbage), Some(SECRET)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    sleep(Duration::from_millis(200)).await;
    assert!(!has_key(eu_node, 7), "nothing was merged");
    assert_eq!(eu_node.read(|s| s.sync_cursor(US)), 0);
    assert!(
        eu_node.status().last_log_index <= last_log.map(|i| i + 1),
        "refused calls reached the log at most as one refused merge"
    );

    // The same batch with the secret is merged.
    let reply = client
        .push(call(push(EU, entities), Some(SECRET)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.cursor, 1);
    assert!(has_key(eu_node, 7));
}

fn call_cursor(secret: Option<&str>) -> tonic::Request<pb::CursorRequest> {
    let mut request = tonic::Request::new(pb::CursorRequest {
        from_region: US.into(),
        to_region: EU.into(),
    });
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert(SECRET_HEADER, secret.parse().unwrap());
    }
    request
}
