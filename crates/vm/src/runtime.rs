//! The VM runtime: `run` (prepare → launch → stream or detach), `ls`,
//! `inspect`, `kill`, `purge` and `logs`, driving any [`Vmm`] backend.
//!
//! There is no daemon: every command reads and updates the run metadata in
//! the run directories, and liveness is checked from the recorded pid and
//! process start time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firebuild_metadata::guest::GuestVolume;
use firebuild_metadata::{ImageMetadata, InitMode};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::agent::AgentConnection;
use crate::agent::AgentEndpoint;
use crate::argv::resolve_argv;
use crate::console::{exit_code_from_log, ConsoleFollower, POLL_INTERVAL};
use crate::disks::{copy_file, RootfsMode, VmDisks, MIN_DISK_SIZE};
use crate::env::{host_env, merge_env};
use crate::error::VmError;
use crate::guest::{self, BootArgs, GuestInputs};
use crate::liveness::ProcessIdentity;
use crate::names::{random_hostname, random_id, validate_hostname, validate_name};
use crate::network::{NetworkProvider, NetworkReleaser, NetworkRequest};
use crate::rundir::{RunDir, RunDirGuard};
use crate::snapshot_store::{file_digest, FileStamp, Snapshot, SnapshotRecord, SourceNetwork};
use crate::spec::{NetworkAttachment, RunSpec, VmmChoice};
use crate::state::{RunMetadata, VmStatus};
use crate::vmm::qemu::QemuVmm;
use crate::vmm::{Availability, LaunchConfig, RestoreFrom, Vmm, VmmKind};
use crate::volumes::{self, ClaimLock, VolumeMount};

/// Smallest memory size accepted, in MiB.
const MIN_MEM_MIB: u32 = 32;

/// How `run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// `--daemonize`: the VM runs; print its id.
    Detached { id: String },
    /// Foreground: the VM has exited. `exit_code` is the entrypoint's, or
    /// `None` when the guest did not report one (killed, crashed).
    Exited { id: String, exit_code: Option<i32> },
}

/// Where Ctrl-C (stop requests) come from in the foreground.
pub enum Interrupts {
    /// SIGINT of this process: the first asks the guest to stop, the second
    /// kills the VM.
    CtrlC,
    /// Each message is one stop request (tests, embedding callers).
    Channel(mpsc::UnboundedReceiver<()>),
}

/// What `purge` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// VMs whose run directory (and network, jail) is gone.
    pub removed: Vec<String>,
    /// VMs that could not be cleaned up fully, with the reason; their run
    /// directory is kept so a later purge can retry.
    pub failed: Vec<(String, String)>,
}

/// The resolved inputs of a prepared VM, kept until launch.
struct Resolved {
    image: ImageMetadata,
    env: BTreeMap<String, String>,
    ssh_user: String,
    ssh_keys: String,
    user_kernel_args: Option<String>,
    shutdown_timeout: Duration,
    init_mode: InitMode,
    healthcheck: Option<firebuild_metadata::image::Healthcheck>,
    /// How many build layer disks follow the scratch disk.
    layers: usize,
    /// The snapshot a fork resumes.
    snapshot: Option<Snapshot>,
    /// What the network provider sets up at launch.
    network_request: Option<NetworkRequest>,
    hotplug_slots: u32,
}

/// A VM whose run directory is ready (root filesystem copied, metadata
/// written) but whose VMM has not started. Dropping it removes the run
/// directory. Use it to set the network up between the two steps (the CNI
/// layer needs the VM id).
pub struct PreparedVm {
    dir: RunDirGuard,
    run_dir: RunDir,
    metadata: RunMetadata,
    backend: Arc<dyn Vmm>,
    disks: VmDisks,
    resolved: Resolved,
}

impl PreparedVm {
    /// The VM id (its name, or a random id).
    pub fn id(&self) -> &str {
        &self.metadata.id
    }

    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    pub fn metadata(&self) -> &RunMetadata {
        &self.metadata
    }

    /// Attaches the network the caller set up for this VM. It stays the
    /// caller's: when [`Runtime::launch`] fails the runtime releases only
    /// what its own provider set up, so the caller releases this one.
    pub fn attach_network(&mut self, network: NetworkAttachment) -> Result<(), VmError> {
        validate_network(&network)?;
        self.metadata.ip = Some(network.ip.to_string());
        self.metadata.network = Some(network);
        self.metadata.store(&self.run_dir.metadata())
    }
}

/// The VM runtime over a run cache directory and a set of VMM backends.
pub struct Runtime {
    run_cache: PathBuf,
    backends: Vec<Arc<dyn Vmm>>,
    network: Option<Arc<dyn NetworkReleaser>>,
    provider: Option<Arc<dyn NetworkProvider>>,
}

impl Runtime {
    /// A runtime with the QEMU backend in its default configuration.
    pub fn new(run_cache: impl Into<PathBuf>) -> Self {
        Self::with_backends(run_cache, vec![Arc::new(QemuVmm::default())])
    }

    /// A runtime with the given backends (at most one per [`VmmKind`]).
    pub fn with_backends(run_cache: impl Into<PathBuf>, backends: Vec<Arc<dyn Vmm>>) -> Self {
        Runtime {
            run_cache: run_cache.into(),
            backends,
            network: None,
            provider: None,
        }
    }

    /// Sets the hook that releases VM networks on `purge` and `--rm`.
    pub fn with_network_releaser(mut self, releaser: Arc<dyn NetworkReleaser>) -> Self {
        self.network = Some(releaser);
        self
    }

    /// Sets the network layer: it sets up what a spec's
    /// [`RunSpec::network_choice`] asks for at launch, and releases it.
    pub fn with_network_provider(mut self, provider: Arc<dyn NetworkProvider>) -> Self {
        self.network = Some(provider.clone());
        self.provider = Some(provider);
        self
    }

    pub fn run_cache(&self) -> &Path {
        &self.run_cache
    }

    fn backend(&self, kind: VmmKind) -> Result<Arc<dyn Vmm>, VmError> {
        self.backends
            .iter()
            .find(|b| b.kind() == kind)
            .cloned()
            .ok_or(VmError::BackendMissing { kind })
    }

    /// Picks the backend for `choice`; `auto` prefers Firecracker, then QEMU.
    pub async fn select_backend(
        &self,
        choice: VmmChoice,
        kernel: &Path,
    ) -> Result<Arc<dyn Vmm>, VmError> {
        let kinds: &[VmmKind] = match choice {
            VmmChoice::Firecracker => &[VmmKind::Firecracker],
            VmmChoice::Qemu => &[VmmKind::Qemu],
            VmmChoice::Auto => &[VmmKind::Firecracker, VmmKind::Qemu],
        };
        let mut reasons = Vec::new();
        for &kind in kinds {
            let backend = match self.backend(kind) {
                Ok(b) => b,
                Err(e) if choice == VmmChoice::Auto => {
                    reasons.push(format!("{kind}: {e}"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match backend.availability(kernel, &self.run_cache).await {
                Availability::Usable => return Ok(backend),
                Availability::Unusable { reason } if choice == VmmChoice::Auto => {
                    reasons.push(format!("{kind}: {reason}"));
                }
                Availability::Unusable { reason } => {
                    return Err(VmError::VmmUnavailable { kind, reason })
                }
            }
        }
        Err(VmError::NoVmm {
            reasons: reasons.join("; "),
        })
    }

    /// Checks everything in `spec`, then creates the run directory with the
    /// VM's root filesystem copy and its run metadata (status `created`).
    /// Nothing is created when a check fails.
    pub async fn prepare(&self, spec: RunSpec) -> Result<PreparedVm, VmError> {
        // --- checks, no side effects ---
        if spec.cpus < 1 {
            return Err(VmError::Resource {
                what: "--cpu",
                min: 1,
                value: spec.cpus.into(),
            });
        }
        if spec.mem_mib < MIN_MEM_MIB {
            return Err(VmError::Resource {
                what: "--mem (MiB)",
                min: MIN_MEM_MIB.into(),
                value: spec.mem_mib.into(),
            });
        }
        check_regular_file(&spec.kernel).map_err(|source| VmError::Kernel {
            path: spec.kernel.clone(),
            source,
        })?;
        check_regular_file(&spec.rootfs).map_err(|source| VmError::Rootfs {
            path: spec.rootfs.clone(),
            source,
        })?;
        volumes::check_mounts(&spec.volumes, &spec.rootfs)?;
        if !spec.layers.is_empty() && spec.rootfs_mode != RootfsMode::Overlay {
            return Err(VmError::KernelArgs {
                args: firebuild_metadata::boot::LAYERS_KERNEL_ARG.into(),
                reason: "build layers need the overlay root mode".into(),
            });
        }
        for layer in &spec.layers {
            check_regular_file(layer).map_err(|source| VmError::Rootfs {
                path: layer.clone(),
                source,
            })?;
        }
        if spec.rootfs_mode == RootfsMode::Overlay && spec.disk_size < MIN_DISK_SIZE {
            return Err(VmError::Resource {
                what: "--disk-size (bytes)",
                min: MIN_DISK_SIZE,
                value: spec.disk_size,
            });
        }
        let id = match &spec.name {
            Some(name) => {
                validate_name(name)?;
                name.clone()
            }
            None => random_id(),
        };
        let hostname = match &spec.hostname {
            Some(h) => {
                validate_hostname(h)?;
                h.clone()
            }
            None => random_hostname(),
        };
        let env = merge_env(
            &spec.image.entrypoint_info.env,
            &spec.env_files,
            &spec.env,
            host_env,
        )?;
        let command = resolve_argv(
            &spec.image.entrypoint_info,
            spec.command.as_deref(),
            &spec.image.tag,
        )?;
        let ssh_keys = guest::read_identity_files(&spec.identity_files)?;
        let healthcheck = spec.health.apply(spec.image.healthcheck.as_ref());
        if !ssh_keys.is_empty() {
            guest::validate_ssh_user(&spec.ssh_user)?;
        }
        let attached = spec.network_choice.attached();
        if let Some(net) = attached {
            validate_network(net)?;
        }
        // The full command line must fit; checked with the network now.
        let boot = BootArgs::new(attached, &hostname, spec.kernel_args.as_deref())?;
        let backend = self.select_backend(spec.vmm, &spec.kernel).await?;
        let network_request = spec
            .network_choice
            .request(backend.needs_network())
            .map_err(|reason| VmError::Network {
                reason: format!("{}: {reason}", backend.kind()),
            })?;
        if network_request.is_some() && self.provider.is_none() {
            return Err(VmError::Network {
                reason: "this VM needs a network, but the runtime has no network provider".into(),
            });
        }
        let kernel_args = match &spec.snapshot {
            Some(snapshot) => {
                check_restorable(snapshot, backend.as_ref(), &spec.kernel).await?;
                snapshot.record.kernel_args.clone()
            }
            None => {
                render_kernel_args(&boot, backend.as_ref(), spec.rootfs_mode, spec.layers.len())?
            }
        };
        let planned = RunDir::new(&self.run_cache, &id);
        backend.preflight(&planned)?;
        if planned.path().exists() {
            return Err(VmError::NameClash {
                name: id,
                dir: planned.path().to_owned(),
            });
        }
        let creator =
            ProcessIdentity::current().map_err(|e| VmError::io("reading", "/proc/self/stat", e))?;

        // Held until this VM's claim on its volumes (its run.json) is stored.
        let claim = ClaimLock::take(&spec.volumes)?;
        self.check_volume_holders(&spec.volumes)?;

        // --- set-up, undone by the guard on failure ---
        let run_dir = RunDir::create(&self.run_cache, &id)?;
        let guard = RunDirGuard::new(run_dir.clone());
        let disks = match &spec.snapshot {
            Some(snapshot) => VmDisks::from_snapshot(&run_dir, snapshot)?,
            None => VmDisks::create(
                &run_dir,
                &spec.rootfs,
                spec.rootfs_mode,
                spec.disk_size,
                &spec.layers,
                &spec.volumes,
            )?,
        };
        // Kept for `snapshot create`, which stores it with the snapshot.
        let image_json = serde_json::to_vec_pretty(&spec.image).map_err(VmError::GuestMetadata)?;
        RunDir::write_private(&run_dir.file(IMAGE_FILE), &image_json)?;
        let metadata = RunMetadata {
            id: id.clone(),
            name: spec.name.clone().unwrap_or_else(|| hostname.clone()),
            image: spec.image.tag.clone(),
            hostname: hostname.clone(),
            ip: attached.map(|n| n.ip.to_string()),
            pid: None,
            pid_start_time: None,
            status: VmStatus::Created,
            created: OffsetDateTime::now_utc(),
            started: None,
            exited: None,
            exit_code: None,
            vmm: backend.kind(),
            vmm_details: serde_json::Value::Null,
            network: attached.cloned(),
            kernel: spec.kernel.clone(),
            kernel_id: spec.kernel_id.clone(),
            kernel_args,
            cpus: spec.cpus,
            mem_mib: spec.mem_mib,
            command,
            run_dir: run_dir.path().to_owned(),
            daemonized: spec.daemonize,
            remove_on_exit: spec.remove_on_exit,
            shutdown_timeout_secs: spec.shutdown_timeout.as_secs(),
            creator,
            // A fork's guest runs the source's check already.
            has_healthcheck: match &spec.snapshot {
                Some(snapshot) => snapshot.record.has_healthcheck,
                None => healthcheck.is_some(),
            },
            rootfs_mode: spec.rootfs_mode,
            root_disk: Some(disks.root.path.clone()),
            volumes: spec.volumes.clone(),
            from_snapshot: spec.snapshot.as_ref().map(|s| s.tag.to_string()),
        };
        metadata.store(&run_dir.metadata())?;
        drop(claim);
        Ok(PreparedVm {
            dir: guard,
            run_dir,
            metadata,
            backend,
            disks,
            resolved: Resolved {
                image: spec.image,
                env,
                ssh_user: spec.ssh_user,
                ssh_keys,
                user_kernel_args: spec.kernel_args,
                shutdown_timeout: spec.shutdown_timeout,
                init_mode: spec.init_mode,
                healthcheck,
                layers: spec.layers.len(),
                snapshot: spec.snapshot,
                network_request,
                hotplug_slots: spec.hotplug_slots,
            },
        })
    }

    /// Sets up the prepared VM's network (if its spec asked the provider for
    /// one), then starts its VMM; returns its run metadata (`running`). On
    /// failure the run directory is removed, the network released and
    /// nothing keeps running.
    pub async fn launch(&self, mut prepared: PreparedVm) -> Result<RunMetadata, VmError> {
        let (Some(request), Some(provider)) = (
            prepared.resolved.network_request.take(),
            self.provider.as_ref(),
        ) else {
            return self.start(prepared).await;
        };
        let attachment = provider
            .attach(prepared.id(), &request)
            .await
            .map_err(|source| VmError::NetworkSetup {
                id: prepared.id().to_owned(),
                network: request
                    .network
                    .clone()
                    .unwrap_or_else(|| "(default)".into()),
                source,
            })?;
        let metadata = prepared.metadata.clone();
        let started = match prepared.attach_network(attachment.clone()) {
            Ok(()) => self.start(prepared).await,
            Err(e) => Err(e),
        };
        if started.is_err() {
            // Nothing runs: hand the network back now.
            if let Err(e) = provider.release(&metadata, &attachment).await {
                tracing::warn!(vm = %metadata.id, "could not release the VM's network: {e}; `firebuild purge` retries");
            }
        }
        started
    }

    /// Starts the prepared VM's VMM on the network it has, if any.
    async fn start(&self, prepared: PreparedVm) -> Result<RunMetadata, VmError> {
        let PreparedVm {
            dir,
            run_dir,
            mut metadata,
            backend,
            disks,
            resolved,
        } = prepared;
        if let Some(snapshot) = &resolved.snapshot {
            // The restored kernel parsed the source's command line long ago.
            if snapshot.record.network.is_some() != metadata.network.is_some() {
                return Err(VmError::Restore {
                    tag: snapshot.tag.to_string(),
                    reason: if metadata.network.is_some() {
                        "its source VM had no network, so its forks cannot have one".into()
                    } else {
                        "its source VM had a network device, so each fork needs a network (--cni-network-name)".into()
                    },
                });
            }
        } else {
            // Recomputed: the network may have been attached after prepare.
            let boot = BootArgs::new(
                metadata.network.as_ref(),
                &metadata.hostname,
                resolved.user_kernel_args.as_deref(),
            )?;
            metadata.kernel_args = render_kernel_args(
                &boot,
                backend.as_ref(),
                metadata.rootfs_mode,
                resolved.layers,
            )?;
        }
        let document = guest::guest_document(&GuestInputs {
            id: &metadata.id,
            hostname: &metadata.hostname,
            image: &resolved.image,
            command: &metadata.command,
            env: &resolved.env,
            ssh_user: &resolved.ssh_user,
            ssh_keys: &resolved.ssh_keys,
            cpus: metadata.cpus,
            mem_mib: metadata.mem_mib,
            kernel_id: &metadata.kernel_id,
            kernel_args: &metadata.kernel_args,
            network: metadata.network.as_ref(),
            shutdown_timeout: resolved.shutdown_timeout,
            init_mode: resolved.init_mode,
            healthcheck: resolved.healthcheck.as_ref(),
            volumes: &guest_volumes(&metadata, &disks, backend.as_ref()),
        })?;
        let launch = LaunchConfig {
            id: metadata.id.clone(),
            run_dir: run_dir.clone(),
            kernel: metadata.kernel.clone(),
            kernel_args: metadata.kernel_args.clone(),
            cpus: metadata.cpus,
            mem_mib: metadata.mem_mib,
            root: disks.root,
            disks: disks.disks,
            guest: document,
            network: metadata.network.clone(),
            hotplug_slots: resolved.hotplug_slots,
        };
        let started = match &resolved.snapshot {
            Some(snapshot) => {
                // Cut off until it has its own identity (see set_link_up).
                set_fork_tap(&metadata, &snapshot.tag, false)?;
                let from = RestoreFrom {
                    dir: &snapshot.dir,
                    details: &snapshot.record.vmm_details,
                    source_mac: snapshot.record.network.as_ref().map(|n| n.mac.as_str()),
                };
                backend.restore(&launch, &from).await?
            }
            None => backend.start(&launch).await?,
        };
        metadata.pid = Some(started.pid);
        metadata.pid_start_time = started.start_time;
        metadata.vmm_details = started.details;
        metadata.started = Some(OffsetDateTime::now_utc());
        metadata.status = VmStatus::Running;
        if let Err(e) = metadata.store(&run_dir.metadata()) {
            // Without its metadata nobody could manage the VM: stop it.
            abandon_started(backend.as_ref(), &metadata, "start").await;
            return Err(e);
        }
        if let Some(snapshot) = &resolved.snapshot {
            if let Err(e) = self.wake_fork(backend.as_ref(), &metadata, snapshot).await {
                abandon_started(backend.as_ref(), &metadata, "restore").await;
                return Err(e);
            }
        }
        dir.disarm();
        Ok(metadata)
    }

    /// Lets a restored fork run and gives it its own identity through its
    /// agent: address and MAC, hostname, wall clock, entropy.
    async fn wake_fork(
        &self,
        backend: &dyn Vmm,
        metadata: &RunMetadata,
        snapshot: &Snapshot,
    ) -> Result<(), VmError> {
        let fail = |reason: String| VmError::Restore {
            tag: snapshot.tag.to_string(),
            reason,
        };
        backend.resume(metadata).await?;
        let endpoint = backend
            .agent_endpoint(metadata)
            .ok_or_else(|| fail("the backend names no agent endpoint".into()))?;
        let identity = fork_identity(metadata, snapshot.record.network.as_ref());
        let done: firebuild_agent_proto::Reidentified = tokio::task::spawn_blocking(move || {
            let mut agent = AgentConnection::open(&endpoint, FORK_AGENT_TIMEOUT)?;
            agent.call(
                firebuild_agent_proto::Request::Reidentify(identity),
                FORK_AGENT_TIMEOUT,
            )
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("the fork did not take its identity: {e}")))?;
        set_fork_tap(metadata, &snapshot.tag, true)?;
        tracing::info!(
            id = %metadata.id,
            interface = ?done.interface,
            clock_step_ms = done.clock_step_ms,
            "fork resumed from snapshot {}", snapshot.tag
        );
        Ok(())
    }

    /// `firebuild pause --vmm-id ID`: stops the VM's vCPUs.
    pub async fn pause(&self, id: &str) -> Result<RunMetadata, VmError> {
        self.switch_vcpus(id, VmStatus::Paused).await
    }

    /// `firebuild resume --vmm-id ID`: lets a paused VM run again.
    pub async fn resume(&self, id: &str) -> Result<RunMetadata, VmError> {
        self.switch_vcpus(id, VmStatus::Running).await
    }

    /// Plugs `disk` into hot-plug slot `slot` of a running VM (started with
    /// [`crate::RunSpec::hotplug_slots`]); returns where the guest finds it.
    pub async fn attach_disk(
        &self,
        id: &str,
        slot: u32,
        disk: &crate::vmm::Disk,
    ) -> Result<crate::vmm::GuestDisk, VmError> {
        let metadata = self.load(id).await?;
        if !metadata.status.is_live() {
            return Err(VmError::Hotplug {
                id: id.to_owned(),
                disk: disk.id.clone(),
                reason: format!("the VM is {}", metadata.status),
            });
        }
        self.backend(metadata.vmm)?
            .attach_disk(&metadata, slot, disk)
            .await
    }

    /// Unplugs the disk in `slot`; the guest must have unmounted it.
    pub async fn detach_disk(&self, id: &str, slot: u32) -> Result<(), VmError> {
        let metadata = self.load(id).await?;
        if !metadata.status.is_live() {
            return Ok(());
        }
        self.backend(metadata.vmm)?
            .detach_disk(&metadata, slot)
            .await
    }

    /// Pauses (`to` paused) or resumes (`to` running) a live VM; one
    /// already there is left alone.
    async fn switch_vcpus(&self, id: &str, to: VmStatus) -> Result<RunMetadata, VmError> {
        let mut metadata = self.load(id).await?;
        let pausing = to == VmStatus::Paused;
        if metadata.status == to {
            return Ok(metadata);
        }
        if !metadata.status.is_live() {
            return Err(VmError::Pause {
                id: id.to_owned(),
                action: if pausing { "paused" } else { "resumed" },
                reason: format!("it is {}", metadata.status),
            });
        }
        let backend = self.backend(metadata.vmm)?;
        if pausing {
            backend.pause(&metadata).await?;
        } else {
            backend.resume(&metadata).await?;
        }
        self.set_status(&mut metadata, to)?;
        Ok(metadata)
    }

    /// Records a live VM's new status under its lock (an exit another
    /// process recorded meanwhile wins).
    fn set_status(&self, metadata: &mut RunMetadata, status: VmStatus) -> Result<(), VmError> {
        let dir = RunDir::new(&self.run_cache, &metadata.id);
        let _lock = dir.lock()?;
        if let Ok(stored) = RunMetadata::load(&dir.metadata()) {
            if stored.status == VmStatus::Exited {
                *metadata = stored;
                return Ok(());
            }
        }
        metadata.status = status;
        metadata.store(&dir.metadata())
    }

    /// `firebuild snapshot create`: pauses VM `id` (if it runs), writes its
    /// memory, device state and writable disks into `staging` (a
    /// [`crate::SnapshotStaging`] directory), then resumes it, or stops it with
    /// `stop`. Returns the record and the image metadata to publish. On any
    /// failure or stop request the VM is resumed as it was and the caller
    /// drops the staging.
    pub async fn snapshot(
        &self,
        id: &str,
        tag: &str,
        staging: &Path,
        stop: bool,
        interrupts: Interrupts,
    ) -> Result<(SnapshotRecord, ImageMetadata), VmError> {
        let (mut stops, _listener) = listen(interrupts);
        let mut metadata = self.load(id).await?;
        let refuse = |reason: String| VmError::Snapshot {
            id: id.to_owned(),
            reason,
        };
        if !metadata.status.is_live() {
            return Err(refuse(format!(
                "it is {}; only a running or paused VM can be snapshotted",
                metadata.status
            )));
        }
        if !metadata.volumes.is_empty() {
            return Err(refuse(
                "it has volumes attached: their data lives outside the VM and forks cannot all write it; snapshot a VM without --volume".into(),
            ));
        }
        let backend = self.backend(metadata.vmm)?;
        // What does not need the VM paused is gathered first: it is paused
        // only while its state and disks are written.
        let record = self
            .snapshot_record(backend.as_ref(), &metadata, tag)
            .await?;
        let was_running = metadata.status == VmStatus::Running;
        if was_running {
            backend.pause(&metadata).await?;
            self.set_status(&mut metadata, VmStatus::Paused)?;
        }
        let written = self
            .write_snapshot(backend.as_ref(), &metadata, record, staging, &mut stops)
            .await;
        if stop && written.is_ok() {
            backend.force_stop(&metadata).await?;
            let dir = RunDir::new(&self.run_cache, id);
            record_exit(&mut metadata, &dir)?;
        } else if was_running {
            backend.resume(&metadata).await?;
            self.set_status(&mut metadata, VmStatus::Running)?;
        }
        written
    }

    /// The record of a snapshot of `vm` and its image metadata, but for
    /// what the backend returns when it writes the snapshot.
    async fn snapshot_record(
        &self,
        backend: &dyn Vmm,
        vm: &RunMetadata,
        tag: &str,
    ) -> Result<(SnapshotRecord, ImageMetadata), VmError> {
        let run_dir = RunDir::new(&self.run_cache, &vm.id);
        let image: ImageMetadata = std::fs::read(run_dir.file(IMAGE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| VmError::Snapshot {
                id: vm.id.clone(),
                reason: "its run directory has no image metadata (it was started by an older firebuild); restart it".into(),
            })?;
        let kernel_stamp = FileStamp::of(&vm.kernel).ok();
        let kernel_digest = file_digest(&vm.kernel).map_err(|e| VmError::Kernel {
            path: vm.kernel.clone(),
            source: e,
        })?;
        let record = SnapshotRecord {
            tag: tag.to_owned(),
            created: OffsetDateTime::now_utc(),
            source_vm: vm.id.clone(),
            vmm: vm.vmm,
            vmm_version: backend.version().await?,
            vmm_details: serde_json::Value::Null,
            kernel: vm.kernel.clone(),
            kernel_id: vm.kernel_id.clone(),
            kernel_digest,
            kernel_stamp,
            kernel_args: vm.kernel_args.clone(),
            cpus: vm.cpus,
            mem_mib: vm.mem_mib,
            image: vm.image.clone(),
            image_digest: image.rootfs_digest.clone(),
            rootfs_mode: vm.rootfs_mode,
            network: vm.network.as_ref().map(|n| SourceNetwork {
                network_name: n.network_name.clone(),
                mac: n.guest_mac.clone(),
                ip: n.ip.to_string(),
            }),
            command: vm.command.clone(),
            shutdown_timeout_secs: vm.shutdown_timeout_secs,
            has_healthcheck: vm.has_healthcheck,
        };
        Ok((record, image))
    }

    /// The parts of a snapshot that need the VM paused: the backend's state
    /// and memory, the root and scratch disks, QEMU's config drive.
    async fn write_snapshot(
        &self,
        backend: &dyn Vmm,
        vm: &RunMetadata,
        (mut record, image): (SnapshotRecord, ImageMetadata),
        staging: &Path,
        stops: &mut mpsc::UnboundedReceiver<()>,
    ) -> Result<(SnapshotRecord, ImageMetadata), VmError> {
        let interrupted = |stops: &mut mpsc::UnboundedReceiver<()>| match stops.try_recv() {
            Ok(()) => Err(VmError::Interrupted {
                what: format!("the snapshot of VM {}", vm.id),
            }),
            Err(_) => Ok(()),
        };
        interrupted(stops)?;
        record.vmm_details = backend.snapshot(vm, staging).await?;
        interrupted(stops)?;
        let run_dir = RunDir::new(&self.run_cache, &vm.id);
        let root = vm.root_disk.clone().unwrap_or_else(|| run_dir.rootfs());
        let rootfs = staging.join(crate::snapshot_store::ROOTFS_FILE);
        match vm.rootfs_mode {
            RootfsMode::Overlay => match std::fs::hard_link(&root, &rootfs) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_file(&root, &rootfs)?,
                Err(e) => return Err(VmError::io("linking the image into", &rootfs, e)),
            },
            RootfsMode::Copy => copy_file(&root, &rootfs)?,
        }
        if vm.rootfs_mode == RootfsMode::Overlay {
            copy_file(
                &run_dir.file(crate::disks::SCRATCH_FILE),
                &staging.join(crate::snapshot_store::SCRATCH_FILE),
            )?;
        }
        if run_dir.config_drive().exists() {
            copy_file(
                &run_dir.config_drive(),
                &staging.join(crate::snapshot_store::CONFIG_DRIVE_FILE),
            )?;
        }
        interrupted(stops)?;
        Ok((record, image))
    }

    /// The VMs, not yet exited, that were resumed from snapshot `tag`.
    pub async fn vms_from_snapshot(&self, tag: &str) -> Result<Vec<RunMetadata>, VmError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|vm| vm.status != VmStatus::Exited && vm.from_snapshot.as_deref() == Some(tag))
            .collect())
    }

    /// `firebuild run`: prepares and launches the VM; in the foreground
    /// streams its console into `console` (without the exit-code marker),
    /// stops it gracefully on Ctrl-C, and returns the entrypoint's exit code.
    pub async fn run(
        &self,
        spec: RunSpec,
        console: &mut (dyn Write + Send),
    ) -> Result<RunOutcome, VmError> {
        self.run_with(spec, console, Interrupts::CtrlC).await
    }

    /// [`Runtime::run`] with an explicit source of stop requests.
    pub async fn run_with(
        &self,
        spec: RunSpec,
        console: &mut (dyn Write + Send),
        interrupts: Interrupts,
    ) -> Result<RunOutcome, VmError> {
        if spec.daemonize {
            let metadata = self.launch(self.prepare(spec).await?).await?;
            return Ok(RunOutcome::Detached { id: metadata.id });
        }
        // Listen before starting, so an early Ctrl-C is not lost.
        let (stops, _listener) = listen(interrupts);
        let prepared = self.prepare(spec).await?;
        let metadata = self.launch(prepared).await?;
        self.follow_until_exit(metadata, console, stops).await
    }

    /// The foreground part of `run` for a VM started with
    /// [`Runtime::launch`] (the two-step flow): streams the console, turns
    /// stop requests into a graceful then forced stop, and returns once the
    /// VM has exited (removing it if it was started with `--rm`).
    pub async fn attach(
        &self,
        metadata: RunMetadata,
        console: &mut (dyn Write + Send),
        interrupts: Interrupts,
    ) -> Result<RunOutcome, VmError> {
        let (stops, _listener) = listen(interrupts);
        self.follow_until_exit(metadata, console, stops).await
    }

    /// Follows a running VM in the foreground until it exits.
    async fn follow_until_exit(
        &self,
        mut metadata: RunMetadata,
        console: &mut (dyn Write + Send),
        mut stops: mpsc::UnboundedReceiver<()>,
    ) -> Result<RunOutcome, VmError> {
        let backend = self.backend(metadata.vmm)?;
        let run_dir = RunDir::new(&self.run_cache, &metadata.id);
        let mut follower = ConsoleFollower::open(&run_dir.console_log()).await?;
        let timeout = Duration::from_secs(metadata.shutdown_timeout_secs);
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let mut forced = false;
        let mut streaming = true;
        loop {
            if streaming {
                if let Err(e) = follower.pump(console).await {
                    // The terminal went away: keep managing the VM.
                    tracing::warn!("console: {e}");
                    streaming = false;
                }
            }
            if !backend.is_running(&metadata) {
                break;
            }
            if let Some(deadline) = stop_deadline {
                if !forced && tokio::time::Instant::now() >= deadline {
                    tracing::warn!(id = %metadata.id, "the guest did not stop within {timeout:?}; killing it");
                    forced = true;
                    backend.force_stop(&metadata).await?;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                Some(()) = stops.recv() => {
                    if stop_deadline.is_none() {
                        tracing::info!(id = %metadata.id, "stopping the VM (again to kill it)");
                        stop_deadline = Some(tokio::time::Instant::now() + timeout);
                        if let Err(e) = backend.graceful_stop(&metadata).await {
                            tracing::warn!("graceful stop failed, killing the VM: {e}");
                            forced = true;
                            backend.force_stop(&metadata).await?;
                        }
                    } else if !forced {
                        forced = true;
                        backend.force_stop(&metadata).await?;
                    }
                }
            }
        }
        if streaming {
            if let Err(e) = follower.finish(console).await {
                tracing::warn!("console: {e}");
            }
        }
        record_exit(&mut metadata, &run_dir)?;
        let outcome = RunOutcome::Exited {
            id: metadata.id.clone(),
            exit_code: metadata.exit_code,
        };
        if metadata.remove_on_exit {
            self.remove_vm(&metadata).await?;
        }
        Ok(outcome)
    }

    /// Loads a VM's metadata and brings its status up to date.
    async fn load(&self, id: &str) -> Result<RunMetadata, VmError> {
        validate_name(id).map_err(|_| self.not_found(id))?;
        let dir = RunDir::new(&self.run_cache, id);
        let path = dir.metadata();
        if !path.exists() {
            return Err(self.not_found(id));
        }
        let mut metadata = RunMetadata::load(&path)?;
        self.refresh(&mut metadata, &dir)?;
        Ok(metadata)
    }

    fn not_found(&self, id: &str) -> VmError {
        VmError::NotFound {
            id: id.to_owned(),
            run_cache: self.run_cache.clone(),
        }
    }

    /// Marks a VM whose VMM is gone (or whose creator died before it
    /// started) as exited, with its exit code from the console.
    fn refresh(&self, metadata: &mut RunMetadata, dir: &RunDir) -> Result<(), VmError> {
        let gone = match metadata.status {
            VmStatus::Exited => false,
            VmStatus::Created => !metadata.creator.is_alive(),
            VmStatus::Running | VmStatus::Paused => match self.backend(metadata.vmm) {
                Ok(b) => !b.is_running(metadata),
                Err(_) => !metadata.process().is_some_and(|p| p.is_alive()),
            },
        };
        if gone {
            record_exit(metadata, dir)?;
        }
        Ok(())
    }

    /// `firebuild ls`: all VMs in the run cache, oldest first. Exited VMs
    /// started with `--daemonize --rm` are removed on the way.
    pub async fn list(&self) -> Result<Vec<RunMetadata>, VmError> {
        let mut vms = Vec::new();
        for (dir, mut metadata) in self.scan()? {
            self.refresh(&mut metadata, &dir)?;
            if metadata.status == VmStatus::Exited && metadata.daemonized && metadata.remove_on_exit
            {
                if let Err(e) = self.remove_vm(&metadata).await {
                    tracing::warn!("removing exited VM {} (--rm): {e}", metadata.id);
                } else {
                    continue;
                }
            }
            vms.push(metadata);
        }
        Ok(vms)
    }

    /// The VMs, running or not yet purged, that boot the image file
    /// `image`: their run directories keep its data alive.
    pub async fn vms_using_image(&self, image: &Path) -> Result<Vec<RunMetadata>, VmError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|vm| vm.uses_image(image))
            .collect())
    }

    /// The VMs, running or not yet purged, that have the volume file `path`
    /// attached: `volume rm` waits for their purge.
    pub async fn vms_using_volume(&self, path: &Path) -> Result<Vec<RunMetadata>, VmError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|vm| vm.volume_mount(path).is_some())
            .collect())
    }

    /// The single-writer rule: refuses `wanted` volumes that a VM which has
    /// not exited holds in a conflicting way (see
    /// [`VolumeMount::conflict_with`]). Called under the volumes' [`ClaimLock`].
    fn check_volume_holders(&self, wanted: &[VolumeMount]) -> Result<(), VmError> {
        if wanted.is_empty() {
            return Ok(());
        }
        for (dir, mut holder) in self.scan()? {
            self.refresh(&mut holder, &dir)?;
            if holder.status == VmStatus::Exited {
                continue;
            }
            for held in &holder.volumes {
                for mount in wanted {
                    if let Some(reason) = mount.conflict_with(held, &holder.id) {
                        return Err(VmError::VolumeSpec {
                            spec: mount.spec(),
                            reason,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads every run directory's metadata, skipping what is not a VM.
    fn scan(&self) -> Result<Vec<(RunDir, RunMetadata)>, VmError> {
        let entries = match std::fs::read_dir(&self.run_cache) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(VmError::io("reading the run cache", &self.run_cache, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| VmError::io("reading the run cache", &self.run_cache, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || validate_name(&name).is_err() {
                continue;
            }
            let dir = RunDir::new(&self.run_cache, &name);
            // A directory without run.json is being created right now.
            if !dir.metadata().exists() {
                continue;
            }
            match RunMetadata::load(&dir.metadata()) {
                Ok(m) => found.push((dir, m)),
                Err(e) => tracing::warn!("skipping {}: {e}", dir.path().display()),
            }
        }
        found.sort_by(|a, b| a.1.created.cmp(&b.1.created).then(a.1.id.cmp(&b.1.id)));
        Ok(found)
    }

    /// `firebuild inspect --vmm-id ID`: the run metadata, with the
    /// backend's current description in `vmm_details`.
    pub async fn inspect(&self, id: &str) -> Result<RunMetadata, VmError> {
        let mut metadata = self.load(id).await?;
        if let Ok(backend) = self.backend(metadata.vmm) {
            metadata.vmm_details = backend.describe(&metadata);
        }
        Ok(metadata)
    }

    /// `firebuild kill --vmm-id ID`: asks the guest to stop (its
    /// STOPSIGNAL path), waits up to `timeout` (default: the VM's
    /// `--shutdown-timeout`), then kills the VMM. Returns the final metadata;
    /// a VM that has already exited is returned as is.
    pub async fn kill(&self, id: &str, timeout: Option<Duration>) -> Result<RunMetadata, VmError> {
        let mut metadata = self.load(id).await?;
        match metadata.status {
            VmStatus::Exited => return Ok(metadata),
            VmStatus::Created => {
                return Err(VmError::Stop {
                    id: id.to_owned(),
                    reason: "it is still being created; try again in a moment".into(),
                })
            }
            VmStatus::Running => {}
            VmStatus::Paused => {
                // A paused guest cannot act on the stop request.
                self.backend(metadata.vmm)?.resume(&metadata).await?;
                self.set_status(&mut metadata, VmStatus::Running)?;
            }
        }
        let backend = self.backend(metadata.vmm)?;
        let timeout = timeout.unwrap_or(Duration::from_secs(metadata.shutdown_timeout_secs));
        let process = metadata.process();
        let stopped = match backend.graceful_stop(&metadata).await {
            Ok(()) => match process {
                Some(p) => p.wait_exit(timeout, POLL_INTERVAL).await,
                None => true,
            },
            Err(e) => {
                tracing::warn!("graceful stop of {id} failed, killing it: {e}");
                false
            }
        };
        if !stopped {
            backend.force_stop(&metadata).await?;
        }
        let dir = RunDir::new(&self.run_cache, id);
        record_exit(&mut metadata, &dir)?;
        if metadata.remove_on_exit && metadata.daemonized {
            self.remove_vm(&metadata).await?;
        }
        Ok(metadata)
    }

    /// Waits until VM `id` has exited, for at most `timeout` (`None`: as
    /// long as it runs).
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<RunMetadata, VmError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let metadata = self.load(id).await?;
            if metadata.status == VmStatus::Exited {
                return Ok(metadata);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(VmError::StillRunning { id: id.to_owned() });
            }
            tokio::time::sleep(POLL_INTERVAL * 5).await;
        }
    }

    /// Where the guest agent of `vm` is (whatever its state).
    pub fn agent_endpoint_of(&self, vm: &RunMetadata) -> Option<AgentEndpoint> {
        self.backend(vm.vmm).ok()?.agent_endpoint(vm)
    }

    /// Where the guest agent of running VM `id` is, with its metadata.
    pub async fn agent(&self, id: &str) -> Result<(RunMetadata, AgentEndpoint), VmError> {
        let metadata = self.load(id).await?;
        if metadata.status != VmStatus::Running {
            return Err(VmError::NotRunning {
                id: metadata.id.clone(),
                state: match metadata.exit_code {
                    Some(code) if metadata.status == VmStatus::Exited => {
                        format!("exited with status {code}")
                    }
                    _ => metadata.status.to_string(),
                },
            });
        }
        let endpoint = self
            .backend(metadata.vmm)?
            .agent_endpoint(&metadata)
            .ok_or_else(|| VmError::NotRunning {
                id: metadata.id.clone(),
                state: "running without a recorded agent socket".into(),
            })?;
        Ok((metadata, endpoint))
    }

    /// `firebuild purge`: removes everything left by VMs that no longer run
    /// (backend state such as jails, the network, the run directory).
    pub async fn purge(&self) -> Result<PurgeReport, VmError> {
        let mut report = PurgeReport::default();
        for (dir, mut metadata) in self.scan()? {
            self.refresh(&mut metadata, &dir)?;
            if metadata.status != VmStatus::Exited {
                continue;
            }
            match self.remove_vm(&metadata).await {
                Ok(()) => report.removed.push(metadata.id),
                Err(e) => report.failed.push((metadata.id, e.to_string())),
            }
        }
        Ok(report)
    }

    /// Stops VM `id` if it still runs (graceful, then forced after
    /// `timeout`) and removes everything it left, as `purge` would; the
    /// containerd shim's `delete`. A VM already gone is not an error.
    pub async fn remove(&self, id: &str, timeout: Duration) -> Result<(), VmError> {
        let metadata = match self.kill(id, Some(timeout)).await {
            Ok(metadata) => metadata,
            Err(VmError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !RunDir::new(&self.run_cache, id).metadata().exists() {
            return Ok(());
        }
        self.remove_vm(&metadata).await
    }

    /// Removes an exited VM: backend clean-up, network release, run
    /// directory. The run directory stays if an earlier step fails.
    async fn remove_vm(&self, metadata: &RunMetadata) -> Result<(), VmError> {
        let backend = self.backend(metadata.vmm)?;
        if backend.is_running(metadata) {
            return Err(VmError::StillRunning {
                id: metadata.id.clone(),
            });
        }
        backend.cleanup(metadata).await?;
        if let Some(attachment) = &metadata.network {
            let releaser = self
                .network
                .as_ref()
                .ok_or_else(|| VmError::NetworkRelease {
                    id: metadata.id.clone(),
                    reason: "no network releaser is configured".into(),
                })?;
            releaser
                .release(metadata, attachment)
                .await
                .map_err(|e| VmError::NetworkRelease {
                    id: metadata.id.clone(),
                    reason: e.to_string(),
                })?;
        }
        RunDir::new(&self.run_cache, &metadata.id).remove()?;
        tracing::info!(id = %metadata.id, "VM removed");
        Ok(())
    }

    /// `firebuild logs --vmm-id ID [-f]`: writes the console log (without
    /// the exit-code marker) into `sink`; with `follow`, keeps writing new
    /// output until the VM exits.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
        sink: &mut (dyn Write + Send),
    ) -> Result<(), VmError> {
        let mut metadata = self.load(id).await?;
        let dir = RunDir::new(&self.run_cache, id);
        let mut follower = ConsoleFollower::open(&dir.console_log()).await?;
        loop {
            follower.pump(sink).await?;
            if !follow || metadata.status == VmStatus::Exited {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL * 5).await;
            self.refresh(&mut metadata, &dir)?;
        }
        follower.finish(sink).await
    }
}

/// The whole kernel command line: the backend's arguments, and in overlay
/// mode where the guest init finds the scratch disk (the first extra disk)
/// and a build step's `layers` disks (right after it).
fn render_kernel_args(
    boot: &BootArgs,
    backend: &dyn Vmm,
    mode: RootfsMode,
    layers: usize,
) -> Result<String, VmError> {
    let overlay = mode == RootfsMode::Overlay;
    let mut args = backend.kernel_args(overlay);
    if overlay {
        args.push(format!(
            "{}={}",
            firebuild_metadata::boot::OVERLAY_KERNEL_ARG,
            backend.disk_device(0)
        ));
    }
    if layers > 0 {
        let devices: Vec<String> = (1..=layers).map(|i| backend.disk_device(i)).collect();
        args.push(format!(
            "{}={}",
            firebuild_metadata::boot::LAYERS_KERNEL_ARG,
            devices.join(",")
        ));
    }
    boot.render(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Where the guest finds each volume: the volumes are the last disks.
fn guest_volumes(metadata: &RunMetadata, disks: &VmDisks, backend: &dyn Vmm) -> Vec<GuestVolume> {
    let first = disks.disks.len() - metadata.volumes.len();
    metadata
        .volumes
        .iter()
        .enumerate()
        .map(|(i, m)| GuestVolume {
            device: backend.disk_device(first + i),
            path: m.guest_path.clone(),
            read_only: m.read_only,
        })
        .collect()
}

/// Turns an [`Interrupts`] source into a channel of stop requests; the
/// returned guard ends the Ctrl-C listener.
fn listen(interrupts: Interrupts) -> (mpsc::UnboundedReceiver<()>, Option<AbortOnDrop>) {
    match interrupts {
        Interrupts::Channel(rx) => (rx, None),
        Interrupts::CtrlC => {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
            (rx, Some(AbortOnDrop(task)))
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records that a VM has exited, under its lock: what another process
/// recorded first (its exit time and code) wins, so concurrent `ls`, `kill`
/// and the foreground `run` agree and none loses the others' write.
fn record_exit(metadata: &mut RunMetadata, dir: &RunDir) -> Result<(), VmError> {
    let _lock = dir.lock()?;
    if let Ok(stored) = RunMetadata::load(&dir.metadata()) {
        if stored.status == VmStatus::Exited {
            *metadata = stored;
            return Ok(());
        }
    }
    mark_exited(metadata, dir);
    metadata.store(&dir.metadata())
}

fn mark_exited(metadata: &mut RunMetadata, dir: &RunDir) {
    if metadata.status != VmStatus::Exited {
        metadata.status = VmStatus::Exited;
        metadata.exited = Some(OffsetDateTime::now_utc());
    }
    if metadata.exit_code.is_none() {
        metadata.exit_code = exit_code_from_log(&dir.console_log());
    }
}

/// The run directory's copy of the VM's image metadata.
const IMAGE_FILE: &str = "image.json";

/// How long a fork's agent may take to answer after the resume (TCG is slow).
const FORK_AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops a VM whose start failed after its VMM came up and removes what
/// the VMM left outside the run directory (Firecracker's jail); the run
/// directory goes with the caller's guard, the network with `launch`.
async fn abandon_started(backend: &dyn Vmm, metadata: &RunMetadata, what: &str) {
    if let Err(stop) = backend.force_stop(metadata).await {
        tracing::warn!("stopping VM {} after a failed {what}: {stop}", metadata.id);
        return;
    }
    if let Err(e) = backend.cleanup(metadata).await {
        tracing::warn!("cleaning up VM {} after a failed {what}: {e}", metadata.id);
    }
}

/// Refuses a restore that cannot work, before anything is made: another
/// VMM or VMM version, a kernel that is gone or changed.
async fn check_restorable(
    snapshot: &Snapshot,
    backend: &dyn Vmm,
    kernel: &Path,
) -> Result<(), VmError> {
    let record = &snapshot.record;
    let refuse = |reason: String| VmError::Restore {
        tag: snapshot.tag.to_string(),
        reason,
    };
    if backend.kind() != record.vmm {
        return Err(refuse(format!(
            "it was taken under {}, and cannot be resumed under {}",
            record.vmm,
            backend.kind()
        )));
    }
    let version = backend.version().await?;
    if version != record.vmm_version {
        return Err(refuse(format!(
            "it was taken with {:?}; this host runs {version:?}: take the snapshot again with this VMM",
            record.vmm_version
        )));
    }
    let unreadable = |e: std::io::Error| {
        refuse(format!(
            "its kernel {} cannot be read ({e}); it must be the kernel the snapshot was taken with",
            kernel.display()
        ))
    };
    // The very file, unchanged since the snapshot: no need to hash it again
    // (a quarter of a second per fork for a 22 MB kernel here).
    let stamp = FileStamp::of(kernel).map_err(unreadable)?;
    if record.kernel_stamp == Some(stamp) {
        return Ok(());
    }
    let digest = file_digest(kernel).map_err(unreadable)?;
    if digest != record.kernel_digest {
        return Err(refuse(format!(
            "its kernel {} changed since the snapshot (now {digest}, then {})",
            kernel.display(),
            record.kernel_digest
        )));
    }
    Ok(())
}

/// Sets a fork's tap up or down (see [`crate::network::set_link_up`]).
fn set_fork_tap(
    metadata: &RunMetadata,
    tag: &firebuild_store::Tag,
    up: bool,
) -> Result<(), VmError> {
    let Some(n) = &metadata.network else {
        return Ok(());
    };
    crate::network::set_link_up(&n.netns, &n.tap, up).map_err(|e| VmError::Restore {
        tag: tag.to_string(),
        reason: format!(
            "setting the fork's tap {} {}: {e}",
            n.tap,
            if up { "up" } else { "down" }
        ),
    })
}

/// The identity a fork takes on right after its resume.
fn fork_identity(
    metadata: &RunMetadata,
    source: Option<&SourceNetwork>,
) -> firebuild_agent_proto::Identity {
    let mut entropy = vec![0u8; 64];
    let _ = rustix::rand::getrandom(&mut entropy, rustix::rand::GetRandomFlags::empty());
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
    firebuild_agent_proto::Identity {
        hostname: metadata.hostname.clone(),
        network: metadata
            .network
            .as_ref()
            .map(|n| firebuild_agent_proto::NetworkIdentity {
                previous_mac: source.map(|s| s.mac.clone()).unwrap_or_default(),
                mac: n.guest_mac.clone(),
                address: n.ip.to_string(),
                prefix: n.prefix,
                gateway: n.gateway.map(|g| g.to_string()),
                nameservers: n.nameservers.iter().map(|a| a.to_string()).collect(),
                mtu: n.mtu,
            }),
        unix_time_ns: u64::try_from(now).unwrap_or_default(),
        entropy,
    }
}

fn check_regular_file(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(())
}

fn validate_network(net: &NetworkAttachment) -> Result<(), VmError> {
    let fail = |reason: String| Err(VmError::Network { reason });
    if let Err(source) = std::fs::metadata(&net.netns) {
        return Err(VmError::Netns {
            path: net.netns.clone(),
            source,
        });
    }
    let tap_ok = !net.tap.is_empty()
        && net.tap.len() <= 15
        && net
            .tap
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !tap_ok {
        return fail(format!(
            "tap name {:?} must be 1 to 15 letters, digits, '-', '_', '.'",
            net.tap
        ));
    }
    let octets: Vec<&str> = net.guest_mac.split(':').collect();
    let mac_ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !mac_ok {
        return fail(format!(
            "guest MAC {:?} is not of the form aa:bb:cc:dd:ee:ff",
            net.guest_mac
        ));
    }
    if net.prefix > 32 {
        return fail(format!("prefix length {} is larger than 32", net.prefix));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::tests::{image, network};

    #[test]
    fn the_first_recorded_exit_wins() {
        let cache = tempfile::tempdir().unwrap();
        let dir = RunDir::create(cache.path(), "vm").unwrap();
        let mut first = crate::state::tests::sample(dir.path());
        first.store(&dir.metadata()).unwrap();
        let mut second = first.clone();
        record_exit(&mut first, &dir).unwrap();
        assert_eq!(first.status, VmStatus::Exited);
        std::thread::sleep(std::time::Duration::from_millis(5));
        // A second process still holding the running state adopts it.
        record_exit(&mut second, &dir).unwrap();
        assert_eq!(second, first);
        assert_eq!(RunMetadata::load(&dir.metadata()).unwrap(), first);
    }

    #[tokio::test]
    async fn a_restore_needs_the_same_vmm_version_and_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel one").unwrap();
        let qemu = QemuVmm::default();
        let mut record = crate::snapshot_store::tests::record("fbt/app:1");
        record.vmm_version = qemu.version().await.unwrap();
        record.kernel_digest = file_digest(&kernel).unwrap();
        let tag: firebuild_store::Tag = "fbt/app:1".parse().unwrap();
        let snapshot = |record: &SnapshotRecord| Snapshot {
            tag: tag.clone(),
            dir: dir.path().to_owned(),
            record: record.clone(),
            image: crate::guest::tests::image(),
        };
        check_restorable(&snapshot(&record), &qemu, &kernel)
            .await
            .unwrap();

        std::fs::write(&kernel, b"kernel two").unwrap();
        let err = check_restorable(&snapshot(&record), &qemu, &kernel)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("changed since the snapshot"), "{err}");
        // The recorded stamp of the very file spares the hash.
        record.kernel_stamp = Some(FileStamp::of(&kernel).unwrap());
        check_restorable(&snapshot(&record), &qemu, &kernel)
            .await
            .unwrap();

        record.vmm_version = "QEMU emulator version 1.0".into();
        let err = check_restorable(&snapshot(&record), &qemu, &kernel)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("take the snapshot again"), "{err}");
        record.vmm = VmmKind::Firecracker;
        let err = check_restorable(&snapshot(&record), &qemu, &kernel)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("taken under firecracker"), "{err}");
        record.vmm = VmmKind::Qemu;
        record.vmm_version = qemu.version().await.unwrap();
        let err = check_restorable(&snapshot(&record), &qemu, &dir.path().join("gone"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be read"), "{err}");
    }

    #[test]
    fn network_validation() {
        let dir = tempfile::tempdir().unwrap();
        let mut net = network();
        net.netns = dir.path().to_owned();
        validate_network(&net).unwrap();
        let mut bad = net.clone();
        bad.tap = "a,b".into();
        assert!(validate_network(&bad).is_err());
        let mut bad = net.clone();
        bad.guest_mac = "02:00:00:00:00".into();
        assert!(validate_network(&bad).is_err());
        let mut bad = net.clone();
        bad.netns = "/nonexistent/netns".into();
        assert!(matches!(validate_network(&bad), Err(VmError::Netns { .. })));
    }

    /// A spec whose checks pass up to backend selection.
    fn spec(dir: &Path) -> RunSpec {
        let kernel = dir.join("vmlinux");
        let rootfs = dir.join("rootfs.ext4");
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&rootfs, b"rootfs").unwrap();
        let mut spec = RunSpec::new(rootfs, image(), kernel);
        spec.vmm = VmmChoice::Qemu;
        spec
    }

    fn cache_entries(runtime: &Runtime) -> Vec<String> {
        match std::fs::read_dir(runtime.run_cache()) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    #[tokio::test]
    async fn prepare_creates_the_run_dir_and_drop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));
        let mut s = spec(dir.path());
        s.name = Some("web".into());
        s.env = vec!["A=1".into()];
        let prepared = runtime.prepare(s).await.unwrap();
        assert_eq!(prepared.id(), "web");
        let run_dir = prepared.run_dir().to_owned();
        assert_eq!(
            std::fs::read(run_dir.join("rootfs.ext4")).unwrap(),
            b"rootfs"
        );
        let md = RunMetadata::load(&run_dir.join("run.json")).unwrap();
        assert_eq!(md.status, VmStatus::Created);
        assert_eq!(md.command, ["/bin/app", "serve"]);
        assert!(
            md.kernel_args.contains(
                "root=/dev/vda ro firebuild.metadata=/dev/vdb firebuild.overlay=/dev/vdc"
            ),
            "{}",
            md.kernel_args
        );
        assert_eq!(md.rootfs_mode, RootfsMode::Overlay);
        assert!(
            md.uses_image(&dir.path().join("rootfs.ext4")),
            "the image is linked, not copied"
        );
        assert!(run_dir.join("scratch.ext4").exists());
        // Listed as created while its creator (this process) lives.
        let listed = runtime.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, VmStatus::Created);
        // Purge leaves it alone.
        assert!(runtime.purge().await.unwrap().removed.is_empty());
        drop(prepared);
        assert!(!run_dir.exists());
    }

    #[tokio::test]
    async fn bad_input_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));

        let mut s = spec(dir.path());
        s.kernel = dir.path().join("no-such-vmlinux");
        let err = runtime.prepare(s).await.err().unwrap();
        assert!(matches!(err, VmError::Kernel { .. }), "{err}");
        assert!(err.to_string().contains("no-such-vmlinux"));

        let mut s = spec(dir.path());
        let env_file = dir.path().join("bad.env");
        std::fs::write(&env_file, "OK=1\nNOT OK=2\n").unwrap();
        s.env_files = vec![env_file];
        let err = runtime.prepare(s).await.err().unwrap();
        assert!(err.to_string().contains("bad.env, line 2"), "{err}");

        let mut s = spec(dir.path());
        s.name = Some("../escape".into());
        assert!(matches!(
            runtime.prepare(s).await.err().unwrap(),
            VmError::InvalidName { .. }
        ));

        let mut s = spec(dir.path());
        s.image.entrypoint_info.entrypoint.clear();
        s.image.entrypoint_info.cmd.clear();
        assert!(matches!(
            runtime.prepare(s).await.err().unwrap(),
            VmError::NoCommand { .. }
        ));

        let mut s = spec(dir.path());
        s.mem_mib = 8;
        assert!(matches!(
            runtime.prepare(s).await.err().unwrap(),
            VmError::Resource { .. }
        ));

        let mut s = spec(dir.path());
        s.vmm = VmmChoice::Firecracker;
        assert!(matches!(
            runtime.prepare(s).await.err().unwrap(),
            VmError::BackendMissing { .. }
        ));

        assert!(
            cache_entries(&runtime).is_empty(),
            "{:?}",
            cache_entries(&runtime)
        );
    }

    #[tokio::test]
    async fn a_volume_has_one_writer_and_no_readers_while_written() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));
        let volume = dir.path().join("data.ext4");
        crate::disks::make_ext4(&volume, 16 << 20, "data").unwrap();
        let vm = |name: &str, read_only: bool| {
            let mut s = spec(dir.path());
            s.name = Some(name.into());
            s.volumes = vec![VolumeMount {
                volume: Some("data".into()),
                path: volume.clone(),
                guest_path: "/data".into(),
                read_only,
            }];
            s
        };
        let writer = runtime.prepare(vm("writer", false)).await.unwrap();
        assert_eq!(writer.metadata().volumes.len(), 1);
        for (name, read_only) in [("second", false), ("reader", true)] {
            let err = runtime.prepare(vm(name, read_only)).await.err().unwrap();
            let err = err.to_string();
            assert!(err.starts_with("--volume data:/data"), "{err}");
            assert!(err.contains("read-write to VM writer"), "{err}");
        }
        assert_eq!(
            cache_entries(&runtime),
            ["writer"],
            "refused runs made nothing"
        );
        drop(writer);

        let a = runtime.prepare(vm("reader-a", true)).await.unwrap();
        let b = runtime.prepare(vm("reader-b", true)).await.unwrap();
        let err = runtime
            .prepare(vm("late-writer", false))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("read-only to VM reader-"), "{err}");
        drop((a, b));

        // A VM that has exited no longer holds its volumes, but keeps them
        // in use until it is purged.
        let exited = runtime.prepare(vm("exited", false)).await.unwrap();
        let mut md = exited.metadata().clone();
        md.creator.start_time += 1;
        md.store(&exited.run_dir().join("run.json")).unwrap();
        std::mem::forget(exited);
        let next = runtime.prepare(vm("next", false)).await.unwrap();
        let users: Vec<String> = runtime
            .vms_using_volume(&volume)
            .await
            .unwrap()
            .into_iter()
            .map(|vm| vm.id)
            .collect();
        assert_eq!(users, ["exited", "next"]);
        drop(next);
        runtime.purge().await.unwrap();
        assert!(runtime.vms_using_volume(&volume).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn build_layers_follow_the_scratch_disk_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));
        let layers: Vec<PathBuf> = (0..2)
            .map(|i| {
                let p = dir.path().join(format!("layer{i}.ext4"));
                std::fs::write(&p, b"layer").unwrap();
                p
            })
            .collect();
        let mut s = spec(dir.path());
        s.layers = layers.clone();
        let prepared = runtime.prepare(s).await.unwrap();
        let args = &prepared.metadata().kernel_args;
        assert!(
            args.contains("firebuild.overlay=/dev/vdc firebuild.layers=/dev/vdd,/dev/vde"),
            "{args}"
        );
        let ids: Vec<&str> = prepared.disks.disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["scratch", "layer0", "layer1"]);
        assert!(prepared.disks.disks[1..].iter().all(|d| d.read_only));
        drop(prepared);

        let mut s = spec(dir.path());
        s.layers = layers;
        s.rootfs_mode = RootfsMode::Copy;
        assert!(
            runtime.prepare(s).await.is_err(),
            "layers need an overlay root"
        );
        let mut s = spec(dir.path());
        s.layers = vec![dir.path().join("missing.ext4")];
        let err = runtime.prepare(s).await.err().unwrap();
        assert!(err.to_string().contains("missing.ext4"), "{err}");
        assert!(cache_entries(&runtime).is_empty());
    }

    #[tokio::test]
    async fn name_clash_is_reported_before_copying() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));
        let mut s = spec(dir.path());
        s.name = Some("twin".into());
        let first = runtime.prepare(s.clone()).await.unwrap();
        let err = runtime.prepare(s).await.err().unwrap();
        assert!(matches!(err, VmError::NameClash { .. }), "{err}");
        // The first VM's directory is untouched.
        assert!(first.run_dir().join("run.json").exists());
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path());
        for id in ["nope", "../etc", ""] {
            let err = runtime.inspect(id).await.err().unwrap();
            assert!(matches!(err, VmError::NotFound { .. }), "{id}: {err}");
        }
        assert!(matches!(
            runtime.kill("nope", None).await.err().unwrap(),
            VmError::NotFound { .. }
        ));
        assert!(runtime.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn abandoned_vms_are_exited_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));
        let mut s = spec(dir.path());
        s.name = Some("orphan".into());
        let prepared = runtime.prepare(s).await.unwrap();
        // Pretend its creator died: a process identity that is not alive.
        let mut md = prepared.metadata().clone();
        md.creator.start_time += 1;
        md.store(&prepared.run_dir().join("run.json")).unwrap();
        let run_dir = prepared.run_dir().to_owned();
        std::mem::forget(prepared);
        let listed = runtime.list().await.unwrap();
        assert_eq!(listed[0].status, VmStatus::Exited);
        let report = runtime.purge().await.unwrap();
        assert_eq!(report.removed, ["orphan"]);
        assert!(!run_dir.exists());
    }

    #[tokio::test]
    async fn purge_keeps_vms_whose_network_cannot_be_released() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(dir.path().join("vms"));
        let mut s = spec(dir.path());
        s.name = Some("netvm".into());
        let mut net = network();
        net.netns = dir.path().to_owned();
        s.network_choice = crate::NetworkChoice::Attached(net);
        let prepared = runtime.prepare(s).await.unwrap();
        let mut md = prepared.metadata().clone();
        assert!(md.kernel_args.contains("ip=192.168.127.2::192.168.127.1"));
        md.creator.start_time += 1;
        md.store(&prepared.run_dir().join("run.json")).unwrap();
        let run_dir = prepared.run_dir().to_owned();
        std::mem::forget(prepared);

        let report = runtime.purge().await.unwrap();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].1.contains("no network releaser"));
        assert!(run_dir.exists());

        struct Recorder(std::sync::Mutex<Vec<String>>);
        #[async_trait::async_trait]
        impl NetworkReleaser for Recorder {
            async fn release(
                &self,
                vm: &RunMetadata,
                a: &NetworkAttachment,
            ) -> Result<(), crate::network::NetworkError> {
                self.0.lock().unwrap().push(format!("{}:{}", vm.id, a.tap));
                Ok(())
            }
        }
        let recorder = Arc::new(Recorder(Default::default()));
        let runtime = Runtime::new(dir.path().join("vms")).with_network_releaser(recorder.clone());
        let report = runtime.purge().await.unwrap();
        assert_eq!(report.removed, ["netvm"]);
        assert_eq!(*recorder.0.lock().unwrap(), ["netvm:tap0"]);
        assert!(!run_dir.exists());
    }

    /// Attaches what the spec asks for and records what it releases.
    #[derive(Default)]
    struct FakeNetworks {
        netns: PathBuf,
        calls: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl NetworkProvider for FakeNetworks {
        async fn attach(
            &self,
            vm_id: &str,
            request: &NetworkRequest,
        ) -> Result<NetworkAttachment, crate::network::NetworkError> {
            let name = request.network.clone().unwrap_or("default".into());
            self.calls
                .lock()
                .unwrap()
                .push(format!("attach {vm_id} {name}"));
            let mut net = network();
            net.netns.clone_from(&self.netns);
            net.network_name = name;
            Ok(net)
        }
    }

    #[async_trait::async_trait]
    impl NetworkReleaser for FakeNetworks {
        async fn release(
            &self,
            vm: &RunMetadata,
            a: &NetworkAttachment,
        ) -> Result<(), crate::network::NetworkError> {
            let line = format!("release {} {}", vm.id, a.network_name);
            self.calls.lock().unwrap().push(line);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_network_set_up_at_launch_is_released_when_the_start_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.name = Some("netted".into());
        s.network_choice = crate::NetworkChoice::On(NetworkRequest {
            network: Some("lan".into()),
            ..Default::default()
        });
        // Without a provider the VM is refused before anything exists.
        let bare = Runtime::new(dir.path().join("vms"));
        let err = bare.prepare(s.clone()).await.err().unwrap().to_string();
        assert!(err.contains("no network provider"), "{err}");
        assert!(cache_entries(&bare).is_empty());

        let networks = Arc::new(FakeNetworks {
            // Not a network namespace: the VMM cannot start in it.
            netns: dir.path().to_owned(),
            ..Default::default()
        });
        let runtime = Runtime::new(dir.path().join("vms")).with_network_provider(networks.clone());
        let prepared = runtime.prepare(s).await.unwrap();
        assert!(prepared.metadata().network.is_none(), "set up at launch");
        assert!(runtime.launch(prepared).await.is_err());
        assert_eq!(
            *networks.calls.lock().unwrap(),
            ["attach netted lan", "release netted lan"]
        );
        assert!(!cache_entries(&runtime).contains(&"netted".to_owned()));
    }
}
