//! `profile-create`, `profile-ls`, `profile-inspect`.

use anyhow::Context as _;

use crate::cli::{GlobalArgs, ProfileCreateArgs, SettingsArgs};
use firebuild_host::profile::ProfileDir;

fn selected(global: &GlobalArgs, command: &str) -> anyhow::Result<String> {
    global
        .profile
        .clone()
        .with_context(|| format!("`firebuild {command}` needs --profile NAME"))
}

pub fn create(global: &GlobalArgs, args: &ProfileCreateArgs) -> anyhow::Result<()> {
    let name = selected(global, "profile-create")?;
    ProfileDir::new(&global.profile_conf_dir).create_or_update(&name, &args.settings)?;
    tracing::info!(profile = %name, dir = %global.profile_conf_dir.display(), "profile saved");
    Ok(())
}

pub fn list(global: &GlobalArgs) -> anyhow::Result<()> {
    for name in ProfileDir::new(&global.profile_conf_dir).names()? {
        println!("{name}");
    }
    Ok(())
}

/// The profile as stored, and under `in-effect` every directory its
/// commands use, defaults included, so what two profiles share is visible.
pub fn inspect(global: &GlobalArgs) -> anyhow::Result<()> {
    let name = selected(global, "profile-inspect")?;
    let profile = ProfileDir::new(&global.profile_conf_dir).load(&name)?;
    let settings = crate::settings::resolve(global, &SettingsArgs::default())?;
    let mut in_effect = serde_json::Map::new();
    for (setting, dir) in settings.roots() {
        in_effect.insert(setting.into(), dir.display().to_string().into());
    }
    in_effect.insert(
        "cni-conf-dir".into(),
        settings.cni_conf_dir.display().to_string().into(),
    );
    in_effect.insert(
        "cni-cache-dir".into(),
        settings.cni_cache_dir.display().to_string().into(),
    );
    in_effect.insert(
        "unpacked-size-limit".into(),
        settings.unpacked_size_limit.into(),
    );
    let mut shown = serde_json::to_value(&profile)?;
    shown
        .as_object_mut()
        .context("a profile is a JSON object")?
        .insert("in-effect".into(), in_effect.into());
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}
