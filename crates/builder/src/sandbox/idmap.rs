//! The sandbox's user namespace mapping, and idmapped mounts.
//!
//! RUN executes as uid/gid 0..N of a user namespace whose ids are an
//! unprivileged subordinate range of the host ([`IdMap`], from
//! `/etc/subuid` and `/etc/subgid`). The files the step reads and writes are
//! reached through idmapped mounts made with the same mapping, so an inode
//! owned by uid 0 on disk is owned by the sandbox's root, and what the
//! step's `chown 1000` writes is uid 1000 on disk: the image keeps exactly
//! the owners Docker would give it, and nothing is rewritten afterwards.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::error::{BuildError, Result};

/// The user whose subordinate ranges the sandbox uses.
pub const SUBID_USER: &str = "firebuild";

/// Ids the sandbox maps: 0..[`MIN_IDS`] covers every id images use
/// (65534 is `nobody`).
pub const MIN_IDS: u32 = 65536;

/// The host ids that the sandbox's ids `0..count` stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First host uid (the sandbox's uid 0).
    pub uid: u32,
    /// First host gid (the sandbox's gid 0).
    pub gid: u32,
    pub count: u32,
}

impl IdMap {
    /// The ranges of [`SUBID_USER`] in `/etc/subuid` and `/etc/subgid`.
    pub fn from_system() -> Result<IdMap> {
        Self::from_files(
            Path::new("/etc/subuid"),
            Path::new("/etc/subgid"),
            SUBID_USER,
        )
    }

    /// The first range of `user` with at least [`MIN_IDS`] ids in each file.
    pub fn from_files(subuid: &Path, subgid: &Path, user: &str) -> Result<IdMap> {
        let (uid, ucount) = range_in(subuid, user)?;
        let (gid, gcount) = range_in(subgid, user)?;
        Ok(IdMap {
            uid,
            gid,
            count: ucount.min(gcount).min(MIN_IDS),
        })
    }

    /// The `uid_map` / `gid_map` line for this mapping.
    pub fn uid_line(&self) -> String {
        format!("0 {} {}\n", self.uid, self.count)
    }

    pub fn gid_line(&self) -> String {
        format!("0 {} {}\n", self.gid, self.count)
    }
}

fn range_in(file: &Path, user: &str) -> Result<(u32, u32)> {
    let missing = |why: String| BuildError::SubordinateIds {
        file: file.to_path_buf(),
        user: user.to_owned(),
        reason: why,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing("the file does not exist".into()))
        }
        Err(e) => return Err(missing(format!("cannot read it: {e}"))),
    };
    let mut short = None;
    for line in text.lines() {
        let mut f = line.trim().split(':');
        let (Some(name), Some(start), Some(count)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if name != user {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
            continue;
        };
        if start == 0 {
            continue; // never map the sandbox's root onto host root
        }
        if count >= MIN_IDS && start.checked_add(count).is_some() {
            return Ok((start, count));
        }
        short = Some(count);
    }
    Err(missing(match short {
        Some(n) => format!("its range has {n} ids; at least {MIN_IDS} are needed"),
        None => "there is no line for it".into(),
    }))
}

/// Attaches an idmapped copy of the mount at `source` (that directory and
/// below, on the same filesystem) on `target`, mapping ids through the user
/// namespace `userns`. `readonly` makes the copy read-only.
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    readonly: bool,
) -> std::io::Result<()> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    if readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    // SAFETY: mount_setattr on our own detached tree with a valid struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_read_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let (u, g) = (d.path().join("subuid"), d.path().join("subgid"));
        std::fs::write(&u, "alice:100000:65536\nfirebuild:0:65536\nfirebuild:300000:1000\nfirebuild:200000:65536\n").unwrap();
        std::fs::write(&g, "firebuild:400000:70000\n").unwrap();
        let m = IdMap::from_files(&u, &g, "firebuild").unwrap();
        assert_eq!(
            m,
            IdMap {
                uid: 200000,
                gid: 400000,
                count: 65536
            }
        );
        assert_eq!(m.uid_line(), "0 200000 65536\n");

        std::fs::write(&g, "firebuild:400000:1000\n").unwrap();
        let e = IdMap::from_files(&u, &g, "firebuild")
            .unwrap_err()
            .to_string();
        assert!(e.contains("subgid") && e.contains("1000 ids"), "{e}");
        let e = IdMap::from_files(&d.path().join("nope"), &g, "firebuild")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not exist") && e.contains("firebuild:"),
            "{e}"
        );
        std::fs::write(&u, "alice:100000:65536\n").unwrap();
        let e = IdMap::from_files(&u, &g, "firebuild")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no line"), "{e}");
    }
}
