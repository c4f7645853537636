//! The `directory` storage provider.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use firebuild_metadata::ImageMetadata;
use rustix::fs::{renameat_with, RenameFlags, CWD};

use crate::error::StoreError;
use crate::tag::Tag;

/// The root filesystem image file inside an image directory.
pub const ROOTFS_FILE: &str = "rootfs";
/// The metadata document inside an image directory.
pub const METADATA_FILE: &str = "metadata.json";
/// Staging area under the storage root; starts with `.` so no tag maps to it.
const STAGING_DIR: &str = ".staging";

/// A store of tagged root filesystems in a directory tree.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    root: PathBuf,
}

/// One stored image, as listed by [`DirectoryStore::list`].
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub tag: Tag,
    pub dir: PathBuf,
    pub metadata: ImageMetadata,
    /// Bytes used on disk by the rootfs file (sparse files count what is allocated).
    pub rootfs_bytes: u64,
}

impl StoredImage {
    pub fn rootfs_path(&self) -> PathBuf {
        self.dir.join(ROOTFS_FILE)
    }
}

impl DirectoryStore {
    /// A store rooted at `root` (the profile's `rootfs-storage-root`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirectoryStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the image with this tag lives (whether or not it exists).
    pub fn image_dir(&self, tag: &Tag) -> PathBuf {
        self.root
            .join(tag.org())
            .join(tag.name())
            .join(tag.version())
    }

    pub fn contains(&self, tag: &Tag) -> bool {
        self.image_dir(tag).join(METADATA_FILE).is_file()
    }

    /// The stored image with this tag.
    pub fn get(&self, tag: &Tag) -> Result<StoredImage, StoreError> {
        let dir = self.image_dir(tag);
        if !dir.join(METADATA_FILE).is_file() {
            return Err(StoreError::NotFound {
                tag: tag.to_string(),
                root: self.root.clone(),
            });
        }
        load(tag.clone(), dir)
    }

    /// Every stored image, sorted by tag. Directories that are not complete
    /// images (no metadata.json) are skipped.
    pub fn list(&self) -> Result<Vec<StoredImage>, StoreError> {
        let mut images = Vec::new();
        for org in subdirs(&self.root)? {
            for name in subdirs(&self.root.join(&org))? {
                for version in subdirs(&self.root.join(&org).join(&name))? {
                    let Ok(tag) = Tag::new(&org, &name, &version) else {
                        continue;
                    };
                    let dir = self.image_dir(&tag);
                    if dir.join(METADATA_FILE).is_file() {
                        images.push(load(tag, dir)?);
                    }
                }
            }
        }
        images.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(images)
    }

    /// Removes a stored image, and its name and org directories when they
    /// become empty.
    pub fn remove(&self, tag: &Tag) -> Result<(), StoreError> {
        let dir = self.image_dir(tag);
        if !dir.exists() {
            return Err(StoreError::NotFound {
                tag: tag.to_string(),
                root: self.root.clone(),
            });
        }
        // Move it out of the tree first so a crash mid-delete leaves no
        // half-removed image under the tag.
        let staging = self.staging_root()?;
        let doomed = staging.join(format!("rm-{}-{}", std::process::id(), unique_suffix()));
        fs::rename(&dir, &doomed).map_err(StoreError::io("moving out", &dir))?;
        fs::remove_dir_all(&doomed).map_err(StoreError::io("removing", &doomed))?;
        for parent in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            // Fails harmlessly when the directory still holds other images.
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    /// Starts a new image: files are written into the returned staging
    /// directory (on the same filesystem as the store) and appear under the
    /// tag only when [`Staging::publish`] succeeds. Dropping the staging
    /// without publishing removes it.
    pub fn stage(&self, tag: &Tag) -> Result<Staging, StoreError> {
        let staging = self.staging_root()?;
        let dir = staging.join(format!(
            "{}-{}-{}-{}",
            tag.name(),
            tag.version(),
            std::process::id(),
            unique_suffix()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(StoreError::io("creating staging directory", &dir))?;
        Ok(Staging {
            dir,
            target: self.image_dir(tag),
            published: false,
        })
    }

    /// Removes staging leftovers of builds that crashed (killed with -9,
    /// power loss). Staging entries of live processes are kept.
    pub fn clean_stale_staging(&self) -> Result<usize, StoreError> {
        let staging = self.root.join(STAGING_DIR);
        let entries = match fs::read_dir(&staging) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io("reading", &staging)(e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner_alive =
                owner_pid(&name).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !owner_alive {
                let path = entry.path();
                fs::remove_dir_all(&path)
                    .map_err(StoreError::io("removing stale staging", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The staging directory, 0700: images in the making are nobody
    /// else's business until published.
    fn staging_root(&self) -> Result<PathBuf, StoreError> {
        let staging = self.root.join(STAGING_DIR);
        fs::create_dir_all(&staging)
            .and_then(|()| {
                fs::set_permissions(
                    &staging,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
            })
            .map_err(StoreError::io("creating", &staging))?;
        Ok(staging)
    }
}

/// An image being written; see [`DirectoryStore::stage`].
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Staging {
    /// The directory to write `rootfs` and `metadata.json` into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rootfs_path(&self) -> PathBuf {
        self.dir.join(ROOTFS_FILE)
    }

    /// Writes `metadata.json` into the staging directory.
    pub fn write_metadata(&self, metadata: &ImageMetadata) -> Result<(), StoreError> {
        let path = self.dir.join(METADATA_FILE);
        let json =
            serde_json::to_vec_pretty(metadata).map_err(|source| StoreError::BadMetadata {
                path: path.clone(),
                source,
            })?;
        fs::write(&path, json).map_err(StoreError::io("writing", &path))
    }

    /// Makes the staged image visible under its tag in one step. An image
    /// already stored under the tag is atomically swapped out and deleted, so
    /// readers see either the old or the new image, never a missing tag.
    pub fn publish(mut self) -> Result<PathBuf, StoreError> {
        for (file, what) in [
            (ROOTFS_FILE, "the rootfs file"),
            (METADATA_FILE, "metadata.json"),
        ] {
            if !self.dir.join(file).is_file() {
                return Err(StoreError::Incomplete {
                    path: self.dir.clone(),
                    missing: what,
                });
            }
        }
        if let Some(parent) = self.target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(StoreError::io("creating", parent))?;
        }
        let target = self.target.clone();
        if target.exists() {
            // rename(2) cannot replace a non-empty directory: swap the two in
            // one step; self.dir then holds the previous image and Drop
            // removes it.
            renameat_with(CWD, &self.dir, CWD, &target, RenameFlags::EXCHANGE)
                .map_err(|e| StoreError::io("replacing", &target)(e.into()))?;
            return Ok(target);
        }
        fs::rename(&self.dir, &target).map_err(StoreError::io("publishing into", &target))?;
        self.published = true;
        Ok(target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.dir.display(), error = %e, "could not remove staging directory");
                }
            }
        }
    }
}

fn load(tag: Tag, dir: PathBuf) -> Result<StoredImage, StoreError> {
    let md_path = dir.join(METADATA_FILE);
    let bytes = fs::read(&md_path).map_err(StoreError::io("reading", &md_path))?;
    let metadata = serde_json::from_slice(&bytes).map_err(|source| StoreError::BadMetadata {
        path: md_path,
        source,
    })?;
    let rootfs_bytes = allocated_bytes(&dir.join(ROOTFS_FILE));
    Ok(StoredImage {
        tag,
        dir,
        metadata,
        rootfs_bytes,
    })
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Names of the visible subdirectories of `dir` (none when it is missing).
fn subdirs(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("reading", dir)(e)),
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect())
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The pid embedded in a staging entry name (`<name>-<version>-<pid>-<nanos>`).
fn owner_pid(entry: &str) -> Option<u32> {
    let mut parts = entry.rsplit('-');
    parts.next()?;
    parts.next()?.parse().ok()
}
