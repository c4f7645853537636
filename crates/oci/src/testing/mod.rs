//! Test harness (feature `testing`): a real local registry (Debian's
//! `docker-registry`) and builders for test images and hand-crafted layers.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use firebuild_oci::testing::{TestRegistry, busybox_rootfs_tar, push_image};
//! use firebuild_oci::manifest::Compression;
//! let reg = TestRegistry::start()?;
//! let cache = tempfile::tempdir()?;
//! let image = reg.reference("busybox:latest");
//! let config = firebuild_oci::RegistryConfig::default();
//! push_image(cache.path(), &config, &image, &[(busybox_rootfs_tar()?, Compression::Gzip)], |_| {}).await?;
//! # Ok(()) }
//! ```

mod layers;
mod registry;

pub use layers::{busybox_rootfs_tar, TarBuilder};
pub use registry::{write_docker_config, TestRegistry};

use std::path::Path;

use crate::builder::ImageBuilder;
use crate::config::RegistryConfig;
use crate::image_config::ImageConfig;
use crate::images::{ImageRecord, ImageSource};
use crate::manifest::Compression;
use crate::reference::{ImageRef, Platform};
use crate::registry::Registry;
use crate::BlobCache;

/// An uncompressed layer tar and how to compress it in the image.
pub type TestLayer = (Vec<u8>, Compression);

/// Builds an image for the host platform from uncompressed layer tars (each
/// compressed as given), lets `configure` fill the run config, and pushes it
/// as `target` using a blob cache under `cache_root` (credentials, if the
/// registry needs them, come from `config`). Returns the record.
pub async fn push_image(
    cache_root: &Path,
    config: &RegistryConfig,
    target: &ImageRef,
    layers: &[(Vec<u8>, Compression)],
    configure: impl FnOnce(&mut ImageConfig),
) -> anyhow::Result<ImageRecord> {
    let record = build_image(cache_root, &Platform::host(), layers, configure)?;
    let registry = Registry::new(cache_root, config.clone());
    registry.push(&record, target).await?;
    Ok(record)
}

/// Builds one image per `(platform, layers)` and pushes them with an OCI
/// index over them as `target` (a multi-platform image). Returns the index digest.
pub async fn push_multi_platform(
    cache_root: &Path,
    config: &RegistryConfig,
    target: &ImageRef,
    images: &[(Platform, Vec<TestLayer>)],
) -> anyhow::Result<crate::Digest> {
    let mut records = Vec::new();
    for (platform, layers) in images {
        records.push(build_image(cache_root, platform, layers, |_| {})?);
    }
    let registry = Registry::new(cache_root, config.clone());
    Ok(registry.push_index(&records, target).await?)
}

/// Builds (without pushing) an image in the blob cache under `cache_root`.
pub fn build_image(
    cache_root: &Path,
    platform: &Platform,
    layers: &[(Vec<u8>, Compression)],
    configure: impl FnOnce(&mut ImageConfig),
) -> anyhow::Result<ImageRecord> {
    let cache = BlobCache::new(cache_root);
    let mut b = ImageBuilder::new(&cache, platform);
    for (tar, compression) in layers {
        b.add_layer_tar(tar, *compression)?;
    }
    configure(b.config_mut());
    Ok(b.build("test/image:latest", ImageSource::Built)?)
}
