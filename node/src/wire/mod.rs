//! The wire formats the gateway speaks, one module per format, each holding
//! its request, response and stream-event types as serde structs.
//!
//! [`openai`] is the gateway's lingua franca: routing, admission and every
//! provider adapter work on its chat request. [`anthropic`] holds Anthropic's
//! Messages API and both directions of its translation to and from the chat
//! format (for `/v1/messages` clients on any provider, and for OpenAI clients
//! on Anthropic deployments). When the client and the upstream speak the same
//! format, bodies pass through with only the fields the gateway must change.

pub mod anthropic;
pub mod openai;
