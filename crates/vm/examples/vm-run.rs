//! A minimal front end to the runtime, for the boot benchmark
//! (`bench/boot.sh`) and manual experiments before the `firebuild` CLI
//! wires `run`: boots a root filesystem image file with an image metadata
//! JSON file, in the foreground, and exits with the entrypoint's code.
//!
//! ```text
//! vm-run --rootfs root.ext4 --image-metadata metadata.json --kernel vmlinux \
//!        --run-cache DIR [--name N] [--rm] [--accel auto|kvm|tcg] [-- CMD...]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use firebuild_vm::{AccelPolicy, QemuConfig, QemuVmm, RunOutcome, RunSpec, Runtime, VmmChoice};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    rootfs: PathBuf,
    #[arg(long)]
    image_metadata: PathBuf,
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    run_cache: PathBuf,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    rm: bool,
    #[arg(long, default_value = "tcg")]
    accel: AccelPolicy,
    #[arg(long, default_value_t = 128)]
    mem: u32,
    #[arg(last = true)]
    command: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vm-run: {e}");
            ExitCode::from(125)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let image = serde_json::from_slice(&std::fs::read(&args.image_metadata)?)?;
    let mut spec = RunSpec::new(args.rootfs, image, args.kernel);
    spec.vmm = VmmChoice::Qemu;
    spec.name = args.name;
    spec.remove_on_exit = args.rm;
    spec.mem_mib = args.mem;
    if !args.command.is_empty() {
        spec.command = Some(args.command);
    }
    let qemu = QemuVmm::new(QemuConfig {
        accel: args.accel,
        ..QemuConfig::default()
    });
    let runtime = Runtime::with_backends(args.run_cache, vec![Arc::new(qemu)]);
    let mut stdout = std::io::stdout();
    match runtime.run(spec, &mut stdout).await? {
        RunOutcome::Exited { exit_code, .. } => {
            Ok(ExitCode::from(exit_code.map_or(137, |c| c as u8)))
        }
        RunOutcome::Detached { id } => {
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
