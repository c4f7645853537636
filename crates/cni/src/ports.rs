//! Port publishing specs (`run --port`) and the `portMappings` capability
//! argument the standard `portmap` plugin reads.
//!
//! Accepted forms (protocol defaults to tcp):
//! - `GUEST[/proto]` — the same port on the host
//! - `HOST:GUEST[/proto]`
//! - `IP:HOST:GUEST[/proto]` — only on that host address (`[v6]` in brackets)
//! - `IFACE:HOST:GUEST[/proto]` — only on that host interface's addresses

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Value};

use crate::error::{CniError, Result};
use crate::netlink::{self, validate_ifname};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Where on the host a published port listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostBinding {
    /// Every host address.
    Any,
    Ip(IpAddr),
    /// The addresses of this host interface, looked up when the VM starts.
    Interface(String),
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host: HostBinding,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

impl FromStr for PortMapping {
    type Err = CniError;

    fn from_str(spec: &str) -> Result<Self> {
        let bad = |reason: &str| CniError::InvalidPortSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (body, protocol) = match spec.rsplit_once('/') {
            Some((b, p)) => (
                b,
                match p.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "sctp" => Protocol::Sctp,
                    _ => return Err(bad("protocol must be tcp, udp or sctp")),
                },
            ),
            None => (spec, Protocol::Tcp),
        };
        let port = |s: &str, what: &str| -> Result<u16> {
            match s.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(bad(&format!(
                    "{what} port {s:?} is not a number from 1 to 65535"
                ))),
            }
        };
        // `[v6]:HOST:GUEST`
        if let Some(rest) = body.strip_prefix('[') {
            let (ip, ports) = rest
                .split_once("]:")
                .ok_or_else(|| bad("unclosed [ in IPv6 host address"))?;
            let ip: IpAddr = ip.parse().map_err(|_| bad("bad IPv6 host address"))?;
            let (h, g) = ports
                .split_once(':')
                .ok_or_else(|| bad("expected [IP]:HOST:GUEST"))?;
            return Ok(PortMapping {
                host: HostBinding::Ip(ip),
                host_port: port(h, "host")?,
                guest_port: port(g, "guest")?,
                protocol,
            });
        }
        let parts: Vec<&str> = body.split(':').collect();
        let (host, h, g) = match parts.as_slice() {
            [g] => (HostBinding::Any, *g, *g),
            [h, g] => (HostBinding::Any, *h, *g),
            [iface, h, g] => {
                let host = match iface.parse::<IpAddr>() {
                    Ok(ip) => HostBinding::Ip(ip),
                    Err(_) if iface.is_empty() => HostBinding::Any,
                    Err(_) => {
                        validate_ifname(iface).map_err(|_| {
                            bad("first part is neither an IP address nor an interface name")
                        })?;
                        HostBinding::Interface(iface.to_string())
                    }
                };
                (host, *h, *g)
            }
            _ => return Err(bad("too many ':' (write IPv6 host addresses in brackets)")),
        };
        Ok(PortMapping {
            host,
            host_port: port(h, "host")?,
            guest_port: port(g, "guest")?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostBinding::Any => {}
            HostBinding::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            HostBinding::Ip(ip) => write!(f, "{ip}:")?,
            HostBinding::Interface(i) => write!(f, "{i}:")?,
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.guest_port,
            self.protocol.as_str()
        )
    }
}

/// Parses several specs, refusing two that claim the same host port.
pub fn parse_port_specs<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortMapping>> {
    let mut out: Vec<PortMapping> = Vec::new();
    for s in specs {
        let m: PortMapping = s.as_ref().parse()?;
        if let Some(prev) = out.iter().find(|p| {
            p.host_port == m.host_port
                && p.protocol == m.protocol
                && (p.host == m.host || p.host == HostBinding::Any || m.host == HostBinding::Any)
        }) {
            return Err(CniError::InvalidPortSpec {
                spec: s.as_ref().to_string(),
                reason: format!(
                    "host port {}/{} is already published by {prev}",
                    m.host_port,
                    m.protocol.as_str()
                ),
            });
        }
        out.push(m);
    }
    Ok(out)
}

/// The `portMappings` capability argument, with interface bindings looked up
/// in `host_netns` (the plugins' namespace; `None` = ours).
pub fn port_mappings_arg(ports: &[PortMapping], host_netns: Option<&Path>) -> Result<Value> {
    let mut out = Vec::new();
    for p in ports {
        let entry = |host_ip: Option<IpAddr>| {
            let mut v = json!({
                "hostPort": p.host_port,
                "containerPort": p.guest_port,
                "protocol": p.protocol.as_str(),
            });
            if let Some(ip) = host_ip {
                v["hostIP"] = Value::String(ip.to_string());
            }
            v
        };
        match &p.host {
            HostBinding::Any => out.push(entry(None)),
            HostBinding::Ip(ip) => out.push(entry(Some(*ip))),
            HostBinding::Interface(iface) => {
                let addrs = netlink::link_addresses(host_netns, iface).map_err(|e| {
                    CniError::PortInterface {
                        spec: p.to_string(),
                        iface: iface.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let usable: Vec<IpAddr> = addrs
                    .into_iter()
                    .filter(
                        |ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80),
                    )
                    .collect();
                // portmap needs the address family to match the guest's; prefer IPv4.
                let v4: Vec<IpAddr> = usable.iter().copied().filter(IpAddr::is_ipv4).collect();
                let chosen = if v4.is_empty() { usable } else { v4 };
                if chosen.is_empty() {
                    return Err(CniError::PortInterface {
                        spec: p.to_string(),
                        iface: iface.clone(),
                        reason: "it has no address".into(),
                    });
                }
                out.extend(chosen.into_iter().map(|ip| entry(Some(ip))));
            }
        }
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortMapping {
        s.parse().unwrap()
    }

    #[test]
    fn all_forms() {
        assert_eq!(
            p("80"),
            PortMapping {
                host: HostBinding::Any,
                host_port: 80,
                guest_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            p("8080:80/udp"),
            PortMapping {
                host: HostBinding::Any,
                host_port: 8080,
                guest_port: 80,
                protocol: Protocol::Udp
            }
        );
        assert_eq!(p("8080:80/TCP").protocol, Protocol::Tcp);
        assert_eq!(p("53/udp").guest_port, 53);
        assert_eq!(
            p("192.168.127.1:8080:80/tcp").host,
            HostBinding::Ip("192.168.127.1".parse().unwrap())
        );
        assert_eq!(
            p("eth0:8080:80/tcp").host,
            HostBinding::Interface("eth0".into())
        );
        assert_eq!(
            p("[::1]:8080:80").host,
            HostBinding::Ip("::1".parse().unwrap())
        );
        assert_eq!(p(":8080:80").host, HostBinding::Any);
        assert_eq!(
            p("[fd00::1]:8080:80/udp").to_string(),
            "[fd00::1]:8080:80/udp"
        );
        assert_eq!(p("eth0:1:2").to_string(), "eth0:1:2/tcp");
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "0",
            "70000",
            "80/icmp",
            "a:b",
            "8080:",
            ":80",
            "1:2:3:4",
            "::1:80:80",
            "[::1:80:80",
            "bad/iface:1:2",
            "8080:80/",
            "-1",
        ] {
            let e = bad.parse::<PortMapping>();
            assert!(e.is_err(), "{bad} parsed as {:?}", e);
        }
        let msg = "80/icmp".parse::<PortMapping>().unwrap_err().to_string();
        assert!(
            msg.contains("80/icmp") && msg.contains("tcp, udp or sctp"),
            "{msg}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        assert!(parse_port_specs(&["8080:80", "8080:81"]).is_err());
        assert!(parse_port_specs(&["8080:80", "8080:80/udp"]).is_ok());
        assert!(parse_port_specs(&["127.0.0.1:8080:80", "8080:81"]).is_err());
        assert!(parse_port_specs(&["127.0.0.1:8080:80", "127.0.0.2:8080:81"]).is_ok());
    }

    #[test]
    fn capability_arg() {
        let ports = parse_port_specs(&["8080:80", "10.1.2.3:53:53/udp"]).unwrap();
        let v = port_mappings_arg(&ports, None).unwrap();
        assert_eq!(
            v,
            json!([
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "10.1.2.3"}
            ])
        );
    }
}
