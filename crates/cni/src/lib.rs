//! firebuild's networking: a CNI runtime (what libcni does for Go runtimes)
//! plus the per-VM pieces a microVM needs.
//!
//! - [`CniRuntime`] loads network lists ([`config`]), runs plugin chains for
//!   ADD/CHECK/DEL ([`exec`]) with `prevResult` chaining and capability
//!   arguments, and keeps libcni-format result caches ([`cache`]).
//! - [`CniRuntime::setup_vm_network`] gives a VM a namespace, runs the chain
//!   and wires a tap to the chain's veth ([`tap`]); it returns a
//!   [`VmNetwork`] with everything the VMM and guest need.
//!   [`CniRuntime::teardown_vm_network`] undoes it, also after a crash, and
//!   [`CniRuntime::find_orphans`] finds what `purge` must clean.
//! - [`network`] writes standard bridge conflists (`network create/ls/rm`).
//! - [`ports`] parses `--port` specs into `portmap`'s `portMappings`.
//!
//! Everything here needs root (namespaces, netlink, iptables via plugins).

pub mod cache;
pub mod config;
pub mod error;
pub mod exec;
pub mod host_guard;
pub mod ipnet;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod ports;
pub mod provider;
pub mod result;
pub mod runtime;
pub mod tap;
pub mod vm;

pub use cache::{CacheEntry, FirebuildAttachment, ResultCache};
pub use config::NetworkConfigList;
pub use error::{CniError, Result};
pub use exec::CniCommand;
pub use ipnet::IpNet;
pub use network::{NetworkInfo, NetworkSpec, RemovedNetwork, BUILD_NETWORK, DEFAULT_NETWORK};
pub use ports::{parse_port_specs, HostBinding, PortMapping, Protocol};
pub use provider::{release_quietly, CniNetworks};
pub use result::{CniResult, Dns};
pub use runtime::{CniPaths, CniRuntime, RuntimeConf};
pub use tap::TapOwner;
pub use vm::{Orphan, TeardownReport, VmNetwork, VmNetworkRequest};
