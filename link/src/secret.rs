//! Who may use a served call: the cluster secret (an optional second factor
//! beside mutual TLS, or the only one on plain links), and the sender a call
//! claims to be, checked against the identity in its certificate.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Routes;
use tonic::{Request, Status};

use crate::{Error, SECRET_HEADER, peer_identity};

/// What a served call says about who sent it. On a mutual-TLS link the claim
/// must match the sender's certificate; a node cannot speak for another node
/// or another region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// Any node of the cluster.
    Member,
    /// A node of this region.
    Region(&'a str),
    /// This node of this region.
    Node { region: &'a str, node: u64 },
}

impl fmt::Display for Claim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Member => f.write_str("a member"),
            Claim::Region(r) => write!(f, "region {r}"),
            Claim::Node { region, node } => write!(f, "node {node} of region {region}"),
        }
    }
}

/// The cluster secret: sent with every call, required on every served call.
/// Without one configured, calls carry nothing and everything is admitted.
#[derive(Clone, Default)]
pub struct ClusterSecret {
    /// Marked sensitive: never printed, never indexed by HPACK.
    header: Option<AsciiMetadataValue>,
    /// SHA-256 of the secret: comparing digests takes the same time whatever
    /// the presented secret.
    digest: Option<[u8; 32]>,
}

impl ClusterSecret {
    /// `secret` travels in a header, so it must be printable ASCII.
    pub fn new(secret: Option<&str>) -> Result<Self, Error> {
        let Some(secret) = secret else {
            return Ok(Self::default());
        };
        // The value is not echoed: a config error must not print the secret.
        let mut header = AsciiMetadataValue::try_from(secret)
            .map_err(|_| Error::Config("the cluster secret must be printable ASCII".to_owned()))?;
        header.set_sensitive(true);
        Ok(Self {
            header: Some(header),
            digest: Some(Sha256::digest(secret.as_bytes()).into()),
        })
    }

    /// Adds the secret and the deadline to an outgoing call.
    pub fn stamp<T>(&self, request: &mut Request<T>, deadline: Duration) {
        request.set_timeout(deadline);
        if let Some(header) = &self.header {
            request.metadata_mut().insert(SECRET_HEADER, header.clone());
        }
    }

    /// Admits a served call: the secret first (an outsider learns nothing
    /// else), then, when the link authenticated its peer, that the peer is
    /// who the call claims to be. Plain links (simulations, explicitly
    /// insecure clusters) carry no identity to check.
    #[allow(clippy::result_large_err)]
    pub fn admit<T>(&self, request: &Request<T>, claim: Claim<'_>) -> Result<(), Status> {
        self.check(request.metadata())?;
        let Some(id) = peer_identity(request) else {
            return Ok(());
        };
        let matches = match claim {
            Claim::Member => true,
            Claim::Region(r) => id.region == r,
            Claim::Node { region, node } => id.region == region && id.node == node,
        };
        if matches {
            Ok(())
        } else {
            tracing::warn!(peer = %id, claimed = %claim, "refused a peer call claiming to be another node");
            Err(Status::permission_denied(format!(
                "the caller's certificate names {id}, but the call claims to come from {claim}"
            )))
        }
    }

    /// Refuses a served call without the secret (anything passes when none is
    /// configured). Call first: an outsider learns nothing else.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let presented = metadata.get(SECRET_HEADER).map(|v| v.as_bytes());
        if self.admits(presented) {
            Ok(())
        } else {
            tracing::debug!("refused a peer call without the cluster secret");
            Err(Status::unauthenticated("missing or wrong cluster secret"))
        }
    }

    fn admits(&self, presented: Option<&[u8]>) -> bool {
        let Some(expected) = &self.digest else {
            return true;
        };
        presented.is_some_and(|presented| {
            let presented: [u8; 32] = Sha256::digest(presented).into();
            // No early exit: the time taken says nothing about how much matched.
            presented
                .iter()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
        })
    }

    /// `routes` refusing, from its headers alone, any call without the
    /// secret: its body is never read (the services check again, with the
    /// sender's claims, once it is). Unchanged when no secret is configured.
    pub fn guard(&self, routes: Routes) -> Routes {
        if self.digest.is_none() {
            return routes;
        }
        let secret = self.clone();
        let layer = axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let admitted =
                    secret.admits(request.headers().get(SECRET_HEADER).map(|v| v.as_bytes()));
                async move {
                    if admitted {
                        next.run(request).await
                    } else {
                        tracing::debug!("refused a peer call without the cluster secret, unread");
                        Status::unauthenticated("missing or wrong cluster secret")
                            .into_http::<axum::body::Body>()
                    }
                }
            },
        );
        Routes::from(routes.into_axum_router().layer(layer))
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.header.is_some() {
            "ClusterSecret(<redacted>)"
        } else {
            "ClusterSecret(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeIdentity, PeerInfo};

    fn with_secret(secret: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = AsciiMetadataValue::try_from(secret) {
            metadata.insert(SECRET_HEADER, value);
        }
        metadata
    }

    #[test]
    fn only_the_cluster_secret_is_admitted() {
        let secret = ClusterSecret::new(Some("s3cret")).unwrap();
        assert!(secret.check(&with_secret("s3cret")).is_ok());
        assert!(secret.check(&with_secret("s3cre")).is_err());
        assert!(secret.check(&with_secret("s3cret ")).is_err());
        assert!(secret.check(&MetadataMap::new()).is_err());
        let open = ClusterSecret::new(None).unwrap();
        assert!(open.check(&MetadataMap::new()).is_ok(), "no secret: open");
    }

    #[test]
    fn the_secret_must_fit_a_header_and_never_prints() {
        assert!(matches!(
            ClusterSecret::new(Some("line\nbreak")),
            Err(Error::Config(_))
        ));
        let secret = ClusterSecret::new(Some("hunter2hunter2")).unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
        let mut request = Request::new(());
        secret.stamp(&mut request, Duration::from_secs(3));
        assert!(request.metadata().get(SECRET_HEADER).is_some());
        assert!(request.metadata().get("grpc-timeout").is_some());
    }

    fn from(identity: Option<NodeIdentity>) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(PeerInfo { identity });
        request
    }

    #[tokio::test]
    async fn the_guard_refuses_a_call_without_the_secret_before_its_body() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::ServiceExt;
        let reached = Arc::new(AtomicUsize::new(0));
        let seen = reached.clone();
        let inner = axum::Router::new().route(
            "/meridian.test.v1.T/Call",
            axum::routing::post(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                async { "reached" }
            }),
        );
        let secret = ClusterSecret::new(Some("s3cret")).unwrap();
        let guarded = secret.guard(Routes::from(inner)).into_axum_router();
        let call = |with: Option<&str>| {
            let mut b = http::Request::post("/meridian.test.v1.T/Call");
            if let Some(v) = with {
                b = b.header(SECRET_HEADER, v);
            }
            b.body(axum::body::Body::from(vec![0xffu8; 64])).unwrap()
        };
        for wrong in [None, Some("nope")] {
            let reply = guarded.clone().oneshot(call(wrong)).await.unwrap();
            assert_eq!(reply.headers()["grpc-status"], "16", "unauthenticated");
        }
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "nothing reached the service"
        );
        let reply = guarded.clone().oneshot(call(Some("s3cret"))).await.unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_call_may_claim_only_what_its_certificate_says() {
        let open = ClusterSecret::new(None).unwrap();
        let n2 = NodeIdentity::new("us-east", 2).unwrap();
        let us = |node| Claim::Node {
            region: "us-east",
            node,
        };
        assert!(open.admit(&from(Some(n2.clone())), us(2)).is_ok());
        assert!(
            open.admit(&from(Some(n2.clone())), Claim::Region("us-east"))
                .is_ok()
        );
        assert!(open.admit(&from(Some(n2.clone())), Claim::Member).is_ok());
        let other_node = open.admit(&from(Some(n2.clone())), us(3)).unwrap_err();
        assert_eq!(other_node.code(), tonic::Code::PermissionDenied);
        assert!(
            open.admit(&from(Some(n2.clone())), Claim::Region("eu-west"))
                .is_err()
        );
        assert!(
            open.admit(
                &from(Some(n2)),
                Claim::Node {
                    region: "eu-west",
                    node: 2
                }
            )
            .is_err()
        );
        assert!(
            open.admit(&from(None), us(3)).is_ok(),
            "plain links carry no identity"
        );
        let secret = ClusterSecret::new(Some("s3cret")).unwrap();
        let n = NodeIdentity::new("us-east", 3).unwrap();
        assert!(
            secret.admit(&from(Some(n)), us(3)).is_err(),
            "the secret is still required beside the certificate"
        );
    }
}
