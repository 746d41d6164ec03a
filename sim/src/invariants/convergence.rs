//! Guarantees: counters converge — after the heal every node reports the
//! same value for every counter (and holds the same records) within a
//! bound, and goes on agreeing: the world's end state agrees, and has
//! agreed without a break for [`HOLD`] before it.

use std::time::Duration;

use super::{End, Invariant, View, counter_disagreement};
use crate::world::Spec;

/// How long agreement must last, unbroken, before the world may end: ten
/// gossip rounds, long enough for a counter change still in flight (or one
/// that a node sends again) to show as a disagreement.
pub const HOLD: Duration = Duration::from_secs(1);

/// Agreement between the nodes, sample by sample, after the heal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Agreement {
    /// The first sample at which every node agreed.
    pub first: Option<Duration>,
    /// Where the current unbroken run of agreeing samples began.
    pub since: Option<Duration>,
    /// How often agreement was reached and then lost again.
    pub lost: u32,
    /// The last sample's time.
    pub last: Duration,
}

impl Agreement {
    pub fn sample(&mut self, at: Duration, agree: bool) {
        self.last = at;
        if agree {
            self.first.get_or_insert(at);
            self.since.get_or_insert(at);
        } else if self.since.take().is_some() {
            self.lost += 1;
        }
    }

    /// Whether the current run of agreement has lasted `HOLD`.
    pub fn held(&self) -> bool {
        self.since
            .is_some_and(|since| self.last.saturating_sub(since) >= HOLD)
    }

    /// The verdict on a world that ended at the last sample, healed at
    /// `heal`: the final run of agreement began within `within` of the heal
    /// and lasted `HOLD`.
    pub fn verdict(&self, heal: Duration, within: Duration) -> Result<(), String> {
        let Some(since) = self.since else {
            return Err(format!(
                "the nodes disagree at the end ({} ms after the heal; agreement reached {} and lost {} times)",
                self.last.saturating_sub(heal).as_millis(),
                self.first.map_or("never".to_owned(), |t| format!(
                    "first at +{} ms",
                    t.saturating_sub(heal).as_millis()
                )),
                self.lost
            ));
        };
        let settled = since.saturating_sub(heal);
        if settled > within {
            return Err(format!(
                "agreement settled {} ms after the heal (bound {} ms; first reached at +{} ms, lost {} times)",
                settled.as_millis(),
                within.as_millis(),
                self.first.unwrap_or(since).saturating_sub(heal).as_millis(),
                self.lost
            ));
        }
        if !self.held() {
            return Err(format!(
                "agreement lasted {} ms at the end, less than the {} ms it must hold",
                self.last.saturating_sub(since).as_millis(),
                HOLD.as_millis()
            ));
        }
        Ok(())
    }
}

pub struct CountersConverge {
    within: Duration,
    heal: Duration,
    nodes: usize,
}

impl CountersConverge {
    pub fn new(spec: &Spec) -> Self {
        Self {
            within: spec.converge_within,
            heal: spec.heal_at(),
            nodes: spec.node_hosts().len(),
        }
    }
}

impl Invariant for CountersConverge {
    fn name(&self) -> &'static str {
        "counters_converge"
    }

    fn guarantee(&self) -> &'static str {
        "after the heal every node agrees on every counter within the bound, and stays agreed"
    }

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        if view.nodes.len() != self.nodes {
            return Err(format!(
                "only {} of {} nodes were running after the heal",
                view.nodes.len(),
                self.nodes
            ));
        }
        if let Some(difference) = counter_disagreement(view) {
            return Err(format!("at the end: {difference}"));
        }
        end.counters.verdict(self.heal, self.within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Samples every 20 ms from `from` to `to` (inclusive), agreeing where
    /// `agree` says.
    fn run(agreement: &mut Agreement, from: u64, to: u64, agree: impl Fn(u64) -> bool) {
        for t in (from..=to).step_by(20) {
            agreement.sample(ms(t), agree(t));
        }
    }

    #[test]
    fn agreement_that_holds_passes_with_both_times() {
        let mut a = Agreement::default();
        run(&mut a, 0, 3000, |t| t >= 500);
        assert_eq!(a.first, Some(ms(500)));
        assert_eq!(a.since, Some(ms(500)));
        assert_eq!(a.verdict(ms(0), ms(10_000)), Ok(()));
    }

    /// Agreement reached early and lost again: the world's end state is
    /// what counts. A checker that looked only at the first agreement
    /// passed this.
    #[test]
    fn agreement_lost_after_it_was_reached_fails() {
        let mut a = Agreement::default();
        run(&mut a, 0, 3000, |t| (500..800).contains(&t));
        assert_eq!(a.first, Some(ms(500)));
        assert_eq!(a.lost, 1);
        let e = a.verdict(ms(0), ms(10_000)).unwrap_err();
        assert!(e.contains("disagree at the end"), "{e}");
    }

    #[test]
    fn agreement_regained_late_reports_when_it_settled() {
        let mut a = Agreement::default();
        run(&mut a, 0, 12_000, |t| {
            (500..800).contains(&t) || t >= 10_500
        });
        assert_eq!(
            (a.first, a.since, a.lost),
            (Some(ms(500)), Some(ms(10_500)), 1)
        );
        let e = a.verdict(ms(0), ms(10_000)).unwrap_err();
        assert!(e.contains("settled 10500 ms"), "{e}");
        // Within a looser bound it passes, settled at 10.5 s.
        assert_eq!(a.verdict(ms(0), ms(11_000)), Ok(()));
    }

    #[test]
    fn agreement_too_short_at_the_end_fails() {
        let mut a = Agreement::default();
        run(&mut a, 0, 3000, |t| t >= 2500);
        let e = a.verdict(ms(0), ms(10_000)).unwrap_err();
        assert!(e.contains("less than the 1000 ms"), "{e}");
    }
}
