//! The seam to the network layer. The caller (CNI) sets the network up and
//! hands the runtime a [`crate::NetworkAttachment`]; the runtime starts the
//! VMM inside its namespace, records it in the run metadata, and calls a
//! [`NetworkReleaser`] when the VM is removed (`purge`, `--rm`).

use std::os::fd::FromRawFd;

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

/// Sets network device `ifname` of the network namespace at `netns` up or
/// down (IFF_UP), from a thread of its own that enters the namespace, so
/// this process's namespace never changes.
///
/// A fork is resumed with its tap down: until its agent has given it its
/// own MAC and address, whatever it sends (QEMU's and the guest's
/// post-migration announcements, retransmissions) carries the source's
/// identity and would teach the bridge to send the source's traffic to it.
pub fn set_link_up(netns: &std::path::Path, ifname: &str, up: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns)?;
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in device name"))?;
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("device name {ifname:?} is too long"),
        ));
    }
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<()> {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(rc)
                }
            };
            // SAFETY: setns on this thread only (a network namespace is
            // per thread); socket and ioctl with a valid, zeroed ifreq.
            unsafe {
                check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
                let sock = check(libc::socket(
                    libc::AF_INET,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    0,
                ))?;
                let sock = std::os::fd::OwnedFd::from_raw_fd(sock);
                let mut req: libc::ifreq = std::mem::zeroed();
                for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
                    *dst = *src as libc::c_char;
                }
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
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}
