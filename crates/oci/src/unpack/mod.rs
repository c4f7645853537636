//! Applying image layers to a root filesystem directory: firebuild's one
//! extractor of untrusted trees. Image layers, `ADD`'s local archives and
//! stored ext4 images read back (as a tar stream) all come through here.
//!
//! We read archives with the `tar` crate but do the filesystem side ourselves
//! (see [`fsops`]) so that no entry, link target, whiteout or earlier-planted
//! symlink can reach outside the root. Entries whose path climbs above the
//! root with `..` are refused; absolute paths are taken relative to the root.

pub(crate) mod fsops;
mod guard;
mod limit;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use firebuild_agent_proto::tree::{Device, DEVICE_XATTR};

use crate::error::{Error, Result};
use crate::manifest::Compression;
use fsops::{lstat_type, remove_all, replacing, PathError, RelPath, Root};
pub use limit::{SizeLimit, DEFAULT_UNPACKED_LIMIT};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How to apply layers.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Set owners from the archive (needs root). Off: files belong to us and
    /// devices are skipped with a warning.
    pub preserve_ownership: bool,
    /// Read `.wh.` entries as OCI whiteouts (image layers); off, they are
    /// plain files (an archive that is not a layer).
    pub whiteouts: bool,
    /// What the layers applied with these options (and their clones) may
    /// unpack to, together.
    pub limit: SizeLimit,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            preserve_ownership: rustix::process::geteuid().is_root(),
            whiteouts: true,
            limit: SizeLimit::default(),
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

/// Applies a layer blob (gzip, zstd or plain tar, detected from its first
/// bytes) to `root`. `layer` names the archive in errors (`layer sha256:…`).
pub fn apply_layer_file(
    root: &Path,
    blob: &Path,
    layer: &str,
    opts: &UnpackOptions,
) -> Result<LayerStats> {
    let file = File::open(blob).map_err(Error::io("opening layer blob", blob))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = {
        use std::io::BufRead;
        reader
            .fill_buf()
            .map_err(Error::io("reading layer blob", blob))?
            .to_vec()
    };
    match Compression::sniff(&head) {
        Compression::None => apply_layer(root, reader, layer, opts),
        Compression::Gzip => {
            apply_layer(root, flate2::read::MultiGzDecoder::new(reader), layer, opts)
        }
        Compression::Zstd => {
            let dec =
                zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| Error::Layer {
                    layer: layer.to_string(),
                    reason: format!("zstd: {e}"),
                })?;
            apply_layer(root, dec, layer, opts)
        }
    }
}

/// Applies an uncompressed tar stream to `root` (created if missing).
pub fn apply_layer(
    root: &Path,
    reader: impl Read,
    layer: &str,
    opts: &UnpackOptions,
) -> Result<LayerStats> {
    std::fs::create_dir_all(root).map_err(Error::io("creating root directory", root))?;
    let root_dir =
        Root::open(root).map_err(|e| Error::io("opening root directory", root)(e.into()))?;
    let mut applier = Applier {
        root: root_dir,
        layer,
        opts,
        seen: HashSet::new(),
        dir_times: Vec::new(),
        stats: LayerStats::default(),
        buf: vec![0u8; 1 << 20],
        warned_xattr: false,
    };
    let mut archive = tar::Archive::new(guard::ExtensionGuard::new(reader));
    let entries = archive.entries().map_err(|e| applier.layer_err(e))?;
    for entry in entries {
        let entry = entry.map_err(|e| applier.layer_err(e))?;
        applier.entry(entry)?;
    }
    applier.finish_dir_times();
    tracing::debug!(
        layer,
        entries = applier.stats.entries,
        bytes = applier.stats.bytes,
        "layer applied"
    );
    Ok(applier.stats)
}

/// Metadata common to all entry kinds.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Applier<'a> {
    root: Root,
    layer: &'a str,
    opts: &'a UnpackOptions,
    /// Paths this layer created (and their ancestors): opaque markers and
    /// whiteouts only hide content of lower layers.
    seen: HashSet<RelPath>,
    /// Directory mtimes, set when the layer is done (children change them).
    dir_times: Vec<(RelPath, Timestamps)>,
    stats: LayerStats,
    buf: Vec<u8>,
    warned_xattr: bool,
}

impl<'a> Applier<'a> {
    fn layer_err(&self, e: std::io::Error) -> Error {
        Error::Layer {
            layer: self.layer.to_string(),
            reason: format!("{e} (the archive is corrupt or truncated)"),
        }
    }

    fn entry_err(&self, entry: &str, reason: impl std::fmt::Display) -> Error {
        Error::Unpack {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let raw_path = entry.path_bytes().into_owned();
        let shown = shown_path(&raw_path);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let rel = RelPath::clean(&raw_path).map_err(|e| match e {
            PathError::ClimbsOut => self.entry_err(
                &shown,
                "path climbs out of the root with '..'; the archive is malicious or broken",
            ),
            PathError::Nul => self.entry_err(&shown, "path contains a NUL byte"),
        })?;
        let Some((parent, name)) = rel.split_last() else {
            return Ok(()); // the root itself: keep the target directory as is
        };
        let name = name.to_os_string();
        self.stats.entries += 1;

        let whiteout = name
            .as_bytes()
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
            .filter(|_| self.opts.whiteouts);
        if let Some(target) = whiteout {
            self.stats.whiteouts += 1;
            if name == OPAQUE_MARKER {
                return self.opaque(&parent).map_err(|e| self.entry_err(&shown, e));
            }
            if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Ok(()); // other AUFS metadata (.wh..wh.plnk, …)
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(self.entry_err(&shown, "whiteout names no file"));
            }
            return self
                .whiteout(&parent, OsStr::from_bytes(target))
                .map_err(|e| self.entry_err(&shown, e));
        }

        // Charged before anything is written: a declared terabyte stops here.
        if let Err(over) = self.opts.limit.charge(entry.size()) {
            return Err(Error::TooLarge {
                layer: self.layer.to_string(),
                entry: shown,
                limit: over.limit,
            });
        }
        for p in rel.prefixes() {
            self.seen.insert(p);
        }
        let meta = self
            .meta(&mut entry)
            .map_err(|e| self.entry_err(&shown, e))?;
        let is_dir = kind == T::Directory || (kind == T::Regular && raw_path.ends_with(b"/"));
        let parent_fd = self
            .root
            .dir_create(&parent)
            .map_err(|e| self.entry_err(&shown, parent_error(e)))?;

        if is_dir {
            self.directory(&parent_fd, &name, &meta)
                .map_err(|e| self.entry_err(&shown, e))?;
            self.dir_times.push((rel.clone(), meta.times));
            return Ok(());
        }
        let result = {
            match kind {
                T::Regular | T::Continuous | T::GNUSparse => {
                    self.regular(&parent_fd, &name, &meta, &mut entry, &shown)
                }
                T::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    self.symlink(&parent_fd, &name, &target, &meta)
                        .map_err(|e| self.entry_err(&shown, e))
                }
                T::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    return self.hardlink(&parent_fd, &rel, &name, &target, &shown);
                }
                T::Char | T::Block | T::Fifo => {
                    let header = entry.header();
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let ft = match kind {
                        T::Char => FileType::CharacterDevice,
                        T::Block => FileType::BlockDevice,
                        _ => FileType::Fifo,
                    };
                    self.special(&parent_fd, &name, ft, major, minor, &meta, &shown)
                        .map_err(|e| self.entry_err(&shown, e))
                }
                other => {
                    tracing::warn!(layer = self.layer, entry = %shown, kind = ?other, "skipping unsupported tar entry type");
                    Ok(())
                }
            }
        };
        result
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> std::io::Result<Meta> {
        let h = entry.header();
        let mode = h.mode()? & 0o7777;
        let uid = h.uid()?;
        let gid = h.gid()?;
        let mut mtime = Timespec {
            tv_sec: h.mtime()? as i64,
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    // Only a device entry makes a device placeholder: an
                    // archive's own marker is dropped.
                    if name != DEVICE_XATTR {
                        xattrs.push((OsString::from(name), ext.value_bytes().to_vec()));
                    }
                } else if key == "mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                } else if key == "atime" {
                    atime = parse_pax_time(ext.value_bytes());
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs,
        })
    }

    /// Hides `name` in `parent` from lower layers.
    fn whiteout(&mut self, parent: &RelPath, name: &OsStr) -> std::result::Result<(), Errno> {
        if self.seen.contains(&parent.join(name)) {
            return Ok(()); // added by this very layer: not ours to hide
        }
        let dir = match self.root.dir(parent) {
            Ok(d) => d,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_all(&dir, name)
    }

    /// Empties `dir` of everything lower layers put there.
    fn opaque(&mut self, dir: &RelPath) -> std::result::Result<(), Errno> {
        for p in dir.prefixes() {
            self.seen.insert(p);
        }
        let fd = match self.root.resolve(dir, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.prune(&fd, dir)
    }

    fn prune(&self, fd: &OwnedFd, dir: &RelPath) -> std::result::Result<(), Errno> {
        for (name, ft) in fsops::list_dir(fd)? {
            let child = dir.join(&name);
            if !self.seen.contains(&child) {
                remove_all(fd, &name)?;
                continue;
            }
            let ft = match ft {
                Some(ft) => Some(ft),
                None => lstat_type(fd, &name)?,
            };
            if ft == Some(FileType::Directory) {
                let sub = rustix::fs::openat(
                    fd,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.prune(&sub, &child)?;
            }
        }
        Ok(())
    }

    fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
    ) -> std::result::Result<(), Errno> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                if lstat_type(parent, name)? != Some(FileType::Directory) {
                    remove_all(parent, name)?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
                }
            }
            Err(e) => return Err(e),
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.chown_fd(&fd, meta)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))?;
        self.xattrs_fd(&fd, meta);
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        data: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<()> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = replacing(parent, name, || {
            rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))
        })
        .map_err(|e| self.entry_err(shown, e))?;
        let file = File::from(fd);
        self.write_sparse(&file, data, shown)?;
        let fd = OwnedFd::from(file);
        // Owner first: chown clears setuid bits and file capabilities.
        self.chown_fd(&fd, meta)
            .map_err(|e| self.entry_err(shown, e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.entry_err(shown, e))?;
        self.xattrs_fd(&fd, meta);
        rustix::fs::futimens(&fd, &meta.times).map_err(|e| self.entry_err(shown, e))?;
        Ok(())
    }

    /// Writes `data` to `file`, leaving every all-zero 4 KiB block a hole:
    /// a sparse file's holes (which the archive sends as zeros) stay holes.
    fn write_sparse<R: Read>(
        &mut self,
        file: &File,
        data: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        const HOLE_BLOCK: usize = 4096;
        let mut offset = 0u64;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.layer_err(e)),
            };
            for block in self.buf[..n].chunks(HOLE_BLOCK) {
                if block.iter().any(|b| *b != 0) {
                    file.write_all_at(block, offset)
                        .map_err(|e| self.entry_err(shown, format!("writing: {e}")))?;
                }
                offset += block.len() as u64;
            }
            self.stats.bytes += n as u64;
        }
        // A trailing hole: the size says where the file ends.
        file.set_len(offset)
            .map_err(|e| self.entry_err(shown, format!("writing: {e}")))
    }

    fn symlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        target: &[u8],
        meta: &Meta,
    ) -> std::result::Result<(), Errno> {
        // The target is stored verbatim: it is resolved later, inside the VM.
        let target = OsStr::from_bytes(target);
        replacing(parent, name, || rustix::fs::symlinkat(target, parent, name))?;
        self.chown_at(parent, name, meta)?;
        self.xattrs_at(parent, name, meta);
        rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
    }

    fn hardlink(
        &mut self,
        parent: &OwnedFd,
        rel: &RelPath,
        name: &OsStr,
        target: &[u8],
        shown: &str,
    ) -> Result<()> {
        let target_rel = RelPath::clean(target).map_err(|_| {
            self.entry_err(
                shown,
                format!(
                    "hard link target {:?} is outside the root",
                    String::from_utf8_lossy(target)
                ),
            )
        })?;
        if &target_rel == rel {
            return Ok(());
        }
        let Some((tparent, tname)) = target_rel.split_last() else {
            return Err(self.entry_err(shown, "hard link to the root directory"));
        };
        let tdir = self.root.dir(&tparent).map_err(|e| {
            self.entry_err(
                shown,
                format!(
                    "hard link target {:?}: {e}",
                    String::from_utf8_lossy(target)
                ),
            )
        })?;
        replacing(parent, name, || {
            rustix::fs::linkat(&tdir, tname, parent, name, AtFlags::empty())
        })
        .map_err(|e| {
            self.entry_err(
                shown,
                format!("linking to {:?}: {e}", String::from_utf8_lossy(target)),
            )
        })
    }

    /// A FIFO, or a character or block device. A device is never made as
    /// a node here: in a host directory it would open a host device. It
    /// becomes a device placeholder (an empty file marked with
    /// [`DEVICE_XATTR`]), which becomes the device inside an ext4 image
    /// only. The character device 0/0 (an overlayfs whiteout) opens
    /// nothing and stays a node.
    #[allow(clippy::too_many_arguments)]
    fn special(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        ft: FileType,
        major: u32,
        minor: u32,
        meta: &Meta,
        shown: &str,
    ) -> std::result::Result<(), Errno> {
        let whiteout_node = ft == FileType::CharacterDevice && major == 0 && minor == 0;
        if ft != FileType::Fifo && !whiteout_node {
            let device =
                Device::new(ft == FileType::BlockDevice, major, minor).map_err(|_| Errno::RANGE)?;
            return self.device_placeholder(parent, name, device, meta, shown);
        }
        let dev = rustix::fs::makedev(major, minor);
        let mode = Mode::from_raw_mode(meta.mode);
        match replacing(parent, name, || {
            rustix::fs::mknodat(parent, name, ft, mode, dev)
        }) {
            Err(Errno::PERM) if ft != FileType::Fifo && !self.opts.preserve_ownership => {
                tracing::warn!(
                    layer = self.layer,
                    entry = shown,
                    "skipping device node: creating it needs root"
                );
                return Ok(());
            }
            other => other?,
        }
        self.chown_at(parent, name, meta)?;
        // mknod applied the umask: set the exact mode (the node is not a symlink).
        rustix::fs::chmodat(parent, name, mode, AtFlags::empty())?;
        self.xattrs_at(parent, name, meta);
        rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Writes the placeholder of a character or block device (see
    /// [`Self::special`]).
    fn device_placeholder(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        device: Device,
        meta: &Meta,
        shown: &str,
    ) -> std::result::Result<(), Errno> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = replacing(parent, name, || {
            rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))
        })?;
        // Only a privileged writer can set a trusted.* marker: without it
        // the placeholder would be a plain empty file, so leave it out.
        match rustix::fs::fsetxattr(
            &fd,
            DEVICE_XATTR,
            device.marker().as_bytes(),
            rustix::fs::XattrFlags::empty(),
        ) {
            Err(Errno::PERM) if !self.opts.preserve_ownership => {
                drop(fd);
                rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
                tracing::warn!(
                    layer = self.layer,
                    entry = shown,
                    "skipping device node: keeping it needs root"
                );
                return Ok(());
            }
            other => other?,
        }
        self.chown_fd(&fd, meta)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))?;
        self.xattrs_fd(&fd, meta);
        rustix::fs::futimens(&fd, &meta.times)
    }

    fn ids(meta: &Meta) -> (Option<Uid>, Option<Gid>) {
        let uid = u32::try_from(meta.uid).ok().map(Uid::from_raw);
        let gid = u32::try_from(meta.gid).ok().map(Gid::from_raw);
        (uid, gid)
    }

    fn chown_fd(&self, fd: &OwnedFd, meta: &Meta) -> std::result::Result<(), Errno> {
        if !self.opts.preserve_ownership {
            return Ok(());
        }
        let (u, g) = Self::ids(meta);
        rustix::fs::fchown(fd, u, g)
    }

    fn chown_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
    ) -> std::result::Result<(), Errno> {
        if !self.opts.preserve_ownership {
            return Ok(());
        }
        let (u, g) = Self::ids(meta);
        rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
    }

    fn xattrs_fd(&mut self, fd: &OwnedFd, meta: &Meta) {
        for (k, v) in &meta.xattrs {
            if let Err(e) =
                rustix::fs::fsetxattr(fd, k.as_os_str(), v, rustix::fs::XattrFlags::empty())
            {
                self.xattr_failed(k, e);
            }
        }
    }

    fn xattrs_at(&mut self, parent: &OwnedFd, name: &OsStr, meta: &Meta) {
        if meta.xattrs.is_empty() {
            return;
        }
        let path = fsops::proc_path(parent, name);
        for (k, v) in &meta.xattrs {
            if let Err(e) =
                rustix::fs::lsetxattr(&path, k.as_os_str(), v, rustix::fs::XattrFlags::empty())
            {
                self.xattr_failed(k, e);
            }
        }
    }

    fn xattr_failed(&mut self, key: &OsStr, e: Errno) {
        // The target filesystem may not support a namespace (user.* on old
        // tmpfs, trusted.* without root): warn once per layer and go on.
        if !self.warned_xattr {
            self.warned_xattr = true;
            tracing::warn!(layer = self.layer, xattr = ?key, error = %e, "cannot set extended attribute; continuing without it");
        }
    }

    fn finish_dir_times(&mut self) {
        for (rel, times) in self.dir_times.iter().rev() {
            if let Ok(fd) = self
                .root
                .resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
            {
                let _ = rustix::fs::futimens(&fd, times);
            }
        }
    }
}

/// Longest entry path quoted in an error (archive paths may be 1 MiB).
const SHOWN_PATH_MAX: usize = 256;

/// An archive path as errors and logs show it: lossy UTF-8, cut short.
fn shown_path(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    match text.char_indices().nth(SHOWN_PATH_MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], raw.len()),
        None => text.into_owned(),
    }
}

fn parent_error(e: Errno) -> String {
    match e {
        Errno::NOENT => "its parent directory is a symlink to a missing target".into(),
        Errno::NOTDIR => "its parent path is not a directory".into(),
        e => format!("opening its parent directory: {e}"),
    }
}

/// Parses a PAX time (`1700000000.123456789`).
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    // Negative times with a fraction count the fraction backwards.
    let (tv_sec, tv_nsec) = if tv_sec < 0 && tv_nsec > 0 {
        (tv_sec - 1, 1_000_000_000 - tv_nsec)
    } else {
        (tv_sec, tv_nsec)
    };
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        assert!(parse_pax_time(b"x").is_none());
    }
}
