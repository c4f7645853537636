//! ADD of local tar archives: detection by content and safe extraction.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use super::writer::{Attrs, Writer};
use crate::fsutil;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn decoder<'a>(c: Compression, r: Box<dyn Read + 'a>) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => r,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Whether a file starting with `head` is a (possibly compressed) tar
/// archive, which ADD extracts. Other files, compressed or not, are copied.
pub fn is_archive(head: &[u8]) -> bool {
    let Ok(mut d) = decoder(compression(head), Box::new(head)) else {
        return false;
    };
    let mut block = vec![0u8; 512];
    let mut got = 0;
    while got < 512 {
        match d.read(&mut block[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got == 512 && &block[257..262] == b"ustar"
}

/// Extracts a tar stream into `dest_rel` (a directory in the image). Entry
/// paths are cleaned and confined to the image root; owners, modes and
/// mtimes come from the archive.
pub fn unpack_archive(
    reader: &mut dyn Read,
    w: &mut Writer<'_>,
    dest_rel: &str,
) -> Result<(), String> {
    let mut head = vec![0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    let chained: Box<dyn Read + '_> = Box::new(std::io::Cursor::new(head.clone()).chain(reader));
    let stream = decoder(compression(&head), chained).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(stream);
    let root_attrs = Attrs {
        mode: 0o755,
        uid: w.parent_owner.0,
        gid: w.parent_owner.1,
        mtime: None,
    };
    w.dir(dest_rel, &root_attrs, false)
        .map_err(|e| e.to_string())?;
    for entry in archive
        .entries()
        .map_err(|e| format!("reading the archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = fsutil::clean_rel_checked(&String::from_utf8_lossy(&raw)) else {
            return Err(format!(
                "archive entry {:?} climbs out of the destination",
                String::from_utf8_lossy(&raw)
            ));
        };
        let target = if rel.is_empty() {
            dest_rel.to_owned()
        } else if dest_rel.is_empty() {
            rel.clone()
        } else {
            format!("{dest_rel}/{rel}")
        };
        let h = entry.header();
        let attrs = Attrs {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
            mtime: h.mtime().ok().map(|m| (m as i64, 0)),
        };
        let kind = h.entry_type();
        let res = match kind {
            tar::EntryType::Directory => w.dir(&target, &attrs, true),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                w.file(&target, &mut entry, &attrs, None)
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                w.symlink(&target, OsStr::from_bytes(&link), &attrs)
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let Some(lrel) = fsutil::clean_rel_checked(&String::from_utf8_lossy(&link)) else {
                    return Err(format!(
                        "archive hard link {target} climbs out of the destination"
                    ));
                };
                w.hardlink(&target, &format!("{dest_rel}/{lrel}"))
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let t = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let rdev = libc::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                let mut a = attrs;
                a.mode |= t;
                w.special(&target, &a, rdev)
            }
            // PAX/GNU metadata entries are consumed by the tar reader.
            _ => Ok(()),
        };
        res.map_err(|e| e.to_string())?;
    }
    Ok(())
}
