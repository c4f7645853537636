//! The command line: names and flags of the original firebuild, plus ours.
//!
//! This module only describes arguments; `commands` does the work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use firebuild_host::settings_args::{parse_key_value, Isolation, SettingsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "firebuild",
    version,
    about = "Build microVM root filesystems from Dockerfiles, keep them tagged, and run microVMs from them",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the command name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Profile to apply (`profile-create`: the profile to create or update).
    /// Without it, the embedded default profile applies.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,

    /// Directory holding the profiles' JSON files.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = firebuild_host::profile::DEFAULT_PROFILE_CONF_DIR
    )]
    pub profile_conf_dir: PathBuf,

    /// Log level.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log one JSON object per line on stderr (and list VMs as JSON lines).
    #[arg(long, global = true)]
    pub log_as_json: bool,

    /// Colour log output (default: when stderr is a terminal).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_color: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a profile, or update it when it exists.
    ProfileCreate(ProfileCreateArgs),
    /// List profiles.
    ProfileLs,
    /// Print a profile as JSON.
    ProfileInspect,

    /// Build a base OS root filesystem from a Dockerfile (stored as _/<image>/<version>).
    Baseos(BaseosArgs),
    /// Build an application root filesystem from a Dockerfile or an OCI image.
    Rootfs(RootfsArgs),

    /// Boot a microVM from a tagged root filesystem and a kernel.
    Run(RunArgs),
    /// List microVMs.
    Ls(LsArgs),
    /// Print a microVM's run metadata as JSON.
    Inspect(VmArgs),
    /// Stop a microVM: its STOPSIGNAL first, forced after --shutdown-timeout.
    Kill(KillArgs),
    /// Remove everything left by microVMs that are no longer running.
    Purge(PurgeArgs),
    /// Print a microVM's console log.
    Logs(LogsArgs),
    /// Run a command in a running microVM, through its guest agent.
    Exec(ExecArgs),
    /// Copy files and directory trees into or out of a running microVM.
    Cp(CpArgs),
    /// Wait until a microVM exits; print (and exit with) its entrypoint's status.
    Wait(VmArgs),
    /// Stop a running microVM's vCPUs (its memory and devices stay).
    Pause(VmArgs),
    /// Let a paused microVM run again.
    Resume(VmArgs),
    /// Snapshots of running microVMs, to start forks from (`run --from-snapshot`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),

    /// Stored root filesystems and pulled OCI images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Named, persistent disks for `run --volume`.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Guest kernels.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Dockerfile tools.
    #[command(subcommand)]
    Dockerfile(DockerfileCommand),
    /// CNI networks for microVMs.
    #[command(subcommand)]
    Network(NetworkCommand),
}

#[derive(Debug, Args)]
pub struct ProfileCreateArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build argument, repeatable: --build-arg KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub build_arg: Vec<(String, String)>,
    /// Build context directory (default: the Dockerfile's directory).
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,
    /// Size of the ext4 file system in MiB (default: content plus headroom).
    #[arg(long, value_name = "MIB")]
    pub filesystem_size_mbs: Option<u64>,
    /// Do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Target platform of FROM images.
    #[arg(long, value_name = "OS/ARCH", default_value = "linux/amd64")]
    pub platform: String,
    /// Command run before the Dockerfile's instructions, repeatable.
    #[arg(long, value_name = "COMMAND")]
    pub pre_build_command: Vec<String>,
    /// Command run after the Dockerfile's instructions, repeatable.
    #[arg(long, value_name = "COMMAND")]
    pub post_build_command: Vec<String>,
    /// Network of RUN steps: `default` (a private network behind a NAT that
    /// cannot reach this host), `none`, or `host` (the host's network,
    /// loopback services included: only for Dockerfiles you trust).
    #[arg(long, value_name = "MODE", default_value = "default", value_parser = firebuild_builder::Network::parse)]
    pub network: firebuild_builder::Network,
    /// Memory limit of each RUN step (bytes, or with a k, m or g suffix).
    #[arg(long, value_name = "SIZE", value_parser = firebuild_builder::sandbox::limits::parse_memory)]
    pub memory: Option<u64>,
    /// CPU limit of each RUN step, in CPUs (0.5, 2).
    #[arg(long, value_name = "CPUS", value_parser = firebuild_builder::sandbox::limits::parse_cpus)]
    pub cpus: Option<u64>,
    /// Limit on the processes and threads of each RUN step.
    #[arg(long, value_name = "N", value_parser = firebuild_builder::sandbox::limits::parse_pids)]
    pub pids_limit: Option<u64>,
    /// Kernel of the build microVMs (--isolation microvm); default: the
    /// profile's default kernel, else the only registered one.
    #[arg(long, value_name = "ID")]
    pub vmlinux_id: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct BaseosArgs {
    /// Dockerfile: a path, inline text, an http(s) URL or a git URL.
    #[arg(long, value_name = "SRC")]
    pub dockerfile: String,
    /// Tag; default: the FROM image's name and version.
    #[arg(long)]
    pub tag: Option<String>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["dockerfile", "docker_image"]))]
pub struct RootfsArgs {
    /// Dockerfile: a path, inline text, an http(s) URL or a git URL
    /// (git+https://host/repo.git:/path/Dockerfile#ref).
    #[arg(long, value_name = "SRC")]
    pub dockerfile: Option<String>,
    /// Make the root filesystem from an existing OCI image instead.
    #[arg(long, value_name = "REF")]
    pub docker_image: Option<String>,
    /// Tag of the build: org/name:version.
    #[arg(long)]
    pub tag: String,
    /// Build up to this stage.
    #[arg(long, value_name = "NAME")]
    pub dockerfile_stage: Option<String>,
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub legacy: LegacyBuildArgs,
}

/// Flags of the original's VM-based build; accepted so existing commands keep
/// working, and ignored because builds here run in a sandbox.
#[derive(Debug, Args)]
pub struct LegacyBuildArgs {
    #[arg(long, hide = true)]
    pub bootstrap_certs_key_size: Option<u32>,
    #[arg(long, hide = true)]
    pub bootstrap_certs_validity: Option<String>,
    #[arg(long, hide = true)]
    pub bootstrap_initial_communication_timeout: Option<String>,
    #[arg(long, hide = true)]
    pub bootstrap_server_bind_interface: Option<String>,
}

impl LegacyBuildArgs {
    pub fn given(&self) -> bool {
        self.bootstrap_certs_key_size.is_some()
            || self.bootstrap_certs_validity.is_some()
            || self.bootstrap_initial_communication_timeout.is_some()
            || self.bootstrap_server_bind_interface.is_some()
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Tagged root filesystem to boot: org/name:version; or an image in a
    /// registry (registry.host/repository:tag), pulled if not stored yet.
    #[arg(
        long,
        value_name = "TAG|REF",
        required_unless_present = "from_snapshot"
    )]
    pub from: Option<String>,
    /// Resume a snapshot (`firebuild snapshot create`) instead of booting:
    /// a fork with its own disk, address, hostname, clock and entropy.
    /// The image, kernel, vCPUs, memory and command are the snapshot's.
    #[arg(
        long,
        value_name = "TAG",
        conflicts_with_all = [
            "from", "vmlinux_id", "env", "env_file", "identity_file", "kernel_args",
            "volume", "command", "disk_size", "rootfs_mode", "cpu", "mem",
        ]
    )]
    pub from_snapshot: Option<String>,
    /// Kernel id (see `firebuild kernel ls`); default: the profile's
    /// default kernel, else the only registered one.
    #[arg(long, value_name = "ID")]
    pub vmlinux_id: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub mem: u32,
    /// Environment variable, repeatable: --env KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Environment file (KEY=VALUE lines), repeatable; --env wins over it.
    #[arg(long, value_name = "PATH")]
    pub env_file: Vec<PathBuf>,
    /// SSH public key to authorize in the guest, repeatable.
    #[arg(long, value_name = "PATH")]
    pub identity_file: Vec<PathBuf>,
    /// Guest user that gets the SSH keys.
    #[arg(long, value_name = "USER", default_value = "root")]
    pub ssh_user: String,
    /// Guest hostname (default: a random readable name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Name of the microVM, used as its id (default: random).
    #[arg(long)]
    pub name: Option<String>,
    /// Return once the microVM has started, printing its id.
    #[arg(long)]
    pub daemonize: bool,
    /// Remove the run directory when the microVM exits.
    #[arg(long)]
    pub rm: bool,
    /// Extra kernel arguments.
    #[arg(long, value_name = "ARGS")]
    pub kernel_args: Option<String>,
    /// What the guest init does after set-up.
    #[arg(long, value_enum, default_value_t = InitModeArg::Entrypoint)]
    pub init_mode: InitModeArg,
    /// CNI network to attach the microVM to.
    #[arg(long, visible_alias = "network", value_name = "NAME")]
    pub cni_network_name: Option<String>,
    /// Static IP address to request from the network's IPAM.
    #[arg(long, value_name = "IP")]
    pub ip_address: Option<String>,
    /// Publish a port, repeatable: HOST:GUEST[/tcp|udp], iface:host:dest/proto, host:dest, dest.
    #[arg(long, value_name = "SPEC")]
    pub port: Vec<String>,
    /// Run Firecracker without the jailer (development hosts only).
    #[arg(long)]
    pub no_jailer: bool,
    /// How long to wait for a graceful stop (Ctrl-C in the foreground,
    /// --rm): 15s, 1m, 500ms, or bare seconds.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// overlay: the image is shared read-only and the VM writes to its own
    /// sparse scratch disk; copy: the VM gets a private copy of the image.
    #[arg(long, value_name = "MODE", default_value = "overlay")]
    pub rootfs_mode: firebuild_vm::RootfsMode,
    /// Size of the scratch disk, the most the VM can write (sparse: it
    /// costs only what is written). Bytes, or with a k, m, g or t suffix.
    #[arg(long, value_name = "SIZE", default_value = "10g", value_parser = firebuild_builder::sandbox::limits::parse_size)]
    pub disk_size: u64,
    /// Attach a volume (`firebuild volume create`) or an existing ext4
    /// image file, mounted at an absolute guest path; `:ro` read-only.
    /// A volume is written by one running VM at a time. Repeatable.
    #[arg(long, short = 'v', value_name = "NAME|/HOST/DISK.IMG:/GUEST/PATH[:ro]")]
    pub volume: Vec<firebuild_vm::VolumeSpec>,
    /// Command overriding the image's CMD.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Docker's health check flags of `run`.
#[derive(Debug, Clone, Default, Args)]
pub struct HealthArgs {
    /// Run no health check, whatever the image's HEALTHCHECK says.
    #[arg(long, conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,
    /// Health check command (run with /bin/sh -c in the guest).
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between checks (30s, 1m, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Time a check may take.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures before the VM is unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Time to start before failures count.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_start_period: Option<Duration>,
    /// Time between checks during the start period.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_start_interval: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Id of the microVM.
    #[arg(long, value_name = "ID")]
    pub vmm_id: String,
    /// Keep stdin open and forward it (EOF closes it).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// User (name or uid, optionally :group) instead of the image's USER.
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory instead of the image's WORKDIR.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Environment variable, repeatable: --env KEY=VALUE.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a host path, or ID:PATH in a microVM.
    pub source: String,
    /// Destination: a host path, or ID:PATH in a microVM.
    pub destination: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitModeArg {
    /// Run the image's entrypoint; power off when it exits.
    Entrypoint,
    /// Hand over to the image's own /sbin/init.
    Image,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Id of the microVM.
    #[arg(long, value_name = "ID")]
    pub vmm_id: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Id of the microVM.
    #[arg(long, value_name = "ID")]
    pub vmm_id: String,
    /// How long to wait for a clean shutdown before forcing it: 15s, 1m,
    /// 500ms, or bare seconds.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Id of the microVM.
    #[arg(long, value_name = "ID")]
    pub vmm_id: String,
    /// Keep printing as the console log grows.
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List stored root filesystems and pulled OCI images.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print a stored image's metadata.json.
    Inspect {
        /// org/name:version
        tag: String,
        /// Also print the manifest digest `image push` would produce
        /// (`push-manifest-digest`; makes the layer blobs not made yet).
        #[arg(long)]
        push_digest: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove a stored image (refused while VMs use it, until they are
    /// purged) or a pulled or imported OCI image (its blobs go with `image prune`).
    Rm {
        /// org/name:version, or an OCI image as `image ls` shows it
        tag: String,
        /// Remove the tag even if VMs use the image; its data stays until
        /// the last of them is purged.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Pull an OCI image into the blob cache; with --tag, also store it as a
    /// root filesystem ready to run (as `rootfs --docker-image` does).
    Pull {
        /// Image reference, e.g. alpine:3.20 or ghcr.io/org/app@sha256:...
        reference: String,
        #[arg(long, value_name = "OS/ARCH", default_value = "linux/amd64")]
        platform: String,
        /// Store the image as this root filesystem: org/name:version.
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// With --tag: the ext4 size (default: the content plus headroom).
        #[arg(long, value_name = "MIB", requires = "tag")]
        filesystem_size_mbs: Option<u64>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Push a stored root filesystem to an OCI registry as a plain image:
    /// the build's layers, the run settings as the image config, firebuild's
    /// metadata as an annotation. Honours SOURCE_DATE_EPOCH.
    Push {
        /// The stored image: org/name:version.
        tag: String,
        /// Where to: registry/repository:tag.
        reference: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Make a base image from a rootfs tarball or directory, an OCI layout or a docker-save tarball.
    Import {
        /// File or directory to import.
        source: PathBuf,
        /// Tag: name:version or org/name:version.
        #[arg(long)]
        tag: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove build-cache layers no stored image was built from.
    Prune {
        /// Also empty the RUN --mount=type=cache directories.
        #[arg(long)]
        cache_mounts: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: a sparse disk with an empty filesystem.
    Create {
        name: String,
        /// Its size (sparse: it costs only what is written). Bytes, or with
        /// a k, m, g or t suffix.
        #[arg(long, value_name = "SIZE", default_value = "1g", value_parser = firebuild_builder::sandbox::limits::parse_size)]
        size: u64,
        #[arg(long, value_name = "FS", default_value = "ext4")]
        fs: firebuild_vm::VolumeFs,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List volumes, with the VMs that use them.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print a volume as JSON, with the VMs that use it.
    Inspect {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove volumes and their data (refused while a VM not yet purged uses one).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a running (or paused) microVM: memory, device state and its
    /// writable disk; the VM is paused meanwhile, then resumed.
    Create {
        /// Id of the microVM.
        #[arg(long, value_name = "ID")]
        vmm_id: String,
        /// The snapshot's tag: org/name:version.
        #[arg(long, value_name = "TAG")]
        tag: String,
        /// Stop the VM once the snapshot is written instead of resuming it.
        #[arg(long)]
        stop: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List snapshots.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print a snapshot's record as JSON, with the VMs running from it.
    Inspect {
        tag: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove snapshots (refused while a VM runs from one).
    Rm {
        #[arg(required = true)]
        tags: Vec<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build a microVM kernel from source.
    Build {
        /// Kernel source: a .tar.xz/.tar.gz tarball or an unpacked tree.
        #[arg(long, value_name = "SRC")]
        source: PathBuf,
        /// Id to store the kernel under.
        #[arg(long)]
        id: String,
        /// Config fragment merged over the project's microVM config.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Parallel make jobs (default: number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Register an existing vmlinux.
    Add {
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        #[arg(long)]
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List kernels.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove a kernel.
    Rm {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print a kernel's metadata.
    Inspect {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Push a kernel to an OCI registry as an artifact (REF: registry/repository:tag).
    Push {
        id: String,
        #[arg(value_name = "REF")]
        reference: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Pull a kernel artifact from an OCI registry and store it under --id.
    Pull {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long)]
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DockerfileCommand {
    /// Print what the parser understood of a Dockerfile.
    Parse {
        /// Dockerfile: a path, inline text, an http(s) URL or a git URL.
        source: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a CNI bridge network.
    Create {
        name: String,
        #[arg(long, value_name = "CIDR")]
        subnet: String,
        #[arg(long, value_name = "IP")]
        gateway: Option<String>,
        #[arg(long, value_name = "NAME")]
        bridge: Option<String>,
        #[arg(long)]
        ip_masq: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List CNI networks.
    Ls {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Remove a CNI network.
    Rm {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

/// Parses `KEY=VALUE`; the value may contain `=` and be empty.
/// A duration as Docker and the original firebuild read them (`500ms`,
/// `15s`, `1m`, `1h30m`), or bare seconds (`15`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?} is not a duration: use 500ms, 15s, 1m, 1h30m or a number of seconds");
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse_as_docker_writes_them() {
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "1m2", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shutdown_timeouts_take_durations_and_bare_seconds() {
        let timeout = |value: &str| {
            let cli = Cli::try_parse_from([
                "firebuild",
                "kill",
                "--vmm-id",
                "vm",
                "--shutdown-timeout",
                value,
            ])
            .map_err(|e| e.to_string())?;
            match cli.command {
                Command::Kill(k) => Ok(k.shutdown_timeout),
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(timeout("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(timeout("7"), Ok(Duration::from_secs(7)));
        let err: String = timeout("soon").unwrap_err();
        assert!(err.contains("is not a duration"), "{err}");
        let cli = Cli::try_parse_from(["firebuild", "kill", "--vmm-id", "vm"]).unwrap();
        assert!(
            matches!(cli.command, Command::Kill(k) if k.shutdown_timeout == Duration::from_secs(15))
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_before_and_after_the_command() {
        let before = Cli::try_parse_from([
            "firebuild",
            "--profile=standard",
            "--log-as-json",
            "profile-inspect",
        ])
        .unwrap();
        let after = Cli::try_parse_from([
            "firebuild",
            "profile-inspect",
            "--profile=standard",
            "--log-as-json",
        ])
        .unwrap();
        for cli in [before, after] {
            assert_eq!(cli.global.profile.as_deref(), Some("standard"));
            assert!(cli.global.log_as_json);
        }
    }

    #[test]
    fn key_value_parsing() {
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert_eq!(parse_key_value("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }
}
