//! A fork's new identity, applied right after it resumed from a snapshot:
//! the clock first (everything after it logs the right time), then the
//! entropy pool, the hostname and the network address.
//!
//! Guest processes keep running: a server bound to the wildcard address
//! answers on the new one at once; connections open at snapshot time and
//! sockets bound to the old address are the source's and stop working.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use firebuild_agent_proto::{Identity, NetworkIdentity, Reidentified};

use super::Context;
use crate::files;
use crate::network::{self, Ipv4Net};

/// `_IOW('R', 0x03, int[2])`: mix bytes into the pool and credit them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Applies `identity`; stops at the first part that fails, saying which.
pub fn apply(ctx: &Context, identity: &Identity) -> Result<Reidentified, String> {
    let clock_step_ms =
        set_clock(identity.unix_time_ns).map_err(|e| format!("setting the clock: {e}"))?;
    reseed(&identity.entropy).map_err(|e| format!("reseeding the entropy pool: {e}"))?;
    files::validate_hostname(&identity.hostname).map_err(|e| e.to_string())?;
    crate::init::set_kernel_hostname(&identity.hostname).map_err(|e| e.to_string())?;
    let interface = match &identity.network {
        Some(net) => Some(readdress(net)?),
        None => None,
    };
    let address = identity
        .network
        .as_ref()
        .and_then(|n| n.address.parse::<Ipv4Addr>().ok());
    let root = Path::new("/");
    files::write_hostname(root, &identity.hostname).map_err(|e| e.to_string())?;
    files::write_hosts(root, &identity.hostname, address.map(IpAddr::V4))
        .map_err(|e| e.to_string())?;
    *ctx.hostname.lock().unwrap_or_else(|e| e.into_inner()) = identity.hostname.clone();
    Ok(Reidentified {
        interface,
        clock_step_ms,
    })
}

/// Steps CLOCK_REALTIME to the host's time; returns the step.
fn set_clock(unix_time_ns: u64) -> io::Result<i64> {
    let now = realtime_ns()?;
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(
        (unix_time_ns as i128 - now as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
            / 1_000_000,
    )
}

fn realtime_ns() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Credits `entropy` to the pool and reseeds the CRNG, so the fork's
/// random numbers part from the source's and from every other fork's.
fn reseed(entropy: &[u8]) -> io::Result<()> {
    if entropy.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the host sent no entropy",
        ));
    }
    let random = File::options().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as libc::c_int).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as libc::c_int).to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(8 + entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: the kernel reads buf_size bytes after the two ints, all in `info`.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the source's interface the fork's MAC, address and route.
/// Returns the interface's name.
fn readdress(net: &NetworkIdentity) -> Result<String, String> {
    let address: Ipv4Addr = net
        .address
        .parse()
        .map_err(|_| format!("bad address {:?}", net.address))?;
    let gateway: Option<Ipv4Addr> = net
        .gateway
        .as_deref()
        .map(|g| g.parse().map_err(|_| format!("bad gateway {g:?}")))
        .transpose()?;
    let links = network::list_links().map_err(|e| e.to_string())?;
    let link = links
        .iter()
        .find(|l| l.mac.eq_ignore_ascii_case(&net.previous_mac))
        .or_else(|| links.iter().find(|l| l.name != "lo"))
        .ok_or("the VM has no network device")?;
    let name = link.name.as_str();
    let step = |e: network::NetError| e.to_string();
    // Down first: the MAC of a NIC without a control queue only changes
    // while it is down; its old routes go with it.
    network::set_down(name).map_err(step)?;
    network::set_mac(name, &net.mac).map_err(step)?;
    network::set_ipv4(
        name,
        Ipv4Net {
            addr: address,
            prefix: net.prefix,
        },
    )
    .map_err(step)?;
    if let Some(mtu) = net.mtu {
        network::set_mtu(name, mtu).map_err(step)?;
    }
    network::set_up(name).map_err(step)?;
    if let Some(gw) = gateway {
        network::add_default_route(name, gw).map_err(step)?;
    }
    let nameservers: Vec<IpAddr> = net
        .nameservers
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    files::write_resolv(Path::new("/"), &nameservers).map_err(|e| e.to_string())?;
    Ok(name.to_owned())
}
