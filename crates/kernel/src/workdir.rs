//! Temporary build directories. Each is removed when its build ends, and
//! holds a locked `.lock` file while the build runs, so a later build can
//! tell a directory abandoned by a killed process (2 GB of objects) from one
//! in use, and remove it.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{flock, FlockOperation};
use tempfile::TempDir;

use crate::error::{Error, Result};

const PREFIX: &str = ".firebuild-kernel-build-";
const LOCK: &str = ".lock";
/// A directory without a lock file is only removed once it is this old:
/// a build creates its lock right after the directory.
const UNLOCKED_GRACE: Duration = Duration::from_secs(3600);

/// A locked temporary build directory (fields drop in order: the directory
/// goes first, then the lock is released).
#[derive(Debug)]
pub(crate) struct WorkDir {
    dir: TempDir,
    _lock: File,
}

impl WorkDir {
    /// Removes abandoned build directories in `parent`, then makes a new one.
    pub(crate) fn create(parent: &Path) -> Result<WorkDir> {
        fs::create_dir_all(parent).map_err(|e| Error::io("create work directory", parent, e))?;
        sweep(parent);
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(parent)
            .map_err(|e| Error::io("create a build directory in", parent, e))?;
        let lock_path = dir.path().join(LOCK);
        let lock = File::create(&lock_path).map_err(|e| Error::io("create", &lock_path, e))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io("lock", &lock_path, std::io::Error::from(e)))?;
        Ok(WorkDir { dir, _lock: lock })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Best effort: a directory that cannot be checked or removed is left.
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX));
        if !ours || !path.is_dir() {
            continue;
        }
        let abandoned = match File::open(path.join(LOCK)) {
            Ok(lock) => flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok(),
            Err(_) => fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > UNLOCKED_GRACE),
        };
        if abandoned {
            tracing::info!(path = %path.display(), "removing abandoned kernel build directory");
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove abandoned build directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn removes_abandoned_directories_but_not_live_or_fresh_ones() {
        let parent = tempfile::tempdir().unwrap();
        let live = WorkDir::create(parent.path()).unwrap();
        // Abandoned: lock file present, nobody holds it.
        let dead = parent.path().join(format!("{PREFIX}dead"));
        fs::create_dir_all(dead.join("build")).unwrap();
        File::create(dead.join(LOCK)).unwrap();
        // Just created by another build, lock not made yet: kept.
        let fresh = parent.path().join(format!("{PREFIX}fresh"));
        fs::create_dir(&fresh).unwrap();
        // Not ours.
        fs::create_dir(parent.path().join("vmlinux-dir")).unwrap();

        let second = WorkDir::create(parent.path()).unwrap();
        let left = names(parent.path());
        assert!(!left.contains(&format!("{PREFIX}dead")), "{left:?}");
        assert!(left.contains(&format!("{PREFIX}fresh")), "{left:?}");
        assert!(left.contains(&"vmlinux-dir".to_string()));
        assert!(live.path().is_dir() && second.path().is_dir());

        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists());
    }
}
