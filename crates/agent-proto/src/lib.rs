//! The protocol between the firebuild host tool and the guest agent.
//!
//! The agent is part of the guest init (`vminit`) in every microVM. The host
//! reaches it over Firecracker's vsock (the VM's vsock Unix socket, then
//! `CONNECT <VSOCK_PORT>`) or, on QEMU, over virtio-serial ports backed by
//! Unix sockets in the VM's run directory ([`serial_port_name`]). Above
//! either transport a connection carries [`frame`]s; each request opens a
//! channel of its own, so one connection can run several at once. File
//! trees (`cp`) travel as [`tree`] entries with the same code on both
//! sides. Nothing here needs an async runtime: the guest side is a static
//! binary with threads.

pub mod frame;
pub mod tree;

pub use frame::{read_frame, write_frame, Frame, Kind};
use serde::{Deserialize, Serialize};

/// Protocol version; both sides must speak the same.
pub const VERSION: u32 = 1;

/// The guest vsock port the agent listens on (Firecracker).
pub const VSOCK_PORT: u32 = 1024;

/// How many virtio-serial agent ports a QEMU VM has: so many host clients
/// (`exec`, `cp`, health queries) can talk to the agent at once.
pub const SERIAL_PORTS: usize = 8;

/// The name of virtio-serial agent port `i` (what the guest finds in
/// `/sys/class/virtio-ports/*/name`).
pub fn serial_port_name(i: usize) -> String {
    format!("org.firebuild.agent.{i}")
}

/// The first frame of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Request {
    /// Run a process; stdio, window size and signals follow on the channel,
    /// which ends with [`Kind::Exit`] (or [`Kind::Error`] if it could not
    /// start).
    Exec(ExecRequest),
    /// Receive a file tree (entries follow from the host) at `dest`, as
    /// `docker cp SRC CONTAINER:DEST` places it; ends with a
    /// [`Kind::Reply`] of [`Copied`] or a [`Kind::Error`].
    CopyIn {
        dest: String,
        /// Create `dest` and its missing parents (0755) first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        parents: bool,
    },
    /// Send the file tree at `source` (entries, then [`Kind::End`]).
    CopyOut { source: String },
    /// The health check's state: a [`Kind::Reply`] of [`HealthReport`].
    Health,
    /// The VM's resource use: a [`Kind::Reply`] of [`GuestStats`].
    Stats,
    /// A [`Kind::Reply`] of [`Pong`].
    Ping,
    /// Build mode only: end the RUN step (stray processes killed, the
    /// step's mounts undone) and send its diff, the overlay's upper
    /// directory, as a layer tree ([`tree::send_layer`]), then [`Kind::End`].
    LayerOut,
    /// Right after a restore from a snapshot: take on a new identity
    /// (address, hostname, clock, entropy); a [`Kind::Reply`] of
    /// [`Reidentified`].
    Reidentify(Identity),
    /// Pods: mount `disk` (plugged in by the host) as the read-only image
    /// of container `id`, with an overlay for its writes on the scratch
    /// disk; a [`Kind::Reply`] of [`ContainerRootReady`].
    /// [`ExecRequest::container`] then runs in it.
    ContainerRoot { id: String, disk: GuestDisk },
    /// Pods: undo [`Request::ContainerRoot`] (its writes go too), so the
    /// host can unplug the disk; a [`Kind::Reply`] of [`Removed`].
    RemoveContainerRoot { id: String },
}

/// Where the guest finds a disk the host plugged in while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum GuestDisk {
    /// A hot-plugged virtio-blk device with this serial (QEMU).
    Serial { serial: String },
    /// A drive reserved at boot (`vdX`) that the host re-pointed at the
    /// image (Firecracker): ready once the guest sees `sectors` 512-byte
    /// sectors on it.
    Device { name: String, sectors: u64 },
}

/// What [`Request::ContainerRoot`] mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRootReady {
    /// The container's root in the VM (binds are copied under it).
    pub path: String,
}

/// The answer to a removal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {}

/// Who a VM restored from a snapshot is now. The source's identity is in
/// its memory: each fork gets its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub hostname: String,
    #[serde(default)]
    pub network: Option<NetworkIdentity>,
    /// The host's wall clock, in nanoseconds since the Unix epoch: the
    /// guest's stopped while it was a snapshot.
    pub unix_time_ns: u64,
    /// Fresh random bytes mixed into (and credited to) the guest's pool, so
    /// forks do not share random streams.
    pub entropy: Vec<u8>,
}

/// The fork's own place on its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIdentity {
    /// The interface's MAC at snapshot time (which device to change).
    pub previous_mac: String,
    pub mac: String,
    /// IPv4 address and prefix length.
    pub address: String,
    pub prefix: u8,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// What [`Request::Reidentify`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reidentified {
    /// The interface that took the new address.
    pub interface: Option<String>,
    /// How far the wall clock was stepped, in milliseconds.
    pub clock_step_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// `KEY=value` on top of the image's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; default: the image's USER.
    #[serde(default)]
    pub user: Option<String>,
    /// Default: the image's WORKDIR.
    #[serde(default)]
    pub workdir: Option<String>,
    /// A pseudo-terminal for stdin/stdout (stderr goes to it too).
    #[serde(default)]
    pub tty: bool,
    /// Stdin frames follow; without it stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal size, with `tty`.
    #[serde(default)]
    pub size: Option<Resize>,
    /// Groups on top of the user's own (an OCI spec's `additionalGids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    /// Resource limits to set (an OCI spec's `rlimits`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS` before the program starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// Pods: run in this container's root ([`Request::ContainerRoot`]), in
    /// a mount namespace of its own, instead of the VM's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A resource limit: `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ... as OCI names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
}

/// How a process ended: its exit code, or 128+N when killed by signal N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub code: i32,
}

/// A request that failed. `code` is what the host exits with: 126 (could
/// not run: unknown user, missing working directory, not executable) and
/// 127 (no such command), as Docker uses them; 1 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub version: u32,
    /// The guest init's version.
    pub agent: String,
}

/// What a copy wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    /// Entries not copied: in a copy, those that are neither files,
    /// directories nor symlinks (devices, FIFOs, sockets); in a layer
    /// tree, sockets.
    pub skipped: u64,
}

/// The VM's resource use as its kernel counts it (`/proc`): what the
/// containerd shim reports as the task's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// CPU time of all CPUs in user (with nice) and system mode.
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_total_bytes: u64,
    /// In use: total minus available.
    pub memory_used_bytes: u64,
    /// Anonymous memory (the processes' own) and the page cache.
    pub memory_anon_bytes: u64,
    pub memory_cache_bytes: u64,
    /// Processes (not threads) in the VM, the init and agent included.
    pub pids: u64,
}

/// The health check's state, as `docker inspect` shows `State.Health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub failing_streak: u32,
    /// The last five results, oldest first.
    pub log: Vec<HealthResult>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The VM has no health check.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::None => "none",
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// Unix time in nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    /// 0 healthy, 1 unhealthy; -1 when the check could not run or timed out.
    pub exit_code: i32,
    /// The check's output (at most 4 KiB, as Docker keeps).
    pub output: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let e = Envelope {
            version: VERSION,
            request: Request::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            }),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"type\":\"exec\""), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), e);
        let cp: Envelope =
            serde_json::from_str(r#"{"version":1,"request":{"type":"copy-in","dest":"/x"}}"#)
                .unwrap();
        assert_eq!(
            cp.request,
            Request::CopyIn {
                dest: "/x".into(),
                parents: false
            }
        );
        assert_eq!(serial_port_name(3), "org.firebuild.agent.3");
    }
}
