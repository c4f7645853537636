//! Drives Firecracker v1.16 to its API spec (`firecracker-v1.16.1.yaml`).
//!
//! - [`Client`] (async) and [`BlockingClient`]: typed requests over the API's
//!   Unix socket; Firecracker's `fault_message` comes back in
//!   [`Error::Api`] with the request that caused it.
//! - [`VmSpec`] + [`Client::configure_and_start`]: a whole VM in one call.
//! - [`Jail`], [`JailerConfig`], [`CgroupLayout`]: the jailer's command
//!   line, the files staged into the jail, its pid file and cleanup.
//! - [`launch`] (async) and [`Machine`] (blocking): start Firecracker
//!   (jailed or `--no-jailer`), boot, stop, clean up; [`VmProcess`] is the
//!   serializable record later commands use.
//!
//! Tested three ways: every request against the official spec; against a
//! stand-in of the API and of the executables (`standin`, exported with the
//! cargo feature `test-support` for other crates' tests too); and, where
//! `../shared/firecracker/bin` holds them, against the real Firecracker and
//! jailer (`tests/real.rs`), whose guest never runs on the nested KVM of the
//! development machines.

mod blocking;
mod boot_args;
mod cgroup;
mod client;
mod error;
mod jail;
mod machine;
pub mod models;
mod process;
mod spec;
#[cfg(feature = "test-support")]
pub mod standin;
mod transport;

pub use blocking::BlockingClient;
pub use boot_args::{check_boot_args, BootArgs, RECOMMENDED_BOOT_ARGS};
pub use cgroup::{CgroupLayout, CgroupSetting, CgroupVersion, Hierarchy};
pub use client::{Client, DEFAULT_REQUEST_TIMEOUT};
pub use error::{Error, Result};
pub use jail::{
    staged_drive_path, Access, Jail, JailUser, JailerConfig, DEFAULT_CHROOT_BASE, DEFAULT_JAIL_ID,
    JAILED_API_SOCKET, JAIL_USER_NAME,
};
pub use machine::{
    availability, launch, preflight, restore, LaunchConfig, LaunchMode, Machine, SnapshotFiles,
    DEFAULT_SOCKET_TIMEOUT, DIRECT_API_SOCKET, DIRECT_OUTPUT, JAILED_SNAPSHOT_MEMORY,
    JAILED_SNAPSHOT_STATE,
};
pub use process::VmProcess;
pub use spec::{
    check_vm_id, DriveSpec, NetworkSpec, VmSpec, VsockSpec, MAX_VIRTIO_DEVICES, MMDS_IPV4,
    NET_IFACE_ID, ROOT_DRIVE_ID,
};
pub use transport::{check_socket_path, MAX_SOCKET_PATH};
