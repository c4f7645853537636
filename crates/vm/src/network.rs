//! The seam to the network layer. A [`NetworkProvider`] (CNI in the
//! `firebuild` CLI) sets a VM's network up when [`crate::Runtime::launch`]
//! starts it, as [`crate::RunSpec::network_choice`] asks, and releases it
//! when the VM is removed (`purge`, `--rm`) or its start fails. The runtime
//! starts the VMM inside the network's namespace and records the
//! [`crate::NetworkAttachment`] in the run metadata. A caller that sets
//! networks up itself hands the attachment over instead
//! ([`NetworkChoice::Attached`], or [`crate::PreparedVm::attach_network`]).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use async_trait::async_trait;

use crate::spec::NetworkAttachment;
use crate::state::RunMetadata;

/// Error type of network hooks: the network layer's own error, boxed.
pub type NetworkError = Box<dyn std::error::Error + Send + Sync>;

/// Tears down what the network layer set up for a VM (CNI DEL, namespace
/// removal). Called only once the VM no longer runs; must be idempotent,
/// because a failed purge is retried by the next one.
#[async_trait]
pub trait NetworkReleaser: Send + Sync {
    async fn release(
        &self,
        vm: &RunMetadata,
        attachment: &NetworkAttachment,
    ) -> Result<(), NetworkError>;
}

/// Sets VM networks up; releases them as a [`NetworkReleaser`].
#[async_trait]
pub trait NetworkProvider: NetworkReleaser {
    /// Sets up `request` for VM `vm_id`. On error nothing of it is left.
    async fn attach(
        &self,
        vm_id: &str,
        request: &NetworkRequest,
    ) -> Result<NetworkAttachment, NetworkError>;
}

/// The network a VM asks its [`NetworkProvider`] for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// `None`: the provider's default network.
    pub network: Option<String>,
    /// A fixed address instead of one the network assigns.
    pub ip: Option<IpAddr>,
    /// Published ports, in the provider's notation (`8080:80/tcp`).
    pub ports: Vec<String>,
}

/// Whether a VM gets a network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkChoice {
    /// None, unless its VMM needs one ([`crate::Vmm::needs_network`]):
    /// then the provider's default network.
    #[default]
    Auto,
    /// None; refused by a VMM that needs one.
    Off,
    /// The provider sets this up at launch.
    On(NetworkRequest),
    /// A network the caller set up already.
    Attached(NetworkAttachment),
}

impl NetworkChoice {
    /// What to ask the provider for, for a VMM that does or does not need
    /// a network; `Err` when it needs one and none is allowed.
    pub fn request(&self, vmm_needs_network: bool) -> Result<Option<NetworkRequest>, String> {
        match self {
            NetworkChoice::On(request) => Ok(Some(request.clone())),
            NetworkChoice::Attached(_) => Ok(None),
            NetworkChoice::Auto if vmm_needs_network => Ok(Some(NetworkRequest::default())),
            NetworkChoice::Auto => Ok(None),
            NetworkChoice::Off if vmm_needs_network => Err(
                "this VMM serves the guest metadata over the network (MMDS), so its VMs need one: give the VM a network, or use --vmm qemu".into(),
            ),
            NetworkChoice::Off => Ok(None),
        }
    }

    /// The network the caller set up, if it did.
    pub fn attached(&self) -> Option<&NetworkAttachment> {
        match self {
            NetworkChoice::Attached(attachment) => Some(attachment),
            _ => None,
        }
    }
}

/// Runs `f` on a thread of its own that entered the network namespace at
/// `netns`, so this process's namespace never changes.
fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only (a network namespace is per
            // thread) with an fd of a namespace file.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_ifname(ifname: &str) -> std::io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{ifname:?} is not a network device name"),
        ));
    }
    Ok(())
}

/// A zeroed `struct ifreq` naming `ifname` (checked by [`check_ifname`]).
fn ifreq(ifname: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req
}

/// Sets network device `ifname` of the network namespace at `netns` up or
/// down (IFF_UP).
///
/// A fork is resumed with its tap down: until its agent has given it its
/// own MAC and address, whatever it sends (QEMU's and the guest's
/// post-migration announcements, retransmissions) carries the source's
/// identity and would teach the bridge to send the source's traffic to it.
pub fn set_link_up(netns: &Path, ifname: &str, up: bool) -> std::io::Result<()> {
    check_ifname(ifname)?;
    in_netns(netns, || {
        let mut req = ifreq(ifname);
        // SAFETY: socket, then ioctls with a valid ifreq naming the device.
        unsafe {
            let sock = check(libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
            ))?;
            let sock = OwnedFd::from_raw_fd(sock);
            check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
            let flags = req.ifr_ifru.ifru_flags;
            req.ifr_ifru.ifru_flags = if up {
                flags | libc::IFF_UP as libc::c_short
            } else {
                flags & !(libc::IFF_UP as libc::c_short)
            };
            check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
        }
        Ok(())
    })
}

/// Makes `uid`/`gid` the owner of the persistent tap `tap` in the network
/// namespace at `netns`, so a VMM running as that user (a jailed
/// Firecracker with an id of its own) may attach to it without
/// CAP_NET_ADMIN.
pub fn set_tap_owner(netns: &Path, tap: &str, uid: u32, gid: u32) -> std::io::Result<()> {
    check_ifname(tap)?;
    in_netns(netns, || {
        let mut req = ifreq(tap);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let fd = tun.as_raw_fd();
        // SAFETY: TUNSETIFF reads and writes the ifreq; TUNSETOWNER and
        // TUNSETGROUP take plain integers. Closing the fd leaves a
        // persistent tap in place.
        unsafe {
            check(libc::ioctl(fd, libc::TUNSETIFF, &mut req))?;
            check(libc::ioctl(fd, libc::TUNSETOWNER, uid as libc::c_ulong))?;
            check(libc::ioctl(fd, libc::TUNSETGROUP, gid as libc::c_ulong))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmm_that_needs_a_network_gets_the_default_one_unless_refused() {
        let named = NetworkRequest {
            network: Some("lan".into()),
            ..Default::default()
        };
        assert_eq!(NetworkChoice::Auto.request(false), Ok(None));
        assert_eq!(
            NetworkChoice::Auto.request(true),
            Ok(Some(NetworkRequest::default()))
        );
        assert_eq!(NetworkChoice::Off.request(false), Ok(None));
        assert!(NetworkChoice::Off
            .request(true)
            .unwrap_err()
            .contains("MMDS"));
        let on = NetworkChoice::On(named.clone());
        assert_eq!(on.request(false), Ok(Some(named.clone())));
        assert_eq!(on.request(true), Ok(Some(named)));
    }
}
