//! Reproducible ext4 images (`SOURCE_DATE_EPOCH`): the same tree and label
//! give the same bytes on any host, so an image pulled on a second host
//! is bit-identical to the one built on the first.
//!
//! What `mkfs.ext4 -d` would take from the moment or the host is fixed:
//! the UUID and directory hash seed come from the epoch, label and size
//! of the content; the superblock's times are the epoch
//! (`E2FSPROGS_FAKE_TIME`); and, after mkfs (which copies each file's
//! ctime and atime from the host, where nobody can set them), every
//! inode's times become its mtime clamped to the epoch, in whole seconds,
//! and the last write time the epoch.
//! mkfs 1.47 adds directory entries in name order, so inode and block
//! numbers follow from the tree alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::ext4::Usage;

/// The mkfs arguments and environment that would otherwise differ per run.
pub(crate) fn fix_mkfs_inputs(mkfs: &mut Command, epoch: i64, label: &str, usage: Usage) {
    let uuid = uuid_for(epoch, label, usage);
    mkfs.arg("-U")
        .arg(&uuid)
        .arg("-E")
        .arg(format!("hash_seed={uuid}"))
        .env("E2FSPROGS_FAKE_TIME", epoch.max(0).to_string());
}

/// A UUID (version 8 layout: name-based, sha256) of what the image holds.
fn uuid_for(epoch: i64, label: &str, usage: Usage) -> String {
    let mut h = Sha256::new();
    h.update(b"firebuild ext4\0");
    h.update(epoch.to_le_bytes());
    h.update(usage.bytes.to_le_bytes());
    h.update(usage.inodes.to_le_bytes());
    h.update(label.as_bytes());
    let mut b: [u8; 16] = h.finalize()[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// Sets every inode's atime, ctime, mtime and crtime to its mtime clamped
/// to `epoch`, nanoseconds zero.
pub(crate) fn normalize_times(image: &Path, epoch: i64) -> Result<(), String> {
    let fs = crate::ext4_reader::Ext4Image::open(image).map_err(|e| e.to_string())?;
    let mut times = BTreeMap::new();
    fs.walk(&mut |entry| {
        times.insert(entry.inode_number(), entry.mtime.0.min(epoch).max(0));
        Ok(())
    })
    .map_err(|e| format!("reading the image back: {e:?}"))?;
    let mut script = String::new();
    for (inode, t) in &times {
        for field in ["atime", "ctime", "mtime", "crtime"] {
            let _ = writeln!(script, "sif <{inode}> {field} @{t}");
        }
    }
    // debugfs stamps the superblock with the time it closes the image.
    let _ = writeln!(script, "ssv wtime @{}", epoch.max(0));
    crate::ext4::run_debugfs(image, script.as_bytes(), Some(epoch))
        .map_err(|e| format!("fixing inode times with debugfs failed {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, reversed: bool) {
        std::fs::create_dir_all(dir.join("etc/deep")).unwrap();
        let mut order: Vec<u32> = (0..40).collect();
        if reversed {
            order.reverse();
        }
        for i in order {
            std::fs::write(dir.join(format!("etc/f{i}")), format!("{i}\n")).unwrap();
        }
        std::fs::write(dir.join("etc/deep/late"), "new").unwrap();
        std::os::unix::fs::symlink("etc/f1", dir.join("link")).unwrap();
    }

    #[test]
    fn the_same_tree_written_twice_at_different_times_gives_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        tree(&a, false);
        // Made later, in another order: other ctimes, atimes and mtimes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        tree(&b, true);
        let epoch = 1_700_000_000;
        let (ia, ib) = (d.path().join("a.img"), d.path().join("b.img"));
        crate::ext4::make_ext4_at(&a, &ia, None, "same", Some(epoch)).unwrap();
        crate::ext4::make_ext4_at(&b, &ib, None, "same", Some(epoch)).unwrap();
        assert!(
            std::fs::read(&ia).unwrap() == std::fs::read(&ib).unwrap(),
            "two writes of one tree differ"
        );
        // Without the epoch the host's times go in, as before.
        let ic = d.path().join("c.img");
        crate::ext4::make_ext4(&a, &ic, None, "same").unwrap();
        assert!(std::fs::read(&ia).unwrap() != std::fs::read(&ic).unwrap());
    }
}
