//! `rootfs` and `baseos`: Dockerfiles (or OCI images) into tagged, bootable
//! root filesystems.

use firebuild_builder::{
    BuildOptions, BuildOutput, CancelToken, ImageOptions, ImageType, Limits, SandboxSettings,
};
use std::sync::Arc;

use super::require_root;
use crate::cli::{BaseosArgs, BuildArgs, GlobalArgs, Isolation, RootfsArgs};
use crate::settings::Settings;
use firebuild_host::guest_init;
use firebuild_host::wiring::registry_config;
use firebuild_step_vm::{MicroVmSteps, StepVmConfig};

pub fn rootfs(global: &GlobalArgs, args: &RootfsArgs) -> anyhow::Result<()> {
    require_root("rootfs")?;
    if args.legacy.given() {
        tracing::warn!(
            "--bootstrap-* flags are ignored: RUN steps run in the sandbox, or in microVMs with --isolation microvm"
        );
    }
    let settings = crate::settings::resolve(global, &args.build.settings)?;
    let store = settings.image_store()?;
    let cancel = cancel_on_signals()?;
    let output = match (&args.dockerfile, &args.docker_image) {
        (_, Some(reference)) => firebuild_builder::build_from_image(
            &store,
            &ImageOptions {
                reference: reference.clone(),
                tag: args.tag.clone(),
                platform: Some(args.build.platform.clone()),
                filesystem_size_mib: args.build.filesystem_size_mbs,
                cache_dir: settings.cache()?.to_owned(),
                registry: registry_config(&settings)?,
                vminit: guest_init::locate()?,
                cancel,
                unpacked_limit: settings.unpacked_size_limit,
                pushed: None,
                pulled: None,
                source_date_epoch: super::source_date_epoch()?,
            },
        )?,
        (Some(dockerfile), None) => {
            let mut options = build_options(&settings, dockerfile, &args.build, cancel)?;
            options.kind = ImageType::Rootfs;
            options.tag = Some(args.tag.clone());
            options.target_stage.clone_from(&args.dockerfile_stage);
            firebuild_builder::build(&store, &options)?
        }
        (None, None) => {
            anyhow::bail!("`firebuild rootfs` needs --dockerfile SRC or --docker-image REF")
        }
    };
    summarize(&output);
    Ok(())
}

pub fn baseos(global: &GlobalArgs, args: &BaseosArgs) -> anyhow::Result<()> {
    require_root("baseos")?;
    let settings = crate::settings::resolve(global, &args.build.settings)?;
    let store = settings.image_store()?;
    let mut options = build_options(
        &settings,
        &args.dockerfile,
        &args.build,
        cancel_on_signals()?,
    )?;
    options.kind = ImageType::Baseos;
    options.tag.clone_from(&args.tag);
    summarize(&firebuild_builder::build(&store, &options)?);
    Ok(())
}

/// Ctrl-C or SIGTERM stops the build cleanly: no tag, no mounts, no processes.
pub(super) fn cancel_on_signals() -> anyhow::Result<CancelToken> {
    let cancel = CancelToken::new();
    cancel.cancel_on_signals()?;
    Ok(cancel)
}

fn build_options(
    settings: &Settings,
    dockerfile: &str,
    args: &BuildArgs,
    cancel: CancelToken,
) -> anyhow::Result<BuildOptions> {
    let mut options = BuildOptions::new(dockerfile, settings.cache()?, guest_init::locate()?);
    options.context_dir.clone_from(&args.context);
    options.build_args = args.build_arg.iter().cloned().collect();
    options.platform = Some(args.platform.clone());
    options.no_cache = args.no_cache;
    options.filesystem_size_mib = args.filesystem_size_mbs;
    options
        .pre_build_commands
        .clone_from(&args.pre_build_command);
    options
        .post_build_commands
        .clone_from(&args.post_build_command);
    options.registry = registry_config(settings)?;
    options.unpacked_limit = settings.unpacked_size_limit;
    options.source_date_epoch = super::source_date_epoch()?;
    options.cancel = cancel;
    options.sandbox = SandboxSettings {
        ids: None,
        network: args.network,
        limits: Limits {
            memory: args.memory,
            cpu_quota_us: args.cpus,
            pids: args.pids_limit,
        },
    };
    options.isolation = match settings.isolation {
        Isolation::Sandbox => firebuild_builder::Isolation::Sandbox,
        Isolation::Microvm => {
            let (id, kernel) =
                firebuild_host::wiring::choose_kernel(settings, args.vmlinux_id.as_deref())?;
            tracing::info!(kernel = %id, "RUN steps run in microVMs");
            // The step VMs have a run cache of their own: `ls` does not
            // show them.
            let mut step_settings = settings.clone();
            step_settings.run_cache = settings.cache_dir.join("step-vms");
            firebuild_builder::Isolation::MicroVm(Arc::new(MicroVmSteps::new(StepVmConfig {
                runtime: firebuild_host::wiring::vm_runtime(&step_settings, false)?,
                cni: firebuild_host::wiring::cni_runtime(settings),
                vmm: settings.vmm,
                kernel,
                kernel_id: id,
            })?))
        }
    };
    Ok(options)
}

/// The engine logs the summary (tag, size, time); stdout gets the tag alone,
/// for scripts.
fn summarize(output: &BuildOutput) {
    println!("{}", output.tag);
}
