//! The build engine's errors: each says what failed, on which input, and
//! what to do about it.

use std::io;
use std::path::PathBuf;

/// Where in the Dockerfile a step came from, for error messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepLocation {
    /// Dockerfile name as shown to the user.
    pub file: String,
    pub line: usize,
    /// The instruction as written.
    pub instruction: String,
}

impl std::fmt::Display for StepLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.instruction)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{at}: {message}")]
    Step { at: StepLocation, message: String },

    #[error(
        "{at}: the command exited with status {code}{note}\n  command: {command}\n  last output lines:\n{tail}"
    )]
    RunFailed {
        at: Box<StepLocation>,
        command: String,
        code: i32,
        /// Empty, or a line (with its newline) saying which build limit the
        /// step ran into.
        note: String,
        tail: String,
    },

    #[error("sandbox: {0}")]
    Sandbox(String),

    #[error("the build was interrupted; nothing was stored")]
    Interrupted,

    #[error("{0}")]
    Dockerfile(String),

    #[error("base image {reference}: {message}")]
    BaseImage { reference: String, message: String },

    #[error("build context: {0}")]
    Context(String),

    #[error("ext4 image {path}: {message}")]
    Ext4 { path: PathBuf, message: String },

    #[error("exporting {tag} as an OCI image: {message}")]
    Export { tag: String, message: String },

    #[error("build cache {path}: {message}")]
    Cache { path: PathBuf, message: String },

    #[error(transparent)]
    Store(#[from] firebuild_store::StoreError),

    #[error(transparent)]
    Tag(#[from] firebuild_store::TagError),

    #[error("firebuild build must run as root (it uses namespaces, mounts and overlayfs); run it with sudo")]
    NotRoot,

    #[error("no usable subordinate id range for user {user:?} in {} ({reason}): the RUN sandbox maps its root to an unprivileged range of host ids. Add a line `{user}:START:65536` with an unused START (for example 2147483648) to both /etc/subuid and /etc/subgid, or run scripts/install-deps.sh, which adds one", file.display())]
    SubordinateIds {
        file: PathBuf,
        user: String,
        reason: String,
    },

    #[error(
        "{tool} is not installed: {why}; install the {package} package (apt-get install {package})"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
        why: &'static str,
    },

    #[error("the guest init binary {path} is missing: {reason}; build it with scripts/build-vminit.sh or point $FIREBUILD_VMINIT at it")]
    MissingInit { path: PathBuf, reason: String },
}

impl BuildError {
    /// An `Io` error constructor for `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| BuildError::Io {
            action,
            path,
            source,
        }
    }

    /// The same, for rustix errors.
    pub(crate) fn errno(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(rustix::io::Errno) -> Self {
        let path = path.into();
        move |e| BuildError::Io {
            action,
            path,
            source: e.into(),
        }
    }

    pub(crate) fn step(at: &StepLocation, message: impl Into<String>) -> Self {
        BuildError::Step {
            at: at.clone(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;
