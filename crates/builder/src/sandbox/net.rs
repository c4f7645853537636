//! The default build network: the step's own network namespace, behind a
//! user-mode NAT (slirp4netns) whose sockets cannot reach the host
//! ([`super::egress`]).
//!
//! Inside, `tap0` has 10.0.2.100/24, the gateway is 10.0.2.2 (not mapped to
//! the host's loopback: `--disable-host-loopback`) and DNS is 10.0.2.3,
//! which slirp4netns forwards to the host's resolver. slirp4netns runs
//! sandboxed (`--enable-sandbox --enable-seccomp`), exits when its exit pipe
//! closes (the step ended, or the builder died) and dies with the builder
//! thread (PDEATHSIG).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::egress::EgressCgroup;
use crate::error::{BuildError, Result};

/// What RUN's `/etc/resolv.conf` says in the default network.
pub const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// The NAT binary (Debian package `slirp4netns`).
pub const SLIRP: &str = "slirp4netns";

/// How long the NAT may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running NAT for one step; stopped on drop.
pub struct Nat {
    /// `None` once dropped.
    child: Option<Child>,
    _exit_w: OwnedFd,
}

/// Where slirp4netns is, or the error that names the package.
pub fn find_slirp() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(SLIRP))
        .find(|p| p.is_file())
        .ok_or(BuildError::MissingTool {
            tool: SLIRP,
            package: "slirp4netns",
            why: "RUN steps get their network through it (or build with --network none)",
        })
}

impl Nat {
    /// Starts slirp4netns for the network namespace of `pid`, in the
    /// build's egress cgroup, and waits until `tap0` is configured.
    pub fn start(pid: libc::pid_t, cgroup: &EgressCgroup) -> Result<Nat> {
        let fail =
            |what: String| BuildError::Sandbox(format!("starting the build network: {what}"));
        let slirp = find_slirp()?;
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| fail(format!("pipe: {e}")))
        };
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let mut cmd = Command::new(&slirp);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg(format!("--ready-fd={ready_fd}"))
        .arg(format!("--exit-fd={exit_fd}"))
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // SAFETY: async-signal-safe calls only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // Its two pipe ends cross exec; nothing else of ours does.
                for fd in [ready_fd, exit_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", slirp.display())))?;
        drop(ready_w);
        drop(exit_r);
        let nat_pid = child.id();
        if let Err(e) = cgroup.add(nat_pid) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // Not ready yet while it could still have connected somewhere: the
        // step has not started, so nothing has asked it to.
        let mut nat = Nat {
            child: Some(child),
            _exit_w: exit_w,
        };
        nat.wait_ready(ready_r).map_err(fail)?;
        Ok(nat)
    }

    fn wait_ready(&mut self, ready: OwnedFd) -> std::result::Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "slirp4netns did not configure tap0 within {}s",
                    READY_TIMEOUT.as_secs()
                ));
            }
            let mut fds = [rustix::event::PollFd::new(
                &ready,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: left.min(Duration::from_millis(100)).as_nanos() as _,
            };
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut b = [0u8; 1];
        if rustix::io::read(&ready, &mut b) == Ok(1) {
            return Ok(());
        }
        // EOF: it exited. Say why.
        let mut err = String::new();
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
        }
        Err(format!("slirp4netns exited: {}", err.trim()))
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        // Reaped in the background: tearing down its tap takes the kernel
        // tens of milliseconds the next step need not wait for. (It cannot
        // outlive the step's network namespace in any case.)
        let _ = std::thread::Builder::new()
            .name("fb-nat-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
    }
}
