//! COPY and ADD with Docker's semantics.
//!
//! - Sources are context-relative (the context refuses `..` escapes and
//!   symlinks leading out, naming the path) or, with `--from`, paths in
//!   another stage's or image's root, resolved inside it.
//! - Wildcards (`*`, `?`, `[…]`) match within one path element.
//! - A directory source copies its contents, not itself.
//! - The destination is a directory when it ends with `/` or already is
//!   one; several sources need a destination ending with `/`.
//! - Context files are owned by root unless `--chown`; `--from` keeps
//!   owners unless `--chown`. Modes and mtimes are kept unless `--chmod`.
//! - ADD: URLs are downloaded (mode 0600, `--checksum` verified); local
//!   tar archives (plain, gzip, bzip2, xz, zstd) are extracted.

mod archive;
mod error;
mod glob;
mod writer;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use firebuild_source::{BuildContext, EntryKind};
use rustix::fs::{FileType, OFlags};
use sha2::{Digest as _, Sha256};

use crate::fsutil::{self, Root};
pub use archive::{is_archive, unpack_archive};
use error::source_error;
pub use error::CopyError;
use writer::{Attrs, Writer};

/// Where sources come from.
pub enum Source<'a> {
    Context(&'a BuildContext),
    /// Another stage's or an image's root (mounted read-only).
    Root(&'a Root),
}

/// A file downloaded for `ADD <url>`.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    pub path: PathBuf,
    /// Name for a directory destination: the URL's last path element.
    pub name: String,
    pub mtime: Option<i64>,
    pub digest: String,
}

/// One COPY/ADD, expanded.
#[derive(Debug, Clone, Default)]
pub struct CopyOp {
    pub add: bool,
    /// Non-URL sources.
    pub sources: Vec<String>,
    /// Heredoc sources: (file name, data).
    pub inline: Vec<(String, Vec<u8>)>,
    pub downloads: Vec<Download>,
    pub dest: String,
    pub workdir: String,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    pub excludes: Vec<String>,
    /// ADD: extract local archives.
    pub unpack: bool,
    /// ADD: the most one extracted archive may unpack to (the build's
    /// unpacked-size limit); `None`: firebuild_oci's default.
    pub unpacked_limit: Option<u64>,
}

/// Parses `--chmod` (octal; BuildKit also takes symbolic forms, which we
/// reject with a clear message).
pub fn parse_chmod(s: &str) -> Result<u32, CopyError> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| CopyError::Chmod(s.to_owned()))
}

/// True for `http://` and `https://` sources (ADD downloads them).
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// `--exclude`: patterns match the path relative to the copied source (or
/// its parents); a pattern without `/` also matches a name at any depth.
fn excluded(path: &str, excludes: &[String]) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    excludes.iter().any(|p| {
        glob::path_match(p, path)
            || (!p.contains('/') && firebuild_source::pathmatch::matches(p, name))
    })
}

/// A stable description of the sources' content for the cache key: paths,
/// types, modes, link targets and file content hashes.
pub fn hash_context_sources(
    ctx: &BuildContext,
    op: &CopyOp,
    hashes: &mut crate::filehash::FileHashes,
) -> Result<String, CopyError> {
    let mut h = Sha256::new();
    for src in &op.sources {
        for m in ctx.glob(src).map_err(|e| source_error(src, e))? {
            for e in ctx.walk(&m).map_err(|e| source_error(&m, e))? {
                if excluded(&e.path, &op.excludes) {
                    continue;
                }
                h.update(e.path.as_bytes());
                h.update([0]);
                match &e.kind {
                    EntryKind::Dir => h.update(format!("d{:o}", e.mode)),
                    EntryKind::Symlink(t) => h.update(format!("l{t}")),
                    EntryKind::File => {
                        h.update(format!("f{:o}:{}:", e.mode, e.size));
                        let content = match &e.host_path {
                            Some(host) => hashes
                                .hash(host, || {
                                    open_entry(ctx, &e.path, Some(host)).map_err(|e| e.to_string())
                                })
                                .map_err(|reason| source_error(&e.path, reason))?,
                            None => {
                                let mut r = open_entry(ctx, &e.path, None)?;
                                let mut fh = Sha256::new();
                                std::io::copy(&mut r, &mut fh)
                                    .map_err(|x| source_error(&e.path, x))?;
                                hex::encode(fh.finalize())
                            }
                        };
                        h.update(content);
                    }
                }
                h.update([0]);
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn open_entry(
    ctx: &BuildContext,
    path: &str,
    host: Option<&PathBuf>,
) -> Result<Box<dyn Read + Send>, CopyError> {
    match host {
        Some(p) => {
            // The walk saw a regular file here: never follow a link swapped in since.
            let fd = rustix::fs::open(
                p,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| source_error(path, e))?;
            Ok(Box::new(std::fs::File::from(fd)))
        }
        None => ctx.open(path).map_err(|e| source_error(path, e)),
    }
}

/// Performs `op` into `dest_root`, reading from `source`.
pub fn execute(op: &CopyOp, source: Source<'_>, dest_root: &Root) -> Result<(), CopyError> {
    let chown =
        match &op.chown {
            Some(spec) => Some(crate::users::resolve_chown(dest_root, spec).map_err(|e| {
                CopyError::Chown {
                    spec: spec.clone(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
    let dest_abs = fsutil::join_abs(&op.workdir, &op.dest);
    let dest_rel = fsutil::clean_rel(&dest_abs);
    let trailing = op.dest.ends_with('/') || op.dest.ends_with("/.") || op.dest == ".";
    let dest_exists_dir = dest_root
        .open_at(&dest_rel, OFlags::PATH | OFlags::DIRECTORY)
        .is_ok();

    // Expand sources first: the count decides how the destination is read.
    let mut matches: Vec<String> = Vec::new();
    for src in &op.sources {
        let found = match &source {
            Source::Context(ctx) => ctx.glob(src).map_err(|e| source_error(src, e))?,
            Source::Root(root) => glob::glob_root(root, src)?,
        };
        if found.is_empty() {
            return Err(CopyError::NoMatch {
                pattern: src.clone(),
            });
        }
        matches.extend(found);
    }
    let count = matches.len() + op.inline.len() + op.downloads.len();
    if count > 1 && !trailing {
        return Err(CopyError::SeveralSourcesNeedADirectory);
    }
    let dest_is_dir = trailing || dest_exists_dir;
    let parent_owner = chown.unwrap_or((0, 0));
    let mut w = Writer::new(dest_root, parent_owner);
    let file_target = |name: &str| {
        if dest_is_dir {
            format!("{dest_rel}/{name}")
                .trim_start_matches('/')
                .to_owned()
        } else {
            dest_rel.clone()
        }
    };

    for (name, data) in &op.inline {
        let attrs = Attrs {
            mode: op.chmod.unwrap_or(0o644),
            uid: parent_owner.0,
            gid: parent_owner.1,
            mtime: None,
        };
        let base = name.rsplit('/').next().unwrap_or(name);
        w.file(&file_target(base), &mut &data[..], &attrs, None)?;
    }
    for d in &op.downloads {
        let attrs = Attrs {
            mode: op.chmod.unwrap_or(0o600),
            uid: parent_owner.0,
            gid: parent_owner.1,
            mtime: d.mtime.map(|s| (s, 0)),
        };
        let mut f = std::fs::File::open(&d.path).map_err(|e| source_error(&d.url, e))?;
        w.file(&file_target(&d.name), &mut f, &attrs, None)?;
    }
    for m in &matches {
        match &source {
            Source::Context(ctx) => {
                copy_from_context(ctx, m, op, &mut w, &dest_rel, dest_is_dir, chown)?
            }
            Source::Root(root) => {
                copy_from_root(root, m, op, &mut w, &dest_rel, dest_is_dir, chown)?
            }
        }
    }
    Ok(())
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').find(|c| !c.is_empty()).unwrap_or(path)
}

fn join_rel(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn copy_from_context(
    ctx: &BuildContext,
    m: &str,
    op: &CopyOp,
    w: &mut Writer<'_>,
    dest_rel: &str,
    dest_is_dir: bool,
    chown: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let entries = ctx.walk(m).map_err(|e| source_error(m, e))?;
    let Some(top) = entries.first() else {
        return Ok(());
    };
    let (uid, gid) = chown.unwrap_or((0, 0));
    let mtime_of = |p: Option<&PathBuf>| {
        p.and_then(|p| std::fs::symlink_metadata(p).ok())
            .map(|md| (md.mtime(), md.mtime_nsec()))
    };
    if top.kind != EntryKind::Dir {
        let target = if dest_is_dir {
            join_rel(dest_rel, base_name(m))
        } else {
            dest_rel.to_owned()
        };
        let mut r = open_entry(ctx, &top.path, top.host_path.as_ref())?;
        if op.add && op.unpack {
            let mut head = Vec::new();
            let mut reader = r.take(1 << 16);
            reader
                .read_to_end(&mut head)
                .map_err(|e| source_error(m, e))?;
            let rest = reader.into_inner();
            let mut full = std::io::Cursor::new(head.clone()).chain(rest);
            if is_archive(&head) {
                // Archives are extracted into the destination directory.
                return unpack_archive(&mut full, w, dest_rel, m, op.unpacked_limit);
            }
            let attrs = Attrs {
                mode: op.chmod.unwrap_or(top.mode),
                uid,
                gid,
                mtime: mtime_of(top.host_path.as_ref()),
            };
            return Ok(w.file(&target, &mut full, &attrs, None)?);
        }
        let attrs = Attrs {
            mode: op.chmod.unwrap_or(top.mode),
            uid,
            gid,
            mtime: mtime_of(top.host_path.as_ref()),
        };
        return Ok(w.file(&target, &mut r, &attrs, None)?);
    }
    let prefix = if top.path.is_empty() {
        String::new()
    } else {
        format!("{}/", top.path)
    };
    for e in &entries {
        let rel_in = if e.path == top.path {
            ""
        } else {
            e.path.strip_prefix(&prefix).unwrap_or(&e.path)
        };
        if !rel_in.is_empty() && excluded(rel_in, &op.excludes) {
            continue;
        }
        let target = join_rel(dest_rel, rel_in);
        let attrs = Attrs {
            mode: op.chmod.unwrap_or(e.mode),
            uid,
            gid,
            mtime: mtime_of(e.host_path.as_ref()),
        };
        match &e.kind {
            EntryKind::Dir => w.dir(
                &target,
                &attrs,
                !rel_in.is_empty() || op.chmod.is_some() || chown.is_some(),
            ),
            EntryKind::Symlink(t) => w.symlink(&target, OsStr::new(t), &attrs),
            EntryKind::File => {
                let link_key = e
                    .host_path
                    .as_ref()
                    .and_then(|p| std::fs::symlink_metadata(p).ok())
                    .filter(|md| md.nlink() > 1)
                    .map(|md| (md.dev(), md.ino()));
                let mut r = open_entry(ctx, &e.path, e.host_path.as_ref())?;
                w.file(&target, &mut r, &attrs, link_key)
            }
        }?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_from_root(
    root: &Root,
    m: &str,
    op: &CopyOp,
    w: &mut Writer<'_>,
    dest_rel: &str,
    dest_is_dir: bool,
    chown: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let rel = fsutil::clean_rel(m);
    let from_error = |e: rustix::io::Errno| source_error(&format!("--from {m}"), e);
    // The named source is followed (inside the root); entries below are not.
    let fd = root.open_at(&rel, OFlags::PATH).map_err(from_error)?;
    let st = rustix::fs::fstat(&fd).map_err(from_error)?;
    let host = root.host_path_of(&fd).map_err(from_error)?;
    if fsutil::file_type(&st) != FileType::Directory {
        let target = if dest_is_dir {
            join_rel(dest_rel, base_name(m))
        } else {
            dest_rel.to_owned()
        };
        let (pdir, name) = root
            .parent_of(&fsutil::clean_rel(
                &host
                    .strip_prefix(root.path())
                    .unwrap_or(&host)
                    .to_string_lossy(),
            ))
            .map_err(from_error)?
            .ok_or_else(|| source_error(&format!("--from {m}"), "not a file"))?;
        let pdir = rustix::fs::openat(
            &pdir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(from_error)?;
        return copy_entry(&pdir, &name, &target, "", op, w, chown, false);
    }
    let dir = rustix::fs::openat(
        &fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(from_error)?;
    let attrs = attrs_of(&st, op, chown);
    w.dir(dest_rel, &attrs, op.chmod.is_some() || chown.is_some())?;
    copy_dir_contents(&dir, dest_rel, "", op, w, chown)
}

fn attrs_of(st: &rustix::fs::Stat, op: &CopyOp, chown: Option<(u32, u32)>) -> Attrs {
    let (uid, gid) = chown.unwrap_or((st.st_uid, st.st_gid));
    Attrs {
        mode: op.chmod.unwrap_or(st.st_mode & 0o7777),
        uid,
        gid,
        mtime: Some((st.st_mtime, st.st_mtime_nsec as i64)),
    }
}

/// Copies the entries of `dir` (at `rel_in` below the copied source) into
/// `dest_rel`, skipping `--exclude` matches.
fn copy_dir_contents(
    dir: &std::os::fd::OwnedFd,
    dest_rel: &str,
    rel_in: &str,
    op: &CopyOp,
    w: &mut Writer<'_>,
    chown: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let names = fsutil::list_names(dir).map_err(|e| source_error(&format!("/{dest_rel}"), e))?;
    for name in names {
        let name_s = String::from_utf8_lossy(name.as_bytes()).into_owned();
        let rel = join_rel(rel_in, &name_s);
        if excluded(&rel, &op.excludes) {
            continue;
        }
        let target = join_rel(dest_rel, &name_s);
        copy_entry(dir, &name, &target, &rel, op, w, chown, false)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_entry(
    dir: &std::os::fd::OwnedFd,
    name: &OsStr,
    target: &str,
    rel_in: &str,
    op: &CopyOp,
    w: &mut Writer<'_>,
    chown: Option<(u32, u32)>,
    follow: bool,
) -> Result<(), CopyError> {
    let flags = if follow {
        rustix::fs::AtFlags::empty()
    } else {
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW
    };
    let e = |x: rustix::io::Errno| source_error(&format!("/{target}"), x);
    let st = rustix::fs::statat(dir, name, flags).map_err(e)?;
    let attrs = attrs_of(&st, op, chown);
    let xattrs = fsutil::list_xattrs(&fsutil::proc_path(dir, name));
    match fsutil::file_type(&st) {
        FileType::Directory => {
            w.dir(target, &attrs, true)?;
            let sub = fsutil::open_dir_at(dir, name).map_err(e)?;
            copy_dir_contents(&sub, target, rel_in, op, w, chown)?;
        }
        FileType::RegularFile => {
            let nofollow = if follow {
                OFlags::empty()
            } else {
                OFlags::NOFOLLOW
            };
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::CLOEXEC | nofollow,
                rustix::fs::Mode::empty(),
            )
            .map_err(e)?;
            let mut f = std::fs::File::from(fd);
            let key = (st.st_nlink > 1).then_some((st.st_dev, st.st_ino));
            w.file(target, &mut f, &attrs, key)?;
        }
        FileType::Symlink => {
            let t = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(e)?;
            return w
                .symlink(target, OsStr::from_bytes(t.as_bytes()), &attrs)
                .map_err(CopyError::from);
        }
        FileType::Socket => return Ok(()),
        _ => {
            let mut a = attrs;
            a.mode = (st.st_mode & 0o170000) | (attrs.mode & 0o7777);
            w.special(target, &a, st.st_rdev)?;
        }
    }
    Ok(w.xattrs(target, &xattrs)?)
}
