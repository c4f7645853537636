//! The crate's error type: every variant says what failed, on which input,
//! and (where there is one) what to do about it.

use std::path::PathBuf;

/// Errors from pulling, pushing, caching, unpacking and importing images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
    InvalidPlatform(String),

    #[error("invalid registry mirror {0:?}: expected REGISTRY=URL, e.g. docker.io=http://127.0.0.1:5000")]
    InvalidMirror(String),

    #[error("reading registry credentials from {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },

    #[error(
        "cannot reach registry {registry} for {reference}: {reason}. Check that the registry is \
         running and reachable{hint}"
    )]
    RegistryUnreachable {
        registry: String,
        reference: String,
        reason: String,
        hint: String,
    },

    #[error(
        "registry {registry} denied access to {reference}: {reason}. Check the credentials for \
         {registry} in {config} (`auths` entry)"
    )]
    Unauthorized {
        registry: String,
        reference: String,
        reason: String,
        config: String,
    },

    #[error("{what} not found in registry {registry}: {reference}")]
    NotFound {
        registry: String,
        reference: String,
        what: String,
    },

    #[error("registry {registry} failed on {reference}: {reason}")]
    Registry {
        registry: String,
        reference: String,
        reason: String,
    },

    #[error("no image for platform {platform} in {reference}; the index has: {available}. Pick one with --platform")]
    PlatformNotFound {
        reference: String,
        platform: String,
        available: String,
    },

    #[error("unsupported manifest in {reference}: {reason}")]
    UnsupportedManifest { reference: String, reason: String },

    #[error("invalid {what} {digest}: {reason}")]
    InvalidJson {
        what: &'static str,
        digest: String,
        reason: String,
    },

    #[error(
        "blob {expected} failed verification: its content hashes to {actual}; nothing was \
         stored. The registry or a proxy served corrupt data"
    )]
    DigestMismatch { expected: String, actual: String },

    #[error("blob {digest}: expected {expected} bytes, got {actual}; nothing was stored")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("blob {digest} is not in the cache {cache}; pull the image again")]
    BlobMissing { digest: String, cache: PathBuf },

    #[error("image {reference} has not been pulled (no record under {path}); run `firebuild image pull {reference}`")]
    ImageNotPulled { reference: String, path: PathBuf },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unpacking {layer}, entry {entry:?}: {reason}")]
    Unpack {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("unpacking {layer}: {reason}")]
    Layer { layer: String, reason: String },

    #[error(
        "unpacking {layer}: the image unpacks to more than its limit of {} (at {entry}); \
         nothing was kept. If the image is trusted, raise the limit \
         (--unpacked-size-limit, on the command or in the profile)",
        shown_limit(*limit)
    )]
    TooLarge {
        layer: String,
        entry: String,
        limit: u64,
    },

    #[error("importing {path}: {reason}")]
    Import { path: PathBuf, reason: String },

    #[error("pushing {reference}: {reason}")]
    Push { reference: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the action and the path it was about.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// A size limit as a person reads it: whole MiB, or bytes below one.
fn shown_limit(limit: u64) -> String {
    if limit >= 1 << 20 {
        format!("{} MiB", limit >> 20)
    } else {
        format!("{limit} bytes")
    }
}
