//! Build RUN steps in microVMs (`rootfs|baseos --isolation microvm`): every
//! step in a fresh VM, driven through its guest agent
//! ([`firebuild_builder::StepVm`] over the VM runtime). The VM's root drive
//! carries only the guest init; the step's layers come as read-only disks;
//! the command runs through the agent and the step's diff comes back as a
//! layer tree. The VMs live in a run cache of their own (the CLI gives
//! `<cache-dir>/step-vms`, so `ls` does not show them) and each is killed
//! and purged, network included, however its step ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use firebuild_agent_proto::tree::{self, TreeWriter};
use firebuild_agent_proto::{Copied, ExecRequest, Exited, Failure, Frame, Kind, Request};
use firebuild_builder::{CancelToken, Network, StepVm, StepVmError, VmStep, VmStepOutcome};
use firebuild_cni::{
    host_guard, release_quietly, CniNetworks, CniRuntime, NetworkInfo, BUILD_NETWORK,
};
use firebuild_metadata::image::{EntrypointInfo, ImageName};
use firebuild_metadata::ImageMetadata;
use firebuild_vm::{
    AgentConnection, NetworkAttachment, NetworkChoice, NetworkError, NetworkProvider,
    NetworkReleaser, NetworkRequest, RunMetadata, RunSpec, Runtime, VmmChoice,
};

/// How long a step VM may take to boot until its agent answers (TCG).
const AGENT_WAIT: Duration = Duration::from_secs(180);

/// How long one agent request may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Memory of a step VM without `--memory`.
const DEFAULT_MEM_MIB: u32 = 1024;

/// Scratch disk of a step VM: the most one RUN step may write (sparse).
const SCRATCH_SIZE: u64 = 64 << 30;

/// Lines of output kept for a failed step's message.
const TAIL_LINES: usize = 20;

/// What the step VMs of a build run on.
pub struct StepVmConfig {
    /// The VM runtime with its backends; its run cache holds the step VMs
    /// alone. Its network provider is replaced by the build network.
    pub runtime: Runtime,
    /// CNI, for the build network.
    pub cni: CniRuntime,
    /// Which VMM boots the steps.
    pub vmm: VmmChoice,
    /// The guest kernel, and its id in the kernel store.
    pub kernel: PathBuf,
    pub kernel_id: String,
}

/// The step VMs of one build.
pub struct MicroVmSteps {
    runtime: Runtime,
    vmm: VmmChoice,
    kernel: PathBuf,
    kernel_id: String,
    tokio: tokio::runtime::Runtime,
}

impl MicroVmSteps {
    /// Step VMs as `config` says; creates the runtime's run cache.
    pub fn new(config: StepVmConfig) -> anyhow::Result<Self> {
        let run_cache = config.runtime.run_cache().to_path_buf();
        std::fs::create_dir_all(&run_cache)
            .with_context(|| format!("creating {}", run_cache.display()))?;
        let runtime = config
            .runtime
            .with_network_provider(Arc::new(BuildNetwork(CniNetworks(config.cni))));
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(MicroVmSteps {
            runtime,
            vmm: config.vmm,
            kernel: config.kernel,
            kernel_id: config.kernel_id,
            tokio,
        })
    }

    fn spec(&self, step: &VmStep<'_>) -> RunSpec {
        let env: BTreeMap<String, String> = step
            .env
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let mut image = ImageMetadata::unstored(
            ImageName {
                org: "_".into(),
                image: "build-step".into(),
                version: "1".into(),
            },
            0,
        );
        image.entrypoint_info = EntrypointInfo {
            // Never started: in build mode the agent runs the command.
            cmd: step.argv.to_vec(),
            env,
            user: step.user.to_owned(),
            workdir: step.cwd.to_owned(),
            ..Default::default()
        };
        let mut spec = RunSpec::new(step.init_disk.to_owned(), image, self.kernel.clone());
        spec.kernel_id.clone_from(&self.kernel_id);
        spec.layers = step.layers.to_vec();
        spec.disk_size = SCRATCH_SIZE;
        spec.hostname = Some("firebuild".into());
        spec.daemonize = true;
        spec.vmm = self.vmm;
        spec.health.disabled = true;
        spec.shutdown_timeout = Duration::from_secs(1);
        spec.mem_mib = step
            .limits
            .memory
            .map_or(DEFAULT_MEM_MIB, |b| (b >> 20).max(128) as u32);
        // A CPU quota in µs per 100 ms: whole CPUs, at least one.
        spec.cpus = step
            .limits
            .cpu_quota_us
            .map_or(2, |q| q.div_ceil(100_000).max(1) as u32);
        spec
    }

    fn run(
        &self,
        step: &VmStep<'_>,
        on_line: &mut dyn FnMut(&str),
        cancel: &CancelToken,
    ) -> anyhow::Result<VmStepOutcome> {
        let mut spec = self.spec(step);
        spec.network_choice = match step.network {
            Network::None => NetworkChoice::Off,
            _ => NetworkChoice::On(NetworkRequest {
                network: Some(BUILD_NETWORK.into()),
                ..Default::default()
            }),
        };
        let vm = RunningStep::start(self, spec)?;
        let mut conn = vm.agent(cancel)?;
        if let Some((path, content)) = step.script {
            vm.copy_script(path, content)?;
        }
        let outcome = vm.exec(&mut conn, on_line, cancel)?;
        if outcome.code == 0 {
            vm.take_diff(step.upper, cancel)?;
        }
        Ok(outcome)
    }
}

impl StepVm for MicroVmSteps {
    fn run_step(
        &self,
        step: &VmStep<'_>,
        on_line: &mut dyn FnMut(&str),
        cancel: &CancelToken,
    ) -> Result<VmStepOutcome, StepVmError> {
        self.run(step, on_line, cancel).map_err(|e| {
            if cancel.is_cancelled() {
                StepVmError::Interrupted
            } else {
                StepVmError::Failed(format!("in the build microVM: {e:#}"))
            }
        })
    }
}

/// A started step VM; dropping it kills and purges it.
struct RunningStep<'a> {
    steps: &'a MicroVmSteps,
    runtime: &'a Runtime,
    id: String,
}

impl<'a> RunningStep<'a> {
    /// Prepares and launches the VM. The guard exists from the moment the
    /// VM is prepared (so a failed launch is cleaned up, network included),
    /// and outside any `block_on`: its drop blocks on the runtime itself.
    fn start(steps: &'a MicroVmSteps, spec: RunSpec) -> anyhow::Result<RunningStep<'a>> {
        let runtime = &steps.runtime;
        let prepared = steps.tokio.block_on(runtime.prepare(spec))?;
        let guard = RunningStep {
            steps,
            runtime,
            id: prepared.id().to_owned(),
        };
        steps
            .tokio
            .block_on(runtime.launch(prepared))
            .with_context(|| format!("starting the VM{}", guard.console_tail()))?;
        Ok(guard)
    }

    /// Waits until the agent answers; gives up when the VM exits, the wait
    /// is over, or the build is cancelled.
    fn agent(&self, cancel: &CancelToken) -> anyhow::Result<AgentConnection> {
        let deadline = Instant::now() + AGENT_WAIT;
        loop {
            if cancel.is_cancelled() {
                anyhow::bail!("interrupted");
            }
            let found = self.steps.tokio.block_on(self.runtime.agent(&self.id));
            let last = match found {
                // Opening pings the agent until it answers.
                Ok((_, endpoint)) => match AgentConnection::open(&endpoint, ANSWER_TIMEOUT) {
                    Ok(conn) => return Ok(conn),
                    Err(e) => e.to_string(),
                },
                // Exited: say what its console says.
                Err(firebuild_vm::VmError::NotRunning { state, .. }) => {
                    anyhow::bail!(
                        "the VM {state} before its agent answered{}",
                        self.console_tail()
                    )
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                anyhow::bail!(
                    "its agent did not answer within {} s ({last}){}",
                    AGENT_WAIT.as_secs(),
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn console_tail(&self) -> String {
        let log = self.runtime.run_cache().join(&self.id).join("console.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(10)..];
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its console ended with:\n    {}", tail.join("\n    "))
        }
    }

    fn connect(&self) -> anyhow::Result<AgentConnection> {
        let (_, endpoint) = self.steps.tokio.block_on(self.runtime.agent(&self.id))?;
        Ok(AgentConnection::open(&endpoint, ANSWER_TIMEOUT)?)
    }

    /// A heredoc script at `path` (under /dev/pipes, outside the layer).
    fn copy_script(&self, path: &str, content: &str) -> anyhow::Result<()> {
        let (dir, name) = path
            .rsplit_once('/')
            .context("a script path without a directory")?;
        // In the run directory: removed with the VM.
        let local = self.runtime.run_cache().join(&self.id).join("script");
        std::fs::create_dir_all(&local)?;
        let file = local.join(name);
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let mut conn = self.connect()?;
        conn.request(Request::CopyIn {
            dest: dir.to_owned(),
            parents: false,
        })?;
        let ch = conn.channel();
        let mut out = conn.try_clone()?;
        tree::send(&file, &mut |kind, payload| {
            firebuild_agent_proto::write_frame(&mut out, &Frame::new(ch, kind, payload.to_vec()))
        })?;
        let answer = conn.recv(Some(ANSWER_TIMEOUT))?;
        match answer.kind {
            Kind::Reply => Ok(()),
            _ => Err(guest_failure(&answer)),
        }
    }

    /// Runs the step's command (the VM's metadata has its env, user and
    /// working directory); output lines go to `on_line`.
    fn exec(
        &self,
        conn: &mut AgentConnection,
        on_line: &mut dyn FnMut(&str),
        cancel: &CancelToken,
    ) -> anyhow::Result<VmStepOutcome> {
        let metadata = self.steps.tokio.block_on(self.runtime.inspect(&self.id))?;
        conn.request(Request::Exec(ExecRequest {
            argv: metadata.command.clone(),
            env: Vec::new(),
            user: None,
            workdir: None,
            ..Default::default()
        }))?;
        let mut lines = Lines::default();
        loop {
            let frame = next_frame(conn, cancel)?;
            match frame.kind {
                Kind::Stdout | Kind::Stderr => lines.push(&frame.payload, on_line),
                Kind::Exit => {
                    lines.flush(on_line);
                    let exited: Exited = frame.parse()?;
                    return Ok(VmStepOutcome {
                        code: exited.code,
                        tail: lines.tail,
                    });
                }
                Kind::Error => return Err(guest_failure(&frame)),
                _ => {}
            }
        }
    }

    /// Receives the step's diff into `upper`.
    fn take_diff(&self, upper: &Path, cancel: &CancelToken) -> anyhow::Result<Copied> {
        let mut conn = self.connect()?;
        conn.request(Request::LayerOut)?;
        let mut writer = TreeWriter::layer(upper);
        loop {
            let frame = next_frame(&mut conn, cancel)?;
            match frame.kind {
                Kind::Error => return Err(guest_failure(&frame)),
                Kind::Entry | Kind::Data | Kind::End
                    if tree::receive(&mut writer, frame.kind, &frame.payload)
                        .context("writing the step's layer")? =>
                {
                    return writer.finish().context("writing the step's layer");
                }
                _ => {}
            }
        }
    }
}

impl Drop for RunningStep<'_> {
    fn drop(&mut self) {
        let stopped = self
            .steps
            .tokio
            .block_on(self.runtime.kill(&self.id, Some(Duration::ZERO)));
        if let Err(e) = stopped {
            tracing::warn!(vm = %self.id, "stopping the build microVM: {e}");
        }
        match self.steps.tokio.block_on(self.runtime.purge()) {
            Ok(report) => {
                for (id, why) in report.failed {
                    tracing::warn!(vm = %id, "removing the build microVM: {why}");
                }
            }
            Err(e) => tracing::warn!("removing the build microVM: {e}"),
        }
    }
}

/// The build network: CNI's, with this host's own services out of reach.
struct BuildNetwork(CniNetworks);

#[async_trait]
impl NetworkProvider for BuildNetwork {
    async fn attach(
        &self,
        vm_id: &str,
        request: &NetworkRequest,
    ) -> Result<NetworkAttachment, NetworkError> {
        let attachment = self.0.attach(vm_id, request).await?;
        // The bridge exists once the first VM is attached to it.
        if let Err(e) = guard_host(&self.0 .0) {
            release_quietly(&self.0 .0, vm_id);
            return Err(e.into());
        }
        Ok(attachment)
    }
}

#[async_trait]
impl NetworkReleaser for BuildNetwork {
    async fn release(
        &self,
        vm: &RunMetadata,
        attachment: &NetworkAttachment,
    ) -> Result<(), NetworkError> {
        self.0.release(vm, attachment).await
    }
}

/// The build network reaches the outside, never this host's services.
fn guard_host(cni: &CniRuntime) -> anyhow::Result<()> {
    let info = NetworkInfo::from_list(&cni.load_network(BUILD_NETWORK)?);
    let bridge = info
        .bridge
        .with_context(|| format!("network {BUILD_NETWORK} has no bridge"))?;
    host_guard::drop_input_from_bridge(BUILD_NETWORK, &bridge, cni.plugin_netns())?;
    Ok(())
}

/// The next frame from the agent, waiting in short slices so that a
/// cancelled build stops waiting.
fn next_frame(conn: &mut AgentConnection, cancel: &CancelToken) -> anyhow::Result<Frame> {
    loop {
        if cancel.is_cancelled() {
            anyhow::bail!("interrupted");
        }
        match conn.recv(Some(Duration::from_millis(500))) {
            Ok(frame) => return Ok(frame),
            Err(firebuild_vm::AgentError::Timeout(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn guest_failure(frame: &Frame) -> anyhow::Error {
    match frame.parse::<Failure>() {
        Ok(f) => anyhow::anyhow!("{} (status {})", f.message, f.code),
        Err(e) => e.into(),
    }
}

/// Output split into lines, the last ones kept.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    tail: Vec<String>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], on_line: &mut dyn FnMut(&str)) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.emit(&line[..end], on_line);
        }
    }

    fn flush(&mut self, on_line: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, on_line);
        }
    }

    fn emit(&mut self, line: &[u8], on_line: &mut dyn FnMut(&str)) {
        let line = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_owned();
        on_line(&line);
        if self.tail.len() == TAIL_LINES {
            self.tail.remove(0);
        }
        self.tail.push(line);
    }
}
