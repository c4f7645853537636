//! The firebuild guest init.
//!
//! Started by the kernel as PID 1 (`init=/.firebuild/init`), it mounts the
//! early filesystems, reads the guest metadata (config drive or Firecracker
//! MMDS V2), configures the network, hostname, hosts, resolver, environment
//! and SSH keys, then runs the image's entrypoint with Docker's semantics and
//! powers the VM off with the entrypoint's exit status on the console.
//!
//! Every step that touches files takes a root prefix, so it can be tested on
//! the host in a temporary directory.

pub mod cmdline;
pub mod files;
pub mod init;
pub mod log;
pub mod metadata;
pub mod mmds;
pub mod mounts;
pub mod network;
pub mod power;
pub mod process;
pub mod signals;
pub mod users;
