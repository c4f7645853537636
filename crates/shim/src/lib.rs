//! A containerd runtime v2 shim that runs each container in a firebuild
//! microVM (runtime type [`RUNTIME_ID`]).
//!
//! containerd starts the shim binary per container; the shim serves the
//! task API over ttrpc ([`service`]) and drives VMs through the same
//! crates as the CLI: the root filesystem containerd prepared becomes a
//! shared read-only image ([`rootfs`]), the VM boots with the guest init in
//! agent mode, and every process of the spec or of `exec` runs through the
//! agent ([`process`]). A Kubernetes pod is one VM: its sandbox's; the
//! pod's further containers get roots of their own inside it ([`pod`]).

pub mod binds;
pub mod config;
pub mod metrics;
pub mod options;
pub mod pod;
pub mod pod_network;
pub mod process;
pub mod rootfs;
pub mod service;
pub mod shim;
pub mod spec;
pub mod vm_host;

/// The runtime type containerd names this shim by.
pub const RUNTIME_ID: &str = "io.containerd.firebuild.v2";

/// The shim's `main`: `start`, `delete` or serve, as containerd asks.
pub async fn run() {
    // The shim runs mkfs and VMMs as children and waits for them itself:
    // a reaper taking every child's status would break those waits. Not
    // a subreaper either: what a VMM leaves behind goes to init.
    let config = containerd_shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<shim::FirebuildShim>(RUNTIME_ID, Some(config)).await;
}
