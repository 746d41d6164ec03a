//! `meridian-loadtest`: tools for measuring Meridian from the outside.
//!
//! Owns the fast fake LLM upstream ([`fake_upstream`]), shared with the node's
//! integration tests, and (later) the open-loop load generator and the
//! side-by-side report. It must not depend on `meridian-node` internals: it talks
//! to a gateway only over HTTP, as a user would.

pub mod fake_upstream;
