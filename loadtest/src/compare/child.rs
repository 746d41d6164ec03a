//! The processes a comparison starts, and the one directory they write in.
//! Everything here is stopped and removed when dropped — at the end of a row,
//! on an error, or when `compare` is interrupted — so nothing outlives it
//! but a process killed with SIGKILL itself can leave behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Error;

/// How long stopped processes get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped.
pub(crate) struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    pub(crate) fn create() -> Result<Self, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("meridian-compare-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                // Left by an earlier process that had the same pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A new directory inside this one.
    pub(crate) fn subdir(&self, name: &str) -> Result<PathBuf, Error> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port of 127.0.0.1 free a moment ago (bound to port 0, then released).
pub(crate) fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The first executable file called `name` in the directories of
/// `path_var` (a `PATH` value), as a shell would find it.
pub(crate) fn find_program(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// One started process, its output going to a log file.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, Error> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Plain logs: they are read back into error messages.
            .env("NO_COLOR", "1")
            .spawn()
            .map_err(|source| Error::Spawn {
                program: format!("{name} ({})", command.get_program().to_string_lossy()),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The last `lines` lines of its log, escape sequences removed.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        strip_ansi(&tail)
    }

    /// Why it is not usable, with its log, for an error message.
    pub(crate) fn failure(&self, what: &str) -> String {
        format!(
            "{} {what}; last lines of {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail(15)
        )
    }
}

/// Removes terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The processes of one row (or the fake upstream), stopped together.
#[derive(Default)]
pub(crate) struct Group {
    pub(crate) procs: Vec<Proc>,
}

impl Group {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// An error naming the first process that has exited, with its log.
    pub(crate) fn check_alive(&mut self, row: &str) -> Result<(), Error> {
        for proc in &mut self.procs {
            if let Some(status) = proc.exited() {
                return Err(Error::Gateway {
                    row: row.to_owned(),
                    reason: proc.failure(&format!("exited ({status})")),
                });
            }
        }
        Ok(())
    }

    /// SIGTERM to every process (through `kill`: no unsafe code for
    /// `libc::kill`), up to [`STOP_GRACE`] for all to exit, then SIGKILL to
    /// the rest. Every child is waited for, so none is left a zombie.
    pub(crate) fn stop(&mut self) {
        let running: Vec<u32> = self
            .procs
            .iter_mut()
            .filter_map(|p| p.exited().is_none().then(|| p.pid()))
            .collect();
        if !running.is_empty() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .args(running.iter().map(u32::to_string))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while tokio::time::Instant::now() < deadline
                && self.procs.iter_mut().any(|p| p.exited().is_none())
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for proc in &mut self.procs {
            if proc.exited().is_none() {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
        }
        self.procs.clear();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn escape_sequences_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m stopped"),
            "2026  INFO stopped"
        );
    }

    #[test]
    fn programs_are_found_on_a_path_when_executable() {
        let dir = WorkDir::create().unwrap();
        let (a, b) = (dir.subdir("a").unwrap(), dir.subdir("b").unwrap());
        std::fs::write(a.join("tool"), "not executable").unwrap();
        std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert_eq!(find_program("tool", Some(&path)), Some(b.join("tool")));
        assert_eq!(find_program("other", Some(&path)), None);
        assert_eq!(find_program("tool", None), None);
    }

    #[test]
    fn groups_stop_their_processes_and_work_dirs_vanish() {
        let dir = WorkDir::create().unwrap();
        let path = dir.path().to_owned();
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut group = Group::default();
        group
            .procs
            .push(Proc::spawn("sleeper", command, &path.join("log")).unwrap());
        let pid = group.pids()[0];
        assert!(group.check_alive("row").is_ok());
        drop(group);
        // Waited for, so not even a zombie is left.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        drop(dir);
        assert!(!path.exists());
    }
}
