//! The shim v2 task service: containerd's calls for the containers of one
//! shim, each in its own VM.
//!
//! A container's VM boots at `Create` (so a bad image or kernel fails
//! there, as runc's create does); `Start` runs the spec's process through
//! the guest agent. When that process exits the VM powers off, taking
//! every `exec`ed process with it (as a container's processes die with
//! its init); `Delete` removes the VM and everything it left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use firebuild_agent_proto::ExecRequest;
use tokio::sync::Mutex;

use crate::config::Loaded;
use crate::process::{ExitStatus, GuestProcess, StdioPaths};
use crate::rootfs::Converted;
use crate::spec::PodRole;
use crate::vm_host::{discard_rootfs, vm_name, BundleRecord, VmHost};

/// One process of a container: the spec's (init) or an `exec`.
struct Slot {
    request: ExecRequest,
    stdio: StdioPaths,
    state: SlotState,
}

enum SlotState {
    Created,
    Running(Arc<GuestProcess>),
    Exited(ExitStatus),
}

struct Container {
    bundle: PathBuf,
    vm: String,
    /// The VMM's host pid: the task's pid for containerd.
    vm_pid: u32,
    endpoint: firebuild_vm::AgentEndpoint,
    /// The boot probe's connection, until the init process takes it.
    ready: Option<firebuild_vm::AgentConnection>,
    rootfs: Converted,
    init: Slot,
    execs: HashMap<String, Slot>,
    paused: bool,
    /// A pod's further container: in its sandbox's VM.
    member: Option<Member>,
    /// A pod sandbox: how many further containers its VM can hold.
    pod_slots: u32,
    /// Held while the VM is stopped or removed: a stop after the init's
    /// exit racing `delete`'s removal would write the removed VM's run
    /// directory again.
    vm_gate: Arc<Mutex<()>>,
}

/// Where a pod's further container lives.
#[derive(Debug, Clone)]
struct Member {
    sandbox: String,
    /// The hot-plug slot its root disk is in.
    slot: u32,
}

#[derive(Clone)]
pub struct Service {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    host: Arc<Mutex<Option<Arc<VmHost>>>>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    /// Slots (sandbox, slot) taken by members still being created.
    pending_slots: Arc<std::sync::Mutex<Vec<(String, u32)>>>,
}

fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    error(Code::INTERNAL, format!("{e:#}"))
}

fn not_found(id: &str) -> ttrpc::Error {
    error(Code::NOT_FOUND, format!("container {id} not found"))
}

pub(crate) fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

/// The FIFOs containerd gave a task's init process.
fn task_stdio(req: &api::CreateTaskRequest) -> StdioPaths {
    StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    }
}

impl Slot {
    fn created(request: ExecRequest, stdio: StdioPaths) -> Slot {
        Slot {
            request,
            stdio,
            state: SlotState::Created,
        }
    }

    fn status(&self, paused: bool) -> api::Status {
        match &self.state {
            SlotState::Created => api::Status::CREATED,
            // Exited, though the watcher has not recorded it yet: a
            // delete right after a wait must find the task stopped.
            SlotState::Running(p) if p.exited().is_some() => api::Status::STOPPED,
            SlotState::Running(_) if paused => api::Status::PAUSED,
            SlotState::Running(_) => api::Status::RUNNING,
            SlotState::Exited(_) => api::Status::STOPPED,
        }
    }

    fn exit(&self) -> Option<ExitStatus> {
        match &self.state {
            SlotState::Exited(e) => Some(*e),
            SlotState::Running(p) => p.exited(),
            SlotState::Created => None,
        }
    }
}

impl Container {
    fn slot(&self, exec_id: &str) -> TtrpcResult<&Slot> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| error(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    fn slot_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Slot> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| error(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    fn pid_of(&self, exec_id: &str, slot: &Slot) -> u32 {
        match (&slot.state, exec_id.is_empty()) {
            (_, true) => self.vm_pid,
            (SlotState::Running(p), false) => p.pid,
            _ => 0,
        }
    }
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.to_owned(),
            publisher: Arc::new(publisher),
            exit,
            host: Arc::new(Mutex::new(None)),
            containers: Arc::new(Mutex::new(HashMap::new())),
            pending_slots: Arc::new(std::sync::Mutex::new(Vec::new())),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Default::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    /// The host of this shim's VMs, set up by the first `Create` (its
    /// options name the configuration).
    async fn host(&self, options: Option<PathBuf>) -> anyhow::Result<Arc<VmHost>> {
        let mut host = self.host.lock().await;
        if let Some(h) = host.as_ref() {
            return Ok(Arc::clone(h));
        }
        let loaded = Loaded::find(options.as_deref())?;
        let h = Arc::new(tokio::task::spawn_blocking(move || VmHost::new(loaded)).await??);
        *host = Some(Arc::clone(&h));
        Ok(h)
    }

    async fn existing_host(&self) -> TtrpcResult<Arc<VmHost>> {
        self.host
            .lock()
            .await
            .clone()
            .ok_or_else(|| error(Code::FAILED_PRECONDITION, "no container was created"))
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> anyhow::Result<Container> {
        anyhow::ensure!(
            req.checkpoint.is_empty(),
            "checkpoint restore is not supported by the firebuild shim"
        );
        let options = crate::options::config_path(req.options.as_ref())?;
        let host = self.host(options).await?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = crate::spec::read_bundle(&bundle)?;
        let mut shape = crate::spec::vm_shape(&spec)?;
        let binds = crate::spec::bind_mounts(&spec)?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the OCI spec has no process"))?;
        let request = crate::spec::exec_request(&process, !req.stdin.is_empty())?;
        let role = crate::spec::pod_role(&spec)?;
        if let PodRole::Member { sandbox } = &role {
            return self
                .create_member(req, &host, bundle, &spec, request, &binds, sandbox)
                .await;
        }
        if role == PodRole::Sandbox {
            shape.pod_slots = host.loaded.config.pod_slots();
        }
        let vm = vm_name(&self.namespace, &req.id);
        let root = spec
            .root()
            .as_ref()
            .map_or_else(|| bundle.join("rootfs"), |r| bundle.join(r.path()));
        let rootfs = {
            let (host, mounts, vm) = (Arc::clone(&host), req.rootfs.clone(), vm.clone());
            tokio::task::spawn_blocking(move || host.convert_rootfs(&mounts, &root, &vm)).await??
        };
        let record = BundleRecord {
            vm: vm.clone(),
            config: host.loaded.source.clone(),
            rootfs: rootfs.clone(),
        };
        if let Err(e) = record.write(&bundle) {
            discard_rootfs(&rootfs);
            return Err(e);
        }
        let booted = host
            .boot(&vm, &req.id, &request.argv, &shape, &binds, rootfs.clone())
            .await;
        let booted = match booted {
            Ok(booted) => booted,
            Err(e) => {
                discard_rootfs(&rootfs);
                let _ = std::fs::remove_file(bundle.join(crate::vm_host::BUNDLE_RECORD));
                return Err(e);
            }
        };
        Ok(Container {
            bundle,
            vm: booted.name,
            vm_pid: booted.pid,
            endpoint: booted.endpoint,
            ready: Some(booted.agent),
            rootfs: booted.rootfs,
            init: Slot::created(request, task_stdio(req)),
            execs: HashMap::new(),
            paused: false,
            member: None,
            pod_slots: shape.pod_slots,
            vm_gate: Arc::default(),
        })
    }

    /// A pod's further container: no VM of its own; its root is plugged
    /// into the sandbox's VM.
    #[allow(clippy::too_many_arguments)]
    async fn create_member(
        &self,
        req: &api::CreateTaskRequest,
        host: &Arc<VmHost>,
        bundle: PathBuf,
        spec: &oci_spec::runtime::Spec,
        mut request: ExecRequest,
        binds: &[crate::spec::BindMount],
        sandbox: &str,
    ) -> anyhow::Result<Container> {
        let (vm, vm_pid, endpoint, slot) = {
            let containers = self.containers.lock().await;
            let pod = containers.get(sandbox).with_context(|| {
                format!("pod sandbox {sandbox} is not served by this shim (was it created with the firebuild runtime?)")
            })?;
            anyhow::ensure!(
                pod.pod_slots > 0,
                "container {sandbox} is not a pod sandbox (annotation {})",
                crate::spec::ANNOTATION_CONTAINER_TYPE
            );
            anyhow::ensure!(
                pod.init.exit().is_none(),
                "pod sandbox {sandbox} has stopped"
            );
            let mut pending = self.pending_slots.lock().unwrap_or_else(|e| e.into_inner());
            let taken = containers
                .values()
                .filter_map(|c| c.member.as_ref())
                .filter(|m| m.sandbox == sandbox)
                .map(|m| m.slot)
                .chain(
                    pending
                        .iter()
                        .filter(|(s, _)| s == sandbox)
                        .map(|(_, n)| *n),
                );
            let slot = crate::pod::free_slot(pod.pod_slots, taken).with_context(|| {
                format!(
                    "pod {sandbox} already holds {} containers, its most (pod-containers in the shim configuration)",
                    pod.pod_slots
                )
            })?;
            pending.push((sandbox.to_owned(), slot));
            (pod.vm.clone(), pod.vm_pid, pod.endpoint.clone(), slot)
        };
        let made = self
            .plug_member(req, host, &bundle, spec, binds, &vm, &endpoint, slot)
            .await;
        self.pending_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(s, n)| !(s == sandbox && *n == slot));
        let rootfs = made?;
        request.container = Some(req.id.clone());
        Ok(Container {
            bundle,
            vm,
            vm_pid,
            endpoint,
            ready: None,
            rootfs,
            init: Slot::created(request, task_stdio(req)),
            execs: HashMap::new(),
            paused: false,
            member: Some(Member {
                sandbox: sandbox.to_owned(),
                slot,
            }),
            pod_slots: 0,
            vm_gate: Arc::default(),
        })
    }

    /// Converts a member's root, plugs it into slot `slot` of the pod's VM
    /// and copies its bind mounts in. Nothing is left when it fails.
    #[allow(clippy::too_many_arguments)]
    async fn plug_member(
        &self,
        req: &api::CreateTaskRequest,
        host: &Arc<VmHost>,
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        binds: &[crate::spec::BindMount],
        vm: &str,
        endpoint: &firebuild_vm::AgentEndpoint,
        slot: u32,
    ) -> anyhow::Result<Converted> {
        let root = spec
            .root()
            .as_ref()
            .map_or_else(|| bundle.join("rootfs"), |r| bundle.join(r.path()));
        let rootfs = {
            let (host, mounts) = (Arc::clone(host), req.rootfs.clone());
            let name = vm_name(&self.namespace, &req.id);
            tokio::task::spawn_blocking(move || host.convert_rootfs(&mounts, &root, &name))
                .await??
        };
        let record = BundleRecord {
            vm: vm.to_owned(),
            config: host.loaded.source.clone(),
            rootfs: rootfs.clone(),
        };
        let plugged = async {
            record.write(bundle)?;
            let root =
                crate::pod::attach_root(host, vm, endpoint, slot, rootfs.path.clone(), &req.id)
                    .await?;
            let (to, binds) = (endpoint.clone(), binds.to_vec());
            let copied =
                tokio::task::spawn_blocking(move || crate::binds::copy_all(&to, &root, &binds))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
            if copied.is_err() {
                crate::pod::detach_root(host, vm, endpoint, slot, &req.id).await;
            }
            copied
        }
        .await;
        if let Err(e) = plugged {
            discard_rootfs(&rootfs);
            let _ = std::fs::remove_file(bundle.join(crate::vm_host::BUNDLE_RECORD));
            return Err(e);
        }
        Ok(rootfs)
    }

    /// Watches a started process: its exit is recorded and published; the
    /// init's exit powers the VM off.
    fn watch(&self, id: String, exec_id: String, process: Arc<GuestProcess>, pid: u32) {
        let service = self.clone();
        tokio::spawn(async move {
            let status = process.wait().await;
            tracing::info!(id = %id, exec = %exec_id, "process exited with {}", status.code);
            let (vm, member, gate) = {
                let mut containers = service.containers.lock().await;
                let Some(c) = containers.get_mut(&id) else {
                    return;
                };
                if let Ok(slot) = c.slot_mut(&exec_id) {
                    slot.state = SlotState::Exited(status);
                }
                (c.vm.clone(), c.member.is_some(), Arc::clone(&c.vm_gate))
            };
            service
                .publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(events::TaskExit {
                        container_id: id.clone(),
                        id: if exec_id.is_empty() {
                            id.clone()
                        } else {
                            exec_id.clone()
                        },
                        pid,
                        exit_status: status.code,
                        exited_at: timestamp(status.at),
                        ..Default::default()
                    }),
                )
                .await;
            // A pod member's VM is the pod's: it stays.
            if exec_id.is_empty() && !member {
                let _stopping = gate.lock().await;
                if let Ok(host) = service.existing_host().await {
                    if let Err(e) = host
                        .runtime
                        .kill(&vm, Some(crate::vm_host::STOP_TIMEOUT))
                        .await
                    {
                        tracing::warn!("stopping VM {vm}: {e}");
                    }
                }
            }
        });
    }

    async fn start_slot(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (endpoint, request, stdio, vm_pid, ready) = {
            let mut containers = self.containers.lock().await;
            let c = containers.get_mut(id).ok_or_else(|| not_found(id))?;
            let slot = c.slot(exec_id)?;
            if !matches!(slot.state, SlotState::Created) {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "process {} of {id} was already started",
                        if exec_id.is_empty() { "init" } else { exec_id }
                    ),
                ));
            }
            if !exec_id.is_empty() && !matches!(c.init.state, SlotState::Running(_)) {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} is not running"),
                ));
            }
            let (request, stdio) = (slot.request.clone(), slot.stdio.clone());
            let ready = if exec_id.is_empty() {
                c.ready.take()
            } else {
                None
            };
            (c.endpoint.clone(), request, stdio, c.vm_pid, ready)
        };
        let process = tokio::task::spawn_blocking(move || {
            GuestProcess::start(&endpoint, request, &stdio, ready)
        })
        .await
        .map_err(|e| internal(e.into()))?
        .map_err(|e| error(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        tracing::info!(id, exec_id, pid = process.pid, "process started");
        let process = Arc::new(process);
        let pid = if exec_id.is_empty() {
            vm_pid
        } else {
            process.pid
        };
        {
            let mut containers = self.containers.lock().await;
            let c = containers.get_mut(id).ok_or_else(|| not_found(id))?;
            c.slot_mut(exec_id)?.state = SlotState::Running(Arc::clone(&process));
        }
        self.watch(id.to_owned(), exec_id.to_owned(), process, pid);
        Ok(pid)
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let container = self
            .create_container(&req)
            .await
            .map_err(|e| error(Code::FAILED_PRECONDITION, format!("firebuild: {e:#}")))?;
        let pid = container.vm_pid;
        self.containers
            .lock()
            .await
            .insert(req.id.clone(), container);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(events::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(events::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.start_slot(&req.id, &req.exec_id).await?;
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(events::TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(events::TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let slot = c.slot(&req.exec_id)?;
        let exit = slot.exit();
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: c.pid_of(&req.exec_id, slot),
            status: slot.status(c.paused).into(),
            stdin: slot.stdio.stdin.clone(),
            stdout: slot.stdio.stdout.clone(),
            stderr: slot.stdio.stderr.clone(),
            terminal: slot.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map_or(MessageField::none(), |e| timestamp(e.at)),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = req.signal as i32;
        let (targets, not_started, vm, member, gate) = {
            let containers = self.containers.lock().await;
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let slot = c.slot(&req.exec_id)?;
            let mut targets = Vec::new();
            match &slot.state {
                SlotState::Running(p) if p.exited().is_none() => targets.push(Arc::clone(p)),
                SlotState::Created => {}
                _ => {
                    return Err(error(Code::NOT_FOUND, "process already finished"));
                }
            }
            if req.all && req.exec_id.is_empty() {
                targets.extend(c.execs.values().filter_map(|s| match &s.state {
                    SlotState::Running(p) if p.exited().is_none() => Some(Arc::clone(p)),
                    _ => None,
                }));
            }
            (
                targets,
                matches!(slot.state, SlotState::Created),
                c.vm.clone(),
                c.member.is_some(),
                Arc::clone(&c.vm_gate),
            )
        };
        if not_started {
            // Nothing runs yet: the VM goes (a pod member's stays, it is
            // the pod's), the task is stopped.
            if !member {
                let _stopping = gate.lock().await;
                let host = self.existing_host().await?;
                host.runtime
                    .kill(&vm, Some(crate::vm_host::STOP_TIMEOUT))
                    .await
                    .map_err(|e| internal(e.into()))?;
            }
            let mut containers = self.containers.lock().await;
            if let Some(c) = containers.get_mut(&req.id) {
                if let Ok(slot) = c.slot_mut(&req.exec_id) {
                    slot.state = SlotState::Exited(ExitStatus {
                        code: 128 + req.signal,
                        at: SystemTime::now(),
                    });
                }
            }
            return Ok(api::Empty::new());
        }
        for process in &targets {
            if let Err(e) = process.signal(signal) {
                tracing::warn!("signalling {}: {e}", req.id);
            }
        }
        if signal == libc::SIGKILL && req.exec_id.is_empty() && !member {
            // A guest that cannot act on it must not hang containerd: the
            // VM goes if the process is not gone in a moment.
            let service = self.clone();
            let init = targets.first().cloned();
            tokio::spawn(async move {
                let Some(init) = init else { return };
                if tokio::time::timeout(crate::vm_host::STOP_TIMEOUT, init.wait())
                    .await
                    .is_err()
                {
                    let _stopping = gate.lock().await;
                    if let Ok(host) = service.existing_host().await {
                        let _ = host
                            .runtime
                            .kill(&vm, Some(std::time::Duration::ZERO))
                            .await;
                    }
                }
            });
        }
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let process = crate::spec::parse_process(&req.spec.value)
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("{e:#}")))?;
        let mut request = crate::spec::exec_request(&process, !req.stdin.is_empty())
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("{e:#}")))?;
        {
            let mut containers = self.containers.lock().await;
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            request.container.clone_from(&c.init.request.container);
            if c.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            c.execs.insert(
                req.exec_id.clone(),
                Slot::created(
                    request,
                    StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                    },
                ),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(events::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if let SlotState::Running(p) = &c.slot(&req.exec_id)?.state {
            let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
            p.resize(clamp(req.height), clamp(req.width))
                .map_err(|e| internal(e.into()))?;
        }
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if let SlotState::Running(p) = &c.slot(&req.exec_id)?.state {
            if req.stdin {
                p.close_stdin();
            }
        }
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        loop {
            let running = {
                let containers = self.containers.lock().await;
                let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
                let slot = c.slot(&req.exec_id)?;
                if let Some(exit) = slot.exit() {
                    return Ok(api::WaitResponse {
                        exit_status: exit.code,
                        exited_at: timestamp(exit.at),
                        ..Default::default()
                    });
                }
                match &slot.state {
                    SlotState::Running(p) => Some(Arc::clone(p)),
                    _ => None,
                }
            };
            match running {
                Some(p) => {
                    p.wait().await;
                }
                // Not started yet (or being killed): look again shortly.
                None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut containers = self.containers.lock().await;
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let slot = c.slot(&req.exec_id)?;
            let exit = slot.exit();
            let pid = c.pid_of(&req.exec_id, slot);
            c.execs.remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.map_or(0, |e| e.code),
                exited_at: exit.map_or(MessageField::none(), |e| timestamp(e.at)),
                ..Default::default()
            });
        }
        let c = self
            .containers
            .lock()
            .await
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let host = self.existing_host().await?;
        let started = std::time::Instant::now();
        let _removing = c.vm_gate.lock().await;
        match &c.member {
            Some(m) => {
                crate::pod::detach_root(&host, &c.vm, &c.endpoint, m.slot, &req.id).await;
                tracing::info!(id = %req.id, "root unplugged in {:?}", started.elapsed());
            }
            None => {
                host.remove(&c.vm).await;
                tracing::info!(id = %req.id, "VM removed in {:?}", started.elapsed());
            }
        }
        discard_rootfs(&c.rootfs);
        let _ = std::fs::remove_file(c.bundle.join(crate::vm_host::BUNDLE_RECORD));
        let exit = c.init.exit().unwrap_or(ExitStatus {
            code: crate::process::VM_GONE_STATUS,
            at: SystemTime::now(),
        });
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(events::TaskDelete {
                container_id: req.id.clone(),
                pid: c.vm_pid,
                exit_status: exit.code,
                exited_at: timestamp(exit.at),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::DeleteResponse {
            pid: c.vm_pid,
            exit_status: exit.code,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let containers = self.containers.lock().await;
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let mut processes = Vec::new();
        if matches!(c.init.state, SlotState::Running(_)) {
            processes.push(api::ProcessInfo {
                pid: c.vm_pid,
                ..Default::default()
            });
        }
        for slot in c.execs.values() {
            if let SlotState::Running(p) = &slot.state {
                if p.exited().is_none() {
                    processes.push(api::ProcessInfo {
                        pid: p.pid,
                        ..Default::default()
                    });
                }
            }
        }
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true).await?;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false).await?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let endpoint = {
            let containers = self.containers.lock().await;
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if !matches!(c.init.state, SlotState::Running(_)) || c.init.exit().is_some() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            c.endpoint.clone()
        };
        let stats = tokio::task::spawn_blocking(move || crate::metrics::read(&endpoint))
            .await
            .map_err(|e| internal(e.into()))?
            .map_err(internal)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(crate::metrics::to_any(&stats).map_err(internal)?),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .containers
            .lock()
            .await
            .get(&req.id)
            .map_or(0, |c| c.vm_pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if req.now || self.containers.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

impl Service {
    /// Pauses or resumes the VM of `id`, and says so to containerd.
    async fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<()> {
        let vm = {
            let containers = self.containers.lock().await;
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            if let Some(m) = &c.member {
                return Err(error(
                    Code::UNIMPLEMENTED,
                    format!(
                        "container {id} shares the VM of pod {}: pause the pod's sandbox instead",
                        m.sandbox
                    ),
                ));
            }
            c.vm.clone()
        };
        let host = self.existing_host().await?;
        let done = if paused {
            host.runtime.pause(&vm).await
        } else {
            host.runtime.resume(&vm).await
        };
        done.map_err(|e| internal(e.into()))?;
        if let Some(c) = self.containers.lock().await.get_mut(id) {
            c.paused = paused;
        }
        let container_id = id.to_owned();
        let (topic, event): (&str, Box<dyn MessageDyn>) = if paused {
            (
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(events::TaskPaused {
                    container_id,
                    ..Default::default()
                }),
            )
        } else {
            (
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(events::TaskResumed {
                    container_id,
                    ..Default::default()
                }),
            )
        };
        self.publish(topic, event).await;
        Ok(())
    }
}
