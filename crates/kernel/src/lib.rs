//! Guest kernels for firebuild microVMs.
//!
//! - [`build`]: builds an uncompressed ELF `vmlinux` from a Linux source
//!   tarball or tree with the project's microVM configuration
//!   ([`config::PROJECT_FRAGMENT`]) plus an optional user fragment.
//! - [`store`]: the kernel store, `<root>/<id>` (the vmlinux itself, as in the
//!   original firebuild) with `<root>/<id>.json` metadata beside it.
//! - [`identify`]: tells an x86_64 vmlinux from a bzImage, a module, a
//!   compressed file or anything else.
//! - [`tools`]: finds missing build tools and names the packages to install.
//! - [`test_kernel`]: the CI kernel cache other crates' tests boot from.
//!
//! Nothing here installs software or needs root, except writing the default
//! CI cache under `/var/cache`.

pub mod build;
pub mod config;
mod error;
pub mod identify;
mod process;
pub mod source;
pub mod store;
pub mod test_kernel;
pub mod tools;
mod workdir;

pub use build::{build_kernel, BuildOptions, BuildStep, BuiltKernel, Progress};
pub use error::{Error, Result};
pub use store::{KernelEntry, KernelInfo, KernelMetadata, KernelOrigin, KernelStore};
