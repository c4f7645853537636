//! A VM's disks in its run directory.
//!
//! By default ([`RootfsMode::Overlay`]) the stored image is shared: the run
//! directory holds a hard link to it (so a re-tag or `image rm` cannot take
//! the data from under a VM until the VM is purged), attached read-only,
//! plus a sparse ext4 scratch disk the guest init puts the overlay's upper
//! layer on. It costs what the VM writes and nothing per image byte.
//! [`RootfsMode::Copy`] gives the VM a private copy instead, for images that
//! need block-level writes to their root.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::copy::copy_image;
use crate::error::VmError;
use crate::rundir::RunDir;
use crate::snapshot_store::{self, Snapshot};
use crate::vmm::Disk;
use crate::volumes::VolumeMount;

/// `run --disk-size` when not given: the scratch disk is sparse, so this is
/// a ceiling on what the VM may write, not what it costs.
pub const DEFAULT_DISK_SIZE: u64 = 10 << 30;

/// Smallest scratch disk: room for ext4's own metadata and journal.
pub const MIN_DISK_SIZE: u64 = 16 << 20;

/// The drive id of the scratch disk.
pub const SCRATCH_ID: &str = "scratch";

/// The file name of the scratch disk in the run directory.
pub const SCRATCH_FILE: &str = "scratch.ext4";

/// How a VM gets its root filesystem (`run --rootfs-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// The stored image read-only and shared, a per-VM scratch disk, an
    /// overlay root assembled by the guest init.
    #[default]
    Overlay,
    /// A private copy of the image (reflink or sparse), written in place.
    Copy,
}

impl std::str::FromStr for RootfsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlay" => Ok(RootfsMode::Overlay),
            "copy" => Ok(RootfsMode::Copy),
            other => Err(format!(
                "unknown root filesystem mode {other:?}; expected overlay or copy"
            )),
        }
    }
}

impl std::fmt::Display for RootfsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RootfsMode::Overlay => "overlay",
            RootfsMode::Copy => "copy",
        })
    }
}

/// The disks of one VM, in the order the backend attaches them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisks {
    pub root: Disk,
    /// The scratch disk first (overlay mode), then a build step's layers,
    /// then volumes.
    pub disks: Vec<Disk>,
}

impl VmDisks {
    /// Makes the disks of a VM whose run directory was just created. On
    /// failure the caller removes the run directory (and what is in it).
    pub fn create(
        run_dir: &RunDir,
        image: &Path,
        mode: RootfsMode,
        disk_size: u64,
        layers: &[PathBuf],
        volumes: &[VolumeMount],
    ) -> Result<VmDisks, VmError> {
        let mut disks = Self::create_root(run_dir, image, mode, disk_size)?;
        disks
            .disks
            .extend(layers.iter().enumerate().map(|(i, path)| Disk {
                id: format!("layer{i}"),
                path: path.clone(),
                read_only: true,
                in_place: false,
            }));
        disks
            .disks
            .extend(volumes.iter().enumerate().map(|(i, v)| Disk {
                // Letters and digits: a valid Firecracker drive id.
                id: format!("vol{i}"),
                path: v.path.clone(),
                read_only: v.read_only,
                in_place: true,
            }));
        Ok(disks)
    }

    /// The root drive, and the scratch disk in overlay mode.
    fn create_root(
        run_dir: &RunDir,
        image: &Path,
        mode: RootfsMode,
        disk_size: u64,
    ) -> Result<VmDisks, VmError> {
        let root_path = run_dir.rootfs();
        match mode {
            RootfsMode::Copy => {
                let method =
                    copy_image(image, &root_path).map_err(|source| VmError::RootfsCopy {
                        from: image.to_owned(),
                        to: root_path.clone(),
                        source,
                    })?;
                tracing::debug!(?method, "root filesystem copied");
                Ok(VmDisks {
                    root: root_disk(root_path, false),
                    disks: Vec::new(),
                })
            }
            RootfsMode::Overlay => {
                let root = link_image(run_dir, image)?;
                let scratch = run_dir.file(SCRATCH_FILE);
                make_ext4(&scratch, disk_size, SCRATCH_ID)?;
                Ok(VmDisks {
                    root: root_disk(root, true),
                    disks: vec![scratch_disk(scratch)],
                })
            }
        }
    }

    /// The disks of a VM resumed from `snapshot`: its image linked as a
    /// stored image is, and a copy of its own (a reflink where the
    /// filesystem shares extents) of the scratch disk or private root, so
    /// no fork sees another's writes. QEMU's config drive is the source's:
    /// the restored guest has it attached already.
    pub fn from_snapshot(run_dir: &RunDir, snapshot: &Snapshot) -> Result<VmDisks, VmError> {
        let image = snapshot.file(snapshot_store::ROOTFS_FILE);
        let drive = snapshot.file(snapshot_store::CONFIG_DRIVE_FILE);
        if drive.exists() {
            copy_file(&drive, &run_dir.config_drive())?;
        }
        match snapshot.record.rootfs_mode {
            RootfsMode::Copy => Self::create_root(run_dir, &image, RootfsMode::Copy, 0),
            RootfsMode::Overlay => {
                let root = link_image(run_dir, &image)?;
                let scratch = run_dir.file(SCRATCH_FILE);
                copy_file(&snapshot.file(snapshot_store::SCRATCH_FILE), &scratch)?;
                Ok(VmDisks {
                    root: root_disk(root, true),
                    disks: vec![scratch_disk(scratch)],
                })
            }
        }
    }
}

/// Copies a disk file (reflink or sparse) to the new file `to`.
pub(crate) fn copy_file(from: &Path, to: &Path) -> Result<(), VmError> {
    copy_image(from, to)
        .map(drop)
        .map_err(|source| VmError::RootfsCopy {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        })
}

/// Hard-links the image into the run directory; on another filesystem the
/// VMM opens the image in place.
fn link_image(run_dir: &RunDir, image: &Path) -> Result<PathBuf, VmError> {
    let root_path = run_dir.rootfs();
    match std::fs::hard_link(image, &root_path) {
        Ok(()) => Ok(root_path),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // A running VM keeps its open file; an exited one loses its
            // image to a re-tag.
            tracing::warn!(
                image = %image.display(),
                run_dir = %run_dir.path().display(),
                "the run cache is on another filesystem than the image store: the image is used in place, not linked"
            );
            Ok(image.to_owned())
        }
        Err(source) => Err(VmError::io("linking the image into", &root_path, source)),
    }
}

fn scratch_disk(path: PathBuf) -> Disk {
    Disk {
        id: SCRATCH_ID.into(),
        path,
        read_only: false,
        in_place: false,
    }
}

fn root_disk(path: PathBuf, read_only: bool) -> Disk {
    Disk {
        id: "rootfs".into(),
        path,
        read_only,
        in_place: false,
    }
}

/// A new sparse file of `size` bytes (0600) with an empty ext4 labelled
/// `label` (lazy inode tables and journal: a few MiB written, whatever the
/// size).
pub(crate) fn make_ext4(path: &Path, size: u64, label: &str) -> Result<(), VmError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| VmError::io("creating the disk", path, e))?;
    file.set_len(size)
        .map_err(|e| VmError::io("sizing the disk", path, e))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", label])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(path)
        .output()
        .map_err(|e| VmError::io("running mkfs.ext4 (install e2fsprogs) for", path, e))?;
    if !out.status.success() {
        return Err(VmError::io(
            "formatting the disk",
            path,
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ));
    }
    Ok(())
}

/// Bytes the VM's writable disks take on the host (allocated blocks, not
/// their apparent size): the scratch disk, or the private copy.
pub fn allocated_bytes(run_dir: &Path, mode: RootfsMode) -> u64 {
    let file = match mode {
        RootfsMode::Overlay => run_dir.join(SCRATCH_FILE),
        RootfsMode::Copy => run_dir.join("rootfs.ext4"),
    };
    std::fs::metadata(file).map_or(0, |m| m.blocks() * 512)
}

/// The guest's node of the `n`-th virtio disk (0 is `/dev/vda`), named as
/// Linux names them: `vdz`, then `vdaa`.
pub fn virtio_disk_node(n: usize) -> String {
    let mut n = n;
    let mut name = Vec::new();
    loop {
        name.push(b'a' + (n % 26) as u8);
        match (n / 26).checked_sub(1) {
            Some(rest) => n = rest,
            None => break,
        }
    }
    name.reverse();
    format!("/dev/vd{}", String::from_utf8_lossy(&name))
}

/// The (device, inode) of a file: what decides whether a VM boots a given
/// stored image, whatever path it was reached by.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("image.ext4");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        p
    }

    #[test]
    fn overlay_links_the_image_and_makes_a_sparse_scratch_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let image = image(tmp.path());
        let run_dir = RunDir::create(&tmp.path().join("run"), "vm1").unwrap();
        let disks =
            VmDisks::create(&run_dir, &image, RootfsMode::Overlay, 1 << 30, &[], &[]).unwrap();
        assert!(disks.root.read_only);
        assert_eq!(file_identity(&disks.root.path), file_identity(&image));
        let scratch = &disks.disks[0];
        assert_eq!(
            (scratch.id.as_str(), scratch.read_only),
            (SCRATCH_ID, false)
        );
        let meta = std::fs::metadata(&scratch.path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert_eq!(meta.mode() & 0o777, 0o600);
        let used = allocated_bytes(run_dir.path(), RootfsMode::Overlay);
        assert!(used > 0 && used < 64 << 20, "{used} bytes allocated");
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&scratch.path)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("Filesystem volume name:   scratch"));
    }

    #[test]
    fn copy_mode_makes_a_private_writable_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let image = image(tmp.path());
        let run_dir = RunDir::create(&tmp.path().join("run"), "vm1").unwrap();
        let disks = VmDisks::create(&run_dir, &image, RootfsMode::Copy, 1 << 30, &[], &[]).unwrap();
        assert!(!disks.root.read_only && disks.disks.is_empty());
        assert_ne!(file_identity(&disks.root.path), file_identity(&image));
        assert_eq!(
            std::fs::read(&disks.root.path).unwrap(),
            std::fs::read(&image).unwrap()
        );
    }

    #[test]
    fn a_failed_format_is_reported_with_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let err = make_ext4(&tmp.path().join("s.ext4"), 4096, "s").unwrap_err();
        assert!(err.to_string().contains("s.ext4"), "{err}");
    }

    #[test]
    fn disk_nodes_are_named_as_linux_names_them() {
        let names = [0, 2, 25, 26, 27, 702].map(virtio_disk_node);
        assert_eq!(
            names,
            [
                "/dev/vda",
                "/dev/vdc",
                "/dev/vdz",
                "/dev/vdaa",
                "/dev/vdab",
                "/dev/vdaaa"
            ]
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("copy".parse::<RootfsMode>().unwrap(), RootfsMode::Copy);
        assert_eq!(
            "overlay".parse::<RootfsMode>().unwrap(),
            RootfsMode::Overlay
        );
        assert!("cow"
            .parse::<RootfsMode>()
            .unwrap_err()
            .contains("overlay or copy"));
    }
}
