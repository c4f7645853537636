//! ADD of local tar archives: detection by content and safe extraction.

use std::io::Read;

use firebuild_oci::{SizeLimit, UnpackOptions};
use rustix::fs::OFlags;

use super::error::{source_error, CopyError};
use super::writer::{Attrs, Writer};

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

/// Extracts a tar stream into `dest_rel` (a directory in the image) with
/// the OCI layer extractor (`firebuild_oci::unpack`), whiteouts read as
/// plain names: entry paths are confined to the destination as if it were
/// `/` (as Docker's chrooted untar does); owners, modes, mtimes, devices,
/// hard links and xattrs come from the archive. `name` is the source in
/// errors.
pub fn unpack_archive(
    reader: &mut dyn Read,
    w: &mut Writer<'_>,
    dest_rel: &str,
    name: &str,
    limit: Option<u64>,
) -> Result<(), CopyError> {
    let archive_error = |e: std::io::Error| CopyError::Archive {
        path: name.to_owned(),
        reason: e.to_string(),
    };
    let mut head = vec![0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]).map_err(archive_error)? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    let chained: Box<dyn Read + '_> = Box::new(std::io::Cursor::new(head.clone()).chain(reader));
    let stream = decoder(compression(&head), chained).map_err(archive_error)?;
    let root_attrs = Attrs {
        mode: 0o755,
        uid: w.parent_owner.0,
        gid: w.parent_owner.1,
        mtime: None,
    };
    w.dir(dest_rel, &root_attrs, false)?;
    let dest = w
        .root
        .open_at(dest_rel, OFlags::PATH | OFlags::DIRECTORY)
        .and_then(|fd| w.root.host_path_of(&fd))
        .map_err(|e| source_error(&format!("/{dest_rel}"), e))?;
    let opts = UnpackOptions {
        preserve_ownership: true,
        whiteouts: false,
        limit: limit.map(SizeLimit::new).unwrap_or_default(),
    };
    firebuild_oci::unpack::apply_layer(&dest, stream, name, &opts)?;
    Ok(())
}
