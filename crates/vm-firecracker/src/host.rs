//! Checks of the host that Firecracker would otherwise fail on late, or
//! silently get wrong.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The device of `path`, or of its nearest existing ancestor (the run
/// directory and the chroot base may not exist yet), with that ancestor.
fn device_of(path: &Path) -> Option<(u64, PathBuf)> {
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (m.dev(), p.to_owned())))
}

/// The jail gets the VM's root filesystem, console and logs as hard links
/// of the run directory's files. Across filesystems they would be copied:
/// the whole root filesystem duplicated, and the console written to a copy
/// the runtime never reads (no output, no exit code). So both must be on
/// one filesystem.
pub(crate) fn check_same_filesystem(run_dir: &Path, chroot_base: &Path) -> Result<(), String> {
    let (Some((run_dev, run_at)), Some((jail_dev, jail_at))) =
        (device_of(run_dir), device_of(chroot_base))
    else {
        // Nothing of either path exists: the later steps say what is missing.
        return Ok(());
    };
    if run_dev == jail_dev {
        return Ok(());
    }
    Err(format!(
        "the jailer's chroot base {} (on the filesystem of {}) and the run directory {} (on the filesystem of {}) are on different filesystems; \
         the VM's files are hard-linked into the jail, so put the chroot base on the run cache's filesystem (--chroot-base)",
        chroot_base.display(),
        jail_at.display(),
        run_dir.display(),
        run_at.display()
    ))
}

/// Firecracker boots only uncompressed ELF kernels (`vmlinux`) on x86_64.
/// An unreadable kernel is not judged here: the runtime reports it.
pub(crate) fn check_elf_kernel(kernel: &Path) -> Result<(), String> {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(kernel).and_then(|mut f| f.read_exact(&mut magic));
    if read.is_ok() && magic != *b"\x7fELF" {
        return Err(format!(
            "the kernel {} is not an uncompressed ELF vmlinux, the only format Firecracker boots",
            kernel.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_filesystem_uses_nearest_existing_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        check_same_filesystem(&dir.path().join("runs/vm1"), &dir.path().join("jail")).unwrap();
        // /proc is never the filesystem of a temp dir.
        let err = check_same_filesystem(&dir.path().join("runs/vm1"), Path::new("/proc/x/y"))
            .unwrap_err();
        assert!(
            err.contains("/proc/x/y") && err.contains("--chroot-base"),
            "{err}"
        );
    }

    #[test]
    fn kernel_must_be_elf() {
        let dir = tempfile::tempdir().unwrap();
        let elf = dir.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        check_elf_kernel(&elf).unwrap();
        let bz = dir.path().join("bzImage");
        std::fs::write(&bz, b"MZ\x00\x00 not elf").unwrap();
        let err = check_elf_kernel(&bz).unwrap_err();
        assert!(err.contains("bzImage") && err.contains("ELF"), "{err}");
        check_elf_kernel(&dir.path().join("missing")).unwrap();
    }
}
