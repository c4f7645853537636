//! The per-VM run directory, `<run-cache>/<vm-id>/` (mode 0700):
//!
//! ```text
//! rootfs.ext4     a hard link to the stored image (read-only, shared), or
//!                 with `--rootfs-mode copy` the VM's private copy
//! scratch.ext4    the sparse scratch disk the overlay root writes to
//! config.drive    the guest metadata as a raw config drive (QEMU)
//! console.log     the serial console
//! qmp.sock        QEMU's QMP socket
//! vmm.pid         the VMM's pid file
//! run.json        the run metadata (RunMetadata)
//! ```
//!
//! Backends may add their own files (Firecracker: API socket, logs, jail
//! links) through [`RunDir::file`].

use std::fs::DirBuilder;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::VmError;

/// Sockets are bound by path; Linux allows 107 bytes plus the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// The file name of the run metadata inside a run directory.
pub const METADATA_FILE: &str = "run.json";

/// Paths inside one VM's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory of `id` under `run_cache` (not created).
    pub fn new(run_cache: &Path, id: &str) -> Self {
        RunDir {
            root: run_cache.join(id),
        }
    }

    /// Takes the VM's lock (`flock` on the run directory itself, so it
    /// writes nothing) for a read-modify-write of its metadata; released
    /// when the returned file is dropped.
    pub fn lock(&self) -> Result<std::fs::File, VmError> {
        let dir = std::fs::File::open(&self.root)
            .map_err(|e| VmError::io("opening the run directory", &self.root, e))?;
        rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| VmError::io("locking the run directory", &self.root, e.into()))?;
        Ok(dir)
    }

    /// Creates the directory (0700), failing with [`VmError::NameClash`] if
    /// it exists: this is what reserves a VM name, atomically.
    pub fn create(run_cache: &Path, id: &str) -> Result<Self, VmError> {
        // 0700 also when it exists: run directories hold consoles, the
        // run's environment and the VMs' control sockets.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_cache)
            .and_then(|()| std::fs::set_permissions(run_cache, PermissionsExt::from_mode(0o700)))
            .map_err(|e| VmError::io("creating the run cache directory", run_cache, e))?;
        let dir = RunDir::new(run_cache, id);
        match DirBuilder::new().mode(0o700).create(&dir.root) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(VmError::NameClash {
                name: id.to_owned(),
                dir: dir.root,
            }),
            Err(e) => Err(VmError::io("creating the run directory", &dir.root, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A backend-specific file in the run directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.file("rootfs.ext4")
    }

    pub fn config_drive(&self) -> PathBuf {
        self.file("config.drive")
    }

    pub fn console_log(&self) -> PathBuf {
        self.file("console.log")
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.file("qmp.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.file("vmm.pid")
    }

    /// What the VMM printed on stderr (its start-up errors).
    pub fn vmm_log(&self) -> PathBuf {
        self.file("vmm.log")
    }

    pub fn metadata(&self) -> PathBuf {
        self.file(METADATA_FILE)
    }

    /// Checks that a socket at `path` can be bound.
    pub fn check_socket_path(path: &Path) -> Result<(), VmError> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(VmError::SocketPathTooLong {
                path: path.to_owned(),
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        Ok(())
    }

    /// Creates (or truncates) `path` with mode 0600 and writes `contents`:
    /// the run directory's files that only the owner may read (console
    /// log, config drive, VMM logs).
    pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), VmError> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(contents))
            .map_err(|e| VmError::io("writing", path, e))
    }

    /// Removes the whole directory; a missing directory is fine.
    pub fn remove(&self) -> Result<(), VmError> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VmError::io("removing the run directory", &self.root, e)),
        }
    }
}

/// Removes a freshly created run directory unless disarmed: set-up that
/// fails half-way leaves nothing behind.
pub(crate) struct RunDirGuard {
    dir: Option<RunDir>,
}

impl RunDirGuard {
    pub(crate) fn new(dir: RunDir) -> Self {
        RunDirGuard { dir: Some(dir) }
    }

    pub(crate) fn disarm(mut self) -> RunDir {
        // `dir` is always Some until disarm or drop.
        self.dir
            .take()
            .unwrap_or_else(|| RunDir::new(Path::new("/"), ""))
    }
}

impl Drop for RunDirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.remove() {
                tracing::warn!("cleaning up after a failed start: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn layout_and_mode() {
        let cache = tempfile::tempdir().unwrap();
        let run_cache = cache.path().join("vms");
        let dir = RunDir::create(&run_cache, "vm1").unwrap();
        assert_eq!(dir.path(), run_cache.join("vm1"));
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(dir.rootfs(), run_cache.join("vm1/rootfs.ext4"));
        assert_eq!(dir.console_log(), run_cache.join("vm1/console.log"));
        assert_eq!(dir.qmp_socket(), run_cache.join("vm1/qmp.sock"));
        assert_eq!(dir.metadata(), run_cache.join("vm1/run.json"));
        assert_eq!(dir.config_drive(), run_cache.join("vm1/config.drive"));
        assert_eq!(dir.pid_file(), run_cache.join("vm1/vmm.pid"));
    }

    #[test]
    fn the_run_cache_is_private_even_when_it_existed() {
        let cache = tempfile::tempdir().unwrap();
        let run_cache = cache.path().join("vms");
        std::fs::create_dir(&run_cache).unwrap();
        std::fs::set_permissions(&run_cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        RunDir::create(&run_cache, "vm1").unwrap();
        let mode = std::fs::metadata(&run_cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn second_create_is_a_name_clash() {
        let cache = tempfile::tempdir().unwrap();
        RunDir::create(cache.path(), "web").unwrap();
        let err = RunDir::create(cache.path(), "web").unwrap_err();
        assert!(matches!(err, VmError::NameClash { .. }), "{err}");
        assert!(err.to_string().contains("\"web\""));
    }

    #[test]
    fn guard_removes_unless_disarmed() {
        let cache = tempfile::tempdir().unwrap();
        let dir = RunDir::create(cache.path(), "a").unwrap();
        std::fs::write(dir.file("x"), b"x").unwrap();
        drop(RunDirGuard::new(dir.clone()));
        assert!(!dir.path().exists());

        let dir = RunDir::create(cache.path(), "b").unwrap();
        RunDirGuard::new(dir.clone()).disarm();
        assert!(dir.path().exists());
        dir.remove().unwrap();
        dir.remove().unwrap();
    }

    #[test]
    fn private_files_are_0600_and_truncated() {
        let cache = tempfile::tempdir().unwrap();
        let dir = RunDir::create(cache.path(), "p").unwrap();
        let f = dir.console_log();
        RunDir::write_private(&f, b"a longer first text").unwrap();
        RunDir::write_private(&f, b"short").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"short");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = RunDir::write_private(&dir.file("no/such/dir"), b"").unwrap_err();
        let VmError::Io { what, .. } = err else {
            panic!("not an I/O error: {err}");
        };
        assert_eq!(what, "writing");
    }

    #[test]
    fn socket_path_limit() {
        RunDir::check_socket_path(Path::new("/run/x.sock")).unwrap();
        let long = PathBuf::from(format!("/{}", "a".repeat(120)));
        assert!(matches!(
            RunDir::check_socket_path(&long),
            Err(VmError::SocketPathTooLong { .. })
        ));
    }
}
