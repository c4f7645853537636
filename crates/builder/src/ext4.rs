//! The ext4 output: `mkfs.ext4 -d` of the finished root (no loop mount), and
//! the way back, reading a stored image's files with `debugfs` for
//! `FROM <stored tag>` when its layers are no longer cached.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::error::{BuildError, Result};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

/// What went into an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the files need in 4 KiB blocks.
    pub bytes: u64,
    pub inodes: u64,
}

/// Measures a tree as ext4 will store it (4 KiB blocks; hard links once).
pub fn measure(root: &Path) -> Result<Usage> {
    let mut usage = Usage {
        bytes: 0,
        inodes: 0,
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(BuildError::io("reading", &dir))?;
        usage.inodes += 1;
        let mut n = 0u64;
        for e in entries {
            let e = e.map_err(BuildError::io("reading", &dir))?;
            n += 1;
            let md = e.metadata().map_err(BuildError::io("stat", e.path()))?;
            if md.is_dir() {
                stack.push(e.path());
                continue;
            }
            if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            usage.inodes += 1;
            if md.is_file() || (md.file_type().is_symlink() && md.len() > 59) {
                usage.bytes += md.len().div_ceil(BLOCK) * BLOCK;
            }
        }
        // Directory blocks: ~40 bytes per entry.
        usage.bytes += (n * 40).div_ceil(BLOCK).max(1) * BLOCK;
    }
    Ok(usage)
}

/// The file system size for `usage`: the content plus a quarter (at least
/// 64 MiB) of free space for the VM, plus inode tables and journal.
pub fn default_size_mib(usage: Usage) -> u64 {
    let inode_bytes = inode_count(usage) * 256;
    let headroom = (usage.bytes / 4).max(64 * MIB);
    let journal = if usage.bytes > 512 * MIB {
        64 * MIB
    } else {
        16 * MIB
    };
    (usage.bytes + headroom + inode_bytes + journal).div_ceil(MIB)
}

/// Inodes to create: twice what is used (the VM makes files too), at least
/// 16384.
fn inode_count(usage: Usage) -> u64 {
    (usage.inodes * 2).max(16384)
}

/// Writes an ext4 image of `root` to `out` (created, sparse), `size_mib`
/// large (or the default for the content).
pub fn make_ext4(root: &Path, out: &Path, size_mib: Option<u64>, label: &str) -> Result<u64> {
    let usage = measure(root)?;
    let size = size_mib.unwrap_or_else(|| default_size_mib(usage));
    let err = |message: String| BuildError::Ext4 {
        path: out.to_path_buf(),
        message,
    };
    let f = std::fs::File::create(out).map_err(BuildError::io("creating", out))?;
    f.set_len(size * MIB)
        .map_err(BuildError::io("sizing", out))?;
    drop(f);
    let output = tool("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-m", "0"])
        // orphan_file (1.47's default) cannot be mounted read-write by
        // guest kernels before 5.15.
        .args(["-O", "^orphan_file"])
        .arg("-N")
        .arg(inode_count(usage).to_string())
        .arg("-L")
        .arg(&label[..label.len().min(16)])
        .arg("-d")
        .arg(root)
        .arg(out)
        .env("PATH", tool_path())
        .output()
        .map_err(|e| {
            err(format!(
                "running mkfs.ext4: {e}; install e2fsprogs (1.43 or later)"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint =
            if size_mib.is_some() && (stderr.contains("allocate") || stderr.contains("space")) {
                format!(
                    "; the content needs about {} MiB: give a larger --filesystem-size-mbs",
                    default_size_mib(usage)
                )
            } else {
                String::new()
            };
        return Err(err(format!(
            "mkfs.ext4 failed ({}): {}{hint}",
            output.status,
            stderr.trim()
        )));
    }
    Ok(size * MIB)
}

/// An e2fsprogs command that dies with the thread that started it, so a
/// killed build leaves no mkfs running.
fn tool(name: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(name);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    c
}

fn tool_path() -> String {
    let cur = std::env::var("PATH").unwrap_or_default();
    format!("{cur}:/usr/sbin:/sbin:/usr/bin:/bin")
}

/// Copies every entry of the ext4 image `image` into `dest` (an empty
/// directory) without mounting it: [`crate::ext4_reader`] reads the image
/// into a tar stream, and firebuild's one extractor of untrusted trees
/// (`firebuild_oci::unpack`, whiteouts off) writes it under `dest` with
/// owners, modes (setuid bits included), mtimes, device numbers, hard links
/// and `user.`/`trusted.`/`security.` extended attributes.
pub fn import_ext4(image: &Path, dest: &Path) -> Result<()> {
    let err = |message: String| BuildError::Ext4 {
        path: image.to_path_buf(),
        message,
    };
    let fs = crate::ext4_reader::Ext4Image::open(image).map_err(|e| err(e.to_string()))?;
    let (reader, writer) = std::io::pipe().map_err(|e| err(format!("a pipe: {e}")))?;
    let opts = firebuild_oci::UnpackOptions {
        preserve_ownership: true,
        whiteouts: false,
        ..Default::default()
    };
    let (produced, applied) = std::thread::scope(|s| {
        let producer = s.spawn(|| write_tar(&fs, writer));
        let applied = firebuild_oci::apply_layer(dest, reader, "its tree", &opts);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err("the reader thread panicked".into()));
        (produced, applied)
    });
    // The reader's own error first: the extractor then only saw a cut stream.
    produced.map_err(err)?;
    applied.map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Writes `fs`'s tree as a tar stream (GNU headers for long names and big
/// ids, PAX records for xattrs); the root itself is left out.
fn write_tar(
    fs: &crate::ext4_reader::Ext4Image,
    out: std::io::PipeWriter,
) -> std::result::Result<(), String> {
    use crate::ext4_reader::{Entry, Kind, WalkError};
    use std::os::unix::ffi::OsStrExt;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let mut first_paths: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut append = |entry: &Entry| -> std::io::Result<()> {
        if entry.path.is_empty() {
            return Ok(());
        }
        let path = std::ffi::OsStr::from_bytes(&entry.path);
        let xattrs: Vec<(String, &[u8])> = entry
            .xattrs
            .iter()
            .filter_map(|(k, v)| {
                let name = std::str::from_utf8(k).ok()?;
                Some((format!("SCHILY.xattr.{name}"), v.as_slice()))
            })
            .collect();
        if !xattrs.is_empty() {
            tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(entry.mtime.0.max(0) as u64);
        header.set_size(0);
        if entry.multiply_linked {
            if let Some(first) = first_paths.get(&entry.inode_number()) {
                header.set_entry_type(tar::EntryType::Link);
                return tar.append_link(&mut header, path, std::ffi::OsStr::from_bytes(first));
            }
            first_paths.insert(entry.inode_number(), entry.path.clone());
        }
        match &entry.kind {
            Kind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut header, path, std::io::empty())
            }
            Kind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size());
                let data = fs.contents(entry).map_err(std::io::Error::other)?;
                tar.append_data(&mut header, path, data)
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut header, path, target)
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                header.set_entry_type(if matches!(entry.kind, Kind::CharDevice { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                tar.append_data(&mut header, path, std::io::empty())
            }
            Kind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                tar.append_data(&mut header, path, std::io::empty())
            }
            // A socket in an image is a leftover of a running program.
            Kind::Socket => Ok(()),
        }
    };
    fs.walk(&mut |entry| append(entry).map_err(|e| e.to_string()))
        .map_err(|e| match e {
            WalkError::Image(e) => e.to_string(),
            WalkError::Visit(message) => message,
        })?;
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| format!("writing the tree: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_ext4_without_mounting() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), "hi").unwrap();
        std::os::unix::fs::chown(src.join("d/f"), Some(1000), Some(50)).unwrap();
        std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(src.join("d/f"), src.join("hl")).unwrap();
        let path = std::ffi::CString::new(src.join("hl").to_str().unwrap()).unwrap();
        crate::fsutil::set_xattr(
            &path,
            &std::ffi::CString::new("user.firebuild").unwrap(),
            b"kept",
        )
        .unwrap();
        std::os::unix::fs::symlink("d/f", src.join("sl")).unwrap();
        let c = std::ffi::CString::new(src.join("null").to_str().unwrap()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
        let img = d.path().join("img");
        let size = make_ext4(&src, &img, None, "test").unwrap();
        assert_eq!(size % MIB, 0);
        let ea = Command::new("debugfs")
            .arg("-R")
            .arg("ea_get /d/f user.firebuild")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ea.stdout).contains("kept"),
            "xattrs kept in the image"
        );
        let fsck = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        import_ext4(&img, &out).unwrap();
        let md = std::fs::metadata(out.join("d/f")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid(), md.nlink()),
            (0o4755, 1000, 50, 2)
        );
        assert_eq!(
            std::fs::read_link(out.join("sl")).unwrap(),
            Path::new("d/f")
        );
        let null = std::fs::symlink_metadata(out.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        assert!(!out.join("lost+found").exists());
        // Too small a requested size fails with advice.
        std::fs::write(src.join("big"), vec![7u8; 3 * MIB as usize]).unwrap();
        let err = make_ext4(&src, &img, Some(2), "t").unwrap_err().to_string();
        assert!(err.contains("mkfs.ext4 failed"), "{err}");
    }

    #[test]
    fn sizes_grow_with_content() {
        let small = default_size_mib(Usage {
            bytes: 0,
            inodes: 10,
        });
        assert!(small >= 64, "{small}");
        let big = default_size_mib(Usage {
            bytes: 1024 * MIB,
            inodes: 40_000,
        });
        assert!(big > 1024 + 256, "{big}");
    }
}
