//! File trees in both directions (`firebuild cp`): the same sender and
//! writer on the host and in the guest.
//!
//! A tree is a sequence of [`Entry`] frames in pre-order, each regular file
//! followed by exactly `size` bytes of [`crate::Kind::Data`], then
//! [`crate::Kind::End`]. The top entry's path is the source's base name;
//! every other path starts with it. Modes, numeric owners, symlinks and
//! mtimes are kept, as `docker cp` keeps them; devices, FIFOs and sockets
//! are skipped (and counted).
//!
//! A *layer tree* ([`send_layer`], [`TreeWriter::layer`]) carries an
//! overlayfs upper directory (a build step's diff) byte-exact: also
//! whiteouts (character devices 0/0), FIFOs, character and block devices,
//! and the extended attributes `user.*` (overlayfs' `user.overlay.opaque`
//! among them) and `security.capability`; sockets are skipped, as Docker
//! skips them in a layer.
//!
//! The sender may be an untrusted guest, and its tree lands on the host,
//! where a block device node would open a host disk: the writer never makes
//! a device node other than a whiteout. A device arrives as a *device
//! placeholder* ([`Device`]): an empty regular file with the device's
//! owner, mode and times, marked with the extended attribute
//! [`DEVICE_XATTR`] (`trusted.`, so no unprivileged process, in a sandbox
//! step or in a guest, can set or forge it). Whoever turns a layer
//! directory into an ext4 image makes the real inode inside the image
//! (see `firebuild-builder`'s `ext4` module).
//!
//! The writer treats what it receives as untrusted: paths must be relative
//! and plain (no `..`, no empty or `.` components), and every path is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the
//! destination, so neither a crafted name nor a symlink sent earlier can
//! make it write anywhere else. Each file is written to a temporary name
//! and renamed into place when complete: a failed or interrupted copy
//! leaves no half-written file.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::{Kind, CHUNK};
use crate::Copied;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// An overlayfs whiteout, a character device 0/0 (layer trees only).
    Whiteout,
    /// A named pipe (layer trees only).
    Fifo,
    /// A character device other than 0/0 (layer trees only; written as a
    /// [`Device`] placeholder).
    Char,
    /// A block device (layer trees only; written as a [`Device`]
    /// placeholder).
    Block,
}

/// The extended attribute that makes an empty regular file in a layer
/// directory stand for a device node; its value is [`Device::marker`].
pub const DEVICE_XATTR: &str = "trusted.firebuild.device";

/// The largest major number Linux has (12 bits).
pub const MAX_MAJOR: u32 = (1 << 12) - 1;
/// The largest minor number Linux has (20 bits).
pub const MAX_MINOR: u32 = (1 << 20) - 1;

/// A device number, as an [`Entry`] carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

/// A character or block device kept in a layer as a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// A block device (else a character device).
    pub block: bool,
    pub major: u32,
    pub minor: u32,
}

impl Device {
    /// A device, checked: numbers in Linux's ranges, and not the
    /// character device 0/0 (a whiteout).
    pub fn new(block: bool, major: u32, minor: u32) -> io::Result<Device> {
        if major > MAX_MAJOR || minor > MAX_MINOR {
            return Err(invalid(format!(
                "the device number {major}:{minor} is out of range (major up to {MAX_MAJOR}, minor up to {MAX_MINOR})"
            )));
        }
        if !block && major == 0 && minor == 0 {
            return Err(invalid(
                "the character device 0:0 is a whiteout, not a device".into(),
            ));
        }
        Ok(Device {
            block,
            major,
            minor,
        })
    }

    /// `c` or `b`, as `mknod` and debugfs spell the type.
    pub fn type_letter(&self) -> char {
        if self.block {
            'b'
        } else {
            'c'
        }
    }

    /// The [`DEVICE_XATTR`] value: `c 10 200`, `b 7 0`.
    pub fn marker(&self) -> String {
        format!("{} {} {}", self.type_letter(), self.major, self.minor)
    }

    /// Reads a [`Device::marker`] back, checked as [`Device::new`] checks.
    pub fn parse_marker(value: &[u8]) -> io::Result<Device> {
        let bad = || {
            invalid(format!(
                "a device marker that is not \"c|b MAJOR MINOR\": {:?}",
                String::from_utf8_lossy(value)
            ))
        };
        let text = std::str::from_utf8(value).map_err(|_| bad())?;
        let mut parts = text.split(' ');
        let (Some(kind), Some(major), Some(minor), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let number = |s: &str| -> io::Result<u32> {
            if s.is_empty() || s.len() > 7 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let block = match kind {
            "c" => false,
            "b" => true,
            _ => return Err(bad()),
        };
        Device::new(block, number(major)?, number(minor)?)
    }

    /// The device `path` (not followed) stands for, if it is a placeholder:
    /// an empty regular file with a [`DEVICE_XATTR`]. A malformed marker is
    /// an error.
    pub fn of_placeholder(path: &Path, md: &std::fs::Metadata) -> io::Result<Option<Device>> {
        if !md.is_file() || md.len() != 0 {
            return Ok(None);
        }
        let p = cstr(path)?;
        let name = cstr(DEVICE_XATTR)?;
        let mut value = [0u8; 64];
        let n = match get_xattr(&p, &name, &mut value) {
            Ok(n) => n,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
                    Some(libc::ERANGE) => Err(invalid(format!(
                        "{}: a device marker that is too long",
                        path.display()
                    ))),
                    _ => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
                }
            }
        };
        Device::parse_marker(&value[..n])
            .map(Some)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))
    }
}

/// Whether a tree is a `cp` copy or a layer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Copy,
    Layer,
}

/// The extended attributes a layer tree carries: overlayfs' own (with
/// `userxattr`) and anything else in `user.*`, and file capabilities.
pub fn layer_xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `/`-separated, relative; the first component is the tree's name.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Bytes of data that follow (regular files).
    #[serde(default)]
    pub size: u64,
    /// Symlink target.
    #[serde(default)]
    pub target: Option<String>,
    /// Extended attributes, name → hex value (layer trees only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// The device number of a [`EntryKind::Char`] or [`EntryKind::Block`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceNumber>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// `lgetxattr` of `name` on `path` into `value`: the value's length, or
/// the OS error.
fn get_xattr(path: &CString, name: &CString, value: &mut [u8]) -> io::Result<usize> {
    // SAFETY: lgetxattr into a buffer of its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

fn cstr(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| invalid("a path contains a NUL byte".into()))
}

/// Sends the tree at `src` through `emit` (kind, payload). Fails before
/// emitting anything when `src` cannot be read.
pub fn send(src: &Path, emit: &mut dyn FnMut(Kind, &[u8]) -> io::Result<()>) -> io::Result<Copied> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            invalid(format!(
                "{}: name a file or directory, not a root",
                src.display()
            ))
        })?;
    let md = std::fs::symlink_metadata(src)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    send_top(src, name, md, emit)
}

/// [`send`] with the top entry named `name` (placed as `DEST/name` when
/// the destination is a directory). `src` itself is followed if it is a
/// symlink (a bind mount's source is), what is below it is not.
pub fn send_as(
    src: &Path,
    name: &str,
    emit: &mut dyn FnMut(Kind, &[u8]) -> io::Result<()>,
) -> io::Result<Copied> {
    let md = std::fs::metadata(src)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    send_top(src, name, md, emit)
}

fn send_top(
    src: &Path,
    name: &str,
    md: std::fs::Metadata,
    emit: &mut dyn FnMut(Kind, &[u8]) -> io::Result<()>,
) -> io::Result<Copied> {
    let mut stats = Copied::default();
    send_entry(src, name.to_owned(), md, Mode::Copy, emit, &mut stats)?;
    emit(Kind::End, b"")?;
    Ok(stats)
}

/// The top entry's name in a layer tree.
pub const LAYER_TOP: &str = "layer";

/// Sends the directory `src` as a layer tree (its top entry is `src`
/// itself, named [`LAYER_TOP`]).
pub fn send_layer(
    src: &Path,
    emit: &mut dyn FnMut(Kind, &[u8]) -> io::Result<()>,
) -> io::Result<Copied> {
    let md = std::fs::symlink_metadata(src)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    if !md.is_dir() {
        return Err(invalid(format!(
            "{}: a layer is a directory",
            src.display()
        )));
    }
    let mut stats = Copied::default();
    send_entry(src, LAYER_TOP.to_owned(), md, Mode::Layer, emit, &mut stats)?;
    emit(Kind::End, b"")?;
    Ok(stats)
}

/// The allowed extended attributes of `path` (not followed), hex-encoded.
fn read_xattrs(path: &Path) -> io::Result<BTreeMap<String, String>> {
    let p = cstr(path)?;
    let mut names = vec![0u8; 4096];
    let len = loop {
        // SAFETY: llistxattr into a buffer of the given size.
        let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = errno();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(BTreeMap::new()),
            _ => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    };
    let mut out = BTreeMap::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !layer_xattr_allowed(name) {
            continue;
        }
        let cname = cstr(name)?;
        let mut value = vec![0u8; XATTR_SIZE_MAX];
        let n = get_xattr(&p, &cname, &mut value)
            .map_err(|e| io::Error::new(e.kind(), format!("{} {name}: {e}", path.display())))?;
        out.insert(name.to_owned(), to_hex(&value[..n]));
    }
    Ok(out)
}

/// The kernel's limit on one attribute value.
const XATTR_SIZE_MAX: usize = 65536;

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> io::Result<Vec<u8>> {
    let bad = || invalid(format!("an attribute value that is not hex: {text:?}"));
    if !text.len().is_multiple_of(2) || text.len() > 2 * XATTR_SIZE_MAX {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

fn send_entry(
    path: &Path,
    rel: String,
    md: std::fs::Metadata,
    mode: Mode,
    emit: &mut dyn FnMut(Kind, &[u8]) -> io::Result<()>,
    stats: &mut Copied,
) -> io::Result<()> {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if mode == Mode::Layer && ft.is_char_device() && md.rdev() == 0 {
        EntryKind::Whiteout
    } else if mode == Mode::Layer && ft.is_fifo() {
        EntryKind::Fifo
    } else if mode == Mode::Layer && ft.is_char_device() {
        EntryKind::Char
    } else if mode == Mode::Layer && ft.is_block_device() {
        EntryKind::Block
    } else {
        // Sockets (and, in a copy, devices and FIFOs): left out, as Docker
        // leaves sockets out of a layer.
        stats.skipped += 1;
        return Ok(());
    };
    let device = match kind {
        EntryKind::Char | EntryKind::Block => {
            let rdev = md.rdev() as libc::dev_t;
            let dev = Device::new(
                kind == EntryKind::Block,
                libc::major(rdev),
                libc::minor(rdev),
            )
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            Some(DeviceNumber {
                major: dev.major,
                minor: dev.minor,
            })
        }
        _ => None,
    };
    let xattrs = match (mode, kind) {
        (Mode::Layer, EntryKind::File | EntryKind::Dir) => read_xattrs(path)?,
        _ => BTreeMap::new(),
    };
    let target = if kind == EntryKind::Symlink {
        Some(
            std::fs::read_link(path)?
                .into_os_string()
                .into_string()
                .map_err(|_| {
                    invalid(format!(
                        "{}: a symlink target that is not UTF-8",
                        path.display()
                    ))
                })?,
        )
    } else {
        None
    };
    let entry = Entry {
        path: rel.clone(),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        size: if kind == EntryKind::File { md.len() } else { 0 },
        target,
        xattrs,
        device,
    };
    let json = serde_json::to_vec(&entry).map_err(|e| invalid(e.to_string()))?;
    match kind {
        EntryKind::File => {
            // Opened before the entry goes out: an unreadable file fails
            // the copy cleanly.
            let mut f = File::open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            emit(Kind::Entry, &json)?;
            let mut left = entry.size;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = (left as usize).min(CHUNK);
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(invalid(format!(
                        "{} shrank while it was copied",
                        path.display()
                    )));
                }
                emit(Kind::Data, &buf[..n])?;
                left -= n as u64;
            }
            stats.files += 1;
            stats.bytes += entry.size;
        }
        EntryKind::Dir => {
            emit(Kind::Entry, &json)?;
            let mut children: Vec<(OsString, PathBuf)> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| (e.file_name(), e.path())))
                .collect::<io::Result<_>>()?;
            children.sort();
            for (name, child) in children {
                let name = name.into_string().map_err(|n| {
                    invalid(format!(
                        "{}: a name that is not UTF-8: {n:?}",
                        path.display()
                    ))
                })?;
                let md = std::fs::symlink_metadata(&child)?;
                send_entry(&child, format!("{rel}/{name}"), md, mode, emit, stats)?;
            }
        }
        EntryKind::Symlink
        | EntryKind::Whiteout
        | EntryKind::Fifo
        | EntryKind::Char
        | EntryKind::Block => {
            emit(Kind::Entry, &json)?;
            stats.files += 1;
        }
    }
    Ok(())
}

/// Where a tree named `top` of kind `kind` lands when copied to `dest`, as
/// `docker cp` places it: into `dest` when it is a directory, else as
/// `dest` (whose parent must exist). Returns the directory to write in and
/// the name the top entry gets.
pub fn place(dest: &Path, top: &str, kind: EntryKind) -> io::Result<(PathBuf, String)> {
    let shown = dest.display();
    let trailing_slash = dest.as_os_str().as_bytes().ends_with(b"/");
    match std::fs::metadata(dest) {
        Ok(md) if md.is_dir() => Ok((dest.to_path_buf(), top.to_owned())),
        Ok(_) if kind == EntryKind::Dir => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{shown} is a file: cannot copy a directory onto it"),
        )),
        Ok(_) if trailing_slash => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{shown} is not a directory"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound && trailing_slash => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{shown}: no such directory"),
        )),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("{shown}: {e}")))
        }
        _ => {
            let parent = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !parent.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no such directory", parent.display()),
                ));
            }
            let name = dest
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| invalid(format!("{shown}: not a usable name")))?;
            Ok((parent, name.to_owned()))
        }
    }
}

/// `struct open_how` of `<linux/openat2.h>`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Opens directory `rel` below `base` without following any symlink and
/// without leaving `base`.
fn open_dir_beneath(base: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let path = cstr(if rel.is_empty() { "." } else { rel })?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid path and struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            base.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: open with a valid path.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::new(
            errno().kind(),
            format!("{}: {}", path.display(), errno()),
        ));
    }
    // SAFETY: a new descriptor of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where a layer tree's top directory lands: `dest` itself.
fn layer_place(dest: &Path, kind: EntryKind) -> io::Result<(PathBuf, String)> {
    if kind != EntryKind::Dir || !dest.is_dir() {
        return Err(invalid(format!(
            "a layer tree is a directory, received into the directory {}",
            dest.display()
        )));
    }
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid(format!("{}: not a usable name", dest.display())))?;
    Ok((parent, name.to_owned()))
}

/// Sets hex-encoded attributes on `path` (a /proc/self/fd link of ours).
fn set_xattrs(path: &str, xattrs: &BTreeMap<String, String>) -> io::Result<()> {
    let p = cstr(path)?;
    for (name, value) in xattrs {
        let value = from_hex(value)?;
        let n = cstr(name)?;
        // SAFETY: setxattr with valid strings and a buffer of its length.
        let rc = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let e = errno();
            return Err(io::Error::new(e.kind(), format!("setting {name}: {e}")));
        }
    }
    Ok(())
}

/// Gives the just-made special file `tmp` in `dir` the entry's owner,
/// mode (`chmod`: not for symlinks) and times, then its name `name`; on
/// failure it is removed.
fn settle(dir: &OwnedFd, tmp: &CString, name: &CString, e: &Entry, chmod: bool) -> io::Result<()> {
    let times = times(e);
    let fd = dir.as_raw_fd();
    // SAFETY: *at calls on our descriptor and strings.
    unsafe {
        let done = tolerate_eperm(libc::fchownat(
            fd,
            tmp.as_ptr(),
            e.uid,
            e.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        ))
        .and_then(|_| {
            if chmod {
                check(libc::fchmodat(fd, tmp.as_ptr(), e.mode & 0o777, 0))
            } else {
                Ok(())
            }
        })
        .and_then(|_| {
            check(libc::utimensat(
                fd,
                tmp.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            ))
        })
        .and_then(|_| check(libc::renameat(fd, tmp.as_ptr(), fd, name.as_ptr())));
        if done.is_err() {
            libc::unlinkat(fd, tmp.as_ptr(), 0);
        }
        done
    }
}

/// Checks a received path: relative, plain components only.
fn check_path(path: &str) -> io::Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(invalid(format!(
            "refusing the path {path:?} in a copied tree"
        )));
    }
    Ok(())
}

fn split_last(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    }
}

fn times(e: &Entry) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: e.mtime as libc::time_t,
        tv_nsec: e.mtime_nsec as libc::c_long,
    };
    [t, t]
}

/// Owners are kept where the writer may set them (it may not as non-root).
fn tolerate_eperm(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let e = errno();
    if e.raw_os_error() == Some(libc::EPERM) {
        Ok(())
    } else {
        Err(e)
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The file being received.
struct Current {
    dir: OwnedFd,
    tmp: CString,
    name: CString,
    file: File,
    left: u64,
    entry: Entry,
}

/// Receives a tree into `dest` (see [`place`]).
pub struct TreeWriter {
    dest: PathBuf,
    /// After the first entry: the directory written in, and the top name
    /// as sent and as written.
    base: Option<(OwnedFd, String, String)>,
    current: Option<Current>,
    /// Directories, to get their metadata once their content is written.
    dirs: Vec<(String, Entry)>,
    stats: Copied,
    seq: u64,
    mode: Mode,
}

impl TreeWriter {
    pub fn new(dest: impl Into<PathBuf>) -> TreeWriter {
        TreeWriter {
            dest: dest.into(),
            base: None,
            current: None,
            dirs: Vec::new(),
            stats: Copied::default(),
            seq: 0,
            mode: Mode::Copy,
        }
    }

    /// Receives a layer tree: its top directory is `dest` itself (an
    /// existing directory, normally empty), whose attributes it takes.
    pub fn layer(dest: impl Into<PathBuf>) -> TreeWriter {
        let mut writer = TreeWriter::new(dest);
        writer.mode = Mode::Layer;
        writer
    }

    /// Refuses what the tree's mode does not carry.
    fn check_kind(&self, e: &Entry) -> io::Result<()> {
        let layer_only = matches!(
            e.kind,
            EntryKind::Whiteout | EntryKind::Fifo | EntryKind::Char | EntryKind::Block
        );
        if self.mode == Mode::Copy && (layer_only || !e.xattrs.is_empty()) {
            return Err(invalid(format!(
                "{:?}: whiteouts, FIFOs, devices and attributes come only in layer trees",
                e.path
            )));
        }
        let is_device = matches!(e.kind, EntryKind::Char | EntryKind::Block);
        if is_device != e.device.is_some() {
            return Err(invalid(format!(
                "{:?}: a device number comes with character and block devices only",
                e.path
            )));
        }
        if e.kind != EntryKind::File && e.size != 0 {
            return Err(invalid(format!(
                "{:?}: only regular files have data",
                e.path
            )));
        }
        if is_device && e.path.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(invalid(format!(
                "{:?}: refusing a device whose name has control characters",
                e.path
            )));
        }
        if !e.xattrs.is_empty() && !matches!(e.kind, EntryKind::File | EntryKind::Dir) {
            return Err(invalid(format!(
                "{:?}: attributes on a special file",
                e.path
            )));
        }
        if let Some(name) = e.xattrs.keys().find(|n| !layer_xattr_allowed(n)) {
            return Err(invalid(format!(
                "{:?}: refusing the attribute {name:?} (only user.* and security.capability)",
                e.path
            )));
        }
        Ok(())
    }

    /// The path an entry is written at, below the base directory.
    fn out_path(&mut self, e: &Entry) -> io::Result<String> {
        check_path(&e.path)?;
        let (top_in, rest) = match e.path.split_once('/') {
            Some((t, r)) => (t, Some(r)),
            None => (e.path.as_str(), None),
        };
        if self.base.is_none() {
            if rest.is_some() {
                return Err(invalid(format!(
                    "the tree starts with {:?}, not its top",
                    e.path
                )));
            }
            let (dir, name) = match self.mode {
                Mode::Copy => place(&self.dest, top_in, e.kind)?,
                Mode::Layer => layer_place(&self.dest, e.kind)?,
            };
            self.base = Some((open_dir(&dir)?, top_in.to_owned(), name));
        }
        let (_, sent_top, written_top) = self.base.as_ref().expect("set above");
        if top_in != sent_top {
            return Err(invalid(format!(
                "{:?} is outside the tree {sent_top:?}",
                e.path
            )));
        }
        Ok(match rest {
            Some(r) => format!("{written_top}/{r}"),
            None => written_top.clone(),
        })
    }

    /// The next entry.
    pub fn entry(&mut self, e: Entry) -> io::Result<()> {
        if self.current.is_some() {
            return Err(invalid(format!(
                "{:?} arrived before the previous file's data ended",
                e.path
            )));
        }
        self.check_kind(&e)?;
        let rel = self.out_path(&e)?;
        // A device is written as its placeholder: an empty file (never a
        // device node on this side) with the marker attribute.
        let e = match (e.kind, e.device) {
            (EntryKind::Char | EntryKind::Block, Some(n)) => {
                let dev = Device::new(e.kind == EntryKind::Block, n.major, n.minor)
                    .map_err(|err| invalid(format!("{:?}: {err}", e.path)))?;
                Entry {
                    kind: EntryKind::File,
                    size: 0,
                    xattrs: BTreeMap::from([(
                        DEVICE_XATTR.to_owned(),
                        to_hex(dev.marker().as_bytes()),
                    )]),
                    device: None,
                    ..e
                }
            }
            _ => e,
        };
        let (parent, name) = split_last(&rel);
        let base = &self.base.as_ref().expect("set by out_path").0;
        let dir = open_dir_beneath(base, parent).map_err(|err| {
            io::Error::new(err.kind(), format!("{parent:?} in the destination: {err}"))
        })?;
        let cname = cstr(name)?;
        match e.kind {
            EntryKind::Dir => {
                // SAFETY: mkdirat/fstatat on our descriptors and strings.
                unsafe {
                    if libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o700) != 0 {
                        let err = errno();
                        let mut st: libc::stat = std::mem::zeroed();
                        let is_dir = libc::fstatat(
                            dir.as_raw_fd(),
                            cname.as_ptr(),
                            &mut st,
                            libc::AT_SYMLINK_NOFOLLOW,
                        ) == 0
                            && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                        if err.raw_os_error() != Some(libc::EEXIST) || !is_dir {
                            return Err(io::Error::new(
                                err.kind(),
                                format!("creating {rel}: {err}"),
                            ));
                        }
                    }
                }
                self.dirs.push((rel, e));
            }
            EntryKind::File => {
                let tmp = self.temp_name(name)?;
                // SAFETY: openat on our descriptor and strings.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        tmp.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_WRONLY
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(io::Error::new(
                        errno().kind(),
                        format!("creating {rel}: {}", errno()),
                    ));
                }
                // SAFETY: a new descriptor of ours.
                let file = unsafe { File::from_raw_fd(fd) };
                let left = e.size;
                self.current = Some(Current {
                    dir,
                    tmp,
                    name: cname,
                    file,
                    left,
                    entry: e,
                });
                if left == 0 {
                    self.complete()?;
                }
            }
            EntryKind::Whiteout | EntryKind::Fifo => {
                let (kind, what) = match e.kind {
                    EntryKind::Whiteout => (libc::S_IFCHR, "whiteout"),
                    _ => (libc::S_IFIFO, "FIFO"),
                };
                let tmp = self.temp_name(name)?;
                // SAFETY: mknodat on our descriptor and string; a whiteout
                // is device 0, nothing else is ever made.
                unsafe {
                    check(libc::mknodat(
                        dir.as_raw_fd(),
                        tmp.as_ptr(),
                        kind | (e.mode & 0o777),
                        0,
                    ))
                }
                .and_then(|_| settle(&dir, &tmp, &cname, &e, true))
                .map_err(|err| {
                    io::Error::new(err.kind(), format!("creating the {what} {rel}: {err}"))
                })?;
                self.stats.files += 1;
            }
            EntryKind::Char | EntryKind::Block => {
                unreachable!("devices are written as placeholders, above")
            }
            EntryKind::Symlink => {
                let target = cstr(e.target.as_deref().unwrap_or_default())?;
                let tmp = self.temp_name(name)?;
                // SAFETY: symlinkat on our descriptor and strings.
                unsafe {
                    check(libc::symlinkat(
                        target.as_ptr(),
                        dir.as_raw_fd(),
                        tmp.as_ptr(),
                    ))?;
                }
                settle(&dir, &tmp, &cname, &e, false).map_err(|err| {
                    io::Error::new(err.kind(), format!("creating the symlink {rel}: {err}"))
                })?;
                self.stats.files += 1;
            }
        }
        Ok(())
    }

    fn temp_name(&mut self, name: &str) -> io::Result<CString> {
        self.seq += 1;
        cstr(format!(".{name}.fbcp-{}-{}", std::process::id(), self.seq))
    }

    /// File content for the current entry.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Err(invalid("file data without a file entry".into()));
        };
        if bytes.len() as u64 > cur.left {
            return Err(invalid(format!("more data than {:?} has", cur.entry.path)));
        }
        cur.file.write_all(bytes)?;
        cur.left -= bytes.len() as u64;
        if cur.left == 0 {
            self.complete()?;
        }
        Ok(())
    }

    /// The current file has all its bytes: its metadata, then its name.
    fn complete(&mut self) -> io::Result<()> {
        let cur = self.current.take().expect("called with a current file");
        let e = &cur.entry;
        let fd = cur.file.as_raw_fd();
        let times = times(e);
        // SAFETY: f* calls on our open file, renameat on our descriptors.
        let done = unsafe {
            // chown before chmod and capabilities: chown clears setuid,
            // setgid and security.capability.
            tolerate_eperm(libc::fchown(fd, e.uid, e.gid))
                .and_then(|_| check(libc::fchmod(fd, e.mode & 0o7777)))
                .and_then(|_| set_xattrs(&format!("/proc/self/fd/{fd}"), &e.xattrs))
                .and_then(|_| check(libc::futimens(fd, times.as_ptr())))
                .and_then(|_| {
                    check(libc::renameat(
                        cur.dir.as_raw_fd(),
                        cur.tmp.as_ptr(),
                        cur.dir.as_raw_fd(),
                        cur.name.as_ptr(),
                    ))
                })
        };
        if let Err(err) = done {
            // SAFETY: removing our temporary file.
            unsafe { libc::unlinkat(cur.dir.as_raw_fd(), cur.tmp.as_ptr(), 0) };
            return Err(io::Error::new(
                err.kind(),
                format!("writing {}: {err}", e.path),
            ));
        }
        self.stats.files += 1;
        self.stats.bytes += e.size;
        Ok(())
    }

    /// The tree is complete: directories get their modes, owners and
    /// times (deepest first, so writing into them came before).
    pub fn finish(mut self) -> io::Result<Copied> {
        if let Some(cur) = &self.current {
            return Err(invalid(format!(
                "the tree ended inside {:?}",
                cur.entry.path
            )));
        }
        let Some((base, _, _)) = self.base.take() else {
            return Err(invalid("the tree was empty".into()));
        };
        for (rel, e) in self.dirs.iter().rev() {
            let dir = open_dir_beneath(&base, rel)?;
            // O_PATH descriptors take no f* calls: go through /proc.
            let p = cstr(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
            let times = times(e);
            // SAFETY: calls on a valid C string.
            unsafe {
                tolerate_eperm(libc::chown(p.as_ptr(), e.uid, e.gid))?;
                check(libc::chmod(p.as_ptr(), e.mode & 0o7777))?;
                set_xattrs(&format!("/proc/self/fd/{}", dir.as_raw_fd()), &e.xattrs)?;
                check(libc::utimensat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    times.as_ptr(),
                    0,
                ))?;
            }
        }
        Ok(std::mem::take(&mut self.stats))
    }
}

impl Drop for TreeWriter {
    fn drop(&mut self) {
        if let Some(cur) = self.current.take() {
            // SAFETY: removing our temporary file.
            unsafe { libc::unlinkat(cur.dir.as_raw_fd(), cur.tmp.as_ptr(), 0) };
        }
    }
}

/// Feeds a received frame to `w`; `Ok(true)` once the tree is complete.
pub fn receive(w: &mut TreeWriter, kind: Kind, payload: &[u8]) -> io::Result<bool> {
    match kind {
        Kind::Entry => {
            let e: Entry = serde_json::from_slice(payload)
                .map_err(|e| invalid(format!("a file entry that is not valid: {e}")))?;
            w.entry(e)?;
            Ok(false)
        }
        Kind::Data => w.data(payload).map(|_| false),
        Kind::End => Ok(true),
        other => Err(invalid(format!("a {other:?} frame inside a file tree"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Sends `src` and writes it to `dest`, as the two sides do.
    fn copy(src: &Path, dest: &Path) -> io::Result<Copied> {
        let mut frames: Vec<(Kind, Vec<u8>)> = Vec::new();
        send(src, &mut |k, p| {
            frames.push((k, p.to_vec()));
            Ok(())
        })?;
        let mut w = TreeWriter::new(dest);
        for (k, p) in frames {
            if receive(&mut w, k, &p)? {
                return w.finish();
            }
        }
        Err(invalid("no end".into()))
    }

    #[test]
    fn trees_keep_modes_links_times_and_land_as_docker_cp_places_them() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), vec![7u8; 200_000]).unwrap();
        std::os::unix::fs::chown(src.join("sub/f"), Some(1234), Some(55)).unwrap();
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("link")).unwrap();
        std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o711)).unwrap();
        let old = libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        };
        let p = cstr(src.join("sub")).unwrap();
        // SAFETY: utimensat on a valid path.
        unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), [old, old].as_ptr(), 0) };

        // Into an existing directory: dest/src.
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let stats = copy(&src, &dest).unwrap();
        assert_eq!((stats.files, stats.bytes), (2, 200_000));
        let f = std::fs::symlink_metadata(dest.join("src/sub/f")).unwrap();
        assert_eq!(
            (f.mode() & 0o7777, f.uid(), f.gid(), f.len()),
            (0o4750, 1234, 55, 200_000)
        );
        assert_eq!(
            std::fs::read_link(dest.join("src/link")).unwrap(),
            Path::new("sub/f")
        );
        let d = std::fs::metadata(dest.join("src/sub")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.mtime()), (0o711, 1_000_000_000));
        // No temporary names left.
        assert!(!std::fs::read_dir(dest.join("src/sub")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("fbcp")));

        // To a new name: the tree is renamed.
        copy(&src, &t.path().join("renamed")).unwrap();
        assert!(t.path().join("renamed/sub/f").is_file());
        // A file onto a file, and errors that write nothing.
        copy(&src.join("sub/f"), &t.path().join("renamed/link2")).unwrap();
        let e = copy(&src, &t.path().join("missing/dir/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such directory"), "{e}");
        let e = copy(&src, &t.path().join("renamed/sub/f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot copy a directory"), "{e}");
        let e = copy(&t.path().join("nope"), &dest).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn hostile_trees_cannot_write_outside_the_destination() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let entry = |path: &str, kind, target: Option<&str>| Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            target: target.map(str::to_owned),
            xattrs: BTreeMap::new(),
            device: None,
        };
        for bad in ["../x", "/etc/x", "top/../../x", "top//x", "top/./x"] {
            let mut w = TreeWriter::new(&dest);
            let first = if bad.starts_with("top") {
                w.entry(entry("top", EntryKind::Dir, None))
            } else {
                Ok(())
            };
            first.unwrap();
            assert!(
                w.entry(entry(bad, EntryKind::File, None)).is_err(),
                "{bad} accepted"
            );
        }
        // A symlink sent first cannot be written through.
        let mut w = TreeWriter::new(&dest);
        w.entry(entry("top", EntryKind::Dir, None)).unwrap();
        w.entry(entry(
            "top/escape",
            EntryKind::Symlink,
            Some(t.path().to_str().unwrap()),
        ))
        .unwrap();
        let err = w
            .entry(entry("top/escape/pwned", EntryKind::File, None))
            .unwrap_err();
        assert!(err.to_string().contains("destination"), "{err}");
        assert!(!t.path().join("pwned").exists());
        // An interrupted file leaves no temporary behind.
        let mut w = TreeWriter::new(&dest);
        let mut big = entry("big", EntryKind::File, None);
        big.size = 10;
        w.entry(big).unwrap();
        w.data(b"12345").unwrap();
        assert!(w.data(b"toolongdata").is_err());
        drop(w);
        assert_eq!(
            std::fs::read_dir(&dest)
                .unwrap()
                .filter(|e| !e.as_ref().unwrap().path().is_dir())
                .count(),
            0
        );
    }

    fn mknod(path: &Path, kind: libc::mode_t, dev: libc::dev_t) {
        let p = cstr(path).unwrap();
        // SAFETY: mknod on a valid path (the tests run as root).
        assert_eq!(
            unsafe { libc::mknod(p.as_ptr(), kind | 0o644, dev) },
            0,
            "{}",
            errno()
        );
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = cstr(path).unwrap();
        let n = cstr(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: lgetxattr into a buffer of its length.
        let len =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (len >= 0).then(|| buf[..len as usize].to_vec())
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let p = cstr(path).unwrap();
        let n = cstr(name).unwrap();
        // SAFETY: setxattr with a buffer of its length.
        let rc = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "{}", errno());
    }

    fn layer_frames(src: &Path) -> io::Result<Vec<(Kind, Vec<u8>)>> {
        let mut frames = Vec::new();
        send_layer(src, &mut |k, p| {
            frames.push((k, p.to_vec()));
            Ok(())
        })?;
        Ok(frames)
    }

    fn write_layer(frames: Vec<(Kind, Vec<u8>)>, dest: &Path) -> io::Result<Copied> {
        let mut w = TreeWriter::layer(dest);
        for (k, p) in frames {
            if receive(&mut w, k, &p)? {
                return w.finish();
            }
        }
        Err(invalid("no end".into()))
    }

    #[test]
    fn layer_trees_keep_whiteouts_fifos_and_overlay_attributes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("upper");
        std::fs::create_dir_all(src.join("opaque/sub")).unwrap();
        std::fs::write(src.join("suid"), b"x").unwrap();
        std::os::unix::fs::chown(src.join("suid"), Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(src.join("suid"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::write(src.join("capable"), b"bin").unwrap();
        let cap = [
            1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        set_xattr(&src.join("capable"), "security.capability", &cap);
        set_xattr(&src.join("opaque"), "user.overlay.opaque", b"y");
        std::os::unix::fs::symlink("suid", src.join("link")).unwrap();
        mknod(&src.join("gone"), libc::S_IFCHR, 0);
        mknod(&src.join("pipe"), libc::S_IFIFO, 0);

        let dest = t.path().join("diff");
        std::fs::create_dir(&dest).unwrap();
        let copied = write_layer(layer_frames(&src).unwrap(), &dest).unwrap();
        assert_eq!(copied.files, 5, "{copied:?}");
        let md = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!(
            (md("suid").mode() & 0o7777, md("suid").uid()),
            (0o4755, 1000)
        );
        assert!(md("gone").file_type().is_char_device() && md("gone").rdev() == 0);
        assert!(md("pipe").file_type().is_fifo());
        assert!(md("link").file_type().is_symlink());
        assert!(md("opaque/sub").is_dir());
        assert_eq!(
            xattr(&dest.join("opaque"), "user.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            xattr(&dest.join("capable"), "security.capability").as_deref(),
            Some(&cap[..])
        );
        // The top is the destination itself: nothing nested under a name.
        assert!(!dest.join(LAYER_TOP).exists());
    }

    #[test]
    fn layer_trees_refuse_foreign_attributes_and_copy_mode_extras() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("upper");
        std::fs::create_dir(&src).unwrap();
        mknod(&src.join("disk"), libc::S_IFBLK, libc::makedev(7, 0));

        let dest = t.path().join("diff");
        std::fs::create_dir(&dest).unwrap();
        let entry = |path: &str, kind, xattrs: &[(&str, &str)]| Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            target: None,
            xattrs: xattrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            device: None,
        };
        let mut w = TreeWriter::layer(&dest);
        w.entry(entry(LAYER_TOP, EntryKind::Dir, &[])).unwrap();
        let err = w
            .entry(entry(
                "layer/d",
                EntryKind::Dir,
                &[("trusted.overlay.opaque", "79")],
            ))
            .unwrap_err();
        assert!(err.to_string().contains("trusted.overlay.opaque"), "{err}");
        assert!(w
            .entry(entry("layer/../x", EntryKind::Whiteout, &[]))
            .is_err());

        let mut copy = TreeWriter::new(&dest);
        copy.entry(entry("top", EntryKind::Dir, &[])).unwrap();
        assert!(copy
            .entry(entry("top/w", EntryKind::Whiteout, &[]))
            .is_err());
        assert!(copy
            .entry(entry("top/x", EntryKind::Dir, &[("user.a", "00")]))
            .is_err());

        // Copy mode still skips devices and sends no attributes.
        set_xattr(&src, "user.note", b"1");
        let mut frames = Vec::new();
        let copied = send(&src, &mut |k, p| {
            frames.push((k, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(copied.skipped, 1);
        let first: Entry = serde_json::from_slice(&frames[0].1).unwrap();
        assert!(first.xattrs.is_empty());
    }

    /// Every device node below `dir` other than whiteouts (char 0/0).
    fn device_nodes(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                found.extend(device_nodes(&e.path()));
            } else if ft.is_block_device() || (ft.is_char_device() && md.rdev() != 0) {
                found.push(e.path());
            }
        }
        found
    }

    #[test]
    fn layer_trees_carry_devices_as_placeholders_and_skip_sockets() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("upper");
        let net = src.join("opt/net");
        std::fs::create_dir_all(&net).unwrap();
        mknod(&net.join("tun"), libc::S_IFCHR, libc::makedev(10, 200));
        std::os::unix::fs::chown(net.join("tun"), Some(1), Some(2)).unwrap();
        std::fs::set_permissions(net.join("tun"), std::fs::Permissions::from_mode(0o640)).unwrap();
        mknod(&net.join("blk"), libc::S_IFBLK, libc::makedev(7, 0));
        mknod(
            &net.join("big"),
            libc::S_IFCHR,
            libc::makedev(MAX_MAJOR, MAX_MINOR),
        );
        mknod(&src.join("gone"), libc::S_IFCHR, 0);
        let _listener = std::os::unix::net::UnixListener::bind(net.join("sock")).unwrap();

        let frames = layer_frames(&src).unwrap();
        // On the wire: devices with their numbers, no socket.
        let entries: Vec<Entry> = frames
            .iter()
            .filter(|(k, _)| *k == Kind::Entry)
            .map(|(_, p)| serde_json::from_slice(p).unwrap())
            .collect();
        let sent = |name: &str| entries.iter().find(|e| e.path == name).cloned();
        let tun = sent("layer/opt/net/tun").unwrap();
        assert_eq!(
            (tun.kind, tun.device, tun.mode, tun.uid, tun.gid),
            (
                EntryKind::Char,
                Some(DeviceNumber {
                    major: 10,
                    minor: 200
                }),
                0o640,
                1,
                2
            )
        );
        assert_eq!(sent("layer/opt/net/blk").unwrap().kind, EntryKind::Block);
        assert!(sent("layer/opt/net/sock").is_none());
        assert_eq!(sent("layer/gone").unwrap().kind, EntryKind::Whiteout);

        let dest = t.path().join("diff");
        std::fs::create_dir(&dest).unwrap();
        let copied = write_layer(frames, &dest).unwrap();
        assert_eq!(copied.files, 4, "{copied:?}");
        // Nothing that opens a device on this side: empty files, marked.
        assert_eq!(device_nodes(&dest), Vec::<PathBuf>::new());
        let placeholder = |name: &str| {
            let path = dest.join(name);
            let md = std::fs::symlink_metadata(&path).unwrap();
            assert!(md.is_file() && md.len() == 0, "{name}: {md:?}");
            (
                Device::of_placeholder(&path, &md).unwrap(),
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
            )
        };
        assert_eq!(
            placeholder("opt/net/tun"),
            (Some(Device::new(false, 10, 200).unwrap()), 0o640, 1, 2)
        );
        assert_eq!(
            placeholder("opt/net/blk").0,
            Some(Device::new(true, 7, 0).unwrap())
        );
        assert_eq!(
            placeholder("opt/net/big").0,
            Some(Device::new(false, MAX_MAJOR, MAX_MINOR).unwrap())
        );
        assert_eq!(
            xattr(&dest.join("opt/net/tun"), DEVICE_XATTR).as_deref(),
            Some(&b"c 10 200"[..])
        );
        assert!(!dest.join("opt/net/sock").exists());
        // The whiteout stays what it was.
        let gone = std::fs::symlink_metadata(dest.join("gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        // A plain empty file is no placeholder.
        std::fs::write(dest.join("plain"), b"").unwrap();
        let md = std::fs::symlink_metadata(dest.join("plain")).unwrap();
        assert_eq!(
            Device::of_placeholder(&dest.join("plain"), &md).unwrap(),
            None
        );
    }

    #[test]
    fn hostile_device_entries_are_refused_and_write_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("diff");
        std::fs::create_dir(&dest).unwrap();
        let dev = |path: &str, kind, number: Option<(u32, u32)>| Entry {
            path: path.into(),
            kind,
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            target: None,
            xattrs: BTreeMap::new(),
            device: number.map(|(major, minor)| DeviceNumber { major, minor }),
        };
        let with = |mut e: Entry, f: &dyn Fn(&mut Entry)| {
            f(&mut e);
            e
        };
        let hostile = [
            ("no number", dev("layer/a", EntryKind::Char, None)),
            (
                "a number on a file",
                dev("layer/a", EntryKind::File, Some((8, 0))),
            ),
            (
                "a number on a whiteout",
                dev("layer/a", EntryKind::Whiteout, Some((8, 0))),
            ),
            ("char 0:0", dev("layer/a", EntryKind::Char, Some((0, 0)))),
            (
                "major too big",
                dev("layer/a", EntryKind::Block, Some((MAX_MAJOR + 1, 0))),
            ),
            (
                "minor too big",
                dev("layer/a", EntryKind::Char, Some((1, MAX_MINOR + 1))),
            ),
            (
                "data on a device",
                with(dev("layer/a", EntryKind::Block, Some((8, 0))), &|e| {
                    e.size = 512
                }),
            ),
            (
                "attributes on a device",
                with(dev("layer/a", EntryKind::Block, Some((8, 0))), &|e| {
                    e.xattrs.insert("user.x".into(), "00".into());
                }),
            ),
            (
                "a forged marker",
                with(dev("layer/a", EntryKind::File, None), &|e| {
                    e.xattrs.insert(DEVICE_XATTR.into(), to_hex(b"b 8 0"));
                }),
            ),
            (
                "a control character",
                dev("layer/a\nb", EntryKind::Char, Some((1, 3))),
            ),
            (
                "an escape",
                dev("layer/../a", EntryKind::Block, Some((8, 0))),
            ),
        ];
        for (what, e) in hostile {
            let mut w = TreeWriter::layer(&dest);
            w.entry(dev(LAYER_TOP, EntryKind::Dir, None)).unwrap();
            assert!(w.entry(e).is_err(), "{what} accepted");
        }
        // Devices come only in layer trees.
        let mut w = TreeWriter::new(&dest);
        w.entry(dev("top", EntryKind::Dir, None)).unwrap();
        assert!(w
            .entry(dev("top/a", EntryKind::Block, Some((8, 0))))
            .is_err());
        let left: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "top")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!t.path().join("a").exists());
    }

    #[test]
    fn device_markers_parse_strictly() {
        let ok = |s: &str| Device::parse_marker(s.as_bytes()).unwrap();
        assert_eq!(ok("c 10 200"), Device::new(false, 10, 200).unwrap());
        assert_eq!(ok("b 7 0"), Device::new(true, 7, 0).unwrap());
        assert_eq!(ok("b 0 0").marker(), "b 0 0");
        for bad in [
            "",
            "c",
            "c 10",
            "c 10 200 1",
            "x 1 2",
            "c -1 2",
            "c +1 2",
            "c 1  2",
            " c 1 2",
            "c 4096 0",
            "c 0 1048576",
            "c 0 0",
            "c 99999999 1",
            "c 1 2\n",
        ] {
            assert!(Device::parse_marker(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
