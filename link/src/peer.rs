//! A peer as a caller sees it: where it is, who it must be, and the faults
//! tests inject into the link to it.

use std::sync::Arc;
use std::time::Duration;

/// A peer's inter-node address (`host:port`), the region its node must be
/// of (checked against its certificate over TLS), and two faults that tests
/// and demos inject into the link to it: a delay added before every message
/// (inter-region latency), and a file whose existence cuts the link (a
/// partition). Both are off in production.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: String,
    /// `None`: any node of the cluster.
    pub region: Option<String>,
    pub delay: Duration,
    pub cut_while: Option<Arc<std::path::Path>>,
}

impl Peer {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            region: None,
            delay: Duration::ZERO,
            cut_while: None,
        }
    }

    /// This peer, as a node of `region`.
    pub fn of_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Who the node at this address must be.
    pub fn expect(&self) -> crate::Expect {
        match &self.region {
            Some(region) => crate::Expect::Region(region.clone()),
            None => crate::Expect::Any,
        }
    }

    /// The channel to this peer, through `dialer`.
    pub fn channel(
        &self,
        dialer: &crate::Dialer,
    ) -> Result<tonic::transport::Channel, crate::CallError> {
        dialer.channel_to(&self.addr, &self.expect())
    }

    /// Crosses the link: waits out its delay, fails while it is cut.
    pub async fn reach(&self) -> Result<(), crate::CallError> {
        tokio::time::sleep(self.delay).await;
        match &self.cut_while {
            Some(path) if path.exists() => Err(crate::CallError::Unreachable(format!(
                "link to {} cut while {} exists",
                self.addr,
                path.display()
            ))),
            _ => Ok(()),
        }
    }
}
