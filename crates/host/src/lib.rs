//! A firebuild host's configuration and the parts built from it, shared by
//! every front end (the CLI today; the API server and the containerd shim
//! next): profiles, the settings in force for one operation, the private
//! directories state lives in, and the VM runtime, CNI and registry wired
//! from those settings.

pub mod profile;
pub mod settings;
pub mod settings_args;
pub mod state_dirs;
pub mod wiring;

pub use settings::Settings;
pub use settings_args::{Isolation, SettingsArgs};
