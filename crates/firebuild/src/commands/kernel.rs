//! `kernel build|add|ls|rm|inspect`: the kernel store.

use firebuild_kernel::KernelStore;

use crate::cli::{GlobalArgs, KernelCommand, SettingsArgs};
use crate::settings::Settings;

fn store(global: &GlobalArgs, args: &SettingsArgs) -> anyhow::Result<KernelStore> {
    let root = Settings::resolve(global, args)?.kernel_storage_root;
    std::fs::create_dir_all(&root)
        .map_err(|e| anyhow::anyhow!("creating the kernel store {}: {e}", root.display()))?;
    Ok(KernelStore::new(root))
}

pub fn run(global: &GlobalArgs, command: &KernelCommand) -> anyhow::Result<()> {
    match command {
        KernelCommand::Build {
            source,
            id,
            config,
            jobs,
            settings,
        } => {
            let store = store(global, settings)?;
            let mut options = store.build_options(id, source)?;
            options.config.clone_from(config);
            options.jobs = *jobs;
            let started = std::time::Instant::now();
            let info = store.build(id, &options, false, &mut |progress| {
                tracing::info!("{progress}")
            })?;
            tracing::info!(
                id = %id,
                version = info.entry.version.as_deref().unwrap_or("unknown"),
                seconds = started.elapsed().as_secs(),
                "kernel built"
            );
            println!("{}", info.entry.path.display());
        }
        KernelCommand::Add { file, id, settings } => {
            let info = store(global, settings)?.add_file(file, id, false)?;
            println!("{}", info.entry.path.display());
        }
        KernelCommand::Ls { json, settings } => {
            let entries = store(global, settings)?.list()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", firebuild_kernel::store::format_table(&entries));
            }
        }
        KernelCommand::Rm { id, settings } => store(global, settings)?.remove(id)?,
        KernelCommand::Inspect { id, settings } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&store(global, settings)?.inspect(id)?)?
            );
        }
    }
    Ok(())
}
