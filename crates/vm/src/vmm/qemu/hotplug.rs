//! Disks plugged into a running QEMU VM: the file goes over QMP as an open
//! descriptor into an fd set of its own (QEMU is chrooted and cannot open
//! paths), becomes a block node, then a virtio-blk-pci device on the slot's
//! empty PCIe root port ([`super::cmdline::hotplug_port`]). The guest finds
//! the disk by its serial.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use firebuild_agent_proto::GuestDisk;
use serde_json::json;

use super::cmdline::hotplug_port;
use super::qmp::Qmp;
use crate::error::VmError;
use crate::state::RunMetadata;
use crate::vmm::Disk;

/// The fd sets of hot-plugged disks: above any the command line uses
/// (one or two per boot disk).
const FDSET_BASE: u32 = 1000;
/// How long the guest may take to release an unplugged device.
const UNPLUG_WAIT: Duration = Duration::from_secs(10);
const UNPLUG_POLL: Duration = Duration::from_millis(100);
/// virtio-blk serials are at most 20 bytes.
const MAX_SERIAL: usize = 20;

fn node(slot: u32) -> String {
    format!("hp{slot}-disk")
}

fn device(slot: u32) -> String {
    format!("hp{slot}-dev")
}

/// The hot-plug slots the VM was started with.
pub fn slots_of(vm: &RunMetadata) -> u32 {
    vm.vmm_details["hotplug_slots"]
        .as_u64()
        .map_or(0, |n| n as u32)
}

pub async fn attach(
    qmp: &mut Qmp,
    vm: &RunMetadata,
    slot: u32,
    disk: &Disk,
) -> Result<GuestDisk, VmError> {
    let fail = |reason: String| VmError::Hotplug {
        id: vm.id.clone(),
        disk: disk.id.clone(),
        reason,
    };
    let slots = slots_of(vm);
    if slot >= slots {
        return Err(fail(format!(
            "slot {slot} does not exist (the VM was started with {slots} hot-plug slots)"
        )));
    }
    if disk.id.is_empty() || disk.id.len() > MAX_SERIAL || !disk.id.is_ascii() {
        return Err(fail(format!(
            "its id must be 1 to {MAX_SERIAL} ASCII characters (the guest's serial)"
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path)
        .map_err(|e| fail(format!("opening {}: {e}", disk.path.display())))?;
    let set = FDSET_BASE + slot;
    qmp.add_fd(set, file.as_fd()).await?;
    drop(file);
    let plugged = async {
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "raw",
                "node-name": node(slot),
                "read-only": disk.read_only,
                "file": {
                    "driver": "file",
                    "filename": format!("/dev/fdset/{set}"),
                    // As the boot disks: the fd set keeps QEMU's OFD lock.
                    "locking": "off",
                },
            })),
        )
        .await?;
        qmp.execute(
            "device_add",
            Some(json!({
                "driver": "virtio-blk-pci",
                "id": device(slot),
                "drive": node(slot),
                "bus": hotplug_port(slot),
                "serial": disk.id,
            })),
        )
        .await
        .map(drop)
    }
    .await;
    if let Err(e) = plugged {
        let _ = detach(qmp, slot).await;
        return Err(fail(e.to_string()));
    }
    Ok(GuestDisk::Serial {
        serial: disk.id.clone(),
    })
}

/// Unplugs the device (the guest acknowledges through ACPI), then drops
/// its block node and fd set. Parts already gone are skipped.
pub async fn detach(qmp: &mut Qmp, slot: u32) -> Result<(), VmError> {
    let _ = qmp
        .execute("device_del", Some(json!({ "id": device(slot) })))
        .await;
    let start = Instant::now();
    loop {
        match qmp
            .execute("blockdev-del", Some(json!({ "node-name": node(slot) })))
            .await
        {
            Ok(_) => break,
            Err(e) if e.to_string().contains("Failed to find node") => break,
            // Still held by the device the guest has not released yet.
            Err(e) if start.elapsed() < UNPLUG_WAIT => {
                tracing::debug!("waiting for the guest to release slot {slot}: {e}");
                tokio::time::sleep(UNPLUG_POLL).await;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = qmp
        .execute("remove-fd", Some(json!({ "fdset-id": FDSET_BASE + slot })))
        .await;
    Ok(())
}
