//! `meridian-loadtest`: tools for measuring Meridian from the outside.
//!
//! Owns the fast fake LLM upstream ([`fake_upstream`]) and the recorded answers
//! it serves ([`fixtures`]), both shared with the node's integration tests; the
//! open-loop load generator ([`run`]), its reports ([`report`]) and the
//! side-by-side comparison of the upstream alone, Meridian and LiteLLM
//! ([`compare`], reading [`procfs`]). It must not depend on `meridian-node`
//! internals: it talks to a gateway only over HTTP, as a user would, and to its
//! processes only through their command line and `/proc`.

pub mod compare;
mod error;
pub mod fake_upstream;
pub mod fixtures;
pub mod procfs;
pub mod report;
mod result;
pub mod run;
pub mod seeded;

pub use error::Error;
pub use result::{CurvePoint, RunResult, Summary};
pub use run::{Load, RunOptions, run};
