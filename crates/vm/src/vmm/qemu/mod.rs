//! The QEMU backend: `qemu-system-x86_64` daemonized with a pid file, the
//! serial console written to the run directory's `console.log`, a QMP
//! socket for the graceful stop (Ctrl-Alt-Del) and `quit`, the guest
//! metadata on a raw read-only config drive (`/dev/vdb`).

pub mod accel;
pub mod cmdline;
pub mod qmp;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use firebuild_metadata::boot::{config_drive, METADATA_KERNEL_ARG};
use serde_json::json;

pub use accel::AccelPolicy;
pub use cmdline::{Accel, Machine};

use crate::error::VmError;
use crate::liveness::ProcessIdentity;
use crate::rundir::RunDir;
use crate::state::RunMetadata;
use crate::vmm::{Availability, LaunchConfig, StartedVm, Vmm, VmmKind};

/// Settings of the QEMU backend (from the profile).
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The binary, a path or a name looked up in `PATH`.
    pub binary: PathBuf,
    pub accel: AccelPolicy,
    pub machine: Machine,
    /// How long QEMU may take to set the VM up and daemonize.
    pub start_timeout: Duration,
    /// How long the KVM probe boot may take (see [`accel`]).
    pub probe_timeout: Duration,
    /// Bound on each QMP exchange.
    pub qmp_timeout: Duration,
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

/// Reads QEMU's pid file.
fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
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
        let fail = |reason: String| VmError::Start {
            kind: VmmKind::Qemu,
            id: launch.id.clone(),
            reason,
        };
        let binary = self.find_binary().ok_or_else(|| {
            fail(format!(
                "{} not found; install Debian's qemu-system-x86",
                self.config.binary.display()
            ))
        })?;
        let run_cache = launch.run_dir.path().parent().unwrap_or(Path::new("/"));
        let accel = accel::resolve(
            self.config.accel,
            &binary,
            &launch.kernel,
            self.config.machine,
            run_cache,
            self.config.probe_timeout,
        )
        .await;

        let drive = config_drive::encode(&launch.guest).map_err(VmError::GuestMetadata)?;
        let config_drive = launch.run_dir.config_drive();
        RunDir::write_private(&config_drive, &drive)?;
        let console_log = launch.run_dir.console_log();
        RunDir::write_private(&console_log, b"")?;
        let qmp_socket = launch.run_dir.qmp_socket();
        let pid_file = launch.run_dir.pid_file();
        let _ = std::fs::remove_file(&pid_file);
        let agent_sockets = crate::agent::serial_sockets(launch.run_dir.path());

        let invocation = cmdline::Invocation {
            name: &launch.id,
            accel,
            machine: self.config.machine,
            cpus: launch.cpus,
            mem_mib: launch.mem_mib,
            kernel: &launch.kernel,
            append: &launch.kernel_args,
            rootfs: &launch.root.path,
            rootfs_read_only: launch.root.read_only,
            config_drive: &config_drive,
            disks: &launch.disks,
            console_log: &console_log,
            qmp_socket: Some(&qmp_socket),
            pid_file: Some(&pid_file),
            network: launch
                .network
                .as_ref()
                .map(|n| (n.tap.as_str(), n.guest_mac.as_str())),
            agent_sockets: &agent_sockets,
        };
        let args = invocation.args();
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut netns: Option<OwnedFd> = None;
        if let Some(net) = &launch.network {
            let fd: OwnedFd = std::fs::File::open(&net.netns)
                .map_err(|source| VmError::Netns {
                    path: net.netns.clone(),
                    source,
                })?
                .into();
            let raw = fd.as_raw_fd();
            // SAFETY: only setns(2), async-signal-safe, runs between fork
            // and exec; the fd stays open until after the spawn.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            tracing::debug!(netns = %net.netns.display(), "starting QEMU in the VM's network namespace");
            netns = Some(fd);
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pid = self
            .spawn_daemon(command, netns, &launch.id, &binary, &pid_file)
            .await?;
        let start_time = ProcessIdentity::of(pid).ok().map(|p| p.start_time);
        tracing::info!(id = %launch.id, pid, accel = accel.as_str(), "QEMU started");
        Ok(StartedVm {
            pid,
            start_time,
            details: json!({
                "binary": binary,
                "accel": accel,
                "machine": self.config.machine,
                "qmp_socket": qmp_socket,
                "pid_file": pid_file,
                "args": args,
            }),
        })
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

impl QemuVmm {
    /// Runs QEMU, which forks the VM process and exits once the VM is set
    /// up; returns the VM process's pid from the pid file.
    async fn spawn_daemon(
        &self,
        mut command: tokio::process::Command,
        netns: Option<OwnedFd>,
        id: &str,
        binary: &Path,
        pid_file: &Path,
    ) -> Result<i32, VmError> {
        let fail = |reason: String| VmError::Start {
            kind: VmmKind::Qemu,
            id: id.to_owned(),
            reason,
        };
        let spawned = command.spawn();
        drop(netns);
        let child = spawned.map_err(|e| fail(format!("running {}: {e}", binary.display())))?;
        let waited =
            tokio::time::timeout(self.config.start_timeout, child.wait_with_output()).await;
        let output = match waited {
            Ok(out) => out.map_err(|e| fail(format!("waiting for QEMU: {e}")))?,
            Err(_) => {
                // The dropped child is killed (kill_on_drop); a forked VM
                // process may already exist: end it too.
                kill_from_pid_file(pid_file);
                return Err(fail(format!(
                    "QEMU did not finish setting up within {:?}",
                    self.config.start_timeout
                )));
            }
        };
        if !output.status.success() {
            kill_from_pid_file(pid_file);
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(fail(format!(
                "QEMU exited with {}: {}",
                output.status,
                stderr.trim()
            )));
        }
        read_pid_file(pid_file)
            .ok_or_else(|| fail(format!("QEMU wrote no pid to {}", pid_file.display())))
    }
}

/// Best effort: kill the VM process named in a pid file (failed start).
fn kill_from_pid_file(pid_file: &Path) {
    if let Some(process) = read_pid_file(pid_file).and_then(|pid| ProcessIdentity::of(pid).ok()) {
        let _ = process.signal(rustix::process::Signal::KILL);
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
