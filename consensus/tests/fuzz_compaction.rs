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
    /// The home region compacts, if every other region holds a version.
    Compact,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3u8, 0..4u8).prop_map(|(region, field, value)| Step::Edit { region, field, value }),
        1 => (0..3usize).prop_map(|region| Step::Delete { region }),
        1 => (0..3usize, 0..4u8).prop_map(|(region, value)| Step::Recreate { region, value }),
        4 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Send { from, to }),
        2 => Just(Step::Compact),
    ]
}

fn base_record(value: u8) -> Map<String, Value> {
    json!({"token": "ab", "rpm_limit": value, "key_alias": "k", "blocked": false})
        .as_object()
        .unwrap()
        .clone()
}

/// One run: every region's document, and what the home region knows each
/// other region holds (a version of its document: change count, epoch,
/// heads).
struct World {
    docs: Vec<EntityDoc>,
    /// Per region: the home document's version it last merged.
    held: Vec<Option<(u64, u64, Vec<automerge::ChangeHash>)>>,
    /// How many times the home document changed (orders its versions).
    home_changes: u64,
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
    fn new(compacting: bool) -> Self {
        let home = EntityDoc::new(&Actor::for_region(REGIONS[HOME]), T0, &base_record(0)).unwrap();
        let copy = EntityDoc::from_changes(&home.changes_since(&[])).unwrap();
        let held = Some((0, 0, home.heads()));
        Self {
            docs: vec![home, copy.clone(), copy],
            held: vec![None, held.clone(), held],
            home_changes: 0,
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
        if region == HOME {
            self.home_changes += 1;
        }
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
                let actor = Actor::for_region(REGIONS[region]);
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
                let actor = Actor::for_region(REGIONS[region]);
                if self.docs[region].delete(&actor, at).unwrap() {
                    self.changed(region);
                    let e = self.event();
                    self.seen_deletes[region].insert(e);
                }
            }
            Step::Recreate { region, value } => {
                let actor = Actor::for_region(REGIONS[region]);
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
            Step::Compact => self.compact(),
        }
    }

    fn send(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let whole = self.docs[from].changes_since(&[]);
        let before = self.docs[to].heads();
        match self.docs[to].merge_document(&whole).unwrap() {
            Merged::Done(_) => {
                let (blocks, deletes) = (
                    self.seen_blocks[from].clone(),
                    self.seen_deletes[from].clone(),
                );
                self.seen_blocks[to].extend(blocks);
                self.seen_deletes[to].extend(deletes);
                if from == HOME {
                    let home = &self.docs[HOME];
                    self.held[to] = Some((self.home_changes, home.epoch(), home.heads()));
                }
            }
            Merged::Skipped(why) => {
                // Only a document older than the cut may be skipped, never
                // the home region's newer epoch (it waited for the cut).
                assert_ne!(from, HOME, "{why}");
            }
        }
        if to == HOME && self.docs[HOME].heads() != before {
            self.home_changes += 1;
        }
    }

    /// What the sync task does: compact at the oldest version every other
    /// region holds, in the current epoch; as the state machine does,
    /// only when the record stays the same.
    fn compact(&mut self) {
        if !self.compacting {
            return;
        }
        let home = &self.docs[HOME];
        let mut cut: Option<&(u64, u64, Vec<automerge::ChangeHash>)> = None;
        for held in self.held.iter().skip(1) {
            let Some(version) = held else { return };
            if version.1 != home.epoch() {
                return;
            }
            if cut.is_none_or(|c| version.0 < c.0) {
                cut = Some(version);
            }
        }
        let cut = cut.unwrap().2.clone();
        assert!(home.holds(&cut));
        let next = home.compact(REGIONS[HOME], &cut).unwrap();
        if next.record().unwrap() == home.record().unwrap() {
            self.docs[HOME] = next;
            self.home_changes += 1;
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
    fn regions_converge_through_any_compactions(steps in prop::collection::vec(step(), 1..60)) {
        for compacting in [true, false] {
            let mut world = World::new(compacting);
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
