//! Metadata types shared between the host tool and the guest init.
//!
//! The JSON field names follow the original firebuild (kebab-case keys), so
//! documents written by it stay readable. This crate has no I/O and a tiny
//! dependency set because the statically linked guest init links it too.

pub mod boot;
pub mod guest;
pub mod image;

pub use guest::{GuestMetadata, InitMode, MmdsDocument};
pub use image::{EntrypointInfo, ImageMetadata, ImageName, ImageType};
