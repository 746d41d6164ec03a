//! `meridian-node`: the `meridian` gateway node.
//!
//! Owns the configuration, the HTTP API (OpenAI- and Anthropic-compatible, health),
//! authentication, routing, provider adapters, cost accounting and the wiring of
//! one node. It is the code simulations run: every listener, the upstream client,
//! the wall clock and the RNG are injected ([`node::Seams`], [`runtime::NodeBuilder`]), so
//! nothing here may reach for a socket, `SystemTime` or a thread-local RNG.
//!
//! The request path reads top to bottom in [`pipeline`].

pub mod admission;
pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod error;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod pricing;
pub mod providers;
pub mod rights;
pub mod router;
pub mod runtime;
pub mod secret;
pub mod serve;
pub mod spend_rpc;
pub mod spendlog;
pub mod sse;
pub mod tags;
pub mod upstream;
pub mod wire;
