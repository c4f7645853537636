//! What a command needs built from the settings in force: the VM runtime
//! with both VMM backends and CNI networking, the CNI runtime, the kernel a
//! VM boots, the registry configuration.

use std::path::PathBuf;
use std::sync::Arc;

use firebuild_cni::{CniNetworks, CniPaths, CniRuntime};
use firebuild_kernel::KernelStore;
use firebuild_oci::RegistryConfig;
use firebuild_vm::{host_ids, IdPool, QemuConfig, QemuVmm, Runtime};
use firebuild_vm_firecracker::{jail_ids, FirecrackerConfig, FirecrackerVmm, JailUser};

use crate::settings::Settings;

fn jail_user(settings: &Settings) -> Option<JailUser> {
    match (settings.jailer_uid, settings.jailer_gid) {
        (None, None) => None,
        (uid, gid) => {
            let default = JailUser::host_default();
            Some(JailUser {
                uid: uid.unwrap_or(default.uid),
                gid: gid.unwrap_or(default.gid),
            })
        }
    }
}

/// QEMU's id claims live in the profile's cache directory, which both its
/// VMs and its build step VMs (`<cache-dir>/step-vms`) use.
fn qemu_ids(settings: &Settings) -> anyhow::Result<IdPool> {
    Ok(IdPool {
        range: settings
            .qemu_id_range
            .map_or(host_ids::DEFAULT_QEMU_RANGE, |(first, count)| {
                host_ids::IdRange { first, count }
            }),
        dir: Some(settings.cache()?.join("qemu-ids")),
    })
}

/// The runtime with every backend, so `ls`/`kill`/`purge` handle VMs of
/// either VMM whatever `--vmm` says now.
pub fn vm_runtime(settings: &Settings, no_jailer: bool) -> anyhow::Result<Runtime> {
    let firecracker = FirecrackerVmm::new(FirecrackerConfig {
        firecracker: settings.binary_firecracker.clone(),
        jailer: settings.binary_jailer.clone(),
        chroot_base: settings.chroot_base.clone(),
        user: jail_user(settings),
        id_range: settings
            .jailer_id_range
            .map_or(jail_ids::DEFAULT_RANGE, |(first, count)| {
                jail_ids::IdRange { first, count }
            }),
        no_jailer,
        ..Default::default()
    });
    let qemu = QemuVmm::new(QemuConfig {
        binary: settings.binary_qemu.clone(),
        accel: settings.qemu_accel,
        ids: qemu_ids(settings)?,
        ..Default::default()
    });
    Ok(Runtime::with_backends(
        settings.runs()?,
        vec![Arc::new(firecracker), Arc::new(qemu)],
    )
    .with_network_provider(Arc::new(CniNetworks(cni_runtime(settings)))))
}

/// The CNI runtime with the conf, plugin and cache directories in force.
pub fn cni_runtime(settings: &Settings) -> CniRuntime {
    CniRuntime::new(CniPaths {
        conf_dir: settings.cni_conf_dir.clone(),
        bin_dirs: settings.cni_bin_dirs.clone(),
        cache_dir: settings.cni_cache_dir.clone(),
    })
}

/// The kernel a VM boots: `explicit` (`--vmlinux-id`), else the profile's
/// default kernel, else the only registered one; returns its id and path.
pub fn choose_kernel(
    settings: &Settings,
    explicit: Option<&str>,
) -> anyhow::Result<(String, PathBuf)> {
    choose_in(
        &settings.kernel_store()?,
        explicit.or(settings.default_vmlinux_id.as_deref()),
    )
}

fn choose_in(kernels: &KernelStore, wanted: Option<&str>) -> anyhow::Result<(String, PathBuf)> {
    let id = match wanted {
        Some(id) => id.to_owned(),
        None => {
            let ids: Vec<String> = kernels.list()?.into_iter().map(|k| k.id).collect();
            match ids.as_slice() {
                [id] => id.clone(),
                [] => anyhow::bail!(
                    "no guest kernel is registered in {}: add one with `firebuild kernel add` or `kernel build`",
                    kernels.root().display()
                ),
                _ => anyhow::bail!(
                    "several kernels are registered ({}): choose one with --vmlinux-id, or set a default with `profile-create --default-vmlinux-id`",
                    ids.join(", ")
                ),
            }
        }
    };
    let path = kernels.resolve(&id)?;
    Ok((id, path))
}

/// Registry settings from the profile and flags.
pub fn registry_config(settings: &Settings) -> anyhow::Result<RegistryConfig> {
    let config = RegistryConfig {
        insecure: settings.insecure_registries.clone(),
        mirrors: settings.registry_mirrors.clone(),
        docker_config_dir: None,
    };
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_the_one_asked_for_else_the_default_else_the_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = KernelStore::new(dir.path());
        let err = choose_in(&kernels, None).unwrap_err().to_string();
        assert!(err.contains("no guest kernel is registered"), "{err}");
        std::fs::write(dir.path().join("k1"), b"kernel one").unwrap();
        assert_eq!(choose_in(&kernels, None).unwrap().0, "k1");
        std::fs::write(dir.path().join("k2"), b"kernel two").unwrap();
        let err = choose_in(&kernels, None).unwrap_err().to_string();
        assert!(
            err.contains("several kernels are registered (k1, k2)"),
            "{err}"
        );
        let (id, path) = choose_in(&kernels, Some("k2")).unwrap();
        assert_eq!((id.as_str(), path), ("k2", dir.path().join("k2")));
        assert!(choose_in(&kernels, Some("k3")).is_err());
    }
}
