//! `image push TAG REF` and `image pull REF [--tag TAG]`: stored root
//! filesystems through OCI registries.

use firebuild_builder::{ExportOptions, ImageOptions, METADATA_ANNOTATION};
use firebuild_metadata::ImageMetadata;
use firebuild_oci::{Digest, ImageRecord, ImageRef, Platform, Registry};
use firebuild_store::Tag;

use super::require_root;
use crate::format;
use crate::settings::Settings;
use firebuild_host::guest_init;
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
) -> anyhow::Result<Tag> {
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
            pulled: Some(record),
        },
    )?;
    Ok(output.tag)
}

/// `run --from`'s image: a stored tag as given; else, when `from` names a
/// registry (`host.name/…`, `host:port/…`, `localhost/…`), the image
/// pulled from it before, or pulled now, stored under [`tag_for`]'s tag.
pub fn stored_or_pulled(settings: &Settings, from: &str) -> anyhow::Result<Tag> {
    let parsed = from.parse::<Tag>();
    if let Ok(tag) = &parsed {
        if settings.image_store()?.contains(tag) {
            return Ok(tag.clone());
        }
    }
    let Some(reference) = registry_reference(from) else {
        return Ok(parsed?);
    };
    let tag = tag_for(&reference)?;
    if settings.image_store()?.contains(&tag) {
        return Ok(tag);
    }
    tracing::info!(image = %reference, %tag, "not stored here: pulling");
    pull_as_rootfs(settings, from, &Platform::host(), &tag.to_string(), None)
}

/// `from` as a registry reference, if its first component is a registry
/// host, as Docker reads it.
fn registry_reference(from: &str) -> Option<ImageRef> {
    let (first, _) = from.split_once('/')?;
    let host = first.contains('.') || first.contains(':') || first == "localhost";
    host.then(|| from.parse().ok()).flatten()
}

/// The stored tag of an image pulled by `run --from REF`: the registry as
/// the org, the repository path as the name, the tag (or the digest's
/// first 16 hex digits) as the version; `127.0.0.1:5000/apps/web:1` is
/// `127.0.0.1-5000/apps_web:1`.
pub fn tag_for(reference: &ImageRef) -> anyhow::Result<Tag> {
    let org = reference.registry().to_ascii_lowercase().replace(':', "-");
    let name = reference.repository().replace('/', "_");
    let version = match (reference.digest(), reference.tag()) {
        (Some(digest), _) => format!("sha256-{}", &digest.hex()[..16]),
        (None, Some(tag)) => tag.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    Tag::new(&org, &name, &version).map_err(|e| {
        anyhow::anyhow!("{reference} cannot be stored under a tag ({}): pull it with `image pull {reference} --tag ORG/NAME:VERSION` and run that", e.reason)
    })
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

/// The stored image `tag` as an OCI image in the blob cache.
fn export(settings: &Settings, tag: &Tag) -> anyhow::Result<firebuild_builder::Exported> {
    let store = settings.image_store()?;
    // The epoch the image was built with, unless the environment says
    // otherwise: its layers then come out the same on every push.
    let recorded = store.get(tag)?.metadata.build_config.source_date_epoch;
    let opts = ExportOptions {
        source_date_epoch: super::source_date_epoch()?.or(recorded),
    };
    Ok(firebuild_builder::export(
        &store,
        settings.cache()?,
        tag,
        &opts,
    )?)
}

/// The manifest digest `image push` of `tag` would produce.
pub fn push_digest(settings: &Settings, tag: &Tag) -> anyhow::Result<Digest> {
    let _held = firebuild_oci::BlobCache::new(settings.cache()?).hold(false)?;
    Ok(export(settings, tag)?.record.digest)
}

/// Pushes the stored image `tag` as `target`; returns the manifest digest.
pub fn push(settings: &Settings, tag: &Tag, target: &ImageRef) -> anyhow::Result<Digest> {
    // `image prune` waits: the exported blobs belong to no image record.
    let _held = firebuild_oci::BlobCache::new(settings.cache()?).hold(false)?;
    let exported = export(settings, tag)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_reference_is_told_from_a_stored_tag_and_given_a_tag_of_its_own() {
        assert!(registry_reference("org/app:1").is_none());
        assert!(registry_reference("app:1").is_none());
        let r = registry_reference("127.0.0.1:5000/apps/web:1").unwrap();
        assert_eq!(
            tag_for(&r).unwrap().to_string(),
            "127.0.0.1-5000/apps_web:1"
        );
        let r = registry_reference("ghcr.io/org/app").unwrap();
        assert_eq!(tag_for(&r).unwrap().to_string(), "ghcr.io/org_app:latest");
        let pinned = format!("localhost/app@sha256:{}", "ab".repeat(32));
        let r = registry_reference(&pinned).unwrap();
        assert_eq!(
            tag_for(&r).unwrap().to_string(),
            "localhost/app:sha256-abababababababab"
        );
    }
}
