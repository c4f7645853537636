//! The crate's error type: every variant says what failed, on which input,
//! and (where there is one) what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while preparing, launching or driving Firecracker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Firecracker answered a request with an error status.
    #[error(
        "Firecracker rejected {method} {path} with {status}: {fault_message}{}",
        body_suffix(request_body)
    )]
    Api {
        method: String,
        path: String,
        status: u16,
        /// Firecracker's `fault_message` (or the raw body if it sent none).
        fault_message: String,
        /// The JSON body we sent (redacted for `/mmds`, which may carry secrets).
        request_body: Option<String>,
    },

    /// Firecracker answered with something this client cannot read.
    #[error("unexpected answer to {method} {path} ({status}): {reason}")]
    UnexpectedResponse {
        method: String,
        path: String,
        status: u16,
        reason: String,
    },

    /// The HTTP exchange itself failed (connection reset, malformed HTTP…).
    #[error(
        "HTTP exchange {method} {path} on {socket} failed: {source}; is Firecracker still running?"
    )]
    Http {
        method: String,
        path: String,
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },

    /// Connecting to the API socket failed.
    #[error(
        "cannot connect to the Firecracker API socket {socket}: {source}; is Firecracker running?"
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A request got no complete answer in time.
    #[error("Firecracker did not answer {method} {path} within {timeout:?}; the VMM may be hung")]
    RequestTimeout {
        method: String,
        path: String,
        timeout: Duration,
    },

    /// The API socket never accepted connections.
    #[error("the Firecracker API socket {socket} did not accept connections within {waited:?} (last error: {last_error}); check the Firecracker log and that the binary runs on this host")]
    SocketTimeout {
        socket: PathBuf,
        waited: Duration,
        last_error: String,
    },

    /// The process exited before its API socket came up.
    #[error(
        "Firecracker (pid {pid}) exited before its API socket {socket} came up{}",
        hint_suffix(hint)
    )]
    ExitedEarly {
        pid: u32,
        socket: PathBuf,
        hint: Option<String>,
    },

    /// A Unix socket path longer than `sun_path` allows.
    #[error("the socket path {path} is {len} bytes, longer than the {max} bytes a Unix socket address holds; use a shorter {what}")]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
        what: &'static str,
    },

    /// The VM description is invalid before anything is sent.
    #[error("invalid VM configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// A VM id Firecracker and its jailer would refuse.
    #[error("invalid VM id {id:?}: {reason} (allowed: 1 to 64 ASCII letters, digits and hyphens)")]
    InvalidVmId { id: String, reason: &'static str },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A jail directory for this VM id is already there.
    #[error("the jail {path} already exists; a VM with this id ran before: clean it up (purge) or use a new id")]
    JailExists { path: PathBuf },

    /// Starting a program failed.
    #[error("cannot start {program}: {source}; check the path in the profile")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The jailer exited with an error.
    #[error("the jailer {program} failed ({status}): {stderr}")]
    JailerFailed {
        program: PathBuf,
        status: String,
        stderr: String,
    },

    /// The jailer did not finish setting up the jail in time.
    #[error("the jailer {program} did not finish within {waited:?} (waiting for {stage}); the jail and whatever it started were removed")]
    JailerTimeout {
        program: PathBuf,
        waited: Duration,
        /// What was still missing: the jailer's exit, or its pid file.
        stage: String,
    },

    /// The jail's pid file is missing or unreadable.
    #[error("cannot read the Firecracker pid from {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },

    /// A cgroup setting names a controller this host does not offer.
    #[error("cgroup setting {setting:?} needs the {controller:?} controller, which neither the cgroup v1 mounts ({v1}) nor the v2 hierarchy ({v2}) offer on this host")]
    CgroupControllerUnavailable {
        setting: String,
        controller: String,
        v1: String,
        v2: String,
    },

    /// A malformed `--cgroup` setting.
    #[error("invalid cgroup setting {setting:?}: expected <controller>.<file>=<value>, e.g. cpu.shares=512")]
    InvalidCgroupSetting { setting: String },

    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup {path}: {source}; is a process still in it?")]
    CgroupRemove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Cleanup was asked for while the VMM still runs.
    #[error("Firecracker (pid {pid}) is still running; stop it before cleaning up")]
    StillRunning { pid: u32 },

    /// Sending a signal failed.
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        signal: &'static str,
        pid: u32,
        #[source]
        source: std::io::Error,
    },

    /// A JSON body could not be serialized.
    #[error("cannot serialize the body of {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The blocking API was called from inside an async runtime.
    #[error("the blocking Firecracker API was called from inside a tokio runtime; use the async `Client` there")]
    InsideAsyncRuntime,

    /// The internal tokio runtime could not be built.
    #[error("cannot create the tokio runtime for the blocking client: {0}")]
    Runtime(#[source] std::io::Error),
}

fn body_suffix(body: &Option<String>) -> String {
    match body {
        Some(b) => format!(" (request body: {b})"),
        None => String::new(),
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("; {h}"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// The `fault_message` when this is an error answer from Firecracker.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            Error::Api { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}
