//! [`FirecrackerVmm`]: the runtime's [`Vmm`] trait over the Firecracker
//! driver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use firebuild_firecracker::{self as fc, DriveSpec, NetworkSpec, VmProcess, VmSpec, VsockSpec};
use firebuild_vm::rundir::RunDir;
use firebuild_vm::vmm::{SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE};
use firebuild_vm::{
    AgentEndpoint, Availability, Disk, GuestDisk, LaunchConfig, NetworkAttachment, RunMetadata,
    StartedVm, VmError, Vmm, VmmKind,
};
use serde_json::json;

use crate::boot;
use crate::config::{find_binary, FirecrackerConfig};
use crate::details::{FirecrackerDetails, Mode};
use crate::host;
use crate::jail_ids;
use crate::reserved::{self, ReservedDrive};
use crate::snapshot_files;

/// Where Firecracker writes a snapshot it takes (in its jail root, or the
/// run directory), before the host moves it into the snapshot. Not the
/// names a fork's own snapshot inputs have in its jail.
const TAKEN_STATE: &str = "taken.state";
const TAKEN_MEMORY: &str = "taken.mem";

/// Firecracker's own log, in the run directory.
pub const LOG_FILE: &str = "firecracker.log";
/// Firecracker's metrics, in the run directory.
pub const METRICS_FILE: &str = "firecracker.metrics";

/// The vsock Unix socket Firecracker creates for the guest agent (in the
/// run directory, or the jail's root).
pub const AGENT_SOCKET: &str = "agent.vsock";

/// The guest's vsock CID (any value from 3 works: each VM has its own
/// device).
const GUEST_CID: u32 = 3;

/// How long a SIGKILLed Firecracker may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// The Firecracker [`Vmm`].
///
/// Only `availability`, `preflight` and `start` use the configuration;
/// stopping, describing and cleaning up work from the VM's stored
/// `vmm_details` ([`FirecrackerDetails`]), so `kill`, `ls` and `purge`
/// manage a VM whatever the profile says now.
#[derive(Debug, Clone, Default)]
pub struct FirecrackerVmm {
    config: FirecrackerConfig,
}

impl FirecrackerVmm {
    pub fn new(config: FirecrackerConfig) -> Self {
        FirecrackerVmm { config }
    }

    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    /// The resolved `firecracker` binary, and the `jailer` unless
    /// `--no-jailer`; the error says which is missing and what to do.
    fn binaries(&self) -> Result<(PathBuf, Option<PathBuf>), String> {
        let firecracker = find_binary(&self.config.firecracker).ok_or_else(|| {
            missing(
                &self.config.firecracker,
                "install Firecracker v1.16 from its release tarball (see the README) or set --binary-firecracker",
            )
        })?;
        if self.config.no_jailer {
            return Ok((firecracker, None));
        }
        let jailer = find_binary(&self.config.jailer).ok_or_else(|| {
            missing(
                &self.config.jailer,
                "install the jailer from the same Firecracker release tarball and set --binary-jailer, or use --no-jailer on a development host",
            )
        })?;
        Ok((firecracker, Some(jailer)))
    }

    fn check_available(&self, kernel: &Path, run_cache: &Path) -> Result<(), String> {
        let (firecracker, jailer) = self.binaries()?;
        let config = self
            .config
            .launch_config(firecracker, jailer, run_cache, None, None);
        fc::availability(&config).map_err(|e| match e {
            fc::Error::Io { path, source, .. } if path == Path::new("/dev/kvm") => format!(
                "cannot open /dev/kvm read-write ({source}); Firecracker needs KVM: run as root (or a member of the kvm group) on a host with KVM enabled"
            ),
            other => other.to_string(),
        })?;
        host::check_elf_kernel(kernel)
    }

    /// The VM description for Firecracker, with the drives reserved for
    /// [`LaunchConfig::hotplug_slots`]; creates the console, log and
    /// metrics files (0600) in the run directory.
    fn vm_spec(
        &self,
        launch: &LaunchConfig,
        net: &NetworkAttachment,
        mode: Mode,
    ) -> Result<(VmSpec, Vec<ReservedDrive>), VmError> {
        let vcpu_count = u8::try_from(launch.cpus).map_err(|_| {
            start_error(
                &launch.id,
                format!("{} vCPUs: Firecracker runs at most 32", launch.cpus),
            )
        })?;
        let mtu =
            net.mtu.map(u16::try_from).transpose().map_err(|_| {
                start_error(&launch.id, format!("MTU {:?} is above 65535", net.mtu))
            })?;
        let mmds = serde_json::to_value(&launch.guest).map_err(VmError::GuestMetadata)?;
        let console = launch.run_dir.console_log();
        let log = launch.run_dir.file(LOG_FILE);
        let metrics = launch.run_dir.file(METRICS_FILE);
        for file in [&console, &log, &metrics] {
            RunDir::write_private(file, b"")?;
        }
        let (reserved_specs, reserved): (Vec<_>, Vec<_>) =
            reserved::drives(launch, mode == Mode::Jailed)?
                .into_iter()
                .unzip();
        let spec = VmSpec {
            boot_args: launch.kernel_args.clone(),
            vcpu_count,
            mem_size_mib: launch.mem_mib,
            network: Some(NetworkSpec {
                tap: net.tap.clone(),
                guest_mac: Some(net.guest_mac.clone()),
                mtu,
            }),
            mmds: Some(mmds),
            log_path: Some(log),
            metrics_path: Some(metrics),
            console_path: Some(console),
            // The guest agent: Firecracker creates the socket (in the jail).
            vsock: Some(VsockSpec {
                guest_cid: GUEST_CID,
                uds_path: launch.run_dir.file(AGENT_SOCKET),
            }),
            root_read_only: launch.root.read_only,
            drives: launch
                .disks
                .iter()
                .map(drive_spec)
                .chain(reserved_specs)
                .collect(),
            ..VmSpec::new(&launch.id, &launch.kernel, &launch.root.path)
        };
        Ok((spec, reserved))
    }
}

/// "`what` is missing", naming the path or the `PATH` lookup.
fn missing(binary: &Path, todo: &str) -> String {
    if binary.components().count() > 1 {
        format!(
            "{} is missing or not an executable file; {todo}",
            binary.display()
        )
    } else {
        format!("{} was not found in PATH; {todo}", binary.display())
    }
}

pub(crate) fn start_error(id: &str, reason: impl Into<String>) -> VmError {
    VmError::Start {
        kind: VmmKind::Firecracker,
        id: id.to_owned(),
        reason: reason.into(),
    }
}

fn stop_error(id: &str, reason: impl Into<String>) -> VmError {
    VmError::Stop {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

/// The stored details of `vm`, for an action that needs the process.
fn stored_details(vm: &RunMetadata) -> Result<Option<FirecrackerDetails>, String> {
    FirecrackerDetails::from_metadata(vm).map_err(|e| {
        format!(
            "its run metadata's vmm_details are not a Firecracker process record ({e}); was run.json edited?"
        )
    })
}

/// Ends a VM we cannot hand over to the runtime (a failure after launch).
fn abandon(process: &VmProcess) {
    if let Err(e) = process.kill() {
        tracing::warn!(vm_id = %process.vm_id, "cannot kill Firecracker after a failed start: {e}");
    }
    if process.wait_exit(KILL_WAIT) {
        if let Err(e) = process.cleanup() {
            tracing::warn!(vm_id = %process.vm_id, "cannot clean up after a failed start: {e}");
        }
    }
}

#[async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    async fn availability(&self, kernel: &Path, run_cache: &Path) -> Availability {
        match self.check_available(kernel, run_cache) {
            Ok(()) => Availability::Usable,
            Err(reason) => Availability::Unusable { reason },
        }
    }

    /// The same either way: Firecracker appends `root=/dev/vda` and `ro` or
    /// `rw` from the root drive's `is_read_only` itself, after our
    /// `boot_args` (v1.16.1 src/vmm/src/builder.rs, `attach_block_devices`),
    /// so the guest mounts a read-only root drive read-only.
    fn kernel_args(&self, _root_read_only: bool) -> Vec<String> {
        boot::kernel_args()
    }

    /// The guest metadata comes over MMDS, which needs the VM's network.
    fn needs_network(&self) -> bool {
        true
    }

    fn disk_device(&self, index: usize) -> String {
        boot::disk_device(index)
    }

    fn preflight(&self, run_dir: &RunDir) -> Result<(), VmError> {
        let id = run_dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let (firecracker, jailer) = self.binaries().map_err(|r| start_error(id, r))?;
        if jailer.is_some() {
            host::check_same_filesystem(run_dir.path(), &self.config.chroot_base)
                .map_err(|r| start_error(id, r))?;
        }
        let config = self
            .config
            .launch_config(firecracker, jailer, run_dir.path(), None, None);
        fc::preflight(&config, id).map_err(|e| match e {
            fc::Error::InvalidVmId { id, reason } => VmError::InvalidName {
                name: id,
                reason: format!(
                    "Firecracker refuses it: {reason}; use 1 to 64 letters, digits and hyphens"
                ),
            },
            other => start_error(id, other.to_string()),
        })
    }

    async fn start(&self, launch: &LaunchConfig) -> Result<StartedVm, VmError> {
        self.run_firecracker(launch, None).await
    }

    async fn graceful_stop(&self, vm: &RunMetadata) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        self.api(vm)?
            .send_ctrl_alt_del()
            .await
            .map_err(|e| stop_error(&vm.id, format!("asking the guest to shut down: {e}")))
    }

    async fn force_stop(&self, vm: &RunMetadata) -> Result<(), VmError> {
        let details = stored_details(vm).map_err(|r| stop_error(&vm.id, r))?;
        let Some(process) = details.map(|d| d.process) else {
            // Nothing recorded beyond the pid: the runtime's identity of it.
            let Some(p) = vm.process() else {
                return Ok(());
            };
            p.signal(rustix::process::Signal::KILL)
                .map_err(|e| stop_error(&vm.id, format!("SIGKILL to pid {}: {e}", p.pid)))?;
            return if p.wait_exit(KILL_WAIT, POLL).await {
                Ok(())
            } else {
                Err(stop_error(
                    &vm.id,
                    format!("pid {} survived SIGKILL", p.pid),
                ))
            };
        };
        process
            .kill()
            .map_err(|e| stop_error(&vm.id, e.to_string()))?;
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while process.is_running() {
            if tokio::time::Instant::now() >= deadline {
                return Err(stop_error(
                    &vm.id,
                    format!("Firecracker pid {} survived SIGKILL", process.pid),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    async fn version(&self) -> Result<String, VmError> {
        let (binary, _) = self.binaries().map_err(|reason| VmError::VmmUnavailable {
            kind: VmmKind::Firecracker,
            reason,
        })?;
        firebuild_vm::vmm::binary_version(VmmKind::Firecracker, &binary).await
    }

    async fn pause(&self, vm: &RunMetadata) -> Result<(), VmError> {
        self.api(vm)?
            .pause()
            .await
            .map_err(|e| pause_error(vm, "paused", e))
    }

    async fn resume(&self, vm: &RunMetadata) -> Result<(), VmError> {
        self.api(vm)?
            .resume()
            .await
            .map_err(|e| pause_error(vm, "resumed", e))
    }

    async fn snapshot(&self, vm: &RunMetadata, dir: &Path) -> Result<serde_json::Value, VmError> {
        let fail = |reason: String| VmError::Snapshot {
            id: vm.id.clone(),
            reason,
        };
        let details = stored_details(vm)
            .map_err(fail)?
            .ok_or_else(|| fail("no Firecracker process is recorded for it".into()))?;
        let jail = details.process.jail.as_ref();
        // Firecracker writes the files where it sees them (in its jail, as
        // the jail user); the host then takes them into the snapshot.
        let state_in = Path::new("/").join(TAKEN_STATE);
        let memory_in = Path::new("/").join(TAKEN_MEMORY);
        let on_host = |in_vm: &Path| match jail {
            Some(j) => j.host_path(in_vm),
            None => vm.run_dir.join(in_vm.strip_prefix("/").unwrap_or(in_vm)),
        };
        let (state_host, memory_host) = (on_host(&state_in), on_host(&memory_in));
        for file in [&state_host, &memory_host] {
            snapshot_files::prepare(file, jail.map(|j| j.user)).map_err(fail)?;
        }
        let (state_arg, memory_arg) = match jail {
            Some(_) => (state_in, memory_in),
            None => (state_host.clone(), memory_host.clone()),
        };
        let created = details
            .process
            .client()
            .with_timeout(self.config.snapshot_timeout)
            .create_snapshot(&fc::models::SnapshotCreateParams {
                mem_file_path: memory_arg,
                snapshot_path: state_arg,
                snapshot_type: None,
            })
            .await;
        let taken = created
            .map_err(|e| fail(format!("PUT /snapshot/create: {e}")))
            .and_then(|()| {
                snapshot_files::take(&state_host, &dir.join(SNAPSHOT_STATE_FILE), 0o400)?;
                // Readable by every fork's jail user (each has its own uid),
                // so forks link it and share its pages; the snapshot store
                // itself is root's alone.
                snapshot_files::take(&memory_host, &dir.join(SNAPSHOT_MEMORY_FILE), 0o444)
            });
        for file in [&state_host, &memory_host] {
            let _ = std::fs::remove_file(file);
        }
        taken?;
        Ok(json!({ "jailed": jail.is_some(), "memory_file": true }))
    }

    async fn restore(
        &self,
        launch: &LaunchConfig,
        from: &firebuild_vm::vmm::RestoreFrom<'_>,
    ) -> Result<StartedVm, VmError> {
        if from.details["jailed"] != true {
            return Err(start_error(
                &launch.id,
                "the snapshot was taken without the jailer and names the source VM's own disk files; take it of a jailed VM",
            ));
        }
        if self.config.no_jailer {
            return Err(start_error(
                &launch.id,
                "a snapshot is restored under the jailer (each fork's jail holds its disks under the names the snapshot knows); drop --no-jailer",
            ));
        }
        let files = fc::SnapshotFiles {
            state: from.dir.join(SNAPSHOT_STATE_FILE),
            memory: from.dir.join(SNAPSHOT_MEMORY_FILE),
        };
        self.run_firecracker(launch, Some(&files)).await
    }

    async fn attach_disk(
        &self,
        vm: &RunMetadata,
        slot: u32,
        disk: &Disk,
    ) -> Result<GuestDisk, VmError> {
        let details = self.running_details(vm)?;
        reserved::attach(&details, &self.client_of(&details), vm, slot, &disk.path).await
    }

    async fn detach_disk(&self, vm: &RunMetadata, slot: u32) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        let details = self.running_details(vm)?;
        reserved::detach(&details, &self.client_of(&details), vm, slot).await
    }

    fn agent_endpoint(&self, vm: &RunMetadata) -> Option<AgentEndpoint> {
        let details = FirecrackerDetails::from_metadata(vm).ok()??;
        let socket = match &details.process.jail {
            Some(jail) => jail.host_path(&Path::new("/").join(AGENT_SOCKET)),
            None => vm.run_dir.join(AGENT_SOCKET),
        };
        Some(AgentEndpoint::Vsock {
            socket,
            port: firebuild_agent_proto::VSOCK_PORT,
        })
    }

    fn describe(&self, vm: &RunMetadata) -> serde_json::Value {
        let mut described = vm.vmm_details.clone();
        if let Some(obj) = described.as_object_mut() {
            obj.insert("running".into(), json!(self.is_running(vm)));
            if let Ok(Some(d)) = FirecrackerDetails::from_metadata(vm) {
                if let Some(jail) = &d.process.jail {
                    obj.insert("jail_dir".into(), json!(jail.instance_dir()));
                }
            }
        }
        described
    }

    async fn cleanup(&self, vm: &RunMetadata) -> Result<(), VmError> {
        let details = stored_details(vm).map_err(|r| {
            stop_error(
                &vm.id,
                format!("{r}; remove its jail under the chroot base by hand"),
            )
        })?;
        let Some(details) = details else {
            // The VMM never started: no jail, no socket.
            return Ok(());
        };
        details.process.cleanup().map_err(|e| match e {
            fc::Error::StillRunning { .. } => VmError::StillRunning { id: vm.id.clone() },
            other => stop_error(&vm.id, format!("cleaning up after Firecracker: {other}")),
        })?;
        // Its jail id goes back to the range (a fixed user is never claimed).
        if let Some(jail) = &details.process.jail {
            jail_ids::release(&jail.chroot_base, jail.user.uid, &vm.run_dir)
                .map_err(|r| stop_error(&vm.id, format!("releasing its jail id: {r}")))?;
        }
        Ok(())
    }
}

fn pause_error(vm: &RunMetadata, action: &'static str, e: fc::Error) -> VmError {
    VmError::Pause {
        id: vm.id.clone(),
        action,
        reason: e.to_string(),
    }
}

impl FirecrackerVmm {
    /// Starts Firecracker for `launch`: a boot, or a restore of `snapshot`.
    async fn run_firecracker(
        &self,
        launch: &LaunchConfig,
        snapshot: Option<&fc::SnapshotFiles>,
    ) -> Result<StartedVm, VmError> {
        let id = launch.id.as_str();
        let net = launch.network.as_ref().ok_or_else(|| {
            start_error(
                id,
                "Firecracker serves the guest metadata over MMDS, which needs the VM's network; set the network up or use --vmm qemu",
            )
        })?;
        let (binary, jailer) = self.binaries().map_err(|r| start_error(id, r))?;
        let run_dir = launch.run_dir.path();
        let mode = if jailer.is_some() {
            host::check_same_filesystem(run_dir, &self.config.chroot_base)
                .map_err(|r| start_error(id, r))?;
            Mode::Jailed
        } else {
            Mode::Direct
        };
        let (spec, reserved_drives) = self.vm_spec(launch, net, mode)?;
        // Jailed without a fixed user: an id of this VM's own.
        let claimed = match (mode, self.config.user) {
            (Mode::Jailed, None) => Some(
                jail_ids::claim(&self.config.chroot_base, self.config.id_range, run_dir)
                    .map_err(|r| start_error(id, r))?,
            ),
            _ => None,
        };
        let release_claim = || {
            if let Some(user) = claimed {
                let _ = jail_ids::release(&self.config.chroot_base, user.uid, run_dir);
            }
        };
        if mode == Mode::Jailed {
            // The tap was made before the jail user was known: Firecracker,
            // unprivileged in its jail, may attach only to a tap it owns.
            let user = claimed.unwrap_or_else(|| self.config.jail_user());
            if let Err(e) =
                firebuild_vm::network::set_tap_owner(&net.netns, &net.tap, user.uid, user.gid)
            {
                release_claim();
                return Err(start_error(
                    id,
                    format!("giving tap {} to the jail user {}: {e}", net.tap, user.uid),
                ));
            }
        }
        let config = self.config.launch_config(
            binary.clone(),
            jailer,
            run_dir,
            Some(net.netns.clone()),
            claimed,
        );
        let launched = match snapshot {
            Some(files) => fc::restore(&config, &spec, files).await,
            None => fc::launch(&config, &spec).await,
        };
        let process = match launched {
            Ok(process) => process,
            Err(e) => {
                release_claim();
                return Err(start_error(id, e.to_string()));
            }
        };
        let details = FirecrackerDetails {
            process,
            mode,
            binary,
            log_path: spec.log_path.unwrap_or_default(),
            metrics_path: spec.metrics_path.unwrap_or_default(),
            reserved_drives,
        };
        let recorded = serde_json::to_value(&details).map_err(VmError::GuestMetadata);
        let pid = i32::try_from(details.process.pid).map_err(|_| {
            start_error(
                id,
                format!("pid {} does not fit the run metadata", details.process.pid),
            )
        });
        match (recorded, pid) {
            (Ok(value), Ok(pid)) => {
                tracing::info!(id, pid, mode = ?mode, "Firecracker started");
                Ok(StartedVm {
                    pid,
                    start_time: Some(details.process.start_time),
                    details: value,
                })
            }
            (Err(e), _) | (_, Err(e)) => {
                abandon(&details.process);
                Err(e)
            }
        }
    }

    /// The API client of a running VM.
    fn api(&self, vm: &RunMetadata) -> Result<fc::Client, VmError> {
        Ok(self.client_of(&self.running_details(vm)?))
    }

    /// The API client of the process in `details`.
    fn client_of(&self, details: &FirecrackerDetails) -> fc::Client {
        details
            .process
            .client()
            .with_timeout(self.config.request_timeout)
    }

    /// The stored details of a VM whose process must be there.
    fn running_details(&self, vm: &RunMetadata) -> Result<FirecrackerDetails, VmError> {
        stored_details(vm)
            .map_err(|r| stop_error(&vm.id, r))?
            .ok_or_else(|| stop_error(&vm.id, "no Firecracker process is recorded for it"))
    }
}

/// A launch disk as a Firecracker drive (the root drive's id is fixed:
/// [`fc::ROOT_DRIVE_ID`]). Firecracker takes ids of letters, digits and
/// `_` only; [`VmSpec::validate`] says so when a disk's id is not one.
fn drive_spec(disk: &Disk) -> DriveSpec {
    DriveSpec {
        drive_id: disk.id.clone(),
        path: disk.path.clone(),
        read_only: disk.read_only,
        in_place: disk.in_place,
    }
}
