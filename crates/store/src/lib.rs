//! The image store: where tagged root filesystems live on disk.
//!
//! Layout (the original firebuild's directory provider):
//! `<rootfs-storage-root>/<org>/<image>/<version>/{rootfs, metadata.json}`,
//! with `_` as the org of images that have none (`alpine:3.12` lives at
//! `_/alpine/3.12`).

mod directory;
mod error;
mod tag;

pub use directory::{DirectoryStore, Staging, StoredImage, METADATA_FILE, ROOTFS_FILE};
pub use error::StoreError;
pub use tag::{Tag, TagError, NO_ORG};
