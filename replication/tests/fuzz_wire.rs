//! Fuzzing everything that decodes bytes from other nodes or from disk:
//! every `meridian_proto` message, counter ids, counters as stored, and the
//! gossip service as a peer calls it (gRPC frames carrying any bytes). No
//! input panics; what decodes re-encodes to itself; a corrupt store is an
//! error or is skipped; the gossip service answers every call with a status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meridian_link::ClusterSecret;
use meridian_proto::{gossip, raft, rights, spend, sync};
use meridian_replication::crdt::{CounterId, Metric, PeriodSpec, Scope, Window};
use meridian_replication::gossip::WallClock;
use meridian_replication::{Counters, GossipConfig, gossip_service};
use meridian_storage::{Cf, Durability, MemStore, Store, WriteBatch};
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use tower::ServiceExt;

/// 256 cases, or `PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Bytes shaped like protobuf: fields 1–12 of every wire type (including
/// the deprecated groups and the invalid types 6 and 7), varints up to
/// overlong, lengths that lie, and nested messages a few levels deep.
fn arb_protobuf() -> impl Strategy<Value = Vec<u8>> {
    let field = |payload: BoxedStrategy<Vec<u8>>| {
        let wire = prop_oneof![
            4 => Just(0u64),
            1 => Just(1u64),
            4 => Just(2u64),
            1 => Just(5u64),
            1 => prop::sample::select(vec![3u64, 4, 6, 7]),
        ];
        let lie = prop_oneof![6 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)];
        (1u64..13, wire, payload, any::<u64>(), lie).prop_map(|(number, wire, payload, n, lie)| {
            let mut out = Vec::new();
            // Type 6 stands for "a varint that never ends" here.
            varint((number << 3) | if wire == 6 { 0 } else { wire }, &mut out);
            match wire {
                0 => varint(n, &mut out),
                1 => out.extend(n.to_le_bytes()),
                2 => {
                    let len = (payload.len() as i64 + lie).max(0);
                    varint(len as u64, &mut out);
                    out.extend(&payload);
                }
                5 => out.extend(&n.to_le_bytes()[..4]),
                // Overlong varint: eleven continuation bytes.
                6 => out.extend([0xff; 11]),
                _ => {}
            }
            out
        })
    };
    let leaf = prop::collection::vec(any::<u8>(), 0..16).boxed();
    let message = leaf.prop_recursive(3, 64, 8, move |inner| {
        prop::collection::vec(field(inner.boxed()), 0..8)
            .prop_map(|fields| fields.concat())
            .boxed()
    });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..128),
        3 => message,
    ]
}

/// Decodes `bytes` as `M`; whatever decodes must encode and decode back to
/// the same message (prost drops unknown fields, so the bytes may differ).
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(m.encode_to_vec().as_slice());
        prop_assert!(again.as_ref() == Ok(&m), "{m:?} became {again:?}");
    }
    Ok(())
}

/// Every message of every service, so a new field with a custom type cannot
/// slip in untried.
fn decode_every_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    round_trip::<raft::v1::RaftRequest>(bytes)?;
    round_trip::<raft::v1::RaftReply>(bytes)?;
    round_trip::<gossip::v1::Replica>(bytes)?;
    round_trip::<gossip::v1::Slot>(bytes)?;
    round_trip::<gossip::v1::Counter>(bytes)?;
    round_trip::<gossip::v1::Deltas>(bytes)?;
    round_trip::<gossip::v1::PushRequest>(bytes)?;
    round_trip::<gossip::v1::Digest>(bytes)?;
    round_trip::<gossip::v1::PushReply>(bytes)?;
    round_trip::<gossip::v1::SyncReply>(bytes)?;
    round_trip::<sync::v1::EntityChanges>(bytes)?;
    round_trip::<sync::v1::CursorRequest>(bytes)?;
    round_trip::<sync::v1::CursorReply>(bytes)?;
    round_trip::<sync::v1::PushRequest>(bytes)?;
    round_trip::<rights::v1::GrantRequest>(bytes)?;
    round_trip::<rights::v1::GrantReply>(bytes)?;
    round_trip::<spend::v1::QueryRequest>(bytes)?;
    round_trip::<spend::v1::QueryReply>(bytes)
}

fn arb_counter_id() -> impl Strategy<Value = CounterId> {
    let scope = prop::sample::select(vec![
        Scope::Key,
        Scope::Team,
        Scope::User,
        Scope::Customer,
        Scope::Tag,
        Scope::KeyModel,
        Scope::Model,
    ]);
    let metric = prop::sample::select(vec![
        Metric::Spend,
        Metric::Requests,
        Metric::Tokens,
        Metric::Parallel,
        Metric::SpendRights,
        Metric::RequestRights,
        Metric::TokenRights,
        Metric::ParallelRights,
    ]);
    let window = prop_oneof![
        Just(Window::Lifetime),
        Just(Window::Rate),
        any::<u64>().prop_map(|ms| Window::Budget(PeriodSpec::Millis(ms))),
        any::<u32>().prop_map(|m| Window::Budget(PeriodSpec::Months(m))),
    ];
    (scope, "\\PC{0,24}", metric, window, any::<u64>()).prop_map(
        |(scope, entity, metric, window, period)| CounterId {
            scope,
            entity: entity.into(),
            metric,
            window,
            period,
        },
    )
}

/// `bytes` with a few bytes overwritten, inserted or cut.
fn damaged(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..4).prop_map(move |edits| {
        let mut b = bytes.clone();
        for (at, byte, how) in edits {
            let i = at.index(b.len() + 1);
            match how {
                0 if i < b.len() => b[i] = byte,
                1 => b.insert(i, byte),
                _ => b.truncate(i),
            }
        }
        b
    })
}

/// A stored counter as the node writes it (a `Deltas` of one counter).
fn arb_stored_counter() -> impl Strategy<Value = Vec<u8>> {
    let replica = ("[a-z-]{0,8}", any::<u64>(), any::<u64>()).prop_map(|(region, node, inc)| {
        gossip::v1::Replica {
            region,
            node,
            incarnation: inc,
        }
    });
    let slot =
        (0u32..4, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(replica, p, n, version)| {
            gossip::v1::Slot {
                replica,
                p,
                n,
                version,
            }
        });
    let valid = (
        prop::collection::vec(replica, 0..3),
        prop::collection::vec(slot, 0..4),
    )
        .prop_map(|(replicas, slots)| {
            gossip::v1::Deltas {
                replicas,
                counters: vec![gossip::v1::Counter {
                    id: Vec::new(),
                    slots,
                }],
            }
            .encode_to_vec()
        });
    prop_oneof![
        2 => valid.clone(),
        2 => valid.prop_flat_map(damaged),
        1 => arb_protobuf(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_message_decodes_any_bytes_or_refuses_them(bytes in arb_protobuf()) {
        decode_every_message(&bytes)?;
    }

    #[test]
    fn counter_ids_round_trip_and_damaged_ones_never_panic(
        id in arb_counter_id(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
    ) {
        prop_assert_eq!(CounterId::decode(&id.encode()), Ok(id.clone()));
        let mut bytes = id.encode();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(decoded) = CounterId::decode(&bytes) {
            // Whatever decodes is a counter the node will file and expire.
            let _ = decoded.ends_at();
            prop_assert_eq!(CounterId::decode(&decoded.encode()), Ok(decoded));
        }
    }

    #[test]
    fn any_bytes_as_a_counter_id_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        if let Ok(id) = CounterId::decode(&bytes) {
            let _ = id.ends_at();
        }
    }

    /// A store a crash, a bad disk or an older build left behind: the node
    /// opens it (skipping what it cannot read) or refuses with an error.
    #[test]
    fn counters_open_any_stored_bytes(
        incarnation in stored_number(),
        version in stored_number(),
        rows in prop::collection::vec(
            (prop_oneof![
                arb_counter_id().prop_map(|id| id.encode()),
                arb_counter_id().prop_flat_map(|id| damaged(id.encode())),
                prop::collection::vec(any::<u8>(), 1..24).prop_map(|mut k| { k[0] = 1; k }),
            ], arb_stored_counter()),
            0..6,
        ),
    ) {
        let store = Arc::new(MemStore::new());
        let mut batch = WriteBatch::default();
        if let Some(b) = incarnation { batch.put(Cf::Counters, [0, b'i'], b); }
        if let Some(b) = version { batch.put(Cf::Counters, [0, b'v'], b); }
        for (key, value) in rows { batch.put(Cf::Counters, key, value); }
        store.write(batch, Durability::Process).unwrap();
        if let Ok(counters) = Counters::open("us-east", 1, store, Durability::Process, || 7) {
            // What loaded is usable: read, digested, gossiped.
            for (id, counter) in counters.snapshot() {
                let _ = (counter.value(), counters.reading(&id));
            }
            let _ = counters.missing(&Default::default());
            let _ = counters.update(|t| t.add(&fixed_id(), 1, 0));
        }
    }

    /// A peer's gRPC calls with any body: every call gets a gRPC status, and
    /// the service still answers a well-formed sync afterwards.
    #[test]
    fn the_gossip_service_answers_any_call_with_a_status(
        method in prop::sample::select(vec!["Push", "Sync"]),
        payload in prop_oneof![
            arb_protobuf(),
            valid_push().prop_flat_map(damaged),
            valid_push(),
        ],
        declared in prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Arc::new(MemStore::new());
            let counters = Arc::new(
                Counters::open("us-east", 1, store, Durability::Process, || 7).unwrap(),
            );
            let clock: WallClock = Arc::new(|| 1_800_000_000_000);
            let service = gossip_service(
                counters,
                ClusterSecret::new(None).unwrap(),
                clock,
                &GossipConfig::default(),
            );
            let status = call(&service, method, &payload, declared).await;
            prop_assert!(status.is_some(), "{method}: no grpc-status");
            let empty = gossip::v1::Digest::default().encode_to_vec();
            prop_assert_eq!(call(&service, "Sync", &empty, None).await, Some(0));
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// A stored big-endian u64 (the incarnation, the change number): absent,
/// eight bytes, or the wrong length.
fn stored_number() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        2 => Just(None),
        2 => any::<u64>().prop_map(|n| Some(n.to_be_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Some),
    ]
}

fn fixed_id() -> CounterId {
    CounterId {
        scope: Scope::Team,
        entity: "t".into(),
        metric: Metric::Spend,
        window: Window::Lifetime,
        period: 0,
    }
}

/// A push from node 2 of eu-west of its own slots.
fn valid_push() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_counter_id(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(id, p, n, since, through)| {
            gossip::v1::PushRequest {
                sender: Some(gossip::v1::Replica {
                    region: "eu-west".into(),
                    node: 2,
                    incarnation: 1,
                }),
                since,
                through,
                deltas: Some(gossip::v1::Deltas {
                    replicas: vec![gossip::v1::Replica {
                        region: "eu-west".into(),
                        node: 2,
                        incarnation: 1,
                    }],
                    counters: vec![gossip::v1::Counter {
                        id: id.encode(),
                        slots: vec![gossip::v1::Slot {
                            replica: 0,
                            p,
                            n,
                            version: through,
                        }],
                    }],
                }),
            }
            .encode_to_vec()
        })
}

/// One unary gRPC call in process: `payload` in one frame whose length
/// prefix is `declared` (a lie, when set). Returns the `grpc-status`.
async fn call(
    service: &gossip::v1::gossip_server::GossipServer<meridian_replication::gossip::GossipService>,
    method: &str,
    payload: &[u8],
    declared: Option<u32>,
) -> Option<i32> {
    let len = declared.unwrap_or(payload.len() as u32);
    let mut frame = vec![0u8];
    frame.extend(len.to_be_bytes());
    frame.extend(payload);
    let req = http::Request::post(format!("/meridian.gossip.v1.Gossip/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let resp = service.clone().oneshot(req).await.unwrap();
    let in_headers = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.ok()?;
    let status = in_headers.or_else(|| collected.trailers()?.get("grpc-status").cloned())?;
    status.to_str().ok()?.parse().ok()
}
