//! From a [`VmSpec`] to a booted VM in one call: start Firecracker (jailed
//! or not), wait for its API, configure and boot it. [`launch`] is async
//! (for async runtimes); [`Machine`] is the same, synchronous, with the
//! handle to stop, inspect and clean up.
//!
//! The VMM is left running detached: nothing of ours needs to stay
//! resident, and [`VmProcess`] (serializable) is all a later command needs.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::blocking::BlockingClient;
use crate::cgroup::CgroupLayout;
use crate::client::{Client, DEFAULT_REQUEST_TIMEOUT};
use crate::error::{Error, Result};
use crate::jail::{Access, Jail, JailerConfig, JAILED_API_SOCKET};
use crate::models::{FullVmConfiguration, InstanceInfo};
use crate::process::{kill_rooted_at, processes_rooted_at, ProcStat, VmProcess};
use crate::spec::{check_vm_id, VmSpec};
use crate::transport::check_socket_path;

/// Default wait for the API socket (and for the jailer to finish).
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed process gets to disappear before cleanup goes on.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// API socket name in the run directory when not jailed.
pub const DIRECT_API_SOCKET: &str = "firecracker.socket";
/// Firecracker's stdout and stderr when not jailed.
pub const DIRECT_OUTPUT: &str = "firecracker.out";

/// How Firecracker is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchMode {
    /// Through the jailer (the default for real use).
    Jailed(JailerConfig),
    /// Plainly, as the caller's user, for development hosts (`--no-jailer`):
    /// no chroot, no privilege drop, no cgroups.
    Direct {
        /// Holds the API socket and Firecracker's output.
        run_dir: PathBuf,
        /// Network namespace to run in (entered with `nsenter`).
        netns: Option<PathBuf>,
    },
}

/// Where Firecracker is and how to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    pub firecracker: PathBuf,
    pub mode: LaunchMode,
    pub socket_timeout: Duration,
    pub request_timeout: Duration,
}

impl LaunchConfig {
    /// Default timeouts.
    pub fn new(firecracker: impl Into<PathBuf>, mode: LaunchMode) -> Self {
        LaunchConfig {
            firecracker: firecracker.into(),
            mode,
            socket_timeout: DEFAULT_SOCKET_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Whether this host can start Firecracker as configured: the binaries are
/// executable files and /dev/kvm opens read-write. (Whether KVM really
/// boots a guest only a boot can tell.)
pub fn availability(config: &LaunchConfig) -> Result<()> {
    check_executable("firecracker", &config.firecracker)?;
    if let LaunchMode::Jailed(j) = &config.mode {
        check_executable("jailer", &j.jailer)?;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| Error::io("cannot open", "/dev/kvm", e))
}

/// Checks, creating nothing, what [`launch`] would refuse late: the VM id
/// and the API socket path length.
pub fn preflight(config: &LaunchConfig, vm_id: &str) -> Result<()> {
    check_vm_id(vm_id)?;
    match &config.mode {
        LaunchMode::Direct { run_dir, .. } => {
            check_socket_path(&run_dir.join(DIRECT_API_SOCKET), "run directory")
        }
        LaunchMode::Jailed(j) => {
            // Resolve what exists already, as the jailer will.
            let base = fs::canonicalize(&j.chroot_base).unwrap_or_else(|_| j.chroot_base.clone());
            let exec = fs::canonicalize(&config.firecracker)
                .unwrap_or_else(|_| config.firecracker.clone());
            let name = exec.file_name().unwrap_or_default();
            let socket = base
                .join(name)
                .join(vm_id)
                .join("root")
                .join(JAILED_API_SOCKET.trim_start_matches('/'));
            check_socket_path(&socket, "chroot base (or VM id)")
        }
    }
}

/// Starts Firecracker, configures every device of `spec` and boots it;
/// returns the running process. On failure nothing is left behind: the
/// process is killed and the jail removed.
pub async fn launch(config: &LaunchConfig, spec: &VmSpec) -> Result<VmProcess> {
    spec.validate()?;
    match &config.mode {
        LaunchMode::Jailed(jailer) => launch_jailed(config, jailer, spec, None).await,
        LaunchMode::Direct { run_dir, netns } => {
            launch_direct(config, run_dir, netns.as_deref(), spec).await
        }
    }
}

/// A snapshot's files on the host (`PUT /snapshot/create` wrote them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The microVM state.
    pub state: PathBuf,
    /// The guest memory, mapped MAP_PRIVATE by each restored VM: forks
    /// share its pages in the page cache until they write them.
    pub memory: PathBuf,
}

/// In-jail names of a restored VM's snapshot files.
pub const JAILED_SNAPSHOT_STATE: &str = "snapshot.state";
pub const JAILED_SNAPSHOT_MEMORY: &str = "snapshot.mem";

/// Starts a fresh jailed Firecracker and loads `snapshot` into it instead of
/// booting, with `spec`'s drives, logs and tap; returns it paused. The
/// drives are staged under the same in-jail names as at the source, which
/// is what the snapshot's device state names. Not jailed, the snapshot
/// would name the source's own disk files: refused.
pub async fn restore(
    config: &LaunchConfig,
    spec: &VmSpec,
    snapshot: &SnapshotFiles,
) -> Result<VmProcess> {
    spec.validate()?;
    match &config.mode {
        LaunchMode::Jailed(jailer) => launch_jailed(config, jailer, spec, Some(snapshot)).await,
        LaunchMode::Direct { .. } => Err(Error::config(
            "snapshot",
            "a snapshot taken without the jailer names the source VM's own disk files: restore it under the jailer (each fork's jail holds its own disks under the same names)",
        )),
    }
}

/// A started Firecracker VM, driven synchronously.
///
/// Dropping it leaves the VM running; keep [`Machine::process`] to find it
/// again with [`Machine::attach`].
#[derive(Debug)]
pub struct Machine {
    process: VmProcess,
    client: BlockingClient,
}

impl Machine {
    /// [`launch`], blocking. Not for use inside a tokio runtime.
    pub fn launch(config: &LaunchConfig, spec: &VmSpec) -> Result<Machine> {
        let process = crate::blocking::block_on(launch(config, spec))?;
        Self::attach(process, config.request_timeout)
    }

    /// A handle on a VM started earlier (e.g. by another command).
    pub fn attach(process: VmProcess, request_timeout: Duration) -> Result<Machine> {
        let client =
            BlockingClient::new(Client::new(&process.api_socket).with_timeout(request_timeout))?;
        Ok(Machine { process, client })
    }

    /// What to persist to manage the VM later.
    pub fn process(&self) -> &VmProcess {
        &self.process
    }

    /// The API client, for requests not wrapped here.
    pub fn client(&self) -> &BlockingClient {
        &self.client
    }

    /// Asks the guest to shut down (Ctrl+Alt+Del); Firecracker exits when
    /// the guest reboots. Follow with [`Machine::wait_exit`].
    pub fn shutdown(&self) -> Result<()> {
        self.client.send_ctrl_alt_del()
    }

    /// Pauses the vCPUs.
    pub fn pause(&self) -> Result<()> {
        self.client.pause()
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) -> Result<()> {
        self.client.resume()
    }

    /// `GET /`: id, state, version.
    pub fn info(&self) -> Result<InstanceInfo> {
        self.client.instance_info()
    }

    /// `GET /vm/config`.
    pub fn vm_config(&self) -> Result<FullVmConfiguration> {
        self.client.vm_config()
    }

    /// Whether the Firecracker process still runs.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Waits up to `timeout` for Firecracker to exit; true if it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        self.process.wait_exit(timeout)
    }

    /// SIGKILLs Firecracker and waits briefly for it to go.
    pub fn kill(&self) -> Result<()> {
        self.process.kill()?;
        if !self.wait_exit(KILL_GRACE) {
            return Err(Error::StillRunning {
                pid: self.process.pid,
            });
        }
        Ok(())
    }

    /// See [`VmProcess::cleanup`].
    pub fn cleanup(self) -> Result<()> {
        self.process.cleanup()
    }
}

async fn launch_direct(
    config: &LaunchConfig,
    run_dir: &Path,
    netns: Option<&Path>,
    spec: &VmSpec,
) -> Result<VmProcess> {
    tracing::warn!(
        vm_id = %spec.vm_id,
        "starting Firecracker without the jailer: no chroot, no privilege drop, no cgroups; for development hosts only"
    );
    fs::create_dir_all(run_dir).map_err(|e| Error::io("cannot create", run_dir, e))?;
    let socket = run_dir.join(DIRECT_API_SOCKET);
    check_socket_path(&socket, "run directory")?;
    remove_stale_socket(&socket)?;
    let output_path = run_dir.join(DIRECT_OUTPUT);
    let (out, err) = log_pair(&output_path)?;

    let (program, mut cmd) = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(&config.firecracker);
            (PathBuf::from("nsenter"), c)
        }
        None => (
            config.firecracker.clone(),
            Command::new(&config.firecracker),
        ),
    };
    cmd.arg("--api-sock")
        .arg(&socket)
        .arg("--id")
        .arg(&spec.vm_id)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl+C meant for us does not reach the VM.
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|source| Error::Spawn { program, source })?;
    let pid = child.id();
    let mut guard = Cleanup {
        process: None,
        child: Some(child),
        jail: None,
        socket: Some(socket.clone()),
    };
    let process = VmProcess::new(&spec.vm_id, pid, socket.clone(), None)?;
    guard.process = Some(process.clone());

    let client = Client::new(&socket).with_timeout(config.request_timeout);
    client
        .wait_ready_while(config.socket_timeout, || {
            alive_or(&process, &socket, || {
                format!("its output: {}", tail(&output_path))
            })
        })
        .await?;
    client.configure_and_start(spec).await?;
    guard.disarm();
    Ok(process)
}

async fn launch_jailed(
    config: &LaunchConfig,
    jailer: &JailerConfig,
    spec: &VmSpec,
    snapshot: Option<&SnapshotFiles>,
) -> Result<VmProcess> {
    let jail = Jail::new(jailer, &config.firecracker, &spec.vm_id)?;
    let layout = CgroupLayout::detect()?;
    let version = match jailer.cgroup_version {
        Some(v) => v,
        None => layout.choose_version(&jailer.cgroups)?,
    };
    jail.create()?;
    let mut guard = Cleanup {
        process: None,
        child: None,
        jail: Some((jail.clone(), layout)),
        socket: None,
    };
    let staged = jail.stage(spec)?;
    // Shared: the snapshot's files serve every fork, none may write them.
    let snapshot_in_jail = match snapshot {
        Some(files) => Some((
            jail.link_in(&files.state, JAILED_SNAPSHOT_STATE, Access::Shared)?,
            jail.link_in(&files.memory, JAILED_SNAPSHOT_MEMORY, Access::Shared)?,
        )),
        None => None,
    };

    let log_path = jail.jailer_log();
    let (out, err) = log_pair(&log_path)?;
    let mut cmd = jail.jailer_command(jailer, version);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    tracing::debug!(command = ?cmd, "starting the jailer");
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        program: jailer.jailer.clone(),
        source,
    })?;
    guard.child = Some(child);
    let deadline = jailer_deadline(config.socket_timeout, &jail, snapshot);
    let pid = wait_jailer(&mut guard, jailer, &jail, deadline).await?;
    let socket = jail.api_socket();
    let process = VmProcess::new(&spec.vm_id, pid, socket.clone(), Some(jail.clone()))?;
    guard.process = Some(process.clone());

    let client = Client::new(&socket).with_timeout(config.request_timeout);
    let log_hint = spec.log_path.clone();
    client
        .wait_ready_while(config.socket_timeout, || {
            alive_or(&process, &socket, || {
                format!(
                    "jailer output: {}; Firecracker log: {}",
                    tail(&log_path),
                    log_hint
                        .as_deref()
                        .map_or("(none configured)".into(), |p| p.display().to_string())
                )
            })
        })
        .await?;
    match &snapshot_in_jail {
        Some((state, memory)) => {
            // Firecracker reads the state and maps the memory file: allow
            // for their size on top of an ordinary request.
            let bytes = snapshot.map_or(0, |f| file_len(&f.state) + file_len(&f.memory));
            client
                .clone()
                .with_timeout(config.request_timeout + setup_allowance(bytes))
                .restore(&staged, state, memory)
                .await?
        }
        None => client.configure_and_start(&staged).await?,
    }
    guard.disarm();
    Ok(process)
}

/// The jailer copies the Firecracker binary into the jail before anything
/// else; give it this long per byte it copies (and a restore this long
/// per snapshot byte), on top of the fixed timeouts: a slow or loaded disk
/// makes big files slow, never wrong.
const SETUP_BYTES_PER_SECOND: u64 = 32 << 20;

/// Extra time for setting up `bytes` of files.
fn setup_allowance(bytes: u64) -> Duration {
    Duration::from_millis(bytes.saturating_mul(1000) / SETUP_BYTES_PER_SECOND)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// How long the jailer may take until its pid file is there: the socket
/// timeout, plus time for the copy of the Firecracker binary it makes, plus
/// (restoring) time for the snapshot files the jail holds.
fn jailer_deadline(base: Duration, jail: &Jail, snapshot: Option<&SnapshotFiles>) -> Duration {
    let snapshot_bytes = snapshot.map_or(0, |f| file_len(&f.state) + file_len(&f.memory));
    base + setup_allowance(file_len(&jail.exec_file) + snapshot_bytes)
}

/// Waits for the jailer the way it says it is done. With `--daemonize` the
/// jailer we started forks, and its first process exits at once; the jail
/// is set up by a grandchild (chrooted into the jail root), which writes
/// the pid file only once Firecracker is cloned (or, without
/// `--new-pid-ns`, right before it execs Firecracker). So: the jailer's
/// exit status first, then a pid file holding a live pid, by `deadline`.
/// Meanwhile a process chrooted into the jail is at work; when one was
/// seen and none is left without a pid file, the jailer failed after
/// detaching (said at once rather than at the deadline). Returns
/// Firecracker's pid; on failure `guard` kills whatever runs in the jail.
async fn wait_jailer(
    guard: &mut Cleanup,
    jailer: &JailerConfig,
    jail: &Jail,
    deadline: Duration,
) -> Result<u32> {
    let start = Instant::now();
    let log_path = jail.jailer_log();
    let timeout = |stage: &str| Error::JailerTimeout {
        program: jailer.jailer.clone(),
        waited: deadline,
        stage: stage.to_string(),
    };
    // 1. The jailer we started exits (0) once it has detached.
    loop {
        let child = guard
            .child
            .as_mut()
            .expect("the jailer is ours until it exits");
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                guard.child = None;
                break;
            }
            Ok(Some(status)) => {
                guard.child = None;
                return Err(Error::JailerFailed {
                    program: jailer.jailer.clone(),
                    status: status.to_string(),
                    stderr: tail(&log_path),
                });
            }
            Ok(None) | Err(_) => {}
        }
        if start.elapsed() >= deadline {
            return Err(timeout("exit"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 2. Its detached grandchild writes the pid file. Once a process was
    // seen at work in the jail and none is left, no pid file will come.
    let mut seen_at_work = false;
    loop {
        if let Ok(pid) = jail.read_pid() {
            if ProcStat::read(pid).is_some() {
                return Ok(pid);
            }
        }
        let at_work = !processes_rooted_at(&jail.root()).is_empty();
        seen_at_work |= at_work;
        if seen_at_work && !at_work {
            // Nothing left at work: one last look (it may have written the
            // file and exited between the two checks).
            return match jail.read_pid() {
                Ok(pid) if ProcStat::read(pid).is_some() => Ok(pid),
                Ok(pid) => Err(Error::JailerFailed {
                    program: jailer.jailer.clone(),
                    status: format!("Firecracker (pid {pid}) exited at once"),
                    stderr: tail(&log_path),
                }),
                Err(e) => Err(Error::JailerFailed {
                    program: jailer.jailer.clone(),
                    status: format!("its detached process ended without a pid file ({e})"),
                    stderr: tail(&log_path),
                }),
            };
        }
        if start.elapsed() >= deadline {
            return Err(timeout("its pid file"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn check_executable(what: &'static str, path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::io("cannot find", path, e))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::config(
            what,
            format!("{} is not an executable file", path.display()),
        ));
    }
    Ok(())
}

/// One file for both stdout and stderr.
fn log_pair(path: &Path) -> Result<(File, File)> {
    let out = File::create(path).map_err(|e| Error::io("cannot create", path, e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("cannot reopen", path, e))?;
    Ok((out, err))
}

fn alive_or(process: &VmProcess, socket: &Path, hint: impl FnOnce() -> String) -> Result<()> {
    if process.is_running() {
        return Ok(());
    }
    Err(Error::ExitedEarly {
        pid: process.pid,
        socket: socket.to_path_buf(),
        hint: Some(hint()),
    })
}

/// Reaps `child` whenever it exits, so a VMM that is our child never lingers
/// as a zombie while we run; the VMM itself stays detached from us.
fn reap_in_background(mut child: Child) {
    let spawned = std::thread::Builder::new()
        .name(format!("reap-{}", child.id()))
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start a reaper thread; the VMM will be reaped when we exit");
    }
}

/// Removes a leftover API socket (Firecracker refuses to bind over one);
/// anything else at that path is left alone and reported.
pub(crate) fn remove_stale_socket(socket: &Path) -> Result<()> {
    match fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => fs::remove_file(socket)
            .map_err(|e| Error::io("cannot remove the old socket", socket, e)),
        Ok(_) => Err(Error::config(
            "api socket",
            format!("{} exists and is not a socket; remove it", socket.display()),
        )),
        Err(_) => Ok(()),
    }
}

/// The last KiB of a log, for error messages.
fn tail(path: &Path) -> String {
    const MAX: u64 = 1024;
    let Ok(mut f) = File::open(path) else {
        return format!("({} unreadable)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    if text.is_empty() {
        format!("{} is empty", path.display())
    } else {
        text
    }
}

/// Undoes a launch that failed halfway; on success hands the child (if the
/// VMM is ours) to a reaper.
struct Cleanup {
    process: Option<VmProcess>,
    child: Option<Child>,
    jail: Option<(Jail, CgroupLayout)>,
    socket: Option<PathBuf>,
}

impl Cleanup {
    /// The launch succeeded: keep everything.
    fn disarm(mut self) {
        self.process = None;
        self.jail = None;
        self.socket = None;
        if let Some(child) = self.child.take() {
            reap_in_background(child);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(p) = &self.process {
            if let Err(e) = p.kill() {
                tracing::warn!(error = %e, "cannot kill Firecracker after a failed launch");
            }
            if !p.wait_exit(KILL_GRACE) {
                tracing::warn!(pid = p.pid, "Firecracker did not exit after SIGKILL");
            }
        }
        if let Some((jail, layout)) = &self.jail {
            // Whatever the jailer started there, pid file or not (a
            // Firecracker whose pid file came late is one).
            let left = kill_rooted_at(&jail.root(), KILL_GRACE);
            if !left.is_empty() {
                tracing::warn!(pids = ?left, jail = %jail.root().display(), "processes in the jail survived SIGKILL");
            }
            if let Err(e) = jail.remove(layout) {
                tracing::warn!(error = %e, "cannot remove the jail after a failed launch");
            }
        }
        if let Some(socket) = &self.socket {
            let _ = remove_stale_socket(socket);
        }
    }
}
