//! A synchronous face of [`Client`] for callers without an async runtime:
//! each call runs on a private current-thread tokio runtime.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::models::*;
use crate::spec::VmSpec;

/// [`Client`], blocking. Must not be used from inside a tokio runtime (it
/// says so with [`Error::InsideAsyncRuntime`] instead of panicking).
#[derive(Debug)]
pub struct BlockingClient {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

/// Runs `f` to completion on a fresh current-thread runtime.
pub(crate) fn block_on<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    refuse_inside_runtime()?;
    new_runtime()?.block_on(f)
}

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Runtime)
}

/// `block_on` inside a runtime would panic; say so instead.
fn refuse_inside_runtime() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::InsideAsyncRuntime);
    }
    Ok(())
}

impl BlockingClient {
    /// Wraps `client` with its own runtime.
    pub fn new(client: Client) -> Result<Self> {
        Ok(BlockingClient {
            client,
            runtime: new_runtime()?,
        })
    }

    /// A blocking client for the API socket at `socket`.
    pub fn for_socket(socket: impl AsRef<Path>) -> Result<Self> {
        Self::new(Client::new(socket.as_ref()))
    }

    /// The async client inside.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        refuse_inside_runtime()?;
        self.runtime.block_on(f)
    }

    /// See [`Client::wait_ready`].
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.run(self.client.wait_ready(timeout))
    }

    /// See [`Client::wait_ready_while`].
    pub fn wait_ready_while(
        &self,
        timeout: Duration,
        alive: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        self.run(self.client.wait_ready_while(timeout, alive))
    }

    /// See [`Client::configure_and_start`].
    pub fn configure_and_start(&self, spec: &VmSpec) -> Result<()> {
        self.run(self.client.configure_and_start(spec))
    }

    /// `PUT /machine-config`.
    pub fn put_machine_config(&self, body: &MachineConfiguration) -> Result<()> {
        self.run(self.client.put_machine_config(body))
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&self, body: &BootSource) -> Result<()> {
        self.run(self.client.put_boot_source(body))
    }

    /// `PUT /drives/{drive_id}`.
    pub fn put_drive(&self, body: &Drive) -> Result<()> {
        self.run(self.client.put_drive(body))
    }

    /// `PATCH /drives/{drive_id}`.
    pub fn patch_drive(&self, body: &PartialDrive) -> Result<()> {
        self.run(self.client.patch_drive(body))
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub fn put_network_interface(&self, body: &NetworkInterface) -> Result<()> {
        self.run(self.client.put_network_interface(body))
    }

    /// `PUT /mmds/config`.
    pub fn put_mmds_config(&self, body: &MmdsConfig) -> Result<()> {
        self.run(self.client.put_mmds_config(body))
    }

    /// `PUT /mmds`.
    pub fn put_mmds(&self, document: &serde_json::Value) -> Result<()> {
        self.run(self.client.put_mmds(document))
    }

    /// `PUT /logger`.
    pub fn put_logger(&self, body: &Logger) -> Result<()> {
        self.run(self.client.put_logger(body))
    }

    /// `PUT /metrics`.
    pub fn put_metrics(&self, body: &Metrics) -> Result<()> {
        self.run(self.client.put_metrics(body))
    }

    /// `PUT /vsock`.
    pub fn put_vsock(&self, body: &Vsock) -> Result<()> {
        self.run(self.client.put_vsock(body))
    }

    /// `PUT /serial`.
    pub fn put_serial(&self, body: &SerialDevice) -> Result<()> {
        self.run(self.client.put_serial(body))
    }

    /// `PUT /actions`.
    pub fn action(&self, action_type: ActionType) -> Result<()> {
        self.run(self.client.action(action_type))
    }

    /// `InstanceStart`.
    pub fn start(&self) -> Result<()> {
        self.run(self.client.start())
    }

    /// `SendCtrlAltDel`.
    pub fn send_ctrl_alt_del(&self) -> Result<()> {
        self.run(self.client.send_ctrl_alt_del())
    }

    /// `PATCH /vm` `Paused`.
    pub fn pause(&self) -> Result<()> {
        self.run(self.client.pause())
    }

    /// `PATCH /vm` `Resumed`.
    pub fn resume(&self) -> Result<()> {
        self.run(self.client.resume())
    }

    /// `GET /`.
    pub fn instance_info(&self) -> Result<InstanceInfo> {
        self.run(self.client.instance_info())
    }

    /// `GET /version`.
    pub fn version(&self) -> Result<FirecrackerVersion> {
        self.run(self.client.version())
    }

    /// `GET /vm/config`.
    pub fn vm_config(&self) -> Result<FullVmConfiguration> {
        self.run(self.client.vm_config())
    }
}
