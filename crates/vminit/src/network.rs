//! Network set-up with plain ioctls (no netlink crate, no async runtime):
//! loopback up, the metadata's address, netmask, MTU and default route.
//!
//! When the kernel's `ip=` argument configured the interface already, the
//! address and route are left as the kernel set them; only the MTU is
//! applied.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use firebuild_metadata::guest::{GuestNetwork, GuestNetworkInterface};

use crate::cmdline::IpConfig;

/// The address the init gives an unconfigured interface so it can reach
/// MMDS (which answers ARP and TCP for 169.254.169.254 on that interface)
/// before the real address is known.
pub const MMDS_BOOTSTRAP_ADDR: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(169, 254, 0, 1),
    prefix: 16,
};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op} on interface {ifname}: {source}")]
    Ioctl {
        op: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("adding the default route via {gateway} on {ifname}: {source}; the gateway must be inside the interface's subnet")]
    Route {
        gateway: Ipv4Addr,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("opening a socket for network configuration: {0}")]
    Socket(#[source] io::Error),
    #[error("listing network interfaces: {0}")]
    List(#[source] io::Error),
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("metadata interface {key:?}: invalid {field} {value:?}")]
    BadField {
        key: String,
        field: &'static str,
        value: String,
    },
    #[error("metadata interface {key:?} matches no network device in the VM (devices: {devices}); check the VMM's NIC and its MAC address")]
    NoSuchLink { key: String, devices: String },
    #[error("the VM has no network device to reach MMDS through; attach one and list it in the MMDS network_interfaces")]
    NoLinkForMmds,
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// The netmask for the prefix.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        };
        Ipv4Addr::from(bits)
    }
}

/// Parses a prefix length given as `24`, `255.255.255.0` or the hex form
/// Go prints for masks, `ffffff00`. Non-contiguous masks are rejected.
pub fn parse_prefix_len(mask: &str) -> Option<u8> {
    let mask = mask.trim();
    if let Ok(n) = mask.parse::<u8>() {
        return (n <= 32).then_some(n);
    }
    let bits = if let Ok(a) = mask.parse::<Ipv4Addr>() {
        u32::from(a)
    } else if mask.len() == 8 {
        u32::from_str_radix(mask, 16).ok()?
    } else {
        return None;
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The interface's address from the metadata: `ip-addr` (`a.b.c.d/nn`), or
/// `ip` with `ip-mask`; `None` when the metadata has no address.
pub fn interface_address(
    key: &str,
    iface: &GuestNetworkInterface,
) -> Result<Option<Ipv4Net>, NetError> {
    let bad = |field: &'static str, value: &str| NetError::BadField {
        key: key.to_string(),
        field,
        value: value.to_string(),
    };
    if !iface.ip_addr.is_empty() {
        let (a, p) = iface
            .ip_addr
            .split_once('/')
            .ok_or_else(|| bad("ip-addr", &iface.ip_addr))?;
        let addr = a.parse().map_err(|_| bad("ip-addr", &iface.ip_addr))?;
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| bad("ip-addr", &iface.ip_addr))?;
        return Ok(Some(Ipv4Net { addr, prefix }));
    }
    if iface.ip.is_empty() {
        return Ok(None);
    }
    let addr = iface.ip.parse().map_err(|_| bad("ip", &iface.ip))?;
    let prefix = if iface.ip_mask.is_empty() {
        32
    } else {
        parse_prefix_len(&iface.ip_mask).ok_or_else(|| bad("ip-mask", &iface.ip_mask))?
    };
    Ok(Some(Ipv4Net { addr, prefix }))
}

/// A network device in the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// What to configure on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub ifname: String,
    pub addr: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
}

fn looks_like_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':')
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Matches the metadata's interfaces to devices and builds the plan. An
/// entry matches by its key as a MAC address (the original's convention),
/// its `ifname`, or its key as a device name; a single entry with a single
/// device matches that device.
pub fn plan(network: &GuestNetwork, links: &[Link]) -> Result<Vec<NetPlan>, NetError> {
    let candidates: Vec<&Link> = links.iter().filter(|l| l.name != "lo").collect();
    let mut out = Vec::new();
    for (key, iface) in &network.interfaces {
        let by_mac = looks_like_mac(key)
            .then(|| candidates.iter().find(|l| l.mac.eq_ignore_ascii_case(key)))
            .flatten();
        let by_ifname = (!iface.ifname.is_empty())
            .then(|| candidates.iter().find(|l| l.name == iface.ifname))
            .flatten();
        let by_key = candidates.iter().find(|l| &l.name == key);
        let only = (network.interfaces.len() == 1 && candidates.len() == 1)
            .then(|| candidates.first())
            .flatten();
        let link =
            by_mac
                .or(by_ifname)
                .or(by_key)
                .or(only)
                .ok_or_else(|| NetError::NoSuchLink {
                    key: key.clone(),
                    devices: candidates
                        .iter()
                        .map(|l| format!("{} {}", l.name, l.mac))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        let gateway = if iface.gateway.is_empty() {
            None
        } else {
            Some(iface.gateway.parse().map_err(|_| NetError::BadField {
                key: key.clone(),
                field: "gateway",
                value: iface.gateway.clone(),
            })?)
        };
        out.push(NetPlan {
            ifname: link.name.clone(),
            addr: interface_address(key, iface)?,
            gateway,
            mtu: iface.mtu.filter(|m| *m > 0),
        });
    }
    Ok(out)
}

/// A datagram socket for interface ioctls.
struct CtlSocket(OwnedFd);

impl CtlSocket {
    fn new() -> Result<Self, NetError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a live, properly sized struct the request expects.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// `struct ifreq`: the name, then a 24-byte union.
#[repr(C, align(8))]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(ifname: &str) -> Result<Self, NetError> {
        let bytes = ifname.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(NetError::BadName(ifname.to_string()));
        }
        let mut name = [0u8; libc::IFNAMSIZ];
        name[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            name,
            data: [0; 24],
        })
    }

    fn set_sockaddr(&mut self, addr: Ipv4Addr) {
        self.data[..16].copy_from_slice(&sockaddr_in_bytes(addr));
    }

    fn sockaddr_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.data[4], self.data[5], self.data[6], self.data[7])
    }
}

/// A `struct sockaddr_in` as bytes (family in native order, port 0).
fn sockaddr_in_bytes(addr: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[4..8].copy_from_slice(&addr.octets());
    b
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let bytes = sockaddr_in_bytes(addr);
    // SAFETY: sockaddr is 16 bytes of plain data.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_INET as libc::sa_family_t;
    for (dst, src) in sa.sa_data.iter_mut().zip(&bytes[2..]) {
        *dst = *src as libc::c_char;
    }
    sa
}

/// `struct rtentry` as the kernel defines it (include/uapi/linux/route.h).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn ioctl_err<'a>(op: &'static str, ifname: &'a str) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError::Ioctl {
        op,
        ifname: ifname.to_string(),
        source,
    }
}

/// Sets IFF_UP on a device.
pub fn set_up(ifname: &str) -> Result<(), NetError> {
    set_up_flag(ifname, true)
}

/// Clears IFF_UP on a device (its routes go with it).
pub fn set_down(ifname: &str) -> Result<(), NetError> {
    set_up_flag(ifname, false)
}

fn set_up_flag(ifname: &str, up: bool) -> Result<(), NetError> {
    let s = CtlSocket::new()?;
    let mut req = IfReq::new(ifname)?;
    s.ioctl(libc::SIOCGIFFLAGS, &mut req)
        .map_err(ioctl_err("reading flags", ifname))?;
    let old = i16::from_ne_bytes([req.data[0], req.data[1]]);
    let flags = if up {
        old | libc::IFF_UP as i16
    } else {
        old & !(libc::IFF_UP as i16)
    };
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    s.ioctl(libc::SIOCSIFFLAGS, &mut req).map_err(ioctl_err(
        if up {
            "setting it up"
        } else {
            "setting it down"
        },
        ifname,
    ))
}

/// Sets the device's MAC address (`aa:bb:cc:dd:ee:ff`); the device should be
/// down (not every NIC takes a live change).
pub fn set_mac(ifname: &str, mac: &str) -> Result<(), NetError> {
    let octets: Vec<u8> = mac
        .split(':')
        .map(|o| u8::from_str_radix(o, 16))
        .collect::<Result<_, _>>()
        .ok()
        .filter(|o: &Vec<u8>| o.len() == 6)
        .ok_or_else(|| NetError::BadField {
            key: ifname.to_string(),
            field: "MAC address",
            value: mac.to_string(),
        })?;
    let s = CtlSocket::new()?;
    let mut req = IfReq::new(ifname)?;
    req.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
    req.data[2..8].copy_from_slice(&octets);
    s.ioctl(libc::SIOCSIFHWADDR, &mut req)
        .map_err(ioctl_err("setting the MAC address", ifname))
}

/// Whether the device is up.
pub fn is_up(ifname: &str) -> Result<bool, NetError> {
    let s = CtlSocket::new()?;
    let mut req = IfReq::new(ifname)?;
    s.ioctl(libc::SIOCGIFFLAGS, &mut req)
        .map_err(ioctl_err("reading flags", ifname))?;
    Ok(i16::from_ne_bytes([req.data[0], req.data[1]]) & libc::IFF_UP as i16 != 0)
}

/// Sets the MTU.
pub fn set_mtu(ifname: &str, mtu: u32) -> Result<(), NetError> {
    let s = CtlSocket::new()?;
    let mut req = IfReq::new(ifname)?;
    let mtu = libc::c_int::try_from(mtu).unwrap_or(libc::c_int::MAX);
    req.data[..4].copy_from_slice(&mtu.to_ne_bytes());
    s.ioctl(libc::SIOCSIFMTU, &mut req)
        .map_err(ioctl_err("setting the MTU", ifname))
}

/// Sets (replaces) the primary IPv4 address and its netmask.
pub fn set_ipv4(ifname: &str, net: Ipv4Net) -> Result<(), NetError> {
    let s = CtlSocket::new()?;
    let mut req = IfReq::new(ifname)?;
    req.set_sockaddr(net.addr);
    s.ioctl(libc::SIOCSIFADDR, &mut req)
        .map_err(ioctl_err("setting the address", ifname))?;
    let mut req = IfReq::new(ifname)?;
    req.set_sockaddr(net.netmask());
    s.ioctl(libc::SIOCSIFNETMASK, &mut req)
        .map_err(ioctl_err("setting the netmask", ifname))
}

/// The device's primary IPv4 address, if it has one.
pub fn ipv4_of(ifname: &str) -> Result<Option<Ipv4Addr>, NetError> {
    let s = CtlSocket::new()?;
    let mut req = IfReq::new(ifname)?;
    match s.ioctl(libc::SIOCGIFADDR, &mut req) {
        Ok(()) => Ok(Some(req.sockaddr_ipv4())),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(ioctl_err("reading the address", ifname)(e)),
    }
}

/// Adds the default route via `gateway` on `ifname` (an existing identical
/// route is fine).
pub fn add_default_route(ifname: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
    let s = CtlSocket::new()?;
    let mut dev = IfReq::new(ifname)?.name;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match s.ioctl(libc::SIOCADDRT, &mut rt) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(source) => Err(NetError::Route {
            gateway,
            ifname: ifname.to_string(),
            source,
        }),
    }
}

/// The devices of the current network namespace, in index order, with
/// their MAC addresses (asked of the kernel, so no /sys is needed).
pub fn list_links() -> Result<Vec<Link>, NetError> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, or null.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(NetError::List(io::Error::last_os_error()));
    }
    let mut names = Vec::new();
    let mut p = head;
    // SAFETY: walking the array until its terminator, then freeing it once.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            names.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    names.sort();
    let s = CtlSocket::new()?;
    let mut links = Vec::new();
    for (_, name) in names {
        let mut req = IfReq::new(&name)?;
        let mac = match s.ioctl(libc::SIOCGIFHWADDR, &mut req) {
            Ok(()) => req.data[2..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            Err(_) => String::new(),
        };
        links.push(Link { name, mac });
    }
    Ok(links)
}

/// Brings up the loopback device.
pub fn loopback_up() -> Result<(), NetError> {
    set_up("lo")
}

/// Makes MMDS reachable when the kernel's `ip=` configured nothing: the
/// first device gets [`MMDS_BOOTSTRAP_ADDR`] (replaced later by the
/// metadata's address). Returns the device used, if any was touched.
pub fn prepare_for_mmds(kernel_ip: Option<&IpConfig>) -> Result<Option<String>, NetError> {
    if kernel_ip.is_some() {
        return Ok(None);
    }
    let links = list_links()?;
    let link = links
        .iter()
        .find(|l| l.name != "lo")
        .ok_or(NetError::NoLinkForMmds)?;
    if ipv4_of(&link.name)?.is_none() {
        set_ipv4(&link.name, MMDS_BOOTSTRAP_ADDR)?;
    }
    set_up(&link.name)?;
    Ok(Some(link.name.clone()))
}

/// Applies one plan. With `kernel_configured`, the address and route set by
/// the kernel's `ip=` are kept.
pub fn apply(plan: &NetPlan, kernel_configured: bool) -> Result<(), NetError> {
    if let Some(mtu) = plan.mtu {
        set_mtu(&plan.ifname, mtu)?;
    }
    if !kernel_configured {
        if let Some(net) = plan.addr {
            set_ipv4(&plan.ifname, net)?;
        }
    }
    set_up(&plan.ifname)?;
    if !kernel_configured {
        if let Some(gw) = plan.gateway {
            add_default_route(&plan.ifname, gw)?;
        }
    }
    Ok(())
}

/// Loopback, then every metadata interface. Returns the VM's own address
/// (for /etc/hosts): the first planned address, else the `ip=` client
/// address, else whatever the first device carries.
pub fn configure(
    network: &GuestNetwork,
    kernel_ip: Option<&IpConfig>,
) -> Result<Option<Ipv4Addr>, NetError> {
    loopback_up()?;
    let links = list_links()?;
    let plans = plan(network, &links)?;
    for p in &plans {
        apply(p, kernel_ip.is_some())?;
    }
    if let Some(addr) = kernel_ip.and_then(|k| k.client) {
        return Ok(Some(addr));
    }
    if let Some(addr) = plans.iter().find_map(|p| p.addr.map(|n| n.addr)) {
        return Ok(Some(addr));
    }
    match links.iter().find(|l| l.name != "lo") {
        Some(l) => Ok(ipv4_of(&l.name)?.filter(|a| *a != MMDS_BOOTSTRAP_ADDR.addr)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::process::Command;

    fn iface(f: impl FnOnce(&mut GuestNetworkInterface)) -> GuestNetworkInterface {
        let mut i = GuestNetworkInterface::default();
        f(&mut i);
        i
    }

    #[test]
    fn prefix_lengths_in_all_forms() {
        assert_eq!(parse_prefix_len("24"), Some(24));
        assert_eq!(parse_prefix_len("255.255.255.0"), Some(24));
        assert_eq!(parse_prefix_len("ffffff00"), Some(24));
        assert_eq!(parse_prefix_len("ffff0000"), Some(16));
        assert_eq!(parse_prefix_len("0.0.0.0"), Some(0));
        assert_eq!(parse_prefix_len("255.255.255.255"), Some(32));
        assert_eq!(parse_prefix_len("33"), None);
        assert_eq!(parse_prefix_len("255.0.255.0"), None, "non-contiguous");
        assert_eq!(parse_prefix_len("zzzzzzzz"), None);
        assert_eq!(
            Ipv4Net {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 20
            }
            .netmask(),
            Ipv4Addr::new(255, 255, 240, 0)
        );
        assert_eq!(
            Ipv4Net {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0
            }
            .netmask(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn addresses_from_metadata() {
        let a = interface_address("k", &iface(|i| i.ip_addr = "192.168.127.2/24".into())).unwrap();
        assert_eq!(
            a,
            Some(Ipv4Net {
                addr: Ipv4Addr::new(192, 168, 127, 2),
                prefix: 24
            })
        );
        let a = interface_address(
            "k",
            &iface(|i| {
                i.ip = "10.0.0.5".into();
                i.ip_mask = "ffff0000".into();
            }),
        )
        .unwrap();
        assert_eq!(
            a,
            Some(Ipv4Net {
                addr: Ipv4Addr::new(10, 0, 0, 5),
                prefix: 16
            })
        );
        assert_eq!(interface_address("k", &iface(|_| {})).unwrap(), None);
        for bad in ["192.168.127.2", "192.168.127.2/40", "nope/24"] {
            assert!(matches!(
                interface_address("k", &iface(|i| i.ip_addr = bad.into())),
                Err(NetError::BadField {
                    field: "ip-addr",
                    ..
                })
            ));
        }
        assert!(interface_address(
            "k",
            &iface(|i| {
                i.ip = "10.0.0.5".into();
                i.ip_mask = "255.0.255.0".into();
            })
        )
        .is_err());
    }

    fn links() -> Vec<Link> {
        vec![
            Link {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
            },
            Link {
                name: "eth0".into(),
                mac: "aa:bb:cc:00:00:01".into(),
            },
            Link {
                name: "eth1".into(),
                mac: "aa:bb:cc:00:00:02".into(),
            },
        ]
    }

    fn net(entries: Vec<(&str, GuestNetworkInterface)>) -> GuestNetwork {
        GuestNetwork {
            interfaces: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn plan_matches_by_mac_ifname_or_key() {
        let n = net(vec![
            (
                "AA:BB:CC:00:00:02",
                iface(|i| {
                    i.ip_addr = "10.0.0.2/24".into();
                    i.gateway = "10.0.0.1".into();
                    i.mtu = Some(1400);
                }),
            ),
            ("x", iface(|i| i.ifname = "eth0".into())),
        ]);
        let p = plan(&n, &links()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].ifname, "eth1");
        assert_eq!(p[0].gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(p[0].mtu, Some(1400));
        assert_eq!(p[1].ifname, "eth0");
        assert_eq!(
            plan(&net(vec![("eth1", iface(|_| {}))]), &links()).unwrap()[0].ifname,
            "eth1"
        );
    }

    #[test]
    fn plan_single_entry_single_device_and_errors() {
        let one = vec![links()[0].clone(), links()[1].clone()];
        let p = plan(&net(vec![("whatever", iface(|_| {}))]), &one).unwrap();
        assert_eq!(p[0].ifname, "eth0");
        let e = plan(&net(vec![("whatever", iface(|_| {}))]), &links()).unwrap_err();
        assert!(matches!(e, NetError::NoSuchLink { .. }));
        assert!(e.to_string().contains("eth1 aa:bb:cc:00:00:02"));
        let e = plan(
            &net(vec![("eth0", iface(|i| i.gateway = "bad".into()))]),
            &links(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            NetError::BadField {
                field: "gateway",
                ..
            }
        ));
    }

    /// Runs `f` on a thread inside a fresh network namespace (network
    /// namespaces are per thread; the namespace goes away with the thread).
    fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                io::Error::last_os_error()
            );
            f()
        })
        .join()
        .unwrap()
    }

    fn ip(args: &str) -> String {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn configures_a_veth_in_a_network_namespace() {
        in_netns(|| {
            ip("link add v0 type veth peer name v1");
            ip("link set v1 up");
            let mac = ip("-br link show v0")
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_string();
            let n = net(vec![(
                mac.as_str(),
                iface(|i| {
                    i.ip_addr = "10.99.0.2/24".into();
                    i.gateway = "10.99.0.1".into();
                    i.mtu = Some(1400);
                    i.nameservers = "10.99.0.1".into();
                }),
            )]);
            assert!(!is_up("lo").unwrap());
            let own = configure(&n, None).unwrap();
            assert_eq!(own, Some(Ipv4Addr::new(10, 99, 0, 2)));
            assert!(is_up("lo").unwrap());
            assert!(is_up("v0").unwrap());
            assert_eq!(ipv4_of("v0").unwrap(), Some(Ipv4Addr::new(10, 99, 0, 2)));
            assert!(ip("-4 -o addr show dev v0").contains("10.99.0.2/24"));
            assert!(ip("link show v0").contains("mtu 1400"));
            assert!(ip("-4 route show default").contains("default via 10.99.0.1 dev v0"));
            // Running again is harmless (route already there).
            configure(&n, None).unwrap();

            // A gateway outside the subnet is a clear error.
            let bad = net(vec![(
                mac.as_str(),
                iface(|i| {
                    i.ip_addr = "10.98.0.2/24".into();
                    i.gateway = "10.97.0.1".into();
                }),
            )]);
            ip("route flush default");
            assert!(matches!(configure(&bad, None), Err(NetError::Route { .. })));
        });
    }

    #[test]
    fn kernel_ip_keeps_addresses_but_sets_mtu() {
        in_netns(|| {
            ip("link add v0 type veth peer name v1");
            ip("addr add 10.77.0.2/24 dev v0");
            let n = net(vec![(
                "v0",
                iface(|i| {
                    i.ip_addr = "10.66.0.2/24".into();
                    i.mtu = Some(1300);
                }),
            )]);
            let k = IpConfig::parse("10.77.0.2::10.77.0.1:255.255.255.0::v0:off").unwrap();
            let own = configure(&n, Some(&k)).unwrap();
            assert_eq!(own, Some(Ipv4Addr::new(10, 77, 0, 2)));
            let addrs = ip("-4 -o addr show dev v0");
            assert!(addrs.contains("10.77.0.2/24") && !addrs.contains("10.66.0.2"));
            assert!(ip("link show v0").contains("mtu 1300"));
        });
    }

    #[test]
    fn mmds_bootstrap_address_is_replaced_by_the_real_one() {
        in_netns(|| {
            assert!(matches!(
                prepare_for_mmds(None),
                Err(NetError::NoLinkForMmds)
            ));
            ip("link add v0 type veth peer name v1");
            // The first device by index (the veth peer is created first).
            let dev = prepare_for_mmds(None).unwrap().unwrap();
            assert_eq!(dev, list_links().unwrap()[1].name);
            assert!(ip(&format!("-4 -o addr show dev {dev}")).contains("169.254.0.1/16"));
            assert!(ip("-4 route get 169.254.169.254").contains(&format!("dev {dev}")));
            let n = net(vec![(
                dev.as_str(),
                iface(|i| i.ip_addr = "10.55.0.2/24".into()),
            )]);
            configure(&n, None).unwrap();
            let addrs = ip(&format!("-4 -o addr show dev {dev}"));
            assert!(addrs.contains("10.55.0.2/24"), "{addrs}");
            assert!(!addrs.contains("169.254.0.1"), "{addrs}");
            let k = IpConfig::parse("dhcp").unwrap();
            assert_eq!(prepare_for_mmds(Some(&k)).unwrap(), None);
        });
    }
}
