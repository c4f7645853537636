//! What the backend stores in the run metadata (`vmm_details`): the
//! serialized [`VmProcess`] (pid, start time, API socket, jail) plus a few
//! paths for `inspect`. Later commands (`kill`, `purge`, `inspect`) run in
//! other processes and find the VM again from this alone.

use std::path::PathBuf;

use firebuild_firecracker::VmProcess;
use firebuild_vm::RunMetadata;
use serde::{Deserialize, Serialize};

use crate::reserved::ReservedDrive;

/// How Firecracker was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inside the jailer's chroot, as the jail user.
    Jailed,
    /// `--no-jailer`: as the caller, without chroot or cgroups.
    Direct,
}

/// `vmm_details` of a Firecracker VM. The [`VmProcess`] fields sit at the
/// top level, so the document also reads as a plain `VmProcess`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerDetails {
    #[serde(flatten)]
    pub process: VmProcess,
    pub mode: Mode,
    /// The Firecracker binary that runs the VM.
    pub binary: PathBuf,
    /// Firecracker's own log (host path, in the run directory).
    pub log_path: PathBuf,
    /// Firecracker's metrics file (host path, in the run directory).
    pub metrics_path: PathBuf,
    /// The drives reserved for a pod's containers, by slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_drives: Vec<ReservedDrive>,
}

impl FirecrackerDetails {
    /// Reads the details back from a VM's run metadata; `Ok(None)` when the
    /// VMM never started (no details were stored).
    pub fn from_metadata(vm: &RunMetadata) -> Result<Option<Self>, serde_json::Error> {
        if vm.vmm_details.is_null() {
            return Ok(None);
        }
        serde_json::from_value(vm.vmm_details.clone()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reads_as_a_plain_process() {
        let details = FirecrackerDetails {
            process: VmProcess {
                vm_id: "vm1".into(),
                pid: 42,
                start_time: 7,
                api_socket: "/run/vm1/firecracker.socket".into(),
                jail: None,
            },
            mode: Mode::Direct,
            binary: "/usr/bin/firecracker".into(),
            log_path: "/run/vm1/firecracker.log".into(),
            metrics_path: "/run/vm1/firecracker.metrics".into(),
            reserved_drives: vec![ReservedDrive {
                drive_id: "pod_slot_0".into(),
                guest_name: "vdc".into(),
                placeholder: "/drive-pod_slot_0.img".into(),
            }],
        };
        let value = serde_json::to_value(&details).unwrap();
        assert_eq!(value["pid"], 42);
        assert_eq!(value["mode"], "direct");
        let back: FirecrackerDetails = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, details);
        let process: VmProcess = serde_json::from_value(value).unwrap();
        assert_eq!(process, details.process);
    }
}
