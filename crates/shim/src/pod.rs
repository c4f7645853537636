//! A pod's further containers, inside its sandbox's VM: each one's image
//! (converted as any container's) is plugged as a read-only disk into a
//! slot of the VM (hot-plugged under QEMU, a reserved drive re-pointed
//! under Firecracker), and the agent mounts it as that container's root with
//! its writes on the VM's scratch disk. Its processes run there
//! ([`firebuild_agent_proto::ExecRequest::container`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use firebuild_agent_proto::{ContainerRootReady, Removed, Request};
use firebuild_vm::{AgentConnection, AgentEndpoint, Disk};

use crate::vm_host::VmHost;

/// Mounting waits for the guest to see the disk (ACPI hot-plug).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const REMOVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The virtio serial of slot `slot`'s disk (QEMU's hot-plugged ones).
fn serial(slot: u32) -> String {
    format!("fb-pod-{slot}")
}

/// The first slot of `0..slots` not in `taken`.
pub fn free_slot(slots: u32, taken: impl IntoIterator<Item = u32>) -> Option<u32> {
    let taken: Vec<u32> = taken.into_iter().collect();
    (0..slots).find(|s| !taken.contains(s))
}

/// Plugs `image` into `slot` of the pod's VM and has the agent mount it as
/// container `id`'s root; returns that root (a guest path). Nothing stays
/// plugged when it fails.
pub async fn attach_root(
    host: &VmHost,
    vm: &str,
    endpoint: &AgentEndpoint,
    slot: u32,
    image: PathBuf,
    id: &str,
) -> anyhow::Result<PathBuf> {
    let disk = Disk {
        id: serial(slot),
        path: image,
        read_only: true,
        in_place: true,
    };
    let guest_disk = host
        .runtime
        .attach_disk(vm, slot, &disk)
        .await
        .with_context(|| format!("plugging the root of container {id} into VM {vm}"))?;
    let (endpoint, request) = (
        endpoint.clone(),
        Request::ContainerRoot {
            id: id.to_owned(),
            disk: guest_disk,
        },
    );
    let mounted = tokio::task::spawn_blocking(move || {
        let mut conn = AgentConnection::open(&endpoint, MOUNT_TIMEOUT)?;
        conn.call::<ContainerRootReady>(request, MOUNT_TIMEOUT)
    })
    .await?;
    match mounted {
        Ok(ready) => Ok(PathBuf::from(ready.path)),
        Err(e) => {
            if let Err(e) = host.runtime.detach_disk(vm, slot).await {
                tracing::warn!("unplugging slot {slot} of VM {vm}: {e}");
            }
            Err(anyhow::anyhow!(
                "mounting the root of container {id} in VM {vm}: {e}"
            ))
        }
    }
}

/// Undoes [`attach_root`]: the agent unmounts the root (its writes go),
/// then the disk is unplugged. Failures are logged (a VM on its way out
/// takes its disks with it).
pub async fn detach_root(host: &VmHost, vm: &str, endpoint: &AgentEndpoint, slot: u32, id: &str) {
    let (endpoint, request) = (
        endpoint.clone(),
        Request::RemoveContainerRoot { id: id.to_owned() },
    );
    let removed = tokio::task::spawn_blocking(move || {
        let mut conn = AgentConnection::open(&endpoint, REMOVE_TIMEOUT)?;
        conn.call::<Removed>(request, REMOVE_TIMEOUT)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r.map_err(anyhow::Error::from));
    if let Err(e) = removed {
        tracing::warn!("removing the root of container {id}: {e}");
    }
    if let Err(e) = host.runtime.detach_disk(vm, slot).await {
        tracing::warn!("unplugging slot {slot} of VM {vm}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_lowest_first() {
        assert_eq!(free_slot(4, []), Some(0));
        assert_eq!(free_slot(4, [0, 2]), Some(1));
        assert_eq!(free_slot(2, [1, 0]), None);
        assert_eq!(free_slot(0, []), None);
    }
}
