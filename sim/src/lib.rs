//! `meridian-sim`: deterministic simulations of Meridian clusters under turmoil.
//!
//! Owns the adapters that plug the real node code into turmoil's simulated
//! network (listeners today; inter-node transports and a simulated upstream
//! client as they arrive), the worlds (regions, partitions, crashes, clock skew),
//! the invariant checkers and the seed sweeps. It must not re-implement node
//! logic: every host runs `meridian_node` as production does, through its seams.

use std::net::SocketAddr;

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

/// The region's inter-node transport, dialing over turmoil's network.
pub fn peer_transport(
    region: &str,
    secret: Option<String>,
) -> Result<meridian_consensus::GrpcTransport, meridian_consensus::Error> {
    let connector = tower::service_fn(|uri: http::Uri| async move {
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        turmoil::net::TcpStream::connect(authority).await
    });
    meridian_consensus::GrpcTransport::with_connector(region, secret, connector)
}

/// Serves a region's peers on a simulated listener until `shutdown`.
pub async fn serve_peers(
    listener: turmoil::net::TcpListener,
    service: meridian_consensus::grpc::RaftServer<meridian_consensus::grpc::RaftService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), meridian_consensus::Error> {
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(stream, _)| stream);
        Some((accepted, l))
    });
    meridian_consensus::grpc::serve_incoming(incoming, service, shutdown).await
}
