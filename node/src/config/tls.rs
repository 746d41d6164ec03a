//! Which inter-node and public TLS files a node uses, and the rule that a
//! node reachable by other nodes never talks to them unauthenticated.

use std::path::PathBuf;

use super::Config;

/// `meridian.cluster_tls_ca`, `cluster_tls_cert`, `cluster_tls_key`: the
/// cluster's CA bundle and this node's certificate and key (made with
/// `meridian cert`). The certificate names the node's region and raft id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `meridian.tls_cert`, `tls_key`: HTTPS on the public listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A node with `cluster_listen` must authenticate its peers: mutual TLS, or
/// at least the cluster secret; `insecure_cluster: true` (tests only) says
/// neither on purpose. TLS settings come whole. Errors are `(path, expected)`.
pub(super) fn check(config: &Config) -> Result<(), (&'static str, String)> {
    let cluster = &config.node.cluster;
    if let Some(tls) = &cluster.tls {
        let missing: Vec<&str> = [
            ("cluster_tls_ca", &tls.ca),
            ("cluster_tls_cert", &tls.cert),
            ("cluster_tls_key", &tls.key),
        ]
        .into_iter()
        .filter(|(_, p)| p.as_os_str().is_empty())
        .map(|(k, _)| k)
        .collect();
        if !missing.is_empty() {
            return Err((
                "meridian.cluster_tls_ca",
                format!(
                    "all three of cluster_tls_ca, cluster_tls_cert and cluster_tls_key; missing {}",
                    missing.join(", ")
                ),
            ));
        }
    }
    if let Some(tls) = &config.node.public_tls
        && (tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty())
    {
        return Err(("meridian.tls_cert", "both tls_cert and tls_key".into()));
    }
    let authenticated = cluster.tls.is_some() || cluster.secret.is_some();
    if cluster.listen.is_some() && !authenticated && !cluster.insecure {
        return Err((
            "meridian.cluster_listen",
            "peers authenticated: mutual TLS (cluster_tls_ca, cluster_tls_cert, cluster_tls_key; see `meridian cert`) or at least a cluster secret (cluster_secret or MERIDIAN_CLUSTER_SECRET); `insecure_cluster: true` turns this off, for tests only".into(),
        ));
    }
    Ok(())
}
