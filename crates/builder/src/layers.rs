//! The step cache: one overlayfs layer (a directory diff) per build step.
//!
//! Layout under `<cache>/build/`:
//! - `layers/<id>/diff/` — the files a step added or changed (overlayfs
//!   upper-dir format: whiteouts are 0/0 character devices, opaque
//!   directories carry `user.overlay.opaque`, as every overlay here is
//!   mounted with `userxattr`); `layers/<id>/meta.json` says which layer it
//!   sits on and in which [`LAYER_FORMAT`]. `<id>` is the first 24 hex digits of the
//!   step's cache key, so a lookup is one `stat`.
//! - `tmp/<pid>-<n>/` — a step in progress; renamed into `layers/` when it
//!   completes, so a crashed build leaves no half-written layer under a key.
//! - `refs/<tag>.json` — the layers a stored image was built from (kept by
//!   `prune`; reused directly when a later build says `FROM <tag>`).
//! - `mounts/<hash>/` — `RUN --mount=type=cache` directories.
//!
//! Builds hold a shared `flock` on `lock`; `prune` takes it exclusively.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{BuildError, Result};

/// Length of a layer id in hex digits (96 bits of the key).
const ID_LEN: usize = 24;

/// The diff format of the layers this build writes. 1: opaque directories
/// marked with `trusted.overlay.*` (not readable from the RUN sandbox's user
/// namespace); 2: `user.overlay.*`. Layers of another format count as
/// missing and are rebuilt.
pub const LAYER_FORMAT: u32 = 2;

/// A cache key: the hash chain of a stage's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The key of the state reached by applying `step` (already expanded,
    /// plus the content hashes of the files it reads) to `parent`.
    pub fn derive(parent: Option<&Key>, step: &str) -> Key {
        let mut h = Sha256::new();
        if let Some(p) = parent {
            h.update(p.0);
        }
        h.update((step.len() as u64).to_le_bytes());
        h.update(step.as_bytes());
        Key(h.finalize().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn layer_id(&self) -> LayerId {
        LayerId(self.hex()[..ID_LEN].to_owned())
    }
}

/// The directory name of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LayerId(pub String);

impl std::fmt::Display for LayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `layers/<id>/meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub id: LayerId,
    pub parent: Option<LayerId>,
    /// The full key, hex.
    pub key: String,
    /// What made it (the instruction), for `prune` reports and debugging.
    pub description: String,
    /// Seconds since the epoch.
    pub created: i64,
    /// The diff holds nothing: skipped when mounting.
    pub empty: bool,
    /// [`LAYER_FORMAT`] of the diff (absent: 1).
    #[serde(default = "first_format")]
    pub format: u32,
}

fn first_format() -> u32 {
    1
}

/// `refs/<tag>.json`: what a stored image was built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRef {
    pub tag: String,
    /// `sha256:` digest of the stored rootfs file it describes.
    pub rootfs_digest: Option<String>,
    /// The final stage's filesystem, without the guest init layer.
    pub top: Option<LayerId>,
    /// The key of `top`'s state.
    pub key: String,
    /// The key of the written ext4 image (state, guest init and size).
    #[serde(default)]
    pub output_key: String,
    /// Every layer the build used (all stages), kept by `prune`.
    pub layers: Vec<LayerId>,
}

/// The step cache of one cache directory.
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
    _lock: File,
}

impl LayerStore {
    /// Opens (creating) the cache under `<cache_dir>/build` and takes the
    /// shared build lock; stale in-progress layers of dead builds are removed.
    pub fn open(cache_dir: &Path) -> Result<LayerStore> {
        Self::open_with(cache_dir, rustix::fs::FlockOperation::LockShared)
    }

    pub(crate) fn open_exclusive(cache_dir: &Path) -> Result<LayerStore> {
        Self::open_with(cache_dir, rustix::fs::FlockOperation::LockExclusive)
    }

    fn open_with(cache_dir: &Path, op: rustix::fs::FlockOperation) -> Result<LayerStore> {
        for sub in ["layers", "tmp", "refs", "mounts"] {
            let p = cache_dir.join("build").join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .and_then(|()| fs::set_permissions(&p, fs::Permissions::from_mode(0o700)))
                .map_err(BuildError::io("creating cache directory", &p))?;
        }
        // Canonical: overlay options and mount points must not depend on the
        // caller's working directory.
        let root = fs::canonicalize(cache_dir.join("build"))
            .map_err(BuildError::io("resolving", cache_dir))?;
        // Layers hold what untrusted steps wrote, setuid-root files and file
        // capabilities included: no other user of the host may reach them.
        fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(BuildError::io("restricting", &root))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(BuildError::io("opening", &lock_path))?;
        rustix::fs::flock(&lock, op).map_err(BuildError::errno("locking", &lock_path))?;
        let store = LayerStore { root, _lock: lock };
        store.clean_stale_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn diff_dir(&self, id: &LayerId) -> PathBuf {
        self.root.join("layers").join(&id.0).join("diff")
    }

    /// The layer with this id, if it is complete in the cache.
    pub fn get(&self, id: &LayerId) -> Option<LayerMeta> {
        let path = self.root.join("layers").join(&id.0).join("meta.json");
        let bytes = fs::read(path).ok()?;
        let meta: LayerMeta = serde_json::from_slice(&bytes).ok()?;
        (meta.format == LAYER_FORMAT).then_some(meta)
    }

    /// The layer cached for `key`, if any (and whole: every ancestor too).
    pub fn lookup(&self, key: &Key) -> Option<LayerMeta> {
        let meta = self.get(&key.layer_id())?;
        if meta.key != key.hex() {
            return None;
        }
        self.chain(Some(&meta.id)).ok()?;
        Some(meta)
    }

    /// The layers from the bottom up to `top` (inclusive), empty ones too.
    pub fn chain(&self, top: Option<&LayerId>) -> Result<Vec<LayerId>> {
        let mut out = Vec::new();
        let mut cur = top.cloned();
        while let Some(id) = cur {
            let meta = self.get(&id).ok_or_else(|| BuildError::Cache {
                path: self.root.join("layers").join(&id.0),
                message:
                    "a layer of the build is missing (pruned while in use?); run the build again"
                        .into(),
            })?;
            if out.len() > 10_000 {
                return Err(BuildError::Cache {
                    path: self.root.clone(),
                    message: "layer chain loops; remove the cache directory".into(),
                });
            }
            out.push(id);
            cur = meta.parent;
        }
        out.reverse();
        Ok(out)
    }

    /// The non-empty layers up to `top`, bottom first (what overlayfs mounts).
    pub fn mount_chain(&self, top: Option<&LayerId>) -> Result<Vec<LayerId>> {
        Ok(self
            .chain(top)?
            .into_iter()
            .filter(|id| self.get(id).is_some_and(|m| !m.empty))
            .collect())
    }

    /// A fresh in-progress layer (removed on drop unless committed).
    pub fn new_work(&self) -> Result<WorkLayer> {
        let dir = self.root.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            crate::util::unique_suffix()
        ));
        for sub in ["diff", "work", "merged"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(BuildError::io("creating", &p))?;
        }
        Ok(WorkLayer {
            dir,
            committed: false,
        })
    }

    /// Stores `work` as the layer for `key` on top of `parent`. If another
    /// build stored the same key meanwhile, that one is kept.
    pub fn commit(
        &self,
        mut work: WorkLayer,
        key: &Key,
        parent: Option<&LayerId>,
        description: &str,
    ) -> Result<LayerMeta> {
        let id = key.layer_id();
        // Only the diff is kept: overlay work dirs, mount points and the
        // step's scratch files go.
        if let Ok(entries) = fs::read_dir(&work.dir) {
            for e in entries.flatten().filter(|e| e.file_name() != "diff") {
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
        let empty = fs::read_dir(work.diff())
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        let meta = LayerMeta {
            id: id.clone(),
            parent: parent.cloned(),
            key: key.hex(),
            description: description.to_owned(),
            created: crate::util::now_unix(),
            empty,
            format: LAYER_FORMAT,
        };
        let meta_path = work.dir.join("meta.json");
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| BuildError::Cache {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        fs::write(&meta_path, json).map_err(BuildError::io("writing", &meta_path))?;
        let target = self.root.join("layers").join(&id.0);
        if target.exists() && self.get(&id).is_none() {
            // A leftover without metadata (interrupted commit): replace it.
            let _ = fs::remove_dir_all(&target);
        }
        match fs::rename(&work.dir, &target) {
            Ok(()) => {
                work.committed = true;
                Ok(meta)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                // Drop removes our copy; the stored one is equivalent.
                Ok(self.get(&id).unwrap_or(meta))
            }
            Err(e) => Err(BuildError::io("storing layer", &target)(e)),
        }
    }

    /// A `RUN --mount=type=cache` directory for `id` (created on first use).
    pub fn cache_mount_dir(&self, id: &str) -> Result<PathBuf> {
        let name = hex::encode(Sha256::digest(id.as_bytes()));
        let dir = self.root.join("mounts").join(&name[..ID_LEN]);
        fs::create_dir_all(&dir).map_err(BuildError::io("creating cache mount", &dir))?;
        Ok(dir)
    }

    fn ref_path(&self, tag: &str) -> PathBuf {
        let safe: String = tag
            .chars()
            .map(|c| if c == '/' || c == ':' { '_' } else { c })
            .collect();
        // The escaping above can merge tags (a_b/c vs a/b_c): add a hash.
        let h = hex::encode(Sha256::digest(tag.as_bytes()));
        self.root
            .join("refs")
            .join(format!("{safe}-{}.json", &h[..8]))
    }

    pub fn write_ref(&self, r: &ImageRef) -> Result<()> {
        let path = self.ref_path(&r.tag);
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(r).map_err(|e| BuildError::Cache {
            path: path.clone(),
            message: e.to_string(),
        })?;
        fs::write(&tmp, json).map_err(BuildError::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(BuildError::io("writing", &path))
    }

    pub fn read_ref(&self, tag: &str) -> Option<ImageRef> {
        let bytes = fs::read(self.ref_path(tag)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn all_refs(&self) -> Vec<(PathBuf, ImageRef)> {
        let Ok(entries) = fs::read_dir(self.root.join("refs")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let bytes = fs::read(e.path()).ok()?;
                Some((e.path(), serde_json::from_slice(&bytes).ok()?))
            })
            .collect()
    }

    /// Removes in-progress layers whose build process is gone.
    fn clean_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Removes every layer not used by a stored image (refs of tags that
    /// `keep` no longer knows are dropped first) and every cache mount when
    /// `mounts_too`. Returns what was removed.
    pub(crate) fn prune(
        &self,
        keep: &dyn Fn(&ImageRef) -> bool,
        mounts_too: bool,
    ) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let mut live = std::collections::HashSet::new();
        for (path, r) in self.all_refs() {
            if keep(&r) {
                live.extend(r.layers.iter().cloned());
                if let Some(top) = &r.top {
                    live.insert(top.clone());
                }
            } else {
                let _ = fs::remove_file(&path);
                report.refs_removed += 1;
            }
        }
        let layers = self.root.join("layers");
        let entries = fs::read_dir(&layers).map_err(BuildError::io("reading", &layers))?;
        for e in entries.flatten() {
            let id = LayerId(e.file_name().to_string_lossy().into_owned());
            if live.contains(&id) && self.get(&id).is_some() {
                continue;
            }
            report.bytes_freed += du(&e.path());
            fs::remove_dir_all(e.path()).map_err(BuildError::io("removing layer", e.path()))?;
            report.layers_removed += 1;
        }
        if mounts_too {
            let mounts = self.root.join("mounts");
            if let Ok(entries) = fs::read_dir(&mounts) {
                for e in entries.flatten() {
                    report.bytes_freed += du(&e.path());
                    let _ = fs::remove_dir_all(e.path());
                    report.cache_mounts_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

/// What [`crate::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub layers_removed: usize,
    pub refs_removed: usize,
    pub cache_mounts_removed: usize,
    pub bytes_freed: u64,
}

/// Disk usage of a tree (allocated blocks, hard links counted once per tree).
fn du(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(md) = fs::symlink_metadata(p) else {
            return 0;
        };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            return 0;
        }
        let mut total = md.blocks() * 512;
        if md.is_dir() {
            if let Ok(entries) = fs::read_dir(p) {
                for e in entries.flatten() {
                    total += walk(&e.path(), seen);
                }
            }
        }
        total
    }
    walk(path, &mut std::collections::HashSet::new())
}

/// A layer being written: `diff/` (overlay upper), `work/` (overlay work
/// dir) and `merged/` (mount point). Removed on drop unless committed.
#[derive(Debug)]
pub struct WorkLayer {
    dir: PathBuf,
    committed: bool,
}

impl WorkLayer {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn diff(&self) -> PathBuf {
        self.dir.join("diff")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    /// A scratch directory beside the layer (other mount points, files).
    pub fn scratch(&self, name: &str) -> io::Result<PathBuf> {
        let p = self.dir.join(name);
        fs::create_dir_all(&p)?;
        Ok(p)
    }
}

impl Drop for WorkLayer {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.dir.display(), error = %e, "could not remove an unfinished layer");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_closed_to_other_users_of_the_host() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("build")).unwrap();
        fs::set_permissions(dir.path().join("build"), fs::Permissions::from_mode(0o755)).unwrap();
        // An older firebuild made these 0755: tightened on open.
        fs::create_dir(dir.path().join("build/layers")).unwrap();
        fs::set_permissions(
            dir.path().join("build/layers"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        for sub in ["", "layers", "tmp", "refs", "mounts"] {
            let mode = fs::metadata(store.root().join(sub))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "build/{sub}");
        }
    }

    #[test]
    fn commit_lookup_chain_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let k1 = Key::derive(None, "base");
        let w = store.new_work().unwrap();
        fs::write(w.diff().join("a"), "1").unwrap();
        let m1 = store.commit(w, &k1, None, "base").unwrap();
        assert!(!m1.empty);
        let k2 = Key::derive(Some(&k1), "ENV x=y");
        let w = store.new_work().unwrap();
        let m2 = store.commit(w, &k2, Some(&m1.id), "noop").unwrap();
        assert!(m2.empty);
        assert_eq!(
            store.chain(Some(&m2.id)).unwrap(),
            vec![m1.id.clone(), m2.id.clone()]
        );
        assert_eq!(
            store.mount_chain(Some(&m2.id)).unwrap(),
            vec![m1.id.clone()]
        );
        assert!(store.lookup(&k2).is_some());
        assert!(store.lookup(&Key::derive(None, "other")).is_none());
        // An abandoned work layer disappears.
        let w = store.new_work().unwrap();
        let wdir = w.dir().to_path_buf();
        drop(w);
        assert!(!wdir.exists());

        store
            .write_ref(&ImageRef {
                tag: "a/b:c".into(),
                rootfs_digest: None,
                top: Some(m1.id.clone()),
                key: k1.hex(),
                output_key: String::new(),
                layers: vec![m1.id.clone()],
            })
            .unwrap();
        assert_eq!(store.read_ref("a/b:c").unwrap().top, Some(m1.id.clone()));
        let report = store.prune(&|_| true, false).unwrap();
        assert_eq!(report.layers_removed, 1);
        assert!(store.get(&m1.id).is_some() && store.get(&m2.id).is_none());
        let report = store.prune(&|_| false, true).unwrap();
        assert_eq!((report.layers_removed, report.refs_removed), (1, 1));
    }
}
