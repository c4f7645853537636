//! A stand-in for the Firecracker API, because Firecracker cannot run on
//! our machines. It is not Firecracker: it serves the same HTTP API on a
//! Unix socket, checks every body against the v1.16 spec, and enforces the
//! API's pre-boot/post-boot rules, answering errors as Firecracker does
//! (`400 {"fault_message": "..."}`). It boots nothing.
//!
//! It records every request as read off the socket (method, path, content
//! type, raw body) and every answer, for the contract tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::openapi::ApiSpec;

/// One exchange as it crossed the socket.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub host: Option<String>,
    pub body: Vec<u8>,
    pub status: u16,
    pub answer: Vec<u8>,
}

/// How the stand-in behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Accept connections but never answer (for timeout tests).
    pub hang: bool,
    /// Answer this (path, status, body) instead of handling the request.
    pub inject: Option<(String, u16, String)>,
    /// Check, like Firecracker, that kernel, drive and tap exist on this host;
    /// paths are looked up under `root` (the jail root, when jailed).
    pub check_host_resources: bool,
    pub root: Option<PathBuf>,
    /// Exit the process after answering SendCtrlAltDel (Firecracker exits
    /// when the guest reboots; only for the stand-in run as a process).
    pub exit_on_ctrl_alt_del: bool,
    /// Instance id reported by `GET /`.
    pub id: String,
}

/// The VM the stand-in pretends to run.
#[derive(Debug, Default)]
pub struct VmModel {
    pub started: bool,
    pub paused: bool,
    pub machine_config: Option<Value>,
    pub boot_source: Option<Value>,
    pub drives: BTreeMap<String, Value>,
    pub ifaces: BTreeMap<String, Value>,
    pub mmds_config: Option<Value>,
    pub mmds: Option<Value>,
    pub logger: Option<Value>,
    pub metrics: Option<Value>,
    pub vsock: Option<Value>,
    pub serial: Option<Value>,
    pub ctrl_alt_del: bool,
}

struct Shared {
    spec: ApiSpec,
    options: Options,
    vm: VmModel,
    log: Vec<Recorded>,
}

/// A stand-in serving on its own thread; stops and removes its socket on drop.
pub struct StandIn {
    pub socket: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Serves at `socket` with default options.
    pub fn start(socket: &Path) -> StandIn {
        Self::start_with(
            socket,
            Options {
                id: "standin".into(),
                ..Options::default()
            },
        )
    }

    /// Serves at `socket`; the socket is bound when this returns.
    pub fn start_with(socket: &Path, options: Options) -> StandIn {
        let listener = std::os::unix::net::UnixListener::bind(socket)
            .unwrap_or_else(|e| panic!("stand-in cannot bind {}: {e}", socket.display()));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Mutex::new(Shared {
            spec: ApiSpec::load(),
            options,
            vm: VmModel::default(),
            log: Vec::new(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(listener, thread_shared, stopped));
        });
        StandIn {
            socket: socket.to_path_buf(),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every exchange so far, in order.
    pub fn log(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().log.clone()
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Looks at the pretend VM.
    pub fn vm<T>(&self, f: impl FnOnce(&VmModel) -> T) -> T {
        f(&self.shared.lock().unwrap().vm)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Runs the stand-in in this process until killed (or SendCtrlAltDel): the
/// body of the fake `firecracker` executable used by the launch tests.
pub fn run_forever(socket: &Path, options: Options) -> ! {
    let standin = StandIn::start_with(socket, options);
    loop {
        std::thread::park();
        let _ = &standin;
    }
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Mutex<Shared>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                if shared.lock().unwrap().options.hang {
                    // Hold the connection open and never answer.
                    tokio::spawn(async move {
                        let _stream = stream;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Mutex<Shared>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let host = header(hyper::header::HOST);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let (status, answer, exit) = {
        let mut guard = shared.lock().unwrap();
        let sh = &mut *guard;
        let (status, answer) = match &sh.options.inject {
            Some((p, s, b)) if *p == path => (*s, b.clone().into_bytes()),
            _ => {
                let (status, value) = route(sh, &method, &path, content_type.as_deref(), &body);
                (
                    status,
                    value
                        .map(|v| v.to_string().into_bytes())
                        .unwrap_or_default(),
                )
            }
        };
        sh.log.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            content_type,
            host,
            body,
            status,
            answer: answer.clone(),
        });
        let exit = sh.options.exit_on_ctrl_alt_del && sh.vm.ctrl_alt_del;
        (status, answer, exit)
    };
    if exit {
        // Like Firecracker when the guest reboots: leave shortly after answering.
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::process::exit(0);
        });
    }
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status != 204 {
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
    }
    Ok(resp)
}

type Answer = (u16, Option<Value>);

fn fault(msg: impl Into<String>) -> Answer {
    (400, Some(json!({ "fault_message": msg.into() })))
}

const NOT_AFTER_BOOT: &str = "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";

fn route(
    sh: &mut Shared,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Answer {
    // Firecracker refuses unknown routes and bodies its types do not accept.
    let template = match sh.spec.validate_request(method, path, content_type, body) {
        Ok(t) => t,
        Err(errors) => {
            return match sh.spec.operation(method, path) {
                Err(_) => fault(format!(
                    "Invalid request method and/or path: {method} {path}."
                )),
                Ok(_) => fault(format!(
                    "An error occurred when deserializing the json body of a request: {}.",
                    errors.join("; ")
                )),
            }
        }
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let vm = &mut sh.vm;
    let opts = &sh.options;
    let pre_boot = |vm: &VmModel| {
        if vm.started {
            Err(fault(NOT_AFTER_BOOT))
        } else {
            Ok(())
        }
    };
    macro_rules! pre_boot {
        () => {
            if let Err(a) = pre_boot(vm) {
                return a;
            }
        };
    }
    let ok = (204, None);
    match (method, template.as_str()) {
        ("GET", "/") => (
            200,
            Some(json!({
                "app_name": "Firecracker",
                "id": opts.id,
                "state": if !vm.started { "Not started" } else if vm.paused { "Paused" } else { "Running" },
                "vmm_version": "1.16.1",
            })),
        ),
        ("GET", "/version") => (200, Some(json!({ "firecracker_version": "1.16.1" }))),
        ("GET", "/vm/config") => {
            let mut cfg = serde_json::Map::new();
            let mut put = |k: &str, v: &Option<Value>| {
                if let Some(v) = v {
                    cfg.insert(k.into(), v.clone());
                }
            };
            put("boot-source", &vm.boot_source);
            put("machine-config", &vm.machine_config);
            put("mmds-config", &vm.mmds_config);
            put("logger", &vm.logger);
            put("metrics", &vm.metrics);
            put("vsock", &vm.vsock);
            cfg.insert(
                "drives".into(),
                Value::Array(vm.drives.values().cloned().collect()),
            );
            cfg.insert(
                "network-interfaces".into(),
                Value::Array(vm.ifaces.values().cloned().collect()),
            );
            (200, Some(Value::Object(cfg)))
        }
        ("PUT", "/machine-config") => {
            pre_boot!();
            let vcpus = body["vcpu_count"].as_u64().unwrap_or(0);
            if body["smt"] == true && vcpus != 1 && vcpus % 2 != 0 {
                return fault("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.");
            }
            if body["mem_size_mib"].as_u64() == Some(0) {
                return fault("The memory size (MiB) is invalid.");
            }
            vm.machine_config = Some(body);
            ok
        }
        ("PUT", "/boot-source") => {
            pre_boot!();
            if opts.check_host_resources {
                let kernel = host_path(opts, &body["kernel_image_path"]);
                if !kernel.is_file() {
                    return fault(format!("The kernel file cannot be opened: No such file or directory (os error 2): {}", kernel.display()));
                }
            }
            vm.boot_source = Some(body);
            ok
        }
        ("PUT", "/drives/{drive_id}") => {
            pre_boot!();
            let id = body["drive_id"].as_str().unwrap_or_default().to_string();
            if body["is_root_device"] == true
                && vm
                    .drives
                    .iter()
                    .any(|(k, d)| *k != id && d["is_root_device"] == true)
            {
                return fault("A root block device already exists!");
            }
            if opts.check_host_resources {
                let file = host_path(opts, &body["path_on_host"]);
                if !file.is_file() {
                    return fault(format!("Unable to create the block device: BackingFile(Os {{ code: 2, kind: NotFound }}, \"{}\")", file.display()));
                }
            }
            vm.drives.insert(id, body);
            ok
        }
        ("PUT", "/network-interfaces/{iface_id}") => {
            pre_boot!();
            let id = body["iface_id"].as_str().unwrap_or_default().to_string();
            let tap = body["host_dev_name"].as_str().unwrap_or_default();
            if vm
                .ifaces
                .iter()
                .any(|(k, i)| *k != id && i["host_dev_name"] == tap)
            {
                return fault(format!("The host device name {tap} is already in use."));
            }
            if opts.check_host_resources && !has_netdev(tap) {
                return fault(format!("Could not create the network device: Open tap device failed: Error while creating ifreq structure: No such device (os error 19). Invalid TUN/TAP Backend provided by {tap}."));
            }
            vm.ifaces.insert(id, body);
            ok
        }
        ("PUT", "/mmds/config") => {
            pre_boot!();
            let known = body["network_interfaces"].as_array().is_some_and(|l| {
                !l.is_empty()
                    && l.iter()
                        .all(|i| i.as_str().is_some_and(|i| vm.ifaces.contains_key(i)))
            });
            if !known {
                return fault("The list of network interface IDs that allow forwarding MMDS requests is empty or contains an ID that does not correspond to any existing network interface.");
            }
            vm.mmds_config = Some(body);
            ok
        }
        ("PUT", "/mmds") => {
            vm.mmds = Some(body);
            ok
        }
        ("GET", "/mmds") => match &vm.mmds {
            Some(doc) => (200, Some(doc.clone())),
            None => (
                404,
                Some(json!({ "fault_message": "The MMDS data store is not initialized." })),
            ),
        },
        ("PUT", "/logger") => {
            pre_boot!();
            vm.logger = Some(body);
            ok
        }
        ("PUT", "/metrics") => {
            pre_boot!();
            if vm.metrics.is_some() {
                return fault("Reinitialization of metrics not allowed.");
            }
            vm.metrics = Some(body);
            ok
        }
        ("PUT", "/vsock") => {
            pre_boot!();
            vm.vsock = Some(body);
            ok
        }
        ("PUT", "/serial") => {
            pre_boot!();
            vm.serial = Some(body);
            ok
        }
        ("PUT", "/actions") => match body["action_type"].as_str() {
            Some("InstanceStart") => {
                pre_boot!();
                if vm.boot_source.is_none() {
                    return fault("Cannot start microvm without kernel configuration.");
                }
                // Stand-in rule (firebuild always boots from a root drive).
                if !vm.drives.values().any(|d| d["is_root_device"] == true) {
                    return fault("Cannot start microvm without a root block device.");
                }
                vm.started = true;
                ok
            }
            Some("SendCtrlAltDel") => {
                if !vm.started {
                    return fault(NOT_BEFORE_BOOT);
                }
                vm.ctrl_alt_del = true;
                ok
            }
            Some("FlushMetrics") => {
                if vm.metrics.is_none() {
                    return fault("The metrics system is not initialized.");
                }
                ok
            }
            _ => fault("unknown action"),
        },
        ("PATCH", "/vm") => {
            if !vm.started {
                return fault(NOT_BEFORE_BOOT);
            }
            vm.paused = body["state"] == "Paused";
            ok
        }
        (m, t) => fault(format!("The stand-in does not implement {m} {t}.")),
    }
}

/// A path from a request, seen from the stand-in's side of the jail.
fn host_path(opts: &Options, v: &Value) -> PathBuf {
    let p = Path::new(v.as_str().unwrap_or_default());
    match &opts.root {
        Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    }
}

/// Whether this process's network namespace has `name` (/proc/self/net
/// follows the reader's namespace; /sys/class/net does not).
fn has_netdev(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .any(|l| l.split(':').next().map(str::trim) == Some(name))
}
