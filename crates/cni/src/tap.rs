//! The tap a VMM attaches to, wired to the chain's veth inside the VM's
//! namespace with tc ingress `mirred` redirects both ways — the job of the
//! `tc-redirect-tap` CNI plugin, done here in the runtime so any bridge
//! conflist works without an extra plugin binary to install.
//!
//! Frames arriving on the veth (from the bridge) are stolen at ingress and
//! sent out of the tap (to the VMM); frames the VMM writes arrive at the tap's
//! ingress and are sent out of the veth. The namespace's own IP stack never
//! sees them, so the guest can use the veth's MAC and the CNI address.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{CniError, Result};
use crate::netlink::{self, format_mac, is_errno, nl_err, validate_ifname, Link};
use crate::netns::in_netns;

/// Who may open the tap without CAP_NET_ADMIN (a jailed Firecracker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOwner {
    pub uid: u32,
    pub gid: u32,
}

/// The veth's properties the VM takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapWiring {
    pub tap_name: String,
    pub veth_name: String,
    /// The veth's MAC: the guest must use it, since the bridge side and the
    /// CNI plugins know the attachment by it.
    pub mac: String,
    pub mtu: u32,
}

/// `struct ifreq` with the flags member, as TUNSETIFF wants it.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a persistent tap `name` inside `netns`.
pub fn create_tap(netns: &Path, name: &str, owner: Option<TapOwner>) -> Result<()> {
    validate_ifname(name)?;
    let label = netns.display().to_string();
    let tap_err = |op: &'static str| {
        let label = label.clone();
        move |source: io::Error| CniError::Tap {
            name: name.to_string(),
            netns: label,
            op,
            source,
        }
    };
    in_netns(Some(netns), || -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(tap_err("open /dev/net/tun (load the tun module?)"))?;
        let fd = file.as_raw_fd();
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req`
        // matches in layout and size; the fd is a valid /dev/net/tun handle.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(tap_err("TUNSETIFF")(io::Error::last_os_error()));
        }
        if let Some(o) = owner {
            // SAFETY: these ioctls take a plain integer argument.
            if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, o.uid as libc::c_ulong) } < 0 {
                return Err(tap_err("TUNSETOWNER")(io::Error::last_os_error()));
            }
            // SAFETY: as above.
            if unsafe { libc::ioctl(fd, libc::TUNSETGROUP, o.gid as libc::c_ulong) } < 0 {
                return Err(tap_err("TUNSETGROUP")(io::Error::last_os_error()));
            }
        }
        // SAFETY: as above; persist keeps the device after we close the fd.
        if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(tap_err("TUNSETPERSIST")(io::Error::last_os_error()));
        }
        Ok(())
    })??;
    tracing::debug!(tap = name, netns = %netns.display(), "created tap");
    Ok(())
}

/// Wires tap `tap` and veth `veth` (both in `netns`) to each other: the tap
/// takes the veth's MTU and goes up, and each gets an ingress qdisc with a
/// match-all u32 filter redirecting to the other. Returns the veth's MAC/MTU.
pub fn wire_tap(netns: &Path, veth: &str, tap: &str) -> Result<TapWiring> {
    validate_ifname(veth)?;
    validate_ifname(tap)?;
    let ns = Some(netns);
    netlink::run(ns, |h| async move {
        let get = |name: &'static str, ifname: &str| {
            let h = h.clone();
            let ifname = ifname.to_string();
            async move {
                netlink::link_by_name(&h, &ifname)
                    .await
                    .map_err(|e| nl_err(format!("get {name} {ifname}"), ns, e))?
                    .ok_or_else(|| nl_err(format!("get {name} {ifname}"), ns, "no such interface"))
            }
        };
        let v: Link = get("veth", veth).await?;
        let t: Link = get("tap", tap).await?;
        let mac = v
            .mac
            .ok_or_else(|| nl_err(format!("read MAC of {veth}"), ns, "no Ethernet address"))?;
        netlink::set_up_with_mtu(&h, t.index, v.mtu)
            .await
            .map_err(|e| nl_err(format!("set {tap} up with MTU {}", v.mtu), ns, e))?;
        for (from, to) in [(&v, &t), (&t, &v)] {
            match h.qdisc().add(from.index as i32).ingress().execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(nl_err(format!("add ingress qdisc on {}", from.name), ns, e)),
            }
            let op = || format!("add redirect filter {} -> {}", from.name, to.name);
            h.traffic_filter(from.index as i32)
                .add()
                .ingress()
                .protocol((libc::ETH_P_ALL as u16).to_be()) // tc wants network order
                .redirect(to.index)
                .map_err(|e| nl_err(op(), ns, e))?
                .execute()
                .await
                .map_err(|e| nl_err(op(), ns, e))?;
        }
        Ok(TapWiring {
            tap_name: tap.to_string(),
            veth_name: veth.to_string(),
            mac: format_mac(&mac),
            mtu: v.mtu,
        })
    })
}

/// Undoes [`wire_tap`] and removes the tap, for a namespace that outlives
/// the VM (one the caller owns): the veth's ingress qdisc (and with it the
/// redirect) goes, so the namespace's own stack sees its traffic again.
pub fn unwire_tap(netns: &Path, veth: &str, tap: &str) -> Result<()> {
    validate_ifname(veth)?;
    validate_ifname(tap)?;
    let ns = Some(netns);
    netlink::delete_link(ns, tap)?;
    netlink::run(ns, |h| async move {
        let Some(v) = netlink::link_by_name(&h, veth)
            .await
            .map_err(|e| nl_err(format!("get veth {veth}"), ns, e))?
        else {
            return Ok(());
        };
        let mut del = h.qdisc().del(v.index as i32);
        let m = del.message_mut();
        m.header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
        m.header.handle = rtnetlink::packet_route::tc::TcHandle::from(0xffff0000);
        match del.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(nl_err(format!("delete the ingress qdisc of {veth}"), ns, e)),
        }
    })
}

/// Verifies the wiring made by [`wire_tap`]: both links exist, the tap is
/// up, and each one's ingress redirects every protocol to the other.
pub fn check_tap(netns: &Path, veth: &str, tap: &str) -> Result<()> {
    let ns = Some(netns);
    netlink::run(ns, |h| async move {
        let mut links = Vec::new();
        for name in [veth, tap] {
            let link = netlink::link_by_name(&h, name)
                .await
                .map_err(|e| nl_err(format!("check {name}"), ns, e))?
                .ok_or_else(|| nl_err(format!("check {name}"), ns, "missing"))?;
            links.push(link);
        }
        if !links[1].up {
            return Err(nl_err(format!("check {tap}"), ns, "tap is down"));
        }
        for (from, to) in [(&links[0], &links[1]), (&links[1], &links[0])] {
            let op = || format!("check redirect {} -> {}", from.name, to.name);
            let redirects = netlink::ingress_redirects(&h, from.index)
                .await
                .map_err(|e| nl_err(op(), ns, e))?;
            if !redirects.contains(&(libc::ETH_P_ALL as u16, to.index)) {
                return Err(nl_err(
                    op(),
                    ns,
                    format!("no ingress filter redirecting all traffic (found {redirects:?})"),
                ));
            }
        }
        Ok(())
    })
}

/// A tap some plugin of the chain already made in `netns` (e.g. the chain
/// includes `tc-redirect-tap`): a `tun`-kind link other than `veth`.
pub fn find_existing_tap(netns: &Path, veth: &str) -> Result<Option<String>> {
    Ok(netlink::list_links(Some(netns))?
        .into_iter()
        .find(|l| l.name != veth && l.kind.as_deref() == Some("tun"))
        .map(|l| l.name))
}
