//! The shim v2 task service: containerd's calls for the containers of one
//! shim, each in its own VM.
//!
//! A container's VM boots at `Create` (so a bad image or kernel fails
//! there, as runc's create does); `Start` runs the spec's process through
//! the guest agent. When that process exits the VM powers off, taking
//! every `exec`ed process with it (as a container's processes die with
//! its init); `Delete` removes the VM and everything it left.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

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
}

#[derive(Clone)]
pub struct Service {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    host: Arc<Mutex<Option<Arc<VmHost>>>>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
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

impl Slot {
    fn status(&self, paused: bool) -> api::Status {
        match &self.state {
            SlotState::Created => api::Status::CREATED,
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
        let shape = crate::spec::vm_shape(&spec)?;
        let binds = crate::spec::bind_mounts(&spec)?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the OCI spec has no process"))?;
        let request = crate::spec::exec_request(&process, !req.stdin.is_empty())?;
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
            init: Slot {
                request,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                state: SlotState::Created,
            },
            execs: HashMap::new(),
            paused: false,
        })
    }

    /// Watches a started process: its exit is recorded and published; the
    /// init's exit powers the VM off.
    fn watch(&self, id: String, exec_id: String, process: Arc<GuestProcess>, pid: u32) {
        let service = self.clone();
        tokio::spawn(async move {
            let status = process.wait().await;
            tracing::info!(id = %id, exec = %exec_id, "process exited with {}", status.code);
            let vm = {
                let mut containers = service.containers.lock().await;
                let Some(c) = containers.get_mut(&id) else {
                    return;
                };
                if let Ok(slot) = c.slot_mut(&exec_id) {
                    slot.state = SlotState::Exited(status);
                }
                c.vm.clone()
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
            if exec_id.is_empty() {
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
        let (targets, not_started, vm) = {
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
            )
        };
        if not_started {
            // Nothing runs yet: the VM goes, the task is stopped.
            let host = self.existing_host().await?;
            host.runtime
                .kill(&vm, Some(crate::vm_host::STOP_TIMEOUT))
                .await
                .map_err(|e| internal(e.into()))?;
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
        if signal == libc::SIGKILL && req.exec_id.is_empty() {
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
        let request = crate::spec::exec_request(&process, !req.stdin.is_empty())
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("{e:#}")))?;
        {
            let mut containers = self.containers.lock().await;
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            c.execs.insert(
                req.exec_id.clone(),
                Slot {
                    request,
                    stdio: StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                    },
                    state: SlotState::Created,
                },
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
        host.remove(&c.vm).await;
        tracing::info!(id = %req.id, "VM removed in {:?}", started.elapsed());
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
            containers.get(id).ok_or_else(|| not_found(id))?.vm.clone()
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
