//! Disks for a pod's further containers under Firecracker, which plugs no
//! devices into a running VM: the VM boots with one read-only drive per
//! slot on an empty placeholder file, and a container's image is linked
//! into the jail and the slot's drive re-pointed at it (`PATCH /drives`;
//! the guest sees the new capacity through a config-change interrupt). The
//! guest knows each slot's drive by its place (`vdX`), not by a serial:
//! Firecracker makes serials of the file's device and inode.

use std::path::{Path, PathBuf};

use firebuild_firecracker::models::PartialDrive;
use firebuild_firecracker::{self as fc, DriveSpec, MAX_VIRTIO_DEVICES};
use firebuild_vm::rundir::RunDir;
use firebuild_vm::{GuestDisk, LaunchConfig, RunMetadata, VmError};
use serde::{Deserialize, Serialize};

use crate::details::FirecrackerDetails;
use crate::vmm::start_error;

/// The empty file every reserved drive starts on, in the run directory.
const PLACEHOLDER: &str = "reserved-drive.empty";

/// One slot's drive, as stored in the run metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedDrive {
    pub drive_id: String,
    /// The guest's node name (`vdc`).
    pub guest_name: String,
    /// The placeholder as Firecracker sees it (inside the jail, or the
    /// host path without one): what the drive goes back to.
    pub placeholder: PathBuf,
}

fn drive_id(slot: u32) -> String {
    format!("pod_slot_{slot}")
}

/// The reserved drives of `launch` (after its other disks), their
/// placeholder created; refuses more devices than Firecracker gives a VM.
pub fn drives(
    launch: &LaunchConfig,
    jailed: bool,
) -> Result<Vec<(DriveSpec, ReservedDrive)>, VmError> {
    let slots = launch.hotplug_slots as usize;
    // The root drive, the other disks, the network and vsock.
    let devices = 1 + launch.disks.len() + slots + 2;
    if devices > MAX_VIRTIO_DEVICES {
        let todo = if slots > 0 {
            "lower pod-containers in shim.toml (or use QEMU)"
        } else {
            "attach fewer volumes"
        };
        return Err(start_error(
            &launch.id,
            format!(
                "the root drive, {} other disks, {slots} drives reserved for pod containers, the network and vsock make {devices} virtio devices; \
                 Firecracker gives a VM at most {MAX_VIRTIO_DEVICES}: {todo}",
                launch.disks.len()
            ),
        ));
    }
    if slots == 0 {
        return Ok(Vec::new());
    }
    let placeholder = launch.run_dir.file(PLACEHOLDER);
    RunDir::write_private(&placeholder, b"")?;
    (0..launch.hotplug_slots)
        .map(|slot| {
            let id = drive_id(slot);
            let seen_at = if jailed {
                fc::staged_drive_path(&id).map_err(|e| start_error(&launch.id, e.to_string()))?
            } else {
                placeholder.clone()
            };
            let index = launch.disks.len() + slot as usize;
            let node = crate::boot::disk_device(index);
            let guest_name = node.trim_start_matches("/dev/").to_owned();
            Ok((
                DriveSpec {
                    drive_id: id.clone(),
                    path: placeholder.clone(),
                    read_only: true,
                    in_place: false,
                },
                ReservedDrive {
                    drive_id: id,
                    guest_name,
                    placeholder: seen_at,
                },
            ))
        })
        .collect()
}

/// Points slot `slot`'s drive at `image`; says where the guest finds it.
pub async fn attach(
    details: &FirecrackerDetails,
    client: &fc::Client,
    vm: &RunMetadata,
    slot: u32,
    image: &Path,
) -> Result<GuestDisk, VmError> {
    let fail = |reason: String| VmError::Hotplug {
        id: vm.id.clone(),
        disk: image.display().to_string(),
        reason,
    };
    let drive = slot_drive(details, slot).map_err(fail)?;
    let bytes = std::fs::metadata(image)
        .map_err(|e| fail(format!("reading {}: {e}", image.display())))?
        .len();
    if bytes < 512 {
        return Err(fail(format!("{} holds no whole sector", image.display())));
    }
    let path = match &details.process.jail {
        Some(jail) => jail
            .link_replacement(&drive.drive_id, image)
            .map_err(|e| fail(format!("linking it into the jail: {e}")))?,
        None => image.to_owned(),
    };
    if let Err(e) = repoint(client, drive, &path).await {
        if let Some(jail) = &details.process.jail {
            let _ = jail.remove_replacement(&drive.drive_id);
        }
        return Err(fail(e.to_string()));
    }
    Ok(GuestDisk::Device {
        name: drive.guest_name.clone(),
        sectors: bytes >> 9,
    })
}

/// Points slot `slot`'s drive back at its placeholder (the guest has
/// unmounted the image) and drops the image's link. Idempotent.
pub async fn detach(
    details: &FirecrackerDetails,
    client: &fc::Client,
    vm: &RunMetadata,
    slot: u32,
) -> Result<(), VmError> {
    let fail = |reason: String| VmError::Hotplug {
        id: vm.id.clone(),
        disk: format!("slot {slot}"),
        reason,
    };
    let drive = slot_drive(details, slot).map_err(fail)?;
    repoint(client, drive, &drive.placeholder)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if let Some(jail) = &details.process.jail {
        jail.remove_replacement(&drive.drive_id)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

fn slot_drive(details: &FirecrackerDetails, slot: u32) -> Result<&ReservedDrive, String> {
    details.reserved_drives.get(slot as usize).ok_or_else(|| {
        format!(
            "slot {slot} does not exist (the VM was started with {} reserved drives)",
            details.reserved_drives.len()
        )
    })
}

async fn repoint(client: &fc::Client, drive: &ReservedDrive, path: &Path) -> Result<(), fc::Error> {
    client
        .patch_drive(&PartialDrive {
            drive_id: drive.drive_id.clone(),
            path_on_host: Some(path.to_owned()),
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_are_firecracker_drive_ids() {
        for slot in [0, 7, 31] {
            let id = drive_id(slot);
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{id}"
            );
        }
    }
}
