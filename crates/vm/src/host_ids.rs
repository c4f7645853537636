//! Host user and group ids of their own for VMM processes, so that one VM's
//! VMM can neither signal, trace nor read another's.
//!
//! [`IdRange`] is shared by both backends. [`claim_held`] is the QEMU
//! backend's claim: the id's lock file `<dir>/<uid>` is `flock`ed and the
//! open file is inherited by the VMM, so the claim lasts exactly as long as
//! the VMM process (and whatever holds the fd until then) and needs no
//! release; a crash frees it. Ids that any process on the host runs as are
//! skipped, so a range that overlaps real users or another firebuild
//! profile's VMs is harmless.

use std::fs::{self, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// A range of ids `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
}

impl IdRange {
    fn ids(self) -> impl Iterator<Item = u32> {
        (0..self.count).map_while(move |offset| self.first.checked_add(offset))
    }
}

/// Where QEMU processes' ids come from by default: above Firecracker's
/// default jail range, below the build sandbox's subordinate range.
pub const DEFAULT_QEMU_RANGE: IdRange = IdRange {
    first: 2_000_065_536,
    count: 65_536,
};

/// An id claimed for one VMM process: pass [`HeldId::lock`] to the process
/// (without close-on-exec) so the claim lives as long as it does.
#[derive(Debug)]
pub struct HeldId {
    pub uid: u32,
    pub gid: u32,
    pub lock: OwnedFd,
}

/// Claims an id of `range` that no running VMM of `dir` holds and no host
/// process runs as.
pub fn claim_held(dir: &Path, range: IdRange) -> Result<HeldId, String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let in_use = ids_of_running_processes();
    for uid in range.ids().filter(|id| !in_use.contains(id)) {
        let path = dir.join(uid.to_string());
        // Held read-only: the VMM gets an fd it cannot write through.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .and_then(|_| File::open(&path))
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                return Ok(HeldId {
                    uid,
                    gid: uid,
                    lock: file.into(),
                })
            }
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(format!("locking {}: {e}", path.display())),
        }
    }
    Err(format!(
        "all {} VMM ids from {} are in use by running VMs or other processes: \
         stop some, or widen the range",
        range.count, range.first
    ))
}

/// The real and effective uids and gids of every process on the host
/// (`/proc/<pid>/status`; `/proc/<pid>` itself is root's for processes that
/// changed their ids, so its owner tells nothing).
fn ids_of_running_processes() -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return ids;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        // A process may exit while we look: it holds no id then.
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(rest) = line
                .strip_prefix("Uid:")
                .or_else(|| line.strip_prefix("Gid:"))
            {
                ids.extend(
                    rest.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok()),
                );
            }
        }
    }
    ids
}

/// Opens `path` (a claim file) only to tell tests whether it is locked.
#[cfg(test)]
fn is_locked(path: &Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    flock(&file, FlockOperation::NonBlockingLockExclusive).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_claim_gets_its_own_id_until_its_lock_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let range = IdRange {
            first: 1_999_000_000,
            count: 2,
        };
        let a = claim_held(dir.path(), range).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "claims are tightened to root's alone");
        let b = claim_held(dir.path(), range).unwrap();
        assert_eq!(
            (a.uid, a.gid, b.uid),
            (1_999_000_000, 1_999_000_000, 1_999_000_001)
        );
        assert!(is_locked(&dir.path().join("1999000000")));
        let err = claim_held(dir.path(), range).unwrap_err();
        assert!(err.contains("all 2 VMM ids from 1999000000"), "{err}");
        drop(a);
        assert_eq!(claim_held(dir.path(), range).unwrap().uid, 1_999_000_000);
    }

    #[test]
    fn ids_a_process_runs_as_are_skipped() {
        // This test's own process runs as its uid.
        let dir = tempfile::tempdir().unwrap();
        let own = IdRange {
            first: rustix::process::getuid().as_raw(),
            count: 1,
        };
        let err = claim_held(dir.path(), own).unwrap_err();
        assert!(
            err.contains("in use by running VMs or other processes"),
            "{err}"
        );
    }
}
