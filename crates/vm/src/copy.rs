//! The VM's private copy of the root filesystem image: a reflink (`FICLONE`)
//! where the filesystem shares extents (btrfs, xfs), else a sparse copy that
//! copies only the data extents (`SEEK_DATA`/`SEEK_HOLE`), so a mostly empty
//! ext4 image costs only what it holds.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// How the copy was made (for logs and `inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

/// Copies `src` to the new file `dst` (created 0600; it must not exist).
/// On failure `dst` is removed.
pub fn copy_image(src: &Path, dst: &Path) -> io::Result<CopyMethod> {
    let source = File::open(src)?;
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let result = copy_into(&source, &target);
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn copy_into(source: &File, target: &File) -> io::Result<CopyMethod> {
    match rustix::fs::ioctl_ficlone(target, source) {
        Ok(()) => return Ok(CopyMethod::Reflink),
        // Not supported by this filesystem, or across filesystems: copy.
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::BADF) => {}
        Err(e) => return Err(e.into()),
    }
    sparse_copy(source, target)?;
    Ok(CopyMethod::Sparse)
}

fn sparse_copy(source: &File, target: &File) -> io::Result<()> {
    let len = source.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(source, SeekFrom::Data(pos)) {
            Ok(offset) => offset,
            // No data after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(source, SeekFrom::Hole(data))?.min(len);
        copy_range(source, target, data, hole - data)?;
        pos = hole;
    }
    // No fsync: the copy is the VM's scratch disk, worthless after a host
    // crash, and flushing it would delay every boot.
    target.set_len(len)
}

/// Copies `count` bytes at `offset` to the same offset, with
/// `copy_file_range` (in-kernel) and a read/write fallback.
fn copy_range(source: &File, target: &File, offset: u64, count: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < count {
        let mut off_in = offset + done;
        let mut off_out = offset + done;
        let chunk = usize::try_from(count - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(
            source,
            Some(&mut off_in),
            target,
            Some(&mut off_out),
            chunk,
        ) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file shrank while being copied",
                ))
            }
            Ok(n) => done += n as u64,
            Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) => {
                return copy_range_rw(source, target, offset + done, count - done);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_rw(source: &File, target: &File, offset: u64, count: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < count {
        let want = usize::try_from(count - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = source.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source file shrank while being copied",
            ));
        }
        target.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let f = File::create(&src).unwrap();
        let size = 64 << 20;
        f.set_len(size).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 8192], 10 << 20).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
        f.sync_all().unwrap();
        drop(f);

        copy_image(&src, &dst).unwrap();
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert_eq!(a.len(), b.len());
        assert!(a == b);
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Holes stay holes: far fewer blocks than the apparent size.
        assert!(meta.blocks() * 512 < size / 4, "blocks {}", meta.blocks());
    }

    #[test]
    fn refuses_to_overwrite_and_reports_missing_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, b"x").unwrap();
        std::fs::write(&dst, b"keep").unwrap();
        assert!(copy_image(&src, &dst).is_err());
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep");
        let err = copy_image(&dir.path().join("missing"), &dir.path().join("new")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("new").exists());
    }
}
