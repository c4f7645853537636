//! The snapshot store (`firebuild snapshot create|ls|inspect|rm`): tagged
//! snapshots of running VMs, laid out and published like stored images
//! (the same [`DirectoryStore`] mechanism under its own root), so a reader
//! sees a whole snapshot or none.
//!
//! `<root>/<org>/<name>/<version>/` holds:
//! - `snapshot.json`: the [`SnapshotRecord`] (what a restore must match);
//! - `metadata.json`: the source VM's image metadata;
//! - `rootfs`: the source's image, hard-linked (it stays while the snapshot
//!   does, whatever happens to its tag), or the VM's private root copy;
//! - `scratch.ext4`: the overlay's upper layer at snapshot time;
//! - `state` and (QEMU from a boot, Firecracker) `memory`: the VMM's.

use std::io::Read;
use std::path::{Path, PathBuf};

use firebuild_metadata::ImageMetadata;
use firebuild_store::{DirectoryStore, StoreError, Tag, METADATA_FILE};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::disks::RootfsMode;
use crate::error::VmError;
use crate::vmm::{VmmKind, SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE};

/// The record of a snapshot.
pub const RECORD_FILE: &str = "snapshot.json";
/// The source's scratch disk in a snapshot.
pub const SCRATCH_FILE: &str = "scratch.ext4";
/// The source's root drive in a snapshot.
pub const ROOTFS_FILE: &str = firebuild_store::ROOTFS_FILE;
/// QEMU's config drive of the source (the restored guest still has it).
pub const CONFIG_DRIVE_FILE: &str = "config.drive";

/// What a snapshot was taken from: a restore must match all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub tag: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// The VM it was taken of.
    pub source_vm: String,
    pub vmm: VmmKind,
    /// The VMM's version string at snapshot time.
    pub vmm_version: String,
    /// What the backend needs to restore it (accelerator, machine ...).
    pub vmm_details: serde_json::Value,
    pub kernel: PathBuf,
    #[serde(default)]
    pub kernel_id: String,
    /// `sha256:<hex>` of the kernel file.
    pub kernel_digest: String,
    /// The kernel file as it was then: a restore that finds it so skips
    /// hashing it.
    #[serde(default)]
    pub kernel_stamp: Option<FileStamp>,
    /// The source's command line: the restored kernel has already parsed it.
    pub kernel_args: String,
    pub cpus: u32,
    pub mem_mib: u32,
    /// The image tag the source booted, and the image's digest.
    pub image: String,
    #[serde(default)]
    pub image_digest: Option<String>,
    pub rootfs_mode: RootfsMode,
    /// The source's network identity (forks need a network then too).
    #[serde(default)]
    pub network: Option<SourceNetwork>,
    pub command: Vec<String>,
    pub shutdown_timeout_secs: u64,
    #[serde(default)]
    pub has_healthcheck: bool,
}

/// The source VM's place on its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceNetwork {
    pub network_name: String,
    pub mac: String,
    pub ip: String,
}

/// A stored snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub tag: Tag,
    pub dir: PathBuf,
    pub record: SnapshotRecord,
    /// The source VM's image metadata.
    pub image: ImageMetadata,
}

impl Snapshot {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Bytes its files take on the host (the linked image not counted).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        [
            SNAPSHOT_STATE_FILE,
            SNAPSHOT_MEMORY_FILE,
            SCRATCH_FILE,
            CONFIG_DRIVE_FILE,
        ]
        .iter()
        .filter_map(|f| std::fs::metadata(self.file(f)).ok())
        .map(|m| m.blocks() * 512)
        .sum()
    }
}

/// The store of snapshots under one root (profile `snapshot-storage-root`).
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    tree: DirectoryStore,
}

/// A snapshot being written: files go into [`SnapshotStaging::dir`], and
/// appear under the tag only on [`SnapshotStaging::publish`]; dropped
/// unpublished, it is removed.
pub struct SnapshotStaging {
    tag: Tag,
    staging: firebuild_store::Staging,
}

impl SnapshotStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SnapshotStore {
            tree: DirectoryStore::new(root),
        }
    }

    pub fn root(&self) -> &Path {
        self.tree.root()
    }

    fn error(&self, tag: &Tag, e: StoreError) -> VmError {
        VmError::Restore {
            tag: tag.to_string(),
            reason: match e {
                StoreError::NotFound { .. } => format!(
                    "no such snapshot in {}; see `firebuild snapshot ls`",
                    self.root().display()
                ),
                other => other.to_string(),
            },
        }
    }

    /// Starts a snapshot under `tag`; refused if the tag is taken.
    pub fn begin(&self, tag: &Tag) -> Result<SnapshotStaging, VmError> {
        if self.tree.image_dir(tag).exists() {
            return Err(VmError::Restore {
                tag: tag.to_string(),
                reason: "a snapshot with this tag exists; choose another tag, or `firebuild snapshot rm` it first".into(),
            });
        }
        // Leftovers of snapshots whose writer died (kill -9, power loss).
        if let Err(e) = self.tree.clean_stale_staging() {
            tracing::warn!("cleaning stale snapshot staging: {e}");
        }
        let staging = self.tree.stage(tag).map_err(|e| self.error(tag, e))?;
        // Guest memory holds the guest's secrets: the host's root only.
        std::fs::set_permissions(
            staging.dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| VmError::io("restricting", staging.dir(), e))?;
        Ok(SnapshotStaging {
            tag: tag.clone(),
            staging,
        })
    }

    /// The snapshot under `tag`, checked to be whole.
    pub fn get(&self, tag: &Tag) -> Result<Snapshot, VmError> {
        let dir = self.tree.image_dir(tag);
        if !dir.exists() {
            return Err(self.error(
                tag,
                StoreError::NotFound {
                    tag: tag.to_string(),
                    root: self.root().to_owned(),
                },
            ));
        }
        let incomplete = |what: &str| {
            VmError::Restore {
            tag: tag.to_string(),
            reason: format!(
                "it is incomplete ({what} is missing in {}); `firebuild snapshot rm {tag}` and take it again",
                dir.display()
            ),
        }
        };
        let record: SnapshotRecord = read_json(&dir.join(RECORD_FILE))
            .map_err(|e| e.map_or_else(|| incomplete(RECORD_FILE), |r| self.bad(tag, r)))?;
        let image: ImageMetadata = read_json(&dir.join(METADATA_FILE))
            .map_err(|e| e.map_or_else(|| incomplete(METADATA_FILE), |r| self.bad(tag, r)))?;
        let mut needed = vec![SNAPSHOT_STATE_FILE, ROOTFS_FILE];
        if record.rootfs_mode == RootfsMode::Overlay {
            needed.push(SCRATCH_FILE);
        }
        if record.vmm_details["memory_file"] == true {
            needed.push(SNAPSHOT_MEMORY_FILE);
        }
        if let Some(missing) = needed.iter().find(|f| !dir.join(f).is_file()) {
            return Err(incomplete(missing));
        }
        Ok(Snapshot {
            tag: tag.clone(),
            dir,
            record,
            image,
        })
    }

    fn bad(&self, tag: &Tag, reason: String) -> VmError {
        VmError::Restore {
            tag: tag.to_string(),
            reason: format!("{reason}; `firebuild snapshot rm {tag}` and take it again"),
        }
    }

    /// Every snapshot, sorted by tag; broken ones are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Snapshot>, VmError> {
        let images = self.tree.list().map_err(|e| VmError::Restore {
            tag: "*".into(),
            reason: e.to_string(),
        })?;
        Ok(images
            .into_iter()
            .filter_map(|i| match self.get(&i.tag) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("skipping: {e}");
                    None
                }
            })
            .collect())
    }

    /// Whether anything, whole or not, is stored under `tag`.
    pub fn contains(&self, tag: &Tag) -> bool {
        self.tree.image_dir(tag).exists()
    }

    /// Removes the snapshot under `tag` (the caller checks no VM runs from it).
    pub fn remove(&self, tag: &Tag) -> Result<(), VmError> {
        self.tree.remove(tag).map_err(|e| self.error(tag, e))
    }
}

impl SnapshotStaging {
    pub fn dir(&self) -> &Path {
        self.staging.dir()
    }

    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// Writes the record and the image metadata (last: the store publishes
    /// only a directory that has it), then publishes.
    pub fn publish(
        self,
        record: &SnapshotRecord,
        image: &ImageMetadata,
    ) -> Result<PathBuf, VmError> {
        let fail = |reason: String| VmError::Restore {
            tag: self.tag.to_string(),
            reason,
        };
        let path = self.dir().join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(record).map_err(|e| fail(e.to_string()))?;
        write_synced(&path, &json).map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
        self.staging
            .write_metadata(image)
            .map_err(|e| fail(e.to_string()))?;
        let tag = self.tag.clone();
        self.staging.publish().map_err(|e| VmError::Restore {
            tag: tag.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Reads a JSON document: `Err(None)` when the file is missing,
/// `Err(Some(reason))` when it cannot be read or parsed.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Option<String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(format!("reading {}: {e}", path.display()))),
    };
    serde_json::from_slice(&bytes).map_err(|e| Some(format!("{}: {e}", path.display())))
}

fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// A file's identity and last change: the same stamp means the same
/// contents (files are not written behind their mtime's back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
        })
    }
}

/// `sha256:<hex>` of a file's contents.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(tag: &str) -> SnapshotRecord {
        SnapshotRecord {
            tag: tag.into(),
            created: OffsetDateTime::UNIX_EPOCH,
            source_vm: "src".into(),
            vmm: VmmKind::Qemu,
            vmm_version: "QEMU emulator version 7.2".into(),
            vmm_details: serde_json::json!({ "memory_file": true }),
            kernel: "/k/vmlinux".into(),
            kernel_id: "k".into(),
            kernel_digest: "sha256:00".into(),
            kernel_stamp: None,
            kernel_args: "console=ttyS0".into(),
            cpus: 1,
            mem_mib: 256,
            image: "fbt/app:1".into(),
            image_digest: None,
            rootfs_mode: RootfsMode::Overlay,
            network: None,
            command: vec!["/bin/sh".into()],
            shutdown_timeout_secs: 15,
            has_healthcheck: false,
        }
    }

    fn write_files(dir: &Path, files: &[&str]) {
        for f in files {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
    }

    #[test]
    fn published_snapshots_are_whole_listed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(tmp.path());
        let tag: Tag = "fbt/app:1".parse().unwrap();
        let staging = store.begin(&tag).unwrap();
        let staged = staging.dir().to_owned();
        write_files(
            &staged,
            &[
                SNAPSHOT_STATE_FILE,
                SNAPSHOT_MEMORY_FILE,
                ROOTFS_FILE,
                SCRATCH_FILE,
            ],
        );
        assert!(store.get(&tag).is_err(), "not visible before publish");
        let image = crate::guest::tests::image();
        staging.publish(&record("fbt/app:1"), &image).unwrap();
        assert!(!staged.exists());
        let snap = store.get(&tag).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&snap.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "a snapshot is private");
        assert_eq!(snap.record.mem_mib, 256);
        assert_eq!(snap.image, image);
        assert_eq!(store.list().unwrap().len(), 1);
        let err = store.begin(&tag).err().unwrap().to_string();
        assert!(err.contains("exists"), "{err}");

        // A snapshot that lost a file says which, and how to recover.
        std::fs::remove_file(snap.file(SNAPSHOT_MEMORY_FILE)).unwrap();
        let err = store.get(&tag).unwrap_err().to_string();
        assert!(err.contains("incomplete (memory is missing"), "{err}");
        assert!(err.contains("snapshot rm fbt/app:1"), "{err}");
        assert!(store.list().unwrap().is_empty());

        store.remove(&tag).unwrap();
        let err = store.get(&tag).unwrap_err().to_string();
        assert!(err.contains("no such snapshot"), "{err}");
    }

    #[test]
    fn an_unpublished_snapshot_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(tmp.path());
        let tag: Tag = "fbt/app:2".parse().unwrap();
        let staging = store.begin(&tag).unwrap();
        write_files(staging.dir(), &[SNAPSHOT_STATE_FILE]);
        let staged = staging.dir().to_owned();
        drop(staging);
        assert!(!staged.exists());
        assert!(store.list().unwrap().is_empty());
        assert!(store.get(&tag).is_err());
    }

    #[test]
    fn digests_name_the_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            file_digest(&p).unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
