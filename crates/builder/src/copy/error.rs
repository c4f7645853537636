//! Why a COPY or ADD failed. The engine puts the instruction (`COPY`,
//! `ADD`) and the step's location in front.

use super::writer::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("invalid --chmod={0}: expected an octal mode such as 0755")]
    Chmod(String),

    #[error("--chown={spec}: {reason}")]
    Chown { spec: String, reason: String },

    /// A source that could not be found, listed or read.
    #[error("{path}: {reason}")]
    Source { path: String, reason: String },

    #[error("{pattern}: no source files were specified (the pattern matches nothing)")]
    NoMatch { pattern: String },

    #[error(
        "with more than one source file, the destination must be a directory and end with a /"
    )]
    SeveralSourcesNeedADirectory,

    /// A local archive ADD extracts, unreadable.
    #[error("archive {path}: {reason}")]
    Archive { path: String, reason: String },

    /// An archive's entry the extractor refused or could not write.
    #[error(transparent)]
    Extract(#[from] firebuild_oci::Error),

    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A [`CopyError::Source`] for source `path`.
pub(crate) fn source_error(path: &str, reason: impl std::fmt::Display) -> CopyError {
    CopyError::Source {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}
