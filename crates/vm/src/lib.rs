//! The firebuild microVM runtime.
//!
//! A [`Runtime`] turns a [`RunSpec`] (a stored root filesystem image, its
//! [`firebuild_metadata::ImageMetadata`], a kernel and the `run` flags) into
//! a running microVM, and manages VMs afterwards: `ls` ([`Runtime::list`]),
//! `inspect`, `kill`, `purge` and `logs`. VMMs plug in through the [`Vmm`]
//! trait; [`QemuVmm`] is the QEMU backend. Networks come from a
//! [`NetworkProvider`] (set up at launch as [`RunSpec::network_choice`]
//! asks, released on purge), or the caller sets one up and hands it over
//! as a [`NetworkAttachment`].
//!
//! Each VM lives in its own run directory (see [`rundir`]) with its run
//! metadata ([`RunMetadata`]); no firebuild process stays resident.

pub mod agent;
pub mod argv;
pub mod console;
pub mod copy;
pub mod disks;
pub mod env;
pub mod error;
pub mod guest;
pub mod host_ids;
pub mod liveness;
pub mod names;
pub mod network;
pub mod rundir;
pub mod runtime;
pub mod snapshot_store;
pub mod spec;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vmm;
pub mod volume_store;
pub mod volumes;

pub use agent::{AgentConnection, AgentEndpoint, AgentError};
pub use disks::{RootfsMode, DEFAULT_DISK_SIZE};
pub use error::VmError;
pub use liveness::ProcessIdentity;
pub use network::{NetworkChoice, NetworkError, NetworkProvider, NetworkReleaser, NetworkRequest};
pub use runtime::{Interrupts, PreparedVm, PurgeReport, RunOutcome, Runtime};
pub use snapshot_store::{Snapshot, SnapshotRecord, SnapshotStaging, SnapshotStore};
pub use spec::{HealthOverrides, NetworkAttachment, RunSpec, VmmChoice};
pub use state::{render_table, RunMetadata, VmStatus, VmSummary};
pub use vmm::qemu::{Accel, AccelPolicy, IdPool, Machine, QemuConfig, QemuVmm};
pub use vmm::{Availability, Disk, GuestDisk, LaunchConfig, StartedVm, Vmm, VmmKind};
pub use volume_store::{Volume, VolumeFs, VolumeStore, DEFAULT_VOLUME_SIZE};
pub use volumes::{VolumeMount, VolumeSpec};
