//! A container's root filesystem as a VM's root drive.
//!
//! containerd hands the shim the mounts of the container's snapshot: with
//! the overlayfs snapshotter one overlay whose `lowerdir`s are the image's
//! committed (immutable) layers and whose `upperdir` is the container's
//! own; with the native snapshotter a bind mount of a full copy. The
//! image's part becomes an ext4 file once and is shared read-only by every
//! VM of that image (issue 14's shared image), the container's writes going
//! to the VM's scratch disk. The file is cached under a key of the layer
//! chain, so a second container of the image starts without a conversion.
//! A snapshot that is not only committed layers (a non-empty upper dir, a
//! bind mount, a prepared `rootfs/`) is converted for that container alone.
//!
//! The guest init goes in as one more read-only layer on top
//! (`/.firebuild/init`), so the conversion is one overlay mount and one
//! `mkfs.ext4 -d`, never a copy of the tree.

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use containerd_shim_protos::api::Mount;
use sha2::{Digest, Sha256};

/// The ext4 label of converted images.
const LABEL: &str = "ctr-rootfs";

/// What the container's root is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layers {
    /// Committed read-only layers, top first (overlay `lowerdir` order).
    Committed(Vec<PathBuf>),
    /// Layers with a directory that may change (an upper dir with files, a
    /// snapshot bind-mounted, a root directory given as it is), top first.
    Private(Vec<PathBuf>),
}

impl Layers {
    /// Reads containerd's mounts (none: the spec's root directory `root`
    /// as it is, e.g. `ctr run --rootfs DIR`).
    pub fn from_mounts(mounts: &[Mount], root: &Path) -> anyhow::Result<Layers> {
        match mounts {
            [] => {
                anyhow::ensure!(
                    root.is_dir(),
                    "the task has no root filesystem: no mounts and no directory {}",
                    root.display()
                );
                Ok(Layers::Private(vec![root.to_owned()]))
            }
            [m] if m.type_ == "overlay" => overlay_layers(m),
            [m] if m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
                let dir = PathBuf::from(&m.source);
                check_dir(&dir, "the bind-mounted root")?;
                Ok(Layers::Private(vec![dir]))
            }
            [m] => anyhow::bail!(
                "root filesystem mount of type {:?} ({}): the firebuild shim takes the overlayfs or native snapshotter's mounts (overlay or bind)",
                m.type_,
                m.source
            ),
            _ => anyhow::bail!(
                "the root filesystem comes as {} mounts: the firebuild shim takes one (the overlayfs or native snapshotter's)",
                mounts.len()
            ),
        }
    }

    fn dirs(&self) -> &[PathBuf] {
        match self {
            Layers::Committed(d) | Layers::Private(d) => d,
        }
    }
}

fn overlay_layers(m: &Mount) -> anyhow::Result<Layers> {
    let option = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let lower: Vec<PathBuf> = option("lowerdir")
        .context("the overlay root mount has no lowerdir option")?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    for dir in &lower {
        check_dir(dir, "an overlay lower dir")?;
    }
    match option("upperdir") {
        Some(upper) => {
            let upper = PathBuf::from(upper);
            check_dir(&upper, "the overlay upper dir")?;
            let empty = std::fs::read_dir(&upper)
                .with_context(|| format!("reading {}", upper.display()))?
                .next()
                .is_none();
            if empty {
                Ok(Layers::Committed(lower))
            } else {
                Ok(Layers::Private(
                    std::iter::once(upper).chain(lower).collect(),
                ))
            }
        }
        // A read-only view (a `ctr run --rootfs`-less snapshot view).
        None => Ok(Layers::Committed(lower)),
    }
}

fn check_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.is_absolute() && !dir.as_os_str().as_encoded_bytes().contains(&b','),
        "{what} {}: not an absolute path without commas",
        dir.display()
    );
    let meta = std::fs::metadata(dir).with_context(|| format!("{what} {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{what} {}: not a directory", dir.display());
    Ok(())
}

/// Converted images, kept in one directory.
pub struct RootfsCache {
    dir: PathBuf,
    /// The guest init, as a one-file layer (`<dir>/init-<digest>/`).
    init_layer: PathBuf,
    init_digest: String,
}

/// A converted image: shared (cached, kept) or the container's own
/// (removed with the container).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Converted {
    pub path: PathBuf,
    pub private: bool,
}

impl RootfsCache {
    /// Opens (creates) the cache and places the guest init `vminit` in it.
    pub fn open(dir: &Path, vminit: &Path) -> anyhow::Result<RootfsCache> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bytes = std::fs::read(vminit)
            .with_context(|| format!("reading the guest init {}", vminit.display()))?;
        let init_digest = hex::encode(Sha256::digest(&bytes));
        let init_layer = dir.join(format!("init-{}", &init_digest[..16]));
        let init =
            init_layer.join(firebuild_metadata::boot::GUEST_INIT_PATH.trim_start_matches('/'));
        if !init.is_file() {
            let staging = dir.join(format!(
                ".init-{}.{}",
                &init_digest[..16],
                std::process::id()
            ));
            let staged =
                staging.join(firebuild_metadata::boot::GUEST_INIT_PATH.trim_start_matches('/'));
            std::fs::create_dir_all(staged.parent().unwrap())?;
            std::fs::write(&staged, &bytes)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
            if let Err(e) = std::fs::rename(&staging, &init_layer) {
                // Another shim placed it first.
                let _ = std::fs::remove_dir_all(&staging);
                if !init.is_file() {
                    return Err(e).with_context(|| format!("placing {}", init_layer.display()));
                }
            }
        }
        Ok(RootfsCache {
            dir: dir.to_owned(),
            init_layer,
            init_digest,
        })
    }

    /// The ext4 image of `layers`: the cached one, or made now. `owner`
    /// names a private conversion's file (the container).
    pub fn convert(&self, layers: &Layers, owner: &str) -> anyhow::Result<Converted> {
        match layers {
            Layers::Committed(dirs) => {
                let key = self.key(dirs)?;
                let path = self.dir.join(format!("{key}.ext4"));
                let lock = self.lock(&key)?;
                if !path.is_file() {
                    self.make(layers, &path)?;
                }
                drop(lock);
                Ok(Converted {
                    path,
                    private: false,
                })
            }
            Layers::Private(_) => {
                let path = self.dir.join(format!("private-{owner}.ext4"));
                self.make(layers, &path)?;
                Ok(Converted {
                    path,
                    private: true,
                })
            }
        }
    }

    /// Committed layers never change, but a removed snapshot's path may
    /// come back with other content: the key takes each dir's inode too.
    fn key(&self, dirs: &[PathBuf]) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        h.update(self.init_digest.as_bytes());
        for dir in dirs {
            let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
            h.update(dir.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(format!("{}:{}:{}", meta.dev(), meta.ino(), meta.ctime()).as_bytes());
        }
        Ok(hex::encode(&h.finalize()[..16]))
    }

    /// Several shims converting the same image at once: one does it.
    fn lock(&self, key: &str) -> anyhow::Result<File> {
        let path = self.dir.join(format!("{key}.lock"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    /// Mounts the layers (init on top) read-only, writes the ext4 beside
    /// `out` and renames it into place: a failure leaves nothing.
    fn make(&self, layers: &Layers, out: &Path) -> anyhow::Result<()> {
        let name = out.file_name().unwrap().to_string_lossy().into_owned();
        let mountpoint = self.dir.join(format!(".mnt-{name}.{}", std::process::id()));
        let staging = self.dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::create_dir_all(&mountpoint)?;
        let result = (|| {
            let mounted = OverlayMount::new(&mountpoint, &self.init_layer, layers.dirs())?;
            firebuild_builder::make_ext4(mounted.path(), &staging, None, LABEL)
                .context("converting the container's root filesystem to ext4")?;
            drop(mounted);
            std::fs::rename(&staging, out).with_context(|| format!("placing {}", out.display()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        let _ = std::fs::remove_dir(&mountpoint);
        result
    }
}

/// A read-only overlay of layer dirs, unmounted on drop.
struct OverlayMount<'a> {
    path: &'a Path,
}

impl<'a> OverlayMount<'a> {
    fn new(path: &'a Path, top: &Path, layers: &[PathBuf]) -> anyhow::Result<Self> {
        let lower: Vec<String> = std::iter::once(top)
            .chain(layers.iter().map(PathBuf::as_path))
            .map(|p| p.display().to_string())
            .collect();
        let data = std::ffi::CString::new(format!("lowerdir={}", lower.join(":")))?;
        rustix::mount::mount(
            "firebuild-shim",
            path,
            "overlay",
            rustix::mount::MountFlags::RDONLY
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOSUID,
            data.as_c_str(),
        )
        .with_context(|| format!("mounting the image's layers at {}", path.display()))?;
        Ok(OverlayMount { path })
    }

    fn path(&self) -> &Path {
        self.path
    }
}

impl Drop for OverlayMount<'_> {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(self.path, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!("unmounting {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(type_: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            type_: type_.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn overlay_mounts_give_the_layer_chain() {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = dir.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (l1, l2, up, work) = (d("l1"), d("l2"), d("up"), d("work"));
        let opts = [
            "index=off".to_string(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", up.display()),
            format!("lowerdir={}:{}", l2.display(), l1.display()),
        ];
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let m = mount("overlay", "overlay", &opts);
        assert_eq!(
            Layers::from_mounts(std::slice::from_ref(&m), dir.path()).unwrap(),
            Layers::Committed(vec![l2.clone(), l1.clone()])
        );
        std::fs::write(up.join("written"), b"x").unwrap();
        assert_eq!(
            Layers::from_mounts(&[m], dir.path()).unwrap(),
            Layers::Private(vec![up, l2, l1])
        );
    }

    #[test]
    fn bad_mounts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Layers::from_mounts(
            &[mount("overlay", "overlay", &["lowerdir=/nonexistent/l"])],
            dir.path(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/l"), "{err:#}");
        let err = Layers::from_mounts(&[mount("tmpfs", "none", &[])], dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("tmpfs"), "{err:#}");
        let missing = dir.path().join("rootfs");
        let err = Layers::from_mounts(&[], &missing).unwrap_err();
        assert!(
            format!("{err:#}").contains(&*missing.to_string_lossy()),
            "{err:#}"
        );
    }
}
