//! `exec`, `cp` and `wait`: a running microVM through its guest agent, and
//! the health state `ls` and `inspect` show.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use firebuild_agent_proto::tree::{self, TreeWriter};
use firebuild_agent_proto::{
    write_frame, Copied, ExecRequest, Exited, Failure, Frame, HealthReport, Kind, Request, Resize,
    SignalRequest,
};
use firebuild_vm::{AgentConnection, AgentEndpoint, AgentError, RunMetadata};

use super::require_root;
use super::vm::{tokio_runtime, NO_GUEST_EXIT_CODE};
use crate::cli::{CpArgs, ExecArgs, GlobalArgs, VmArgs};
use firebuild_host::wiring::vm_runtime;

/// How long the agent may take to take a request (a free port, the first
/// answer).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `ls` waits for a VM's health state.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The one-line error naming the VM and what went wrong with its agent.
fn agent_error(vm: &RunMetadata, e: AgentError) -> anyhow::Error {
    anyhow::anyhow!("VM {} ({}): {e}", vm.id, vm.status)
}

/// A running VM's metadata and agent connection.
fn connect(
    global: &GlobalArgs,
    settings: &crate::cli::SettingsArgs,
    id: &str,
) -> anyhow::Result<(RunMetadata, AgentConnection)> {
    let settings = crate::settings::resolve(global, settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let (vm, endpoint) = tokio_runtime()?.block_on(runtime.agent(id))?;
    let conn = AgentConnection::open(&endpoint, ANSWER_TIMEOUT).map_err(|e| agent_error(&vm, e))?;
    Ok((vm, conn))
}

fn shared(conn: &AgentConnection) -> anyhow::Result<Arc<Mutex<UnixStream>>> {
    Ok(Arc::new(Mutex::new(conn.try_clone()?)))
}

fn send(w: &Mutex<UnixStream>, frame: &Frame) -> std::io::Result<()> {
    write_frame(&mut *w.lock().unwrap_or_else(|e| e.into_inner()), frame)
}

/// The terminal's size, if stdout is one.
fn window_size() -> Option<Resize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_row > 0).then_some(Resize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Raw mode on the host's terminal for `exec -t`, restored on drop.
struct RawTerminal(rustix::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

pub fn exec(global: &GlobalArgs, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    require_root("exec")?;
    let (vm, mut conn) = connect(global, &args.settings, &args.vmm_id)?;
    let stdin_tty = rustix::termios::isatty(std::io::stdin());
    if args.tty && args.interactive && !stdin_tty {
        anyhow::bail!(
            "exec -i -t: the input device is not a terminal (drop -t, or run it from one)"
        );
    }
    let request = ExecRequest {
        argv: args.command.clone(),
        env: args.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        tty: args.tty,
        stdin: args.interactive,
        size: if args.tty { window_size() } else { None },
        ..Default::default()
    };
    conn.request(Request::Exec(request))?;
    let ch = conn.channel();
    // The first answer says whether it started.
    let first = conn
        .recv(Some(ANSWER_TIMEOUT))
        .map_err(|e| agent_error(&vm, e))?;
    if first.kind == Kind::Error {
        return Err(failure(&vm, &first));
    }
    let writer = shared(&conn)?;
    let _raw = (args.tty && stdin_tty).then(RawTerminal::enter).flatten();
    if args.interactive {
        let w = Arc::clone(&writer);
        std::thread::spawn(move || forward_stdin(&w, ch));
    }
    forward_signals(Arc::clone(&writer), ch, args.tty)?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    let mut frame = first;
    loop {
        match frame.kind {
            Kind::Stdout => {
                out.write_all(&frame.payload)?;
                out.flush()?;
            }
            Kind::Stderr => {
                err.write_all(&frame.payload)?;
            }
            Kind::Exit => {
                let exited: Exited = frame.parse()?;
                return Ok(ExitCode::from(exited.code.clamp(0, 255) as u8));
            }
            Kind::Error => return Err(failure(&vm, &frame)),
            _ => {}
        }
        frame = conn.recv(None).map_err(|e| agent_error(&vm, e))?;
    }
}

/// The guest's error for a request, with Docker's exit code kept.
fn failure(vm: &RunMetadata, frame: &Frame) -> anyhow::Error {
    match frame.parse::<Failure>() {
        Ok(f) => anyhow::Error::new(GuestFailure {
            vm: vm.id.clone(),
            failure: f,
        }),
        Err(e) => e.into(),
    }
}

/// An error the guest reported, which sets the exit status.
#[derive(Debug, thiserror::Error)]
#[error("VM {vm}: {}", failure.message)]
pub struct GuestFailure {
    vm: String,
    pub failure: Failure,
}

fn forward_stdin(w: &Mutex<UnixStream>, ch: u32) {
    let mut stdin = std::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = send(w, &Frame::new(ch, Kind::Stdin, Vec::new()));
                return;
            }
            Ok(n) => {
                if send(w, &Frame::new(ch, Kind::Stdin, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// With a terminal, window size changes go to the guest (Ctrl-C is a byte
/// on stdin); without one, SIGINT, SIGTERM, SIGHUP and SIGQUIT are
/// forwarded to the process.
fn forward_signals(w: Arc<Mutex<UnixStream>>, ch: u32, tty: bool) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
    let sigs: &[i32] = if tty {
        &[SIGWINCH]
    } else {
        &[SIGINT, SIGTERM, SIGHUP, SIGQUIT]
    };
    let mut signals = signal_hook::iterator::Signals::new(sigs).context("listening for signals")?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let frame = if sig == SIGWINCH {
                match window_size() {
                    Some(size) => Frame::json(ch, Kind::Resize, &size),
                    None => continue,
                }
            } else {
                Frame::json(ch, Kind::Signal, &SignalRequest { signal: sig })
            };
            if send(&w, &frame).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// `ID:PATH` (a VM's path) or a host path. Host paths that start with `/`
/// or `.` never name a VM, as with `docker cp`.
fn split_vm_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':').filter(|(id, _)| !id.is_empty())
}

pub fn cp(global: &GlobalArgs, args: &CpArgs) -> anyhow::Result<ExitCode> {
    require_root("cp")?;
    match (
        split_vm_path(&args.source),
        split_vm_path(&args.destination),
    ) {
        (None, Some((id, dest))) => copy_in(global, args, id, &args.source, dest),
        (Some((id, src)), None) => copy_out(global, args, id, src, &args.destination),
        (Some(_), Some(_)) => anyhow::bail!(
            "cp: copy between two microVMs through the host (cp ID:SRC DIR, then cp DIR ID:DST)"
        ),
        (None, None) => anyhow::bail!(
            "cp: one of {:?} and {:?} must be ID:PATH in a microVM",
            args.source,
            args.destination
        ),
    }
}

fn copy_in(
    global: &GlobalArgs,
    args: &CpArgs,
    id: &str,
    src: &str,
    dest: &str,
) -> anyhow::Result<ExitCode> {
    // A missing source fails here, before the VM sees anything.
    std::fs::symlink_metadata(src).with_context(|| format!("cp: {src}"))?;
    let (vm, mut conn) = connect(global, &args.settings, id)?;
    conn.request(Request::CopyIn {
        dest: dest.to_owned(),
        parents: false,
    })?;
    let ch = conn.channel();
    let writer = shared(&conn)?;
    // The guest may refuse early (no such directory): stop sending then.
    let refused = Arc::new(AtomicBool::new(false));
    let sender = {
        let (w, refused, src) = (Arc::clone(&writer), Arc::clone(&refused), src.to_owned());
        std::thread::spawn(move || {
            tree::send(Path::new(&src), &mut |kind, payload| {
                if refused.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("refused by the guest"));
                }
                send(&w, &Frame::new(ch, kind, payload.to_vec()))
            })
        })
    };
    let answer = conn.recv(None).map_err(|e| agent_error(&vm, e));
    refused.store(true, Ordering::SeqCst);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("cp: the sending thread failed"))?;
    let frame = answer?;
    match frame.kind {
        Kind::Reply => {
            let copied: Copied = frame.parse()?;
            report(&copied, &format!("{id}:{dest}"));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let e = failure(&vm, &frame);
            // Our own read error explains a refusal better than the guest's
            // note about a tree that ended early.
            match sent {
                Err(s) if !s.to_string().contains("refused by the guest") => {
                    Err(anyhow::anyhow!("cp: {s}"))
                }
                _ => Err(e),
            }
        }
    }
}

fn copy_out(
    global: &GlobalArgs,
    args: &CpArgs,
    id: &str,
    src: &str,
    dest: &str,
) -> anyhow::Result<ExitCode> {
    let (vm, mut conn) = connect(global, &args.settings, id)?;
    conn.request(Request::CopyOut {
        source: src.to_owned(),
    })?;
    let mut writer = TreeWriter::new(dest);
    loop {
        let frame = conn.recv(None).map_err(|e| agent_error(&vm, e))?;
        match frame.kind {
            Kind::Error => return Err(failure(&vm, &frame)),
            Kind::Entry | Kind::Data | Kind::End => {
                let done = tree::receive(&mut writer, frame.kind, &frame.payload)
                    .with_context(|| format!("cp: writing {dest}"))?;
                if done {
                    let copied = writer
                        .finish()
                        .with_context(|| format!("cp: writing {dest}"))?;
                    report(&copied, dest);
                    return Ok(ExitCode::SUCCESS);
                }
            }
            _ => {}
        }
    }
}

fn report(c: &Copied, to: &str) {
    if c.skipped > 0 {
        tracing::warn!(
            "{} special files (devices, FIFOs, sockets) were not copied",
            c.skipped
        );
    }
    tracing::info!(files = c.files, bytes = c.bytes, "copied to {to}");
}

pub fn wait(global: &GlobalArgs, args: &VmArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::settings::resolve(global, &args.settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let vm = tokio_runtime()?.block_on(runtime.wait(&args.vmm_id, None))?;
    let code = vm
        .exit_code
        .map_or(i32::from(NO_GUEST_EXIT_CODE), |c| c.clamp(0, 255));
    println!("{code}");
    Ok(ExitCode::from(code as u8))
}

/// The health state of a running VM with a check (`None` otherwise, or
/// when its agent does not answer in time).
pub fn health(endpoint: &AgentEndpoint) -> Option<HealthReport> {
    let mut conn = AgentConnection::open(endpoint, HEALTH_TIMEOUT).ok()?;
    conn.call(Request::Health, HEALTH_TIMEOUT).ok()
}
