//! `image ls|inspect|rm|pull|push|import|prune` (pull and push in
//! [`super::image_transfer`]).

use firebuild_oci::{BlobCache, ImageRecords, ImageRef, ImageSource, Platform};
use firebuild_store::{DirectoryStore, Tag};

use crate::cli::{GlobalArgs, ImageCommand};
use crate::format;
use crate::settings::Settings;

pub fn run(global: &GlobalArgs, command: &ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Ls { json, settings } => {
            let settings = crate::settings::resolve(global, settings)?;
            list(
                &settings.image_store()?,
                &ImageRecords::new(settings.cache()?),
                *json,
            )
        }
        ImageCommand::Inspect {
            tag,
            push_digest,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let tag = tag.parse::<Tag>()?;
            let image = settings.image_store()?.get(&tag)?;
            let mut shown = serde_json::to_value(&image.metadata)?;
            if *push_digest {
                let digest = super::image_transfer::push_digest(&settings, &tag)?;
                shown["push-manifest-digest"] = digest.to_string().into();
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        ImageCommand::Rm {
            tag,
            force,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let store = settings.image_store()?;
            match tag.parse::<Tag>() {
                Ok(stored) if store.contains(&stored) => {
                    remove_stored(&settings, &store, &stored, *force)
                }
                _ => remove_oci(&ImageRecords::new(settings.cache()?), tag),
            }
        }
        ImageCommand::Pull {
            reference,
            platform,
            tag,
            filesystem_size_mbs,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let platform: Platform = platform.parse()?;
            match tag {
                Some(tag) => {
                    let tag = super::image_transfer::pull_as_rootfs(
                        &settings,
                        reference,
                        &platform,
                        tag,
                        *filesystem_size_mbs,
                    )?;
                    println!("{tag}");
                    Ok(())
                }
                None => {
                    let record = super::image_transfer::pull(&settings, reference, &platform)?;
                    println!("{}", record.digest);
                    Ok(())
                }
            }
        }
        ImageCommand::Push {
            tag,
            reference,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let digest =
                super::image_transfer::push(&settings, &tag.parse()?, &reference.parse()?)?;
            println!("{digest}");
            Ok(())
        }
        ImageCommand::Import {
            source,
            tag,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let (kind, record) = firebuild_oci::import(
                settings.cache()?,
                source,
                tag,
                &Platform::host(),
                &firebuild_oci::SizeLimit::new(settings.unpacked_size_limit),
            )?;
            tracing::info!(image = %record.reference, from = ?kind, "imported");
            println!("{}", record.digest);
            Ok(())
        }
        ImageCommand::Prune {
            cache_mounts,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let store = settings.image_store()?;
            let cache = settings.cache()?;
            let report = firebuild_builder::prune(&store, cache, *cache_mounts)?;
            // Blobs no pulled, imported or built image record needs.
            let records = ImageRecords::new(cache);
            let blobs = BlobCache::new(cache).prune(|| records.referenced_blobs())?;
            tracing::info!(
                layers = report.layers_removed,
                cache_mounts = report.cache_mounts_removed,
                blobs = blobs.removed,
                freed = %format::size(report.bytes_freed + blobs.bytes_freed),
                "pruned"
            );
            Ok(())
        }
    }
}

/// Removes a stored image, refused while VMs use it unless `force`.
fn remove_stored(
    settings: &Settings,
    store: &DirectoryStore,
    tag: &Tag,
    force: bool,
) -> anyhow::Result<()> {
    let image = store.get(tag)?;
    let runtime = firebuild_host::wiring::vm_runtime(settings, false)?;
    let users =
        super::vm::tokio_runtime()?.block_on(runtime.vms_using_image(&image.rootfs_path()))?;
    if !users.is_empty() {
        let names: Vec<&str> = users.iter().map(|vm| vm.id.as_str()).collect();
        if !force {
            anyhow::bail!(
                "image {tag} is in use by VM {}; stop and purge them first, or pass --force to remove only the tag (the data stays until the last of them is purged)",
                names.join(", ")
            );
        }
        tracing::warn!(%tag, vms = %names.join(", "), "removing the tag of an image in use: its data stays until these VMs are purged");
    }
    store.remove(tag)?;
    tracing::info!(%tag, "image removed");
    Ok(())
}

/// Removes a pulled or imported OCI image (every platform of it). Its
/// blobs stay until `image prune`.
fn remove_oci(records: &ImageRecords, name: &str) -> anyhow::Result<()> {
    // As `image ls` shows it: the canonical reference, or an import's name.
    let canonical = name.parse::<ImageRef>().map(|r| r.to_string()).ok();
    let matching: Vec<_> = records
        .list()?
        .into_iter()
        .filter(|r| r.reference == name || canonical.as_deref() == Some(r.reference.as_str()))
        .collect();
    if matching.is_empty() {
        anyhow::bail!(
            "no stored image or pulled/imported OCI image is named {name:?} (see `firebuild image ls`)"
        );
    }
    for record in &matching {
        records.remove(record)?;
        tracing::info!(image = %record.reference, platform = %record.platform, "image removed");
    }
    Ok(())
}

/// One row of `image ls`: a stored root filesystem or a pulled/imported OCI image.
struct Row {
    name: String,
    kind: String,
    size: u64,
    created: i64,
}

fn list(store: &DirectoryStore, records: &ImageRecords, json: bool) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = store
        .list()?
        .into_iter()
        .map(|image| Row {
            name: image.tag.to_string(),
            kind: image.metadata.kind.to_string(),
            size: image.rootfs_bytes,
            created: image.metadata.created_at_utc,
        })
        .collect();
    rows.extend(records.list()?.into_iter().map(|record| {
        Row {
            kind: match record.source {
                ImageSource::Registry { .. } => "oci (pulled)",
                ImageSource::Imported { .. } => "oci (imported)",
                ImageSource::Built => "oci (built)",
            }
            .to_owned(),
            size: record.size(),
            created: record.recorded_at_utc,
            name: record.reference,
        }
    }));
    if json {
        for row in &rows {
            let line = serde_json::json!({
                "tag": row.name,
                "type": row.kind,
                "size": row.size,
                "created": format::timestamp(row.created),
            });
            println!("{line}");
        }
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.name.clone(),
                row.kind.clone(),
                format::size(row.size),
                format::timestamp(row.created),
            ]
        })
        .collect();
    format::print_table(&["IMAGE", "TYPE", "SIZE", "CREATED"], &table);
    Ok(())
}
