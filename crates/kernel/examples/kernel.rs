//! A stand-alone `kernel` command with the same surface as
//! `firebuild kernel build|add|ls|rm|inspect`: the reference for wiring the
//! library into the CLI.
//!
//! ```sh
//! cargo run -p firebuild-kernel --example kernel -- --root /tmp/kernels \
//!     build --source /usr/src/linux-source-6.1.tar.xz --id vmlinux-6.1
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use firebuild_kernel::{store::format_table, KernelStore};

#[derive(Parser)]
struct Cli {
    /// Kernel storage root.
    #[arg(long, default_value = "/firecracker/vmlinux")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a vmlinux from a source tarball or tree.
    Build {
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        id: String,
        /// Kconfig fragment merged over the project's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Parallel jobs (default: number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Replace an existing kernel with the same ID.
        #[arg(long)]
        force: bool,
    },
    /// Register an existing x86_64 ELF vmlinux.
    Add {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// List stored kernels.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a kernel.
    Rm { id: String },
    /// Show a kernel's metadata and re-check its file.
    Inspect { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = KernelStore::new(cli.root);
    let result = run(&store, cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(store: &KernelStore, command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Build {
            source,
            id,
            config,
            jobs,
            force,
        } => {
            let mut opts = store.build_options(&id, source)?;
            opts.config = config;
            opts.jobs = jobs;
            let info = store.build(&id, &opts, force, &mut |p| eprintln!("{p}"))?;
            let secs = info
                .metadata
                .as_ref()
                .and_then(|m| m.build_seconds)
                .unwrap_or_default();
            println!(
                "built kernel {} (Linux {}) in {secs:.0}s: {}",
                info.entry.id,
                info.entry.version.as_deref().unwrap_or("?"),
                info.entry.path.display()
            );
        }
        Command::Add { file, id, force } => {
            let info = store.add_file(&file, &id, force)?;
            println!(
                "added kernel {}: {}",
                info.entry.id,
                info.entry.path.display()
            );
        }
        Command::Ls { json } => {
            let entries = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", format_table(&entries));
            }
        }
        Command::Rm { id } => store.remove(&id)?,
        Command::Inspect { id } => {
            println!("{}", serde_json::to_string_pretty(&store.inspect(&id)?)?)
        }
    }
    Ok(())
}
