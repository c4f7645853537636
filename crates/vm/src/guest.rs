//! What the guest gets: the guest metadata document (served by MMDS or a
//! config drive) and the kernel command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_metadata::boot::GUEST_INIT_PATH;
use firebuild_metadata::guest::{
    GuestDrive, GuestMachine, GuestNetwork, GuestNetworkInterface, GuestUser, GuestVolume,
    MmdsLatest,
};
use firebuild_metadata::image::Healthcheck;
use firebuild_metadata::{GuestMetadata, ImageMetadata, InitMode, MmdsDocument};

use crate::error::VmError;
use crate::spec::NetworkAttachment;

/// x86's COMMAND_LINE_SIZE, NUL included.
const MAX_CMDLINE: usize = 2047;

/// The kernel command line, in the parts the runtime and the backend own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// Console, reboot/panic behaviour and the guest init.
    pub common: Vec<String>,
    /// `ip=` for the network, then the user's `--kernel-args`; always last
    /// so the user can override anything before.
    pub tail: Vec<String>,
}

impl BootArgs {
    /// Builds the runtime's part of the command line.
    pub fn new(
        network: Option<&NetworkAttachment>,
        hostname: &str,
        user_args: Option<&str>,
    ) -> Result<Self, VmError> {
        let common = [
            "console=ttyS0",
            "reboot=k",
            "panic=1",
            // The console streams to the user: keep the kernel's boot chatter
            // out of it (warnings still show; `--kernel-args loglevel=7`
            // brings the rest back).
            "quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("init={GUEST_INIT_PATH}")])
        .collect();
        let mut tail = Vec::new();
        if let Some(net) = network {
            tail.push(ip_arg(net, hostname));
        }
        if let Some(user) = user_args {
            if user.contains(['\n', '\r', '\0']) {
                return Err(VmError::KernelArgs {
                    args: user.to_owned(),
                    reason: "contains a newline or NUL".into(),
                });
            }
            tail.extend(user.split_ascii_whitespace().map(str::to_owned));
        }
        Ok(BootArgs { common, tail })
    }

    /// The full command line with the backend's arguments (`root=`,
    /// metadata location ...) between the common part and the tail.
    pub fn render(&self, backend_args: &[&str]) -> Result<String, VmError> {
        let line = self
            .common
            .iter()
            .map(String::as_str)
            .chain(backend_args.iter().copied())
            .chain(self.tail.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        if line.len() > MAX_CMDLINE {
            return Err(VmError::KernelArgs {
                args: line.clone(),
                reason: format!(
                    "the kernel command line is {} bytes, at most {MAX_CMDLINE}",
                    line.len()
                ),
            });
        }
        Ok(line)
    }
}

/// The kernel's `ip=` argument:
/// `ip=<client>::<gateway>:<netmask>:<hostname>:eth0:off[:<dns0>[:<dns1>]]`.
pub fn ip_arg(net: &NetworkAttachment, hostname: &str) -> String {
    let gateway = net.gateway.map(|g| g.to_string()).unwrap_or_default();
    // The kernel keeps at most 64 bytes of host name.
    let host = if hostname.len() <= 63 { hostname } else { "" };
    let mut arg = format!(
        "ip={}::{}:{}:{}:eth0:off",
        net.ip,
        gateway,
        net.netmask(),
        host
    );
    for dns in net.nameservers.iter().take(2) {
        arg.push(':');
        arg.push_str(&dns.to_string());
    }
    arg
}

/// Reads `--identity-file`s: public keys only, one or more per file.
pub fn read_identity_files(paths: &[PathBuf]) -> Result<String, VmError> {
    let mut keys = String::new();
    for path in paths {
        let text = read_identity_file(path)?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            keys.push_str(line);
            keys.push('\n');
        }
    }
    Ok(keys)
}

fn read_identity_file(path: &Path) -> Result<String, VmError> {
    let fail = |reason: String| VmError::IdentityFile {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("is not a text file".into()))?;
    if text.contains("PRIVATE KEY") {
        return Err(fail(
            "is a private key; pass the public key (the .pub file)".into(),
        ));
    }
    let mut any = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let looks_like_key = line.split_ascii_whitespace().any(|t| {
            ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
                .iter()
                .any(|p| t.starts_with(p))
        });
        if !looks_like_key {
            return Err(fail(format!(
                "line {} is not an SSH public key (expected e.g. `ssh-ed25519 AAAA... comment`)",
                i + 1
            )));
        }
        any = true;
    }
    if !any {
        return Err(fail("holds no public key".into()));
    }
    Ok(text)
}

/// Checks `--ssh-user`: a plain user name.
pub fn validate_ssh_user(user: &str) -> Result<(), VmError> {
    let bad = user.is_empty()
        || user.len() > 32
        || user.starts_with('-')
        || user
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    if bad {
        return Err(VmError::SshUser {
            user: user.to_owned(),
            reason: "use 1 to 32 letters, digits, '_', '-', '.'".into(),
        });
    }
    Ok(())
}

/// The guest's grace period for the stop signal: two thirds of the host's
/// shutdown timeout, so the guest can still power off cleanly before the
/// host gives up and kills the VMM.
pub fn guest_stop_timeout(shutdown_timeout: Duration) -> u32 {
    let secs = shutdown_timeout.as_secs().saturating_mul(2) / 3;
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

/// Inputs of the guest metadata document.
pub struct GuestInputs<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub image: &'a ImageMetadata,
    pub command: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub ssh_user: &'a str,
    pub ssh_keys: &'a str,
    pub cpus: u32,
    pub mem_mib: u32,
    pub kernel_id: &'a str,
    pub kernel_args: &'a str,
    pub network: Option<&'a NetworkAttachment>,
    pub shutdown_timeout: Duration,
    pub init_mode: InitMode,
    /// The health check the agent runs.
    pub healthcheck: Option<&'a Healthcheck>,
    /// The volumes the init mounts.
    pub volumes: &'a [GuestVolume],
}

/// Builds the guest metadata document (original MMDS shape).
pub fn guest_document(inputs: &GuestInputs<'_>) -> Result<MmdsDocument, VmError> {
    let info = &inputs.image.entrypoint_info;
    let root_drive = GuestDrive {
        drive_id: "1".into(),
        is_read_only: "false".into(),
        is_root_device: "true".into(),
        partuuid: String::new(),
        path_on_host: String::new(),
    };
    let mut network = GuestNetwork {
        ssh_port: "22".into(),
        ..Default::default()
    };
    if let Some(net) = inputs.network {
        network.cni_network_name = net.network_name.clone();
        network.interfaces.insert(
            net.guest_mac.clone(),
            GuestNetworkInterface {
                host_dev_name: net.tap.clone(),
                gateway: net.gateway.map(|g| g.to_string()).unwrap_or_default(),
                ifname: "eth0".into(),
                ip: net.ip.to_string(),
                ip_addr: format!("{}/{}", net.ip, net.prefix),
                ip_mask: net.netmask().to_string(),
                ip_net: net.network_cidr(),
                nameservers: net
                    .nameservers
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                mtu: net.mtu,
            },
        );
    }
    let mut users = BTreeMap::new();
    if !inputs.ssh_keys.is_empty() {
        users.insert(
            inputs.ssh_user.to_owned(),
            GuestUser {
                ssh_keys: inputs.ssh_keys.to_owned(),
            },
        );
    }
    let meta = GuestMetadata {
        vmm_id: inputs.id.to_owned(),
        drives: [("1".to_owned(), root_drive)].into_iter().collect(),
        entrypoint_json: serde_json::to_string(inputs.command).map_err(VmError::GuestMetadata)?,
        env: inputs.env.clone(),
        local_hostname: inputs.hostname.to_owned(),
        machine: GuestMachine {
            cpu: inputs.cpus.to_string(),
            cpu_template: String::new(),
            ht_enabled: "false".into(),
            kernel_args: inputs.kernel_args.to_owned(),
            mem: inputs.mem_mib.to_string(),
            vmlinux_id: inputs.kernel_id.to_owned(),
        },
        network,
        image_tag: inputs.image.tag.clone(),
        users,
        user: info.user.clone(),
        workdir: info.workdir.clone(),
        stop_signal: inputs.image.stop_signal.clone().unwrap_or_default(),
        stop_timeout_seconds: guest_stop_timeout(inputs.shutdown_timeout),
        init_mode: inputs.init_mode,
        healthcheck: inputs.healthcheck.cloned(),
        volumes: inputs.volumes.to_vec(),
    };
    Ok(MmdsDocument {
        latest: MmdsLatest { meta_data: meta },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn image() -> ImageMetadata {
        let mut image =
            crate::testing::image_metadata("org", "app", "1", &["/bin/app"], &["serve"]);
        image.entrypoint_info.user = "app".into();
        image.entrypoint_info.workdir = "/srv".into();
        image.stop_signal = Some("SIGQUIT".into());
        image
    }

    pub(crate) fn network() -> NetworkAttachment {
        NetworkAttachment {
            netns: "/run/netns/vm1".into(),
            tap: "tap0".into(),
            guest_mac: "02:fb:00:00:00:02".into(),
            ip: "192.168.127.2".parse().unwrap(),
            prefix: 24,
            gateway: Some("192.168.127.1".parse().unwrap()),
            nameservers: vec!["1.1.1.1".parse().unwrap(), "8.8.8.8".parse().unwrap()],
            mtu: Some(1500),
            network_name: "firebuild0".into(),
            release_data: serde_json::Value::Null,
        }
    }

    #[test]
    fn boot_args_order_and_ip() {
        let net = network();
        let args = BootArgs::new(Some(&net), "quiet-otter", Some("loglevel=7  foo=bar")).unwrap();
        let line = args
            .render(&["root=/dev/vda", "rw", "firebuild.metadata=/dev/vdb"])
            .unwrap();
        assert_eq!(
            line,
            "console=ttyS0 reboot=k panic=1 quiet init=/.firebuild/init root=/dev/vda rw \
             firebuild.metadata=/dev/vdb \
             ip=192.168.127.2::192.168.127.1:255.255.255.0:quiet-otter:eth0:off:1.1.1.1:8.8.8.8 \
             loglevel=7 foo=bar"
        );
        let plain = BootArgs::new(None, "h", None).unwrap().render(&[]).unwrap();
        assert!(!plain.contains("ip="));
    }

    #[test]
    fn boot_args_reject_bad_input() {
        assert!(BootArgs::new(None, "h", Some("a\nb")).is_err());
        let long = "x".repeat(3000);
        let args = BootArgs::new(None, "h", Some(&long)).unwrap();
        assert!(matches!(args.render(&[]), Err(VmError::KernelArgs { .. })));
    }

    #[test]
    fn guest_document_fields() {
        let img = image();
        let net = network();
        let env: BTreeMap<_, _> = [("A".to_owned(), "1".to_owned())].into();
        let command = vec!["/bin/app".to_owned(), "serve".to_owned()];
        let doc = guest_document(&GuestInputs {
            id: "vm1",
            hostname: "quiet-otter",
            image: &img,
            command: &command,
            env: &env,
            ssh_user: "root",
            ssh_keys: "ssh-ed25519 AAAA x\n",
            cpus: 2,
            mem_mib: 256,
            kernel_id: "k1",
            kernel_args: "console=ttyS0",
            network: Some(&net),
            shutdown_timeout: Duration::from_secs(15),
            init_mode: InitMode::Entrypoint,
            healthcheck: None,
            volumes: &[],
        })
        .unwrap();
        let m = &doc.latest.meta_data;
        assert_eq!(m.entrypoint_json, r#"["/bin/app","serve"]"#);
        assert_eq!(m.user, "app");
        assert_eq!(m.workdir, "/srv");
        assert_eq!(m.stop_signal, "SIGQUIT");
        assert_eq!(m.stop_timeout_seconds, 10);
        assert_eq!(m.users["root"].ssh_keys, "ssh-ed25519 AAAA x\n");
        let iface = &m.network.interfaces["02:fb:00:00:00:02"];
        assert_eq!(iface.ip_addr, "192.168.127.2/24");
        assert_eq!(iface.ip_net, "192.168.127.0/24");
        assert_eq!(iface.nameservers, "1.1.1.1,8.8.8.8");
        assert_eq!(iface.host_dev_name, "tap0");
        assert_eq!(m.machine.mem, "256");
        // The config drive round-trips.
        let bytes = firebuild_metadata::boot::config_drive::encode(&doc).unwrap();
        assert_eq!(
            firebuild_metadata::boot::config_drive::decode(&bytes).unwrap(),
            doc
        );
    }

    #[test]
    fn identity_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("id.pub");
        std::fs::write(&good, "ssh-ed25519 AAAAC3Nz me@host\n\n").unwrap();
        let private = dir.path().join("id");
        std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n").unwrap();
        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "hello world\n").unwrap();
        assert_eq!(
            read_identity_files(std::slice::from_ref(&good)).unwrap(),
            "ssh-ed25519 AAAAC3Nz me@host\n"
        );
        let err = read_identity_files(&[private]).unwrap_err().to_string();
        assert!(err.contains("private key"), "{err}");
        let err = read_identity_files(&[junk]).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(read_identity_files(&[dir.path().join("missing")]).is_err());
    }

    #[test]
    fn ssh_user_and_stop_timeout() {
        validate_ssh_user("alpine").unwrap();
        for bad in ["", "a b", "a:b", "-x", "a/b"] {
            assert!(validate_ssh_user(bad).is_err(), "{bad}");
        }
        assert_eq!(guest_stop_timeout(Duration::from_secs(0)), 1);
        assert_eq!(guest_stop_timeout(Duration::from_secs(3)), 2);
        assert_eq!(guest_stop_timeout(Duration::from_secs(30)), 20);
    }
}
