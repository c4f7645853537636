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
//!
//! # Contract with the host
//!
//! - Kernel arguments: `init=/.firebuild/init`, `firebuild.metadata=mmds`
//!   or `firebuild.metadata=/dev/vdX` (a raw config drive), optionally the
//!   kernel's `ip=` (then the init keeps the kernel's address and route and
//!   applies only the MTU) and `firebuild.debug` (info lines on the console).
//!   `reboot=k panic=1` with QEMU's `-no-reboot` makes the final reboot end
//!   the VM. `firebuild.overlay=/dev/vdX` (with `ro`): the root drive is a
//!   shared image; the init builds an overlay root on the scratch disk vdX
//!   first ([`overlay`]).
//! - Volumes: the metadata's `volumes` (device, path, read-only) are
//!   mounted as ext4 before the entrypoint or the image's init ([`volumes`]).
//! - Exit status: a line `firebuild-exit-code=<n>` (preceded by a newline)
//!   is printed right before the reboot: the entrypoint's code (128+signal
//!   when killed), or 240 (metadata), 241 (mounts), 242 (configuration),
//!   243 (start), 244 (internal error). In `init-mode: image` the image's
//!   own init decides, and no marker is printed.
//! - Graceful stop: ctrl-alt-del (QEMU `sendkey ctrl-alt-delete` or QMP
//!   `send-key`, Firecracker `SendCtrlAltDel`) reaches PID 1 as SIGINT
//!   because the init disables the kernel's ctrl-alt-del reboot. The init
//!   sends the image's STOPSIGNAL to the entrypoint and SIGKILL after
//!   `stop-timeout-seconds` (0 means 10). SIGTERM and SIGPWR to PID 1 do
//!   the same; other signals are forwarded to the entrypoint as they are.
//! - The agent ([`agent`]): once the VM is configured, PID 1 forks the
//!   agent that `firebuild exec`, `cp` and health checks talk to, over
//!   vsock port [`firebuild_agent_proto::VSOCK_PORT`] (Firecracker) or the
//!   virtio-serial ports named `org.firebuild.agent.N` (QEMU).

pub mod agent;
pub mod build_step;
pub mod cmdline;
pub mod files;
pub mod init;
pub mod log;
pub mod metadata;
pub mod mmds;
pub mod mounts;
pub mod network;
pub mod overlay;
pub mod power;
pub mod process;
pub mod signals;
pub mod users;
pub mod volumes;
