//! `pause`, `resume` and `snapshot create|ls|inspect|rm`.

use std::process::ExitCode;

use firebuild_store::Tag;
use firebuild_vm::Interrupts;

use super::require_root;
use super::vm::tokio_runtime;
use crate::cli::{GlobalArgs, SnapshotCommand, VmArgs};
use firebuild_host::wiring::vm_runtime;

pub fn pause(global: &GlobalArgs, args: &VmArgs) -> anyhow::Result<ExitCode> {
    require_root("pause")?;
    let settings = crate::settings::resolve(global, &args.settings)?;
    let vm = tokio_runtime()?.block_on(vm_runtime(&settings, false)?.pause(&args.vmm_id))?;
    tracing::info!(vm = %vm.id, "paused");
    Ok(ExitCode::SUCCESS)
}

pub fn resume(global: &GlobalArgs, args: &VmArgs) -> anyhow::Result<ExitCode> {
    require_root("resume")?;
    let settings = crate::settings::resolve(global, &args.settings)?;
    let vm = tokio_runtime()?.block_on(vm_runtime(&settings, false)?.resume(&args.vmm_id))?;
    tracing::info!(vm = %vm.id, "resumed");
    Ok(ExitCode::SUCCESS)
}

pub fn run(global: &GlobalArgs, command: &SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create {
            vmm_id,
            tag,
            stop,
            settings,
        } => {
            require_root("snapshot create")?;
            let settings = crate::settings::resolve(global, settings)?;
            let tag: Tag = tag.parse()?;
            let store = settings.snapshot_store()?;
            let runtime = vm_runtime(&settings, false)?;
            let tokio = tokio_runtime()?;
            // A VM resumed from a snapshot of this tag would lose its memory
            // file to the replaced snapshot: refused as `rm` is.
            refuse_if_used(&tokio, &runtime, &tag)?;
            let staging = store.begin(&tag)?;
            let (record, image) = tokio.block_on(runtime.snapshot(
                vmm_id,
                &tag.to_string(),
                staging.dir(),
                *stop,
                Interrupts::CtrlC,
            ))?;
            let dir = staging.publish(&record, &image)?;
            tracing::info!(vm = %vmm_id, snapshot = %tag, dir = %dir.display(), "snapshot stored");
            println!("{tag}");
        }
        SnapshotCommand::Ls { json, settings } => {
            let settings = crate::settings::resolve(global, settings)?;
            let snapshots = settings.snapshot_store()?.list()?;
            if *json || global.log_as_json {
                for s in &snapshots {
                    let row = serde_json::json!({
                        "tag": s.tag.to_string(),
                        "source": s.record.source_vm,
                        "image": s.record.image,
                        "vmm": s.record.vmm,
                        "mem_mib": s.record.mem_mib,
                        "created": s.record.created.unix_timestamp(),
                        "disk_bytes": s.disk_bytes(),
                    });
                    println!("{row}");
                }
            } else {
                let rows: Vec<Vec<String>> = snapshots
                    .iter()
                    .map(|s| {
                        vec![
                            s.tag.to_string(),
                            s.record.source_vm.clone(),
                            s.record.image.clone(),
                            s.record.vmm.to_string(),
                            format!("{} MiB", s.record.mem_mib),
                            crate::format::size(s.disk_bytes()),
                        ]
                    })
                    .collect();
                crate::format::print_table(
                    &["TAG", "SOURCE", "IMAGE", "VMM", "MEMORY", "DISK"],
                    &rows,
                );
            }
        }
        SnapshotCommand::Inspect { tag, settings } => {
            let settings = crate::settings::resolve(global, settings)?;
            let tag: Tag = tag.parse()?;
            let snapshot = settings.snapshot_store()?.get(&tag)?;
            let runtime = vm_runtime(&settings, false)?;
            let forks: Vec<String> = tokio_runtime()?
                .block_on(runtime.vms_from_snapshot(&tag.to_string()))?
                .into_iter()
                .map(|vm| vm.id)
                .collect();
            let mut shown = serde_json::to_value(&snapshot.record)?;
            shown["dir"] = snapshot.dir.display().to_string().into();
            shown["disk_bytes"] = snapshot.disk_bytes().into();
            shown["vms"] = forks.into();
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        SnapshotCommand::Rm { tags, settings } => {
            require_root("snapshot rm")?;
            let settings = crate::settings::resolve(global, settings)?;
            let store = settings.snapshot_store()?;
            let runtime = vm_runtime(&settings, false)?;
            let tokio = tokio_runtime()?;
            for tag in tags {
                let tag: Tag = tag.parse()?;
                // A broken snapshot may be removed; a missing one is an error.
                if !store.contains(&tag) {
                    store.get(&tag)?;
                }
                refuse_if_used(&tokio, &runtime, &tag)?;
                store.remove(&tag)?;
                tracing::info!(snapshot = %tag, "removed");
            }
        }
    }
    Ok(())
}

/// Refuses to touch a snapshot that VMs which have not exited run from.
fn refuse_if_used(
    tokio: &tokio::runtime::Runtime,
    runtime: &firebuild_vm::Runtime,
    tag: &Tag,
) -> anyhow::Result<()> {
    let users: Vec<String> = tokio
        .block_on(runtime.vms_from_snapshot(&tag.to_string()))?
        .into_iter()
        .map(|vm| vm.id)
        .collect();
    if !users.is_empty() {
        anyhow::bail!(
            "snapshot {tag} is in use by VM {}: kill them first (`firebuild kill --vmm-id ID`)",
            users.join(", ")
        );
    }
    Ok(())
}
