//! Named network namespaces under `/run/netns`, made the way `ip netns add`
//! makes them (so `ip netns` and `ip -n` see ours), and running code or
//! commands inside a namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use crate::error::{validate_name, CniError, Result};

/// Where named namespaces are bind-mounted (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `statfs` magic of nsfs, the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The path of the named namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn netns_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CniError + 'a {
    move |source| CniError::Netns {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Creates the named namespace `name` and returns its path. Fails if it exists.
pub fn create(name: &str) -> Result<PathBuf> {
    validate_name("network namespace name", name, 200)?;
    let run_dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(run_dir).map_err(netns_err(run_dir, "create directory"))?;
    make_run_dir_shared(run_dir)?;

    let path = netns_path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(netns_err(&path, "create mount point"))?;

    // unshare(CLONE_NEWNET) only moves the calling thread, so do it in a
    // thread of its own and pin the new namespace with a bind mount.
    let res = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: only NEWNET is unshared; no file table is split.
            unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET)? };
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &path)?;
            Ok(())
        })
        .join()
    });
    let res = match res {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    if let Err(e) = res {
        let _ = fs::remove_file(&path);
        return Err(CniError::Netns {
            path,
            op: "unshare and bind-mount",
            source: e,
        });
    }
    tracing::debug!(path = %path.display(), "created network namespace");
    Ok(path)
}

/// Makes `/run/netns` a shared mount (bind-mounting it on itself first if
/// needed), as iproute2 does, so namespaces made later show up in other
/// mount namespaces (e.g. a jailer's).
fn make_run_dir_shared(dir: &Path) -> Result<()> {
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match rustix::mount::mount_change(dir, shared) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => {
            rustix::mount::mount_bind_recursive(dir, dir)
                .map_err(|e| netns_err(dir, "bind-mount on itself")(e.into()))?;
            rustix::mount::mount_change(dir, shared)
                .map_err(|e| netns_err(dir, "make shared")(e.into()))
        }
        Err(e) => Err(netns_err(dir, "make shared")(e.into())),
    }
}

/// Whether `path` is a live namespace file (an nsfs mount).
// f_type's integer type differs between architectures.
#[allow(clippy::unnecessary_cast)]
pub fn exists(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC)
}

/// Whether any process runs inside the namespace at `path` (a VMM still
/// using it), found by comparing namespace inodes with `/proc/*/ns/net`.
pub fn in_use(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = fs::metadata(path) else {
        return false;
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        fs::metadata(entry.path().join("ns/net"))
            .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
    })
}

/// Deletes a namespace made by [`create`] (or `ip netns add`). A missing one
/// is fine. Devices inside (veth end, tap) go with it once nothing holds it.
pub fn delete(path: &Path) -> Result<()> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(netns_err(path, "unmount")(e.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(netns_err(path, "remove")(e)),
    }
    tracing::debug!(path = %path.display(), "deleted network namespace");
    Ok(())
}

/// Names of the namespaces in `/run/netns`.
pub fn list() -> Result<Vec<String>> {
    let dir = Path::new(NETNS_RUN_DIR);
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CniError::io(dir, e)),
    };
    let mut names: Vec<String> = read
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn open_ns(path: &Path) -> Result<OwnedFd> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(netns_err(path, "open"))
}

/// Runs `f` on a thread that has entered the namespace at `path` (or on the
/// calling thread when `path` is `None`). Sockets made inside stay bound to
/// that namespace.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(path: Option<&Path>, f: F) -> Result<T> {
    let Some(path) = path else {
        return Ok(f());
    };
    let fd = open_ns(path)?;
    let joined = std::thread::scope(|s| {
        s.spawn(move || -> io::Result<T> {
            rustix::thread::move_into_link_name_space(
                fd.as_fd(),
                Some(LinkNameSpaceType::Network),
            )?;
            Ok(f())
        })
        .join()
    });
    match joined {
        Ok(r) => r.map_err(netns_err(path, "enter (setns)")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Makes `cmd` start inside the namespace at `path` (setns between fork and
/// exec). The namespace handle lives as long as `cmd`; it is close-on-exec.
/// The runtime uses this to start QEMU in the VM's namespace.
pub fn command_in_netns(cmd: &mut Command, path: &Path) -> Result<()> {
    let fd = open_ns(path)?;
    // SAFETY: the closure only makes the setns syscall on an fd it owns.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(io::Error::from)
        });
    }
    Ok(())
}
