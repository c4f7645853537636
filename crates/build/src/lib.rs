//! The firebuild build engine.
//!
//! Turns a Dockerfile (or an OCI image) into a bootable ext4 root
//! filesystem stored under a tag, with no daemon: RUN steps execute in a
//! namespace sandbox on the host, each step's filesystem changes are an
//! overlayfs layer in a content-keyed step cache, and the result is written
//! with `mkfs.ext4 -d` together with its `metadata.json`.

mod api;
mod base;
pub mod config;
mod copy;
mod engine;
mod error;
mod ext4;
mod fsutil;
pub mod layers;
pub mod mountns;
pub mod sandbox;
#[cfg(test)]
mod testutil;
mod users;
mod util;

pub use error::{BuildError, Result, StepLocation};
pub use layers::PruneReport;
pub use sandbox::CancelToken;

pub use api::{build, build_from_image, prune, BuildOptions, BuildOutput, ImageOptions};
pub use firebuild_metadata::ImageType;
pub use firebuild_oci::RegistryConfig;
