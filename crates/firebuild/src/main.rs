//! `firebuild`: the command-line edge. Parses flags, sets up logging, runs
//! the command, and reports errors as one clear line.

mod cli;
mod commands;
mod format;
mod guest_init;
mod logging;
mod profile;
mod settings;
mod step_vm;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.global);
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` joins the error chain: "what failed: why".
            eprintln!("error: {err:#}");
            // A command the guest could not run exits as Docker's would
            // (126 cannot run, 127 not found).
            match err.downcast_ref::<commands::GuestFailure>() {
                Some(f) => ExitCode::from(f.failure.code.clamp(1, 255) as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}
