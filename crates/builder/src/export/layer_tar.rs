//! One cached layer diff as an OCI layer tar.
//!
//! The diff is in overlayfs upper-dir form (see [`crate::layers`]); OCI
//! layers say the same things differently: a 0/0 character device (a
//! whiteout) becomes an empty `.wh.<name>`, a directory marked
//! `user.overlay.opaque` gets a `.wh..wh..opq` entry, a device placeholder
//! becomes the device entry it stands for, and hard links inside the layer
//! become link entries. overlayfs' own attributes stay behind.
//!
//! The stream is reproducible: entries in byte order of their names,
//! numeric owners only, no user or group names, times in whole seconds
//! (clamped to `SOURCE_DATE_EPOCH` when given), so the same diff always
//! gives the same bytes.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use firebuild_agent_proto::tree::{layer_xattr_allowed, Device};

const OPAQUE_XATTR: &str = "user.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &str = "user.overlay.";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What a layer tar carries of a file's times.
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    /// `SOURCE_DATE_EPOCH`: no time in the tar is later.
    pub clamp: Option<i64>,
}

impl Times {
    pub fn mtime(&self, mtime: i64) -> u64 {
        let t = match self.clamp {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        };
        t.max(0) as u64
    }
}

/// Writes the diff at `diff` as an uncompressed OCI layer tar to `out`.
pub fn write_layer_tar(diff: &Path, times: Times, out: impl Write) -> io::Result<()> {
    let mut w = LayerTar {
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        times,
    };
    w.dir_contents(diff, b"")?;
    w.tar.into_inner()?.flush()
}

struct LayerTar<W: Write> {
    tar: tar::Builder<W>,
    /// (dev, ino) of files linked more than once → the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    times: Times,
}

impl<W: Write> LayerTar<W> {
    /// The entries of the directory `dir` (whose path in the layer is
    /// `rel`, empty for the root), in name order.
    fn dir_contents(&mut self, dir: &Path, rel: &[u8]) -> io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| at(dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| at(dir, e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            self.entry(&dir.join(&name), &child_rel)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &[u8]) -> io::Result<()> {
        let md = std::fs::symlink_metadata(path).map_err(|e| at(path, e))?;
        let ft = md.file_type();
        let name = OsStr::from_bytes(rel);
        let mut header = self.header(&md);
        if ft.is_char_device() && md.rdev() == 0 {
            return self.whiteout(rel, &md);
        }
        let xattrs = self.xattrs(path);
        if ft.is_dir() {
            self.pax(&xattrs)?;
            header.set_entry_type(tar::EntryType::Directory);
            self.tar.append_data(&mut header, name, io::empty())?;
            if xattr_value(&xattrs, OPAQUE_XATTR).is_some_and(|v| v == b"y") {
                let mut marker = rel.to_vec();
                marker.extend_from_slice(b"/");
                marker.extend_from_slice(OPAQUE_MARKER.as_bytes());
                self.empty_file(&marker, &md)?;
            }
            return self.dir_contents(path, rel);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| at(path, e))?;
            self.pax(&xattrs)?;
            header.set_entry_type(tar::EntryType::Symlink);
            return self.tar.append_link(&mut header, name, target);
        }
        if ft.is_fifo() {
            self.pax(&xattrs)?;
            header.set_entry_type(tar::EntryType::Fifo);
            return self.tar.append_data(&mut header, name, io::empty());
        }
        if ft.is_socket() || ft.is_char_device() || ft.is_block_device() {
            // Sockets are leftovers of a running program; real device
            // nodes never get into a layer (placeholders stand for them).
            return Ok(());
        }
        if let Some(device) = Device::of_placeholder(path, &md)? {
            self.pax(&xattrs)?;
            header.set_entry_type(if device.block {
                tar::EntryType::Block
            } else {
                tar::EntryType::Char
            });
            header.set_device_major(device.major)?;
            header.set_device_minor(device.minor)?;
            return self.tar.append_data(&mut header, name, io::empty());
        }
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                header.set_entry_type(tar::EntryType::Link);
                return self
                    .tar
                    .append_link(&mut header, name, OsStr::from_bytes(&first));
            }
            self.links.insert(key, rel.to_vec());
        }
        // Never follow a link planted in place of the file since the lstat.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| at(path, e))?;
        self.pax(&xattrs)?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(md.len());
        // A file that changed size under us would make a corrupt entry:
        // read exactly what the header says, or fail.
        let mut data = io::Read::take(file, md.len());
        self.tar.append_data(&mut header, name, &mut data)
    }

    fn header(&self, md: &std::fs::Metadata) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid().into());
        h.set_gid(md.gid().into());
        h.set_mtime(self.times.mtime(md.mtime()));
        h.set_size(0);
        h
    }

    /// `.wh.<name>` beside the name the whiteout hides.
    fn whiteout(&mut self, rel: &[u8], md: &std::fs::Metadata) -> io::Result<()> {
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..=i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        };
        let mut marker = parent.to_vec();
        marker.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
        marker.extend_from_slice(name);
        self.empty_file(&marker, md)
    }

    fn empty_file(&mut self, rel: &[u8], md: &std::fs::Metadata) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(self.times.mtime(md.mtime()));
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        self.tar
            .append_data(&mut h, OsStr::from_bytes(rel), io::empty())
    }

    /// The attributes an image carries: `user.*` but overlayfs' own, and
    /// file capabilities; sorted by name.
    fn xattrs(&self, path: &Path) -> Vec<(String, Vec<u8>)> {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Vec<u8>)> = crate::fsutil::list_xattrs(&c)
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| layer_xattr_allowed(k))
            .collect();
        out.sort();
        out
    }

    /// PAX records for the attributes of the next entry (overlay's left out).
    fn pax(&mut self, xattrs: &[(String, Vec<u8>)]) -> io::Result<()> {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .filter(|(k, _)| !k.starts_with(OVERLAY_XATTR_PREFIX))
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
    }
}

fn xattr_value<'a>(xattrs: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    xattrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::set_xattr;
    use firebuild_agent_proto::tree::DEVICE_XATTR;
    use std::collections::BTreeMap;

    fn c(s: impl AsRef<OsStr>) -> CString {
        CString::new(s.as_ref().as_bytes()).unwrap()
    }

    fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
        let rc =
            unsafe { libc::mknod(c(path).as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
        assert_eq!(rc, 0, "mknod {}", path.display());
    }

    /// Path, type, link target or device, pax xattrs and mtime of an entry.
    type Listed = (
        String,
        tar::EntryType,
        String,
        BTreeMap<String, Vec<u8>>,
        u64,
    );

    fn entries(tar: &[u8]) -> Vec<Listed> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut xattrs = BTreeMap::new();
                if let Ok(Some(exts)) = e.pax_extensions() {
                    for ext in exts {
                        let ext = ext.unwrap();
                        xattrs.insert(ext.key().unwrap().to_owned(), ext.value_bytes().to_vec());
                    }
                }
                let h = e.header();
                let extra = match h.entry_type() {
                    tar::EntryType::Char | tar::EntryType::Block => format!(
                        "{}:{}",
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap()
                    ),
                    _ => e
                        .link_name()
                        .unwrap()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default(),
                };
                let path = e.path().unwrap().display().to_string();
                (path, h.entry_type(), extra, xattrs, h.mtime().unwrap())
            })
            .collect()
    }

    #[test]
    fn an_overlay_diff_becomes_an_oci_layer_the_same_way_every_time() {
        let d = tempfile::tempdir().unwrap();
        let diff = d.path().join("diff");
        std::fs::create_dir_all(diff.join("etc/opaque")).unwrap();
        std::fs::write(diff.join("etc/opaque/kept"), "k").unwrap();
        set_xattr(&c(diff.join("etc/opaque")), &c(OPAQUE_XATTR), b"y").unwrap();
        std::fs::write(diff.join("b-file"), "data").unwrap();
        set_xattr(&c(diff.join("b-file")), &c("user.note"), b"kept").unwrap();
        std::fs::hard_link(diff.join("b-file"), diff.join("c-link")).unwrap();
        mknod(&diff.join("etc/gone"), libc::S_IFCHR, 0, 0);
        std::fs::write(diff.join("a-null"), "").unwrap();
        set_xattr(&c(diff.join("a-null")), &c(DEVICE_XATTR), b"c 1 3").unwrap();
        std::os::unix::fs::symlink("b-file", diff.join("d-sym")).unwrap();

        let mut first = Vec::new();
        write_layer_tar(&diff, Times::default(), &mut first).unwrap();
        let mut again = Vec::new();
        write_layer_tar(&diff, Times::default(), &mut again).unwrap();
        assert_eq!(first, again, "the same diff gives the same bytes");

        let got = entries(&first);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a-null",
                "b-file",
                "c-link",
                "d-sym",
                "etc",
                "etc/.wh.gone",
                "etc/opaque",
                "etc/opaque/.wh..wh..opq",
                "etc/opaque/kept"
            ]
        );
        let by_name: BTreeMap<&str, _> = got.iter().map(|e| (e.0.as_str(), e)).collect();
        assert_eq!(by_name["a-null"].1, tar::EntryType::Char);
        assert_eq!(by_name["a-null"].2, "1:3");
        assert!(
            by_name["a-null"].3.is_empty(),
            "no firebuild marker in the image"
        );
        assert_eq!(by_name["b-file"].3["SCHILY.xattr.user.note"], b"kept");
        assert_eq!(by_name["c-link"].1, tar::EntryType::Link);
        assert_eq!(by_name["c-link"].2, "b-file");
        assert_eq!(by_name["d-sym"].1, tar::EntryType::Symlink);
        assert!(
            by_name["etc/opaque"].3.is_empty(),
            "overlayfs' own attributes stay behind"
        );

        // SOURCE_DATE_EPOCH clamps every time.
        let mut clamped = Vec::new();
        write_layer_tar(&diff, Times { clamp: Some(1000) }, &mut clamped).unwrap();
        assert!(entries(&clamped).iter().all(|e| e.4 == 1000));
    }
}
