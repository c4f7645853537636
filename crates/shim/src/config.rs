//! The shim's configuration: which firebuild profile its VMs use, and the
//! defaults a container's spec does not set.
//!
//! Found, first match wins: the `ConfigPath` of the runtime options
//! containerd hands to `Create`; `$FIREBUILD_SHIM_CONFIG` (containerd's
//! environment, which shims inherit); `/etc/firebuild/shim.toml`; else the
//! built-in defaults (the embedded default profile).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use firebuild_host::{Settings, SettingsArgs};
use firebuild_vm::VmmChoice;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/firebuild/shim.toml";
pub const ENV_PATH: &str = "FIREBUILD_SHIM_CONFIG";

/// `shim.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShimConfig {
    /// A profile in `profile-conf-dir` (kernel, VMM, id ranges, run
    /// cache); none: the embedded default profile.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub profile_conf_dir: Option<PathBuf>,
    /// The kernel VMs boot; none: the profile's default kernel.
    #[serde(default)]
    pub vmlinux_id: Option<String>,
    /// `firecracker`, `qemu` or `auto`; none: the profile's.
    #[serde(default)]
    pub vmm: Option<VmmChoice>,
    /// vCPUs and memory of a VM whose spec sets no CPU or memory limit.
    #[serde(default)]
    pub default_cpus: Option<u32>,
    #[serde(default)]
    pub default_mem_mib: Option<u32>,
    /// Where converted root filesystems are kept; none: `shim-rootfs`
    /// under the profile's cache directory.
    #[serde(default)]
    pub rootfs_cache: Option<PathBuf>,
    /// How many further containers a pod's VM can hold at once (each
    /// takes a hot-plug slot); none: [`DEFAULT_POD_CONTAINERS`].
    #[serde(default)]
    pub pod_containers: Option<u32>,
}

/// Enough for a pod's app containers and sidecars; init containers give
/// their slot back when they are removed.
pub const DEFAULT_POD_CONTAINERS: u32 = 8;
/// PCIe root ports are numbered by a byte (chassis).
pub const MAX_POD_CONTAINERS: u32 = 32;

/// The configuration in force, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: ShimConfig,
    pub source: Option<PathBuf>,
}

impl Loaded {
    /// Reads the configuration: `explicit` (the runtime options'
    /// `ConfigPath`) must exist; the others are used when present.
    pub fn find(explicit: Option<&Path>) -> anyhow::Result<Loaded> {
        let env = std::env::var_os(ENV_PATH).map(PathBuf::from);
        let path = match (explicit, env) {
            (Some(path), _) => Some(path.to_owned()),
            (None, Some(path)) => Some(path),
            (None, None) => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
        };
        let config = match &path {
            Some(path) => ShimConfig::read(path)?,
            None => ShimConfig::default(),
        };
        Ok(Loaded {
            config,
            source: path,
        })
    }

    /// The firebuild settings the VMs run with.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let c = &self.config;
        let conf_dir = c
            .profile_conf_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(firebuild_host::profile::DEFAULT_PROFILE_CONF_DIR));
        let args = SettingsArgs {
            vmm: c.vmm,
            ..Default::default()
        };
        Settings::resolve(c.profile.as_deref(), &conf_dir, &args).with_context(|| {
            format!(
                "the shim's profile{}",
                self.source
                    .as_ref()
                    .map(|p| format!(" (from {})", p.display()))
                    .unwrap_or_default()
            )
        })
    }

    pub fn rootfs_cache(&self, settings: &Settings) -> PathBuf {
        self.config
            .rootfs_cache
            .clone()
            .unwrap_or_else(|| settings.cache_dir.join("shim-rootfs"))
    }
}

impl ShimConfig {
    pub fn read(path: &Path) -> anyhow::Result<ShimConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the shim configuration {}", path.display()))?;
        let config: ShimConfig = toml::from_str(&text).with_context(|| {
            format!(
                "{}: not a valid shim configuration (keys: profile, profile-conf-dir, vmlinux-id, vmm, default-cpus, default-mem-mib, rootfs-cache, pod-containers)",
                path.display()
            )
        })?;
        if let Some(n) = config.pod_containers {
            anyhow::ensure!(
                n <= MAX_POD_CONTAINERS,
                "{}: pod-containers = {n}: at most {MAX_POD_CONTAINERS}",
                path.display()
            );
        }
        Ok(config)
    }

    /// Hot-plug slots of a pod's VM.
    pub fn pod_slots(&self) -> u32 {
        self.pod_containers.unwrap_or(DEFAULT_POD_CONTAINERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.toml");
        std::fs::write(
            &path,
            "profile = \"ci\"\nvmm = \"qemu\"\ndefault-mem-mib = 256\n",
        )
        .unwrap();
        let c = ShimConfig::read(&path).unwrap();
        assert_eq!(c.profile.as_deref(), Some("ci"));
        assert_eq!(c.vmm, Some(VmmChoice::Qemu));
        assert_eq!(c.default_mem_mib, Some(256));
        assert_eq!(c.pod_slots(), DEFAULT_POD_CONTAINERS);
        std::fs::write(&path, "pod-containers = 99\n").unwrap();
        let err = format!("{:#}", ShimConfig::read(&path).unwrap_err());
        assert!(err.contains("pod-containers = 99"), "{err}");
        std::fs::write(&path, "profil = \"ci\"\n").unwrap();
        let err = format!("{:#}", ShimConfig::read(&path).unwrap_err());
        assert!(err.contains("shim.toml") && err.contains("profil"), "{err}");
    }

    #[test]
    fn an_explicit_path_must_exist() {
        let err = Loaded::find(Some(Path::new("/nonexistent/shim.toml"))).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/shim.toml"));
    }
}
