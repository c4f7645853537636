//! Writing files into an image root, every path resolved inside it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use firebuild_agent_proto::tree::{Device, DEVICE_XATTR};

use crate::fsutil::{self, Root};

/// An error while writing, with the image path it concerns.
#[derive(Debug)]
pub struct WriteError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for WriteError {}

type WResult<T> = Result<T, WriteError>;

fn werr(path: &str, e: impl std::fmt::Display) -> WriteError {
    WriteError {
        path: format!("/{path}"),
        message: e.to_string(),
    }
}

/// Metadata to give a written entry.
#[derive(Debug, Clone, Copy)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// (seconds, nanoseconds); `None` leaves the time of writing.
    pub mtime: Option<(i64, i64)>,
}

/// Writes entries below the image root.
pub struct Writer<'a> {
    pub root: &'a Root,
    /// Owner of parent directories it has to create.
    pub parent_owner: (u32, u32),
    /// Source (dev, ino) of multiply-linked files → first image path written.
    links: HashMap<(u64, u64), String>,
}

impl<'a> Writer<'a> {
    pub fn new(root: &'a Root, parent_owner: (u32, u32)) -> Self {
        Writer {
            root,
            parent_owner,
            links: HashMap::new(),
        }
    }

    /// The parent directory of `rel` (created as needed) and the final name.
    fn parent(&self, rel: &str) -> WResult<(OwnedFd, OsString)> {
        let (parent, name) = fsutil::split_last(rel)
            .ok_or_else(|| werr(rel, "cannot replace the root directory"))?;
        let mut created = Vec::new();
        let dir = self
            .root
            .mkdir_all(parent, 0o755, Some(self.parent_owner), &mut created)
            .map_err(|e| werr(parent, format!("creating the directory: {e}")))?;
        let dir = reopen_dir(&dir).map_err(|e| werr(parent, e))?;
        Ok((dir, OsString::from(name)))
    }

    /// Removes a non-directory at `name` so a new entry can take its place.
    fn clear(&self, dir: &OwnedFd, name: &OsStr, rel: &str, want_dir: bool) -> WResult<bool> {
        match fsutil::lstat_at(dir, name).map_err(|e| werr(rel, e))? {
            None => Ok(false),
            Some(st) if fsutil::file_type(&st) == FileType::Directory => {
                if want_dir {
                    Ok(true)
                } else {
                    Err(werr(
                        rel,
                        "cannot overwrite a directory with a non-directory",
                    ))
                }
            }
            Some(_) => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| werr(rel, e))?;
                Ok(false)
            }
        }
    }

    /// A directory; an existing one is kept (its metadata updated only when
    /// `force_attrs`).
    pub fn dir(&mut self, rel: &str, attrs: &Attrs, force_attrs: bool) -> WResult<()> {
        if rel.is_empty() {
            if force_attrs {
                let fd = self
                    .root
                    .open_at("", OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(|e| werr(rel, e))?;
                apply_fd(&fd, attrs).map_err(|e| werr(rel, e))?;
            }
            return Ok(());
        }
        let (dir, name) = self.parent(rel)?;
        let existed = self.clear(&dir, &name, rel, true)?;
        if !existed {
            rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o700))
                .map_err(|e| werr(rel, e))?;
        } else if !force_attrs {
            return Ok(());
        }
        let fd = fsutil::open_dir_at(&dir, &name).map_err(|e| werr(rel, e))?;
        apply_fd(&fd, attrs).map_err(|e| werr(rel, e))
    }

    /// A regular file with `data`'s content. `link_key` (source dev, ino)
    /// makes later files with the same key hard links to this one.
    pub fn file(
        &mut self,
        rel: &str,
        data: &mut dyn Read,
        attrs: &Attrs,
        link_key: Option<(u64, u64)>,
    ) -> WResult<()> {
        if let Some(key) = link_key {
            if let Some(first) = self.links.get(&key).cloned() {
                return self.hardlink(rel, &first);
            }
        }
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, &name, rel, false)?;
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| werr(rel, e))?;
        let mut f = std::fs::File::from(fd);
        std::io::copy(data, &mut f).map_err(|e| werr(rel, format!("writing: {e}")))?;
        apply_fd(&f, attrs).map_err(|e| werr(rel, e))?;
        if let Some(key) = link_key {
            self.links.insert(key, rel.to_owned());
        }
        Ok(())
    }

    pub fn symlink(&mut self, rel: &str, target: &OsStr, attrs: &Attrs) -> WResult<()> {
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, &name, rel, false)?;
        rustix::fs::symlinkat(target, &dir, &name).map_err(|e| werr(rel, e))?;
        fsutil::chown_at(&dir, &name, attrs.uid, attrs.gid).map_err(|e| werr(rel, e))?;
        if let Some((s, ns)) = attrs.mtime {
            let _ = set_mtime_at(&dir, &name, s, ns);
        }
        Ok(())
    }

    /// A device node, FIFO or socket (`attrs.mode` includes the type bits).
    /// A character or block device is written as its device placeholder
    /// (see `firebuild_agent_proto::tree`): never a node on the host.
    pub fn special(&mut self, rel: &str, attrs: &Attrs, rdev: u64) -> WResult<()> {
        let ft = FileType::from_raw_mode(attrs.mode);
        let device = match ft {
            FileType::CharacterDevice if rdev == 0 => None, // a whiteout
            FileType::CharacterDevice | FileType::BlockDevice => Some(
                Device::new(
                    ft == FileType::BlockDevice,
                    rustix::fs::major(rdev),
                    rustix::fs::minor(rdev),
                )
                .map_err(|e| werr(rel, e))?,
            ),
            _ => None,
        };
        if let Some(device) = device {
            let plain = Attrs {
                mode: attrs.mode & 0o7777,
                ..*attrs
            };
            self.file(rel, &mut std::io::empty(), &plain, None)?;
            let marker = [(
                std::ffi::CString::new(DEVICE_XATTR).expect("no NUL"),
                device.marker().into_bytes(),
            )];
            return self.xattrs(rel, &marker);
        }
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, &name, rel, false)?;
        rustix::fs::mknodat(
            &dir,
            &name,
            ft,
            Mode::from_raw_mode(attrs.mode & 0o7777),
            rdev,
        )
        .map_err(|e| werr(rel, e))?;
        fsutil::chown_at(&dir, &name, attrs.uid, attrs.gid).map_err(|e| werr(rel, e))?;
        rustix::fs::chmodat(
            &dir,
            &name,
            Mode::from_raw_mode(attrs.mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| werr(rel, e))?;
        if let Some((s, ns)) = attrs.mtime {
            let _ = set_mtime_at(&dir, &name, s, ns);
        }
        Ok(())
    }

    /// A hard link at `rel` to the already written image path `target`.
    pub fn hardlink(&mut self, rel: &str, target: &str) -> WResult<()> {
        let target = fsutil::clean_rel(target);
        let (tdir, tname) = self
            .root
            .parent_of(&target)
            .map_err(|e| werr(&target, e))?
            .ok_or_else(|| werr(&target, "cannot link to the root directory"))?;
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, &name, rel, false)?;
        rustix::fs::linkat(&tdir, &tname, &dir, &name, AtFlags::empty())
            .map_err(|e| werr(rel, format!("linking to /{target}: {e}")))
    }

    /// Sets extended attributes on an entry already written.
    pub fn xattrs(&self, rel: &str, attrs: &[(std::ffi::CString, Vec<u8>)]) -> WResult<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        let (dir, name) = self
            .root
            .parent_of(rel)
            .map_err(|e| werr(rel, e))?
            .ok_or_else(|| werr(rel, "root"))?;
        let path = fsutil::proc_path(&dir, &name);
        for (k, v) in attrs {
            // overlayfs keeps its own trusted.overlay.* attributes hidden.
            if k.to_bytes().starts_with(b"trusted.overlay.") {
                continue;
            }
            fsutil::set_xattr(&path, k, v).map_err(|e| werr(rel, format!("xattr {k:?}: {e}")))?;
        }
        Ok(())
    }
}

/// O_PATH descriptors cannot be used for `*at` writes on every kernel path
/// we need (fchown etc. work, but openat with O_CREAT does): reopen it.
fn reopen_dir(fd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Owner, then mode (chown clears setuid bits), then mtime.
fn apply_fd(fd: &impl std::os::fd::AsFd, attrs: &Attrs) -> rustix::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(attrs.uid)),
        Some(rustix::fs::Gid::from_raw(attrs.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(attrs.mode & 0o7777))?;
    if let Some((s, ns)) = attrs.mtime {
        let t = rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: ns as _,
        };
        rustix::fs::futimens(
            fd,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
        )?;
    }
    Ok(())
}

fn set_mtime_at(dir: &OwnedFd, name: &OsStr, s: i64, ns: i64) -> rustix::io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rustix::fs::utimensat(
        dir,
        name,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
}
