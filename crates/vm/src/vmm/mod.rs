//! The VMM layer: one small trait the runtime drives, one implementation per
//! VMM. QEMU lives in [`qemu`]; a Firecracker implementation wraps the
//! `firebuild-firecracker` crate (API socket, jailer, MMDS) behind the same
//! trait, so the runtime does not change when it is added.
//!
//! The contract between runtime and backend:
//! - the runtime prepares the run directory (the VM's disks, see
//!   [`crate::disks`]; console log path, run metadata) and the guest
//!   metadata document;
//! - the backend starts the VMM *detached* (no firebuild process stays
//!   resident), writes the serial console into [`RunDir::console_log`],
//!   serves the guest metadata (config drive or MMDS) and returns the VMM
//!   process identity;
//! - stop, liveness, description and clean-up work from the stored
//!   [`RunMetadata`] alone, because `kill`, `ls` and `purge` run in later,
//!   separate processes.

pub mod qemu;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
pub use firebuild_agent_proto::GuestDisk;
use firebuild_metadata::MmdsDocument;
use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::rundir::RunDir;
use crate::spec::NetworkAttachment;
use crate::state::RunMetadata;

/// The VMMs firebuild knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Firecracker,
    Qemu,
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmmKind::Firecracker => "firecracker",
            VmmKind::Qemu => "qemu",
        })
    }
}

/// Whether a backend can run VMs on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Usable,
    Unusable { reason: String },
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub id: String,
    pub run_dir: RunDir,
    pub kernel: PathBuf,
    /// The complete kernel command line (the backend's
    /// [`Vmm::kernel_args`] already included).
    pub kernel_args: String,
    pub cpus: u32,
    pub mem_mib: u32,
    /// The root drive (`/dev/vda`): the stored image read-only, or the
    /// VM's private copy.
    pub root: Disk,
    /// Further drives, in guest order after the root drive (and after the
    /// config drive under QEMU): the scratch disk, volumes.
    pub disks: Vec<Disk>,
    /// The guest metadata: a config drive under QEMU, MMDS under Firecracker.
    pub guest: MmdsDocument,
    /// When set, the VMM runs inside `netns` and attaches to its tap.
    pub network: Option<NetworkAttachment>,
    /// Places for disks attached while the VM runs ([`Vmm::attach_disk`]):
    /// empty PCIe root ports under QEMU, drives reserved at boot under
    /// Firecracker.
    pub hotplug_slots: u32,
}

/// One block device of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Unique in the VM (`rootfs`, `scratch`, a volume's name); Firecracker's
    /// drive id, QEMU's drive id.
    pub id: String,
    pub path: PathBuf,
    /// Attached read-only: the guest cannot write the file through it.
    pub read_only: bool,
    /// A volume: it outlives the VM, so the VMM must open this very file
    /// (a copy would lose its writes) and nothing may copy it aside.
    pub in_place: bool,
}

/// The first line `binary --version` prints: what a snapshot records of
/// its VMM, and what a restore must find again.
pub async fn binary_version(kind: VmmKind, binary: &Path) -> Result<String, VmError> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|e| VmError::VmmUnavailable {
            kind,
            reason: format!("running {} --version: {e}", binary.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// The device state in a snapshot directory.
pub const SNAPSHOT_STATE_FILE: &str = "state";
/// The guest memory in a snapshot directory (absent when the backend kept
/// it in the state file).
pub const SNAPSHOT_MEMORY_FILE: &str = "memory";

/// A stored snapshot to start a VM from.
#[derive(Debug, Clone, Copy)]
pub struct RestoreFrom<'a> {
    pub dir: &'a Path,
    /// What [`Vmm::snapshot`] returned.
    pub details: &'a serde_json::Value,
    /// The source VM's guest MAC, if it had a network.
    pub source_mac: Option<&'a str>,
}

/// What a backend reports once the VMM runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedVm {
    /// The VMM's pid.
    pub pid: i32,
    /// Its start time; `None` if it was already gone when looked at.
    pub start_time: Option<u64>,
    /// Backend details stored in the run metadata (`vmm_details`).
    pub details: serde_json::Value,
}

/// A VMM backend.
#[async_trait]
pub trait Vmm: Send + Sync {
    /// Which VMM this is (recorded in the run metadata).
    fn kind(&self) -> VmmKind;

    /// Whether this backend can run `kernel` here (binaries present, KVM
    /// usable ...). `--vmm auto` takes the first usable backend.
    async fn availability(&self, kernel: &Path, run_cache: &Path) -> Availability;

    /// The backend's part of the kernel command line (root device, where
    /// the guest finds its metadata); `root_read_only` when the root drive
    /// is attached read-only.
    fn kernel_args(&self, root_read_only: bool) -> Vec<String>;

    /// Whether a VM of this VMM needs a network (Firecracker serves the
    /// guest metadata over MMDS).
    fn needs_network(&self) -> bool {
        false
    }

    /// The guest's device node for [`LaunchConfig::disks`]`[index]`.
    fn disk_device(&self, index: usize) -> String;

    /// Checks, before anything is created, what the backend will need in
    /// the run directory (e.g. socket path lengths).
    fn preflight(&self, _run_dir: &RunDir) -> Result<(), VmError> {
        Ok(())
    }

    /// Starts the VMM detached from the caller and returns once it runs.
    /// On error nothing of the VMM is left running.
    async fn start(&self, launch: &LaunchConfig) -> Result<StartedVm, VmError>;

    /// Asks the guest to shut down (Ctrl-Alt-Del: the guest init applies
    /// the image's STOPSIGNAL). Returns at once; the caller waits.
    async fn graceful_stop(&self, vm: &RunMetadata) -> Result<(), VmError>;

    /// Ends the VMM now (after a clean VMM quit where possible, else SIGKILL).
    async fn force_stop(&self, vm: &RunMetadata) -> Result<(), VmError>;

    /// Whether the VMM process of `vm` still runs (pid plus start time).
    fn is_running(&self, vm: &RunMetadata) -> bool {
        vm.process().is_some_and(|p| p.is_alive())
    }

    /// Where the VM's guest agent is reached.
    fn agent_endpoint(&self, vm: &RunMetadata) -> Option<crate::agent::AgentEndpoint>;

    /// Backend details for `inspect`.
    fn describe(&self, vm: &RunMetadata) -> serde_json::Value {
        vm.vmm_details.clone()
    }

    /// The VMM's version (`snapshot` records it; a restore needs the same).
    async fn version(&self) -> Result<String, VmError>;

    /// Stops the VM's vCPUs; its memory and devices stay as they are.
    async fn pause(&self, vm: &RunMetadata) -> Result<(), VmError>;

    /// Lets a paused VM's vCPUs run again.
    async fn resume(&self, vm: &RunMetadata) -> Result<(), VmError>;

    /// Writes the paused VM's device state ([`SNAPSHOT_STATE_FILE`]) and,
    /// where the backend keeps it apart, its memory
    /// ([`SNAPSHOT_MEMORY_FILE`]) into `dir`; the VM stays paused. Returns
    /// what [`Vmm::restore`] needs to know of how it was taken.
    async fn snapshot(&self, vm: &RunMetadata, dir: &Path) -> Result<serde_json::Value, VmError>;

    /// Starts a VMM from the snapshot in `from.dir` instead of booting, with
    /// `launch`'s disks, sockets and network; the VM is left paused. On
    /// error nothing of the VMM is left running.
    async fn restore(
        &self,
        launch: &LaunchConfig,
        from: &RestoreFrom<'_>,
    ) -> Result<StartedVm, VmError>;

    /// Plugs `disk` into hot-plug slot `slot` of the running VM (see
    /// [`LaunchConfig::hotplug_slots`]) and says where the guest finds it.
    async fn attach_disk(
        &self,
        vm: &RunMetadata,
        slot: u32,
        disk: &Disk,
    ) -> Result<GuestDisk, VmError> {
        let _ = slot;
        Err(VmError::Hotplug {
            id: vm.id.clone(),
            disk: disk.id.clone(),
            reason: format!("{} VMs take no disks while they run; use QEMU", self.kind()),
        })
    }

    /// Unplugs the disk in `slot` (the guest must have let go of it).
    /// Idempotent.
    async fn detach_disk(&self, vm: &RunMetadata, slot: u32) -> Result<(), VmError> {
        let _ = (vm, slot);
        Ok(())
    }

    /// Removes what the backend made outside the run directory (jail
    /// directories, cgroups) once the VM no longer runs. Idempotent.
    async fn cleanup(&self, _vm: &RunMetadata) -> Result<(), VmError> {
        Ok(())
    }
}
