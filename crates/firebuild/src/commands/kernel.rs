//! `kernel build|add|ls|rm|inspect|push|pull`: the kernel store, and
//! kernels carried through OCI registries as artifacts.

use std::collections::BTreeMap;

use firebuild_host::wiring::registry_config;
use firebuild_kernel::KernelStore;
use firebuild_oci::{ArtifactFile, ImageRef, Registry};

use crate::cli::{GlobalArgs, KernelCommand, SettingsArgs};
use crate::settings::Settings;

/// The artifact type and layer media type of a pushed kernel.
const KERNEL_ARTIFACT: &str = "application/vnd.firebuild.kernel.v1";
const KERNEL_LAYER: &str = "application/vnd.firebuild.kernel.vmlinux.v1";
/// Annotations a pushed kernel carries (what `kernel inspect` knows).
const VERSION_ANNOTATION: &str = "io.firebuild.kernel.version";
const CONFIG_ANNOTATION: &str = "io.firebuild.kernel.config-digest";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Far above any microVM vmlinux (ours is ~40 MiB): a bound, not a guess.
const MAX_KERNEL: u64 = 1 << 30;

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
        KernelCommand::Push {
            id,
            reference,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let digest = push(&settings, id, &reference.parse()?)?;
            tracing::info!(kernel = %id, to = %reference, %digest, "pushed");
            println!("{digest}");
        }
        KernelCommand::Pull {
            reference,
            id,
            settings,
        } => {
            let settings = crate::settings::resolve(global, settings)?;
            let info = pull(&settings, &reference.parse()?, id)?;
            tracing::info!(kernel = %id, from = %reference, "pulled");
            println!("{}", info.entry.path.display());
        }
    }
    Ok(())
}

fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    Ok(Registry::new(settings.cache()?, registry_config(settings)?).with_progress(true))
}

/// Pushes kernel `id`, its version and config digest as annotations.
fn push(settings: &Settings, id: &str, target: &ImageRef) -> anyhow::Result<firebuild_oci::Digest> {
    let info = settings.kernel_store()?.inspect(id)?;
    if info.intact == Some(false) {
        anyhow::bail!(
            "kernel {id} no longer matches its recorded digest ({}): add it again before pushing",
            info.entry.path.display()
        );
    }
    let mut annotations = BTreeMap::from([(TITLE_ANNOTATION.to_owned(), id.to_owned())]);
    let metadata = info.metadata.as_ref();
    if let Some(version) = metadata.and_then(|m| m.version.clone()) {
        annotations.insert(VERSION_ANNOTATION.into(), version);
    }
    if let Some(config) = metadata.and_then(|m| m.config_digest.clone()) {
        annotations.insert(CONFIG_ANNOTATION.into(), config);
    }
    let artifact = ArtifactFile {
        artifact_type: KERNEL_ARTIFACT,
        layer_media_type: KERNEL_LAYER,
        file: &info.entry.path,
        annotations,
    };
    let registry = registry(settings)?;
    Ok(firebuild_oci::block_on(
        registry.push_artifact(&artifact, target),
    )??)
}

/// Pulls a kernel artifact and adds it as `id`, checked as `kernel add`
/// checks a file.
fn pull(
    settings: &Settings,
    reference: &ImageRef,
    id: &str,
) -> anyhow::Result<firebuild_kernel::store::KernelInfo> {
    let store = settings.kernel_store()?;
    // Refused before the download, as `kernel add` would refuse it after.
    if store.resolve(id).is_ok() {
        anyhow::bail!(
            "a kernel with id {id:?} exists: choose another --id, or `firebuild kernel rm {id}` first"
        );
    }
    let registry = registry(settings)?;
    let pulled =
        firebuild_oci::block_on(registry.pull_artifact(reference, KERNEL_ARTIFACT, MAX_KERNEL))??;
    let config_digest = pulled.annotations.get(CONFIG_ANNOTATION).cloned();
    Ok(store.add_pulled(
        &pulled.blob,
        id,
        &format!("{reference}@{}", pulled.digest),
        config_digest,
    )?)
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
