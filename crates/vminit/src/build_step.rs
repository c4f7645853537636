//! Build mode (`rootfs --isolation microvm`): the VM runs one RUN step. Its
//! root is an overlay of the step's layer disks whose upper layer, on the
//! scratch disk, is the step's diff ([`crate::overlay`]); the host runs the
//! command through the agent and then asks for that diff (`LayerOut`).
//!
//! Nothing may land in the root that the step did not write: no tmpfs on
//! `/tmp` or `/run` (a RUN's files there belong to its layer), no files of
//! the init's own (`/etc/hosts` and `/etc/resolv.conf` are bind mounts of
//! files kept on `/dev`, which is not part of the layer), and the mount
//! points the init had to create are removed before the diff is sent, as
//! the host's sandbox does.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mounts::sys_mount;

/// Where the scratch disk is mounted a second time, so the agent reaches
/// the overlay's upper directory (`<this>/upper`) after the pivot.
pub const SCRATCH_VIEW: &str = "/dev/.firebuild-scratch";

/// Where the step's hosts and resolv.conf live.
const ETC_DIR: &str = "/dev/.firebuild-etc";

/// Where heredoc scripts (`RUN <<EOF`) are copied, as the host sandbox has them.
pub const PIPES_DIR: &str = "/dev/pipes";

#[derive(Debug, thiserror::Error)]
pub enum BuildStepError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildStepError {
    let path = path.display().to_string();
    move |source| BuildStepError::Io { what, path, source }
}

/// What PID 1 set up in the step's root, undone by [`finish`]. The agent
/// is forked after the set-up, so it inherits this record.
#[derive(Default)]
struct Setup {
    /// Mount targets, in mount order.
    mounted: Vec<PathBuf>,
    /// Mount points that did not exist in the layers (files and dirs).
    made: Vec<PathBuf>,
}

/// Set once the init runs in build mode: `LayerOut` is refused otherwise
/// (it kills every process).
static BUILD_MODE: AtomicBool = AtomicBool::new(false);

/// Whether this VM runs a build step.
pub fn is_build_mode() -> bool {
    BUILD_MODE.load(Ordering::SeqCst)
}

static SETUP: Mutex<Setup> = Mutex::new(Setup {
    mounted: Vec::new(),
    made: Vec::new(),
});

fn setup() -> std::sync::MutexGuard<'static, Setup> {
    SETUP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates `path` (a directory, or with `file` an empty file) and its
/// missing parents, recording each one made.
fn ensure(path: &Path, file: bool) -> Result<(), BuildStepError> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        ensure(parent, false)?;
    }
    if file {
        std::fs::File::create(path).map_err(io_error("creating the mount point", path))?;
    } else {
        std::fs::create_dir(path).map_err(io_error("creating the mount point", path))?;
    }
    setup().made.push(path.to_owned());
    Ok(())
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), BuildStepError> {
    sys_mount(source, &target.to_string_lossy(), fstype, flags, data)
        .map_err(io_error("mounting", target))?;
    setup().mounted.push(target.to_owned());
    Ok(())
}

/// The step's kernel filesystems (as a container runtime gives a RUN) and
/// the second view of the scratch disk. Called right after the pivot.
pub fn mount_step_filesystems(scratch_device: &str) -> Result<(), BuildStepError> {
    BUILD_MODE.store(true, Ordering::SeqCst);
    const NOSUID: libc::c_ulong = libc::MS_NOSUID;
    const NODEV: libc::c_ulong = libc::MS_NODEV;
    const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 5] = [
        ("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            NOSUID | NOEXEC,
            "mode=0620,ptmxmode=0666,gid=5",
        ),
        ("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777"),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let target = Path::new(target);
        ensure(target, false)?;
        mount(source, target, fstype, flags, data)?;
    }
    // On /dev from here on: not part of the layer.
    for dir in [SCRATCH_VIEW, ETC_DIR, PIPES_DIR] {
        std::fs::create_dir_all(dir).map_err(io_error("creating", Path::new(dir)))?;
    }
    let node = format!("/dev/{scratch_device}");
    mount(&node, Path::new(SCRATCH_VIEW), "ext4", NOSUID | NODEV, "")
}

/// Lays the step's `/etc/hosts` and `/etc/resolv.conf` over the root's
/// (none without nameservers: the layers' own file stays, as in the host
/// sandbox with `--network none`).
pub fn bind_etc_files(hosts: &str, resolv_conf: Option<&str>) -> Result<(), BuildStepError> {
    let files = [("hosts", Some(hosts)), ("resolv.conf", resolv_conf)];
    for (name, content) in files {
        let Some(content) = content else { continue };
        let source = Path::new(ETC_DIR).join(name);
        std::fs::write(&source, content).map_err(io_error("writing", &source))?;
        let target = Path::new("/etc").join(name);
        ensure(&target, true)?;
        mount(&source.to_string_lossy(), &target, "", libc::MS_BIND, "")?;
    }
    Ok(())
}

/// Ends the step: kills what it left running, takes the diff's directory,
/// undoes [`mount_step_filesystems`] and [`bind_etc_files`] and removes the
/// mount points made for them while still empty. Returns the upper
/// directory, to be sent from.
pub fn finish() -> io::Result<OwnedFd> {
    kill_strays();
    let upper = std::fs::File::open(Path::new(SCRATCH_VIEW).join("upper"))?;
    let mut setup = setup();
    for target in setup.mounted.iter().rev() {
        // Lazily: the upper directory stays reachable through its fd.
        crate::mounts::detach(target);
    }
    setup.mounted.clear();
    for path in setup.made.drain(..).rev() {
        let empty = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none()),
            Ok(m) => m.is_file() && m.len() == 0,
            Err(_) => false,
        };
        if empty {
            let _ = std::fs::remove_dir(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    Ok(upper.into())
}

/// SIGKILLs every process but PID 1 and this one (daemons a RUN started),
/// and waits a moment for them to go: their writes must be over before the
/// diff is read.
fn kill_strays() {
    let me = std::process::id();
    let others = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != 1 && pid != me && is_user_process(pid))
            .map(|pid| pid as i32)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = others();
        if left.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in left {
            // SAFETY: kill(2) with a pid read from /proc.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kernel threads have no command line; zombies are PID 1's to reap.
fn is_user_process(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = status
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && !cmdline.is_empty()
}

/// The step's `/etc/hosts`, as Docker gives a RUN.
pub fn hosts_file(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// Makes `fd` this process's working directory (the agent sends the diff
/// from `.`).
pub fn enter(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fchdir(2) on a directory fd we own.
    if unsafe { libc::fchdir(fd.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_mount_points_are_made_and_recorded_parents_first() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("etc/sub/hosts");
        ensure(&target, true).unwrap();
        assert!(target.is_file());
        let made: Vec<PathBuf> = setup().made.drain(..).collect();
        assert_eq!(
            made,
            [
                tmp.path().join("etc"),
                tmp.path().join("etc/sub"),
                target.clone()
            ]
        );
        // Existing paths are left alone and not recorded.
        ensure(&target, true).unwrap();
        assert!(setup().made.is_empty());
    }

    #[test]
    fn hosts_name_the_step_host() {
        assert!(hosts_file("firebuild").starts_with("127.0.0.1\tlocalhost firebuild\n"));
    }
}
