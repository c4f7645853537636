//! The crate's error type: every message names what failed, on which input,
//! and what to do about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::build::BuildStep;
use crate::config::ConfigMismatch;
use crate::tools::MissingTool;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while building, registering or listing kernels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A kernel ID the store cannot use.
    #[error("invalid kernel ID {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },

    /// The ID is taken.
    #[error(
        "a kernel with ID {id:?} already exists at {}: choose another ID or remove it first with `firebuild kernel rm {id}`",
        path.display()
    )]
    AlreadyExists { id: String, path: PathBuf },

    /// No kernel with this ID.
    #[error("no kernel with ID {id:?} in {}: `firebuild kernel ls` lists the stored kernels", root.display())]
    NotFound { id: String, root: PathBuf },

    /// A file offered as a kernel is not an x86_64 ELF vmlinux.
    #[error("{} is not an x86_64 ELF vmlinux: it is {what}{}", path.display(), hint.map(|h| format!("; {h}")).unwrap_or_default())]
    NotAVmlinux {
        path: PathBuf,
        what: String,
        hint: Option<&'static str>,
    },

    /// Metadata beside a kernel cannot be parsed.
    #[error("kernel metadata {} is not valid: {source}; remove it or the kernel with `firebuild kernel rm`", path.display())]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The kernel source path does not exist.
    #[error("kernel source {} does not exist: pass a kernel tarball (.tar.xz/.tar.gz) or an unpacked source tree (Debian: apt-get install linux-source-6.1 gives /usr/src/linux-source-6.1.tar.xz)", path.display())]
    SourceNotFound { path: PathBuf },

    /// The kernel source path is something else.
    #[error("kernel source {} is not usable: {reason}", path.display())]
    BadSource { path: PathBuf, reason: String },

    /// A line of a config fragment is not a Kconfig assignment.
    #[error("{}:{line}: not a kernel config line: {text:?} (expected `CONFIG_NAME=value` or `# CONFIG_NAME is not set`)", file.display())]
    ConfigSyntax {
        file: PathBuf,
        line: usize,
        text: String,
    },

    /// Options of the fragment did not survive Kconfig's dependency resolution.
    #[error("{}", ConfigNotApplied { mismatches, config: config.clone() })]
    ConfigNotApplied {
        mismatches: Vec<ConfigMismatch>,
        config: PathBuf,
    },

    /// Build tools are missing.
    #[error("{}", MissingToolsMessage(missing))]
    MissingTools { missing: Vec<MissingTool> },

    /// A build step failed; the log is kept.
    #[error("kernel build failed at step \"{step}\" ({detail}); the full log is in {}", log.display())]
    StepFailed {
        step: BuildStep,
        detail: String,
        log: PathBuf,
    },

    /// The CI kernel cache could not be prepared.
    #[error("test kernel: {0}")]
    TestKernel(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

struct ConfigNotApplied<'a> {
    mismatches: &'a [ConfigMismatch],
    config: PathBuf,
}

impl fmt::Display for ConfigNotApplied<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} kernel config option(s) did not keep the requested value in {} (a dependency is missing, the option does not exist in this kernel version, or another option forces it):",
            self.mismatches.len(),
            self.config.display()
        )?;
        for m in self.mismatches {
            writeln!(f, "  {m}")?;
        }
        write!(
            f,
            "fix the config fragment (add the missing dependencies or drop the option) and build again"
        )
    }
}

struct MissingToolsMessage<'a>(&'a [MissingTool]);

impl fmt::Display for MissingToolsMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel build tools are missing (nothing was installed):")?;
        for t in self.0 {
            writeln!(f, "  {t}")?;
        }
        let debian: Vec<&str> = dedup(self.0.iter().map(|t| t.debian));
        let fedora: Vec<&str> = dedup(self.0.iter().map(|t| t.fedora));
        writeln!(f, "install them with:")?;
        writeln!(f, "  Debian/Ubuntu: apt-get install {}", debian.join(" "))?;
        write!(f, "  Fedora:        dnf install {}", fedora.join(" "))
    }
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}
