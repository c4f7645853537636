//! Errors of the VM runtime: each says what failed, on which input, and what
//! to do about it.

use std::io;
use std::path::PathBuf;

use crate::vmm::VmmKind;

/// Everything that can go wrong while preparing, starting, stopping or
/// cleaning up a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("kernel {path}: {source}; pass the path of an existing uncompressed vmlinux")]
    Kernel { path: PathBuf, source: io::Error },

    #[error("root filesystem image {path}: {source}; is the image still in the store?")]
    Rootfs { path: PathBuf, source: io::Error },

    #[error("env file {path}: {source}")]
    EnvFileRead { path: PathBuf, source: io::Error },

    #[error("env file {path}, line {line}: {reason}")]
    EnvFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("--env {value:?}: {reason}")]
    EnvArg { value: String, reason: String },

    #[error("identity file {path}: {reason}")]
    IdentityFile { path: PathBuf, reason: String },

    #[error("--ssh-user {user:?}: {reason}")]
    SshUser { user: String, reason: String },

    #[error("VM name {name:?} is not valid: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("hostname {hostname:?} is not valid: {reason}")]
    InvalidHostname { hostname: String, reason: String },

    #[error("a VM named {name:?} already exists ({dir}); choose another --name, or `firebuild purge` it once it has exited")]
    NameClash { name: String, dir: PathBuf },

    #[error("image {image} has neither ENTRYPOINT nor CMD; give a command after `--`")]
    NoCommand { image: String },

    #[error("{what} must be at least {min}, got {value}")]
    Resource {
        what: &'static str,
        min: u64,
        value: u64,
    },

    #[error("kernel arguments {args:?}: {reason}")]
    KernelArgs { args: String, reason: String },

    #[error("network namespace {path}: {source}; was the VM's network set up?")]
    Netns { path: PathBuf, source: io::Error },

    #[error("network attachment: {reason}")]
    Network { reason: String },

    #[error("setting up the network {network} for VM {id}: {source}")]
    NetworkSetup {
        id: String,
        network: String,
        source: crate::network::NetworkError,
    },

    #[error("{path} is too long for a Unix socket ({len} bytes, at most {max}); use a shorter run cache directory or VM name")]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },

    #[error("VMM {kind} is not usable here: {reason}")]
    VmmUnavailable { kind: VmmKind, reason: String },

    #[error("no VMM backend is usable on this host: {reasons}")]
    NoVmm { reasons: String },

    #[error("copying root filesystem {from} to {to}: {source}")]
    RootfsCopy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("run metadata {path}: {source}; remove the directory if it is not a firebuild VM")]
    RunMetadata {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("encoding the guest metadata: {0}")]
    GuestMetadata(serde_json::Error),

    #[error("starting {kind} for VM {id}: {reason}")]
    Start {
        kind: VmmKind,
        id: String,
        reason: String,
    },

    #[error("QMP {socket}: {reason}")]
    Qmp { socket: PathBuf, reason: String },

    #[error("stopping VM {id}: {reason}")]
    Stop { id: String, reason: String },

    #[error("no VM {id:?} in {run_cache}; see `firebuild ls`")]
    NotFound { id: String, run_cache: PathBuf },

    #[error("VM {id} is {state}: its agent cannot be reached")]
    NotRunning { id: String, state: String },

    #[error("VM {id} is still running; stop it with `firebuild kill --vmm-id {id}` first")]
    StillRunning { id: String },

    #[error("releasing the network of VM {id}: {reason}")]
    NetworkRelease { id: String, reason: String },

    #[error("no {kind} backend is registered with the runtime")]
    BackendMissing { kind: VmmKind },

    #[error("volume name {name:?} is not valid: {reason}")]
    VolumeName { name: String, reason: String },

    #[error("volume {name:?} already exists; choose another name, or `firebuild volume rm {name}` first")]
    VolumeExists { name: String },

    #[error("no volume {name:?} in {store}; create it with `firebuild volume create {name}`, or give the absolute path of an ext4 image file")]
    VolumeNotFound { name: String, store: PathBuf },

    #[error(
        "volume record {path}: {source}; remove the directory if it is not a firebuild volume"
    )]
    VolumeRecord {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("--volume {spec}: {reason}")]
    VolumeSpec { spec: String, reason: String },

    #[error("volume {volume} is used by VM {vms} (not yet purged); kill and purge them first")]
    VolumeInUse { volume: String, vms: String },

    #[error("VM {id} cannot be {action}: {reason}")]
    Pause {
        id: String,
        action: &'static str,
        reason: String,
    },

    #[error("disk {disk} of VM {id}: {reason}")]
    Hotplug {
        id: String,
        disk: String,
        reason: String,
    },

    #[error("snapshot of VM {id}: {reason}")]
    Snapshot { id: String, reason: String },

    #[error("snapshot {tag}: {reason}")]
    Restore { tag: String, reason: String },

    #[error("{what} was interrupted; nothing of it was kept")]
    Interrupted { what: String },

    #[error("writing the console: {0}")]
    ConsoleSink(io::Error),
}

impl VmError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        VmError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
