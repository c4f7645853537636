//! `profile-create`, `profile-ls`, `profile-inspect`.

use anyhow::Context as _;

use crate::cli::{GlobalArgs, ProfileCreateArgs};
use crate::profile::ProfileDir;

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

pub fn inspect(global: &GlobalArgs) -> anyhow::Result<()> {
    let name = selected(global, "profile-inspect")?;
    let profile = ProfileDir::new(&global.profile_conf_dir).load(&name)?;
    println!("{}", serde_json::to_string_pretty(&profile)?);
    Ok(())
}
