//! A firebuild host's configuration and the parts built from it, shared by
//! every front end (the CLI and the containerd shim; the API server next):
//! profiles, the settings in force for one operation, the private
//! directories state lives in, the VM runtime, CNI and registry wired from
//! those settings, and the guest init every root filesystem carries.

pub mod guest_init;
pub mod profile;
pub mod settings;
pub mod settings_args;
pub mod state_dirs;
pub mod wiring;

pub use settings::Settings;
pub use settings_args::{Isolation, SettingsArgs};
