//! The QEMU backend: `qemu-system-x86_64` in a session of its own under
//! its seccomp sandbox ([`cmdline::SANDBOX`]), the serial console written
//! to the run directory's `console.log`, a QMP socket for the graceful stop
//! (Ctrl-Alt-Del) and `quit`, the guest metadata on a raw read-only config
//! drive (`/dev/vdb`).
//!
//! QEMU does not daemonize itself (the sandbox forbids the fork and setsid
//! that takes): it is started detached, and it is up once its QMP socket
//! answers, which QEMU serves only when the machine is fully set up.

pub mod accel;
pub mod cmdline;
pub mod confine;
pub mod hotplug;
pub mod qmp;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use firebuild_metadata::boot::{config_drive, METADATA_KERNEL_ARG};
use serde_json::json;

pub use accel::AccelPolicy;
pub use cmdline::{Accel, Machine};
pub use confine::IdPool;

use crate::error::VmError;
use crate::liveness::ProcessIdentity;
use crate::rundir::RunDir;
use crate::state::RunMetadata;
use crate::vmm::{
    Availability, LaunchConfig, RestoreFrom, StartedVm, Vmm, VmmKind, SNAPSHOT_MEMORY_FILE,
    SNAPSHOT_STATE_FILE,
};

/// Settings of the QEMU backend (from the profile).
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The binary, a path or a name looked up in `PATH`.
    pub binary: PathBuf,
    pub accel: AccelPolicy,
    pub machine: Machine,
    /// How long QEMU may take to set the VM up (until QMP answers).
    pub start_timeout: Duration,
    /// How long the KVM probe boot may take (see [`accel`]).
    pub probe_timeout: Duration,
    /// Bound on each QMP exchange.
    pub qmp_timeout: Duration,
    /// The unprivileged ids QEMU processes run as, one each.
    pub ids: IdPool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: AccelPolicy::Auto,
            machine: Machine::Q35,
            start_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(5),
            ids: IdPool::default(),
        }
    }
}

/// The QEMU [`Vmm`].
#[derive(Debug, Clone, Default)]
pub struct QemuVmm {
    config: QemuConfig,
}

impl QemuVmm {
    pub fn new(config: QemuConfig) -> Self {
        QemuVmm { config }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The binary's full path, if it can be found.
    pub fn find_binary(&self) -> Option<PathBuf> {
        find_in_path(&self.config.binary)
    }

    fn qmp_socket(vm: &RunMetadata) -> PathBuf {
        vm.vmm_details
            .get("qmp_socket")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| vm.run_dir.join("qmp.sock"))
    }
}

/// The run cache a VM's run directory is in: the KVM probe's verdicts and
/// the default place of QEMU's id claims.
fn run_cache_of(launch: &LaunchConfig) -> &Path {
    launch.run_dir.path().parent().unwrap_or(Path::new("/"))
}

/// Resolves a command name the way `execvp` would.
pub(crate) fn find_in_path(binary: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.components().count() > 1 {
        return is_exec(binary).then(|| binary.to_owned());
    }
    std::env::var_os("PATH")
        .unwrap_or_default()
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .find(|p| is_exec(p))
}

#[async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    async fn availability(&self, _kernel: &Path, _run_cache: &Path) -> Availability {
        // With TCG as the fallback, QEMU runs anywhere its binary exists.
        match self.find_binary() {
            Some(_) => Availability::Usable,
            None => Availability::Unusable {
                reason: format!(
                    "{} not found in PATH; install Debian's qemu-system-x86",
                    self.config.binary.display()
                ),
            },
        }
    }

    fn kernel_args(&self, root_read_only: bool) -> Vec<String> {
        vec![
            "root=/dev/vda".into(),
            if root_read_only { "ro" } else { "rw" }.into(),
            format!("{METADATA_KERNEL_ARG}=/dev/vdb"),
        ]
    }

    /// Drives enumerate in PCI slot order, which is command-line order:
    /// root (`vda`), config drive (`vdb`), then these.
    fn disk_device(&self, index: usize) -> String {
        crate::disks::virtio_disk_node(index + 2)
    }

    fn preflight(&self, run_dir: &RunDir) -> Result<(), VmError> {
        RunDir::check_socket_path(&run_dir.qmp_socket())?;
        for socket in crate::agent::serial_sockets(run_dir.path()) {
            RunDir::check_socket_path(&socket)?;
        }
        Ok(())
    }

    fn agent_endpoint(&self, vm: &RunMetadata) -> Option<crate::agent::AgentEndpoint> {
        Some(crate::agent::AgentEndpoint::Serial {
            sockets: crate::agent::serial_sockets(&vm.run_dir),
        })
    }

    async fn start(&self, launch: &LaunchConfig) -> Result<StartedVm, VmError> {
        let binary = self.binary_for(launch)?;
        let run_cache = run_cache_of(launch);
        let accel = accel::resolve(
            self.config.accel,
            &binary,
            &launch.kernel,
            self.config.machine,
            run_cache,
            self.config.probe_timeout,
            &self.config.ids,
        )
        .await;
        let drive = config_drive::encode(&launch.guest).map_err(VmError::GuestMetadata)?;
        RunDir::write_private(&launch.run_dir.config_drive(), &drive)?;
        let setup = Setup {
            binary,
            accel,
            machine: self.config.machine,
            memory: cmdline::Memory::Memfd,
            incoming: false,
        };
        let started = self.spawn(launch, &setup).await?;
        tracing::info!(id = %launch.id, pid = started.pid, accel = accel.as_str(), "QEMU started");
        Ok(started)
    }

    async fn version(&self) -> Result<String, VmError> {
        let binary = self.find_binary().ok_or_else(|| VmError::VmmUnavailable {
            kind: VmmKind::Qemu,
            reason: format!("{} not found", self.config.binary.display()),
        })?;
        crate::vmm::binary_version(VmmKind::Qemu, &binary).await
    }

    async fn pause(&self, vm: &RunMetadata) -> Result<(), VmError> {
        self.qmp(vm).await?.execute("stop", None).await.map(drop)
    }

    async fn resume(&self, vm: &RunMetadata) -> Result<(), VmError> {
        self.qmp(vm).await?.execute("cont", None).await.map(drop)
    }

    async fn attach_disk(
        &self,
        vm: &RunMetadata,
        slot: u32,
        disk: &crate::vmm::Disk,
    ) -> Result<firebuild_agent_proto::GuestDisk, VmError> {
        hotplug::attach(&mut self.qmp(vm).await?, vm, slot, disk).await
    }

    async fn detach_disk(&self, vm: &RunMetadata, slot: u32) -> Result<(), VmError> {
        hotplug::detach(&mut self.qmp(vm).await?, slot).await
    }

    async fn snapshot(&self, vm: &RunMetadata, dir: &Path) -> Result<serde_json::Value, VmError> {
        let mut qmp = self.qmp(vm).await?;
        // RAM in a shared memfd is copied out below, not streamed.
        qmp.execute("migrate-set-capabilities", Some(ignore_shared()))
            .await?;
        let state = dir.join(SNAPSHOT_STATE_FILE);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&state)
            .map_err(|e| VmError::io("creating", &state, e))?;
        qmp.pass_fd("snapshot", file.as_fd()).await?;
        drop(file);
        qmp.execute("migrate", Some(json!({ "uri": "fd:snapshot" })))
            .await?;
        qmp.wait_for_migration(MIGRATION_POLL).await?;
        let memfd = vm.vmm_details["memory"] == "memfd";
        if memfd {
            let pid = vm.pid.ok_or_else(|| VmError::Snapshot {
                id: vm.id.clone(),
                reason: "no QEMU pid is recorded".into(),
            })?;
            let ram = memfd_of(pid).map_err(|reason| VmError::Snapshot {
                id: vm.id.clone(),
                reason,
            })?;
            let memory = dir.join(SNAPSHOT_MEMORY_FILE);
            crate::copy::copy_image(&ram, &memory)
                .map_err(|e| VmError::io("writing the guest memory to", &memory, e))?;
        }
        Ok(json!({
            "accel": vm.vmm_details["accel"],
            "machine": vm.vmm_details["machine"],
            "memory_file": memfd,
        }))
    }

    async fn restore(
        &self,
        launch: &LaunchConfig,
        from: &RestoreFrom<'_>,
    ) -> Result<StartedVm, VmError> {
        let fail = |reason: String| VmError::Start {
            kind: VmmKind::Qemu,
            id: launch.id.clone(),
            reason,
        };
        let memory_path = from.dir.join(SNAPSHOT_MEMORY_FILE);
        let setup = Setup {
            binary: self.binary_for(launch)?,
            accel: detail(from.details, "accel").map_err(fail)?,
            machine: detail(from.details, "machine").map_err(fail)?,
            memory: if from.details["memory_file"] == true {
                cmdline::Memory::SnapshotFile(&memory_path)
            } else {
                cmdline::Memory::Anonymous
            },
            incoming: true,
        };
        let started = self.spawn(launch, &setup).await?;
        let unclaimed = Unclaimed(Some(ProcessIdentity {
            pid: started.pid,
            start_time: started.start_time.unwrap_or_default(),
        }));
        let loaded = async {
            let mut qmp =
                qmp::Qmp::connect(&launch.run_dir.qmp_socket(), self.config.qmp_timeout).await?;
            qmp.execute("migrate-set-capabilities", Some(ignore_shared()))
                .await?;
            let state = from.dir.join(SNAPSHOT_STATE_FILE);
            let file =
                std::fs::File::open(&state).map_err(|e| VmError::io("opening", &state, e))?;
            qmp.pass_fd("incoming", file.as_fd()).await?;
            drop(file);
            qmp.execute("migrate-incoming", Some(json!({ "uri": "fd:incoming" })))
                .await?;
            qmp.wait_for_migration(MIGRATION_POLL).await?;
            match qmp.status().await?.as_str() {
                "paused" => Ok(()),
                other => Err(fail(format!("QEMU is {other} after loading the snapshot"))),
            }
        }
        .await;
        if let Err(e) = loaded {
            let process = ProcessIdentity {
                pid: started.pid,
                start_time: started.start_time.unwrap_or_default(),
            };
            let _ = process.signal(rustix::process::Signal::KILL);
            let _ = process
                .wait_exit(Duration::from_secs(5), Duration::from_millis(20))
                .await;
            let printed = std::fs::read_to_string(launch.run_dir.vmm_log()).unwrap_or_default();
            return Err(fail(format!(
                "loading the snapshot: {e} {}",
                printed.trim()
            )));
        }
        std::mem::forget(unclaimed);
        tracing::info!(id = %launch.id, pid = started.pid, "QEMU restored from a snapshot");
        Ok(started)
    }

    async fn graceful_stop(&self, vm: &RunMetadata) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        let mut qmp = qmp::Qmp::connect(&Self::qmp_socket(vm), self.config.qmp_timeout).await?;
        qmp.ctrl_alt_delete().await
    }

    async fn force_stop(&self, vm: &RunMetadata) -> Result<(), VmError> {
        let Some(process) = vm.process() else {
            return Ok(());
        };
        if !process.is_alive() {
            return Ok(());
        }
        // A clean `quit` first (QEMU flushes the disks), SIGKILL if needed.
        match qmp::Qmp::connect(&Self::qmp_socket(vm), self.config.qmp_timeout).await {
            Ok(mut qmp) => {
                if let Err(e) = qmp.quit().await {
                    tracing::debug!("QMP quit: {e}");
                }
            }
            Err(e) => tracing::debug!("QMP unavailable for quit: {e}"),
        }
        let poll = Duration::from_millis(20);
        if process.wait_exit(Duration::from_secs(3), poll).await {
            return Ok(());
        }
        process
            .signal(rustix::process::Signal::KILL)
            .map_err(|e| VmError::Stop {
                id: vm.id.clone(),
                reason: format!("SIGKILL to QEMU pid {}: {e}", process.pid),
            })?;
        if process.wait_exit(Duration::from_secs(5), poll).await {
            Ok(())
        } else {
            Err(VmError::Stop {
                id: vm.id.clone(),
                reason: format!("QEMU pid {} survived SIGKILL", process.pid),
            })
        }
    }

    fn describe(&self, vm: &RunMetadata) -> serde_json::Value {
        let mut details = vm.vmm_details.clone();
        if let Some(obj) = details.as_object_mut() {
            obj.insert("running".into(), json!(self.is_running(vm)));
        }
        details
    }
}

/// How a QEMU process is set up: fresh boot or restore.
struct Setup<'a> {
    binary: PathBuf,
    accel: Accel,
    machine: Machine,
    memory: cmdline::Memory<'a>,
    incoming: bool,
}

/// A QEMU started but not yet handed to the runtime: killed when dropped
/// (`forget` it once handed over), so a start cut short leaves nothing
/// running.
struct Unclaimed(Option<ProcessIdentity>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(process) = self.0.take() {
            let _ = process.signal(rustix::process::Signal::KILL);
        }
    }
}

/// How often a migration's progress is asked for.
const MIGRATION_POLL: Duration = Duration::from_millis(20);

/// `x-ignore-shared`: RAM QEMU shares with the host (the memfd) stays out
/// of the migration stream.
fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

/// A field of the snapshot's backend details.
fn detail<T: serde::de::DeserializeOwned>(
    details: &serde_json::Value,
    name: &str,
) -> Result<T, String> {
    serde_json::from_value(details[name].clone()).map_err(|e| format!("the snapshot's {name}: {e}"))
}

/// The `/proc` path of QEMU's guest RAM memfd (see [`cmdline::Memory::Memfd`]).
fn memfd_of(pid: i32) -> Result<PathBuf, String> {
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = std::fs::read_dir(&fds).map_err(|e| format!("reading {}: {e}", fds.display()))?;
    for entry in entries.flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target
            .to_string_lossy()
            .starts_with("/memfd:memory-backend-memfd")
        {
            return Ok(entry.path());
        }
    }
    Err(format!(
        "QEMU pid {pid} has no guest memory memfd (was it started by an older firebuild?)"
    ))
}

impl QemuVmm {
    fn binary_for(&self, launch: &LaunchConfig) -> Result<PathBuf, VmError> {
        self.find_binary().ok_or_else(|| VmError::Start {
            kind: VmmKind::Qemu,
            id: launch.id.clone(),
            reason: format!(
                "{} not found; install Debian's qemu-system-x86",
                self.config.binary.display()
            ),
        })
    }

    async fn qmp(&self, vm: &RunMetadata) -> Result<qmp::Qmp, VmError> {
        qmp::Qmp::connect(&Self::qmp_socket(vm), self.config.qmp_timeout).await
    }

    /// Starts QEMU detached for `launch` and waits until QMP answers.
    async fn spawn(&self, launch: &LaunchConfig, setup: &Setup<'_>) -> Result<StartedVm, VmError> {
        let fail = |reason: String| VmError::Start {
            kind: VmmKind::Qemu,
            id: launch.id.clone(),
            reason,
        };
        let config_drive = launch.run_dir.config_drive();
        let console_log = launch.run_dir.console_log();
        RunDir::write_private(&console_log, b"")?;
        let qmp_socket = launch.run_dir.qmp_socket();
        let pid_file = launch.run_dir.pid_file();
        let _ = std::fs::remove_file(&pid_file);
        let agent_sockets = crate::agent::serial_sockets(launch.run_dir.path());
        if launch.hotplug_slots > 0 && setup.machine != Machine::Q35 {
            return Err(fail(format!(
                "hot-plug slots need the q35 machine, not {:?}",
                setup.machine
            )));
        }
        let run_cache = run_cache_of(launch);
        let id = self.config.ids.claim(run_cache).map_err(&fail)?;
        let vmm_root = launch.run_dir.file("vmm-root");
        confine::make_empty_root(&vmm_root)
            .map_err(|e| VmError::io("creating QEMU's empty root", &vmm_root, e))?;
        // A boot starts with its vCPUs stopped: `cont` once QEMU is
        // unprivileged. A restore stays paused for the runtime anyway.
        let start_paused = !setup.incoming;
        let mut fd_sets = confine::FdSets::default();
        let mut disk_file = |path: &Path, read_only: bool| {
            fd_sets
                .add_disk(path, read_only)
                .map_err(|e| VmError::io("opening the disk", path, e))
        };
        let rootfs = disk_file(&launch.root.path, launch.root.read_only)?;
        let config_drive = disk_file(&config_drive, true)?;
        let disks = launch
            .disks
            .iter()
            .map(|disk| {
                Ok(crate::vmm::Disk {
                    path: disk_file(&disk.path, disk.read_only)?,
                    ..disk.clone()
                })
            })
            .collect::<Result<Vec<_>, VmError>>()?;
        let fd_set_args = fd_sets.args();

        let invocation = cmdline::Invocation {
            name: &launch.id,
            accel: setup.accel,
            machine: setup.machine,
            cpus: launch.cpus,
            mem_mib: launch.mem_mib,
            memory: setup.memory,
            incoming: setup.incoming,
            kernel: &launch.kernel,
            append: &launch.kernel_args,
            rootfs: &rootfs,
            rootfs_read_only: launch.root.read_only,
            config_drive: &config_drive,
            disks: &disks,
            console_log: &console_log,
            qmp_socket: Some(&qmp_socket),
            pid_file: Some(&pid_file),
            network: launch
                .network
                .as_ref()
                .map(|n| (n.tap.as_str(), n.guest_mac.as_str())),
            agent_sockets: &agent_sockets,
            fd_sets: &fd_set_args,
            confinement: cmdline::Confinement {
                uid: id.uid,
                gid: id.gid,
                chroot: &vmm_root,
            },
            start_paused,
            hotplug_slots: launch.hotplug_slots,
        };
        let args = invocation.args();
        let vmm_log = launch.run_dir.vmm_log();
        RunDir::write_private(&vmm_log, b"")?;
        let stderr = std::fs::OpenOptions::new()
            .append(true)
            .open(&vmm_log)
            .map_err(|e| VmError::io("opening", &vmm_log, e))?;
        let mut command = tokio::process::Command::new(&setup.binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let netns: Option<OwnedFd> = match &launch.network {
            Some(net) => {
                tracing::debug!(netns = %net.netns.display(), "starting QEMU in the VM's network namespace");
                Some(
                    std::fs::File::open(&net.netns)
                        .map_err(|source| VmError::Netns {
                            path: net.netns.clone(),
                            source,
                        })?
                        .into(),
                )
            }
            None => None,
        };
        let netns_fd = netns.as_ref().map(|fd| fd.as_raw_fd());
        let inherited: Vec<_> = std::iter::once(id.lock.as_raw_fd())
            .chain(fd_sets.raw_fds())
            .collect();
        // SAFETY: only fcntl(2), setns(2) and setsid(2), async-signal-safe,
        // run between fork and exec; the fds stay open until after the spawn.
        unsafe {
            command.pre_exec(move || {
                for &fd in &inherited {
                    confine::inherit(fd)?;
                }
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Detached: no signal of this terminal or session reaches it.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let spawned = command.spawn();
        drop(netns);
        // QEMU holds the id's claim and its disks now.
        drop(id.lock);
        drop(fd_sets);
        let child =
            spawned.map_err(|e| fail(format!("running {}: {e}", setup.binary.display())))?;
        // Killed if this start is dropped half-way (Ctrl-C, a cancelled task).
        let unclaimed = Unclaimed(
            child
                .id()
                .and_then(|pid| ProcessIdentity::of(pid as i32).ok()),
        );
        let pid = self
            .wait_until_up(child, &qmp_socket, &vmm_log)
            .await
            .map_err(&fail)?;
        if start_paused {
            let mut qmp = qmp::Qmp::connect(&qmp_socket, self.config.qmp_timeout).await?;
            qmp.execute("cont", None).await?;
        }
        std::mem::forget(unclaimed);
        let start_time = ProcessIdentity::of(pid).ok().map(|p| p.start_time);
        let memory = match setup.memory {
            cmdline::Memory::Memfd => "memfd",
            cmdline::Memory::SnapshotFile(_) => "snapshot-file",
            cmdline::Memory::Anonymous => "anonymous",
        };
        Ok(StartedVm {
            pid,
            start_time,
            details: json!({
                "binary": setup.binary,
                "accel": setup.accel,
                "machine": setup.machine,
                "memory": memory,
                "uid": id.uid,
                "gid": id.gid,
                "qmp_socket": qmp_socket,
                "pid_file": pid_file,
                "args": args,
                "hotplug_slots": launch.hotplug_slots,
            }),
        })
    }

    /// Waits until QEMU's QMP socket answers; returns QEMU's pid. A QEMU
    /// that exits first, or is not up in time, is an error with what it
    /// printed (it is killed in the latter case).
    async fn wait_until_up(
        &self,
        mut child: tokio::process::Child,
        qmp_socket: &Path,
        vmm_log: &Path,
    ) -> Result<i32, String> {
        let pid = child.id().ok_or("QEMU exited at once")? as i32;
        let printed = || {
            let text = std::fs::read_to_string(vmm_log).unwrap_or_default();
            text.trim().to_owned()
        };
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("QEMU exited with {status}: {}", printed()));
            }
            if qmp_socket.exists() {
                if let Ok(qmp) = qmp::Qmp::connect(qmp_socket, self.config.qmp_timeout).await {
                    drop(qmp);
                    // Not waited for: the runtime tracks it by pid and
                    // start time (a zombie counts as exited).
                    drop(child);
                    return Ok(pid);
                }
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!(
                    "QEMU did not finish setting up within {:?}: {}",
                    self.config.start_timeout,
                    printed()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binaries_like_execvp() {
        assert!(find_in_path(Path::new("sh")).is_some());
        assert!(find_in_path(Path::new("/bin/sh")).is_some());
        assert!(find_in_path(Path::new("no-such-binary-firebuild")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(find_in_path(&plain).is_none());
    }

    #[test]
    fn qemu_kernel_args_point_at_the_config_drive() {
        let vmm = QemuVmm::default();
        assert_eq!(
            vmm.kernel_args(false),
            ["root=/dev/vda", "rw", "firebuild.metadata=/dev/vdb"]
        );
        assert_eq!(vmm.kernel_args(true)[1], "ro");
        assert_eq!(vmm.disk_device(0), "/dev/vdc");
        assert_eq!(vmm.disk_device(2), "/dev/vde");
    }

    #[tokio::test]
    async fn missing_binary_is_unusable() {
        let vmm = QemuVmm::new(QemuConfig {
            binary: "/nonexistent/qemu".into(),
            ..Default::default()
        });
        let a = vmm.availability(Path::new("/k"), Path::new("/tmp")).await;
        assert!(matches!(a, Availability::Unusable { .. }));
    }
}
