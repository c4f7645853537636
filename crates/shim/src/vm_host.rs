//! The firebuild side of the shim: from a container's bundle and mounts to
//! a booted VM whose agent answers, and back to nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use containerd_shim_protos::api::Mount;
use firebuild_host::Settings;
use firebuild_metadata::image::ImageName;
use firebuild_metadata::{ImageMetadata, InitMode};
use firebuild_vm::{AgentConnection, AgentEndpoint, NetworkChoice, RunSpec, Runtime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Loaded;
use crate::rootfs::{Converted, Layers, RootfsCache};
use crate::spec::{BindMount, VmShape};

/// How long a booting VM's agent may take to answer (QEMU under TCG
/// boots in seconds; a loaded CI machine is slower).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a VM may take to power off before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the shim left in a task's bundle (`firebuild-shim.json`), so a
/// `delete` after a shim crash can remove the VM and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub vm: String,
    pub config: Option<PathBuf>,
    pub rootfs: Converted,
}

pub const BUNDLE_RECORD: &str = "firebuild-shim.json";

impl BundleRecord {
    pub fn write(&self, bundle: &Path) -> anyhow::Result<()> {
        let path = bundle.join(BUNDLE_RECORD);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(bundle: &Path) -> anyhow::Result<Option<BundleRecord>> {
        let path = bundle.join(BUNDLE_RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{}: not the shim's record", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// The settings and runtime one shim's VMs use.
pub struct VmHost {
    pub loaded: Loaded,
    pub settings: Settings,
    pub runtime: Arc<Runtime>,
}

/// A VM booted for a container.
pub struct BootedVm {
    pub name: String,
    pub pid: u32,
    pub endpoint: AgentEndpoint,
    /// The connection that found the agent ready: the init process uses
    /// it (a port closed and reopened at once can be reset under load).
    pub agent: AgentConnection,
    pub rootfs: Converted,
}

impl VmHost {
    pub fn new(loaded: Loaded) -> anyhow::Result<VmHost> {
        let settings = loaded.settings()?;
        // The shim's VMs have no network or join one the caller made.
        let runtime = firebuild_host::wiring::vm_runtime(&settings, false)?
            .with_network_releaser(Arc::new(crate::pod_network::JoinedNetworks));
        Ok(VmHost {
            loaded,
            settings,
            runtime: Arc::new(runtime),
        })
    }

    /// Converts the root filesystem (blocking; off the async runtime):
    /// containerd's `mounts`, else the spec's root directory `root`.
    pub fn convert_rootfs(
        &self,
        mounts: &[Mount],
        root: &Path,
        vm: &str,
    ) -> anyhow::Result<Converted> {
        let layers = Layers::from_mounts(mounts, root)?;
        let vminit = firebuild_host::guest_init::locate()?;
        let cache = RootfsCache::open(&self.loaded.rootfs_cache(&self.settings), &vminit)?;
        cache.convert(&layers, vm)
    }

    /// Boots the VM of a container, waits for its agent and copies the
    /// bind mounts in. On failure nothing of the VM is left (the converted
    /// image is the caller's).
    pub async fn boot(
        &self,
        vm: &str,
        container_id: &str,
        args: &[String],
        shape: &VmShape,
        binds: &[BindMount],
        rootfs: Converted,
    ) -> anyhow::Result<BootedVm> {
        let config = &self.loaded.config;
        let kernel_id = shape.kernel.as_deref().or(config.vmlinux_id.as_deref());
        let (kernel_id, kernel) = firebuild_host::wiring::choose_kernel(&self.settings, kernel_id)?;
        let mut spec = RunSpec::new(rootfs.path.clone(), task_image(container_id), kernel);
        spec.kernel_id = kernel_id;
        spec.cpus = shape.cpus.or(config.default_cpus).unwrap_or(1);
        spec.mem_mib = shape.mem_mib.or(config.default_mem_mib).unwrap_or(128);
        spec.command = Some(args.to_vec());
        spec.name = Some(vm.to_owned());
        spec.hostname.clone_from(&shape.hostname);
        spec.daemonize = true;
        // Removed by `delete` only: stopping it when the process exits
        // must leave the run directory to containerd's delete.
        spec.remove_on_exit = false;
        spec.vmm = shape.vmm.unwrap_or(self.settings.vmm);
        spec.network_choice = match &shape.netns {
            Some(netns) => {
                let netns = netns.clone();
                NetworkChoice::Attached(
                    tokio::task::spawn_blocking(move || crate::pod_network::join(&netns)).await??,
                )
            }
            None => NetworkChoice::Off,
        };
        spec.init_mode = InitMode::Agent;
        spec.hotplug_slots = shape.pod_slots;
        spec.health.disabled = true;
        spec.shutdown_timeout = STOP_TIMEOUT;
        let joined = match &spec.network_choice {
            NetworkChoice::Attached(a) => Some(a.clone()),
            _ => None,
        };
        let launched = match self.runtime.prepare(spec).await {
            Ok(prepared) => self.runtime.launch(prepared).await,
            Err(e) => Err(e),
        };
        let metadata = match launched {
            Ok(metadata) => metadata,
            Err(e) => {
                // No VM to remove: the joined namespace gets its state back.
                if let Some(a) = joined {
                    let _ =
                        tokio::task::spawn_blocking(move || crate::pod_network::leave(&a)).await;
                }
                return Err(e.into());
            }
        };
        let pid = metadata.process().map_or(0, |p| p.pid as u32);
        let endpoint = match self.runtime.agent_endpoint_of(&metadata) {
            Some(endpoint) => endpoint,
            None => {
                self.remove(vm).await;
                anyhow::bail!("VM {vm} has no agent endpoint");
            }
        };
        let probe = endpoint.clone();
        let launched_at = std::time::Instant::now();
        let ready = tokio::task::spawn_blocking(move || {
            AgentConnection::open_booting(&probe, BOOT_TIMEOUT)
        })
        .await?;
        let agent = match ready {
            Ok(agent) => {
                tracing::info!(
                    vm,
                    "its agent answered {:?} after the launch",
                    launched_at.elapsed()
                );
                agent
            }
            Err(e) => {
                let run_dir = self.settings.run_cache.join(vm);
                self.remove(vm).await;
                anyhow::bail!(
                    "VM {vm} did not come up: {e} (its console log was in {})",
                    run_dir.display()
                );
            }
        };
        let (copy_to, binds) = (endpoint.clone(), binds.to_vec());
        let copied = tokio::task::spawn_blocking(move || {
            crate::binds::copy_all(&copy_to, Path::new("/"), &binds)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        if let Err(e) = copied {
            self.remove(vm).await;
            return Err(e);
        }
        Ok(BootedVm {
            name: vm.to_owned(),
            pid,
            endpoint,
            agent,
            rootfs,
        })
    }

    /// Stops and removes VM `vm`; a VM already gone is fine. Failures are
    /// logged: removal runs on paths that must go on.
    pub async fn remove(&self, vm: &str) {
        if let Err(e) = self.runtime.remove(vm, STOP_TIMEOUT).await {
            tracing::warn!("removing VM {vm}: {e}");
        }
    }
}

/// A private conversion goes with its container.
pub fn discard_rootfs(rootfs: &Converted) {
    if rootfs.private {
        if let Err(e) = std::fs::remove_file(&rootfs.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", rootfs.path.display());
            }
        }
    }
}

/// The VM name of a container: `ctr-NAMESPACE-ID` when that is a valid VM
/// name, else `ctr-` and a digest of both (ids may be 76 characters).
pub fn vm_name(namespace: &str, id: &str) -> String {
    let plain = format!("ctr-{namespace}-{id}");
    if firebuild_vm::names::name_problem(&plain).is_none() {
        return plain;
    }
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    format!("ctr-{}", &hex::encode(digest)[..24])
}

/// The metadata of a container's VM: no image of the store stands behind
/// it; the process comes from the OCI spec.
fn task_image(container_id: &str) -> ImageMetadata {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    ImageMetadata::unstored(
        ImageName {
            org: "containerd".into(),
            image: container_id.into(),
            version: "task".into(),
        },
        created,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_valid_and_distinct() {
        assert_eq!(vm_name("default", "web"), "ctr-default-web");
        let long = "a".repeat(64);
        let a = vm_name("default", &long);
        let b = vm_name("k8s.io", &long);
        assert!(firebuild_vm::names::name_problem(&a).is_none(), "{a}");
        assert_ne!(a, b);
        assert!(firebuild_vm::names::name_problem(&vm_name("x", "a:b")).is_none());
    }

    #[test]
    fn bundle_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BundleRecord::read(dir.path()).unwrap(), None);
        let record = BundleRecord {
            vm: "ctr-default-x".into(),
            config: Some("/etc/firebuild/shim.toml".into()),
            rootfs: Converted {
                path: "/cache/private-x.ext4".into(),
                private: true,
            },
        };
        record.write(dir.path()).unwrap();
        assert_eq!(BundleRecord::read(dir.path()).unwrap(), Some(record));
    }
}
