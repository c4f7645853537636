//! A container process running in the VM, driven through the guest agent:
//! its stdio joined to containerd's FIFOs, signals and window sizes sent
//! on, its exit status collected.
//!
//! Each process holds one agent connection (on QEMU one virtio-serial
//! port) for its lifetime; a thread pumps the guest's frames into the
//! stdout/stderr FIFOs, another feeds the stdin FIFO to the guest.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use firebuild_agent_proto::{
    write_frame, ExecRequest, Exited, Failure, Frame, Kind, Request, Resize, SignalRequest, Started,
};
use firebuild_vm::{AgentConnection, AgentEndpoint, AgentError};
use tokio::sync::watch;

/// How long the agent may take to answer a new connection and start the
/// process.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The status a process gets when the VM went away under it (as a shell
/// reports a SIGKILLed process).
pub const VM_GONE_STATUS: u32 = 137;

/// containerd's FIFO paths for one process; empty: not connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: u32,
    pub at: SystemTime,
}

/// How long `CloseIO` waits for the stdin FIFO to drain to its end before
/// the guest is told the input ended anyway.
const STDIN_DRAIN: Duration = Duration::from_secs(2);

/// A started process.
pub struct GuestProcess {
    /// The guest's pid of it.
    pub pid: u32,
    channel: u32,
    writer: Arc<Mutex<UnixStream>>,
    stdin: Arc<StdinState>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// Whether the guest was told the input ended; the stdin thread and
/// `CloseIO` both may, once.
#[derive(Default)]
struct StdinState {
    ended: Mutex<bool>,
    changed: Condvar,
}

impl StdinState {
    /// Sends `payload` (empty: the end) unless the end was sent.
    fn send(&self, w: &Mutex<UnixStream>, channel: u32, payload: Vec<u8>) -> std::io::Result<()> {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if *ended {
            return Err(std::io::Error::other("stdin was closed"));
        }
        let end = payload.is_empty();
        let mut s = w.lock().unwrap_or_else(|e| e.into_inner());
        let sent = write_frame(&mut *s, &Frame::new(channel, Kind::Stdin, payload));
        if end || sent.is_err() {
            *ended = true;
            self.changed.notify_all();
        }
        sent
    }
}

impl GuestProcess {
    /// Starts `request` through the agent (blocking: call it off the async
    /// runtime), on `ready` (a connection already open, such as the boot
    /// probe's) or a new one.
    pub fn start(
        endpoint: &AgentEndpoint,
        mut request: ExecRequest,
        stdio: &StdioPaths,
        ready: Option<AgentConnection>,
    ) -> anyhow::Result<GuestProcess> {
        request.stdin = !stdio.stdin.is_empty();
        request.tty = stdio.terminal;
        let stdout = open_output(&stdio.stdout)?;
        let stderr = if stdio.terminal {
            None
        } else {
            open_output(&stdio.stderr)?
        };
        let (mut conn, pid) = start_on(endpoint, &request, ready)?;
        let channel = conn.channel();
        let writer = Arc::new(Mutex::new(conn.try_clone()?));
        let (exit_tx, exit) = watch::channel(None);
        std::thread::Builder::new()
            .name("fb-shim-output".into())
            .spawn(move || {
                let code = pump_output(&mut conn, stdout, stderr);
                // The port is free for the next process only once every
                // handle on this connection is closed: end them all now.
                if let Ok(stream) = conn.try_clone() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                drop(conn);
                let _ = exit_tx.send(Some(ExitStatus {
                    code,
                    at: SystemTime::now(),
                }));
            })?;
        let stdin = Arc::new(StdinState::default());
        if !stdio.stdin.is_empty() {
            let path = stdio.stdin.clone();
            let (w, state) = (Arc::clone(&writer), Arc::clone(&stdin));
            std::thread::Builder::new()
                .name("fb-shim-stdin".into())
                .spawn(move || feed_stdin(&path, &w, channel, &state))?;
        }
        Ok(GuestProcess {
            pid,
            channel,
            writer,
            stdin,
            exit,
        })
    }

    fn send(&self, frame: &Frame) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *w, frame)
    }

    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        self.send(&Frame::json(
            self.channel,
            Kind::Signal,
            &SignalRequest { signal },
        ))
    }

    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        self.send(&Frame::json(
            self.channel,
            Kind::Resize,
            &Resize { rows, cols },
        ))
    }

    /// End of input (`CloseIO`). The client closed its end of the FIFO
    /// too: what it wrote is still in the pipe, so the stdin thread gets
    /// a moment to pass it on and reach the end itself.
    pub fn close_stdin(&self) {
        let (state, w, channel) = (
            Arc::clone(&self.stdin),
            Arc::clone(&self.writer),
            self.channel,
        );
        std::thread::spawn(move || {
            let ended = state.ended.lock().unwrap_or_else(|e| e.into_inner());
            let (ended, _) = state
                .changed
                .wait_timeout_while(ended, STDIN_DRAIN, |ended| !*ended)
                .unwrap_or_else(|e| e.into_inner());
            let done = *ended;
            drop(ended);
            if !done {
                let _ = state.send(&w, channel, Vec::new());
            }
        });
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> ExitStatus {
        let mut exit = self.exit.clone();
        loop {
            if let Some(status) = *exit.borrow_and_update() {
                return status;
            }
            if exit.changed().await.is_err() {
                return ExitStatus {
                    code: VM_GONE_STATUS,
                    at: SystemTime::now(),
                };
            }
        }
    }
}

/// How often a start is tried when the connection drops before the
/// process started: a virtio-serial port its last client just left may
/// still be reset by a busy guest under the next one.
const START_ATTEMPTS: usize = 3;

/// Sends the exec request and waits for `Started`; returns the connection
/// and the guest pid. A connection that drops before `Started` is tried
/// again on a new one: had the agent started the process already, it
/// hangs up a process whose client went away, so it does not run twice
/// for long.
fn start_on(
    endpoint: &AgentEndpoint,
    request: &ExecRequest,
    mut ready: Option<AgentConnection>,
) -> anyhow::Result<(AgentConnection, u32)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = match ready.take() {
            Some(conn) => conn,
            None => {
                AgentConnection::open(endpoint, START_TIMEOUT).context("reaching the VM's agent")?
            }
        };
        let first = conn
            .request(Request::Exec(request.clone()))
            .map_err(AgentError::from)
            .and_then(|()| conn.recv(Some(START_TIMEOUT)));
        let first = match first {
            Ok(frame) => frame,
            Err(AgentError::Closed | AgentError::Unreachable(_) | AgentError::Io(_))
                if attempt < START_ATTEMPTS =>
            {
                tracing::debug!("the agent connection dropped before the start; again");
                continue;
            }
            Err(e) => return Err(e).context("waiting for the VM's agent to start the process"),
        };
        return match first.kind {
            Kind::Started => {
                let pid = first.parse::<Started>()?.pid as u32;
                Ok((conn, pid))
            }
            Kind::Error => {
                let failure: Failure = first.parse()?;
                anyhow::bail!("{}", failure.message)
            }
            other => anyhow::bail!("the agent answered {other:?} to a start"),
        };
    }
}

/// Opens an output FIFO read-write: never blocks, and output keeps
/// flowing across a containerd restart (the pipe stays open here while its
/// reader comes back).
fn open_output(path: &str) -> anyhow::Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(Some)
        .with_context(|| format!("opening the output FIFO {path}"))
}

/// Copies the process's output until it ends; returns its exit status.
fn pump_output(
    conn: &mut AgentConnection,
    mut stdout: Option<File>,
    mut stderr: Option<File>,
) -> u32 {
    loop {
        let frame = match conn.recv(None) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!("the VM's agent went away: {e}");
                return VM_GONE_STATUS;
            }
        };
        let sink = match frame.kind {
            Kind::Stdout => stdout.as_mut(),
            Kind::Stderr => stderr.as_mut(),
            Kind::Exit => {
                return match frame.parse::<Exited>() {
                    Ok(e) => e.code.clamp(0, 255) as u32,
                    Err(_) => VM_GONE_STATUS,
                }
            }
            Kind::Error => {
                let message = frame
                    .parse::<Failure>()
                    .map(|f| f.message)
                    .unwrap_or_default();
                tracing::warn!("the process failed in the VM: {message}");
                return VM_GONE_STATUS;
            }
            _ => None,
        };
        if let Some(sink) = sink {
            // A reader that went away must not stop the process.
            if let Err(e) = sink.write_all(&frame.payload) {
                tracing::debug!("writing output: {e}");
            }
        }
    }
}

fn feed_stdin(path: &str, w: &Mutex<UnixStream>, channel: u32, state: &StdinState) {
    // Blocks until containerd's side opens it for writing.
    let mut input = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("opening the stdin FIFO {path}: {e}");
            let _ = state.send(w, channel, Vec::new());
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = state.send(w, channel, Vec::new());
                return;
            }
            Ok(n) => {
                if state.send(w, channel, buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}
