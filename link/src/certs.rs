//! Making the cluster's certificates: a CA, node certificates that carry a
//! [`NodeIdentity`], and plain server certificates for a node's public HTTPS
//! listener. Everything is returned as PEM text; where it is stored is the
//! caller's decision, with [`write_private`] for keys.
//!
//! Keys are ECDSA P-256, generated and signed with `ring`.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::DnsName;
use time::OffsetDateTime;

use crate::Error;
use crate::identity::{NODE_SERVER_NAME, NodeIdentity};

/// Certificates are valid from this long before they are issued: a peer whose
/// clock runs a little behind the issuer's would otherwise refuse a fresh
/// certificate as not yet valid.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// A certificate and its private key, PEM-encoded. The key never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A new self-signed CA valid for `validity_days`. It may sign end-entity
/// certificates only (path length 0): a leaked node key can then never mint
/// further CAs.
pub fn generate_ca(common_name: &str, validity_days: u32) -> Result<PemPair, Error> {
    if common_name.trim().is_empty() {
        return Err(Error::Certificate(
            "the CA's common name is empty".to_owned(),
        ));
    }
    let mut params = base_params(common_name, validity_days)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = new_key()?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Certificate(format!("signing the CA certificate: {e}")))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for the node `identity`, signed by the CA, usable both to
/// serve peers and to dial them. Its names: the identity URI, the DNS name
/// [`NODE_SERVER_NAME`] that dialers verify, and `extra_sans` (DNS names or
/// IP addresses) for anything else that must reach the node by name.
pub fn issue_node_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    identity: &NodeIdentity,
    extra_sans: &[String],
    validity_days: u32,
) -> Result<PemPair, Error> {
    // Re-checked: a struct literal could carry a region that breaks the URI.
    let identity = NodeIdentity::new(identity.region.clone(), identity.node)?;
    let mut params = base_params(&format!("meridian node {identity}"), validity_days)?;
    let uri = identity
        .to_uri()
        .try_into()
        .map_err(|e| Error::Certificate(format!("node URI: {e}")))?;
    params.subject_alt_names = vec![SanType::URI(uri), dns_san(NODE_SERVER_NAME)?];
    for name in extra_sans {
        let san = parse_san(name)?;
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    sign_leaf(params, ca_cert_pem, ca_key_pem)
}

/// A certificate for a public HTTPS listener, for the names in `sans` (DNS
/// names or IP addresses), signed by the CA. It carries no node identity and
/// is valid for serving only, so it can never pass as a node's client
/// certificate.
pub fn issue_server_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
    validity_days: u32,
) -> Result<PemPair, Error> {
    let Some(first) = sans.first() else {
        return Err(Error::Certificate(
            "a server certificate needs at least one name".to_owned(),
        ));
    };
    let mut params = base_params(first, validity_days)?;
    for name in sans {
        let san = parse_san(name)?;
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign_leaf(params, ca_cert_pem, ca_key_pem)
}

/// Writes `text` (a private key) to `path`, readable by its owner only
/// (mode 0600 on Unix). The text goes to a new file in the same directory
/// that is then renamed over `path`: a reader polling for a new key never
/// sees half of one, and a file that was world-readable is replaced, not
/// rewritten in place. An existing symbolic link at `path` is refused rather
/// than followed.
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let file_error = |reason: String| Error::File {
        path: path.to_owned(),
        reason,
    };
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(file_error(
            "is a symbolic link; refusing to write a private key through it".to_owned(),
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".meridian-key-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut file = builder
        .tempfile_in(dir)
        .map_err(|e| file_error(format!("creating a file beside it: {e}")))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| file_error(format!("writing: {e}")))?;
    // rename(2) replaces a link at `path` instead of writing through it, so a
    // link created after the check above is still not followed.
    file.persist(path)
        .map_err(|e| file_error(format!("renaming into place: {}", e.error)))?;
    Ok(())
}

/// A validity window from shortly before now to `validity_days` after, and a
/// subject of just a common name.
fn base_params(common_name: &str, validity_days: u32) -> Result<CertificateParams, Error> {
    if validity_days == 0 {
        return Err(Error::Certificate(
            "validity must be at least one day".to_owned(),
        ));
    }
    let now = wall_clock_now();
    let not_after = now
        .checked_add(time::Duration::days(i64::from(validity_days)))
        .ok_or_else(|| {
            Error::Certificate(format!("validity of {validity_days} days is too long"))
        })?;
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    // The serial number is left to rcgen, which derives it from the new key's
    // hash: every certificate here gets a fresh random key, so serials are
    // unique and unpredictable.
    Ok(params)
}

/// Signs an end-entity certificate with the CA in `ca_cert_pem` (the first
/// certificate of the file) and `ca_key_pem`.
fn sign_leaf(
    mut params: CertificateParams,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<PemPair, Error> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    // The key's own errors can quote nothing of it, but say no more than this.
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|_| Error::Certificate("the CA key is not a usable PEM private key".to_owned()))?;
    check_ca(ca_cert_pem, &ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| Error::Certificate(format!("reading the CA certificate: {e}")))?;
    let key = new_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| Error::Certificate(format!("signing the certificate: {e}")))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Refuses to sign with a CA certificate that is not a CA or whose key is not
/// `ca_key`: either way the result would be a certificate no peer accepts,
/// found out only at the first handshake.
fn check_ca(ca_cert_pem: &str, ca_key: &KeyPair) -> Result<(), Error> {
    use rcgen::PublicKeyData as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|_| Error::Certificate("the CA certificate is not PEM".to_owned()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Certificate(format!("unreadable CA certificate: {e}")))?;
    if !cert.is_ca() {
        return Err(Error::Certificate(
            "the CA certificate is not a CA (no basicConstraints cA)".to_owned(),
        ));
    }
    if cert.public_key().subject_public_key.data.as_ref() != ca_key.der_bytes() {
        return Err(Error::Certificate(
            "the CA key does not belong to the CA certificate".to_owned(),
        ));
    }
    Ok(())
}

fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Certificate(format!("generating a key: {e}")))
}

/// A name for a SAN: an IP address if it parses as one, else a DNS name that
/// must be valid as one (webpki refuses certificates with malformed names).
fn parse_san(name: &str) -> Result<SanType, Error> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => dns_san(name),
    }
}

fn dns_san(name: &str) -> Result<SanType, Error> {
    let invalid =
        || Error::Certificate(format!("{name:?} is neither an IP address nor a DNS name"));
    DnsName::try_from(name).map_err(|_| invalid())?;
    Ok(SanType::DnsName(name.try_into().map_err(|_| invalid())?))
}

/// Peers judge certificates by their real wall clocks, so the validity window
/// is anchored to real time rather than to a node's injected clock. Issuing
/// certificates is an operator's step, never run under simulation.
#[allow(clippy::disallowed_methods)]
fn wall_clock_now() -> OffsetDateTime {
    OffsetDateTime::from(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> PemPair {
        generate_ca("test CA", 1).unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn node_identity_round_trips_through_a_certificate() {
        let ca = ca();
        let id = NodeIdentity::new("eu-west-1", 3).unwrap();
        let sans = ["node3.example".to_owned(), "10.0.0.3".to_owned()];
        let node = issue_node_cert(&ca.cert_pem, &ca.key_pem, &id, &sans, 1).unwrap();
        assert_eq!(
            NodeIdentity::from_cert_der(&der(&node.cert_pem)).unwrap(),
            id
        );
        let node_der = der(&node.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&node_der).unwrap();
        let names = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap());
        for wanted in [
            "meridian-node",
            "node3.example",
            "meridian://node/eu-west-1/3",
        ] {
            assert!(names.contains(wanted), "{wanted} missing from {names}");
        }
        assert!(!cert.is_ca());
    }

    #[test]
    fn certificates_without_exactly_one_node_uri_carry_no_identity() {
        let ca = ca();
        let server =
            issue_server_cert(&ca.cert_pem, &ca.key_pem, &["a.example".into()], 1).unwrap();
        assert!(matches!(
            NodeIdentity::from_cert_der(&der(&server.cert_pem)),
            Err(Error::Identity(_))
        ));
        assert!(NodeIdentity::from_cert_der(&der(&ca.cert_pem)).is_err());
        assert!(NodeIdentity::from_cert_der(b"not a certificate").is_err());

        // Two identities in one certificate: which one is meant is a guess.
        let mut params = base_params("two", 1).unwrap();
        params.subject_alt_names = ["meridian://node/eu/1", "MERIDIAN://node/eu/2"]
            .into_iter()
            .map(|uri| SanType::URI(uri.try_into().unwrap()))
            .collect();
        let two = sign_leaf(params, &ca.cert_pem, &ca.key_pem).unwrap();
        let err = NodeIdentity::from_cert_der(&der(&two.cert_pem)).unwrap_err();
        assert!(err.to_string().contains("several"), "{err}");
    }

    #[test]
    fn signing_needs_the_ca_and_its_own_key() {
        let ca = ca();
        let other = generate_ca("other CA", 1).unwrap();
        let id = NodeIdentity::new("eu", 1).unwrap();
        let mismatched = issue_node_cert(&ca.cert_pem, &other.key_pem, &id, &[], 1);
        assert!(
            mismatched
                .unwrap_err()
                .to_string()
                .contains("does not belong")
        );
        let leaf = issue_node_cert(&ca.cert_pem, &ca.key_pem, &id, &[], 1).unwrap();
        let not_ca = issue_node_cert(&leaf.cert_pem, &leaf.key_pem, &id, &[], 1);
        assert!(not_ca.unwrap_err().to_string().contains("not a CA"));
        let garbage = issue_node_cert(&ca.cert_pem, "-----BEGIN PRIVATE KEY-----\nzz", &id, &[], 1);
        assert!(!garbage.unwrap_err().to_string().contains("zz"));
        assert!(issue_node_cert(&ca.cert_pem, &ca.key_pem, &id, &["bad name!".into()], 1).is_err());
        assert!(generate_ca("ca", 0).is_err());
        assert!(issue_server_cert(&ca.cert_pem, &ca.key_pem, &[], 1).is_err());
    }

    #[test]
    fn keys_never_print() {
        let ca = ca();
        let shown = format!("{ca:?}");
        assert!(!shown.contains(&ca.key_pem) && shown.contains("redacted"));
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only_and_links_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_private(&link, "secret").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }
}
