//! The settings a profile stores and a command line may override, as the
//! CLI's flags (other front ends fill the same struct).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
pub use firebuild_vm::{AccelPolicy, VmmChoice};
use serde::{Deserialize, Serialize};

/// How builds isolate RUN steps (`--isolation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Sandbox,
    Microvm,
}

/// Settings a profile stores. On any command, a flag given here overrides
/// the selected profile's value for that run.
#[derive(Debug, Clone, Default, Args)]
#[command(
    next_help_heading = "Profile settings (given on the command line, they override the profile's values)"
)]
pub struct SettingsArgs {
    /// Firecracker binary.
    #[arg(long, value_name = "PATH")]
    pub binary_firecracker: Option<PathBuf>,
    /// Firecracker jailer binary.
    #[arg(long, value_name = "PATH")]
    pub binary_jailer: Option<PathBuf>,
    /// QEMU binary (qemu-system-x86_64).
    #[arg(long, value_name = "PATH")]
    pub binary_qemu: Option<PathBuf>,
    /// Jailer chroot base directory.
    #[arg(long, value_name = "DIR")]
    pub chroot_base: Option<PathBuf>,
    /// Directory holding one run directory per microVM.
    #[arg(long, value_name = "DIR")]
    pub run_cache: Option<PathBuf>,
    /// Cache directory for OCI blobs, build steps and fetched sources.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Storage provider (only `directory`).
    #[arg(long, value_name = "NAME")]
    pub storage_provider: Option<String>,
    /// Storage provider property, repeatable: rootfs-storage-root=DIR, kernel-storage-root=DIR.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub storage_provider_property_string: Vec<(String, String)>,
    /// VMM to run microVMs with: auto (Firecracker where its binary and a
    /// working /dev/kvm exist, else QEMU), firecracker or qemu.
    #[arg(long, value_name = "auto|firecracker|qemu")]
    pub vmm: Option<VmmChoice>,
    /// QEMU accelerator: auto (KVM when a probe boot of the kernel works
    /// under it, else TCG), kvm or tcg (software emulation, works everywhere).
    #[arg(long, value_name = "auto|kvm|tcg")]
    pub qemu_accel: Option<AccelPolicy>,
    /// The most one image's layers may unpack to (bytes, or with a k, m or
    /// g suffix; default 64g): a pulled, imported or FROM base image past
    /// it is refused before it fills the disk.
    #[arg(long, value_name = "SIZE", value_parser = firebuild_builder::sandbox::limits::parse_memory)]
    pub unpacked_size_limit: Option<u64>,
    /// Where builds run RUN steps: sandbox (a hardened namespace sandbox on
    /// this host, the default) or microvm (a microVM per step).
    #[arg(long, value_name = "sandbox|microvm")]
    pub isolation: Option<Isolation>,
    /// Kernel that `run` and microVM builds use without --vmlinux-id.
    #[arg(long, value_name = "ID")]
    pub default_vmlinux_id: Option<String>,
    /// One user id every jailed Firecracker runs as (default: an id of its
    /// own per VM, from --jailer-id-range).
    #[arg(long, value_name = "UID")]
    pub jailer_uid: Option<u32>,
    /// Group id with --jailer-uid.
    #[arg(long, value_name = "GID")]
    pub jailer_gid: Option<u32>,
    /// Where per-VM jail uids/gids come from (default 2000000000:65536).
    #[arg(long, value_name = "FIRST:COUNT", value_parser = parse_id_range)]
    pub jailer_id_range: Option<(u32, u32)>,
    /// Where the unprivileged uids/gids QEMU processes run as come from, one
    /// per process (default 2000065536:65536).
    #[arg(long, value_name = "FIRST:COUNT", value_parser = parse_id_range)]
    pub qemu_id_range: Option<(u32, u32)>,
    /// Registry reached over plain HTTP, repeatable (127.0.0.0/8 and ::1 always are).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Mirror for a registry, repeatable: docker.io=http://127.0.0.1:5000.
    #[arg(long, value_name = "REGISTRY=URL", value_parser = parse_key_value)]
    pub registry_mirror: Vec<(String, String)>,
    /// CNI network configuration directory.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory, repeatable.
    #[arg(long, value_name = "DIR")]
    pub cni_bin_dir: Vec<PathBuf>,
    /// CNI result cache directory.
    #[arg(long, value_name = "DIR")]
    pub cni_cache_dir: Option<PathBuf>,
}

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `FIRST:COUNT`, a non-empty range of non-root ids that fits in 32 bits.
pub fn parse_id_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not an id range: use FIRST:COUNT, e.g. 2000000000:65536");
    let (first, count) = s.split_once(':').ok_or_else(bad)?;
    let (first, count): (u32, u32) = (
        first.parse().map_err(|_| bad())?,
        count.parse().map_err(|_| bad())?,
    );
    if first == 0 || count == 0 || first.checked_add(count).is_none() {
        return Err(bad());
    }
    Ok((first, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_id_ranges_are_checked() {
        assert_eq!(parse_id_range("30000:8"), Ok((30000, 8)));
        for bad in ["", "1", "0:5", "5:0", "4294967295:2", "a:b"] {
            assert!(parse_id_range(bad).is_err(), "{bad:?}");
        }
    }
}
