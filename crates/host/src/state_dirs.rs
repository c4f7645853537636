//! The directories firebuild keeps state and caches in. They hold image
//! contents (setuid binaries included), cloned private repositories, guest
//! memory and volumes: no other user of the host may reach them. Each is
//! created 0700, and one an older firebuild (or a user) left open is
//! tightened when a command opens it.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context as _;
use firebuild_kernel::KernelStore;
use firebuild_store::DirectoryStore;
use firebuild_vm::{SnapshotStore, VolumeStore};

use crate::settings::Settings;

/// Each store and cache of the settings in effect, opened private.
impl Settings {
    pub fn cache(&self) -> anyhow::Result<&Path> {
        open(&self.cache_dir, "the cache directory")
    }

    pub fn runs(&self) -> anyhow::Result<&Path> {
        open(&self.run_cache, "the run cache")
    }

    pub fn image_store(&self) -> anyhow::Result<DirectoryStore> {
        open(&self.rootfs_storage_root, "the image store").map(DirectoryStore::new)
    }

    pub fn kernel_store(&self) -> anyhow::Result<KernelStore> {
        open(&self.kernel_storage_root, "the kernel store").map(KernelStore::new)
    }

    pub fn volume_store(&self) -> anyhow::Result<VolumeStore> {
        open(&self.volume_storage_root, "the volume store").map(VolumeStore::new)
    }

    pub fn snapshot_store(&self) -> anyhow::Result<SnapshotStore> {
        open(&self.snapshot_storage_root, "the snapshot store").map(SnapshotStore::new)
    }
}

/// Makes `dir` (a root of the settings in effect, `what` naming it) ready
/// for a command: created 0700 with any missing parents, or tightened to
/// 0700 when group or others may enter it.
pub fn open<'a>(dir: &'a Path, what: &str) -> anyhow::Result<&'a Path> {
    make_private(dir).with_context(|| format!("preparing {what} {}", dir.display()))?;
    Ok(dir)
}

fn make_private(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // A directory others share by design (`/`, `/tmp`, `/var/tmp`) named as
    // a root is the user's mistake to see, not ours to lock everyone out of.
    if dir.parent().is_none() || mode & 0o1000 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "a shared directory is a firebuild root: other users may reach what firebuild keeps there; give firebuild a directory of its own"
        );
        return Ok(());
    }
    fs::set_permissions(dir, Permissions::from_mode(mode & 0o7700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_private_with_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("profiles/t/cache");
        open(&dir, "the cache").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("profiles")), 0o700);
    }

    #[test]
    fn an_open_directory_is_tightened_and_keeps_its_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("volumes");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("v"), "data").unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        open(&dir, "the volume store").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(fs::read_to_string(dir.join("v")).unwrap(), "data");
    }

    #[test]
    fn a_sticky_shared_directory_is_left_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("tmp");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, Permissions::from_mode(0o1777)).unwrap();
        open(&shared, "the cache").unwrap();
        assert_eq!(mode(&shared), 0o1777);
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("runs");
        fs::write(&file, "").unwrap();
        let err = format!("{:#}", open(&file, "the run cache").unwrap_err());
        assert!(err.starts_with("preparing the run cache "), "{err}");
    }
}
