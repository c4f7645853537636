//! `kernel build|add|ls|rm|inspect`: the kernel store.

use firebuild_kernel::KernelStore;

use crate::cli::{GlobalArgs, KernelCommand, SettingsArgs};

fn store(global: &GlobalArgs, args: &SettingsArgs) -> anyhow::Result<KernelStore> {
    crate::settings::resolve(global, args)?.kernel_store()
}

pub fn run(global: &GlobalArgs, command: &KernelCommand) -> anyhow::Result<()> {
    match command {
        KernelCommand::Build {
            source,
            id,
            config,
            jobs,
            settings,
        } => {
            let store = store(global, settings)?;
            let mut options = store.build_options(id, source)?;
            options.config.clone_from(config);
            options.jobs = *jobs;
            let started = std::time::Instant::now();
            let compile = CompileProgress::new();
            let info = store.build(id, &options, false, &mut |progress| compile.show(progress))?;
            compile.done();
            tracing::info!(
                id = %id,
                version = info.entry.version.as_deref().unwrap_or("unknown"),
                seconds = started.elapsed().as_secs(),
                "kernel built"
            );
            println!("{}", info.entry.path.display());
        }
        KernelCommand::Add { file, id, settings } => {
            let info = store(global, settings)?.add_file(file, id, false)?;
            println!("{}", info.entry.path.display());
        }
        KernelCommand::Ls { json, settings } => {
            let entries = store(global, settings)?.list()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", firebuild_kernel::store::format_table(&entries));
            }
        }
        KernelCommand::Rm { id, settings } => store(global, settings)?.remove(id)?,
        KernelCommand::Inspect { id, settings } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&store(global, settings)?.inspect(id)?)?
            );
        }
    }
    Ok(())
}

/// The compile step's count of objects on a terminal (a spinner line);
/// nothing of it when stderr is piped, where each step is one log line.
struct CompileProgress(Option<indicatif::ProgressBar>);

impl CompileProgress {
    fn new() -> Self {
        use std::io::IsTerminal;
        CompileProgress(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        }))
    }

    fn show(&self, progress: &firebuild_kernel::Progress) {
        match (&self.0, progress.compiled) {
            (Some(bar), Some(_)) => bar.set_message(progress.to_string()),
            (None, Some(_)) => {}
            (Some(bar), None) => bar.println(progress.to_string()),
            (None, None) => tracing::info!("{progress}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
