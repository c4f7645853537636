//! The host side of the guest agent: how to reach it for one VM, and a
//! connection that speaks [`firebuild_agent_proto`].
//!
//! Only the host can reach the agent: its sockets live in the VM's private
//! run directory (or its jail), and nothing listens on the guest's network.
//! On QEMU each virtio-serial port serves one client at a time, so a client
//! takes the port's lock file (`flock`) first and several `exec`s run at
//! once on different ports. Firecracker's vsock takes any number of
//! connections (`CONNECT <port>` on its Unix socket).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_agent_proto::{read_frame, write_frame, Envelope, Frame, Kind, Request, VERSION};
use serde::{Deserialize, Serialize};

/// Where a VM's agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "kebab-case")]
pub enum AgentEndpoint {
    /// Firecracker's vsock: its Unix socket; `CONNECT <port>` first.
    Vsock { socket: PathBuf, port: u32 },
    /// QEMU's virtio-serial ports, each a Unix socket (QEMU listens) with a
    /// lock file next to it.
    Serial { sockets: Vec<PathBuf> },
}

/// How long a ping waits before the next: longer than the agent's
/// frame timeout, so a stream a dead client cut short is reset by then.
const SYNC_RETRY: Duration = Duration::from_secs(3);
/// How long to wait before connecting again to a port that closed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// How often a booting VM's agent is pinged.
const BOOT_PING: Duration = Duration::from_millis(200);

/// The virtio-serial sockets of a QEMU VM's run directory.
pub fn serial_sockets(run_dir: &Path) -> Vec<PathBuf> {
    (0..firebuild_agent_proto::SERIAL_PORTS)
        .map(|i| run_dir.join(format!("agent-{i}.sock")))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("its agent cannot be reached: {0}")]
    Unreachable(String),
    /// The connection ended (the VM went away, or the guest reset the
    /// port under a client that came right after the previous one).
    #[error("its agent cannot be reached: the agent closed the connection")]
    Closed,
    #[error("its agent did not answer within {0:?} (is the VM still booting, or was its image built before the agent existed? rebuild it)")]
    Timeout(Duration),
    #[error("talking to its agent: {0}")]
    Io(#[from] io::Error),
}

/// A connection to a VM's agent.
pub struct AgentConnection {
    stream: UnixStream,
    /// The channel this connection's requests use: random, so frames meant
    /// for an earlier client of the same port can never be taken for ours.
    channel: u32,
    /// The port's lock (QEMU), held while connected.
    _lock: Option<std::fs::File>,
}

impl AgentConnection {
    /// Connects, waiting at most `timeout` for a free port and for the
    /// agent to answer.
    pub fn open(
        endpoint: &AgentEndpoint,
        timeout: Duration,
    ) -> Result<AgentConnection, AgentError> {
        Self::open_pinging(endpoint, timeout, SYNC_RETRY)
    }

    /// [`AgentConnection::open`] for a VM that is still booting: pings
    /// every [`BOOT_PING`], since no earlier client can have left a frame
    /// cut short, so the agent's answer comes as soon as it is up.
    pub fn open_booting(
        endpoint: &AgentEndpoint,
        timeout: Duration,
    ) -> Result<AgentConnection, AgentError> {
        Self::open_pinging(endpoint, timeout, BOOT_PING)
    }

    fn open_pinging(
        endpoint: &AgentEndpoint,
        timeout: Duration,
        retry: Duration,
    ) -> Result<AgentConnection, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut conn = match endpoint {
                AgentEndpoint::Vsock { socket, port } => open_vsock(socket, *port, left)?,
                AgentEndpoint::Serial { sockets } => open_serial(sockets, left)?,
            };
            match conn.sync(deadline, timeout, retry) {
                Ok(()) => return Ok(conn),
                // A virtio-serial port the guest is still resetting after
                // its last client: connect again.
                Err(AgentError::Closed) if Instant::now() < deadline => {
                    drop(conn);
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pings until the agent answers on our channel. A virtio-serial port
    /// may still hold a frame its last client cut short; the agent drops
    /// such a stream after a moment, and the next ping gets through.
    /// The pings go on a channel of their own (the request channel with
    /// its low bit cleared), so a late answer is never taken for another.
    fn sync(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        retry: Duration,
    ) -> Result<(), AgentError> {
        let request = self.channel;
        self.channel &= !1;
        let synced = self.ping_until(deadline, timeout, retry);
        self.channel = request;
        synced
    }

    fn ping_until(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        retry: Duration,
    ) -> Result<(), AgentError> {
        loop {
            self.request(Request::Ping)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(retry).max(Duration::from_millis(1));
            match self.recv(Some(wait)) {
                Ok(f) if f.kind == Kind::Reply => return Ok(()),
                Ok(f) if f.kind == Kind::Error => {
                    let failure: firebuild_agent_proto::Failure = f.parse()?;
                    return Err(AgentError::Unreachable(failure.message));
                }
                Ok(_) => {}
                Err(AgentError::Timeout(_)) if Instant::now() < deadline => {}
                Err(AgentError::Timeout(_)) => return Err(AgentError::Timeout(timeout)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The channel of this connection's request.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// A second handle on the connection (a writer for another thread).
    pub fn try_clone(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// Sends `request` on the connection's channel.
    pub fn request(&mut self, request: Request) -> io::Result<()> {
        let env = Envelope {
            version: VERSION,
            request,
        };
        write_frame(
            &mut self.stream,
            &Frame::json(self.channel, Kind::Request, &env),
        )
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        write_frame(&mut self.stream, frame)
    }

    /// The next frame of our channel; `timeout` bounds the wait for it to
    /// begin (`None`: no bound). A frame once begun is read whole: a
    /// timeout that split one would leave the stream out of step.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Frame, AgentError> {
        loop {
            self.stream.set_read_timeout(timeout)?;
            let mut reader = FrameReader {
                stream: &self.stream,
                begun: false,
            };
            match read_frame(&mut reader) {
                Ok(Some(f)) if f.channel != self.channel => continue,
                Ok(Some(f)) => return Ok(f),
                Ok(None) => return Err(AgentError::Closed),
                Err(e) if is_timeout(&e) && !reader.begun => {
                    return Err(AgentError::Timeout(timeout.unwrap_or_default()))
                }
                Err(e) if is_timeout(&e) => {
                    return Err(AgentError::Unreachable(format!(
                        "it stopped in the middle of a frame for {} s",
                        MID_FRAME.as_secs()
                    )))
                }
                Err(e) => return Err(AgentError::Io(e)),
            }
        }
    }

    /// One request, one reply: `Reply` payloads parse as `T`; an `Error`
    /// frame is the guest's message.
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        self.request(request)?;
        loop {
            let f = self.recv(Some(timeout))?;
            match f.kind {
                Kind::Reply => return Ok(f.parse()?),
                Kind::Error => {
                    let failure: firebuild_agent_proto::Failure = f.parse()?;
                    return Err(AgentError::Unreachable(failure.message));
                }
                _ => continue,
            }
        }
    }
}

/// How long the rest of a begun frame may take to arrive.
const MID_FRAME: Duration = Duration::from_secs(60);

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads a frame from `stream`: once its first byte is in, the caller's
/// wait gives way to [`MID_FRAME`].
struct FrameReader<'a> {
    stream: &'a UnixStream,
    begun: bool,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut &*self.stream).read(buf)?;
        if n > 0 && !self.begun {
            self.begun = true;
            self.stream.set_read_timeout(Some(MID_FRAME))?;
        }
        Ok(n)
    }
}

/// A channel number unlikely to repeat between clients.
fn new_channel() -> u32 {
    let mut b = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u32::from_ne_bytes(b) | 1
}

fn open_vsock(socket: &Path, port: u32, timeout: Duration) -> Result<AgentConnection, AgentError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| AgentError::Unreachable(format!("connecting to {}: {e}", socket.display())))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Firecracker answers `OK <host port>\n`, then the stream is the guest's.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' && line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(AgentError::Unreachable(format!(
                    "vsock port {port} refused the connection (no agent listening)"
                )))
            }
            Ok(_) => line.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(AgentError::Timeout(timeout))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let text = String::from_utf8_lossy(&line);
    if !text.starts_with("OK ") {
        return Err(AgentError::Unreachable(format!(
            "vsock answered {:?} to CONNECT {port}",
            text.trim()
        )));
    }
    Ok(AgentConnection {
        stream,
        channel: new_channel(),
        _lock: None,
    })
}

fn open_serial(sockets: &[PathBuf], timeout: Duration) -> Result<AgentConnection, AgentError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no agent ports");
    loop {
        for socket in sockets {
            let lock_path = socket.with_extension("lock");
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    last = format!("all {} agent ports are in use", sockets.len());
                    continue;
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
            match UnixStream::connect(socket) {
                Ok(stream) => {
                    return Ok(AgentConnection {
                        stream,
                        channel: new_channel(),
                        _lock: Some(lock),
                    })
                }
                Err(e) => last = format!("connecting to {}: {e}", socket.display()),
            }
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Unreachable(last));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_agent_proto::Pong;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// Answers every ping on `stream` until it closes, each after a frame
    /// of another channel the client must skip.
    fn answer_pings(mut stream: UnixStream) {
        while let Ok(Some(f)) = read_frame(&mut stream) {
            let env: Envelope = f.parse().unwrap();
            assert_eq!(env.request, Request::Ping);
            let reply = Pong {
                version: VERSION,
                agent: "test".into(),
            };
            let stale = Frame::new(f.channel ^ 2, Kind::Stdout, b"stale".to_vec());
            if write_frame(&mut stream, &stale).is_err()
                || write_frame(&mut stream, &Frame::json(f.channel, Kind::Reply, &reply)).is_err()
            {
                return;
            }
        }
    }

    /// Serves every client of `listener` with [`answer_pings`].
    fn serve_pings(listener: UnixListener) {
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                std::thread::spawn(move || answer_pings(stream));
            }
        });
    }

    #[test]
    fn vsock_speaks_firecrackers_connect_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("v.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        // Firecracker's side, as its vsock documentation describes it.
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(stream.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(
                line,
                format!("CONNECT {}\n", firebuild_agent_proto::VSOCK_PORT)
            );
            (&stream).write_all(b"OK 1073741824\n").unwrap();
            std::thread::spawn(move || answer_pings(stream));
            // The next client finds no listener on the guest port:
            // Firecracker closes the connection.
            let (mut refused, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = refused.read(&mut buf);
        });
        let endpoint = AgentEndpoint::Vsock {
            socket: socket.clone(),
            port: firebuild_agent_proto::VSOCK_PORT,
        };
        let mut conn = AgentConnection::open(&endpoint, Duration::from_secs(5)).unwrap();
        let pong: Pong = conn.call(Request::Ping, Duration::from_secs(5)).unwrap();
        assert_eq!(pong.agent, "test");
        let err = AgentConnection::open(&endpoint, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(err.to_string().contains("refused"), "{err}");
        server.join().unwrap();
        let gone = AgentEndpoint::Vsock {
            socket: dir.path().join("missing.sock"),
            port: 1,
        };
        let err = AgentConnection::open(&gone, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }

    #[test]
    fn serial_clients_take_a_free_port_each() {
        let dir = tempfile::tempdir().unwrap();
        let sockets: Vec<PathBuf> = (0..2)
            .map(|i| dir.path().join(format!("agent-{i}.sock")))
            .collect();
        for s in &sockets {
            serve_pings(UnixListener::bind(s).unwrap());
        }
        let endpoint = AgentEndpoint::Serial {
            sockets: sockets.clone(),
        };
        let first = AgentConnection::open(&endpoint, Duration::from_secs(5)).unwrap();
        let second = AgentConnection::open(&endpoint, Duration::from_secs(5)).unwrap();
        // Both ports are held: a third client waits, then says so.
        let err = AgentConnection::open(&endpoint, Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("all 2 agent ports are in use"),
            "{err}"
        );
        drop(first);
        let mut third = AgentConnection::open(&endpoint, Duration::from_secs(5)).unwrap();
        let pong: Pong = third.call(Request::Ping, Duration::from_secs(5)).unwrap();
        assert_eq!(pong.version, VERSION);
        drop(second);
    }

    #[test]
    fn an_agent_that_never_answers_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent-0.sock");
        // Accepts and reads, never answers (a guest without an agent).
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let endpoint = AgentEndpoint::Serial {
            sockets: vec![socket],
        };
        let err = AgentConnection::open(&endpoint, Duration::from_millis(500))
            .err()
            .unwrap();
        assert!(matches!(err, AgentError::Timeout(_)), "{err}");
    }

    #[test]
    fn a_frame_that_arrives_slowly_is_read_whole() {
        let (client, mut guest) = UnixStream::pair().unwrap();
        let mut conn = AgentConnection {
            stream: client,
            channel: 5,
            _lock: None,
        };
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &Frame::new(5, Kind::Stdout, b"slow".to_vec())).unwrap();
        let writer = std::thread::spawn(move || {
            guest.write_all(&bytes[..3]).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            guest.write_all(&bytes[3..]).unwrap();
            guest
        });
        // Nothing yet: a plain timeout.
        let first = conn.recv(Some(Duration::from_millis(1)));
        // Begun within the wait, finished after it: still one frame.
        let frame = match first {
            Err(AgentError::Timeout(_)) => conn.recv(Some(Duration::from_millis(100))),
            other => other,
        }
        .unwrap();
        assert_eq!(
            (frame.kind, frame.payload.as_slice()),
            (Kind::Stdout, &b"slow"[..])
        );
        let _guest = writer.join().unwrap();
        assert!(matches!(
            conn.recv(Some(Duration::from_millis(50))),
            Err(AgentError::Timeout(_))
        ));
    }
}
