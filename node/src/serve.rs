//! Starting a node: the master key, the listener (injected: a TCP socket in
//! production, a simulated one under turmoil) and graceful shutdown.

use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::clock::SeededRng;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::secret::Secret;

/// Where the master key came from; a generated or stored key is shown at start
/// because nobody else knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    Stored,
    Generated,
}

const MASTER_KEY_FILE: &str = "master_key";

/// The configured master key, or the one kept in the data directory, or a new
/// one generated and kept there (readable by the owner only).
pub fn resolve_master_key(config: &Config, rng: &SeededRng) -> Result<(Secret, KeySource)> {
    if let Some(key) = &config.master_key {
        return Ok((key.clone(), KeySource::Configured));
    }
    let dir = &config.node.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
    let path = dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            return Ok((Secret::new(text.trim()), KeySource::Stored));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    }
    let key = Secret::new(format!("sk-{}", rng.hex(24)));
    write_private(&path, key.expose())?;
    Ok((key, KeySource::Generated))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Serves the node's API on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve<L>(
    listener: L,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let checks = node
        .health
        .settings
        .enabled
        .then(|| tokio::spawn(crate::health::run(node.clone())));
    let app = crate::api::router(node);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving HTTP", e));
    if let Some(task) = checks {
        task.abort();
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::embedded(&std::collections::BTreeMap::<String, String>::new());
        config.node.data_dir = dir.path().join("data");
        let rng = SeededRng::from_seed(3);
        let (first, source) = resolve_master_key(&config, &rng).unwrap();
        assert_eq!(source, KeySource::Generated);
        assert!(first.expose().starts_with("sk-") && first.expose().len() == 51);
        let (again, source) = resolve_master_key(&config, &rng).unwrap();
        assert_eq!((again, source), (first, KeySource::Stored));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(config.node.data_dir.join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        config.master_key = Some(Secret::new("sk-configured"));
        assert_eq!(
            resolve_master_key(&config, &rng).unwrap().1,
            KeySource::Configured
        );
    }
}
