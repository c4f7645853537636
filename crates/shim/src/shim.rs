//! The shim binary's actions: `start` (spawn the serving shim, print its
//! address), `delete` (clean up after a shim that is gone) and serving.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;

use crate::config::Loaded;
use crate::service::Service;
use crate::vm_host::{discard_rootfs, BundleRecord, VmHost};

pub struct FirebuildShim {
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for FirebuildShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        FirebuildShim {
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // A pod's containers share its sandbox's shim (and VM). The working
        // directory is the container's bundle.
        let grouping = match crate::spec::read_bundle(std::path::Path::new(".")) {
            Ok(spec) => crate::spec::grouping(&spec, &opts.id),
            Err(_) => opts.id.clone(),
        };
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd finds the shim again after a restart by this file in
        // the bundle (the working directory).
        tokio::fs::write("address", &address)
            .await
            .map_err(|e| Error::Other(format!("writing the bundle's address file: {e}")))?;
        Ok(address)
    }

    /// containerd's clean-up when the serving shim is gone (crashed,
    /// killed): the VM named in the bundle's record and its files go.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let record =
            BundleRecord::read(&self.bundle).map_err(|e| Error::Other(format!("{e:#}")))?;
        if let Some(record) = record {
            let loaded = Loaded::find(record.config.as_deref())
                .map_err(|e| Error::Other(format!("{e:#}")))?;
            let host = tokio::task::spawn_blocking(move || VmHost::new(loaded))
                .await
                .map_err(|e| Error::Other(e.to_string()))?
                .map_err(|e| Error::Other(format!("{e:#}")))?;
            host.remove(&record.vm).await;
            discard_rootfs(&record.rootfs);
            let _ = std::fs::remove_file(self.bundle.join(crate::vm_host::BUNDLE_RECORD));
        }
        Ok(DeleteResponse {
            exit_status: crate::process::VM_GONE_STATUS,
            exited_at: crate::service::timestamp(std::time::SystemTime::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(&self.namespace, publisher, Arc::clone(&self.exit))
    }
}
