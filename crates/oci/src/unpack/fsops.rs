//! Filesystem operations confined to a root directory.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)`: `..` stops at the
//! root and symlinks (absolute or relative) are followed as if the root were
//! `/`, so nothing planted by a layer can send a write outside. The final
//! component of an entry is only ever touched through its parent's descriptor
//! with no-follow semantics.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A cleaned path inside the root: normal components only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct RelPath(Vec<OsString>);

/// Why an archive path was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    ClimbsOut,
    Nul,
}

impl RelPath {
    /// Cleans an archive path: leading `/` and `.` components are dropped,
    /// `..` removes the previous component, and a `..` that would climb above
    /// the root is refused.
    pub fn clean(raw: &[u8]) -> Result<RelPath, PathError> {
        if raw.contains(&0) {
            return Err(PathError::Nul);
        }
        let mut out: Vec<OsString> = Vec::new();
        for comp in raw.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    if out.pop().is_none() {
                        return Err(PathError::ClimbsOut);
                    }
                }
                c => out.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        Ok(RelPath(out))
    }

    /// Parent path and final name (`None` for the root).
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        let (last, rest) = self.0.split_last()?;
        Some((RelPath(rest.to_vec()), last.as_os_str()))
    }

    pub fn join(&self, name: &OsStr) -> RelPath {
        let mut v = self.0.clone();
        v.push(name.to_os_string());
        RelPath(v)
    }

    /// This path and every ancestor (not the root).
    pub fn prefixes(&self) -> impl Iterator<Item = RelPath> + '_ {
        (1..=self.0.len()).map(|n| RelPath(self.0[..n].to_vec()))
    }

    /// The path cut into consecutive parts of at most `max` bytes each (a
    /// component longer than that is a part of its own).
    pub fn parts(&self, max: usize) -> Vec<RelPath> {
        let mut parts: Vec<RelPath> = Vec::new();
        let mut len = 0;
        for c in &self.0 {
            let add = c.len() + 1;
            match parts.last_mut() {
                Some(p) if len + add <= max => p.0.push(c.clone()),
                _ => {
                    parts.push(RelPath(vec![c.clone()]));
                    len = 0;
                }
            }
            len += add;
        }
        parts
    }

    /// The path as `openat2` takes it (`.` for the root).
    pub fn as_os_string(&self) -> OsString {
        if self.0.is_empty() {
            return OsString::from(".");
        }
        let mut s = OsString::new();
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                s.push("/");
            }
            s.push(c);
        }
        s
    }
}

/// An open root directory.
pub(crate) struct Root {
    fd: OwnedFd,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// How the parts of a path past the first `PATH_MAX` bytes resolve.
const DEEP: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// The most bytes of path handed to one lookup (`PATH_MAX` is 4096 with
/// its NUL).
const PART_MAX: usize = 4000;

/// `openat2`, retried a little on EAGAIN (a concurrent rename raced it).
fn openat2_retrying(
    dir: &OwnedFd,
    rel: &RelPath,
    flags: OFlags,
    how: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let path = rel.as_os_string();
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, &path, flags | OFlags::CLOEXEC, Mode::empty(), how) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}

impl Root {
    pub fn open(path: &Path) -> rustix::io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// Opens the regular file `rel` for reading, links followed inside the
    /// root. Anything else is refused before it is opened for reading: the
    /// path is first opened `O_PATH`, which has no effect on a FIFO or a
    /// device, checked, and only then reopened through `/proc/self/fd`.
    pub fn open_regular(&self, rel: &RelPath) -> std::io::Result<std::fs::File> {
        let fd = self.resolve(rel, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let reopened = rustix::fs::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(std::fs::File::from(reopened))
    }

    /// Opens `rel` inside the root with `flags`, following symlinks in it as
    /// if the root were `/`.
    ///
    /// The kernel takes at most `PATH_MAX` bytes per lookup, so a deeper
    /// path is walked in parts: the first inside the root as above, the
    /// rest beneath it with symlinks refused (followed from a part, a link
    /// would resolve against the wrong directory).
    pub fn resolve(&self, rel: &RelPath, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let parts = rel.parts(PART_MAX);
        let Some((last, first)) = parts.split_last().filter(|(_, first)| !first.is_empty()) else {
            return openat2_retrying(&self.fd, rel, flags, RESOLVE);
        };
        let walk = OFlags::PATH | OFlags::DIRECTORY;
        let mut cur = openat2_retrying(&self.fd, &first[0], walk, RESOLVE)?;
        for part in &first[1..] {
            cur = openat2_retrying(&cur, part, walk, DEEP)?;
        }
        openat2_retrying(&cur, last, flags, DEEP)
    }

    /// Opens directory `rel` as an `O_PATH` descriptor for `*at` calls.
    pub fn dir(&self, rel: &RelPath) -> rustix::io::Result<OwnedFd> {
        self.resolve(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Opens directory `rel`, creating missing components (mode 0755) the
    /// way `mkdir -p` would, each one inside the root.
    pub fn dir_create(&self, rel: &RelPath) -> rustix::io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(Errno::NOENT) => {}
            other => return other,
        }
        let mut cur = self.dir(&RelPath::default())?;
        for prefix in rel.prefixes() {
            match self.dir(&prefix) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            let Some((_, name)) = prefix.split_last() else {
                continue;
            };
            match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                // EEXIST after ENOENT: the name is a symlink whose target is
                // missing. Refuse rather than guess where it should lead.
                Err(Errno::EXIST) => return Err(Errno::NOENT),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            cur = self.dir(&prefix)?;
        }
        Ok(cur)
    }
}

/// The type of `name` in `dir`, without following a final symlink.
pub(crate) fn lstat_type(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `make`, which creates `name` in `dir`; when something is already
/// there (a later entry replaces an earlier one), removes it and runs
/// `make` once more.
pub(crate) fn replacing<T>(
    dir: impl AsFd,
    name: &OsStr,
    make: impl Fn() -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    match make() {
        Err(rustix::io::Errno::EXIST) => {
            remove_all(dir, name)?;
            make()
        }
        other => other,
    }
}

/// Removes `name` from `dir`, recursively if it is a directory. Symlinks are
/// removed, never followed. A missing name is not an error.
pub(crate) fn remove_all(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    let dir = dir.as_fd();
    match lstat_type(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            for (child, _) in list_dir(&sub)? {
                remove_all(&sub, &child)?;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Some(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()),
    }
}

/// The entries of an open (readable) directory with their types, if the
/// filesystem reports them.
pub(crate) fn list_dir(dir: &OwnedFd) -> rustix::io::Result<Vec<(OsString, Option<FileType>)>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let ft = entry.file_type();
        let ft = (ft != FileType::Unknown).then_some(ft);
        out.push((OsStr::from_bytes(bytes).to_os_string(), ft));
    }
    Ok(out)
}

/// `/proc/self/fd/<dir>/<name>`: names `name` in `dir` for path-only calls
/// (`lsetxattr`) without resolving anything but the final, unfollowed name.
pub(crate) fn proc_path(dir: &OwnedFd, name: &OsStr) -> OsString {
    let mut p = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    p.push(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        let c = |s: &str| RelPath::clean(s.as_bytes()).map(|p| p.as_os_string());
        assert_eq!(c("./a/b/").unwrap(), "a/b");
        assert_eq!(c("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(c("a/../b").unwrap(), "b");
        assert_eq!(c("./").unwrap(), ".");
        assert_eq!(c("../x"), Err(PathError::ClimbsOut));
        assert_eq!(c("a/../../x"), Err(PathError::ClimbsOut));
        assert_eq!(RelPath::clean(b"a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root_path = outer.path().join("root");
        std::fs::create_dir_all(root_path.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root_path.join("rel")).unwrap();
        let root = Root::open(&root_path).unwrap();
        for link in ["abs", "rel"] {
            let fd = root.dir(&RelPath::clean(link.as_bytes()).unwrap()).unwrap();
            rustix::fs::mkdirat(&fd, link, Mode::from_raw_mode(0o755)).unwrap();
            assert!(root_path.join("etc").join(link).is_dir(), "{link} escaped");
        }
        // A dangling symlink as a parent is refused, not created outside.
        std::os::unix::fs::symlink("/nonexistent-firebuild", root_path.join("dangling")).unwrap();
        let err = root
            .dir_create(&RelPath::clean(b"dangling/x").unwrap())
            .unwrap_err();
        assert_eq!(err, Errno::NOENT);
        assert!(!Path::new("/nonexistent-firebuild").exists());
        // mkdir -p inside the root.
        root.dir_create(&RelPath::clean(b"a/b/c").unwrap()).unwrap();
        assert!(root_path.join("a/b/c").is_dir());
    }
}
