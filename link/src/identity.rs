//! Who a peer is, as its certificate says: a [`NodeIdentity`] is written into
//! each node certificate as a URI SAN and read back from the certificate a
//! peer presented, once the handshake has verified it.

use std::fmt;

use x509_parser::extensions::GeneralName;

use crate::Error;

/// The DNS name every node certificate carries and every dialer verifies the
/// server against. Peers are dialed by address, and addresses change (DHCP,
/// rescheduling); the CA, not the name, is what says "a node of this
/// cluster", so one fixed name keeps a re-addressed node valid.
pub const NODE_SERVER_NAME: &str = "meridian-node";

/// The scheme and path prefix of the URI SAN that carries a node's identity.
const URI_PREFIX: &str = "meridian://node/";
/// The scheme alone, compared without regard to case, so that a certificate
/// with a second identity spelled `MERIDIAN://...` is refused as ambiguous
/// rather than silently ignored.
const URI_SCHEME: &str = "meridian:";

/// Longer region names than this are refused: a region is a label in
/// configuration, metrics and URIs, not free text.
const MAX_REGION_LEN: usize = 63;

/// A node of the cluster: its region and its raft id, as certified by the
/// cluster CA.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    pub region: String,
    pub node: u64,
}

/// Who a dialing node expects to reach at an address: checked against the
/// identity in the certificate the server presents (over TLS; plain links
/// carry no identity and check nothing).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expect {
    /// Any node of the cluster (tests, tools).
    Any,
    /// A node of this region.
    Region(String),
    /// This node.
    Node(NodeIdentity),
}

impl Expect {
    /// Whether `found` is who was expected.
    pub fn admits(&self, found: &NodeIdentity) -> bool {
        match self {
            Expect::Any => true,
            Expect::Region(region) => &found.region == region,
            Expect::Node(node) => found == node,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any node"),
            Expect::Region(region) => write!(f, "a node of region {region}"),
            Expect::Node(node) => write!(f, "node {node}"),
        }
    }
}

impl NodeIdentity {
    /// Checks the region's spelling: it becomes a URI path segment, so only
    /// ASCII letters, digits, `-` and `_`.
    pub fn new(region: impl Into<String>, node: u64) -> Result<Self, Error> {
        let region = region.into();
        check_region(&region)?;
        Ok(Self { region, node })
    }

    /// The URI SAN written into this node's certificate:
    /// `meridian://node/<region>/<node>`.
    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.region, self.node)
    }

    /// Parses a URI written by [`NodeIdentity::to_uri`]. Only the canonical
    /// form is accepted (no leading zeros, no `+`, nothing after the id), so
    /// one node has exactly one spelling.
    pub fn from_uri(uri: &str) -> Result<Self, Error> {
        let invalid = || Error::Identity(format!("not a node identity URI: {uri:?}"));
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(invalid)?;
        let (region, node_text) = rest.split_once('/').ok_or_else(invalid)?;
        let node: u64 = node_text.parse().map_err(|_| invalid())?;
        if node.to_string() != node_text {
            return Err(invalid());
        }
        Self::new(region, node)
    }

    /// The identity a verified certificate carries. Exactly one `meridian:`
    /// URI SAN is required: with none the certificate is not a node's; with
    /// several, which one is meant would be a guess.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, Error> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("unreadable certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Certificate(
                "trailing bytes after the certificate".to_owned(),
            ));
        }
        let sans = cert.subject_alternative_name().map_err(|e| {
            Error::Certificate(format!("unreadable subject alternative names: {e}"))
        })?;
        let mut uris = sans
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if has_meridian_scheme(uri) => Some(*uri),
                _ => None,
            });
        match (uris.next(), uris.next()) {
            (Some(uri), None) => Self::from_uri(uri),
            (None, _) => Err(Error::Identity(
                "the certificate carries no meridian node URI".to_owned(),
            )),
            (Some(_), Some(_)) => Err(Error::Identity(
                "the certificate carries several meridian node URIs".to_owned(),
            )),
        }
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.region, self.node)
    }
}

fn has_meridian_scheme(uri: &str) -> bool {
    uri.get(..URI_SCHEME.len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(URI_SCHEME))
}

fn check_region(region: &str) -> Result<(), Error> {
    let well_formed = !region.is_empty()
        && region.len() <= MAX_REGION_LEN
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(Error::Identity(format!(
            "region {region:?} must be 1 to {MAX_REGION_LEN} ASCII letters, digits, '-' or '_'"
        )))
    }
}

/// What tonic's server knows about the other end of a connection, put into
/// every request's extensions (see [`peer_identity`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node identity from the client certificate the TLS handshake
    /// verified; `None` on plaintext connections (simulations, insecure test
    /// clusters), where nothing vouches for the peer.
    pub identity: Option<NodeIdentity>,
}

/// The verified identity of the node that sent `request`, if it came over
/// mutual TLS. Never derived from anything the caller writes into the call.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<&NodeIdentity> {
    request.extensions().get::<PeerInfo>()?.identity.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_in_canonical_form_only() {
        let id = NodeIdentity::new("eu-west_1", 42).unwrap();
        assert_eq!(id.to_uri(), "meridian://node/eu-west_1/42");
        assert_eq!(NodeIdentity::from_uri(&id.to_uri()).unwrap(), id);
        for bad in [
            "meridian://node/eu/042",
            "meridian://node/eu/+42",
            "meridian://node/eu/42/",
            "meridian://node/eu/42/x",
            "meridian://node//42",
            "meridian://node/e.u/42",
            "meridian://node/eu/",
            "meridian://node/eu/18446744073709551616",
            "meridian://other/eu/42",
            "https://node/eu/42",
        ] {
            assert!(NodeIdentity::from_uri(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NodeIdentity::from_uri("meridian://node/eu/18446744073709551615")
                .unwrap()
                .node,
            u64::MAX
        );
    }

    #[test]
    fn regions_are_labels() {
        assert!(NodeIdentity::new("us-east-1", 1).is_ok());
        assert!(NodeIdentity::new("", 1).is_err());
        assert!(NodeIdentity::new("a/b", 1).is_err());
        assert!(NodeIdentity::new("région", 1).is_err());
        assert!(NodeIdentity::new("x".repeat(64), 1).is_err());
    }

    #[test]
    fn the_scheme_is_recognised_in_any_case() {
        assert!(has_meridian_scheme("MERIDIAN://node/eu/1"));
        assert!(has_meridian_scheme("meridian:x"));
        assert!(!has_meridian_scheme("meridia"));
        assert!(!has_meridian_scheme("https://meridian:1"));
    }

    #[test]
    fn identity_comes_from_the_request_extensions() {
        let mut request = tonic::Request::new(());
        assert_eq!(peer_identity(&request), None);
        let id = NodeIdentity::new("eu", 7).unwrap();
        request.extensions_mut().insert(PeerInfo {
            identity: Some(id.clone()),
        });
        assert_eq!(peer_identity(&request), Some(&id));
    }
}
