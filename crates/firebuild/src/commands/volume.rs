//! `volume create|ls|inspect|rm`: the profile's volume store, with the VMs
//! (running or not yet purged) that use each volume.

use firebuild_vm::{RunMetadata, Volume};

use crate::cli::{GlobalArgs, VolumeCommand};
use crate::format;
use crate::settings::Settings;

pub fn run(global: &GlobalArgs, command: &VolumeCommand) -> anyhow::Result<()> {
    match command {
        VolumeCommand::Create {
            name,
            size,
            fs,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let volume = settings.volume_store()?.create(name, *size, *fs)?;
            tracing::info!(volume = %volume.name, size = %format::size(volume.size), path = %volume.path.display(), "volume created");
            println!("{}", volume.name);
            Ok(())
        }
        VolumeCommand::Ls { json, settings } => {
            let settings = crate::settings::resolve(global, settings)?;
            let volumes = settings.volume_store()?.list()?;
            let vms = all_vms(&settings)?;
            if *json {
                for volume in &volumes {
                    println!("{}", describe(volume, &vms));
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    let users: Vec<String> = users(v, &vms)
                        .map(|(vm, ro)| format!("{}{}", vm.id, if ro { " (ro)" } else { "" }))
                        .collect();
                    vec![
                        v.name.clone(),
                        format::size(v.size),
                        format::size(v.allocated_bytes()),
                        v.fs.to_string(),
                        format::timestamp(v.created.unix_timestamp()),
                        if users.is_empty() {
                            "-".into()
                        } else {
                            users.join(", ")
                        },
                    ]
                })
                .collect();
            format::print_table(&["VOLUME", "SIZE", "USED", "FS", "CREATED", "VMS"], &rows);
            Ok(())
        }
        VolumeCommand::Inspect { name, settings } => {
            let settings = crate::settings::resolve(global, settings)?;
            let volume = settings.volume_store()?.get(name)?;
            let vms = all_vms(&settings)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&describe(&volume, &vms))?
            );
            Ok(())
        }
        VolumeCommand::Rm { names, settings } => {
            let settings = crate::settings::resolve(global, settings)?;
            let store = settings.volume_store()?;
            let vms = all_vms(&settings)?;
            // Check them all first: remove all or none.
            let volumes = names
                .iter()
                .map(|name| {
                    let volume = store.get(name)?;
                    let users: Vec<&str> =
                        users(&volume, &vms).map(|(vm, _)| vm.id.as_str()).collect();
                    if !users.is_empty() {
                        return Err(firebuild_vm::VmError::VolumeInUse {
                            volume: volume.name.clone(),
                            vms: users.join(", "),
                        });
                    }
                    Ok(volume)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for volume in volumes {
                store.remove(&volume.name)?;
                tracing::info!(volume = %volume.name, "volume removed");
            }
            Ok(())
        }
    }
}

/// Every VM of the run cache, running or not yet purged.
fn all_vms(settings: &Settings) -> anyhow::Result<Vec<RunMetadata>> {
    let runtime = firebuild_host::wiring::vm_runtime(settings, false)?;
    Ok(super::vm::tokio_runtime()?.block_on(runtime.list())?)
}

/// The VMs that have `volume` attached, and whether read-only.
fn users<'a>(
    volume: &'a Volume,
    vms: &'a [RunMetadata],
) -> impl Iterator<Item = (&'a RunMetadata, bool)> + 'a {
    vms.iter()
        .filter_map(|vm| Some((vm, vm.volume_mount(&volume.path)?.read_only)))
}

fn describe(volume: &Volume, vms: &[RunMetadata]) -> serde_json::Value {
    let used_by: Vec<serde_json::Value> = vms
        .iter()
        .filter_map(|vm| {
            let mount = vm.volume_mount(&volume.path)?;
            Some(serde_json::json!({
                "vm": vm.id,
                "status": vm.status.to_string(),
                "guest_path": mount.guest_path,
                "read_only": mount.read_only,
            }))
        })
        .collect();
    serde_json::json!({
        "name": volume.name,
        "fs": volume.fs,
        "size": volume.size,
        "allocated_bytes": volume.allocated_bytes(),
        "created": format::timestamp(volume.created.unix_timestamp()),
        "path": volume.path,
        "used_by": used_by,
    })
}
