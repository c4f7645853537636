//! The guest agent: what `firebuild exec`, `cp` and health checks talk to.
//!
//! PID 1 forks it once the VM is configured, before the entrypoint starts
//! (in both init modes: with `init-mode: image` it keeps running next to
//! the image's own init). It is a process of its own, so PID 1's
//! supervision loop stays single-threaded and a fault in the agent cannot
//! take the VM down: its panics end only the agent. It serves the host over
//! every transport it finds ([`transport`]): Firecracker's vsock, and QEMU's
//! virtio-serial ports. Nothing listens on the guest's network.
//!
//! Each connection is served by [`conn`]; processes are started by
//! [`exec`] with the image's environment, USER and WORKDIR; health checks
//! run in [`health`]; resource use is read by [`stats`].

pub mod conn;
pub mod exec;
pub mod health;
pub mod pod;
pub mod reidentify;
pub mod stats;
pub mod transport;

use std::sync::{Arc, Mutex};

use firebuild_metadata::GuestMetadata;

use crate::log;

/// What every part of the agent needs: the VM's metadata and hostname
/// (which a restore from a snapshot changes).
pub struct Context {
    pub meta: GuestMetadata,
    pub hostname: Mutex<String>,
    pub health: health::Health,
}

/// Forks the agent; returns its pid in PID 1, never returns in the agent.
pub fn start(meta: &GuestMetadata, hostname: &str) -> Option<libc::pid_t> {
    // SAFETY: PID 1 is single-threaded here, so the child may do anything.
    match unsafe { libc::fork() } {
        -1 => {
            log::warn(format_args!(
                "starting the agent: {}",
                std::io::Error::last_os_error()
            ));
            None
        }
        0 => run(meta.clone(), hostname.to_owned()),
        pid => Some(pid),
    }
}

/// The agent process.
fn run(meta: GuestMetadata, hostname: String) -> ! {
    // A panic here ends the agent, not the VM (PID 1's hook powers off).
    std::panic::set_hook(Box::new(|info| {
        log::error(format_args!("agent: internal error: {info}"));
        // SAFETY: ending this process.
        unsafe { libc::_exit(1) }
    }));
    // SAFETY: prctl and sigprocmask with constant arguments. SIGIO (host
    // clients on virtio-serial ports) is collected by a thread; blocked
    // here, before any thread starts, so it never kills the agent.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"fb-agent".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let health = health::Health::new(meta.healthcheck.as_ref());
    let ctx = Arc::new(Context {
        meta,
        hostname: Mutex::new(hostname),
        health,
    });
    health::spawn_checker(&ctx);
    transport::serve(ctx)
}
