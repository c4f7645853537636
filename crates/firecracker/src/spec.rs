//! The plain description of one VM that [`crate::Client::configure_and_start`]
//! turns into Firecracker API requests, and its checks.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot_args::{check_boot_args, RECOMMENDED_BOOT_ARGS};
use crate::error::{Error, Result};
use crate::models::LogLevel;

/// The drive id of the root drive.
pub const ROOT_DRIVE_ID: &str = "rootfs";
/// The interface id of the (single) guest network interface.
pub const NET_IFACE_ID: &str = "eth0";
/// Where MMDS answers in the guest (Firecracker's default, made explicit).
pub const MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Longest VM id Firecracker and its jailer accept.
pub const MAX_VM_ID_LEN: usize = 64;
/// Longest Linux network interface name (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Everything needed to configure and boot one VM.
///
/// Paths are host paths; under the jailer, [`crate::Jail::stage`] rewrites
/// them to paths inside the jail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Firecracker instance id (also the jail id): 1–64 letters, digits, hyphens.
    pub vm_id: String,
    /// Uncompressed ELF kernel (`vmlinux`).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line without `root=` or `virtio_mmio.device=`
    /// (Firecracker adds those); see [`crate::BootArgs`].
    pub boot_args: String,
    /// The root filesystem image: the VM's own, or (read-only) a shared
    /// stored image.
    pub root_drive: PathBuf,
    pub root_read_only: bool,
    /// Further drives, attached after the root drive in this order (the
    /// guest sees them as /dev/vdb, /dev/vdc, ...).
    #[serde(default)]
    pub drives: Vec<DriveSpec>,
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    pub smt: bool,
    pub network: Option<NetworkSpec>,
    /// The MMDS document (a JSON object), served with V2 session tokens on
    /// [`MMDS_IPV4`] through the network interface. Needs `network`.
    pub mmds: Option<serde_json::Value>,
    /// Firecracker's own log file.
    pub log_path: Option<PathBuf>,
    pub log_level: LogLevel,
    /// Firecracker's metrics file.
    pub metrics_path: Option<PathBuf>,
    /// Where the guest serial console is written.
    pub console_path: Option<PathBuf>,
    pub vsock: Option<VsockSpec>,
}

/// The guest's network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Tap device name on the host, in Firecracker's network namespace.
    pub tap: String,
    /// `aa:bb:cc:dd:ee:ff`; Firecracker picks one when unset.
    pub guest_mac: Option<String>,
    pub mtu: Option<u16>,
}

/// How many virtio devices (block devices, the network interface, vsock)
/// one VM takes: x86_64 Firecracker gives each a legacy interrupt line of
/// the 19 from 5 to 23, and v1.16 takes two of them for its VMGenID and
/// VMClock devices. Beyond, `InstanceStart` fails ("Could not allocate GSI").
/// Checked against the real v1.16.1 in `tests/real.rs`.
pub const MAX_VIRTIO_DEVICES: usize = 17;

/// A drive other than the root drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    /// Letters, digits and `_` (what Firecracker's API accepts in an id).
    pub drive_id: String,
    pub path: PathBuf,
    pub read_only: bool,
    /// A volume: it outlives the VM, so the jail links this very file
    /// (never a copy) and Firecracker honours the guest's flushes
    /// (`cache_type: Writeback`), so what the guest synced survives a host
    /// crash.
    #[serde(default)]
    pub in_place: bool,
}

/// A virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSpec {
    pub guest_cid: u32,
    /// Host Unix socket Firecracker creates for host-initiated connections.
    pub uds_path: PathBuf,
}

impl VmSpec {
    /// A VM with 1 vCPU, 128 MiB, [`RECOMMENDED_BOOT_ARGS`], a writable root
    /// drive and nothing else.
    pub fn new(
        vm_id: impl Into<String>,
        kernel: impl Into<PathBuf>,
        root_drive: impl Into<PathBuf>,
    ) -> Self {
        VmSpec {
            vm_id: vm_id.into(),
            kernel: kernel.into(),
            initrd: None,
            boot_args: RECOMMENDED_BOOT_ARGS.to_string(),
            root_drive: root_drive.into(),
            root_read_only: false,
            drives: Vec::new(),
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            network: None,
            mmds: None,
            log_path: None,
            log_level: LogLevel::Info,
            metrics_path: None,
            console_path: None,
            vsock: None,
        }
    }

    /// Checks everything Firecracker would otherwise refuse halfway through
    /// configuration.
    pub fn validate(&self) -> Result<()> {
        check_vm_id(&self.vm_id)?;
        check_path("kernel", &self.kernel)?;
        if let Some(p) = &self.initrd {
            check_path("initrd", p)?;
        }
        check_path("root_drive", &self.root_drive)?;
        check_drives(&self.drives)?;
        for (field, p) in [
            ("log_path", &self.log_path),
            ("metrics_path", &self.metrics_path),
            ("console_path", &self.console_path),
        ] {
            if let Some(p) = p {
                check_path(field, p)?;
            }
        }
        check_boot_args(&self.boot_args)?;
        if !(1..=32).contains(&self.vcpu_count) {
            return Err(Error::config(
                "vcpu_count",
                format!("{} is outside Firecracker's 1..=32", self.vcpu_count),
            ));
        }
        if self.smt && self.vcpu_count != 1 && !self.vcpu_count.is_multiple_of(2) {
            return Err(Error::config(
                "vcpu_count",
                format!("{} with SMT on: must be 1 or even", self.vcpu_count),
            ));
        }
        if self.mem_size_mib == 0 {
            return Err(Error::config("mem_size_mib", "must be at least 1"));
        }
        if let Some(net) = &self.network {
            check_ifname(&net.tap)?;
            if let Some(mac) = &net.guest_mac {
                check_mac(mac)?;
            }
            if let Some(mtu) = net.mtu {
                if mtu < 68 {
                    return Err(Error::config("network.mtu", format!("{mtu} is below 68")));
                }
            }
        }
        if let Some(doc) = &self.mmds {
            if !doc.is_object() {
                return Err(Error::config(
                    "mmds",
                    "the MMDS document must be a JSON object",
                ));
            }
            if self.network.is_none() {
                return Err(Error::config(
                    "mmds",
                    "MMDS is served through a network interface: give the VM a tap (network)",
                ));
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(Error::config(
                    "vsock.guest_cid",
                    format!("{} is reserved; use 3 or more", v.guest_cid),
                ));
            }
            check_path("vsock.uds_path", &v.uds_path)?;
        }
        Ok(())
    }
}

/// Checks a VM id the way Firecracker's `validate_instance_id` does.
pub fn check_vm_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidVmId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > MAX_VM_ID_LEN {
        return bad("it is longer than 64 characters");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return bad("it contains a character other than a letter, digit or hyphen");
    }
    Ok(())
}

/// Extra drives: ids Firecracker accepts, none twice and none the root
/// drive's (a PUT with a known id replaces that drive), usable paths.
fn check_drives(drives: &[DriveSpec]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::from([ROOT_DRIVE_ID]);
    for d in drives {
        check_api_id("drives.drive_id", &d.drive_id)?;
        if !seen.insert(d.drive_id.as_str()) {
            let whose = if d.drive_id == ROOT_DRIVE_ID {
                "the root drive's id"
            } else {
                "given to two drives"
            };
            return Err(Error::config(
                "drives.drive_id",
                format!("{:?} is {whose}; give each drive its own id", d.drive_id),
            ));
        }
        check_path("drives.path", &d.path)?;
    }
    Ok(())
}

/// An id in a Firecracker API path (`/drives/{drive_id}`): Firecracker's
/// API server takes non-empty alphanumeric-or-`_` ids, no `-`. ASCII only,
/// as the id travels unescaped in the request path.
pub(crate) fn check_api_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(Error::config(
            field,
            format!("{id:?} must be non-empty ASCII letters, digits and '_' (Firecracker refuses other ids)"),
        ));
    }
    Ok(())
}

/// Firecracker's API takes paths as JSON strings.
fn check_path(field: &'static str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::config(field, "empty path"));
    }
    if path.to_str().is_none() {
        return Err(Error::config(
            field,
            format!(
                "{} is not valid UTF-8, which the Firecracker API cannot carry",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(Error::config(
            "network.tap",
            format!("{name:?} must be 1 to {MAX_IFNAME_LEN} bytes"),
        ));
    }
    if name.contains(['/', ' ', '\0']) || name == "." || name == ".." {
        return Err(Error::config(
            "network.tap",
            format!("{name:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

fn check_mac(mac: &str) -> Result<()> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(Error::config(
            "network.guest_mac",
            format!("{mac:?} is not of the form aa:bb:cc:dd:ee:ff"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::new("vm-1", "/k/vmlinux", "/r/rootfs.ext4")
    }

    #[test]
    fn default_spec_is_valid() {
        spec().validate().unwrap();
    }

    #[test]
    fn vm_ids_follow_firecracker_rules() {
        check_vm_id("abc-123-DEF").unwrap();
        check_vm_id(&"a".repeat(64)).unwrap();
        for bad in ["", "a_b", "a/b", "../x", "a b", &"a".repeat(65)] {
            let err = check_vm_id(bad).unwrap_err();
            assert!(err.to_string().contains("invalid VM id"), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(VmSpec, &str)> = vec![
            (
                VmSpec {
                    vcpu_count: 0,
                    ..spec()
                },
                "vcpu_count",
            ),
            (
                VmSpec {
                    vcpu_count: 33,
                    ..spec()
                },
                "vcpu_count",
            ),
            (
                VmSpec {
                    vcpu_count: 3,
                    smt: true,
                    ..spec()
                },
                "vcpu_count",
            ),
            (
                VmSpec {
                    mem_size_mib: 0,
                    ..spec()
                },
                "mem_size_mib",
            ),
            (
                VmSpec {
                    boot_args: "root=/dev/sda".into(),
                    ..spec()
                },
                "boot_args",
            ),
            (
                VmSpec {
                    kernel: PathBuf::new(),
                    ..spec()
                },
                "kernel",
            ),
            (
                VmSpec {
                    mmds: Some(serde_json::json!({"a": 1})),
                    ..spec()
                },
                "mmds",
            ),
            (
                VmSpec {
                    mmds: Some(serde_json::json!([1])),
                    network: Some(NetworkSpec {
                        tap: "tap0".into(),
                        guest_mac: None,
                        mtu: None,
                    }),
                    ..spec()
                },
                "mmds",
            ),
            (
                VmSpec {
                    network: Some(NetworkSpec {
                        tap: "x".repeat(16),
                        guest_mac: None,
                        mtu: None,
                    }),
                    ..spec()
                },
                "network.tap",
            ),
            (
                VmSpec {
                    network: Some(NetworkSpec {
                        tap: "tap0".into(),
                        guest_mac: Some("02:00:00:00:00".into()),
                        mtu: None,
                    }),
                    ..spec()
                },
                "network.guest_mac",
            ),
            (
                VmSpec {
                    vsock: Some(VsockSpec {
                        guest_cid: 2,
                        uds_path: "/v.sock".into(),
                    }),
                    ..spec()
                },
                "vsock.guest_cid",
            ),
        ];
        for (s, field) in cases {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(field), "expected {field} in {err}");
        }
    }

    fn with_drives(ids: &[&str]) -> VmSpec {
        VmSpec {
            drives: ids
                .iter()
                .map(|id| DriveSpec {
                    drive_id: id.to_string(),
                    path: format!("/r/{id}.ext4").into(),
                    read_only: false,
                    in_place: false,
                })
                .collect(),
            ..spec()
        }
    }

    #[test]
    fn extra_drives_have_firecracker_ids_of_their_own() {
        with_drives(&["scratch", "vol_1", "V2"]).validate().unwrap();
        for (ids, expect) in [
            (&[""][..], "must be non-empty"),
            (&["my-vol"], "letters, digits and '_'"),
            (&["a/b"], "letters, digits and '_'"),
            (&["dat\u{e9}"], "letters, digits and '_'"),
            (&["rootfs"], "the root drive's id"),
            (&["scratch", "scratch"], "given to two drives"),
        ] {
            let err = with_drives(ids).validate().unwrap_err().to_string();
            assert!(
                err.contains("drives.drive_id") && err.contains(expect),
                "{ids:?}: {err}"
            );
        }
        let mut s = with_drives(&["scratch"]);
        s.drives[0].path = PathBuf::new();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("drives.path"), "{err}");
    }

    #[test]
    fn new_has_no_extra_drives_and_old_specs_still_read() {
        assert!(spec().drives.is_empty());
        let mut json = serde_json::to_value(spec()).unwrap();
        json.as_object_mut().unwrap().remove("drives");
        let back: VmSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec());
    }

    #[test]
    fn smt_allows_one_or_even() {
        VmSpec {
            vcpu_count: 1,
            smt: true,
            ..spec()
        }
        .validate()
        .unwrap();
        VmSpec {
            vcpu_count: 4,
            smt: true,
            ..spec()
        }
        .validate()
        .unwrap();
    }
}
