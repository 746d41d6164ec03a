//! What translating an old-epoch document costs a region's Raft apply: a
//! document compacted at its creation, then edited N times after the cut
//! by one region (a linear history) or by two regions editing concurrently
//! and exchanging their documents every other edit; the time for the
//! compacted side to merge the other's old-epoch document (which translates
//! every change after the cut).
//!
//! `cargo run -p meridian-consensus --example compaction_cost` (the dev
//! profile, like every build here).

use std::time::Instant;

use meridian_consensus::metadata::{Actor, EntityDoc};
use serde_json::{Map, Value, json};

const T0: u64 = 1_800_000_000_000;

fn record(patch: Value) -> Map<String, Value> {
    let mut out = json!({"team_id": "acme", "rpm_limit": 1, "blocked": false});
    for (k, v) in patch.as_object().into_iter().flatten() {
        out[k] = v.clone();
    }
    out.as_object().cloned().unwrap_or_default()
}

fn whole(doc: &EntityDoc) -> Vec<u8> {
    doc.changes_since(&[])
}

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point of this tool
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (us, eu, ap) = (
        Actor::for_region("us-east"),
        Actor::for_region("eu-west"),
        Actor::for_region("ap-south"),
    );
    println!("changes after the cut | history | merge (translate) time");
    for (n, concurrent) in [(500u64, false), (1000, false), (400, true), (800, true)] {
        let home = EntityDoc::new(&us, T0, &record(json!({})))?;
        let mut b = EntityDoc::from_changes(&whole(&home))?;
        let mut c = EntityDoc::from_changes(&whole(&home))?;
        let mut compacted = home.compact("us-east", &home.heads())?;
        let edits = if concurrent { n / 2 } else { n };
        for i in 0..edits {
            b.update(&eu, T0 + i + 1, &record(json!({"rpm_limit": i + 2})))?;
            if concurrent {
                c.update(
                    &ap,
                    T0 + i + 1,
                    &record(json!({"rpm_limit": i + 3, "x": i})),
                )?;
                if i % 2 == 0 {
                    let (to_c, to_b) = (whole(&b), whole(&c));
                    c.merge(&to_c)?;
                    b.merge(&to_b)?;
                }
            }
        }
        let batch = whole(&b);
        let started = Instant::now();
        compacted.merge_document(&batch)?;
        let kind = if concurrent {
            "two regions"
        } else {
            "one region"
        };
        println!("{n:>5} | {kind:<11} | {:?}", started.elapsed());
    }
    Ok(())
}
