//! Private mount namespaces on worker threads, and overlayfs mounts of layer
//! chains.
//!
//! Every mount the build makes happens on a dedicated thread that first
//! unshares its filesystem context and mount namespace. The mounts exist
//! only in that namespace: when the thread ends (or the process dies, even
//! by SIGKILL) the kernel tears them down. The host's mount table is never
//! touched.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{BuildError, Result};
use crate::layers::LayerId;

/// Runs `f` on a new thread with its own mount namespace and cwd, and
/// returns its result. Mounts made by `f` vanish when it returns.
pub fn with_private_mounts<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            // SAFETY: plain syscalls on this thread only; CLONE_FS gives the
            // thread its own cwd/root so chdir below stays private.
            let rc = unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EPERM) {
                    BuildError::NotRoot
                } else {
                    BuildError::Sandbox(format!("creating a private mount namespace: {e}"))
                });
            }
            // Nothing mounted here may propagate back to the host.
            mount(
                None,
                Path::new("/"),
                None,
                libc::MS_REC | libc::MS_PRIVATE,
                None,
            )
            .map_err(|e| BuildError::Sandbox(format!("making / private: {e}")))?;
            f()
        });
        handle
            .join()
            .unwrap_or_else(|_| Err(BuildError::Sandbox("a build worker thread panicked".into())))
    })
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `mount(2)` with paths.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype
        .map(|s| {
            CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })
        .transpose()?;
    let data = data
        .map(|s| {
            CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })
        .transpose()?;
    // SAFETY: all pointers are valid C strings or null.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A read-only bind mount of `source` on `target`.
pub fn bind_readonly(source: &Path, target: &Path) -> std::io::Result<()> {
    mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    mount(
        None,
        target,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
        None,
    )
}

pub fn unmount(target: &Path, detach: bool) -> std::io::Result<()> {
    let t = cstr(target)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid C string.
    if unsafe { libc::umount2(t.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Where the layers of an overlay come from.
pub struct OverlaySpec<'a> {
    /// `<cache>/build/layers`: lower dirs are given relative to it, so the
    /// option string (one page at most) holds many layers.
    pub layers_dir: &'a Path,
    /// Bottom first.
    pub lower: &'a [LayerId],
    /// Writable upper and work directories, or `None` for a read-only view.
    pub upper: Option<(&'a Path, &'a Path)>,
    /// An empty directory for chains with nothing below.
    pub empty_dir: &'a Path,
}

/// How to mount an [`OverlaySpec`]: `data` names the lower dirs relative
/// to `cwd`, so the option string (one page at most) holds many layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    pub cwd: PathBuf,
    pub data: String,
    pub flags: libc::c_ulong,
}

impl OverlaySpec<'_> {
    /// The overlay's options, with every directory seen through `view`
    /// (the identity on the host; for the RUN sandbox, paths relative to
    /// the idmapped copy of the cache it starts in). `None` when the layers
    /// need no overlay (see [`mount_overlay`]).
    pub fn options(&self, view: impl Fn(&Path) -> PathBuf) -> Result<Option<OverlayMount>> {
        if self.upper.is_none() && self.lower.len() <= 1 {
            return Ok(None);
        }
        let cwd = view(self.layers_dir);
        let seen = |p: &Path| from_cwd(&cwd, &view(p)).display().to_string();
        let mut lower: Vec<String> = self
            .lower
            .iter()
            .rev()
            .map(|id| format!("{}/diff", id.0))
            .collect();
        if lower.is_empty() {
            lower.push(seen(self.empty_dir));
        }
        let mut data = format!("lowerdir={}", lower.join(":"));
        if let Some((upper, work)) = self.upper {
            // `volatile`: no syncs of the upper filesystem. A step's layer
            // is kept or thrown away whole, and the unmount before a RUN
            // would otherwise flush the whole cache filesystem.
            data.push_str(&format!(
                ",upperdir={},workdir={},volatile",
                seen(upper),
                seen(work)
            ));
        }
        // Layers are recombined freely between mounts: no inode index, no
        // metadata-only copy-ups, no directory redirects to keep consistent.
        // Overlay metadata (opaque directories) lives in user.overlay.*
        // xattrs, which the RUN sandbox can mount from its user namespace.
        data.push_str(",userxattr");
        if data.len() >= 4000 {
            return Err(BuildError::Sandbox(format!(
                "the stage has too many filesystem layers ({}) for one overlay mount; merge RUN steps",
                self.lower.len()
            )));
        }
        let flags = if self.upper.is_none() {
            libc::MS_RDONLY
        } else {
            0
        } | libc::MS_NODEV;
        Ok(Some(OverlayMount { cwd, data, flags }))
    }

    /// The directory to bind instead when [`OverlaySpec::options`] is `None`.
    pub fn single_dir(&self) -> PathBuf {
        match self.lower.first() {
            Some(id) => self.layers_dir.join(&id.0).join("diff"),
            None => self.empty_dir.to_path_buf(),
        }
    }
}

/// `p` as seen from directory `cwd`: absolute paths stay; a relative `p`
/// (relative to the same base as a relative `cwd`) climbs out of `cwd`.
pub fn from_cwd(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || cwd.is_absolute() {
        return p.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in cwd.components() {
        out.push("..");
    }
    out.join(p)
}

/// Mounts the merged view of `spec` on `target`. Call only on a
/// [`with_private_mounts`] thread (it changes the thread's cwd).
pub fn mount_overlay(spec: &OverlaySpec<'_>, target: &Path) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        BuildError::Sandbox(format!(
            "mounting the layers ({} of them) on {}: {what}: {e}",
            spec.lower.len(),
            target.display()
        ))
    };
    let Some(overlay) = spec.options(Path::to_path_buf)? else {
        // overlayfs needs two lower layers without an upper: bind instead.
        return bind_readonly(&spec.single_dir(), target).map_err(|e| fail("bind", e));
    };
    // Relative lower dirs keep the option string short; the cwd is restored
    // after the mount so relative paths of the caller keep working.
    let saved = rustix::fs::open(
        ".",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| fail("opening the working directory", e.into()))?;
    std::env::set_current_dir(&overlay.cwd).map_err(|e| fail("chdir", e))?;
    let mounted = mount(
        Some(Path::new("overlay")),
        target,
        Some("overlay"),
        overlay.flags,
        Some(&overlay.data),
    );
    rustix::process::fchdir(&saved)
        .map_err(|e| fail("restoring the working directory", e.into()))?;
    mounted.map_err(|e| fail(&overlay.data, e))
}
