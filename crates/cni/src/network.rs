//! `network create / ls / rm`: standard bridge conflists written for the
//! user, and the `default` network made on first use.
//!
//! A created network is: `bridge` (gateway on the bridge, hairpin on,
//! optional masquerade) with `host-local` IPAM and a default route, then
//! `firewall`, then `portmap` (for `--port`). The tap for the VMM is added by
//! the runtime, so the file is a plain CNI conflist any CNI tool can use.
//!
//! The `default` network: bridge `fb-default`, subnet `10.213.0.0/24`
//! (or the next of `10.213.1.0/24` ... `10.213.255.0/24` that overlaps no
//! existing CNI network and no route of the host), gateway `.1`, masquerade
//! on so VMs reach the outside like containers do.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{load_all, str_field, NetworkConfigList, MAX_NAME_LEN};
use crate::error::{validate_name, CniError, Result};
use crate::ipnet::IpNet;
use crate::netlink::{self, validate_ifname, IFNAME_MAX};
use crate::netns::in_netns;
use crate::runtime::CniRuntime;

/// Name of the network `run` uses when none is given.
pub const DEFAULT_NETWORK: &str = "default";

/// The network of build microVMs (`rootfs --isolation microvm`), made on
/// first use like [`DEFAULT_NETWORK`].
pub const BUILD_NETWORK: &str = "machine-builds";

/// The networks firebuild makes itself when first asked for.
pub fn is_managed(name: &str) -> bool {
    name == DEFAULT_NETWORK || name == BUILD_NETWORK
}

/// What `network create` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: IpNet,
    /// Defaults to the first address of the subnet.
    pub gateway: Option<IpAddr>,
    /// Defaults to `fb-<name>` (hashed when that is too long for a link name).
    pub bridge: Option<String>,
    /// Masquerade traffic leaving the subnet.
    pub ip_masq: bool,
    /// Name servers handed to VMs in the CNI result.
    pub nameservers: Vec<IpAddr>,
    /// host-local's lease store; defaults to `<cni cache dir>/networks`.
    pub ipam_data_dir: Option<PathBuf>,
}

impl NetworkSpec {
    pub fn new(name: impl Into<String>, subnet: IpNet) -> Self {
        Self {
            name: name.into(),
            subnet,
            gateway: None,
            bridge: None,
            ip_masq: false,
            nameservers: Vec::new(),
            ipam_data_dir: None,
        }
    }
}

/// What `network ls` shows about one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub name: String,
    pub path: Option<PathBuf>,
    pub cni_version: String,
    pub plugins: Vec<String>,
    pub bridge: Option<String>,
    pub subnets: Vec<String>,
    pub gateways: Vec<String>,
    pub ip_masq: bool,
    /// host-local's store, if the network uses host-local.
    pub ipam_data_dir: Option<PathBuf>,
}

impl NetworkInfo {
    /// Summarises a network list (bridge and host-local settings if present).
    pub fn from_list(list: &NetworkConfigList) -> Self {
        let mut info = NetworkInfo {
            name: list.name.clone(),
            path: list.source.clone(),
            cni_version: list.cni_version.clone(),
            plugins: list.plugin_types(),
            bridge: None,
            subnets: Vec::new(),
            gateways: Vec::new(),
            ip_masq: false,
            ipam_data_dir: None,
        };
        for p in &list.plugins {
            if str_field(p, "type").as_deref() == Some("bridge") {
                info.bridge = Some(str_field(p, "bridge").unwrap_or_else(|| "cni0".into()));
                info.ip_masq = p.get("ipMasq").and_then(Value::as_bool).unwrap_or(false);
            }
            let Some(ipam) = p.get("ipam").and_then(Value::as_object) else {
                continue;
            };
            if str_field(ipam, "type").as_deref() == Some("host-local") {
                info.ipam_data_dir = Some(
                    str_field(ipam, "dataDir")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("/var/lib/cni/networks")),
                );
            }
            let mut ranges: Vec<&Map<String, Value>> = Vec::new();
            if ipam.contains_key("subnet") {
                ranges.push(ipam);
            }
            for set in ipam
                .get("ranges")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                ranges.extend(
                    set.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_object),
                );
            }
            for r in ranges {
                if let Some(s) = str_field(r, "subnet") {
                    info.subnets.push(s);
                }
                if let Some(g) = str_field(r, "gateway") {
                    info.gateways.push(g);
                }
            }
        }
        info
    }

    fn parsed_subnets(&self) -> Vec<IpNet> {
        self.subnets.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

/// The bridge name for a network without `--bridge`.
pub fn default_bridge_name(network: &str) -> String {
    let plain = format!("fb-{network}");
    if plain.len() <= IFNAME_MAX {
        return plain;
    }
    let digest = Sha256::digest(network.as_bytes());
    format!("fb-{}", &hex::encode(digest)[..IFNAME_MAX - 3])
}

/// Builds the conflist for `spec` (validated), with host-local's store in
/// `default_data_dir` unless the spec names one.
pub fn conflist(spec: &NetworkSpec, default_data_dir: &Path) -> Result<Value> {
    let bad = |reason: String| CniError::InvalidNetworkSpec {
        name: spec.name.clone(),
        reason,
    };
    validate_name("network name", &spec.name, MAX_NAME_LEN)?;
    let subnet = spec.subnet.trunc();
    let max_prefix = if subnet.addr.is_ipv4() { 30 } else { 126 };
    if subnet.prefix_len > max_prefix {
        return Err(bad(format!(
            "subnet {subnet} is too small for a gateway and VMs (at most /{max_prefix})"
        )));
    }
    let gateway = match spec.gateway {
        Some(g) => g,
        None => subnet
            .nth(1)
            .ok_or_else(|| bad(format!("subnet {subnet} has no first address")))?,
    };
    let last = subnet.nth(if subnet.addr.is_ipv4() {
        (1u128 << (32 - subnet.prefix_len)) - 1
    } else {
        0
    });
    if !subnet.contains(&gateway)
        || gateway == subnet.network()
        || (subnet.addr.is_ipv4() && Some(gateway) == last)
    {
        return Err(bad(format!(
            "gateway {gateway} is not a host address of subnet {subnet}"
        )));
    }
    let bridge = spec
        .bridge
        .clone()
        .unwrap_or_else(|| default_bridge_name(&spec.name));
    validate_ifname(&bridge)?;
    let default_route = if subnet.addr.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let data_dir = spec.ipam_data_dir.as_deref().unwrap_or(default_data_dir);
    let mut bridge_plugin = json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": spec.ip_masq,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway.to_string()}]],
            "routes": [{"dst": default_route}],
            "dataDir": data_dir.display().to_string(),
        },
    });
    if !spec.nameservers.is_empty() {
        bridge_plugin["dns"] = json!({
            "nameservers": spec.nameservers.iter().map(ToString::to_string).collect::<Vec<_>>()
        });
    }
    Ok(json!({
        "cniVersion": "1.0.0",
        "name": spec.name,
        "plugins": [
            bridge_plugin,
            {"type": "firewall"},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    }))
}

/// Writes a new network's conflist into the conf dir (`<name>.conflist`).
///
/// Refuses a name that exists, a bridge another network uses, or a subnet
/// that overlaps another network's.
pub fn create_network(rt: &CniRuntime, spec: &NetworkSpec) -> Result<NetworkInfo> {
    let conf_dir = &rt.paths().conf_dir;
    let value = conflist(spec, &rt.paths().cache_dir.join("networks"))?;
    let bytes = serde_json::to_vec_pretty(&value).map_err(|e| CniError::InvalidNetworkSpec {
        name: spec.name.clone(),
        reason: e.to_string(),
    })?;
    let path = conf_dir.join(format!("{}.conflist", spec.name));
    let new = NetworkConfigList::from_bytes(&bytes, Some(&path))?;
    let new_info = NetworkInfo::from_list(&new);

    let (existing, _) = load_all(conf_dir)?;
    for other in existing.iter().map(NetworkInfo::from_list) {
        let other_path = other.path.clone().unwrap_or_default();
        if other.name == spec.name {
            return Err(CniError::NetworkExists {
                name: spec.name.clone(),
                path: other_path,
            });
        }
        if other.bridge.is_some() && other.bridge == new_info.bridge {
            return Err(CniError::InvalidNetworkSpec {
                name: spec.name.clone(),
                reason: format!(
                    "bridge {} is already used by network {:?} ({}); pass another --bridge",
                    other.bridge.unwrap_or_default(),
                    other.name,
                    other_path.display()
                ),
            });
        }
        for s in other.parsed_subnets() {
            if s.overlaps(&spec.subnet) {
                return Err(CniError::InvalidNetworkSpec {
                    name: spec.name.clone(),
                    reason: format!(
                        "subnet {} overlaps {s} of network {:?}; pick another --subnet",
                        spec.subnet.trunc(),
                        other.name
                    ),
                });
            }
        }
    }
    write_new_file(conf_dir, &path, &bytes)?;
    tracing::info!(network = %spec.name, path = %path.display(), "created CNI network");
    Ok(new_info)
}

/// Writes `bytes` to `path` atomically, failing if `path` exists.
fn write_new_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| CniError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // A hard link fails if the target exists: no clobbering a racing create.
        fs::hard_link(&tmp, path)
    };
    let res = write();
    let _ = fs::remove_file(&tmp);
    res.map_err(|e| CniError::io(path, e))
}

/// Every network in the conf dir (unparseable files are logged and skipped).
pub fn list_networks(rt: &CniRuntime) -> Result<Vec<NetworkInfo>> {
    let (lists, errors) = load_all(&rt.paths().conf_dir)?;
    for e in errors {
        tracing::warn!(error = %e, "skipping unreadable CNI config");
    }
    let mut infos: Vec<NetworkInfo> = lists.iter().map(NetworkInfo::from_list).collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// What `network rm` cleaned up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedNetwork {
    pub path: Option<PathBuf>,
    /// The bridge device was deleted (it had no ports left).
    pub bridge_deleted: Option<String>,
    /// host-local's per-network directory was deleted (it held no lease).
    pub ipam_dir_removed: Option<PathBuf>,
}

/// Removes a network: refuses while any cached attachment uses it; then
/// deletes its conf file, its bridge (if no other network names it and it has
/// no ports) and its empty host-local directory.
pub fn remove_network(rt: &CniRuntime, name: &str) -> Result<RemovedNetwork> {
    let list = rt.load_network(name)?;
    let info = NetworkInfo::from_list(&list);
    let (entries, _) = rt.cache().list()?;
    let users: Vec<String> = entries
        .iter()
        .filter(|e| e.network_name == name)
        .map(|e| {
            e.firebuild
                .as_ref()
                .map_or_else(|| e.container_id.clone(), |f| f.vm_id.clone())
        })
        .collect();
    if !users.is_empty() {
        return Err(CniError::NetworkInUse {
            name: name.to_string(),
            vms: users,
        });
    }
    if let Some(path) = &list.source {
        fs::remove_file(path).map_err(|e| CniError::io(path, e))?;
    }

    let mut removed = RemovedNetwork {
        path: list.source.clone(),
        bridge_deleted: None,
        ipam_dir_removed: None,
    };
    if let Some(bridge) = &info.bridge {
        let (others, _) = load_all(&rt.paths().conf_dir)?;
        let shared = others
            .iter()
            .map(NetworkInfo::from_list)
            .any(|o| o.bridge.as_ref() == Some(bridge));
        if !shared && delete_bridge_if_unused(rt.plugin_netns(), bridge)? {
            removed.bridge_deleted = Some(bridge.clone());
        }
    }
    if let Some(dir) = info.ipam_data_dir.map(|d| d.join(name)) {
        if remove_ipam_dir_if_empty(&dir)? {
            removed.ipam_dir_removed = Some(dir);
        }
    }
    tracing::info!(network = name, "removed CNI network");
    Ok(removed)
}

fn delete_bridge_if_unused(host_netns: Option<&Path>, bridge: &str) -> Result<bool> {
    let links = netlink::list_links(host_netns)?;
    let Some(br) = links.iter().find(|l| l.name == bridge) else {
        return Ok(false);
    };
    if br.kind.as_deref() != Some("bridge") || links.iter().any(|l| l.controller == Some(br.index))
    {
        return Ok(false);
    }
    netlink::delete_link(host_netns, bridge)
}

/// host-local keeps `lock` and `last_reserved_ip.N` besides one file per lease.
fn remove_ipam_dir_if_empty(dir: &Path) -> Result<bool> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CniError::io(dir, e)),
    };
    for entry in read {
        let name = entry.map_err(|e| CniError::io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if name != "lock" && !name.starts_with("last_reserved_ip") {
            return Ok(false);
        }
    }
    fs::remove_dir_all(dir).map_err(|e| CniError::io(dir, e))?;
    Ok(true)
}

/// Returns the managed network `name` ([`is_managed`]), creating it first
/// (a free 10.213.N.0/24, masqueraded) if it does not exist.
pub fn ensure_managed_network(rt: &CniRuntime, name: &str) -> Result<NetworkInfo> {
    match rt.load_network(name) {
        Ok(list) => return Ok(NetworkInfo::from_list(&list)),
        Err(CniError::NetworkNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let (lists, _) = load_all(&rt.paths().conf_dir)?;
    let mut taken: Vec<IpNet> = lists
        .iter()
        .flat_map(|l| NetworkInfo::from_list(l).parsed_subnets())
        .collect();
    taken.extend(host_routes(rt.plugin_netns())?);
    let subnet = (0..=255u8)
        .map(|n| IpNet { addr: IpAddr::V4(Ipv4Addr::new(10, 213, n, 0)), prefix_len: 24 })
        .find(|c| !taken.iter().any(|t| t.overlaps(c)))
        .ok_or_else(|| CniError::InvalidNetworkSpec {
            name: name.into(),
            reason: format!("every 10.213.N.0/24 is taken; create it yourself with `firebuild network create {name} --subnet CIDR`"),
        })?;
    let mut spec = NetworkSpec::new(name, subnet);
    spec.ip_masq = true;
    match create_network(rt, &spec) {
        // Lost a race with another firebuild: use theirs.
        Err(CniError::NetworkExists { .. }) => Ok(NetworkInfo::from_list(&rt.load_network(name)?)),
        other => other,
    }
}

/// IPv4 routes of the host namespace (default routes excluded).
fn host_routes(host_netns: Option<&Path>) -> Result<Vec<IpNet>> {
    // /proc/thread-self/net shows the calling thread's namespace.
    let text = in_netns(host_netns, || {
        fs::read_to_string("/proc/thread-self/net/route")
    })?
    .map_err(|e| CniError::io("/proc/thread-self/net/route", e))?;
    Ok(parse_proc_routes(&text))
}

fn parse_proc_routes(text: &str) -> Vec<IpNet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let dst = u32::from_str_radix(cols.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(cols.get(7)?, 16).ok()?;
            if mask == 0 {
                return None;
            }
            // The kernel prints the big-endian words as native integers.
            let addr = Ipv4Addr::from(dst.to_ne_bytes());
            let prefix = mask.count_ones() as u8;
            Some(IpNet {
                addr: IpAddr::V4(addr),
                prefix_len: prefix,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit() {
        assert_eq!(default_bridge_name("machines"), "fb-machines");
        let long = default_bridge_name("a-very-long-network-name");
        assert_eq!(long.len(), IFNAME_MAX);
        assert!(long.starts_with("fb-"));
        assert_ne!(long, default_bridge_name("a-very-long-network-name2"));
    }

    #[test]
    fn conflist_shape() {
        let mut spec = NetworkSpec::new("machines", "192.168.127.0/24".parse().unwrap());
        spec.ip_masq = true;
        spec.nameservers = vec!["192.168.127.1".parse().unwrap()];
        let v = conflist(&spec, Path::new("/var/lib/cni/networks")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["bridge"], "fb-machines");
        assert_eq!(v["plugins"][0]["ipMasq"], true);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "192.168.127.1"
        );
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/var/lib/cni/networks");
        assert_eq!(v["plugins"][0]["dns"]["nameservers"][0], "192.168.127.1");
        assert_eq!(v["plugins"][1]["type"], "firewall");
        assert_eq!(v["plugins"][2]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn conflist_rejects_bad_specs() {
        let s = |subnet: &str, gw: Option<&str>| {
            let mut spec = NetworkSpec::new("n", subnet.parse().unwrap());
            spec.gateway = gw.map(|g| g.parse().unwrap());
            conflist(&spec, Path::new("/x"))
        };
        assert!(s("192.168.127.0/24", Some("192.168.128.1")).is_err());
        assert!(s("192.168.127.0/24", Some("192.168.127.0")).is_err());
        assert!(s("192.168.127.0/24", Some("192.168.127.255")).is_err());
        assert!(s("192.168.127.0/31", None).is_err());
        assert!(s("192.168.127.0/24", Some("192.168.127.254")).is_ok());
        let mut spec = NetworkSpec::new("n", "10.0.0.0/24".parse().unwrap());
        spec.bridge = Some("way-too-long-bridge-name".into());
        assert!(conflist(&spec, Path::new("/x")).is_err());
    }

    #[test]
    fn proc_routes() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_proc_routes(text);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].to_string(), "192.168.2.0/24");
    }
}
