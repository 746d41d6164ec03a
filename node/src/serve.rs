//! The master key a node starts with: configured, kept in the data
//! directory, or generated there. (Starting and stopping the node itself is
//! `runtime`.)

use std::io::Write as _;
use std::path::Path;

use crate::clock::SeededRng;
use crate::config::Config;
use crate::error::{Error, Result};
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
        check_master_key(key, "the configured master key")?;
        return Ok((key.clone(), KeySource::Configured));
    }
    let dir = &config.node.data_dir;
    create_private_dir(dir)?;
    let path = dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            let key = Secret::new(text.trim());
            check_master_key(&key, &format!("the master key kept in {}", path.display()))?;
            return Ok((key, KeySource::Stored));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    }
    let key = Secret::new(format!("sk-{}", rng.hex(24)));
    write_private(&path, key.expose())?;
    Ok((key, KeySource::Generated))
}

/// The shortest master key a node accepts: it is the one credential that
/// may do everything, on every node of every region.
pub const MIN_MASTER_KEY_LEN: usize = 16;

/// A master key must be long enough to resist guessing. The message never
/// includes the key.
fn check_master_key(key: &Secret, what: &str) -> Result<()> {
    let k = key.expose();
    if k.trim().len() < MIN_MASTER_KEY_LEN || k.chars().any(char::is_whitespace) {
        return Err(Error::Config {
            file: "master key".into(),
            path: "general_settings.master_key".into(),
            expected: format!(
                "{what}: at least {MIN_MASTER_KEY_LEN} characters without spaces (for example `sk-` and 32 random hex digits)"
            ),
        });
    }
    Ok(())
}

/// Creates the data directory readable by its owner only (0700), and
/// tightens an existing one: it holds the master key, the metadata and the
/// counters.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making {} private (0700)", dir.display()), e))?;
    }
    Ok(())
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config.node.data_dir)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "the data directory is private");
        }
        config.master_key = Some(Secret::new("sk-configured-0123456789"));
        assert_eq!(
            resolve_master_key(&config, &rng).unwrap().1,
            KeySource::Configured
        );
        for short in ["", "sk-1234", "sk-0123456789a", "sk 0123456789abcdef"] {
            config.master_key = Some(Secret::new(short));
            let e = resolve_master_key(&config, &rng).unwrap_err().to_string();
            assert!(e.contains("at least 16"), "{e}");
            assert!(
                short.len() < 4 || !e.contains(short),
                "the key is never echoed: {e}"
            );
        }
    }
}
