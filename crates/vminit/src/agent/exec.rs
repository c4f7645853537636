//! Processes started for the host (`firebuild exec`) and for health checks:
//! the image's environment, USER and WORKDIR unless the request overrides
//! them, Docker's exit codes when they cannot start.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use firebuild_agent_proto::frame::CHUNK;
use firebuild_agent_proto::{
    ExecRequest, Exited, Failure, Frame, Kind, Resize, SignalRequest, Started,
};

use super::conn::{self, Writer};
use super::Context;
use crate::process::{self, ProcessStdio, StartError};
use crate::users;

/// How long output may trail the process's exit before the exit is sent
/// anyway (a background child can hold the pipes open forever).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long a hung-up process group gets between SIGHUP and SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(1);

/// A process ready to start: what [`prepare`] resolved.
pub struct Prepared {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: users::ExecUser,
    pub workdir: String,
    pub limits: process::ProcessLimits,
}

/// Resolves a request against the image: the errors are the ones the
/// guest saw, with Docker's exit codes (126: cannot run, 127: not found).
pub fn prepare(ctx: &Context, req: &ExecRequest) -> Result<Prepared, Failure> {
    let container_root = match &req.container {
        Some(id) => Some(super::pod::root_of(id).map_err(|e| Failure::new(126, e.to_string()))?),
        None => None,
    };
    let root = container_root.as_deref().unwrap_or(Path::new("/"));
    let meta = &ctx.meta;
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(Failure::new(126, "no command given"));
    }
    let spec = req.user.as_deref().unwrap_or(&meta.user);
    let mut user = users::resolve_user_in_root(root, spec)
        .map_err(|e| Failure::new(126, format!("unable to find user {spec}: {e}")))?;
    for gid in &req.additional_gids {
        if !user.supplementary.contains(gid) {
            user.supplementary.push(*gid);
        }
    }
    let mut rlimits = Vec::new();
    for r in &req.rlimits {
        let resource = process::rlimit_resource(&r.resource)
            .ok_or_else(|| Failure::new(126, format!("unknown rlimit {:?}", r.resource)))?;
        rlimits.push((resource, r.soft, r.hard));
    }
    let workdir = match req.workdir.as_deref() {
        Some(dir) => {
            if !crate::files::under(root, dir).is_dir() {
                return Err(Failure::new(
                    126,
                    format!("chdir to {dir}: no such directory in the VM"),
                ));
            }
            dir.to_owned()
        }
        None => process::prepare_workdir(root, &meta.workdir)
            .map_err(|e| Failure::new(126, e.to_string()))?,
    };
    let mut env: BTreeMap<String, String> = meta.env.clone();
    for kv in &req.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(Failure::new(126, format!("--env {kv:?}: not KEY=value")));
        }
        env.insert(k.to_owned(), v.to_owned());
    }
    let hostname = ctx
        .hostname
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let env = process::build_env(&env, &hostname, &user.home);
    let path_env = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(process::DEFAULT_PATH, |(_, v)| v.as_str());
    let program =
        process::find_executable(root, &req.argv[0], path_env, &workdir).map_err(|e| match e {
            StartError::NotFound { .. } => Failure::new(127, e.to_string()),
            e => Failure::new(126, e.to_string()),
        })?;
    Ok(Prepared {
        program,
        argv: req.argv.clone(),
        env,
        user,
        workdir,
        limits: process::ProcessLimits {
            rlimits,
            no_new_privileges: req.no_new_privileges,
            root: container_root,
        },
    })
}

/// The host's handle on a running exec.
pub struct Control {
    pid: libc::pid_t,
    stdin: Option<File>,
    /// The pseudo-terminal's master, with `tty`.
    pty: Option<Arc<File>>,
    done: Arc<AtomicBool>,
}

impl Control {
    /// Whether the process has exited (and was reaped).
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Applies a stdin, resize or signal frame.
    pub fn control(&mut self, frame: &Frame) {
        match frame.kind {
            Kind::Stdin if frame.payload.is_empty() => self.stdin = None,
            Kind::Stdin => {
                let failed = match (&mut self.stdin, &self.pty) {
                    (Some(w), _) => w.write_all(&frame.payload).is_err(),
                    (None, Some(m)) => (&**m).write_all(&frame.payload).is_err(),
                    (None, None) => false,
                };
                if failed {
                    self.stdin = None;
                }
            }
            Kind::Resize => {
                if let (Some(m), Ok(size)) = (&self.pty, frame.parse::<Resize>()) {
                    set_window(m, size);
                }
            }
            Kind::Signal => {
                if let Ok(s) = frame.parse::<SignalRequest>() {
                    if !self.finished() && (1..=64).contains(&s.signal) {
                        // SAFETY: signalling the process we started.
                        unsafe { libc::kill(self.pid, s.signal) };
                    }
                }
            }
            _ => {}
        }
    }

    /// The host went away: SIGHUP to the process group (it leads a session
    /// of its own), SIGKILL if it is still there after a grace period.
    pub fn hang_up(self) {
        if self.finished() {
            return;
        }
        let (pid, done) = (self.pid, self.done);
        // SAFETY: signalling the process group we started.
        unsafe { libc::kill(-pid, libc::SIGHUP) };
        std::thread::spawn(move || {
            std::thread::sleep(HANGUP_GRACE);
            if !done.load(Ordering::SeqCst) {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        });
    }
}

fn set_window(master: &File, size: Resize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master with a valid struct.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// A pseudo-terminal (master, slave).
fn open_pty(size: Option<Resize>) -> io::Result<(File, File)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = size.map(|s| libc::winsize {
        ws_row: s.rows,
        ws_col: s.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    // SAFETY: openpty with valid out-pointers and an optional winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            ws.as_ref()
                .map_or(std::ptr::null(), |w| w as *const libc::winsize),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new descriptors of ours; no child inherits them by accident.
    unsafe {
        libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(slave, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((File::from_raw_fd(master), File::from_raw_fd(slave)))
    }
}

/// Streams `from` as `kind` frames until EOF (a pty master reports EIO
/// once the last slave is closed: the same).
fn pump(mut from: impl Read, ch: u32, kind: Kind, out: Writer, finished: mpsc::Sender<()>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn::send(&out, &Frame::new(ch, kind, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = finished.send(());
}

/// Waits for `pid` (the agent reaps its own children only: never -1).
pub fn wait_pid(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return process::exit_code(status);
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 255;
        }
    }
}

/// Starts the process of an exec request on channel `ch`.
pub fn start(ctx: &Context, ch: u32, req: ExecRequest, out: &Writer) -> Result<Control, Failure> {
    let p = prepare(ctx, &req)?;
    let io_err = |e: io::Error| Failure::new(126, format!("setting up the process's stdio: {e}"));
    let (stdio, pty) = if req.tty {
        let (master, slave) = open_pty(req.size).map_err(io_err)?;
        let stdio = ProcessStdio {
            stdin: Stdio::from(slave.try_clone().map_err(io_err)?),
            stdout: Stdio::from(slave.try_clone().map_err(io_err)?),
            stderr: Stdio::from(slave),
            controlling_tty: true,
        };
        (stdio, Some(Arc::new(master)))
    } else {
        let stdio = ProcessStdio {
            stdin: if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            },
            stdout: Stdio::piped(),
            stderr: Stdio::piped(),
            controlling_tty: false,
        };
        (stdio, None)
    };
    let mut child = process::start(
        &p.program, &p.argv, &p.env, &p.user, &p.workdir, stdio, &p.limits,
    )
    .map_err(|e| Failure::new(126, e.to_string()))?;
    let pid = child.id() as libc::pid_t;
    let _ = conn::send(out, &Frame::json(ch, Kind::Started, &Started { pid }));

    let (tx, rx) = mpsc::channel();
    let mut pumps = 0;
    let mut spawn_pump = |from: Box<dyn Read + Send>, kind: Kind| {
        let (out, tx) = (Arc::clone(out), tx.clone());
        std::thread::spawn(move || pump(from, ch, kind, out, tx));
        pumps += 1;
    };
    if let Some(m) = &pty {
        // Stdout and stderr share the terminal, as with `docker exec -t`.
        let reader: File = m.try_clone().map_err(io_err)?;
        spawn_pump(Box::new(reader), Kind::Stdout);
    }
    if let Some(o) = child.stdout.take() {
        spawn_pump(Box::new(o), Kind::Stdout);
    }
    if let Some(e) = child.stderr.take() {
        spawn_pump(Box::new(e), Kind::Stderr);
    }
    let stdin = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
    drop(tx);
    let done = Arc::new(AtomicBool::new(false));
    let (out, flag) = (Arc::clone(out), Arc::clone(&done));
    std::thread::spawn(move || {
        let code = wait_pid(pid);
        flag.store(true, Ordering::SeqCst);
        for _ in 0..pumps {
            if rx.recv_timeout(OUTPUT_GRACE).is_err() {
                break;
            }
        }
        let _ = conn::send(&out, &Frame::json(ch, Kind::Exit, &Exited { code }));
    });
    Ok(Control {
        pid,
        stdin,
        pty,
        done,
    })
}

/// Runs a prepared process to completion with a time limit, collecting
/// stdout and stderr together (at most `limit` bytes): health checks.
/// `None` when it timed out (it is killed).
pub fn run_captured(
    p: &Prepared,
    timeout: Duration,
    limit: usize,
) -> Result<Option<(i32, String)>, String> {
    let stdio = ProcessStdio {
        stdin: Stdio::null(),
        stdout: Stdio::piped(),
        stderr: Stdio::piped(),
        controlling_tty: false,
    };
    let mut child = process::start(
        &p.program, &p.argv, &p.env, &p.user, &p.workdir, stdio, &p.limits,
    )
    .map_err(|e| e.to_string())?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let readers: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut r in readers {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let (code_tx, code_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = code_tx.send(wait_pid(pid));
    });
    let code = match code_rx.recv_timeout(timeout) {
        Ok(c) => Some(c),
        Err(_) => {
            // SAFETY: killing the check's process group (its own session).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = code_rx.recv();
            None
        }
    };
    let mut output = Vec::new();
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
        output.extend_from_slice(&chunk);
    }
    output.truncate(limit);
    Ok(code.map(|c| (c, String::from_utf8_lossy(&output).into_owned())))
}
