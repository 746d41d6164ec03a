//! Pure CRDTs: plain data with `merge`, no I/O, no async, no clock. Time comes
//! in as arguments (Unix milliseconds), so the same inputs give the same
//! answers on every node and in every simulation.
//!
//! - [`PnCounter`]: a delta-state PN-counter with one slot per [`Replica`].
//! - [`Window`] and [`CounterId`]: which counter a request touches — a counter
//!   per period, so a reset is a new counter and nothing is ever zeroed.
//! - [`escrow`]: rights for `strict` mode — what a node holds and may spend,
//!   never beyond what the issuer granted it.

mod counter;
pub mod escrow;
mod id;
mod period;

pub use counter::{PnCounter, Replica, Slot};
pub use id::{CounterId, DecodeError, Metric, Scope};
pub use period::{
    PeriodSpec, RATE_WINDOW_MS, Window, civil_from_days, days_from_civil, sliding_estimate,
};
