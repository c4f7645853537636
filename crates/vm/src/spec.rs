//! What the caller asks for: a [`RunSpec`] of plain values (paths, image
//! metadata, flags), so the runtime does not depend on the image store.

use crate::network::{NetworkChoice, NetworkRequest};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use firebuild_metadata::image::Healthcheck;

use firebuild_metadata::{ImageMetadata, InitMode};
use serde::{Deserialize, Serialize};

use crate::disks::{RootfsMode, DEFAULT_DISK_SIZE};
use crate::volumes::VolumeMount;

/// Which VMM to run the VM on (`--vmm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    Firecracker,
    Qemu,
    /// The first usable of Firecracker, then QEMU (each backend decides
    /// what "usable" means, see [`crate::Vmm::availability`]).
    #[default]
    Auto,
}

impl std::str::FromStr for VmmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "firecracker" => Ok(VmmChoice::Firecracker),
            "qemu" => Ok(VmmChoice::Qemu),
            "auto" => Ok(VmmChoice::Auto),
            other => Err(format!(
                "unknown VMM {other:?}; expected firecracker, qemu or auto"
            )),
        }
    }
}

/// The network the caller (the CNI layer) prepared for the VM: a tap device
/// inside a network namespace, and the guest's address. The VMM is started
/// inside `netns` and attached to `tap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Path of the network namespace (e.g. `/var/run/netns/<id>`).
    pub netns: PathBuf,
    /// The tap device inside `netns`.
    pub tap: String,
    /// The guest NIC's MAC, `aa:bb:cc:dd:ee:ff`.
    pub guest_mac: String,
    /// The guest address.
    pub ip: Ipv4Addr,
    /// Its prefix length (`24` for a /24).
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub nameservers: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The CNI network name, shown in the guest metadata.
    #[serde(default)]
    pub network_name: String,
    /// Opaque data the network layer needs to release the attachment later
    /// (CNI container id, interface name, cached result ...); stored in the
    /// run metadata and handed back to [`crate::NetworkReleaser`].
    #[serde(default)]
    pub release_data: serde_json::Value,
}

impl NetworkAttachment {
    /// Dotted netmask of the prefix, e.g. `255.255.255.0`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Ipv4Addr::from(mask)
    }

    /// The network address with prefix, e.g. `192.168.127.0/24`.
    pub fn network_cidr(&self) -> String {
        let net = u32::from(self.ip) & u32::from(self.netmask());
        format!("{}/{}", Ipv4Addr::from(net), self.prefix)
    }
}

/// Everything `run` needs, as plain values.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The stored ext4 root filesystem image; never written.
    pub rootfs: PathBuf,
    /// Shared read-only image plus scratch disk, or a private copy.
    pub rootfs_mode: RootfsMode,
    /// Size of the sparse scratch disk (overlay mode), in bytes.
    pub disk_size: u64,
    /// Volumes to attach and mount (`--volume`), resolved to their files.
    pub volumes: Vec<VolumeMount>,
    /// A build step's lower layers (ext4 disks, bottom first): the guest
    /// stacks them, not the root drive (which then only carries the init),
    /// and runs in build mode. Needs the overlay root mode.
    pub layers: Vec<PathBuf>,
    /// The stored image's metadata (entrypoint info, env, stop signal, tag).
    pub image: ImageMetadata,
    /// The uncompressed kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// The kernel's id as the user named it (`--vmlinux-id`), for display.
    pub kernel_id: String,
    pub cpus: u32,
    pub mem_mib: u32,
    /// `--env-file`s, applied in order after the image's ENV.
    pub env_files: Vec<PathBuf>,
    /// `--env` values (`KEY=value`, or `KEY` to take the host's value),
    /// applied in order after the env files.
    pub env: Vec<String>,
    /// `-- CMD...`: replaces the image's CMD.
    pub command: Option<Vec<String>>,
    /// Public key files (`--identity-file`) to authorize for `ssh_user`.
    pub identity_files: Vec<PathBuf>,
    pub ssh_user: String,
    /// Defaults to a random readable name such as `quiet-otter`.
    pub hostname: Option<String>,
    /// Becomes the VM id; defaults to a random id.
    pub name: Option<String>,
    /// Extra kernel arguments, appended last (`--kernel-args`).
    pub kernel_args: Option<String>,
    /// Return once the VM runs instead of streaming its console.
    pub daemonize: bool,
    /// Remove the VM's run directory (and network) once it has exited.
    pub remove_on_exit: bool,
    pub vmm: VmmChoice,
    /// The VM's network: none, one the runtime's [`crate::NetworkProvider`]
    /// sets up at launch, or one the caller set up.
    pub network_choice: NetworkChoice,
    /// How long a graceful stop may take before the VM is killed.
    pub shutdown_timeout: Duration,
    pub init_mode: InitMode,
    /// `--no-healthcheck`, `--health-cmd`, ... over the image's HEALTHCHECK.
    pub health: HealthOverrides,
    /// Resume this snapshot instead of booting (`run --from-snapshot`); see
    /// [`RunSpec::from_snapshot`].
    pub snapshot: Option<crate::snapshot_store::Snapshot>,
    /// Places for disks attached while the VM runs (a pod's containers,
    /// [`crate::Runtime::attach_disk`]): QEMU q35 and Firecracker.
    pub hotplug_slots: u32,
}

/// `run`'s health check flags (Docker's), over the image's HEALTHCHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthOverrides {
    /// `--no-healthcheck`: no check, whatever the image says.
    pub disabled: bool,
    /// `--health-cmd`: a shell command (`CMD-SHELL`).
    pub cmd: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

impl HealthOverrides {
    /// The check the VM runs: the image's with these overrides; `None` for
    /// no check (none anywhere, `NONE`, or `--no-healthcheck`).
    pub fn apply(&self, image: Option<&Healthcheck>) -> Option<Healthcheck> {
        if self.disabled {
            return None;
        }
        let mut h = match (&self.cmd, image) {
            (Some(cmd), base) => Healthcheck {
                test: vec!["CMD-SHELL".into(), cmd.clone()],
                ..base.cloned().unwrap_or_else(|| Healthcheck {
                    test: Vec::new(),
                    interval_ns: None,
                    timeout_ns: None,
                    start_period_ns: None,
                    start_interval_ns: None,
                    retries: None,
                })
            },
            (None, Some(base)) => base.clone(),
            (None, None) => return None,
        };
        if h.test.first().is_none_or(|t| t == "NONE") {
            return None;
        }
        let ns = |d: Duration| d.as_nanos() as u64;
        if let Some(d) = self.interval {
            h.interval_ns = Some(ns(d));
        }
        if let Some(d) = self.timeout {
            h.timeout_ns = Some(ns(d));
        }
        if let Some(d) = self.start_period {
            h.start_period_ns = Some(ns(d));
        }
        if let Some(d) = self.start_interval {
            h.start_interval_ns = Some(ns(d));
        }
        if let Some(r) = self.retries {
            h.retries = Some(r);
        }
        Some(h)
    }
}

impl RunSpec {
    /// A fork of `snapshot`: its image, kernel, size and command, as the
    /// source VM had them (a restore cannot change them).
    pub fn from_snapshot(snapshot: crate::snapshot_store::Snapshot) -> Self {
        let record = &snapshot.record;
        let mut spec = RunSpec::new(
            snapshot.file(crate::snapshot_store::ROOTFS_FILE),
            snapshot.image.clone(),
            record.kernel.clone(),
        );
        spec.kernel_id.clone_from(&record.kernel_id);
        spec.cpus = record.cpus;
        spec.mem_mib = record.mem_mib;
        spec.command = Some(record.command.clone());
        spec.rootfs_mode = record.rootfs_mode;
        spec.shutdown_timeout = Duration::from_secs(record.shutdown_timeout_secs);
        spec.vmm = match record.vmm {
            crate::vmm::VmmKind::Firecracker => VmmChoice::Firecracker,
            crate::vmm::VmmKind::Qemu => VmmChoice::Qemu,
        };
        spec.health.disabled = !record.has_healthcheck;
        // A fork joins its source's network by default.
        spec.network_choice = match &record.network {
            Some(source) => NetworkChoice::On(NetworkRequest {
                network: Some(source.network_name.clone()),
                ..Default::default()
            }),
            None => NetworkChoice::Off,
        };
        spec.snapshot = Some(snapshot);
        spec
    }

    /// A spec with the defaults of `firebuild run` (1 vCPU, 128 MiB, user
    /// root, 15 s shutdown timeout, foreground, `--vmm auto`, the image shared
    /// read-only with a 10 GiB sparse scratch disk).
    pub fn new(rootfs: PathBuf, image: ImageMetadata, kernel: PathBuf) -> Self {
        RunSpec {
            rootfs,
            rootfs_mode: RootfsMode::Overlay,
            disk_size: DEFAULT_DISK_SIZE,
            volumes: Vec::new(),
            layers: Vec::new(),
            image,
            kernel,
            kernel_id: String::new(),
            cpus: 1,
            mem_mib: 128,
            env_files: Vec::new(),
            env: Vec::new(),
            command: None,
            identity_files: Vec::new(),
            ssh_user: "root".into(),
            hostname: None,
            name: None,
            kernel_args: None,
            daemonize: false,
            remove_on_exit: false,
            vmm: VmmChoice::Auto,
            network_choice: NetworkChoice::Auto,
            shutdown_timeout: Duration::from_secs(15),
            init_mode: InitMode::Entrypoint,
            health: HealthOverrides::default(),
            snapshot: None,
            hotplug_slots: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_overrides_follow_docker() {
        let image = Healthcheck {
            test: vec!["CMD".into(), "/ok".into()],
            interval_ns: Some(30_000_000_000),
            timeout_ns: None,
            start_period_ns: None,
            start_interval_ns: None,
            retries: Some(3),
        };
        let none = HealthOverrides::default();
        assert_eq!(none.apply(Some(&image)), Some(image.clone()));
        assert_eq!(none.apply(None), None);
        let off = HealthOverrides {
            disabled: true,
            ..Default::default()
        };
        assert_eq!(off.apply(Some(&image)), None);
        let cmd = HealthOverrides {
            cmd: Some("test -f /x".into()),
            interval: Some(Duration::from_secs(1)),
            retries: Some(1),
            ..Default::default()
        };
        let h = cmd.apply(Some(&image)).unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "test -f /x"]);
        assert_eq!((h.interval_ns, h.retries), (Some(1_000_000_000), Some(1)));
        assert!(cmd.apply(None).is_some(), "--health-cmd alone adds a check");
        let mut disabled = image.clone();
        disabled.test = vec!["NONE".into()];
        assert_eq!(none.apply(Some(&disabled)), None);
        let interval_only = HealthOverrides {
            interval: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(interval_only.apply(None), None);
    }

    #[test]
    fn vmm_choice_parses() {
        assert_eq!("qemu".parse::<VmmChoice>().unwrap(), VmmChoice::Qemu);
        assert_eq!(
            "firecracker".parse::<VmmChoice>().unwrap(),
            VmmChoice::Firecracker
        );
        assert_eq!("auto".parse::<VmmChoice>().unwrap(), VmmChoice::Auto);
        assert!("kvm".parse::<VmmChoice>().unwrap_err().contains("kvm"));
    }

    #[test]
    fn netmask_and_network() {
        let mut n = NetworkAttachment {
            netns: "/run/netns/x".into(),
            tap: "tap0".into(),
            guest_mac: "02:00:00:00:00:01".into(),
            ip: "192.168.127.9".parse().unwrap(),
            prefix: 24,
            gateway: None,
            nameservers: vec![],
            mtu: None,
            network_name: String::new(),
            release_data: serde_json::Value::Null,
        };
        assert_eq!(n.netmask().to_string(), "255.255.255.0");
        assert_eq!(n.network_cidr(), "192.168.127.0/24");
        n.prefix = 0;
        assert_eq!(n.netmask().to_string(), "0.0.0.0");
        n.prefix = 30;
        assert_eq!(n.network_cidr(), "192.168.127.8/30");
    }
}
