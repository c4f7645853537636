//! The early filesystems PID 1 mounts before anything else.

use std::ffi::CString;
use std::io;
use std::path::Path;

/// One mount the init performs.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
    /// Mounted only when the directory is missing or empty, so an image's
    /// own files there (e.g. in /tmp or /run) stay visible.
    pub only_if_empty: bool,
    /// A kernel without this filesystem type is tolerated with a warning.
    pub optional: bool,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// The mounts, in order (parents before children).
pub const EARLY_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        only_if_empty: false,
        optional: false,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        only_if_empty: false,
        optional: false,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
        only_if_empty: false,
        optional: false,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "mode=0620,ptmxmode=0666,gid=5",
        only_if_empty: false,
        optional: false,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
        only_if_empty: false,
        optional: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=0755",
        only_if_empty: true,
        optional: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
        only_if_empty: true,
        optional: false,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        only_if_empty: false,
        optional: true,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating mount point {target}: {source}")]
    MountPoint {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("mounting {fstype} on {target}: {source}; the kernel needs this filesystem built in")]
    Mount {
        fstype: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
}

/// What happened to one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    Mounted,
    AlreadyMounted,
    /// The image has files there; left as is.
    SkippedNotEmpty,
    /// The kernel lacks the filesystem (only for optional mounts).
    Unsupported(String),
}

/// The mount points listed in a mountinfo text (field 5, with the kernel's
/// octal escapes for space, tab, newline and backslash decoded).
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `target` lazily (it goes once unused); best effort, for
/// clean-ups that must go on.
pub fn detach(target: &Path) {
    if let Ok(t) = CString::new(target.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

pub fn is_mounted(target: &str) -> Result<bool, MountError> {
    if target == "/proc" {
        // Before /proc is mounted there is no mountinfo to read.
        return Ok(Path::new("/proc/self/mountinfo").exists());
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    Ok(mount_points(&text).iter().any(|m| m == target))
}

fn dir_has_entries(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some())
}

/// mount(2); an empty `data` passes none.
pub fn sys_mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let cstr = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, tgt, fs, dat) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings living across the call.
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
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Performs one mount unless already mounted.
pub fn mount_one(spec: &MountSpec) -> Result<MountOutcome, MountError> {
    if is_mounted(spec.target)? {
        return Ok(MountOutcome::AlreadyMounted);
    }
    let target = Path::new(spec.target);
    if spec.only_if_empty && dir_has_entries(target) {
        return Ok(MountOutcome::SkippedNotEmpty);
    }
    if !target.is_dir() {
        if spec.optional {
            // e.g. /sys/fs/cgroup exists only when the kernel has cgroups.
            return Ok(MountOutcome::Unsupported(format!(
                "{} does not exist",
                spec.target
            )));
        }
        std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint {
            target: spec.target.to_string(),
            source,
        })?;
    }
    let result = sys_mount(spec.source, spec.target, spec.fstype, spec.flags, spec.data);
    let Err(err) = result else {
        return Ok(MountOutcome::Mounted);
    };
    if spec.optional && err.raw_os_error() == Some(libc::ENODEV) {
        return Ok(MountOutcome::Unsupported(err.to_string()));
    }
    Err(MountError::Mount {
        fstype: spec.fstype.to_string(),
        target: spec.target.to_string(),
        source: err,
    })
}

/// Performs [`EARLY_MOUNTS`] in order; returns each target's outcome.
pub fn mount_early() -> Result<Vec<(&'static str, MountOutcome)>, MountError> {
    EARLY_MOUNTS
        .iter()
        .map(|spec| mount_one(spec).map(|o| (spec.target, o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
40 22 0:30 / /mnt/with\\040space rw - tmpfs tmpfs rw
41 22 0:31 / /odd\\134name rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points(text),
            ["/", "/proc", "/mnt/with space", "/odd\\name"]
        );
        assert_eq!(unescape_octal("a\\04"), "a\\04", "a short escape is kept");
    }

    #[test]
    fn early_mounts_put_parents_first() {
        for (i, m) in EARLY_MOUNTS.iter().enumerate() {
            for earlier in &EARLY_MOUNTS[..i] {
                assert!(
                    !earlier.target.starts_with(&format!("{}/", m.target)),
                    "{} must come before {}",
                    m.target,
                    earlier.target
                );
            }
        }
    }
}
