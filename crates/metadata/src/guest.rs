//! The guest metadata document: what the guest init needs to configure the VM.
//!
//! It has the shape of the original firebuild's MMDS document: served by
//! Firecracker's MMDS under `latest/meta-data`, and carried on a small
//! read-only config drive under QEMU.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Top level of the MMDS document: `{"latest": {"meta-data": {...}}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsDocument {
    pub latest: MmdsLatest,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsLatest {
    #[serde(rename = "meta-data")]
    pub meta_data: GuestMetadata,
}

/// Everything the guest init configures from (`latest.meta-data`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestMetadata {
    pub vmm_id: String,
    #[serde(default)]
    pub drives: BTreeMap<String, GuestDrive>,
    /// The command to start, as a JSON array (ENTRYPOINT + CMD resolved).
    #[serde(default)]
    pub entrypoint_json: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub local_hostname: String,
    #[serde(default)]
    pub machine: GuestMachine,
    #[serde(default)]
    pub network: GuestNetwork,
    #[serde(default)]
    pub image_tag: String,
    /// SSH keys per user name.
    #[serde(default)]
    pub users: BTreeMap<String, GuestUser>,
    /// USER of the image (name or uid[:gid]); empty means root.
    #[serde(default)]
    pub user: String,
    /// WORKDIR of the image; empty means `/`.
    #[serde(default)]
    pub workdir: String,
    /// The image's STOPSIGNAL (e.g. `SIGTERM`, `15`); empty means SIGTERM.
    #[serde(default)]
    pub stop_signal: String,
    /// Seconds the init waits after the stop signal before killing the process.
    #[serde(default)]
    pub stop_timeout_seconds: u32,
    #[serde(default)]
    pub init_mode: InitMode,
    /// The health check the guest agent runs (the image's HEALTHCHECK with
    /// `run`'s overrides); `None`: no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::image::Healthcheck>,
    /// Volumes the init mounts before the entrypoint (or the image's init)
    /// starts, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<GuestVolume>,
}

/// A volume: an ext4 disk the guest mounts at an absolute path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestVolume {
    /// The guest's device node, e.g. `/dev/vdd`.
    pub device: String,
    /// The absolute mount point; created in the root if missing.
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What the guest init does once the VM is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// Run the entrypoint as a child, power off when it exits (task-style).
    #[default]
    Entrypoint,
    /// Hand over to the image's own `/sbin/init` (full-OS base images).
    Image,
    /// Start no process: the host runs every process through the agent
    /// (the containerd shim's containers); power off on the host's stop.
    Agent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestDrive {
    pub drive_id: String,
    #[serde(default)]
    pub is_read_only: String,
    #[serde(default)]
    pub is_root_device: String,
    #[serde(default)]
    pub partuuid: String,
    /// Kept for compatibility with the original; left empty so no host path
    /// leaks into the guest.
    #[serde(default)]
    pub path_on_host: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestMachine {
    #[serde(default)]
    pub cpu: String,
    #[serde(default)]
    pub cpu_template: String,
    #[serde(default)]
    pub ht_enabled: String,
    #[serde(default)]
    pub kernel_args: String,
    #[serde(default)]
    pub mem: String,
    #[serde(default, rename = "vmlinux")]
    pub vmlinux_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestNetwork {
    #[serde(default)]
    pub cni_network_name: String,
    #[serde(default)]
    pub interfaces: BTreeMap<String, GuestNetworkInterface>,
    #[serde(default)]
    pub ssh_port: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestNetworkInterface {
    #[serde(default)]
    pub host_dev_name: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub ifname: String,
    /// Address without prefix, e.g. `192.168.127.2`.
    #[serde(default)]
    pub ip: String,
    /// Address with prefix, e.g. `192.168.127.2/24`.
    #[serde(default)]
    pub ip_addr: String,
    #[serde(default)]
    pub ip_mask: String,
    #[serde(default)]
    pub ip_net: String,
    /// Comma separated name servers.
    #[serde(default)]
    pub nameservers: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestUser {
    /// Newline separated authorized_keys lines.
    #[serde(default)]
    pub ssh_keys: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmds_document_has_original_shape() {
        let doc = MmdsDocument {
            latest: MmdsLatest {
                meta_data: GuestMetadata {
                    vmm_id: "vm1".into(),
                    local_hostname: "quiet-otter".into(),
                    entrypoint_json: r#"["/bin/sh","-c","echo hi"]"#.into(),
                    ..Default::default()
                },
            },
        };
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["latest"]["meta-data"]["vmm-id"], "vm1");
        assert_eq!(v["latest"]["meta-data"]["local-hostname"], "quiet-otter");
        let back: MmdsDocument = serde_json::from_value(v).unwrap();
        assert_eq!(back, doc);
    }
}
