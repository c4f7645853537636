//! `image ls|inspect|rm|pull|import|prune`.

use firebuild_store::{DirectoryStore, Tag};

use super::NotImplemented;
use crate::cli::{GlobalArgs, ImageCommand};
use crate::format;
use crate::settings::Settings;

pub fn run(global: &GlobalArgs, command: &ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Ls { json, settings } => list(&store(global, settings)?, *json),
        ImageCommand::Inspect { tag, settings } => {
            let image = store(global, settings)?.get(&tag.parse::<Tag>()?)?;
            println!("{}", serde_json::to_string_pretty(&image.metadata)?);
            Ok(())
        }
        ImageCommand::Rm { tag, settings } => {
            let tag: Tag = tag.parse()?;
            store(global, settings)?.remove(&tag)?;
            tracing::info!(%tag, "image removed");
            Ok(())
        }
        ImageCommand::Pull { .. } => Err(NotImplemented("image pull").into()),
        ImageCommand::Import { .. } => Err(NotImplemented("image import").into()),
        ImageCommand::Prune { .. } => Err(NotImplemented("image prune").into()),
    }
}

fn store(global: &GlobalArgs, args: &crate::cli::SettingsArgs) -> anyhow::Result<DirectoryStore> {
    Ok(DirectoryStore::new(
        Settings::resolve(global, args)?.rootfs_storage_root,
    ))
}

fn list(store: &DirectoryStore, json: bool) -> anyhow::Result<()> {
    let images = store.list()?;
    if json {
        for image in &images {
            let line = serde_json::json!({
                "tag": image.tag.to_string(),
                "type": image.metadata.kind.to_string(),
                "size": image.rootfs_bytes,
                "created": format::timestamp(image.metadata.created_at_utc),
                "path": image.dir,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|image| {
            vec![
                image.tag.to_string(),
                image.metadata.kind.to_string(),
                format::size(image.rootfs_bytes),
                format::timestamp(image.metadata.created_at_utc),
            ]
        })
        .collect();
    format::print_table(&["TAG", "TYPE", "SIZE", "CREATED"], &rows);
    Ok(())
}
