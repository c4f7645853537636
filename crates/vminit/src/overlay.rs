//! The overlay root: with `firebuild.overlay=/dev/vdX` the root drive is a
//! shared stored image, attached read-only, and vdX the VM's own scratch
//! disk. Before anything else runs, PID 1 mounts the scratch disk, stacks an
//! overlay on the image (upper and work directories on the scratch disk)
//! and pivots into it, so everything after (the init's own files, the
//! entrypoint, an image's `/sbin/init`) sees a normal writable root and the
//! image is never written.
//!
//! The read-only root cannot take new mount points, and images need not
//! have `/proc` or `/dev`: everything is mounted under a tmpfs laid over
//! `/.firebuild`, the one directory every firebuild image has (the init's
//! binary is already mapped, so covering it is harmless).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_metadata::boot::OVERLAY_KERNEL_ARG;

use crate::cmdline::KernelCmdline;

/// Where the init's private mounts go while it assembles the root.
const WORK: &str = "/.firebuild";

/// How long the scratch disk's device node may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{OVERLAY_KERNEL_ARG}={0:?}: expected a device such as /dev/vdc")]
    BadArg(String),
    #[error("the scratch disk {0} did not appear within {1} s")]
    DeviceMissing(String, u64),
    #[error("{what} {target}: {source}")]
    Mount {
        what: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The scratch disk's device name (`vdc`) from `firebuild.overlay=`.
pub fn scratch_device(cmdline: &KernelCmdline) -> Result<Option<String>, OverlayError> {
    let Some(value) = cmdline.get(OVERLAY_KERNEL_ARG) else {
        return Ok(None);
    };
    match value.strip_prefix("/dev/") {
        Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Ok(Some(name.to_owned()))
        }
        _ => Err(OverlayError::BadArg(value.to_owned())),
    }
}

/// Reads the kernel command line and, when it asks for an overlay root,
/// switches into one. Returns whether it did. Leaves no mount of its own
/// behind when it does not.
pub fn switch_root_if_asked() -> Result<bool, OverlayError> {
    mount(
        "tmpfs",
        WORK,
        "tmpfs",
        libc::MS_NOSUID,
        "mode=0700",
        "mounting a tmpfs on",
    )?;
    let result = (|| {
        let proc_dir = subdir("proc")?;
        mount("proc", &proc_dir, "proc", 0, "", "mounting /proc on")?;
        let cmdline = std::fs::read_to_string(format!("{proc_dir}/cmdline"));
        unmount(&proc_dir);
        let cmdline = KernelCmdline::parse(&cmdline.unwrap_or_default());
        match scratch_device(&cmdline)? {
            Some(device) => assemble(&device).map(|()| true),
            None => Ok(false),
        }
    })();
    if !matches!(result, Ok(true)) {
        unmount(WORK);
    }
    result
}

/// Mounts the scratch disk and the overlay under [`WORK`], then pivots.
fn assemble(device: &str) -> Result<(), OverlayError> {
    let dev_dir = subdir("dev")?;
    mount(
        "devtmpfs",
        &dev_dir,
        "devtmpfs",
        libc::MS_NOSUID,
        "",
        "mounting devtmpfs on",
    )?;
    // An image without /dev/console gave PID 1 no stdio: open it here, so
    // errors reach the console (the files outlive the pivot).
    crate::init::ensure_console_in(&dev_dir);
    let node = wait_for(&PathBuf::from(&dev_dir).join(device), device)?;
    let scratch = subdir("scratch")?;
    mount(
        &node.to_string_lossy(),
        &scratch,
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
        "mounting the scratch disk on",
    )?;
    for d in ["upper", "work"] {
        match std::fs::create_dir(format!("{scratch}/{d}")) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(OverlayError::Io {
                    what: "preparing the scratch disk",
                    source: e,
                })
            }
            _ => {}
        }
    }
    let root = subdir("root")?;
    // The image's root itself is the lower layer: overlayfs reads the
    // filesystem underneath, not the mounts laid on it (like this tmpfs).
    let options = format!("lowerdir=/,upperdir={scratch}/upper,workdir={scratch}/work");
    mount(
        "overlay",
        &root,
        "overlay",
        0,
        &options,
        "mounting the overlay root on",
    )?;
    pivot_into(&root)
}

/// Makes `dir` the root: `pivot_root(".", ".")` stacks the old root on the
/// new one, and detaching it leaves only the new root (no put-old
/// directory needed in an image that may not be writable).
fn pivot_into(dir: &str) -> Result<(), OverlayError> {
    let io_err = |what| move |source| OverlayError::Io { what, source };
    std::env::set_current_dir(dir).map_err(io_err("entering the overlay root"))?;
    let dot = CString::new(".").unwrap_or_default();
    // SAFETY: both arguments are valid NUL-terminated strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(io_err("pivot_root into the overlay root")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: as above; MNT_DETACH lets the old root go once unused.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io_err("detaching the image's root")(
            io::Error::last_os_error(),
        ));
    }
    std::env::set_current_dir("/").map_err(io_err("entering /"))
}

fn subdir(name: &str) -> Result<String, OverlayError> {
    let path = format!("{WORK}/{name}");
    std::fs::create_dir(&path).map_err(|source| OverlayError::Io {
        what: "creating a mount point in the init's tmpfs",
        source,
    })?;
    Ok(path)
}

fn wait_for(node: &Path, device: &str) -> Result<PathBuf, OverlayError> {
    let start = Instant::now();
    while !node.exists() {
        if start.elapsed() > DEVICE_WAIT {
            return Err(OverlayError::DeviceMissing(
                format!("/dev/{device}"),
                DEVICE_WAIT.as_secs(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(node.to_owned())
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
    what: &'static str,
) -> Result<(), OverlayError> {
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let (src, tgt, fs, dat) = (c(source), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(OverlayError::Mount {
            what,
            target: target.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Best effort: only used to leave the image's root as the kernel gave it.
fn unmount(target: &str) {
    let t = CString::new(target).unwrap_or_default();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_device_must_be_a_plain_dev_node() {
        let parse = |line: &str| scratch_device(&KernelCmdline::parse(line));
        assert_eq!(parse("root=/dev/vda ro").unwrap(), None);
        assert_eq!(
            parse("firebuild.overlay=/dev/vdc").unwrap().as_deref(),
            Some("vdc")
        );
        for bad in ["/dev/../vda", "/dev/", "vdc", "/tmp/x", "/dev/vd/c"] {
            let err = parse(&format!("firebuild.overlay={bad}")).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
