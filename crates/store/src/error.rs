use std::io;
use std::path::PathBuf;

use crate::tag::TagError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Tag(#[from] TagError),

    #[error("no image tagged {tag} in {root}: list stored images with `firebuild image ls`")]
    NotFound { tag: String, root: PathBuf },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("metadata of {path} is not valid JSON ({source}); remove the image with `firebuild image rm` and build it again")]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("staged image in {path} is incomplete: {missing} is missing")]
    Incomplete {
        path: PathBuf,
        missing: &'static str,
    },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}
