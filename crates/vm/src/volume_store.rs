//! The volume store: named, persistent, sparse ext4 disks (`firebuild
//! volume create|ls|inspect|rm`).
//!
//! Each volume is a directory `<root>/<name>/` holding `volume.ext4` and
//! `volume.json`. A volume is made in a staging directory and renamed into
//! place, and removed by renaming it aside first, so a reader never sees a
//! half-made or half-removed volume.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::disks::{make_ext4, MIN_DISK_SIZE};
use crate::error::VmError;
use crate::names::{name_problem, random_id};

/// `volume create --size` when not given.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;

/// Smallest volume: room for ext4's own metadata and journal.
pub const MIN_VOLUME_SIZE: u64 = MIN_DISK_SIZE;

const DISK_FILE: &str = "volume.ext4";
const RECORD_FILE: &str = "volume.json";

/// A volume's filesystem (`volume create --fs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFs {
    #[default]
    Ext4,
}

impl std::str::FromStr for VolumeFs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ext4" => Ok(VolumeFs::Ext4),
            other => Err(format!(
                "unsupported filesystem {other:?}; volumes are ext4 (the guest kernel's built-in filesystem)"
            )),
        }
    }
}

impl std::fmt::Display for VolumeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ext4")
    }
}

/// One stored volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub fs: VolumeFs,
    /// Apparent size in bytes (what the guest sees).
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// The disk file (not stored: it follows the store's location).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Volume {
    /// Bytes the volume takes on the host (allocated blocks).
    pub fn allocated_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.blocks() * 512)
    }
}

/// The volumes of one profile, under one directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        VolumeStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates volume `name`: a sparse `size`-byte file with an empty
    /// filesystem. Fails, leaving nothing, if the name is taken.
    pub fn create(&self, name: &str, size: u64, fs: VolumeFs) -> Result<Volume, VmError> {
        check_name(name)?;
        if size < MIN_VOLUME_SIZE {
            return Err(VmError::Resource {
                what: "--size (bytes)",
                min: MIN_VOLUME_SIZE,
                value: size,
            });
        }
        let dir = self.root.join(name);
        if dir.exists() {
            return Err(VmError::VolumeExists { name: name.into() });
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| VmError::io("creating the volume store", &self.root, e))?;
        let staging = self.root.join(format!(".staging-{name}-{}", random_id()));
        std::fs::create_dir(&staging)
            .map_err(|e| VmError::io("creating the volume's staging directory", &staging, e))?;
        let staged = (|| {
            let volume = Volume {
                name: name.into(),
                fs,
                size,
                created: OffsetDateTime::now_utc(),
                path: staging.join(DISK_FILE),
            };
            // ext4 labels hold 16 bytes.
            let label: String = name.chars().take(16).collect();
            make_ext4(&volume.path, size, &label)?;
            let record = serde_json::to_vec_pretty(&volume).map_err(VmError::GuestMetadata)?;
            let record_path = staging.join(RECORD_FILE);
            std::fs::write(&record_path, record)
                .map_err(|e| VmError::io("writing", &record_path, e))?;
            // Renaming onto an existing, non-empty directory fails: two
            // concurrent creates of one name cannot both win.
            std::fs::rename(&staging, &dir).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTEMPTY | libc::EEXIST) => VmError::VolumeExists { name: name.into() },
                _ => VmError::io("publishing the volume", &dir, e),
            })?;
            Ok(Volume {
                path: dir.join(DISK_FILE),
                ..volume
            })
        })();
        if staged.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        staged
    }

    /// Volume `name`, or [`VmError::VolumeNotFound`].
    pub fn get(&self, name: &str) -> Result<Volume, VmError> {
        check_name(name)?;
        let dir = self.root.join(name);
        let record_path = dir.join(RECORD_FILE);
        let text = match std::fs::read(&record_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VmError::VolumeNotFound {
                    name: name.into(),
                    store: self.root.clone(),
                })
            }
            Err(e) => return Err(VmError::io("reading", &record_path, e)),
        };
        let mut volume: Volume =
            serde_json::from_slice(&text).map_err(|source| VmError::VolumeRecord {
                path: record_path,
                source,
            })?;
        volume.path = dir.join(DISK_FILE);
        Ok(volume)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VmError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(VmError::io("reading the volume store", &self.root, e)),
        };
        let mut volumes = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| VmError::io("reading the volume store", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name_problem(&name).is_some() {
                continue; // staging and removal directories
            }
            match self.get(&name) {
                Ok(v) => volumes.push(v),
                Err(e) => tracing::warn!("skipping volume {name}: {e}"),
            }
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Removes volume `name` and its data. The caller checks it is unused.
    pub fn remove(&self, name: &str) -> Result<(), VmError> {
        let volume = self.get(name)?;
        let dir = self.root.join(&volume.name);
        let aside = self.root.join(format!(".removing-{name}-{}", random_id()));
        std::fs::rename(&dir, &aside).map_err(|e| VmError::io("removing the volume", &dir, e))?;
        std::fs::remove_dir_all(&aside).map_err(|e| VmError::io("removing", &aside, e))
    }
}

fn check_name(name: &str) -> Result<(), VmError> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(VmError::VolumeName {
            name: name.into(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(tmp.path().join("volumes"));
        assert!(store.list().unwrap().is_empty());
        let v = store.create("data", 64 << 20, VolumeFs::Ext4).unwrap();
        assert_eq!(v.path, tmp.path().join("volumes/data/volume.ext4"));
        assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 64 << 20);
        assert!(v.allocated_bytes() < 16 << 20, "sparse");
        assert_eq!(store.get("data").unwrap(), v);
        assert!(matches!(
            store.create("data", 64 << 20, VolumeFs::Ext4),
            Err(VmError::VolumeExists { .. })
        ));
        store.create("logs", 32 << 20, VolumeFs::Ext4).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["data", "logs"]);
        store.remove("data").unwrap();
        assert!(matches!(
            store.get("data"),
            Err(VmError::VolumeNotFound { .. })
        ));
        let left: Vec<_> = std::fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["logs"], "no staging or removal directory left");
    }

    #[test]
    fn bad_requests_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(tmp.path().join("volumes"));
        for name in ["", "../x", "a/b", "-x", &"x".repeat(41)] {
            let err = store.create(name, 64 << 20, VolumeFs::Ext4).unwrap_err();
            assert!(matches!(err, VmError::VolumeName { .. }), "{name}: {err}");
        }
        assert!(matches!(
            store.create("tiny", 4096, VolumeFs::Ext4),
            Err(VmError::Resource { .. })
        ));
        assert!("xfs".parse::<VolumeFs>().unwrap_err().contains("ext4"));
        let left = std::fs::read_dir(store.root()).map_or(0, |d| d.count());
        assert_eq!(left, 0);
    }
}
