//! Finds the tools a kernel build needs before it starts, and names the
//! packages that provide the missing ones. Nothing is installed.

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A tool or header the build needs and could not find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingTool {
    /// What is missing (a command or a header file).
    pub what: &'static str,
    /// What the build uses it for.
    pub purpose: &'static str,
    /// Debian/Ubuntu package providing it.
    pub debian: &'static str,
    /// Fedora package providing it.
    pub fedora: &'static str,
}

impl fmt::Display for MissingTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): Debian/Ubuntu package {}, Fedora package {}",
            self.what, self.purpose, self.debian, self.fedora
        )
    }
}

enum Probe {
    /// An executable on `PATH`.
    Command(&'static str),
    /// A header under one of the system include directories.
    Header(&'static str),
}

struct Requirement {
    probe: Probe,
    what: &'static str,
    purpose: &'static str,
    debian: &'static str,
    fedora: &'static str,
}

const fn cmd(
    name: &'static str,
    purpose: &'static str,
    debian: &'static str,
    fedora: &'static str,
) -> Requirement {
    Requirement {
        probe: Probe::Command(name),
        what: name,
        purpose,
        debian,
        fedora,
    }
}

const fn header(
    file: &'static str,
    what: &'static str,
    purpose: &'static str,
    debian: &'static str,
    fedora: &'static str,
) -> Requirement {
    Requirement {
        probe: Probe::Header(file),
        what,
        purpose,
        debian,
        fedora,
    }
}

const ALWAYS: &[Requirement] = &[
    cmd("make", "drives the build", "make", "make"),
    cmd("gcc", "C compiler", "gcc", "gcc"),
    cmd("ld", "linker", "binutils", "binutils"),
    cmd("flex", "Kconfig lexer", "flex", "flex"),
    cmd("bison", "Kconfig parser", "bison", "bison"),
    cmd("bc", "computes kernel constants", "bc", "bc"),
    cmd("perl", "build scripts", "perl", "perl"),
    header(
        "stdio.h",
        "C library headers",
        "host tools",
        "libc6-dev",
        "glibc-devel",
    ),
    header(
        "gelf.h",
        "libelf headers",
        "objtool (ORC unwinder)",
        "libelf-dev",
        "elfutils-libelf-devel",
    ),
    header(
        "openssl/opensslv.h",
        "OpenSSL headers",
        "certificate tools",
        "libssl-dev",
        "openssl-devel",
    ),
];

const TAR: Requirement = cmd("tar", "unpacks the source tarball", "tar", "tar");

/// Which decompressor a tarball needs, by its compression name.
fn decompressor(compression: &str) -> Option<Requirement> {
    match compression {
        "xz" => Some(cmd("xz", "decompresses .tar.xz", "xz-utils", "xz")),
        "gzip" => Some(cmd("gzip", "decompresses .tar.gz", "gzip", "gzip")),
        "bzip2" => Some(cmd("bzip2", "decompresses .tar.bz2", "bzip2", "bzip2")),
        "zstd" => Some(cmd("zstd", "decompresses .tar.zst", "zstd", "zstd")),
        _ => None,
    }
}

const INCLUDE_DIRS: &[&str] = &[
    "/usr/include",
    "/usr/local/include",
    "/usr/include/x86_64-linux-gnu",
];

/// What the build will need besides the always-needed tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs<'a> {
    /// The source is a tarball with this compression (`None`: plain tar),
    /// or `None` for an unpacked tree when `tarball` is false.
    pub compression: Option<&'a str>,
    /// The source is a tarball that must be unpacked.
    pub tarball: bool,
}

/// Lists what is missing, looking at `PATH` and the system include dirs.
pub fn missing(needs: Needs<'_>) -> Vec<MissingTool> {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    let include: Vec<PathBuf> = INCLUDE_DIRS.iter().map(PathBuf::from).collect();
    missing_in(needs, &dirs, &include)
}

/// Like [`missing`], with explicit search directories (for tests).
pub fn missing_in(
    needs: Needs<'_>,
    path_dirs: &[PathBuf],
    include_dirs: &[PathBuf],
) -> Vec<MissingTool> {
    let extra: Vec<Requirement> = needs
        .tarball
        .then_some(TAR)
        .into_iter()
        .chain(needs.compression.and_then(decompressor))
        .collect();
    ALWAYS
        .iter()
        .chain(extra.iter())
        .filter(|r| match r.probe {
            Probe::Command(name) => !path_dirs.iter().any(|d| is_executable(&d.join(name))),
            Probe::Header(file) => !include_dirs.iter().any(|d| d.join(file).is_file()),
        })
        .map(|r| MissingTool {
            what: r.what,
            purpose: r.purpose,
            debian: r.debian,
            fedora: r.fedora,
        })
        .collect()
}

/// Fails with the list of missing tools and their packages, if any.
pub fn check(needs: Needs<'_>) -> Result<()> {
    let missing = missing(needs);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingTools { missing })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn empty_search_paths_name_every_tool_and_package() {
        let needs = Needs {
            compression: Some("xz"),
            tarball: true,
        };
        let missing = missing_in(needs, &[], &[]);
        let names: Vec<_> = missing.iter().map(|m| m.what).collect();
        assert!(
            names.contains(&"gcc") && names.contains(&"flex") && names.contains(&"xz"),
            "{names:?}"
        );
        assert!(names.contains(&"libelf headers") && names.contains(&"tar"));

        let msg = Error::MissingTools { missing }.to_string();
        assert!(msg.contains("apt-get install make gcc binutils flex bison bc perl libc6-dev libelf-dev libssl-dev tar xz-utils"), "{msg}");
        assert!(
            msg.contains("dnf install") && msg.contains("elfutils-libelf-devel"),
            "{msg}"
        );
        assert!(msg.contains("nothing was installed"), "{msg}");
    }

    #[test]
    fn finds_executables_and_headers_where_told() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let inc = dir.path().join("include");
        std::fs::create_dir_all(inc.join("openssl")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["make", "gcc", "ld", "flex", "bison", "bc", "perl"] {
            let p = bin.join(tool);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Not executable: still missing.
        std::fs::write(bin.join("tar"), "").unwrap();
        for h in ["stdio.h", "gelf.h", "openssl/opensslv.h"] {
            std::fs::write(inc.join(h), "").unwrap();
        }
        let tree = missing_in(
            Needs::default(),
            std::slice::from_ref(&bin),
            std::slice::from_ref(&inc),
        );
        assert!(tree.is_empty(), "{tree:?}");
        let tarball = missing_in(
            Needs {
                compression: Some("gzip"),
                tarball: true,
            },
            &[bin],
            &[inc],
        );
        let names: Vec<_> = tarball.iter().map(|m| m.what).collect();
        assert_eq!(names, ["tar", "gzip"]);
    }

    #[test]
    fn this_machine_has_the_build_tools() {
        // The crate's own integration test builds a kernel here.
        let missing = missing(Needs {
            compression: Some("xz"),
            tarball: true,
        });
        assert!(
            missing.is_empty(),
            "{}",
            Error::MissingTools {
                missing: missing.clone()
            }
        );
    }
}
