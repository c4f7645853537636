//! Kernel sources: a tarball (`.tar.xz`, `.tar.gz`, ...) such as Debian's
//! `/usr/src/linux-source-6.1.tar.xz`, or an unpacked source tree.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::identify::{classify, FileKind};
use crate::tools::Needs;

/// The form a kernel source comes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A tar archive; `compression` is `None` for a plain `.tar`.
    Tarball { compression: Option<&'static str> },
    /// An unpacked, clean source tree (built out of tree, left untouched).
    Tree,
}

/// A detected kernel source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// The path as given.
    pub path: PathBuf,
    /// Tarball or tree.
    pub kind: SourceKind,
}

impl KernelSource {
    /// Looks at `path` and decides what kind of source it is.
    pub fn detect(path: &Path) -> Result<KernelSource> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::SourceNotFound {
                path: path.to_path_buf(),
            },
            _ => Error::io("inspect kernel source", path, e),
        })?;
        let kind = if meta.is_dir() {
            check_tree(path)?;
            SourceKind::Tree
        } else {
            SourceKind::Tarball {
                compression: sniff_archive(path)?,
            }
        };
        Ok(KernelSource {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// The tools this source needs beyond the compiler toolchain.
    pub fn needs(&self) -> Needs<'static> {
        match self.kind {
            SourceKind::Tarball { compression } => Needs {
                compression,
                tarball: true,
            },
            SourceKind::Tree => Needs::default(),
        }
    }

    /// The kernel version (`6.1.192`) from the top-level Makefile; for a
    /// tarball, read without unpacking the rest.
    pub fn version(&self) -> Result<String> {
        let makefile = match self.kind {
            SourceKind::Tree => {
                let path = self.path.join("Makefile");
                std::fs::read_to_string(&path).map_err(|e| Error::io("read", path, e))?
            }
            SourceKind::Tarball { .. } => self.tarball_makefile()?,
        };
        makefile_version(&makefile).ok_or_else(|| Error::BadSource {
            path: self.path.clone(),
            reason: "its top-level Makefile has no VERSION/PATCHLEVEL/SUBLEVEL lines".into(),
        })
    }

    /// `tar` stops reading once it has found the first top-level Makefile,
    /// which sits near the start of kernel tarballs.
    fn tarball_makefile(&self) -> Result<String> {
        let output = Command::new("tar")
            .arg("-xOf")
            .arg(&self.path)
            .args([
                "--occurrence=1",
                "--wildcards",
                "--no-wildcards-match-slash",
                "*/Makefile",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("run tar to read the Makefile of", &self.path, e))?;
        if !output.status.success() || output.stdout.is_empty() {
            return Err(Error::BadSource {
                path: self.path.clone(),
                reason: format!(
                    "no top-level Makefile found in the archive (tar: {}); is it a Linux source tarball?",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Parses `VERSION`, `PATCHLEVEL`, `SUBLEVEL` and `EXTRAVERSION` from a kernel
/// Makefile into `6.1.192` (plus the extra version, if any).
pub fn makefile_version(makefile: &str) -> Option<String> {
    let field = |name: &str| -> Option<String> {
        makefile.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let numeric = |s: &String| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let version = field("VERSION").filter(numeric)?;
    let patch = field("PATCHLEVEL").filter(numeric)?;
    let sub = field("SUBLEVEL").filter(numeric)?;
    let extra = field("EXTRAVERSION").unwrap_or_default();
    Some(format!("{version}.{patch}.{sub}{extra}"))
}

/// Finds the source tree inside an unpacked tarball: the directory itself,
/// or its single top-level directory.
pub fn unpacked_root(dir: &Path) -> Result<PathBuf> {
    if dir.join("Makefile").is_file() {
        return Ok(dir.to_path_buf());
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match entries.as_slice() {
        [only] => {
            check_tree(only)?;
            Ok(only.clone())
        }
        _ => Err(Error::BadSource {
            path: dir.to_path_buf(),
            reason: "the archive does not hold a single kernel source directory".into(),
        }),
    }
}

/// A usable tree has the kernel's Makefile and Kconfig and the x86 arch
/// code, and no in-tree build (which makes `make O=...` refuse to run).
fn check_tree(path: &Path) -> Result<()> {
    let bad = |reason: String| Error::BadSource {
        path: path.to_path_buf(),
        reason,
    };
    for needed in ["Makefile", "Kconfig", "arch/x86/Kconfig"] {
        if !path.join(needed).is_file() {
            return Err(bad(format!(
                "{needed} is missing: it is not a Linux source tree (with x86 support)"
            )));
        }
    }
    for built in [".config", "include/config"] {
        if path.join(built).exists() {
            return Err(bad(format!(
                "the tree has been configured or built in place ({built} exists); run `make mrproper` in it, or pass a source tarball"
            )));
        }
    }
    Ok(())
}

/// Recognises a tar archive by compression magic or the `ustar` signature.
fn sniff_archive(path: &Path) -> Result<Option<&'static str>> {
    let mut head = Vec::with_capacity(512);
    File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| Error::io("read kernel source", path, e))?;
    if head.get(257..262) == Some(b"ustar") {
        return Ok(None);
    }
    match classify(&head) {
        FileKind::Compressed(c) if c != "lz4" => Ok(Some(c)),
        FileKind::Vmlinux | FileKind::BzImage { .. } => Err(Error::BadSource {
            path: path.to_path_buf(),
            reason: "it is a built kernel, not kernel source; register it with `firebuild kernel add --file`".into(),
        }),
        other => Err(Error::BadSource {
            path: path.to_path_buf(),
            reason: format!(
                "it is {other}; pass a kernel source tarball (.tar.xz, .tar.gz, .tar.bz2, .tar.zst, .tar) or an unpacked source tree"
            ),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MAKEFILE: &str =
        "# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\nNAME = Curry Ramen\n";

    /// A directory that passes the source-tree checks.
    pub(crate) fn fake_tree(dir: &Path, makefile: &str) {
        std::fs::create_dir_all(dir.join("arch/x86")).unwrap();
        std::fs::write(dir.join("Makefile"), makefile).unwrap();
        std::fs::write(dir.join("Kconfig"), "").unwrap();
        std::fs::write(dir.join("arch/x86/Kconfig"), "").unwrap();
    }

    #[test]
    fn parses_makefile_versions() {
        assert_eq!(makefile_version(MAKEFILE).as_deref(), Some("6.1.192"));
        let rc = "VERSION = 6\nPATCHLEVEL = 6\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n";
        assert_eq!(makefile_version(rc).as_deref(), Some("6.6.0-rc3"));
        assert_eq!(
            makefile_version("VERSION = 6\nPATCHLEVEL = x\nSUBLEVEL = 0\n"),
            None
        );
        assert_eq!(makefile_version("all:\n\ttrue\n"), None);
    }

    #[test]
    fn detects_a_tree_and_reads_its_version() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), MAKEFILE);
        let src = KernelSource::detect(dir.path()).unwrap();
        assert_eq!(src.kind, SourceKind::Tree);
        assert_eq!(src.version().unwrap(), "6.1.192");
        assert!(!src.needs().tarball);
    }

    #[test]
    fn rejects_trees_that_are_not_kernels_or_not_clean() {
        let dir = tempfile::tempdir().unwrap();
        let err = KernelSource::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Makefile is missing"), "{err}");

        fake_tree(dir.path(), MAKEFILE);
        std::fs::write(dir.path().join(".config"), "").unwrap();
        let err = KernelSource::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("make mrproper"), "{err}");
    }

    #[test]
    fn detects_tarballs_and_reads_the_version_without_unpacking() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux-6.1.192");
        fake_tree(&tree, MAKEFILE);
        std::fs::create_dir_all(tree.join("tools")).unwrap();
        std::fs::write(tree.join("tools/Makefile"), "VERSION = 9\n").unwrap();
        for (name, flag, compression) in
            [("l.tar.gz", "-czf", Some("gzip")), ("l.tar", "-cf", None)]
        {
            let tarball = dir.path().join(name);
            let ok = Command::new("tar")
                .arg(flag)
                .arg(&tarball)
                .arg("-C")
                .arg(dir.path())
                .arg("linux-6.1.192")
                .status()
                .unwrap()
                .success();
            assert!(ok);
            let src = KernelSource::detect(&tarball).unwrap();
            assert_eq!(src.kind, SourceKind::Tarball { compression });
            assert_eq!(src.version().unwrap(), "6.1.192");
            assert!(src.needs().tarball);
        }
    }

    #[test]
    fn a_tarball_without_a_kernel_makefile_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("proj")).unwrap();
        std::fs::write(dir.path().join("proj/README"), "hi").unwrap();
        let tarball = dir.path().join("p.tar.gz");
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .arg("proj")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let err = KernelSource::detect(&tarball)
            .unwrap()
            .version()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no top-level Makefile"), "{err}");
    }

    #[test]
    fn rejects_missing_paths_kernels_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = KernelSource::detect(&dir.path().join("nope.tar.xz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("linux-source-6.1"),
            "{err}"
        );

        let vmlinux = dir.path().join("vmlinux");
        std::fs::write(&vmlinux, crate::identify::tests::fake_vmlinux("6.1.1")).unwrap();
        let err = KernelSource::detect(&vmlinux).unwrap_err().to_string();
        assert!(err.contains("firebuild kernel add"), "{err}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let err = KernelSource::detect(&text).unwrap_err().to_string();
        assert!(
            err.contains("not a kernel image") && err.contains(".tar.xz"),
            "{err}"
        );
    }

    #[test]
    fn finds_the_root_of_an_unpacked_archive() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux-source-6.1");
        fake_tree(&tree, MAKEFILE);
        assert_eq!(unpacked_root(dir.path()).unwrap(), tree);
        assert_eq!(unpacked_root(&tree).unwrap(), tree);
        std::fs::create_dir(dir.path().join("other")).unwrap();
        assert!(unpacked_root(dir.path()).is_err());
    }
}
