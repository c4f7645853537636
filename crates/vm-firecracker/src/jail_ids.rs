//! A jail identity of its own per VM, as the jailer's documentation
//! advises: each jailed Firecracker runs as a uid (and the same gid) from a
//! range, so one VM's process can neither signal nor read another's.
//!
//! A claim is the file `<chroot-base>/.firebuild-jail-ids/<uid>`, holding
//! the claiming VM's run directory, made under an `flock` on that directory.
//! `purge` releases it ([`release`]); a claim whose run directory is gone
//! (a VM removed by hand, a crash before its purge) is stale and reused.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use firebuild_firecracker::JailUser;
use rustix::fs::{flock, FlockOperation};

pub use firebuild_vm::host_ids::IdRange;

/// Far above the ids of users and of the build sandbox's subordinate range
/// (see the README), below the 32-bit overflow id.
pub const DEFAULT_RANGE: IdRange = IdRange {
    first: 2_000_000_000,
    count: 65_536,
};

const CLAIMS_DIR: &str = ".firebuild-jail-ids";

fn claims_dir(chroot_base: &Path) -> PathBuf {
    chroot_base.join(CLAIMS_DIR)
}

/// Claims a free id of `range` for the VM in `run_dir`.
pub fn claim(chroot_base: &Path, range: IdRange, run_dir: &Path) -> Result<JailUser, String> {
    let dir = claims_dir(chroot_base);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let _lock = lock(&dir)?;
    for offset in 0..range.count {
        let Some(uid) = range.first.checked_add(offset) else {
            break;
        };
        let path = dir.join(uid.to_string());
        let free = match fs::read_to_string(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => true,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
            Ok(owner) => !Path::new(owner.trim()).exists(),
        };
        if free {
            fs::write(&path, run_dir.as_os_str().as_encoded_bytes())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            return Ok(JailUser { uid, gid: uid });
        }
    }
    Err(format!(
        "all {} jail ids from {} are taken by VMs not yet purged: purge, or widen the range",
        range.count, range.first
    ))
}

/// Releases `uid` if the VM in `run_dir` holds it.
pub fn release(chroot_base: &Path, uid: u32, run_dir: &Path) -> Result<(), String> {
    let dir = claims_dir(chroot_base);
    let path = dir.join(uid.to_string());
    let _lock = match lock(&dir) {
        Ok(lock) => lock,
        Err(_) if !dir.exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    match fs::read_to_string(&path) {
        Ok(owner) if Path::new(owner.trim()) == run_dir => {
            fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

fn lock(dir: &Path) -> Result<File, String> {
    let file = File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
    flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| format!("locking {}: {e}", dir.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_gets_its_own_id_and_stale_or_released_ids_come_back() {
        let base = tempfile::tempdir().unwrap();
        let runs = tempfile::tempdir().unwrap();
        let range = IdRange {
            first: 5000,
            count: 2,
        };
        let vm = |name: &str| {
            let dir = runs.path().join(name);
            fs::create_dir_all(&dir).unwrap();
            dir
        };
        let (a, b, c) = (vm("a"), vm("b"), vm("c"));
        let ua = claim(base.path(), range, &a).unwrap();
        let ub = claim(base.path(), range, &b).unwrap();
        assert_eq!((ua.uid, ua.gid, ub.uid), (5000, 5000, 5001));
        let err = claim(base.path(), range, &c).unwrap_err();
        assert!(err.contains("all 2 jail ids from 5000 are taken"), "{err}");
        // Only its holder releases an id.
        release(base.path(), ua.uid, &c).unwrap();
        assert!(claim(base.path(), range, &c).is_err());
        release(base.path(), ua.uid, &a).unwrap();
        assert_eq!(claim(base.path(), range, &c).unwrap().uid, 5000);
        // A VM whose run directory is gone holds nothing.
        fs::remove_dir(&b).unwrap();
        let d = vm("d");
        assert_eq!(claim(base.path(), range, &d).unwrap().uid, 5001);
    }
}
