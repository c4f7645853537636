use std::path::PathBuf;

/// Why a Dockerfile source or a build-context file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid Dockerfile source {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },

    #[error("{path}: no such file or directory")]
    NotFound { path: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("GET {url} failed with HTTP status {status}{reason}")]
    HttpStatus {
        url: String,
        status: u16,
        reason: String,
    },

    #[error("GET {url} failed: {message}")]
    Http { url: String, message: String },

    #[error("git {args} failed for {repo}: {stderr}")]
    Git {
        repo: String,
        args: String,
        stderr: String,
    },

    #[error("git: {repo} has no branch, tag or commit named {reference:?}")]
    GitRef { repo: String, reference: String },

    #[error("{path}: the Dockerfile was given inline, so there is no build context to take local files from (give a file path, a URL or a git repository, or use --context DIR)")]
    NoContext { path: String },

    #[error("{path}: {reason}: paths must stay inside the build context")]
    Escape { path: String, reason: String },

    #[error("{path}: excluded from the build context by .dockerignore")]
    Ignored { path: String },

    #[error("{file}: invalid pattern {pattern:?}: {reason}")]
    BadIgnorePattern {
        file: String,
        pattern: String,
        reason: String,
    },

    #[error("{path}: {what} is not possible with a {context} build context")]
    Unsupported {
        path: String,
        what: String,
        context: &'static str,
    },
}

impl SourceError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SourceError::Io {
            path: path.into(),
            source,
        }
    }
}
