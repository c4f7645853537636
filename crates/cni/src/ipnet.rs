//! A small IP network type (`addr/prefix`) for CNI results, subnets and routes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address with a prefix length, e.g. `192.168.127.2/24`.
///
/// The address is kept as given (a host address inside its network), like
/// CNI's `address` fields; [`IpNet::network`] gives the masked form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Why a CIDR string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason} (expected e.g. 192.168.127.0/24)")]
pub struct IpNetParseError {
    pub input: String,
    pub reason: &'static str,
}

impl IpNet {
    /// Builds a network, refusing a prefix longer than the address family allows.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= max_prefix(&addr)).then_some(Self { addr, prefix_len })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(self.prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(self.prefix_len))),
        }
    }

    /// The masked network as an `IpNet` (e.g. `192.168.127.0/24`).
    pub fn trunc(&self) -> IpNet {
        IpNet {
            addr: self.network(),
            prefix_len: self.prefix_len,
        }
    }

    /// The netmask as an address (`255.255.255.0`), for the kernel `ip=` argument.
    pub fn netmask(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v4_mask(self.prefix_len))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v6_mask(self.prefix_len))),
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(b)) => {
                u32::from(*b) & v4_mask(self.prefix_len) == u32::from(self.network_v4())
            }
            (IpAddr::V6(_), IpAddr::V6(b)) => {
                u128::from(*b) & v6_mask(self.prefix_len) == u128::from(self.network_v6())
            }
            _ => false,
        }
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        match (self.addr, other.addr) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let m = v4_mask(shorter);
                u32::from(a) & m == u32::from(b) & m
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let m = v6_mask(shorter);
                u128::from(a) & m == u128::from(b) & m
            }
            _ => false,
        }
    }

    /// The `n`th address of the network (0 is the network address itself),
    /// or `None` past its end.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let host_bits = u32::from(max_prefix(&self.addr) - self.prefix_len);
        if host_bits < 128 && n >= (1u128 << host_bits) {
            return None;
        }
        match self.network() {
            IpAddr::V4(a) => u32::try_from(n)
                .ok()
                .map(|n| IpAddr::V4(Ipv4Addr::from(u32::from(a) | n))),
            IpAddr::V6(a) => Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) | n))),
        }
    }

    fn network_v4(&self) -> Ipv4Addr {
        match self.network() {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        }
    }

    fn network_v6(&self) -> Ipv6Addr {
        match self.network() {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
        }
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn v4_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn v6_mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for IpNet {
    type Err = IpNetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IpNetParseError {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        IpNet::new(addr, prefix).ok_or_else(|| err("prefix length too long for the address"))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let n: IpNet = "192.168.127.9/24".parse().unwrap();
        assert_eq!(n.network().to_string(), "192.168.127.0");
        assert_eq!(n.netmask().to_string(), "255.255.255.0");
        assert_eq!(n.trunc().to_string(), "192.168.127.0/24");
        assert!(n.contains(&"192.168.127.200".parse().unwrap()));
        assert!(!n.contains(&"192.168.128.1".parse().unwrap()));
        assert_eq!(n.nth(1).unwrap().to_string(), "192.168.127.1");
        assert_eq!(n.nth(256), None);
        let v6: IpNet = "fd00::5/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::");
        assert_eq!(
            "0.0.0.0/0".parse::<IpNet>().unwrap().netmask().to_string(),
            "0.0.0.0"
        );
    }

    #[test]
    fn overlaps() {
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "10.213.0.0/24".parse().unwrap();
        let c: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/24", "10.0.0.0/", "::1/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
