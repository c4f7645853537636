//! Link, address and traffic-control operations over rtnetlink, run inside a
//! chosen network namespace.
//!
//! Why netlink rather than the `ip`/`tc` commands: requests are structured
//! (no parsing of command output that changes between iproute2 releases),
//! failures come back as kernel errno values we can act on (EEXIST, ENODEV),
//! nothing depends on a binary being installed or on `$PATH`, and a socket
//! opened on a thread that entered a namespace stays bound to it, so we never
//! fork just to switch namespace.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcMirrorActionType, TcOption,
};
use rtnetlink::{Handle, LinkUnspec};

use crate::error::{CniError, Result};
use crate::netns::in_netns;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks a Linux interface name.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidName {
            what: "interface name",
            value: name.to_string(),
            max: IFNAME_MAX,
        })
    }
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// `veth`, `bridge`, `tun`, ... (`None` for e.g. loopback).
    pub kind: Option<String>,
    /// Index of the bridge (or other master) the link is enslaved to.
    pub controller: Option<u32>,
    pub up: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            kind: None,
            controller: None,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    link.mac = Some(mac);
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(kind_name(k));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Tun => "tun".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) fn ns_label(netns: Option<&Path>) -> String {
    netns.map_or_else(
        || "the current namespace".into(),
        |p| p.display().to_string(),
    )
}

pub(crate) fn nl_err(
    op: impl Into<String>,
    netns: Option<&Path>,
    e: impl std::fmt::Display,
) -> CniError {
    CniError::Netlink {
        op: op.into(),
        netns: ns_label(netns),
        reason: e.to_string(),
    }
}

/// Whether a netlink error carries errno `code`.
pub(crate) fn is_errno(e: &rtnetlink::Error, code: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -code)
}

/// Runs an async netlink job on a fresh connection inside `netns`.
pub(crate) fn run<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    let job = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| nl_err("start runtime", netns, e))?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| nl_err("open socket", netns, e))?;
            let task = tokio::spawn(conn);
            let out = f(handle).await;
            task.abort();
            out
        })
    };
    match netns {
        Some(_) => in_netns(netns, job)?,
        // A thread of our own even here: the caller may be inside a tokio
        // runtime, where starting another one on its thread panics.
        None => std::thread::scope(|s| s.spawn(job).join())
            .unwrap_or_else(|p| std::panic::resume_unwind(p)),
    }
}

pub(crate) async fn link_by_name(
    h: &Handle,
    name: &str,
) -> std::result::Result<Option<Link>, rtnetlink::Error> {
    let mut stream = h.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) async fn all_links(h: &Handle) -> std::result::Result<Vec<Link>, rtnetlink::Error> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

/// The link named `name` in `netns`, if any.
pub fn get_link(netns: Option<&Path>, name: &str) -> Result<Option<Link>> {
    validate_ifname(name)?;
    run(netns, |h| async move {
        link_by_name(&h, name)
            .await
            .map_err(|e| nl_err(format!("get link {name}"), netns, e))
    })
}

/// Every link in `netns`.
pub fn list_links(netns: Option<&Path>) -> Result<Vec<Link>> {
    run(netns, |h| async move {
        all_links(&h)
            .await
            .map_err(|e| nl_err("list links", netns, e))
    })
}

/// Deletes link `name` in `netns`; returns whether it existed.
pub fn delete_link(netns: Option<&Path>, name: &str) -> Result<bool> {
    validate_ifname(name)?;
    run(netns, |h| async move {
        let op = || format!("delete link {name}");
        let Some(link) = link_by_name(&h, name)
            .await
            .map_err(|e| nl_err(op(), netns, e))?
        else {
            return Ok(false);
        };
        match h.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(op(), netns, e)),
        }
    })
}

/// Sets MTU and up on link `index`.
pub(crate) async fn set_up_with_mtu(
    h: &Handle,
    index: u32,
    mtu: u32,
) -> std::result::Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
}

/// The address messages of link `name` (`op` names the operation in
/// errors).
async fn addresses_of(
    h: &Handle,
    netns: Option<&Path>,
    name: &str,
    op: &dyn Fn() -> String,
) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>> {
    let link = link_by_name(h, name)
        .await
        .map_err(|e| nl_err(op(), netns, e))?
        .ok_or_else(|| nl_err(op(), netns, "no such interface"))?;
    let msgs: Vec<rtnetlink::packet_route::address::AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err(op(), netns, e))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == link.index)
        .collect())
}

/// Addresses of link `name` in `netns` (for `IFACE:HOST:GUEST` port specs).
pub fn link_addresses(netns: Option<&Path>, name: &str) -> Result<Vec<IpAddr>> {
    validate_ifname(name)?;
    run(netns, |h| async move {
        let op = || format!("addresses of {name}");
        let msgs = addresses_of(&h, netns, name, &op).await?;
        let mut out = Vec::new();
        for m in &msgs {
            // Local is the interface's own address on point-to-point links.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(addr) {
                out.push(ip);
            }
        }
        Ok(out)
    })
}

/// An interface's IPv4 configuration as a network namespace has it (what a
/// VM taking over the interface must use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    /// The main table's default route, if any.
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// The first IPv4 address of link `name` in `netns` with its prefix, and
/// the namespace's default gateway; `None` when the link has no IPv4
/// address.
pub fn ipv4_config(netns: Option<&Path>, name: &str) -> Result<Option<Ipv4Config>> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    validate_ifname(name)?;
    run(netns, |h| async move {
        let op = || format!("IPv4 configuration of {name}");
        let msgs = addresses_of(&h, netns, name, &op).await?;
        let found = msgs.iter().find_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                _ => None,
            })
        });
        let Some((address, prefix)) = found else {
            return Ok(None);
        };
        let routes: Vec<_> = h
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(op(), netns, e))?;
        let gateway = routes
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                    _ => None,
                })
            });
        Ok(Some(Ipv4Config {
            address,
            prefix,
            gateway,
        }))
    })
}

/// The u32 + mirred-redirect filters on `index`'s ingress, as
/// `(protocol in host order, target ifindex)`.
pub(crate) async fn ingress_redirects(
    h: &Handle,
    index: u32,
) -> std::result::Result<Vec<(u16, u32)>, rtnetlink::Error> {
    let msgs: Vec<_> = h
        .traffic_filter(index as i32)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for m in &msgs {
        let protocol = u16::from_be((m.header.info & 0xffff) as u16);
        for attr in &m.attributes {
            let TcAttribute::Options(opts) = attr else {
                continue;
            };
            for opt in opts {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
                    continue;
                };
                for action in actions {
                    for a in &action.attributes {
                        let TcActionAttribute::Options(aopts) = a else {
                            continue;
                        };
                        for ao in aopts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao {
                                if p.eaction == TcMirrorActionType::EgressRedir {
                                    out.push((protocol, p.ifindex));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        for ok in ["eth0", "tap0", "fb-machines", "a.b_c-d"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a:b", "a b", "0123456789abcdef", "..", "."] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn works_from_inside_a_tokio_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let links = rt.block_on(async { list_links(None) }).unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0xde, 0xad, 0, 1, 0xb, 0xff]),
            "de:ad:00:01:0b:ff"
        );
    }
}
