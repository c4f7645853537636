//! `image push TAG REF` and `image pull REF [--tag TAG]`: stored root
//! filesystems through OCI registries.

use firebuild_builder::{ExportOptions, ImageOptions, METADATA_ANNOTATION};
use firebuild_metadata::ImageMetadata;
use firebuild_oci::{Digest, ImageRecord, ImageRef, Platform, Registry};
use firebuild_store::Tag;

use super::require_root;
use crate::format;
use crate::guest_init;
use crate::settings::Settings;
use firebuild_host::wiring::registry_config;

/// The most metadata an image's annotation may carry; more is not ours.
const MAX_METADATA: usize = 1 << 20;

fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    Ok(Registry::new(settings.cache()?, registry_config(settings)?).with_progress(true))
}

/// Pulls `reference` into the blob cache.
pub fn pull(
    settings: &Settings,
    reference: &str,
    platform: &Platform,
) -> anyhow::Result<ImageRecord> {
    let registry = registry(settings)?;
    let record = firebuild_oci::block_on(registry.pull(&reference.parse()?, platform))??;
    tracing::info!(
        image = %record.reference,
        digest = %record.digest,
        layers = record.layers.len(),
        size = %format::size(record.size()),
        "pulled"
    );
    Ok(record)
}

/// Pulls `reference` and stores it as the root filesystem `tag`, keeping
/// the metadata the pushing host recorded when there is one.
pub fn pull_as_rootfs(
    settings: &Settings,
    reference: &str,
    platform: &Platform,
    tag: &str,
    filesystem_size_mib: Option<u64>,
) -> anyhow::Result<()> {
    require_root("image pull --tag")?;
    tag.parse::<Tag>()?;
    let record = pull(settings, reference, platform)?;
    let pushed = pushed_metadata(settings, &record);
    // The pushing host's epoch makes the same ext4 here.
    let source_date_epoch = match pushed
        .as_ref()
        .and_then(|md| md.build_config.source_date_epoch)
    {
        Some(epoch) => Some(epoch),
        None => super::source_date_epoch()?,
    };
    let output = firebuild_builder::build_from_image(
        &settings.image_store()?,
        &ImageOptions {
            reference: reference.to_owned(),
            tag: tag.to_owned(),
            platform: Some(platform.to_string()),
            filesystem_size_mib,
            cache_dir: settings.cache()?.to_owned(),
            registry: registry_config(settings)?,
            vminit: guest_init::locate()?,
            cancel: super::build::cancel_on_signals()?,
            unpacked_limit: settings.unpacked_size_limit,
            pushed,
            source_date_epoch,
        },
    )?;
    println!("{}", output.tag);
    Ok(())
}

/// The metadata.json `image push` put in the manifest, if the image has
/// one that reads as such (anything else is ignored with a warning: the
/// image is still an ordinary image).
fn pushed_metadata(settings: &Settings, record: &ImageRecord) -> Option<ImageMetadata> {
    let manifest = firebuild_oci::BlobCache::new(settings.cache().ok()?)
        .read(&record.digest)
        .ok()?;
    let manifest: firebuild_oci::manifest::ImageManifest =
        serde_json::from_slice(&manifest).ok()?;
    let json = manifest.annotations.get(METADATA_ANNOTATION)?;
    if json.len() > MAX_METADATA {
        tracing::warn!(image = %record.reference, "ignoring a firebuild metadata annotation over 1 MiB");
        return None;
    }
    match serde_json::from_str(json) {
        Ok(md) => Some(md),
        Err(e) => {
            tracing::warn!(image = %record.reference, error = %e, "ignoring an unreadable firebuild metadata annotation");
            None
        }
    }
}

/// Pushes the stored image `tag` as `target`; returns the manifest digest.
pub fn push(settings: &Settings, tag: &Tag, target: &ImageRef) -> anyhow::Result<Digest> {
    let store = settings.image_store()?;
    // The epoch the image was built with, unless the environment says
    // otherwise: its layers then come out the same on every push.
    let recorded = store.get(tag)?.metadata.build_config.source_date_epoch;
    let opts = ExportOptions {
        source_date_epoch: super::source_date_epoch()?.or(recorded),
    };
    let exported = firebuild_builder::export(&store, settings.cache()?, tag, &opts)?;
    let registry = registry(settings)?;
    let digest = firebuild_oci::block_on(registry.push(&exported.record, target))??;
    tracing::info!(
        %tag,
        to = %target,
        %digest,
        base_layers = exported.base_layers,
        step_layers = exported.step_layers,
        from_ext4 = exported.from_ext4,
        "pushed"
    );
    Ok(digest)
}
