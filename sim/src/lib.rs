//! `meridian-sim`: deterministic simulations of Meridian clusters under turmoil.
//!
//! Owns the adapters that plug the real node code into turmoil's simulated
//! network (listeners today; inter-node transports and a simulated upstream
//! client as they arrive), the worlds (regions, partitions, crashes, clock skew),
//! the invariant checkers and the seed sweeps. It must not re-implement node
//! logic: every host runs `meridian_node` as production does, through its seams.

use std::net::SocketAddr;

mod clients;
pub mod faults;
pub mod invariants;
pub mod net;
pub mod oracle;
pub mod report;
pub mod routing;
pub mod upstream;
pub mod world;

/// axum's listener seam over turmoil's simulated TCP.
pub struct SimListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // A failed accept in the simulator is transient (a host being torn
            // down); keep serving, as axum's own TCP listener does.
            if let Ok(conn) = self.0.accept().await {
                return conn;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Dials peers over turmoil's network (for Raft and gossip alike).
pub fn sim_dialer() -> meridian_link::Dialer {
    meridian_link::Dialer::with_connector(tower::service_fn(|uri: http::Uri| async move {
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        turmoil::net::TcpStream::connect(authority).await
    }))
}

/// The region's inter-node transport, dialing over turmoil's network.
pub fn peer_transport(
    region: &str,
    secret: meridian_link::ClusterSecret,
) -> meridian_consensus::GrpcTransport {
    meridian_consensus::GrpcTransport::new(region, secret, sim_dialer())
}

/// Serves a node's inter-node services on a simulated listener until `shutdown`.
pub async fn serve_peers(
    listener: turmoil::net::TcpListener,
    routes: tonic::service::Routes,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), meridian_link::Error> {
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(stream, _)| stream);
        Some((accepted, l))
    });
    meridian_link::serve_incoming(incoming, routes, shutdown).await
}
