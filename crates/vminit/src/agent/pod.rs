//! The roots of a pod's further containers. The host plugs each
//! container's image in as a read-only disk (hot-plugged and named by its
//! virtio serial under QEMU; a drive reserved at boot and re-pointed under
//! Firecracker, see [`GuestDisk`]); the agent mounts it with an overlay whose writes go to the VM's scratch disk
//! (seen a second time under [`POD_DIR`]), and gives it `/proc`, `/sys` and
//! `/dev`. Processes of that container run chrooted into it, in a mount
//! namespace of their own ([`crate::process::ProcessLimits::root`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_agent_proto::GuestDisk;

use crate::cmdline::KernelCmdline;
use crate::mounts::{detach, sys_mount};

/// Where the containers' mounts live: a tmpfs of the agent's on the VM's
/// root (the sandbox's image), so nothing of it persists.
pub const POD_DIR: &str = "/.firebuild-pod";
/// How long a hot-plugged disk may take to appear (ACPI hot-plug under
/// TCG is slow).
const DEVICE_WAIT: Duration = Duration::from_secs(20);

/// A container id as CRI and ctr make them: a path component, never a
/// way out of [`POD_DIR`].
fn checked_id(id: &str) -> io::Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(id)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("container id {id:?} is not a plain name"),
        ))
    }
}

/// The root of container `id` (for [`crate::agent::exec`]), if mounted.
pub fn root_of(id: &str) -> io::Result<PathBuf> {
    let root = Path::new(POD_DIR).join(checked_id(id)?).join("root");
    if root.join("proc").is_dir() && is_mount_point(&root) {
        Ok(root)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("container {id} has no root in this VM"),
        ))
    }
}

/// Mounts `disk` as container `id`'s root; returns it.
pub fn mount_root(id: &str, disk: &GuestDisk) -> io::Result<PathBuf> {
    let id = checked_id(id)?;
    let scratch = scratch_view()?;
    let device = match disk {
        GuestDisk::Serial { serial } => wait_for_serial(serial)?,
        GuestDisk::Device { name, sectors } => wait_for_size(checked_disk_name(name)?, *sectors)?,
    };
    let dir = Path::new(POD_DIR).join(id);
    if dir.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("container {id} already has a root"),
        ));
    }
    let (image, root) = (dir.join("image"), dir.join("root"));
    let writes = scratch.join("pods").join(id);
    let _ = std::fs::remove_dir_all(&writes);
    let (upper, work) = (writes.join("upper"), writes.join("work"));
    for d in [&image, &root, &upper, &work] {
        std::fs::create_dir_all(d)?;
    }
    let made = (|| {
        mount(
            &device,
            &image,
            "ext4",
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            "noload",
        )?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.display(),
            upper.display(),
            work.display()
        );
        mount(Path::new("overlay"), &root, "overlay", 0, &options)?;
        for d in ["proc", "sys", "dev", "dev/shm"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        mount(Path::new("proc"), &root.join("proc"), "proc", 0, "")?;
        let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        mount(Path::new("sysfs"), &root.join("sys"), "sysfs", ro, "")?;
        mount(Path::new("/dev"), &root.join("dev"), "", libc::MS_BIND, "")?;
        mount(
            Path::new("shm"),
            &root.join("dev/shm"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        )
    })();
    if let Err(e) = made {
        let _ = remove_root(id);
        return Err(e);
    }
    Ok(root)
}

/// Unmounts container `id`'s root and drops its writes. Idempotent.
pub fn remove_root(id: &str) -> io::Result<()> {
    let id = checked_id(id)?;
    let dir = Path::new(POD_DIR).join(id);
    let root = dir.join("root");
    for sub in ["dev/shm", "dev", "sys", "proc", ""] {
        detach(&root.join(sub));
    }
    detach(&dir.join("image"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    if let Ok(scratch) = scratch_view() {
        let writes = scratch.join("pods").join(id);
        if writes.exists() {
            std::fs::remove_dir_all(writes)?;
        }
    }
    Ok(())
}

/// The scratch disk mounted a second time under [`POD_DIR`] (the root
/// overlay's upper cannot hold another overlay's upper: it is an overlay).
fn scratch_view() -> io::Result<PathBuf> {
    let view = Path::new(POD_DIR).join(".scratch");
    if is_mount_point(&view) {
        return Ok(view);
    }
    if !is_mount_point(Path::new(POD_DIR)) {
        std::fs::create_dir_all(POD_DIR)?;
        mount(
            Path::new("tmpfs"),
            Path::new(POD_DIR),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0700",
        )?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let device = crate::overlay::scratch_device(&KernelCmdline::parse(&cmdline))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "this VM has no scratch disk for its containers' writes",
            )
        })?;
    std::fs::create_dir_all(&view)?;
    mount(
        &Path::new("/dev").join(device),
        &view,
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    )?;
    Ok(view)
}

/// The device node of the disk whose virtio serial is `serial`.
fn wait_for_serial(serial: &str) -> io::Result<PathBuf> {
    wait_for(
        || {
            let name = block_device_with_serial(Path::new("/sys/block"), serial)?;
            let node = Path::new("/dev").join(name);
            node.exists().then_some(node)
        },
        || format!("no disk with serial {serial:?} appeared"),
    )
}

/// A virtio disk's name (`vdb`, `vdaa`): never a path.
fn checked_disk_name(name: &str) -> io::Result<&str> {
    let ok = name.len() > 2
        && name.len() <= 6
        && name.starts_with("vd")
        && name[2..].bytes().all(|b| b.is_ascii_lowercase());
    if ok {
        Ok(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a virtio disk name"),
        ))
    }
}

/// The node of reserved drive `name` once the guest sees the image the
/// host re-pointed it at (the capacity change reaches the guest a little
/// after the VMM made it), with what the drive cached of its earlier image
/// dropped: the same sectors now read another file.
fn wait_for_size(name: &str, sectors: u64) -> io::Result<PathBuf> {
    let size_file = Path::new("/sys/block").join(name).join("size");
    let seen = || {
        std::fs::read_to_string(&size_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let node = wait_for(
        || (seen() == Some(sectors)).then(|| Path::new("/dev").join(name)),
        || {
            format!(
                "disk {name} did not show the {sectors} sectors of its image (it shows {:?})",
                seen()
            )
        },
    )?;
    flush_buffers(&node)?;
    Ok(node)
}

/// Polls `found` until it gives a node, for at most [`DEVICE_WAIT`];
/// `missing` says what did not happen.
fn wait_for(
    mut found: impl FnMut() -> Option<PathBuf>,
    missing: impl FnOnce() -> String,
) -> io::Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Some(node) = found() {
            return Ok(node);
        }
        if start.elapsed() > DEVICE_WAIT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} within {} s", missing(), DEVICE_WAIT.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `BLKFLSBUF`: drops the block device's page cache.
fn flush_buffers(node: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    let file = std::fs::File::open(node)?;
    // SAFETY: BLKFLSBUF takes no argument; the fd is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF as _, 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("dropping the cached blocks of {}: {e}", node.display()),
        ));
    }
    Ok(())
}

/// The block device under `sys_block` whose `serial` attribute is `serial`.
pub fn block_device_with_serial(sys_block: &Path, serial: &str) -> Option<String> {
    std::fs::read_dir(sys_block).ok()?.flatten().find_map(|e| {
        let found = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (found.trim() == serial).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

fn is_mount_point(path: &Path) -> bool {
    crate::mounts::is_mounted(&path.to_string_lossy()).unwrap_or(false)
}

fn mount(
    source: &Path,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    sys_mount(
        &source.to_string_lossy(),
        &target.to_string_lossy(),
        fstype,
        flags,
        data,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("mounting {}: {e}", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_stay_inside_the_pod_dir() {
        for good in ["abc", "0123456789abcdef", "my-app_1.2"] {
            assert!(checked_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(checked_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_drives_are_plain_virtio_names() {
        for good in ["vdb", "vdz", "vdaa"] {
            assert!(checked_disk_name(good).is_ok(), "{good}");
        }
        for bad in ["", "vd", "sda", "vdB", "vd1", "../vdb", "vdb/x", "vdaaaaa"] {
            assert!(checked_disk_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disks_are_found_by_their_serial() {
        let dir = tempfile::tempdir().unwrap();
        for (name, serial) in [("vda", ""), ("vdb", "fb-c0\n"), ("vdc", "fb-c1")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("serial"), serial).unwrap();
        }
        std::fs::create_dir(dir.path().join("loop0")).unwrap();
        let find = |s| block_device_with_serial(dir.path(), s);
        assert_eq!(find("fb-c0").as_deref(), Some("vdb"));
        assert_eq!(find("fb-c1").as_deref(), Some("vdc"));
        assert_eq!(find("fb-c2"), None);
    }
}
