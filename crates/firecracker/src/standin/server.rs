//! The stand-in's HTTP server: Firecracker's API on a Unix socket, served
//! from its own thread, recording every exchange. What each request does
//! is in [`super::rules`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::openapi::ApiSpec;
use super::record::{write_request_log, Recorded};
use super::{rules, StandInError};

/// How the stand-in behaves. The default is a well-behaved Firecracker
/// that checks nothing on the host and writes nothing.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Accept connections but never answer (for timeout tests).
    pub hang: bool,
    /// Answer this (path, status, body) instead of handling the request.
    pub inject: Option<(String, u16, String)>,
    /// Check, like Firecracker, that kernel, drive and tap exist on this
    /// host (the tap in this process's network namespace); paths are looked
    /// up under `root`.
    pub check_host_resources: bool,
    /// The jail root the request paths are relative to, when jailed.
    pub root: Option<PathBuf>,
    /// Exit the process shortly after answering SendCtrlAltDel, as
    /// Firecracker does when the guest reboots (only for a stand-in run as
    /// its own process).
    pub exit_on_ctrl_alt_del: bool,
    /// Instance id reported by `GET /`.
    pub id: String,
    /// Appended to the serial output file (`PUT /serial`) on InstanceStart,
    /// as a booting guest writes to its console.
    pub serial_on_start: Option<String>,
    /// Appended to the serial output file on SendCtrlAltDel, as the guest's
    /// last words (e.g. the `firebuild-exit-code=` marker of firebuild's
    /// init).
    pub serial_on_ctrl_alt_del: Option<String>,
    /// Keep every exchange in this file as a JSON array (see
    /// [`super::read_request_log`]), rewritten after each one, for tests
    /// that run the stand-in as another process.
    pub request_log: Option<PathBuf>,
}

/// The VM the stand-in pretends to run: what the API configured.
#[derive(Debug, Default)]
pub struct VmModel {
    pub started: bool,
    pub paused: bool,
    pub machine_config: Option<Value>,
    pub boot_source: Option<Value>,
    /// In Firecracker's attach order: the root drive first, the others as
    /// first put (the guest's /dev/vda, vdb, ...).
    pub drives: Vec<Value>,
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

/// The stand-in's state stays usable even if a handler panicked with it
/// locked: tests then see what happened rather than a poisoned lock.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stand-in serving on its own thread; stops and removes its socket on drop.
pub struct StandIn {
    pub socket: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Serves at `socket` with default options and the id `standin`.
    pub fn start(socket: &Path) -> Result<StandIn, StandInError> {
        Self::start_with(
            socket,
            Options {
                id: "standin".into(),
                ..Options::default()
            },
        )
    }

    /// Serves at `socket`; the socket is bound when this returns.
    pub fn start_with(socket: &Path, options: Options) -> Result<StandIn, StandInError> {
        let io = |what: &'static str| {
            move |source| StandInError::Io {
                what,
                path: socket.to_path_buf(),
                source,
            }
        };
        let listener = std::os::unix::net::UnixListener::bind(socket).map_err(io("bind"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("make non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StandInError::Runtime)?;
        let shared = Arc::new(Mutex::new(Shared {
            spec: ApiSpec::load()?,
            options,
            vm: VmModel::default(),
            log: Vec::new(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let thread =
            std::thread::spawn(move || runtime.block_on(serve(listener, thread_shared, stopped)));
        Ok(StandIn {
            socket: socket.to_path_buf(),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Every exchange so far, in order.
    pub fn log(&self) -> Vec<Recorded> {
        lock(&self.shared).log.clone()
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
        f(&lock(&self.shared).vm)
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

async fn serve(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Mutex<Shared>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("the API stand-in cannot serve its socket: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                if lock(&shared).options.hang {
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
    let header = |name: HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(CONTENT_TYPE);
    let host = header(HOST);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let (status, answer, exit) = {
        let mut guard = lock(&shared);
        let sh = &mut *guard;
        let (status, answer) = match &sh.options.inject {
            Some((p, s, b)) if *p == path => (*s, b.clone().into_bytes()),
            _ => {
                let (status, value) = rules::route(
                    &mut sh.vm,
                    &sh.options,
                    &sh.spec,
                    &method,
                    &path,
                    content_type.as_deref(),
                    &body,
                );
                (
                    status,
                    value
                        .map(|v| v.to_string().into_bytes())
                        .unwrap_or_default(),
                )
            }
        };
        sh.log.push(Recorded {
            method,
            path,
            content_type,
            host,
            body,
            status,
            answer: answer.clone(),
        });
        // Written after the serial output: a reader that sees InstanceStart
        // in the log finds the console line too.
        if let Some(file) = &sh.options.request_log {
            if let Err(e) = write_request_log(file, &sh.log) {
                tracing::warn!("the API stand-in cannot keep its request log: {e}");
            }
        }
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
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(resp)
}
