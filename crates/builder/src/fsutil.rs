//! Path handling confined to a root directory.
//!
//! Image paths are resolved with `openat2(RESOLVE_IN_ROOT)`, so `..` stops at
//! the root and symlinks (absolute or relative) resolve as if the root were
//! `/`: nothing in an image can send a write outside it. (Build context
//! paths are checked by firebuild-source.)

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How symlinks and `..` are treated while resolving below a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// As if the root were `/` (image filesystems).
    InRoot,
    /// Escaping the root is an error (`EXDEV`).
    #[cfg(test)]
    Beneath,
}

/// Dangling symlinks [`Root::mkdir_all`] follows before giving up (the
/// kernel's own bound on links in one lookup).
const MAX_DANGLING_LINKS: usize = 40;

/// Where one walk of [`Root::mkdir_all`] ended.
enum Walk {
    Made(OwnedFd),
    /// At a dangling symlink: the path to walk instead.
    Redirected(String),
}

/// An open directory that paths are resolved under.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    scope: Scope,
}

impl Root {
    pub fn open(path: &Path, scope: Scope) -> rustix::io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // The canonical path, so host paths of descriptors compare with it.
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap_or_else(|_| path.to_path_buf());
        Ok(Root { fd, path, scope })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn resolve_flags(&self) -> ResolveFlags {
        let base = ResolveFlags::NO_MAGICLINKS;
        match self.scope {
            Scope::InRoot => base | ResolveFlags::IN_ROOT,
            #[cfg(test)]
            Scope::Beneath => base | ResolveFlags::BENEATH,
        }
    }

    /// Opens `rel` (relative, already cleaned) with `flags`.
    pub fn open_at(&self, rel: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                self.resolve_flags(),
            ) {
                // EAGAIN: a concurrent rename raced the lookup; retry a little.
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                other => return other,
            }
        }
    }

    /// Splits `rel` into its parent directory (opened, symlinks resolved in
    /// the root) and final name (not followed). `None` for the root itself.
    pub fn parent_of(&self, rel: &str) -> rustix::io::Result<Option<(OwnedFd, OsString)>> {
        let rel = clean_rel(rel);
        let Some((parent, name)) = split_last(&rel) else {
            return Ok(None);
        };
        let dir = self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok(Some((dir, OsString::from(name))))
    }

    /// `mkdir -p` inside the root; each created directory gets `mode` and
    /// `owner` and is reported to `created` (outermost first). A dangling
    /// symlink on the way is followed inside the root and its target made,
    /// as Docker does for WORKDIR, COPY and VOLUME.
    pub fn mkdir_all(
        &self,
        rel: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        created: &mut Vec<String>,
    ) -> rustix::io::Result<OwnedFd> {
        let mut rel = clean_rel(rel);
        for _ in 0..=MAX_DANGLING_LINKS {
            match self.mkdir_walk(&rel, mode, owner, created)? {
                Walk::Made(fd) => return Ok(fd),
                Walk::Redirected(next) => rel = next,
            }
        }
        Err(Errno::LOOP)
    }

    /// One walk of [`mkdir_all`](Self::mkdir_all), up to its end or to a
    /// dangling symlink, whose target it returns with the rest of the path.
    fn mkdir_walk(
        &self,
        rel: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        created: &mut Vec<String>,
    ) -> rustix::io::Result<Walk> {
        match self.open_at(rel, OFlags::PATH | OFlags::DIRECTORY) {
            Err(Errno::NOENT) => {}
            other => return other.map(Walk::Made),
        }
        let mut cur = self.open_at("", OFlags::PATH | OFlags::DIRECTORY)?;
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut prefix = String::new();
        for (i, comp) in comps.iter().enumerate() {
            let parent = prefix.clone();
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            match self.open_at(&prefix, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            match rustix::fs::mkdirat(&cur, *comp, Mode::from_raw_mode(mode)) {
                // EEXIST right after ENOENT: a dangling symlink.
                Err(Errno::EXIST) => {
                    let target = rustix::fs::readlinkat(&cur, *comp, Vec::new())
                        .map_err(|_| Errno::NOTDIR)?;
                    let target = target.to_str().map_err(|_| Errno::NOTDIR)?;
                    let base = if target.starts_with('/') {
                        target.to_owned()
                    } else {
                        format!("{parent}/{target}")
                    };
                    let rest = comps[i + 1..].join("/");
                    return Ok(Walk::Redirected(clean_rel(&format!("{base}/{rest}"))));
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            // mkdir applies the umask: set the mode exactly.
            rustix::fs::chmodat(&cur, *comp, Mode::from_raw_mode(mode), AtFlags::empty())?;
            if let Some((uid, gid)) = owner {
                chown_at(&cur, OsStr::new(comp), uid, gid)?;
            }
            created.push(prefix.clone());
            cur = self.open_at(&prefix, OFlags::PATH | OFlags::DIRECTORY)?;
        }
        Ok(Walk::Made(cur))
    }

    /// The host path of an opened descriptor, checked to lie under this root
    /// (so it can be handed to calls that take paths, such as `mount`).
    pub fn host_path_of(&self, fd: &OwnedFd) -> rustix::io::Result<PathBuf> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        if !link.starts_with(&self.path) {
            return Err(Errno::XDEV);
        }
        Ok(link)
    }
}

/// Lexically cleans a path to a relative one with normal components (`..`
/// pops, never above the root; leading `/` and `.` dropped).
pub fn clean_rel(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Parent and final component of a cleaned relative path.
pub fn split_last(rel: &str) -> Option<(&str, &str)> {
    if rel.is_empty() {
        return None;
    }
    Some(match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    })
}

/// Joins an image path onto a directory path the way Docker does for
/// relative WORKDIR/COPY destinations.
pub fn join_abs(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        format!("/{}", clean_rel(path))
    } else {
        format!("/{}", clean_rel(&format!("{base}/{path}")))
    }
}

/// lstat of `name` in `dir`; `None` when missing.
pub fn lstat_at(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn chown_at(dir: impl AsFd, name: &OsStr, uid: u32, gid: u32) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Names in an open, readable directory, sorted (for stable hashing and
/// copying order).
pub fn list_names(dir: &OwnedFd) -> rustix::io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    let d = rustix::fs::Dir::read_from(dir)?;
    for entry in d {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        out.push(OsStr::from_bytes(bytes).to_os_string());
    }
    out.sort();
    Ok(out)
}

/// Opens `name` in `dir` as a readable directory without following it.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `/proc/self/fd/<dir>/<name>`: for the few calls that only take paths
/// (`lgetxattr` and friends) without resolving anything but `name`.
pub fn proc_path(dir: &impl AsRawFd, name: &OsStr) -> CString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    // A name from readdir or a cleaned path never contains NUL.
    CString::new(p).unwrap_or_default()
}

/// Extended attributes of `path` (not followed), as (name, value) pairs.
pub fn list_xattrs(path: &CString) -> Vec<(CString, Vec<u8>)> {
    let mut out = Vec::new();
    let mut names = vec![0u8; 4096];
    // SAFETY: buffers are valid for the lengths passed.
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((cname, value));
        }
    }
    out
}

/// Sets one extended attribute on `path` (not followed).
pub fn set_xattr(path: &CString, name: &CString, value: &[u8]) -> rustix::io::Result<()> {
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_joins() {
        assert_eq!(clean_rel("/a/./b/../c/"), "a/c");
        assert_eq!(clean_rel("../../x"), "x");
        assert_eq!(join_abs("/app", "sub/"), "/app/sub");
        assert_eq!(join_abs("/app", "/etc"), "/etc");
        assert_eq!(join_abs("/", "."), "/");
        assert_eq!(split_last("a/b/c"), Some(("a/b", "c")));
        assert_eq!(split_last("c"), Some(("", "c")));
    }

    #[test]
    fn in_root_contains_symlinks_and_beneath_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        let r = Root::open(&root, Scope::InRoot).unwrap();
        let fd = r.open_at("abs", OFlags::PATH | OFlags::DIRECTORY).unwrap();
        assert_eq!(r.host_path_of(&fd).unwrap(), root.join("etc"));
        let fd = r.open_at("up", OFlags::PATH | OFlags::DIRECTORY).unwrap();
        assert_eq!(r.host_path_of(&fd).unwrap(), root);
        let b = Root::open(&root, Scope::Beneath).unwrap();
        assert_eq!(b.open_at("up", OFlags::PATH).unwrap_err(), Errno::XDEV);
        assert_eq!(b.open_at("abs", OFlags::PATH).unwrap_err(), Errno::XDEV);
        let mut created = Vec::new();
        r.mkdir_all("abs/x/y", 0o750, Some((1, 2)), &mut created)
            .unwrap();
        assert_eq!(created, vec!["abs/x", "abs/x/y"]);
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(root.join("etc/x/y")).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o750, 1, 2));
    }

    #[test]
    fn mkdir_all_makes_the_target_of_a_dangling_link_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("srv")).unwrap();
        // Absolute, relative, climbing and chained dangling links.
        std::os::unix::fs::symlink("/data/app", root.join("app")).unwrap();
        std::os::unix::fs::symlink("../cache", root.join("srv/c")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink("/hop2", root.join("hop1")).unwrap();
        std::os::unix::fs::symlink("/final", root.join("hop2")).unwrap();
        std::os::unix::fs::symlink("/loop", root.join("loop")).unwrap();
        let r = Root::open(&root, Scope::InRoot).unwrap();
        let mut created = Vec::new();
        r.mkdir_all("app/logs", 0o755, None, &mut created).unwrap();
        assert!(root.join("data/app/logs").is_dir());
        assert_eq!(created, vec!["data", "data/app", "data/app/logs"]);
        r.mkdir_all("srv/c/x", 0o755, None, &mut Vec::new())
            .unwrap();
        assert!(root.join("cache/x").is_dir());
        r.mkdir_all("out/y", 0o755, None, &mut Vec::new()).unwrap();
        assert!(!outside.exists(), "a directory was made outside the root");
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("y")
            .is_dir());
        r.mkdir_all("hop1", 0o755, None, &mut Vec::new()).unwrap();
        assert!(root.join("final").is_dir());
        assert_eq!(
            r.mkdir_all("loop/z", 0o755, None, &mut Vec::new())
                .unwrap_err(),
            Errno::LOOP
        );
    }
}
