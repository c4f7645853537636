//! OCI images for firebuild, without a daemon: pull from registries into a
//! content-addressed blob cache, unpack layers safely into a root filesystem
//! directory, import tarballs / OCI layouts / `docker save` archives, and push.

pub mod auth;
pub mod builder;
pub mod cache;
pub mod config;
pub mod digest;
pub mod error;
pub mod image_config;
pub mod images;
pub mod import;
pub mod manifest;
mod progress;
pub mod reference;
pub mod registry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unpack;

pub use builder::ImageBuilder;
pub use cache::BlobCache;
pub use config::RegistryConfig;
pub use digest::Digest;
pub use error::{Error, Result};
pub use image_config::{HealthConfig, ImageConfig, ImageConfigFile};
pub use images::{ImageRecord, ImageRecords, ImageSource, LayerRecord};
pub use import::{import, ImportKind};
pub use reference::{ImageRef, Platform};
pub use registry::{Registry, Resolved};
pub use unpack::{apply_layer, apply_layer_file, LayerStats, UnpackOptions};
