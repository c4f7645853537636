//! The agent's transports: Firecracker's vsock (a listening `AF_VSOCK`
//! socket: one connection per host client) and QEMU's virtio-serial ports
//! (one byte stream per port, reopened by each host client; the host side
//! takes a lock per port). The same [`super::conn`] serves both.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use firebuild_agent_proto::{serial_port_name, SERIAL_PORTS, VSOCK_PORT};

use super::{conn, Context};
use crate::log;

/// How often the agent looks for agent ports that appeared late.
const PORT_SCAN: Duration = Duration::from_secs(1);

/// Serves every transport; never returns.
pub fn serve(ctx: Arc<Context>) -> ! {
    match vsock_listener(VSOCK_PORT) {
        Ok(listener) => {
            let ctx = Arc::clone(&ctx);
            spawn("fb-vsock", move || accept_loop(listener, ctx));
        }
        Err(e) => log::info(format_args!("agent: no vsock ({e})")),
    }
    spawn("fb-sigio", sigio_loop);
    let mut serving = BTreeSet::new();
    loop {
        for (name, dev) in serial_ports(Path::new("/sys/class/virtio-ports"), Path::new("/dev")) {
            if serving.insert(name.clone()) {
                let ctx = Arc::clone(&ctx);
                spawn("fb-serial", move || serial_loop(&dev, ctx));
            }
        }
        std::thread::sleep(PORT_SCAN);
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        log::warn(format_args!("agent: starting a thread: {e}"));
    }
}

/// `(port name, device node)` of the agent's virtio-serial ports.
pub fn serial_ports(sys: &Path, dev: &Path) -> Vec<(String, PathBuf)> {
    let wanted: BTreeSet<String> = (0..SERIAL_PORTS).map(serial_port_name).collect();
    let Ok(entries) = std::fs::read_dir(sys) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("name")).ok()?;
            let name = name.trim().to_owned();
            wanted
                .contains(&name)
                .then(|| (name, dev.join(e.file_name())))
        })
        .collect();
    out.sort();
    out
}

/// Host clients connecting to a virtio-serial port raise SIGIO (the ports
/// are in async mode): a generation count the port threads wait on.
static HOST_EVENTS: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// Turns SIGIO (blocked in every agent thread) into [`HOST_EVENTS`].
fn sigio_loop() {
    loop {
        // SAFETY: sigtimedwait on a set holding SIGIO.
        let got = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGIO);
            let ts = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
        };
        if got == libc::SIGIO {
            let (lock, cv) = &HOST_EVENTS;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            cv.notify_all();
        }
    }
}

/// Waits for a host event, at most `timeout`.
fn wait_host_event(seen: &mut u64, timeout: Duration) {
    let (lock, cv) = &HOST_EVENTS;
    let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
    if *g == *seen {
        g = cv
            .wait_timeout(g, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    *seen = *g;
}

/// How long a port may stay held by a finished client's sessions before
/// it is worth a warning.
const BUSY_WARNING: Duration = Duration::from_secs(30);

/// One virtio-serial port: wait for a host client, serve it, repeat. While
/// no client is connected the port polls as hung up. The port is reopened
/// after each client: closing it drops whatever the last one left unread.
fn serial_loop(dev: &Path, ctx: Arc<Context>) {
    let mut seen = 0;
    let mut busy_since: Option<std::time::Instant> = None;
    loop {
        let port = match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            Ok(f) => f,
            // The last client's sessions (an exec's output threads) may
            // hold the port a moment longer: a virtio port opens once.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let since = *busy_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > BUSY_WARNING {
                    log::warn(format_args!("agent: {} stays busy: {e}", dev.display()));
                    busy_since = None;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                log::warn(format_args!("agent: opening {}: {e}", dev.display()));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        busy_since = None;
        // SAFETY: fcntl on our descriptor: SIGIO to this process on host
        // connect and disconnect.
        unsafe {
            libc::fcntl(port.as_raw_fd(), libc::F_SETOWN, libc::getpid());
            let fl = libc::fcntl(port.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(port.as_raw_fd(), libc::F_SETFL, fl | libc::O_ASYNC);
        }
        loop {
            let mut pfd = libc::pollfd {
                fd: port.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid descriptor.
            let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if n > 0 && pfd.revents & libc::POLLIN != 0 {
                match (port.try_clone(), port.try_clone()) {
                    (Ok(r), Ok(w)) => conn::serve(r, w, &ctx),
                    (Err(e), _) | (_, Err(e)) => {
                        log::warn(format_args!("agent: {}: {e}", dev.display()));
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                break;
            } else if n > 0 && pfd.revents & libc::POLLHUP != 0 {
                // No host client: sleep until one connects.
                wait_host_event(&mut seen, Duration::from_secs(1));
            }
        }
    }
}

/// A listening `AF_VSOCK` stream socket on `port` (any CID).
fn vsock_listener(port: u32) -> io::Result<File> {
    // SAFETY: socket/bind/listen with a valid sockaddr_vm.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = File::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        if libc::bind(
            fd,
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) != 0
            || libc::listen(fd, 16) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }
}

fn accept_loop(listener: File, ctx: Arc<Context>) {
    loop {
        // SAFETY: accept4 on our listening socket.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn(format_args!("agent: vsock accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        // SAFETY: a new descriptor of ours.
        let sock = unsafe { File::from_raw_fd(fd) };
        let ctx = Arc::clone(&ctx);
        spawn("fb-conn", move || match sock.try_clone() {
            Ok(w) => conn::serve(sock, w, &ctx),
            Err(e) => log::warn(format_args!("agent: vsock: {e}")),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ports_are_found_by_name() {
        let t = tempfile::tempdir().unwrap();
        for (dir, name) in [
            ("vport0p1", "org.firebuild.agent.1"),
            ("vport0p2", "other"),
            ("vport0p3", "org.firebuild.agent.0\n"),
        ] {
            std::fs::create_dir_all(t.path().join(dir)).unwrap();
            std::fs::write(t.path().join(dir).join("name"), name).unwrap();
        }
        let got = serial_ports(t.path(), Path::new("/dev"));
        assert_eq!(
            got,
            vec![
                (
                    "org.firebuild.agent.0".to_string(),
                    PathBuf::from("/dev/vport0p3")
                ),
                (
                    "org.firebuild.agent.1".to_string(),
                    PathBuf::from("/dev/vport0p1")
                ),
            ]
        );
        assert!(serial_ports(&t.path().join("none"), Path::new("/dev")).is_empty());
    }
}
