//! Compaction under any interleaving: three regions edit one key (ordinary
//! fields, the sticky `blocked`, deletes and recreates), send each other
//! whole documents in any order, and the key's home region compacts
//! whenever every other region is known to hold a version of its document
//! — as the sync task decides. Once everyone has sent everyone everything,
//! all regions hold the same document, and the security fields are safe:
//! a block that no unblock saw is in effect, and so is a delete that no
//! recreate saw (compaction may keep more blocked or deleted, never less).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meridian_consensus::metadata::{Actor, EntityDoc, Merged};
use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// 256 cases, or `PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// The regions' names in the order `n` (of 6) picks: which region made the
/// key decides how its actor orders against the others'.
fn names(n: usize) -> [&'static str; 3] {
    let [a, b, c] = REGIONS;
    [
        [a, b, c],
        [a, c, b],
        [b, a, c],
        [b, c, a],
        [c, a, b],
        [c, b, a],
    ][n % 6]
}
const HOME: usize = 0;
const T0: u64 = 1_800_000_000_000;

#[derive(Clone, Debug)]
enum Step {
    /// Region sets a field: 0 `rpm_limit`, 1 `key_alias`, 2 `blocked`.
    Edit {
        region: usize,
        field: u8,
        value: u8,
    },
    Delete {
        region: usize,
    },
    Recreate {
        region: usize,
        value: u8,
    },
    /// `from` sends its whole document to `to`.
    Send {
        from: usize,
        to: usize,
    },
    /// The region compacts, if it is the one that compacts the document
    /// and every other region holds a version of its document.
    Compact {
        region: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3u8, 0..4u8).prop_map(|(region, field, value)| Step::Edit { region, field, value }),
        1 => (0..3usize).prop_map(|region| Step::Delete { region }),
        1 => (0..3usize, 0..4u8).prop_map(|(region, value)| Step::Recreate { region, value }),
        4 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Send { from, to }),
        2 => (0..3usize).prop_map(|region| Step::Compact { region }),
    ]
}

fn base_record(value: u8) -> Map<String, Value> {
    json!({"token": "ab", "rpm_limit": value, "key_alias": "k", "blocked": false})
        .as_object()
        .unwrap()
        .clone()
}

/// A version of a region's document another region holds as sent: the
/// sender's change count then, its epoch, its heads.
type Version = (u64, u64, Vec<automerge::ChangeHash>);

/// One run: every region's document, and what each knows the others hold.
struct World {
    names: [&'static str; 3],
    docs: Vec<EntityDoc>,
    /// `held[c][o]`: the version of `c`'s document `o` last merged as sent
    /// (`None` after a merge that was not: skipped, translated, or holding
    /// a creation `c`'s lacked) — what the sync task records.
    held: Vec<Vec<Option<Version>>>,
    /// How many times each region's document changed (orders versions).
    changes: Vec<u64>,
    compacting: bool,
    time: u64,
    /// Per region: the block and delete events it has seen (its own, and
    /// those of every document it merged).
    seen_blocks: Vec<BTreeSet<u32>>,
    seen_deletes: Vec<BTreeSet<u32>>,
    /// Events an unblock (or a recreate) saw when it was made.
    lifted_blocks: BTreeSet<u32>,
    lifted_deletes: BTreeSet<u32>,
    next_event: u32,
}

impl World {
    /// The home region made the key and the others received it; with
    /// `twin` 1 or 2, that region made the same id on its own, concurrently
    /// (the regions' actors order differently against the home's).
    fn new(compacting: bool, twin: usize, names: [&'static str; 3]) -> Self {
        let home = EntityDoc::new(&Actor::for_region(names[HOME]), T0, &base_record(0)).unwrap();
        let copy = EntityDoc::from_changes(&home.changes_since(&[])).unwrap();
        let mut docs = vec![home.clone(), copy.clone(), copy];
        let mut held = vec![vec![None; 3]; 3];
        let version = Some((0, 0, home.heads()));
        for other in 1..3 {
            if other == twin {
                let actor = Actor::for_region(names[other]);
                docs[other] = EntityDoc::new(&actor, T0, &base_record(1)).unwrap();
            } else {
                held[HOME][other] = version.clone();
            }
        }
        Self {
            names,
            docs,
            held,
            changes: vec![0; 3],
            compacting,
            time: T0,
            seen_blocks: vec![BTreeSet::new(); 3],
            seen_deletes: vec![BTreeSet::new(); 3],
            lifted_blocks: BTreeSet::new(),
            lifted_deletes: BTreeSet::new(),
            next_event: 0,
        }
    }

    fn event(&mut self) -> u32 {
        self.next_event += 1;
        self.next_event
    }

    fn changed(&mut self, region: usize) {
        self.changes[region] += 1;
    }

    fn apply(&mut self, step: &Step) {
        self.time += 1;
        let at = self.time;
        match *step {
            Step::Edit {
                region,
                field,
                value,
            } => {
                let doc = &mut self.docs[region];
                let Some(mut record) = doc.record().unwrap() else {
                    return;
                };
                let (name, v) = match field {
                    0 => ("rpm_limit", json!(value)),
                    1 => ("key_alias", json!(format!("k{value}"))),
                    _ => ("blocked", json!(value % 2 == 0)),
                };
                let before = record.get(name).cloned();
                record.insert(name.into(), v.clone());
                let actor = Actor::for_region(self.names[region]);
                if doc.update(&actor, at, &record).unwrap() {
                    self.changed(region);
                    if name == "blocked" && before != Some(v.clone()) {
                        if v == json!(true) {
                            let e = self.event();
                            self.seen_blocks[region].insert(e);
                        } else {
                            let seen = self.seen_blocks[region].clone();
                            self.lifted_blocks.extend(seen);
                        }
                    }
                }
            }
            Step::Delete { region } => {
                let actor = Actor::for_region(self.names[region]);
                if self.docs[region].delete(&actor, at).unwrap() {
                    self.changed(region);
                    let e = self.event();
                    self.seen_deletes[region].insert(e);
                }
            }
            Step::Recreate { region, value } => {
                let actor = Actor::for_region(self.names[region]);
                if self.docs[region]
                    .recreate(&actor, at, &base_record(value))
                    .unwrap()
                {
                    self.changed(region);
                    // It may also unblock (the record it writes is open).
                    let seen = self.seen_deletes[region].clone();
                    self.lifted_deletes.extend(seen);
                    let seen = self.seen_blocks[region].clone();
                    self.lifted_blocks.extend(seen);
                }
            }
            Step::Send { from, to } => self.send(from, to),
            Step::Compact { region } => self.compact(region),
        }
    }

    fn send(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let whole = self.docs[from].changes_since(&[]);
        let before = self.docs[to].heads();
        let merged = self.docs[to].merge_document(&whole).unwrap();
        // Every document sent is its region's current one: a region that
        // compacts waited until every other could follow.
        assert!(!matches!(merged, Merged::Skipped(_)), "{merged:?}");
        let (blocks, deletes) = (
            self.seen_blocks[from].clone(),
            self.seen_deletes[from].clone(),
        );
        self.seen_blocks[to].extend(blocks);
        self.seen_deletes[to].extend(deletes);
        let sent = &self.docs[from];
        self.held[from][to] = merged
            .held()
            .then(|| (self.changes[from], sent.epoch(), sent.heads()));
        if self.docs[to].heads() != before {
            self.changes[to] += 1;
        }
    }

    /// What the sync task does: if this region compacts the document,
    /// compact at the oldest version every other region holds, in the
    /// current epoch; as the state machine does, only when the record stays
    /// the same.
    fn compact(&mut self, region: usize) {
        let doc = &self.docs[region];
        if !self.compacting || !doc.compacted_by(self.names[region]) {
            return;
        }
        let mut cut: Option<&Version> = None;
        for (other, held) in self.held[region].iter().enumerate() {
            if other == region {
                continue;
            }
            let Some(version) = held else { return };
            if version.1 != doc.epoch() {
                return;
            }
            if cut.is_none_or(|c| version.0 < c.0) {
                cut = Some(version);
            }
        }
        let cut = cut.unwrap().2.clone();
        assert!(doc.is_version(&cut));
        let next = doc.compact(self.names[region], &cut).unwrap();
        if next.record().unwrap() == doc.record().unwrap() {
            self.docs[region] = next;
            self.changes[region] += 1;
        }
    }

    /// Everyone sends everyone everything, home first, until nothing moves.
    fn settle(&mut self) {
        for _ in 0..4 {
            for from in [HOME, 1, 2] {
                for to in 0..3 {
                    self.send(from, to);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn regions_converge_through_any_compactions(
        steps in prop::collection::vec(step(), 1..60),
        twin in 0..3usize,
        order in 0..6usize,
    ) {
        for compacting in [true, false] {
            let mut world = World::new(compacting, twin, names(order));
            for step in &steps {
                world.apply(step);
            }
            world.settle();
            let heads = world.docs[0].heads();
            let record = world.docs[0].record().unwrap();
            for doc in &world.docs[1..] {
                prop_assert_eq!(doc.heads(), heads.clone());
                prop_assert_eq!(doc.record().unwrap(), record.clone());
            }
            let unseen = |events: &BTreeSet<u32>, lifted: &BTreeSet<u32>| {
                events.iter().any(|e| !lifted.contains(e))
            };
            let all = |seen: &[BTreeSet<u32>]| seen.iter().flatten().copied().collect::<BTreeSet<_>>();
            if unseen(&all(&world.seen_deletes), &world.lifted_deletes) {
                prop_assert!(record.is_none(), "compacting {}: a delete no recreate saw is undone: {:?}", compacting, record);
            }
            if let Some(record) = &record
                && unseen(&all(&world.seen_blocks), &world.lifted_blocks)
            {
                prop_assert_eq!(&record["blocked"], &json!(true), "compacting {}: a block no unblock saw is lifted", compacting);
            }
        }
    }
}
