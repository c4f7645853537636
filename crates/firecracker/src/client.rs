//! The async API client: one typed method per request, plus the whole
//! configure-then-boot sequence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::*;
use crate::spec::{check_api_id, VmSpec, MMDS_IPV4, NET_IFACE_ID, ROOT_DRIVE_ID};
use crate::transport::{self, RawResponse};

/// Default time one request may take (Firecracker answers in milliseconds;
/// `InstanceStart` loads the kernel, still well under a second).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Talks to one Firecracker process over its API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the API socket at `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits (at most `timeout`) until the API socket accepts connections.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        transport::wait_for_socket(&self.socket, timeout, || Ok(())).await
    }

    /// Like [`Client::wait_ready`], asking `alive` between attempts so a
    /// process that died is reported at once.
    pub async fn wait_ready_while(
        &self,
        timeout: Duration,
        alive: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        transport::wait_for_socket(&self.socket, timeout, alive).await
    }

    /// `PUT /machine-config`.
    pub async fn put_machine_config(&self, body: &MachineConfiguration) -> Result<()> {
        self.put("/machine-config", body).await
    }

    /// `PUT /boot-source`.
    pub async fn put_boot_source(&self, body: &BootSource) -> Result<()> {
        self.put("/boot-source", body).await
    }

    /// `PUT /drives/{drive_id}`.
    pub async fn put_drive(&self, body: &Drive) -> Result<()> {
        self.put(&format!("/drives/{}", path_segment(&body.drive_id)?), body)
            .await
    }

    /// `PATCH /drives/{drive_id}` (after the start only).
    pub async fn patch_drive(&self, body: &PartialDrive) -> Result<()> {
        let path = format!("/drives/{}", path_segment(&body.drive_id)?);
        let encoded = encode(&path, body)?;
        self.expect_no_content(Method::PATCH, &path, encoded).await
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub async fn put_network_interface(&self, body: &NetworkInterface) -> Result<()> {
        self.put(
            &format!("/network-interfaces/{}", path_segment(&body.iface_id)?),
            body,
        )
        .await
    }

    /// `PUT /mmds/config`.
    pub async fn put_mmds_config(&self, body: &MmdsConfig) -> Result<()> {
        self.put("/mmds/config", body).await
    }

    /// `PUT /mmds`: replaces the whole MMDS document (a JSON object).
    pub async fn put_mmds(&self, document: &serde_json::Value) -> Result<()> {
        self.put("/mmds", document).await
    }

    /// `PUT /logger`.
    pub async fn put_logger(&self, body: &Logger) -> Result<()> {
        self.put("/logger", body).await
    }

    /// `PUT /metrics`.
    pub async fn put_metrics(&self, body: &Metrics) -> Result<()> {
        self.put("/metrics", body).await
    }

    /// `PUT /vsock`.
    pub async fn put_vsock(&self, body: &Vsock) -> Result<()> {
        self.put("/vsock", body).await
    }

    /// `PUT /serial`.
    pub async fn put_serial(&self, body: &SerialDevice) -> Result<()> {
        self.put("/serial", body).await
    }

    /// `PUT /actions`.
    pub async fn action(&self, action_type: ActionType) -> Result<()> {
        self.put("/actions", &InstanceActionInfo { action_type })
            .await
    }

    /// `PUT /actions` `InstanceStart`: boots the configured VM.
    pub async fn start(&self) -> Result<()> {
        self.action(ActionType::InstanceStart).await
    }

    /// `PUT /actions` `SendCtrlAltDel`: asks the guest to shut down. It
    /// returns once Firecracker injected the keys, not when the guest is gone.
    pub async fn send_ctrl_alt_del(&self) -> Result<()> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    /// `PATCH /vm` `Paused`.
    pub async fn pause(&self) -> Result<()> {
        self.patch_vm(VmState::Paused).await
    }

    /// `PATCH /vm` `Resumed`.
    pub async fn resume(&self) -> Result<()> {
        self.patch_vm(VmState::Resumed).await
    }

    /// `PUT /snapshot/create` (the VM must be paused).
    pub async fn create_snapshot(&self, body: &SnapshotCreateParams) -> Result<()> {
        self.put("/snapshot/create", body).await
    }

    /// `PUT /snapshot/load` (a fresh process: nothing configured but the
    /// logger and metrics).
    pub async fn load_snapshot(&self, body: &SnapshotLoadParams) -> Result<()> {
        self.put("/snapshot/load", body).await
    }

    /// Loads a snapshot into this fresh process, left paused: the logger
    /// and metrics of `spec` first, then the memory file mapped as the File
    /// backend, with the network interface moved to `spec`'s tap. Paths are
    /// the process's (inside the jail when jailed).
    pub async fn restore(&self, spec: &VmSpec, state: &Path, memory: &Path) -> Result<()> {
        self.put_observability(spec).await?;
        self.load_snapshot(&SnapshotLoadParams {
            snapshot_path: state.to_owned(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: memory.to_owned(),
            }),
            resume_vm: Some(false),
            network_overrides: spec
                .network
                .iter()
                .map(|net| NetworkOverride {
                    iface_id: NET_IFACE_ID.to_string(),
                    host_dev_name: net.tap.clone(),
                })
                .collect(),
        })
        .await?;
        tracing::info!(vm_id = %spec.vm_id, "Firecracker instance restored from a snapshot");
        Ok(())
    }

    async fn patch_vm(&self, state: VmState) -> Result<()> {
        let body = encode("/vm", &Vm { state })?;
        self.expect_no_content(Method::PATCH, "/vm", body).await
    }

    /// `GET /`.
    pub async fn instance_info(&self) -> Result<InstanceInfo> {
        self.get("/").await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<FirecrackerVersion> {
        self.get("/version").await
    }

    /// `GET /vm/config`.
    pub async fn vm_config(&self) -> Result<FullVmConfiguration> {
        self.get("/vm/config").await
    }

    /// Configures every device of `spec` and boots it, in the order
    /// Firecracker needs: logger and metrics first (so later failures are
    /// logged), machine, kernel, root drive, the other drives in order,
    /// network, MMDS (its config names the interface, so after it), vsock,
    /// console, then `InstanceStart`.
    ///
    /// Paths in `spec` must be valid for the Firecracker process (inside the
    /// jail when jailed). Stops at the first refusal, which names the request.
    pub async fn configure_and_start(&self, spec: &VmSpec) -> Result<()> {
        spec.validate()?;
        tracing::debug!(vm_id = %spec.vm_id, socket = %self.socket.display(), "configuring Firecracker");
        self.put_observability(spec).await?;
        self.put_machine_config(&MachineConfiguration {
            vcpu_count: spec.vcpu_count,
            mem_size_mib: spec.mem_size_mib,
            smt: spec.smt,
            track_dirty_pages: false,
            huge_pages: None,
        })
        .await?;
        self.put_boot_source(&BootSource {
            kernel_image_path: spec.kernel.clone(),
            boot_args: Some(spec.boot_args.clone()),
            initrd_path: spec.initrd.clone(),
        })
        .await?;
        self.put_drive(&virtio_drive(
            ROOT_DRIVE_ID,
            &spec.root_drive,
            true,
            spec.root_read_only,
        ))
        .await?;
        // Firecracker attaches drives in the order they were first put (the
        // root drive always first): this order is the guest's vdb, vdc, ...
        for d in &spec.drives {
            let mut drive = virtio_drive(&d.drive_id, &d.path, false, d.read_only);
            if d.in_place && !d.read_only {
                drive.cache_type = Some(CacheType::Writeback);
            }
            self.put_drive(&drive).await?;
        }
        if let Some(net) = &spec.network {
            self.put_network_interface(&NetworkInterface {
                iface_id: NET_IFACE_ID.to_string(),
                host_dev_name: net.tap.clone(),
                guest_mac: net.guest_mac.clone(),
                mtu: net.mtu,
            })
            .await?;
        }
        if let Some(doc) = &spec.mmds {
            self.put_mmds_config(&MmdsConfig {
                version: Some(MmdsVersion::V2),
                network_interfaces: vec![NET_IFACE_ID.to_string()],
                ipv4_address: Some(MMDS_IPV4),
                imds_compat: None,
            })
            .await?;
            self.put_mmds(doc).await?;
        }
        if let Some(v) = &spec.vsock {
            self.put_vsock(&Vsock {
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
            })
            .await?;
        }
        if let Some(path) = &spec.console_path {
            self.put_serial(&SerialDevice {
                serial_out_path: Some(path.clone()),
            })
            .await?;
        }
        self.start().await?;
        tracing::info!(vm_id = %spec.vm_id, "Firecracker instance started");
        Ok(())
    }

    /// The logger and metrics of `spec`, first of all so later failures are logged.
    async fn put_observability(&self, spec: &VmSpec) -> Result<()> {
        if let Some(path) = &spec.log_path {
            self.put_logger(&Logger {
                log_path: Some(path.clone()),
                level: Some(spec.log_level),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: None,
            })
            .await?;
        }
        if let Some(path) = &spec.metrics_path {
            self.put_metrics(&Metrics {
                metrics_path: path.clone(),
            })
            .await?;
        }
        Ok(())
    }

    async fn put<T: Serialize>(&self, path: &str, body: &T) -> Result<()> {
        let body = encode(path, body)?;
        self.expect_no_content(Method::PUT, path, body).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(Method::GET, path, None).await?;
        if resp.status != 200 {
            return Err(api_error("GET", path, &resp, None));
        }
        serde_json::from_slice(&resp.body).map_err(|e| Error::UnexpectedResponse {
            method: "GET".into(),
            path: path.into(),
            status: resp.status,
            reason: format!("cannot parse the JSON answer: {e}"),
        })
    }

    async fn expect_no_content(&self, method: Method, path: &str, body: Vec<u8>) -> Result<()> {
        let shown = describe_body(path, &body);
        let resp = self.send(method.clone(), path, Some(body)).await?;
        if (200..300).contains(&resp.status) {
            return Ok(());
        }
        Err(api_error(method.as_str(), path, &resp, Some(shown)))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<RawResponse> {
        tracing::trace!(%method, path, "Firecracker API request");
        transport::send(&self.socket, method, path, body, self.timeout).await
    }
}

/// A virtio-block drive backed by a file (the spec wants `path_on_host` and
/// `is_read_only` for those), with Firecracker's default cache and engine.
fn virtio_drive(id: &str, path: &Path, is_root_device: bool, is_read_only: bool) -> Drive {
    Drive {
        drive_id: id.to_string(),
        path_on_host: path.to_path_buf(),
        is_root_device,
        is_read_only,
        partuuid: None,
        cache_type: None,
        io_engine: None,
    }
}

fn encode<T: Serialize>(path: &str, body: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|source| Error::Serialize {
        what: path.to_string(),
        source,
    })
}

/// The body as shown in error messages: the MMDS document may hold SSH keys
/// and environment values, so it is never echoed.
fn describe_body(path: &str, body: &[u8]) -> String {
    if path == "/mmds" {
        return "<MMDS document, not shown>".to_string();
    }
    String::from_utf8_lossy(body).into_owned()
}

fn api_error(method: &str, path: &str, resp: &RawResponse, request_body: Option<String>) -> Error {
    let fault_message = serde_json::from_slice::<ApiFault>(&resp.body)
        .ok()
        .and_then(|f| f.fault_message)
        .unwrap_or_else(|| {
            let raw = String::from_utf8_lossy(&resp.body).trim().to_string();
            if raw.is_empty() {
                "(no fault_message in the answer)".to_string()
            } else {
                raw
            }
        });
    Error::Api {
        method: method.to_string(),
        path: path.to_string(),
        status: resp.status,
        fault_message,
        request_body,
    }
}

/// Ids go into the URL path: refuse what would change the path, and what
/// Firecracker refuses anyway.
fn path_segment(id: &str) -> Result<&str> {
    check_api_id("device id", id)?;
    Ok(id)
}
