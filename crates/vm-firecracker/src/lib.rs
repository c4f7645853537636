//! The Firecracker backend of the firebuild VM runtime.
//!
//! [`FirecrackerVmm`] implements [`firebuild_vm::Vmm`] on top of the
//! `firebuild-firecracker` driver: the runtime's [`firebuild_vm::LaunchConfig`]
//! becomes a [`firebuild_firecracker::VmSpec`] (the run directory's root
//! filesystem, console, log and metrics files; the tap, MAC and MTU of the
//! [`firebuild_vm::NetworkAttachment`]; the guest metadata as the MMDS
//! document), started inside the jailer (or directly with `--no-jailer`).
//! The [`firebuild_firecracker::VmProcess`] it returns is stored in the run
//! metadata (`vmm_details`, see [`FirecrackerDetails`]), which is all that
//! `kill`, `ls`, `inspect` and `purge` need later.
//!
//! Firecracker cannot run on the machines this is developed on; the tests
//! drive it against the stand-in of firebuild-firecracker (its
//! `test-support` feature; see `tests/`).

mod boot;
mod config;
mod details;
mod host;
pub mod jail_ids;
mod reserved;
mod snapshot_files;
mod vmm;

pub use boot::kernel_args;
pub use config::FirecrackerConfig;
pub use details::{FirecrackerDetails, Mode};
pub use reserved::ReservedDrive;
pub use vmm::{FirecrackerVmm, LOG_FILE, METRICS_FILE};

/// The jail user type of [`FirecrackerConfig::user`], re-exported for callers.
pub use firebuild_firecracker::JailUser;
