//! `dockerfile parse`: shows what the parser understood of a Dockerfile.

use crate::cli::{DockerfileCommand, GlobalArgs};

pub fn run(global: &GlobalArgs, command: &DockerfileCommand) -> anyhow::Result<()> {
    match command {
        DockerfileCommand::Parse {
            source,
            json,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let options = firebuild_source::SourceOptions::new(settings.sources_cache()?);
            let loaded = firebuild_source::load_str(source, &options)?;
            let dockerfile = firebuild_dockerfile::parse(&loaded.dockerfile, &loaded.name)?;
            if *json {
                println!("{}", firebuild_dockerfile::to_json(&dockerfile));
            } else {
                print!("{}", firebuild_dockerfile::render(&dockerfile));
            }
            Ok(())
        }
    }
}
