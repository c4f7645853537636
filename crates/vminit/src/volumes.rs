//! Volumes (`run --volume`): ext4 disks the host attached after the root,
//! scratch and config drives. The init mounts each at its path, creating the
//! mount point in the (writable) root, before the entrypoint or the image's
//! own init starts.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_metadata::guest::GuestVolume;

use crate::mounts::sys_mount;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume device {0:?}: expected a device such as /dev/vdd")]
    BadDevice(String),
    #[error("volume path {0:?}: expected an absolute path")]
    BadPath(String),
    #[error("the volume disk {device} did not appear within {secs} s")]
    DeviceMissing { device: String, secs: u64 },
    #[error("creating the mount point {path}: {source}")]
    MountPoint {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("mounting the volume {device} on {path}: {source}")]
    Mount {
        device: String,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The mount(2) flags and data of a volume. Read-only volumes are mounted
/// `noload`: a journal left by a writer that was killed cannot be replayed
/// on a read-only disk, and without `noload` the mount would fail.
pub fn mount_options(volume: &GuestVolume) -> (libc::c_ulong, &'static str) {
    if volume.read_only {
        (libc::MS_RDONLY, "noload")
    } else {
        (0, "")
    }
}

/// Where `volume` is mounted below `root`, and its device node.
fn locate(root: &Path, volume: &GuestVolume) -> Result<(PathBuf, PathBuf), VolumeError> {
    let device_ok = volume
        .device
        .strip_prefix("/dev/")
        .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !device_ok {
        return Err(VolumeError::BadDevice(volume.device.clone()));
    }
    let relative = volume
        .path
        .strip_prefix('/')
        .filter(|p| !p.is_empty())
        .ok_or_else(|| VolumeError::BadPath(volume.path.clone()))?;
    Ok((root.join(relative), root.join(&volume.device[1..])))
}

/// Mounts every volume under `root` (`/` in the guest), in order; waits up
/// to `wait` for each device node.
pub fn mount_all(root: &Path, volumes: &[GuestVolume], wait: Duration) -> Result<(), VolumeError> {
    for volume in volumes {
        let (target, node) = locate(root, volume)?;
        wait_for(&node, &volume.device, wait)?;
        std::fs::create_dir_all(&target).map_err(|source| VolumeError::MountPoint {
            path: volume.path.clone(),
            source,
        })?;
        let (flags, data) = mount_options(volume);
        sys_mount(
            &node.to_string_lossy(),
            &target.to_string_lossy(),
            "ext4",
            flags,
            data,
        )
        .map_err(|source| VolumeError::Mount {
            device: volume.device.clone(),
            path: volume.path.clone(),
            source,
        })?;
        let mode = if volume.read_only {
            "read-only"
        } else {
            "read-write"
        };
        crate::log::info(format_args!(
            "volume {} mounted {mode} on {}",
            volume.device, volume.path
        ));
    }
    Ok(())
}

fn wait_for(node: &Path, device: &str, wait: Duration) -> Result<(), VolumeError> {
    let start = Instant::now();
    while !node.exists() {
        if start.elapsed() > wait {
            return Err(VolumeError::DeviceMissing {
                device: device.to_owned(),
                secs: wait.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(device: &str, path: &str, read_only: bool) -> GuestVolume {
        GuestVolume {
            device: device.into(),
            path: path.into(),
            read_only,
        }
    }

    #[test]
    fn volumes_are_located_below_the_root() {
        let (target, node) =
            locate(Path::new("/r"), &volume("/dev/vdd", "/var/data", false)).unwrap();
        assert_eq!(
            (target.as_path(), node.as_path()),
            (Path::new("/r/var/data"), Path::new("/r/dev/vdd"))
        );
        for bad in [
            volume("/dev/../sda", "/d", false),
            volume("vdd", "/d", false),
        ] {
            assert!(matches!(
                locate(Path::new("/"), &bad),
                Err(VolumeError::BadDevice(_))
            ));
        }
        for bad in ["", "/", "relative"] {
            assert!(matches!(
                locate(Path::new("/"), &volume("/dev/vdd", bad, false)),
                Err(VolumeError::BadPath(_))
            ));
        }
    }

    #[test]
    fn read_only_volumes_skip_the_journal() {
        assert_eq!(
            mount_options(&volume("/dev/vdd", "/d", true)),
            (libc::MS_RDONLY, "noload")
        );
        assert_eq!(mount_options(&volume("/dev/vdd", "/d", false)), (0, ""));
    }

    #[test]
    fn a_missing_device_is_named_and_nothing_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let err = mount_all(
            tmp.path(),
            &[volume("/dev/vdq", "/data", false)],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/dev/vdq"), "{err}");
        assert!(!tmp.path().join("data").exists());
    }
}
