//! The calls the VM runtime makes: give a VM its network before the VMM
//! starts, check it, and take it away on kill/purge (also after a crash).
//!
//! Per VM: a namespace `/run/netns/firebuild-<vm_id>`, the chain's veth in it
//! as `eth0`, and a tap `tap0` next to it wired with tc redirects. The VMM
//! runs inside that namespace (jailer `--netns`, or QEMU started there via
//! [`crate::netns::command_in_netns`]) and opens `tap0`; the guest uses the
//! veth's MAC and the CNI address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use firebuild_metadata::guest::{GuestNetwork, GuestNetworkInterface};
use serde_json::{Map, Value};

use crate::cache::{CacheEntry, FirebuildAttachment};
use crate::config::NetworkConfigList;
use crate::error::{validate_name, CniError, Result};
use crate::ipnet::IpNet;
use crate::network::{ensure_managed_network, is_managed};
use crate::ports::{port_mappings_arg, PortMapping};
use crate::result::{CniResult, Dns, Route};
use crate::runtime::{entry_runtime_conf, CniRuntime, RuntimeConf};
use crate::tap::{self, TapOwner};
use crate::{netlink, netns};

/// Prefix of the namespaces we create, so purge can recognise them.
pub const NETNS_PREFIX: &str = "firebuild-";
/// Interface name of the veth inside the VM's namespace.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Name of the tap inside the VM's namespace.
pub const DEFAULT_TAP: &str = "tap0";

/// The namespace name of a VM.
pub fn vm_netns_name(vm_id: &str) -> String {
    format!("{NETNS_PREFIX}{vm_id}")
}

/// What the runtime asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetworkRequest {
    pub vm_id: String,
    /// CNI network name; `default` is created on first use.
    pub network: String,
    pub ifname: String,
    pub tap_name: String,
    /// A requested address (`--ip-address`), passed as `CNI_ARGS=IP=...`.
    pub ip: Option<IpAddr>,
    /// Published ports (`--port`), passed to `portmap`.
    pub ports: Vec<PortMapping>,
    /// Owner of the tap, for a VMM that drops privileges (jailer uid/gid).
    pub tap_owner: Option<TapOwner>,
}

impl VmNetworkRequest {
    pub fn new(vm_id: impl Into<String>, network: impl Into<String>) -> Self {
        Self {
            vm_id: vm_id.into(),
            network: network.into(),
            ifname: DEFAULT_IFNAME.into(),
            tap_name: DEFAULT_TAP.into(),
            ip: None,
            ports: Vec::new(),
            tap_owner: None,
        }
    }
}

/// What the VMM and the guest need: where to run, which tap, and the guest's
/// MAC and IP configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VmNetwork {
    pub vm_id: String,
    pub network: String,
    pub netns_name: String,
    /// Run the VMM in here (jailer `--netns`; QEMU via `command_in_netns`).
    pub netns_path: PathBuf,
    /// Tap for the VMM (Firecracker `host_dev_name`, QEMU `ifname=`).
    pub tap_name: String,
    /// The veth in the namespace the tap is wired to.
    pub ifname: String,
    /// MAC the guest must use (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    pub mtu: u32,
    /// Guest address with prefix, e.g. `192.168.127.2/24`.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub ports: Vec<PortMapping>,
    pub result: CniResult,
}

impl VmNetwork {
    /// The kernel `ip=` argument for a static guest address
    /// (`ip=<addr>::<gw>:<mask>:<hostname>:<dev>:off[:<dns0>[:<dns1>]]`);
    /// `None` for IPv6, which `ip=` cannot express.
    pub fn kernel_ip_arg(&self, hostname: &str, guest_dev: &str) -> Option<String> {
        let IpAddr::V4(addr) = self.address.addr else {
            return None;
        };
        let gw = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        let mut arg = format!(
            "ip={addr}::{gw}:{}:{hostname}:{guest_dev}:off",
            self.address.netmask()
        );
        let v4_dns: Vec<&String> = self
            .dns
            .nameservers
            .iter()
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .take(2)
            .collect();
        for ns in v4_dns {
            arg.push(':');
            arg.push_str(ns);
        }
        Some(arg)
    }

    /// The interface entry of the guest metadata document.
    pub fn guest_interface(&self, guest_dev: &str) -> GuestNetworkInterface {
        GuestNetworkInterface {
            host_dev_name: self.tap_name.clone(),
            gateway: self.gateway.map(|g| g.to_string()).unwrap_or_default(),
            ifname: guest_dev.to_string(),
            ip: self.address.addr.to_string(),
            ip_addr: self.address.to_string(),
            ip_mask: self.address.netmask().to_string(),
            ip_net: self.address.trunc().to_string(),
            nameservers: self.dns.nameservers.join(","),
            mtu: Some(self.mtu).filter(|m| *m > 0),
        }
    }

    /// The `network` section of the guest metadata (interfaces keyed by MAC).
    pub fn guest_network(&self, guest_dev: &str) -> GuestNetwork {
        let mut interfaces = BTreeMap::new();
        interfaces.insert(self.mac.clone(), self.guest_interface(guest_dev));
        GuestNetwork {
            cni_network_name: self.network.clone(),
            interfaces,
            ssh_port: String::new(),
        }
    }
}

/// What a teardown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// `network/ifname` of each attachment that got its DEL.
    pub deleted: Vec<String>,
    pub netns_deleted: Option<PathBuf>,
}

/// A VM whose network state is left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub vm_id: String,
    /// `network/ifname` of cached attachments.
    pub attachments: Vec<String>,
    /// Its namespace, if it still exists.
    pub netns: Option<PathBuf>,
}

impl CniRuntime {
    /// Gives a VM its network: namespace, CNI ADD, tap wiring. Call before
    /// starting the VMM. On any failure everything made so far is undone.
    pub fn setup_vm_network(&self, req: &VmNetworkRequest) -> Result<VmNetwork> {
        validate_name("VM id", &req.vm_id, 128)?;
        netlink::validate_ifname(&req.ifname)?;
        netlink::validate_ifname(&req.tap_name)?;
        let list = self.network_for(&req.network)?;
        let name = vm_netns_name(&req.vm_id);
        let path = netns::netns_path(&name);
        if !self.cache().for_vm(&req.vm_id)?.is_empty() {
            return Err(CniError::AlreadyAttached {
                vm_id: req.vm_id.clone(),
                what: "cached CNI attachment".into(),
            });
        }
        if path.exists() {
            return Err(CniError::AlreadyAttached {
                vm_id: req.vm_id.clone(),
                what: format!("namespace {}", path.display()),
            });
        }

        let mut capability_args = Map::new();
        if !req.ports.is_empty() {
            capability_args.insert(
                "portMappings".into(),
                port_mappings_arg(&req.ports, self.plugin_netns())?,
            );
        }
        let rt = RuntimeConf {
            container_id: req.vm_id.clone(),
            netns: path.clone(),
            ifname: req.ifname.clone(),
            args: req
                .ip
                .map(|ip| vec![("IP".to_string(), ip.to_string())])
                .unwrap_or_default(),
            capability_args,
        };
        let attachment = FirebuildAttachment {
            vm_id: req.vm_id.clone(),
            netns_path: path.clone(),
            tap_name: req.tap_name.clone(),
            tap_wired: false,
            owns_netns: true,
        };

        netns::create(&name)?;
        match self.attach(&list, &rt, attachment, req) {
            Ok(net) => Ok(net),
            Err(e) => {
                tracing::warn!(vm_id = %req.vm_id, error = %e, "network setup failed, rolling back");
                if let Err(undo) = self.teardown_vm_network(&req.vm_id, true) {
                    tracing::warn!(vm_id = %req.vm_id, error = %undo, "rollback incomplete");
                }
                // Covers a failure before the cache entry existed.
                let _ = netns::delete(&path);
                Err(e)
            }
        }
    }

    fn network_for(&self, name: &str) -> Result<NetworkConfigList> {
        match self.load_network(name) {
            Err(CniError::NetworkNotFound { .. }) if is_managed(name) => {
                ensure_managed_network(self, name)?;
                self.load_network(name)
            }
            other => other,
        }
    }

    fn attach(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        mut attachment: FirebuildAttachment,
        req: &VmNetworkRequest,
    ) -> Result<VmNetwork> {
        let result = self.add_with(list, rt, Some(attachment.clone()))?;
        let ns = rt.netns.as_path();
        // A chain with its own tap plugin (tc-redirect-tap) already did the wiring.
        let (tap_name, mac, mtu, wired) = match tap::find_existing_tap(ns, &rt.ifname)? {
            Some(existing) => {
                let veth = netlink::get_link(Some(ns), &rt.ifname)?.ok_or_else(|| {
                    netlink::nl_err(format!("get {}", rt.ifname), Some(ns), "missing after ADD")
                })?;
                let mac = veth
                    .mac
                    .map(|m| netlink::format_mac(&m))
                    .unwrap_or_default();
                (existing, mac, veth.mtu, false)
            }
            None => {
                tap::create_tap(ns, &req.tap_name, req.tap_owner)?;
                let w = tap::wire_tap(ns, &rt.ifname, &req.tap_name)?;
                (w.tap_name, w.mac, w.mtu, true)
            }
        };
        if tap_name != attachment.tap_name || wired != attachment.tap_wired {
            attachment.tap_name = tap_name.clone();
            attachment.tap_wired = wired;
            let cache = self.cache();
            if let Some(mut entry) = cache.load(&list.name, &rt.container_id, &rt.ifname)? {
                entry.firebuild = Some(attachment.clone());
                cache.store(&entry)?;
            }
        }
        vm_network_from(
            &req.vm_id,
            &list.name,
            &attachment,
            &rt.ifname,
            result,
            mac,
            mtu,
            req.ports.clone(),
        )
    }

    /// The network of a VM as recorded in the cache (for `inspect`), or
    /// `None`. `mtu` is 0 once the namespace is gone.
    pub fn vm_network(&self, vm_id: &str) -> Result<Option<VmNetwork>> {
        let Some(entry) = self
            .cache()
            .for_vm(vm_id)?
            .into_iter()
            .find(|e| e.result.is_some())
        else {
            return Ok(None);
        };
        let Some(fb) = entry.firebuild.clone() else {
            return Ok(None);
        };
        let raw = entry.result.clone().unwrap_or(Value::Null);
        let result = CniResult::parse(raw).map_err(|reason| CniError::CacheCorrupt {
            path: self
                .cache()
                .path(&entry.network_name, &entry.container_id, &entry.if_name),
            reason,
        })?;
        let mac = result
            .sandbox_interface(&entry.if_name)
            .map(|(_, i)| i.mac.clone())
            .unwrap_or_default();
        let ports = cached_ports(&entry);
        // The MTU is not in the result; read it live while the namespace exists.
        let mtu = if netns::exists(&fb.netns_path) {
            netlink::get_link(Some(&fb.netns_path), &entry.if_name)?.map_or(0, |l| l.mtu)
        } else {
            0
        };
        vm_network_from(
            vm_id,
            &entry.network_name,
            &fb,
            &entry.if_name,
            result,
            mac,
            mtu,
            ports,
        )
        .map(Some)
    }

    /// CNI CHECK of every attachment of the VM, plus the tap wiring.
    pub fn check_vm_network(&self, vm_id: &str) -> Result<()> {
        let entries = self.cache().for_vm(vm_id)?;
        if entries.is_empty() {
            return Err(CniError::NotCached {
                network: "(any)".into(),
                container_id: vm_id.into(),
                ifname: "(any)".into(),
                cache_dir: self.paths().cache_dir.clone(),
            });
        }
        for entry in entries {
            let list = NetworkConfigList::from_bytes(&entry.config, None)?;
            let rt = entry_runtime_conf(&entry);
            self.check(&list, &rt)?;
            if let Some(fb) = entry.firebuild.as_ref().filter(|f| f.tap_wired) {
                tap::check_tap(&fb.netns_path, &entry.if_name, &fb.tap_name)?;
            }
        }
        Ok(())
    }

    /// Takes a VM's network away: CNI DEL of each cached attachment with the
    /// exact config it was added with, then deletes the namespace (which
    /// removes the veth end and the tap). Idempotent.
    ///
    /// If a DEL fails, the namespace and cache entry are kept so a later call
    /// can finish (the bridge plugin skips masquerade cleanup when the
    /// namespace is gone), unless `force` is set, which removes them anyway.
    pub fn teardown_vm_network(&self, vm_id: &str, force: bool) -> Result<TeardownReport> {
        validate_name("VM id", vm_id, 128)?;
        let cache = self.cache();
        let mut report = TeardownReport::default();
        let mut problems = Vec::new();
        let mut namespaces = vec![netns::netns_path(&vm_netns_name(vm_id))];
        for entry in cache.for_vm(vm_id)? {
            let label = format!("{}/{}", entry.network_name, entry.if_name);
            if let Some(fb) = entry.firebuild.as_ref().filter(|f| f.owns_netns) {
                if !namespaces.contains(&fb.netns_path) {
                    namespaces.push(fb.netns_path.clone());
                }
            }
            match self.del_cached(&entry) {
                Ok(()) => report.deleted.push(label),
                Err(e) => {
                    problems.push(format!("CNI DEL of {label}: {e}"));
                    if force {
                        cache.remove(&entry.network_name, &entry.container_id, &entry.if_name)?;
                    }
                }
            }
        }
        if problems.is_empty() || force {
            for path in namespaces {
                if path.exists() {
                    netns::delete(&path)?;
                    report.netns_deleted = Some(path);
                }
            }
        }
        if problems.is_empty() || force {
            if !problems.is_empty() {
                tracing::warn!(vm_id, problems = ?problems, "forced teardown despite errors");
            }
            tracing::info!(vm_id, "VM network torn down");
            Ok(report)
        } else {
            Err(CniError::Teardown {
                vm_id: vm_id.to_string(),
                problems,
            })
        }
    }

    /// VMs with network state left behind: cached firebuild attachments and
    /// `firebuild-*` namespaces whose VM `is_live` says is gone. Attachments
    /// of other runtimes sharing the cache dir are never reported, and
    /// neither is a namespace a process still runs in (a VM of another run
    /// cache or profile, which `is_live` cannot know about).
    pub fn find_orphans(&self, is_live: impl Fn(&str) -> bool) -> Result<Vec<Orphan>> {
        let ns_busy =
            |vm_id: &str| netns::in_use(&netns::netns_path(&format!("{NETNS_PREFIX}{vm_id}")));
        let is_live = |vm_id: &str| is_live(vm_id) || ns_busy(vm_id);
        let mut found: BTreeMap<String, Orphan> = BTreeMap::new();
        let (entries, bad) = self.cache().list()?;
        for e in bad {
            tracing::warn!(error = %e, "unreadable CNI cache entry");
        }
        for entry in entries {
            let Some(fb) = entry.firebuild else { continue };
            if is_live(&fb.vm_id) {
                continue;
            }
            let o = found.entry(fb.vm_id.clone()).or_insert_with(|| Orphan {
                vm_id: fb.vm_id.clone(),
                attachments: Vec::new(),
                netns: None,
            });
            o.attachments
                .push(format!("{}/{}", entry.network_name, entry.if_name));
            if fb.owns_netns && netns::exists(&fb.netns_path) {
                o.netns = Some(fb.netns_path.clone());
            }
        }
        for name in netns::list()? {
            let Some(vm_id) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            if vm_id.is_empty() || is_live(vm_id) {
                continue;
            }
            let o = found.entry(vm_id.to_string()).or_insert_with(|| Orphan {
                vm_id: vm_id.to_string(),
                attachments: Vec::new(),
                netns: None,
            });
            o.netns = Some(netns::netns_path(&name));
        }
        Ok(found.into_values().collect())
    }
}

fn cached_ports(entry: &CacheEntry) -> Vec<PortMapping> {
    entry
        .capability_args
        .get("portMappings")
        .and_then(Value::as_array)
        .map(|maps| {
            maps.iter()
                .filter_map(|m| {
                    let proto = m.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
                    let spec = match m.get("hostIP").and_then(Value::as_str) {
                        Some(ip) if ip.contains(':') => format!("[{ip}]:"),
                        Some(ip) => format!("{ip}:"),
                        None => String::new(),
                    };
                    format!(
                        "{spec}{}:{}/{proto}",
                        m.get("hostPort")?,
                        m.get("containerPort")?
                    )
                    .parse()
                    .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn vm_network_from(
    vm_id: &str,
    network: &str,
    fb: &FirebuildAttachment,
    ifname: &str,
    result: CniResult,
    mac: String,
    mtu: u32,
    ports: Vec<PortMapping>,
) -> Result<VmNetwork> {
    let ip = result
        .address_for(ifname)
        .cloned()
        .ok_or_else(|| CniError::IncompleteResult {
            vm_id: vm_id.to_string(),
            ifname: ifname.to_string(),
            what: "IP address",
        })?;
    let netns_name = fb
        .netns_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(VmNetwork {
        vm_id: vm_id.to_string(),
        network: network.to_string(),
        netns_name,
        netns_path: fb.netns_path.clone(),
        tap_name: fb.tap_name.clone(),
        ifname: ifname.to_string(),
        mac,
        mtu,
        address: ip.address,
        gateway: ip.gateway,
        routes: result.routes.clone(),
        dns: result.dns.clone(),
        ports,
        result,
    })
}

/// Name servers of a resolv.conf usable from a VM (loopback ones dropped,
/// e.g. systemd-resolved's 127.0.0.53). A fallback when the CNI result has
/// no DNS.
pub fn host_nameservers(resolv_conf: &Path) -> Vec<String> {
    std::fs::read_to_string(resolv_conf)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|s| s.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> VmNetwork {
        let result = CniResult::parse(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/firebuild-vm1"}],
            "ips": [{"interface": 0, "address": "192.168.127.2/24", "gateway": "192.168.127.1"}],
            "dns": {"nameservers": ["192.168.127.1", "fd00::1", "9.9.9.9", "1.1.1.1"]}
        }))
        .unwrap();
        let fb = FirebuildAttachment {
            vm_id: "vm1".into(),
            netns_path: "/run/netns/firebuild-vm1".into(),
            tap_name: "tap0".into(),
            tap_wired: true,
            owns_netns: true,
        };
        vm_network_from(
            "vm1",
            "machines",
            &fb,
            "eth0",
            result,
            "02:00:00:00:00:01".into(),
            1500,
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn kernel_arg_and_metadata() {
        let n = sample();
        assert_eq!(n.netns_name, "firebuild-vm1");
        assert_eq!(
            n.kernel_ip_arg("quiet-otter", "eth0").unwrap(),
            "ip=192.168.127.2::192.168.127.1:255.255.255.0:quiet-otter:eth0:off:192.168.127.1:9.9.9.9"
        );
        let g = n.guest_interface("eth0");
        assert_eq!(g.ip, "192.168.127.2");
        assert_eq!(g.ip_addr, "192.168.127.2/24");
        assert_eq!(g.ip_net, "192.168.127.0/24");
        assert_eq!(g.ip_mask, "255.255.255.0");
        assert_eq!(g.host_dev_name, "tap0");
        assert_eq!(g.mtu, Some(1500));
        let gn = n.guest_network("eth0");
        assert_eq!(gn.cni_network_name, "machines");
        assert!(gn.interfaces.contains_key("02:00:00:00:00:01"));
    }

    #[test]
    fn result_without_address_is_an_error() {
        let result = CniResult::parse(json!({"cniVersion": "1.0.0"})).unwrap();
        let e = vm_network_from(
            "vm1",
            "n",
            &FirebuildAttachment::default(),
            "eth0",
            result,
            String::new(),
            0,
            vec![],
        )
        .unwrap_err();
        assert!(matches!(e, CniError::IncompleteResult { .. }));
    }

    #[test]
    fn resolv_conf_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(
            &p,
            "# x\nnameserver 127.0.0.53\nnameserver 192.168.127.1\nsearch lan\nnameserver ::1\n",
        )
        .unwrap();
        assert_eq!(host_nameservers(&p), vec!["192.168.127.1"]);
        assert!(host_nameservers(&dir.path().join("missing")).is_empty());
    }
}
