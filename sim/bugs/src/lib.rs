//! Known bugs, each behind a switch, for the simulator's self-test
//! (`meridian-sim --inject-bug NAME`): a checker is only worth something if
//! it fails on a broken variant of the code it checks.
//!
//! Production crates ask [`on`] at the one place each bug would live. Without
//! the `switches` feature [`on`] is a constant `false` and the branch compiles
//! away; with it (the simulator's build) it reads a thread-local word, and
//! only [`switch_on`] — called by the simulator alone — ever sets a switch.
//! Switches are per thread: turmoil runs a whole world on one thread, so
//! worlds on parallel test threads do not see each other's bugs.

/// A deliberately wrong behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Bug {
    /// A counter merge adds a peer's slot instead of taking the maximum.
    MergeAdds = 0,
    /// A restarted node forgets its own counter slots (same identity, from zero).
    ForgetOwnSlot = 1,
    /// Counter changes from other regions are dropped on receipt.
    DropRemoteDeltas = 2,
    /// Authentication ignores the block of a key made in another region.
    IgnoreRemoteBlocks = 3,
    /// `strict` admission admits on the node's view, without holding rights.
    StrictWithoutRights = 4,
    /// Every node bootstraps a region of its own (split brain).
    BootstrapEverywhere = 5,
    /// The router drops a key's data-residency policy when every deployment
    /// the policy allows is cooling down (it fails open).
    IgnoreResidency = 6,
    /// `available` admission lets a budget's check pass whatever was spent.
    AvailableAdmitsBlindly = 7,
    /// A follower answers a key's creation as done without forwarding it.
    AckUnforwardedCreates = 8,
    /// The router tells its own region's deployments by exact, case-sensitive
    /// name (`US-East` is not local to `us-east`).
    IgnoreLocality = 9,
    /// A failing deployment is never put in cooldown.
    NeverCoolDown = 10,
    /// A deployment put in cooldown never comes back.
    CooldownForever = 11,
    /// An answer (and its cost) goes out before the cost is durable; the
    /// counters are written in the background, every second.
    AckBeforeDurable = 12,
    /// A key merged from another region arrives with another display name.
    RenameRemoteKeys = 13,
    /// Request counts from other regions are dropped on receipt.
    DropRemoteRequestCounts = 14,
}

impl Bug {
    pub const ALL: [Bug; 15] = [
        Bug::MergeAdds,
        Bug::ForgetOwnSlot,
        Bug::DropRemoteDeltas,
        Bug::IgnoreRemoteBlocks,
        Bug::StrictWithoutRights,
        Bug::BootstrapEverywhere,
        Bug::IgnoreResidency,
        Bug::AvailableAdmitsBlindly,
        Bug::AckUnforwardedCreates,
        Bug::IgnoreLocality,
        Bug::NeverCoolDown,
        Bug::CooldownForever,
        Bug::AckBeforeDurable,
        Bug::RenameRemoteKeys,
        Bug::DropRemoteRequestCounts,
    ];

    /// The name `--inject-bug` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bug::MergeAdds => "merge-adds",
            Bug::ForgetOwnSlot => "forget-own-slot",
            Bug::DropRemoteDeltas => "drop-remote-deltas",
            Bug::IgnoreRemoteBlocks => "ignore-remote-blocks",
            Bug::StrictWithoutRights => "strict-without-rights",
            Bug::BootstrapEverywhere => "bootstrap-everywhere",
            Bug::IgnoreResidency => "ignore-residency",
            Bug::AvailableAdmitsBlindly => "available-admits-blindly",
            Bug::AckUnforwardedCreates => "ack-unforwarded-creates",
            Bug::IgnoreLocality => "ignore-locality",
            Bug::NeverCoolDown => "never-cool-down",
            Bug::CooldownForever => "cooldown-forever",
            Bug::AckBeforeDurable => "ack-before-durable",
            Bug::RenameRemoteKeys => "rename-remote-keys",
            Bug::DropRemoteRequestCounts => "drop-remote-request-counts",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Bug::MergeAdds => "a counter merge adds a peer's slot instead of taking the maximum",
            Bug::ForgetOwnSlot => "a restarted node forgets its own counter slots",
            Bug::DropRemoteDeltas => "counter changes from other regions are dropped on receipt",
            Bug::IgnoreRemoteBlocks => {
                "authentication ignores the block of a key made in another region"
            }
            Bug::StrictWithoutRights => "strict admission admits without holding rights",
            Bug::BootstrapEverywhere => "every node bootstraps a region of its own",
            Bug::IgnoreResidency => {
                "the router drops a key's residency policy when every allowed deployment cools down"
            }
            Bug::AvailableAdmitsBlindly => {
                "available admission passes a budget's check whatever was spent"
            }
            Bug::AckUnforwardedCreates => {
                "a follower answers a key's creation as done without forwarding it"
            }
            Bug::IgnoreLocality => {
                "the router tells its own region's deployments by exact, case-sensitive name"
            }
            Bug::NeverCoolDown => "a failing deployment is never put in cooldown",
            Bug::CooldownForever => "a deployment put in cooldown never comes back",
            Bug::AckBeforeDurable => {
                "answers go out before their cost is durable (written every second)"
            }
            Bug::RenameRemoteKeys => {
                "a key merged from another region arrives with another display name"
            }
            Bug::DropRemoteRequestCounts => {
                "request counts from other regions are dropped on receipt"
            }
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "switches")]
mod state {
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<u32> = const { Cell::new(0) };
    }

    pub fn on(bug: super::Bug) -> bool {
        ON.with(|on| on.get() & (1 << bug as u8) != 0)
    }

    pub fn set(bugs: &[super::Bug]) {
        ON.with(|on| on.set(bugs.iter().fold(0, |acc, b| acc | (1 << *b as u8))));
    }
}

/// Whether `bug` is switched on (always `false` without `switches`).
#[inline(always)]
pub fn on(bug: Bug) -> bool {
    #[cfg(feature = "switches")]
    {
        state::on(bug)
    }
    #[cfg(not(feature = "switches"))]
    {
        let _ = bug;
        false
    }
}

/// Switches exactly `bugs` on (the rest off), on this thread.
#[cfg(feature = "switches")]
pub fn switch_on(bugs: &[Bug]) {
    state::set(bugs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(Bug::from_name("nope"), None);
    }

    #[cfg(feature = "switches")]
    #[test]
    fn switches_turn_on_and_off() {
        switch_on(&[Bug::MergeAdds]);
        assert!(on(Bug::MergeAdds) && !on(Bug::ForgetOwnSlot));
        switch_on(&[]);
        assert!(!on(Bug::MergeAdds));
    }
}
