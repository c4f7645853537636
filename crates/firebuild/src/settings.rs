//! The settings in force for one command: the global flags name the
//! profile, the command's flags override it (see `firebuild_host`).

pub use firebuild_host::Settings;

use crate::cli::{GlobalArgs, SettingsArgs};

pub fn resolve(global: &GlobalArgs, args: &SettingsArgs) -> anyhow::Result<Settings> {
    Settings::resolve(global.profile.as_deref(), &global.profile_conf_dir, args)
}
