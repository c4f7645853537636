//! What QEMU is confined to besides its seccomp filter: an unprivileged
//! uid/gid of its own per process, an empty chroot (see
//! [`super::cmdline::Confinement`]), and disks it gets as open files.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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

/// Disks handed to QEMU as open files in fd sets (`-add-fd`,
/// `file=/dev/fdset/N`): chrooted and unprivileged, QEMU cannot open paths,
/// yet it reopens a disk read-only when a migration (a snapshot) lets go of
/// it and read-write when `cont` takes it back. A writable disk's set holds
/// both kinds; QEMU picks the one whose access mode it needs.
#[derive(Debug, Default)]
pub struct FdSets {
    fds: Vec<OwnedFd>,
    /// (fd, set) pairs, in order.
    members: Vec<(RawFd, u32)>,
}

impl FdSets {
    /// Opens `path` for a disk and returns the name QEMU opens instead.
    pub fn add_disk(&mut self, path: &Path, read_only: bool) -> std::io::Result<PathBuf> {
        let set = self.members.last().map_or(1, |&(_, set)| set + 1);
        let mut open = |write: bool| -> std::io::Result<()> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)?;
            let fd = OwnedFd::from(file);
            self.members.push((fd.as_raw_fd(), set));
            self.fds.push(fd);
            Ok(())
        };
        if !read_only {
            open(true)?;
        }
        open(false)?;
        Ok(PathBuf::from(format!("/dev/fdset/{set}")))
    }

    /// The fds QEMU must inherit ([`inherit`] each).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.members.iter().map(|&(fd, _)| fd).collect()
    }

    /// `-add-fd` arguments for the command line.
    pub fn args(&self) -> Vec<OsString> {
        self.members
            .iter()
            .flat_map(|(fd, set)| ["-add-fd".into(), format!("fd={fd},set={set}").into()])
            .collect()
    }
}
