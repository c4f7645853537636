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

use firebuild_metadata::boot::{LAYERS_KERNEL_ARG, OVERLAY_KERNEL_ARG};

use crate::cmdline::KernelCmdline;

/// Where the init's private mounts go while it assembles the root.
const WORK: &str = "/.firebuild";

/// How long the scratch disk's device node may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{0}={1:?}: expected a device such as /dev/vdc")]
    BadArg(&'static str, String),
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

/// What the root became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The root drive as the kernel mounted it.
    Image,
    /// An overlay on the read-only root drive.
    Overlay,
    /// A build step's root: an overlay of its layer disks; the scratch
    /// disk's device name, for the step's diff.
    Layers { scratch: String },
}

/// The scratch disk's device name (`vdc`) from `firebuild.overlay=`.
pub fn scratch_device(cmdline: &KernelCmdline) -> Result<Option<String>, OverlayError> {
    cmdline
        .get(OVERLAY_KERNEL_ARG)
        .map(|value| device_name(OVERLAY_KERNEL_ARG, value))
        .transpose()
}

/// The layer disks' device names from `firebuild.layers=`, bottom first.
pub fn layer_devices(cmdline: &KernelCmdline) -> Result<Option<Vec<String>>, OverlayError> {
    cmdline
        .get(LAYERS_KERNEL_ARG)
        .map(|value| {
            value
                .split(',')
                .map(|d| device_name(LAYERS_KERNEL_ARG, d))
                .collect()
        })
        .transpose()
}

fn device_name(arg: &'static str, value: &str) -> Result<String, OverlayError> {
    match value.strip_prefix("/dev/") {
        Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Ok(name.to_owned())
        }
        _ => Err(OverlayError::BadArg(arg, value.to_owned())),
    }
}

/// Reads the kernel command line and, when it asks for an overlay root,
/// switches into one. Leaves no mount of its own behind when it does not.
pub fn switch_root_if_asked() -> Result<Root, OverlayError> {
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
        let layers = layer_devices(&cmdline)?;
        match (scratch_device(&cmdline)?, layers) {
            (Some(scratch), Some(layers)) => {
                assemble(&scratch, Some(&layers))?;
                Ok(Root::Layers { scratch })
            }
            (Some(scratch), None) => assemble(&scratch, None).map(|()| Root::Overlay),
            (None, _) => Ok(Root::Image),
        }
    })();
    if !matches!(result, Ok(Root::Overlay | Root::Layers { .. })) {
        unmount(WORK);
    }
    result
}

/// Mounts the scratch disk and the overlay under [`WORK`], then pivots.
/// The lower layer is the root drive, or the `layers` disks (bottom first).
fn assemble(device: &str, layers: Option<&[String]>) -> Result<(), OverlayError> {
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
    let options = match layers {
        // The image's root itself is the lower layer: overlayfs reads the
        // filesystem underneath, not the mounts laid on it (like this tmpfs).
        None => format!("lowerdir=/,upperdir={scratch}/upper,workdir={scratch}/work"),
        Some(layers) => {
            let mut lowers = Vec::new();
            for (i, layer) in layers.iter().enumerate() {
                let node = wait_for(&PathBuf::from(&dev_dir).join(layer), layer)?;
                let dir = subdir(&format!("layer{i}"))?;
                mount(
                    &node.to_string_lossy(),
                    &dir,
                    "ext4",
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    "noload",
                    "mounting a layer disk on",
                )?;
                lowers.push(dir);
            }
            lowers.reverse();
            // The layers are in the host's diff format: whiteouts and
            // `user.overlay.*` xattrs (userxattr), as the diff written back.
            format!(
                "lowerdir={},upperdir={scratch}/upper,workdir={scratch}/work,userxattr",
                lowers.join(":")
            )
        }
    };
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
    crate::mounts::sys_mount(source, target, fstype, flags, data).map_err(|source| {
        OverlayError::Mount {
            what,
            target: target.to_owned(),
            source,
        }
    })
}

/// Best effort: only used to leave the image's root as the kernel gave it.
fn unmount(target: &str) {
    crate::mounts::detach(Path::new(target));
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
