//! Document compaction over the real sync path: a key whose metadata is
//! rewritten without pause, in one region and now and then in the other,
//! ends the same everywhere — every edit kept — in a document about the
//! size of its record, while the uncompacted history would be hundreds of
//! kilobytes; every replica of a region holds the same bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sync_harness;

use std::time::Duration;

use meridian_consensus::Region;
use meridian_consensus::metadata::{COMPACT_FLOOR, Kind};
use serde_json::json;
use sync_harness::*;
use tokio::time::{Instant, sleep};

/// 1 KiB of hex that does not compress away (xorshift).
fn note(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:016x}", x)
        })
        .collect()
}

fn doc_size(region: &Region, id: &str) -> usize {
    region.read(|s| s.document_size(Kind::Key, id)).unwrap_or(0)
}

fn epoch(region: &Region, id: &str) -> u64 {
    region.read(|s| s.document(Kind::Key, id).unwrap().unwrap().epoch())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_edited_without_pause_stays_small_everywhere() {
    const EDITS: u64 = 300;
    let directory = directory().await;
    let us = start_region(US, 2, &directory).await;
    let eu = start_region(EU, 1, &directory).await;
    let id = token(1);
    us.propose(create_key(1)).await;
    eventually("the key in eu-west", || eu.all(|n| has_key(n, 1))).await;

    let started = Instant::now();
    let (mut written, mut largest) = (0usize, 0usize);
    for n in 0..EDITS {
        let note = note(n);
        written += note.len();
        us.propose(update(Kind::Key, &id, json!({"metadata": {"note": note}})))
            .await;
        if n % 25 == 0 {
            eu.propose(update(Kind::Key, &id, json!({"rpm_limit": n + 1})))
                .await;
        }
        for node in us.nodes.iter().chain(&eu.nodes) {
            largest = largest.max(doc_size(&node.region, &id));
        }
    }
    println!(
        "{EDITS} edits ({written} bytes of metadata) in {:?}; largest document seen {largest} bytes",
        started.elapsed()
    );
    let last_note = note(EDITS - 1);
    let last_rpm = (EDITS - 1) / 25 * 25 + 1;
    eventually("every edit everywhere, in one epoch", || {
        converged(&[&us, &eu], Kind::Key, &id)
            && us.all(|n| {
                n.read(|s| {
                    s.key(&id).is_some_and(|k| {
                        k.limits.rpm_limit == Some(last_rpm)
                            && k.metadata.get().map(|m| &m["note"]) == Some(&json!(last_note))
                    })
                })
            })
    })
    .await;
    // Once at rest, the document is compacted (it may take a round or two
    // after the last edit reached every region).
    let record = json_of(&us.nodes[0].region, Kind::Key, &id).unwrap();
    let bound = COMPACT_FLOOR + 2 * record.to_string().len();
    eventually("the document compacted everywhere", || {
        us.all(|n| doc_size(n, &id) <= bound) && eu.all(|n| doc_size(n, &id) <= bound)
    })
    .await;
    eventually("converged after compaction", || {
        converged(&[&us, &eu], Kind::Key, &id)
    })
    .await;
    let sizes: Vec<usize> = us
        .nodes
        .iter()
        .chain(&eu.nodes)
        .map(|n| doc_size(&n.region, &id))
        .collect();
    let epochs: Vec<u64> = us
        .nodes
        .iter()
        .chain(&eu.nodes)
        .map(|n| epoch(&n.region, &id))
        .collect();
    println!("final document sizes {sizes:?} (bound {bound}), epochs {epochs:?}");
    assert!(written > 10 * bound, "the edits alone outweigh the bound");
    assert!(
        epochs.iter().all(|e| *e >= 1 && *e == epochs[0]),
        "{epochs:?}"
    );
    // Every replica of a region holds the same bytes.
    let saved = |n: &Node| {
        n.region
            .read(|s| s.document(Kind::Key, &id).unwrap().unwrap().save())
    };
    assert_eq!(saved(&us.nodes[0]), saved(&us.nodes[1]));
    // Edits go on merging in the new epoch.
    eu.propose(update(Kind::Key, &id, json!({"key_alias": "late"})))
        .await;
    eventually("a later edit everywhere", || {
        us.all(|n| json_of(n, Kind::Key, &id).is_some_and(|r| r["key_alias"] == json!("late")))
    })
    .await;
    sleep(Duration::from_millis(100)).await;
    for node in us.nodes.iter().chain(&eu.nodes) {
        node.region.shutdown().await;
    }
}

/// Compaction needs every region to hold the cut, not to be reachable: a
/// region cut off keeps the document from shrinking below what it lacks,
/// no further.
#[tokio::test(flavor = "multi_thread")]
async fn a_region_cut_off_does_not_stop_compaction_of_what_it_holds() {
    let directory = directory().await;
    let us = start_region(US, 1, &directory).await;
    let eu = start_region(EU, 1, &directory).await;
    let id = token(2);
    us.propose(create_key(2)).await;
    eventually("the key in eu-west", || eu.all(|n| has_key(n, 2))).await;
    // Let the cut-off region hold a version, then cut it off.
    sleep(Duration::from_millis(300)).await;
    cut(&directory, EU, true);
    sleep(Duration::from_millis(200)).await; // rounds in flight finish
    let us_node = &us.nodes[0].region;
    let before = epoch(us_node, &id);
    for n in 0..40 {
        us.propose(update(
            Kind::Key,
            &id,
            json!({"metadata": {"note": note(n)}}),
        ))
        .await;
    }
    eventually("us-east compacts what eu-west holds", || {
        epoch(us_node, &id) > before
    })
    .await;
    assert_eq!(
        epoch(&eu.nodes[0].region, &id),
        before,
        "eu-west heard nothing"
    );
    // What eu-west lacks is kept, translated: the key is whole.
    let last = json!(note(39));
    assert!(
        us_node.read(|s| s
            .key(&id)
            .unwrap()
            .metadata
            .get()
            .map(|m| m["note"] == last))
            == Some(true)
    );

    cut(&directory, EU, false);
    // Equal heads are the same epoch (us-east may compact again after).
    eventually("eu-west catches up across the epoch", || {
        converged(&[&us, &eu], Kind::Key, &id)
            && epoch(&eu.nodes[0].region, &id) > before
            && eu.all(|n| json_of(n, Kind::Key, &id).is_some_and(|r| r["metadata"]["note"] == last))
    })
    .await;
    for node in us.nodes.iter().chain(&eu.nodes) {
        node.region.shutdown().await;
    }
}

/// The same id made in two regions while they cannot talk, then edited on
/// both sides: once healed they hold one document, compacted, with every
/// edit. (That no region compacts before all agree on which one does —
/// each answers "not held" for a document lacking a creation it holds —
/// is `consensus/tests/fuzz_compaction.rs`'s to show, under every order.)
#[tokio::test(flavor = "multi_thread")]
async fn a_key_made_in_two_regions_at_once_is_compacted_once() {
    let directory = directory().await;
    let us = start_region(US, 1, &directory).await;
    let eu = start_region(EU, 1, &directory).await;
    cut(&directory, EU, true);
    sleep(Duration::from_millis(200)).await;
    let id = token(3);
    us.propose(create_key(3)).await;
    eu.propose(create_key(3)).await;
    for n in 0..20 {
        us.propose(update(
            Kind::Key,
            &id,
            json!({"metadata": {"note": note(n)}}),
        ))
        .await;
        eu.propose(update(
            Kind::Key,
            &id,
            json!({"key_alias": format!("eu-{n}")}),
        ))
        .await;
    }
    cut(&directory, EU, false);
    for n in 20..60 {
        us.propose(update(
            Kind::Key,
            &id,
            json!({"metadata": {"note": note(n)}}),
        ))
        .await;
    }
    let last = json!(note(59));
    eventually("one document everywhere, compacted", || {
        converged(&[&us, &eu], Kind::Key, &id)
            && epoch(&eu.nodes[0].region, &id) >= 1
            && eu.all(|n| {
                json_of(n, Kind::Key, &id).is_some_and(|r| {
                    r["metadata"]["note"] == last && r["key_alias"] == json!("eu-19")
                })
            })
    })
    .await;
    // (Converged: equal heads, so the same epoch then; us-east may compact
    // again after.)
    for node in us.nodes.iter().chain(&eu.nodes) {
        node.region.shutdown().await;
    }
}

/// A region answering as an older build (without `compaction`) would merge
/// a compacted document's changes as plain ones: while one answers, no
/// document is compacted. Nor is one a region answers it does not hold as
/// sent.
#[tokio::test(flavor = "multi_thread")]
async fn no_compaction_while_a_region_runs_an_older_build_or_holds_otherwise() {
    use meridian_proto::sync::v1 as pb;
    use pb::metadata_sync_server::{MetadataSync, MetadataSyncServer};
    use tonic::{Request, Response, Status};

    /// Takes every push, as a region of either build would; with
    /// `otherwise`, answers that it holds none of the documents as sent.
    struct Remote {
        compaction: bool,
        otherwise: bool,
    }

    #[tonic::async_trait]
    impl MetadataSync for Remote {
        async fn cursor(
            &self,
            _: Request<pb::CursorRequest>,
        ) -> Result<Response<pb::CursorReply>, Status> {
            Ok(Response::new(pb::CursorReply {
                cursor: 0,
                not_held: vec![],
                compaction: self.compaction,
            }))
        }
        async fn push(
            &self,
            request: Request<pb::PushRequest>,
        ) -> Result<Response<pb::CursorReply>, Status> {
            let request = request.into_inner();
            let not_held = match self.otherwise {
                true => request
                    .entities
                    .iter()
                    .map(|e| pb::EntityRef {
                        kind: e.kind,
                        id: e.id.clone(),
                    })
                    .collect(),
                false => vec![],
            };
            Ok(Response::new(pb::CursorReply {
                cursor: request.through,
                not_held,
                compaction: self.compaction,
            }))
        }
    }

    for (compaction, otherwise) in [(false, false), (true, true), (true, false)] {
        let directory = directory().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes = tonic::service::Routes::new(MetadataSyncServer::new(Remote {
            compaction,
            otherwise,
        }));
        tokio::spawn(meridian_link::serve(
            listener,
            routes,
            std::future::pending(),
        ));
        directory
            .lock()
            .unwrap()
            .regions
            .insert(EU.into(), vec![addr]);
        let us = start_region(US, 1, &directory).await;
        let id = token(4);
        us.propose(create_key(4)).await;
        for n in 0..80 {
            us.propose(update(
                Kind::Key,
                &id,
                json!({"metadata": {"note": note(n)}}),
            ))
            .await;
        }
        let region = &us.nodes[0].region;
        let record = json_of(region, Kind::Key, &id).unwrap().to_string().len();
        if compaction && !otherwise {
            eventually("compacted", || epoch(region, &id) >= 1).await;
        } else {
            sleep(Duration::from_millis(1000)).await; // ~20 sync rounds
            assert_eq!(epoch(region, &id), 0, "compacted: {compaction} {otherwise}");
            let size = doc_size(region, &id);
            assert!(size > COMPACT_FLOOR + 2 * record, "{size}: past the floor");
        }
        region.shutdown().await;
    }
}
