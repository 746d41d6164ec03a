//! Clients for the adversarial tests (`security_wire*.rs`,
//! `security_peers*.rs`) that send what well-behaved clients never do: raw
//! HTTP/1 bytes at an attacker's pace, HTTP/2 frames that break the
//! protocol's limits, and inter-node calls without, or with the wrong,
//! credentials. Each test binary uses some of them.

#![allow(dead_code)]

pub mod h2;
pub mod peers;
pub mod wire;
