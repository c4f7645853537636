//! The firebuild build engine.
//!
//! Turns a Dockerfile (or an OCI image) into a bootable ext4 root
//! filesystem stored under a tag, with no daemon:
//!
//! - **Stages** run in dependency order, only those the target needs, with
//!   BuildKit's ARG/ENV scoping (firebuild-dockerfile does the expansion).
//! - **RUN** executes in a namespace sandbox on the host ([`sandbox`]): new
//!   mount, PID, UTS, IPC and cgroup namespaces (and network with
//!   `--network=none`), fresh `/proc`, a minimal `/dev`, read-only `/sys`,
//!   Docker's default capabilities, no-new-privileges, USER resolved in the
//!   image. Nothing of it outlives the step, even on SIGKILL of the builder.
//! - **Every filesystem step is an overlayfs layer** in a content-keyed
//!   step cache ([`layers`]): the key hashes the parent state, the expanded
//!   instruction and the content of the files it reads. A step costs one
//!   overlay mount, not a copy of the tree; a cached step costs one `stat`.
//! - **COPY/ADD** follow Docker's rules (context from firebuild-source,
//!   `.dockerignore`, globs, `--from`, `--chown`, `--chmod`, heredocs,
//!   remote URLs with `--checksum`, tar archives in five compressions).
//! - **Output**: the guest init goes in as one more layer at
//!   [`firebuild_metadata::boot::GUEST_INIT_PATH`], then `mkfs.ext4 -d` of
//!   the merged tree (no loop mount) and `metadata.json`, published
//!   atomically into the store.
//!
//! All mounts happen on worker threads with private mount namespaces
//! ([`mountns`]); the host mount table is never touched.
//!
//! The CLI calls [`build`] for `rootfs --dockerfile` and `baseos`,
//! [`build_from_image`] for `rootfs --docker-image`, and [`prune`] for
//! cache cleanup. They are blocking and need root.

mod api;
mod base;
pub mod config;
mod copy;
mod engine;
mod error;
pub mod export;
mod ext4;
mod ext4_reader;
mod ext4_repro;
mod filehash;
mod fsutil;
pub mod isolation;
pub mod layers;
pub mod mountns;
pub mod sandbox;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod users;
mod util;

pub use api::{build, build_from_image, prune, BuildOptions, BuildOutput, ImageOptions};
pub use error::{BuildError, Result, StepLocation};
pub use export::{export, ExportOptions, Exported, METADATA_ANNOTATION};
pub use ext4::make_ext4;
pub use firebuild_metadata::ImageType;
pub use firebuild_oci::RegistryConfig;
pub use isolation::{Isolation, StepVm, StepVmError, VmStep, VmStepOutcome};
pub use layers::PruneReport;
pub use sandbox::{CancelToken, IdMap, Limits, Network, SandboxSettings};
