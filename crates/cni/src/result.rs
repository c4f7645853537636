//! CNI results (spec 0.1.0 through 1.0.0) parsed into one shape.
//!
//! The raw JSON is kept alongside: it is what goes into `prevResult` and the
//! cache, so nothing a plugin said is lost by our normalisation.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ipnet::IpNet;

/// One interface a plugin created or touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty on the host.
    #[serde(default)]
    pub sandbox: String,
}

/// An address assigned by IPAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// A parsed CNI result.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The result exactly as the last plugin printed it.
    pub raw: Value,
}

impl CniResult {
    /// Parses a result of any spec version from 0.1.0 to 1.0.0.
    pub fn parse(raw: Value) -> Result<Self, String> {
        let obj = raw.as_object().ok_or("result is not a JSON object")?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let dns: Dns = match obj.get("dns") {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).map_err(|e| format!("dns: {e}"))?
            }
            _ => Dns::default(),
        };
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            return Self::parse_legacy(obj, cni_version, dns, raw.clone());
        }
        let interfaces: Vec<Interface> = field(obj, "interfaces")?;
        let ips: Vec<IpConfig> = field(obj, "ips")?;
        let routes: Vec<Route> = field(obj, "routes")?;
        if let Some(bad) = ips
            .iter()
            .filter_map(|ip| ip.interface)
            .find(|&i| i >= interfaces.len())
        {
            return Err(format!(
                "ips refer to interface index {bad}, which is not in interfaces"
            ));
        }
        Ok(CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns,
            raw,
        })
    }

    /// 0.1.0/0.2.0 results: `{"ip4": {"ip", "gateway", "routes"}, "ip6": ...}`.
    fn parse_legacy(
        obj: &serde_json::Map<String, Value>,
        cni_version: String,
        dns: Dns,
        raw: Value,
    ) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Legacy {
            ip: IpNet,
            #[serde(default)]
            gateway: Option<IpAddr>,
            #[serde(default)]
            routes: Vec<Route>,
        }
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        for key in ["ip4", "ip6"] {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                let l: Legacy =
                    serde_json::from_value(v.clone()).map_err(|e| format!("{key}: {e}"))?;
                ips.push(IpConfig {
                    address: l.ip,
                    gateway: l.gateway,
                    interface: None,
                });
                routes.extend(l.routes);
            }
        }
        Ok(CniResult {
            cni_version,
            interfaces: Vec::new(),
            ips,
            routes,
            dns,
            raw,
        })
    }

    /// The interface named `name` inside the sandbox, with its index.
    pub fn sandbox_interface(&self, name: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == name && !i.sandbox.is_empty())
    }

    /// The first address for interface `ifname`; when the result names no
    /// interfaces (old spec versions), the first address at all.
    pub fn address_for(&self, ifname: &str) -> Option<&IpConfig> {
        match self.sandbox_interface(ifname) {
            Some((idx, _)) => self
                .ips
                .iter()
                .find(|ip| ip.interface == Some(idx))
                .or_else(|| self.ips.iter().find(|ip| ip.interface.is_none())),
            None => self.ips.first(),
        }
    }
}

fn field<T: serde::de::DeserializeOwned + Default>(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<T, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{key}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_040() {
        let raw = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "fb0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"version": "4", "interface": 2, "address": "192.168.127.2/24", "gateway": "192.168.127.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["192.168.127.1"]}
        });
        let r = CniResult::parse(raw.clone()).unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        let ip = r.address_for("eth0").unwrap();
        assert_eq!(ip.address.to_string(), "192.168.127.2/24");
        assert_eq!(ip.gateway.unwrap().to_string(), "192.168.127.1");
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns.nameservers, vec!["192.168.127.1"]);
        assert_eq!(r.raw, raw);
    }

    #[test]
    fn parses_100_without_version_field() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"}],
            "ips": [{"interface": 0, "address": "fd00::2/64", "gateway": "fd00::1"}]
        });
        let r = CniResult::parse(raw).unwrap();
        assert_eq!(
            r.address_for("eth0").unwrap().address.to_string(),
            "fd00::2/64"
        );
        assert!(r.routes.is_empty());
        assert_eq!(r.dns, Dns::default());
    }

    #[test]
    fn parses_legacy_020() {
        let raw = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]}
        });
        let r = CniResult::parse(raw).unwrap();
        assert_eq!(
            r.address_for("eth0").unwrap().address.to_string(),
            "10.1.0.5/16"
        );
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn rejects_malformed() {
        assert!(CniResult::parse(json!([1])).is_err());
        assert!(CniResult::parse(json!({"ips": [{"address": "nope"}]})).is_err());
        assert!(
            CniResult::parse(json!({"ips": [{"address": "10.0.0.1/8", "interface": 3}]})).is_err()
        );
    }
}
