//! OCI images for firebuild, without a daemon: pull from registries into a
//! content-addressed blob cache, unpack layers safely into a root filesystem
//! directory, import tarballs / OCI layouts / `docker save` archives, and push.
//!
//! Everything lives under one cache root chosen by the caller:
//! `<cache-root>/blobs/sha256/<hex>` (verified blobs, shared by all images)
//! and `<cache-root>/images/<registry>/<repository>/<tag-or-digest>/<platform>.json`
//! (one [`ImageRecord`] per pulled or imported image; imports use the
//! registry directory `_local`).
//!
//! ```no_run
//! use firebuild_oci::{block_on, ImageRef, Platform, Registry, RegistryConfig, UnpackOptions};
//! # fn main() -> Result<(), firebuild_oci::Error> {
//! let mut config = RegistryConfig::default();
//! config.insecure.push("registry.lan:5000".into());
//! config.add_mirror("docker.io=http://127.0.0.1:5000")?;
//! let registry = Registry::new("/var/lib/firebuild/cache".as_ref(), config).with_progress(true);
//! let image: ImageRef = "alpine:3.20".parse()?;
//! let record = block_on(registry.pull(&image, &Platform::host()))??;
//! record.unpack(registry.cache(), "/tmp/rootfs".as_ref(), &UnpackOptions::default())?;
//! println!("{:?}", record.config.config.entrypoint_info());
//! # Ok(()) }
//! ```

pub mod artifact;
pub mod auth;
mod blob_sources;
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

pub use artifact::{ArtifactFile, PulledArtifact};
pub use builder::ImageBuilder;
pub use cache::{BlobCache, BlobPrune};
pub use config::RegistryConfig;
pub use digest::Digest;
pub use error::{Error, Result};
pub use image_config::{HealthConfig, ImageConfig, ImageConfigFile};
pub use images::{ImageRecord, ImageRecords, ImageSource, LayerRecord};
pub use import::{import, ImportKind};
pub use reference::{ImageRef, Platform};
pub use registry::{Registry, Resolved};
pub use unpack::{
    apply_layer, apply_layer_file, LayerStats, SizeLimit, UnpackOptions, DEFAULT_UNPACKED_LIMIT,
};

/// Runs one of this crate's async operations to completion from synchronous
/// code on a small multi-threaded Tokio runtime. Do not call it from inside a
/// Tokio runtime (Tokio panics on nested `block_on`).
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::io("starting the async runtime", "tokio"))?;
    Ok(rt.block_on(future))
}
