//! The CI kernel cache: a bootable kernel for tests, built once per machine.
//!
//! [`ensure_cached`] returns `<cache>/<version>-<digest>/vmlinux`, building it
//! from Debian's `linux-source-6.1` tarball with the project's config when it
//! is missing. The key is the source version plus the first 12 hex digits of
//! the config digest, so a config change builds a new kernel and an old one
//! is never reused by mistake. A lock file keeps concurrent test processes
//! from building twice: the others wait and then reuse the result.
//!
//! Environment:
//! - `FIREBUILD_TEST_KERNEL=/path/vmlinux`: use this kernel, build nothing.
//! - `FIREBUILD_TEST_KERNEL_SOURCE`: source tarball or tree
//!   (default `/usr/src/linux-source-6.1.tar.xz`).
//! - `FIREBUILD_CI_KERNEL_CACHE`: cache directory
//!   (default `/var/cache/firebuild-ci/kernels`).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use time::OffsetDateTime;

use crate::build::{build_kernel, BuildOptions, Progress};
use crate::config::Fragment;
use crate::error::{Error, Result};
use crate::identify;
use crate::source::KernelSource;
use crate::store::{KernelMetadata, KernelOrigin};

/// Debian's `linux-source-6.1` tarball.
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Where CI kernels are cached, outside any clone.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/firebuild-ci/kernels";
/// Use this vmlinux instead of the cache.
pub const KERNEL_ENV: &str = "FIREBUILD_TEST_KERNEL";
/// Overrides [`DEFAULT_SOURCE`].
pub const SOURCE_ENV: &str = "FIREBUILD_TEST_KERNEL_SOURCE";
/// Overrides [`DEFAULT_CACHE_DIR`].
pub const CACHE_ENV: &str = "FIREBUILD_CI_KERNEL_CACHE";

/// The kernel command line the test kernel boots with under QEMU
/// (`-M q35 -accel tcg`, virtio-blk-pci root on `/dev/vda`, `-no-reboot`):
/// serial console, reboot 1 s after a panic (so QEMU exits instead of
/// hanging), reboot through the keyboard controller. Add `init=...`.
pub const QEMU_KERNEL_ARGS: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw";

/// Where the cache is and how to build into it.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Source tarball or tree.
    pub source: PathBuf,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// A ready kernel to use instead (skips the cache).
    pub kernel: Option<PathBuf>,
    /// Build niceness (the build shares the machine with tests).
    pub niceness: Option<i32>,
    /// Parallel jobs (`None`: one per core).
    pub jobs: Option<usize>,
}

impl CacheOptions {
    /// Defaults, overridden by the environment variables above.
    pub fn from_env() -> CacheOptions {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        CacheOptions {
            source: var(SOURCE_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_SOURCE)),
            cache_dir: var(CACHE_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR)),
            kernel: var(KERNEL_ENV),
            niceness: Some(19),
            jobs: None,
        }
    }
}

/// A bootable test kernel: from `FIREBUILD_TEST_KERNEL`, the cache, or a
/// build into the cache (tens of minutes on 2 cores; progress on stderr).
pub fn ensure_cached() -> Result<PathBuf> {
    // A line per step, and one per 500 objects compiled (CI logs).
    let mut next = 0;
    ensure_cached_with(&CacheOptions::from_env(), &mut |p| match p.compiled {
        Some(n) if n < next => {}
        Some(n) => {
            next = n + 500;
            eprintln!("firebuild test kernel: {p}");
        }
        None => eprintln!("firebuild test kernel: {p}"),
    })
}

/// [`ensure_cached`] with explicit options and a progress callback.
pub fn ensure_cached_with(
    opts: &CacheOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<PathBuf> {
    if let Some(kernel) = &opts.kernel {
        identify::require_vmlinux(kernel)?;
        return Ok(kernel.clone());
    }
    let key = cache_key(&opts.source)?;
    let dir = opts.cache_dir.join(&key);
    let vmlinux = dir.join("vmlinux");
    // The directory is renamed into place whole, so a vmlinux in it is complete.
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }

    fs::create_dir_all(&opts.cache_dir).map_err(|e| {
        Error::TestKernel(format!(
            "cannot create the kernel cache {}: {e}; run as root or set {CACHE_ENV} to a writable directory",
            opts.cache_dir.display()
        ))
    })?;
    let lock_path = opts.cache_dir.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("open lock file", &lock_path, e))?;
    if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        tracing::info!(lock = %lock_path.display(), "another process is building the test kernel; waiting");
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", &lock_path, std::io::Error::from(e)))?;
    }
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }

    let mut build = BuildOptions::new(&opts.source, opts.cache_dir.join(format!("{key}.log")));
    build.work_dir = opts.cache_dir.clone();
    build.niceness = opts.niceness;
    build.jobs = opts.jobs;
    let built = build_kernel(&build, progress)?;

    // Assemble the entry beside its final place, then rename it in.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".tmp-{key}-"))
        .tempdir_in(&opts.cache_dir)
        .map_err(|e| Error::io("create a directory in", &opts.cache_dir, e))?;
    let copy = |from: &Path, name: &str| -> Result<u64> {
        let to = staging.path().join(name);
        fs::copy(from, &to).map_err(|e| Error::io("copy into the kernel cache", to, e))
    };
    let size = copy(&built.vmlinux, "vmlinux")?;
    copy(&built.config, "config")?;
    copy(&built.log, "build.log")?;
    let meta = KernelMetadata {
        id: key.clone(),
        version: Some(built.release.clone()),
        arch: "x86_64".into(),
        size,
        sha256: crate::store::hash_file(&built.vmlinux)?,
        origin: KernelOrigin::Built,
        source: opts.source.display().to_string(),
        config_digest: Some(built.config_digest.clone()),
        build_seconds: Some(built.elapsed.as_secs_f64()),
        created_at: OffsetDateTime::now_utc(),
    };
    let meta_path = staging.path().join("metadata.json");
    let json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| Error::TestKernel(format!("cannot encode metadata: {e}")))?;
    fs::write(&meta_path, json).map_err(|e| Error::io("write", &meta_path, e))?;
    let staged = staging.keep();
    fs::rename(&staged, &dir).map_err(|e| Error::io("move the built kernel into", &dir, e))?;
    let _ = fs::remove_file(&built.log);
    tracing::info!(path = %vmlinux.display(), seconds = built.elapsed.as_secs(), "test kernel built and cached");
    Ok(vmlinux)
}

/// `<source version>-<first 12 hex digits of the project config digest>`.
pub fn cache_key(source: &Path) -> Result<String> {
    let version = KernelSource::detect(source)?.version()?;
    let digest = Fragment::project()?.digest();
    Ok(format!("{version}-{}", &digest[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::tests::fake_vmlinux;

    fn options(dir: &Path, source: PathBuf) -> CacheOptions {
        CacheOptions {
            source,
            cache_dir: dir.join("cache"),
            kernel: None,
            niceness: None,
            jobs: Some(1),
        }
    }

    #[test]
    fn builds_once_then_reuses_the_cached_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        crate::build::tests::fake_kernel_tree(
            &tree,
            "NO-SUCH-LINE",
            &fake_vmlinux("6.1.192"),
            false,
        );
        let opts = options(dir.path(), tree.clone());
        let key = cache_key(&tree).unwrap();
        assert!(
            key.starts_with("6.1.192-") && key.len() == "6.1.192-".len() + 12,
            "{key}"
        );

        let mut steps = 0;
        let path = ensure_cached_with(&opts, &mut |p| {
            steps += usize::from(p.compiled.is_none());
        })
        .unwrap();
        assert_eq!(path, opts.cache_dir.join(&key).join("vmlinux"));
        assert_eq!(steps, 6);
        for f in ["config", "build.log", "metadata.json"] {
            assert!(opts.cache_dir.join(&key).join(f).is_file(), "{f}");
        }
        // Make the build fail: a cached kernel means no build at all.
        crate::build::tests::fake_kernel_tree(&tree, "NO-SUCH-LINE", b"", true);
        let mut steps = 0;
        assert_eq!(
            ensure_cached_with(&opts, &mut |_| steps += 1).unwrap(),
            path
        );
        assert_eq!(steps, 0);
        // No staging directories or logs left behind.
        let mut names: Vec<String> = fs::read_dir(&opts.cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [key.clone(), format!("{key}.lock")]);
    }

    #[test]
    fn a_failed_build_caches_nothing_and_keeps_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        crate::build::tests::fake_kernel_tree(&tree, "NO-SUCH-LINE", b"", true);
        let opts = options(dir.path(), tree.clone());
        let err = ensure_cached_with(&opts, &mut |_| {})
            .unwrap_err()
            .to_string();
        let key = cache_key(&tree).unwrap();
        assert!(err.contains(&format!("{key}.log")), "{err}");
        assert!(!opts.cache_dir.join(&key).exists());
    }

    #[test]
    fn an_explicit_kernel_is_checked_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), dir.path().join("no-source"));
        let k = dir.path().join("vmlinux");
        fs::write(&k, fake_vmlinux("6.1.1")).unwrap();
        opts.kernel = Some(k.clone());
        assert_eq!(ensure_cached_with(&opts, &mut |_| {}).unwrap(), k);
        fs::write(&k, b"\x1f\x8b\x08\x00").unwrap();
        assert!(ensure_cached_with(&opts, &mut |_| {}).is_err());
    }

    #[test]
    fn concurrent_callers_build_once() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        crate::build::tests::fake_kernel_tree(
            &tree,
            "NO-SUCH-LINE",
            &fake_vmlinux("6.1.192"),
            false,
        );
        let opts = options(dir.path(), tree);
        let builds = std::sync::atomic::AtomicUsize::new(0);
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        ensure_cached_with(&opts, &mut |p| {
                            if p.step == crate::build::BuildStep::Compile && p.compiled.is_none() {
                                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        })
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
