//! `run`, `ls`, `inspect`, `kill`, `purge`, `logs`: microVMs through the
//! runtime, with both VMM backends registered and CNI networking.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use firebuild_cni::parse_port_specs;
use firebuild_metadata::InitMode;
use firebuild_store::Tag;
use firebuild_vm::{
    render_table, HealthOverrides, Interrupts, NetworkChoice, NetworkRequest, RunMetadata,
    RunOutcome, RunSpec, VmStatus,
};

use super::require_root;
use crate::cli::{GlobalArgs, InitModeArg, KillArgs, LogsArgs, LsArgs, PurgeArgs, RunArgs, VmArgs};
use crate::format;
use crate::settings::Settings;
use firebuild_host::wiring::{cni_runtime, vm_runtime};

/// Exit status of `run` when the guest reported none (killed, crashed), as a
/// shell reports a SIGKILLed process.
pub(super) const NO_GUEST_EXIT_CODE: u8 = 137;

pub(crate) fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    require_root("run")?;
    let settings = crate::settings::resolve(global, &args.settings)?;
    // Parse what can be wrong before anything is created.
    parse_port_specs(&args.port)?;
    let requested_ip: Option<IpAddr> = args
        .ip_address
        .as_deref()
        .map(|ip| {
            ip.parse()
                .with_context(|| format!("--ip-address {ip}: not an IP address"))
        })
        .transpose()?;
    let mut spec = match &args.from_snapshot {
        Some(tag) => RunSpec::from_snapshot(settings.snapshot_store()?.get(&tag.parse()?)?),
        None => boot_spec(&settings, args)?,
    };
    // A named network, published ports or a fixed address ask for a
    // network (a fork's default is its source's).
    if args.cni_network_name.is_some() || !args.port.is_empty() || requested_ip.is_some() {
        let source = match &spec.network_choice {
            NetworkChoice::On(request) => request.network.clone(),
            _ => None,
        };
        spec.network_choice = NetworkChoice::On(NetworkRequest {
            network: args.cni_network_name.clone().or(source),
            ip: requested_ip,
            ports: args.port.clone(),
        });
    }
    spec.hostname.clone_from(&args.hostname);
    spec.name.clone_from(&args.name);
    spec.daemonize = args.daemonize;
    spec.remove_on_exit = args.rm;
    spec.shutdown_timeout = args.shutdown_timeout;

    let runtime = vm_runtime(&settings, args.no_jailer)?;
    let outcome = tokio_runtime()?.block_on(async {
        let prepared = runtime.prepare(spec).await?;
        let metadata = runtime.launch(prepared).await?;
        if args.daemonize {
            return anyhow::Ok(RunOutcome::Detached { id: metadata.id });
        }
        let mut stdout = std::io::stdout();
        Ok(runtime
            .attach(metadata, &mut stdout, Interrupts::CtrlC)
            .await?)
    })?;
    match outcome {
        RunOutcome::Detached { id } => {
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        RunOutcome::Exited { exit_code, .. } => Ok(ExitCode::from(
            exit_code.map_or(NO_GUEST_EXIT_CODE, |code| code.clamp(0, 255) as u8),
        )),
    }
}

/// The spec of a VM that boots a stored image (`run --from`).
fn boot_spec(settings: &Settings, args: &RunArgs) -> anyhow::Result<RunSpec> {
    let from = args
        .from
        .as_deref()
        .context("--from or --from-snapshot is required")?;
    let tag: Tag = super::image_transfer::stored_or_pulled(settings, from)?;
    let image = settings.image_store()?.get(&tag)?;
    let (kernel_id, kernel) =
        firebuild_host::wiring::choose_kernel(settings, args.vmlinux_id.as_deref())?;
    let mut spec = RunSpec::new(image.rootfs_path(), image.metadata, kernel);
    spec.kernel_id = kernel_id;
    spec.cpus = args.cpu;
    spec.mem_mib = args.mem;
    spec.env_files.clone_from(&args.env_file);
    spec.env = args.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    spec.command = (!args.command.is_empty()).then(|| args.command.clone());
    spec.identity_files.clone_from(&args.identity_file);
    spec.ssh_user.clone_from(&args.ssh_user);
    spec.kernel_args.clone_from(&args.kernel_args);
    spec.vmm = settings.vmm;
    spec.rootfs_mode = args.rootfs_mode;
    spec.disk_size = args.disk_size;
    if !args.volume.is_empty() {
        let volumes = settings.volume_store()?;
        spec.volumes = args
            .volume
            .iter()
            .map(|v| firebuild_vm::volumes::resolve(v, &volumes))
            .collect::<Result<_, _>>()?;
    }
    spec.health = HealthOverrides {
        disabled: args.health.no_healthcheck,
        cmd: args.health.health_cmd.clone(),
        interval: args.health.health_interval,
        timeout: args.health.health_timeout,
        start_period: args.health.health_start_period,
        start_interval: args.health.health_start_interval,
        retries: args.health.health_retries,
    };
    spec.init_mode = match args.init_mode {
        InitModeArg::Entrypoint => InitMode::Entrypoint,
        InitModeArg::Image => InitMode::Image,
    };
    Ok(spec)
}

pub fn ls(global: &GlobalArgs, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::settings::resolve(global, &args.settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let vms = tokio_runtime()?.block_on(runtime.list())?;
    let mut rows: Vec<_> = vms.iter().map(RunMetadata::summary).collect();
    // Health states come from the agents of running VMs with a check, asked
    // all at once.
    std::thread::scope(|s| {
        let asks: Vec<_> = vms
            .iter()
            .zip(rows.iter_mut())
            .filter(|(vm, _)| vm.status == VmStatus::Running && vm.has_healthcheck)
            .filter_map(|(vm, row)| {
                let endpoint = runtime.agent_endpoint_of(vm)?;
                Some((row, s.spawn(move || super::guest::health(&endpoint))))
            })
            .collect();
        for (row, ask) in asks {
            row.health = Some(match ask.join().ok().flatten() {
                Some(h) => h.status.as_str().to_owned(),
                None => "health unknown".to_owned(),
            });
        }
    });
    if args.json || global.log_as_json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        print!("{}", render_table(&rows, format::size));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(global: &GlobalArgs, args: &VmArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::settings::resolve(global, &args.settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let metadata = tokio_runtime()?.block_on(runtime.inspect(&args.vmm_id))?;
    let mut shown = serde_json::to_value(&metadata)?;
    shown["disk_bytes"] = metadata.disk_usage().into();
    if metadata.status == VmStatus::Running && metadata.has_healthcheck {
        let health = runtime
            .agent_endpoint_of(&metadata)
            .and_then(|e| super::guest::health(&e));
        shown["health"] = match health {
            Some(h) => crate::format::docker_health(&h),
            None => serde_json::json!({ "Status": "unknown: the agent did not answer" }),
        };
    }
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(ExitCode::SUCCESS)
}

pub fn kill(global: &GlobalArgs, args: &KillArgs) -> anyhow::Result<ExitCode> {
    require_root("kill")?;
    let settings = crate::settings::resolve(global, &args.settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let metadata =
        tokio_runtime()?.block_on(runtime.kill(&args.vmm_id, Some(args.shutdown_timeout)))?;
    // The VM is gone: give its address and tap back now rather than at purge.
    if metadata.network.is_some() && metadata.status == VmStatus::Exited {
        cni_runtime(&settings).teardown_vm_network(&metadata.id, false)?;
    }
    tracing::info!(vm = %metadata.id, exit_code = ?metadata.exit_code, "stopped");
    Ok(ExitCode::SUCCESS)
}

pub fn purge(global: &GlobalArgs, args: &PurgeArgs) -> anyhow::Result<ExitCode> {
    require_root("purge")?;
    let settings = crate::settings::resolve(global, &args.settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let tokio = tokio_runtime()?;
    let report = tokio.block_on(runtime.purge())?;
    for id in &report.removed {
        tracing::info!(vm = %id, "purged");
    }
    // Network state whose VM directory is already gone (a crash between
    // CNI ADD and the run metadata, or a run cache removed by hand).
    let live: Vec<String> = tokio
        .block_on(runtime.list())?
        .into_iter()
        .filter(|vm| vm.status != VmStatus::Exited)
        .map(|vm| vm.id)
        .collect();
    let cni = cni_runtime(&settings);
    for orphan in cni.find_orphans(|id| live.iter().any(|l| l == id))? {
        cni.teardown_vm_network(&orphan.vm_id, false)?;
        tracing::info!(vm = %orphan.vm_id, "released orphaned network");
    }
    if report.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (id, reason) in &report.failed {
        eprintln!("error: could not purge {id}: {reason}");
    }
    Ok(ExitCode::FAILURE)
}

pub fn logs(global: &GlobalArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::settings::resolve(global, &args.settings)?;
    let runtime = vm_runtime(&settings, false)?;
    let mut stdout = std::io::stdout();
    tokio_runtime()?.block_on(runtime.logs(&args.vmm_id, args.follow, &mut stdout))?;
    Ok(ExitCode::SUCCESS)
}
