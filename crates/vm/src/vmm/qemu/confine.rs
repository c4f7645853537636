//! What QEMU is confined to besides its seccomp filter: an unprivileged
//! uid/gid of its own per process and an empty chroot (see
//! [`super::cmdline::Confinement`]).

use std::os::fd::RawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::host_ids::{self, HeldId, IdRange};

/// Where QEMU processes' ids come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPool {
    pub range: IdRange,
    /// The claims' lock files; `None`: `<run-cache>/.qemu-ids`. VMs of
    /// several run caches (a profile's VMs and its build step VMs) should
    /// share one directory.
    pub dir: Option<PathBuf>,
}

impl Default for IdPool {
    fn default() -> Self {
        IdPool {
            range: host_ids::DEFAULT_QEMU_RANGE,
            dir: None,
        }
    }
}

impl IdPool {
    /// Claims an id for one QEMU process started for `run_cache`.
    pub fn claim(&self, run_cache: &Path) -> Result<HeldId, String> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| run_cache.join(".qemu-ids"));
        host_ids::claim_held(&dir, self.range)
    }
}

/// Creates `path` as the empty directory QEMU chroots into: mode 0, so the
/// unprivileged QEMU cannot even list it.
pub fn make_empty_root(path: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o000).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Clears close-on-exec on `fd` in a forked child before it execs QEMU, so
/// QEMU holds the claim while it runs. Async-signal-safe (one fcntl).
pub fn inherit(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD on an fd the parent keeps open until after the spawn.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
