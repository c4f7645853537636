//! `firebuild`: the command-line edge. Parses flags, sets up logging, runs
//! the command, and reports errors as one clear line.

mod cli;
mod commands;
mod format;
mod logging;
mod settings;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let cli = parse_cli();
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

/// The command line; `--version` also names the guest init builds install
/// (looked up only when asked: that reads the binary).
fn parse_cli() -> cli::Cli {
    let mut command = cli::Cli::command();
    if std::env::args_os().any(|a| a == "--version" || a == "-V") {
        let init = match firebuild_host::guest_init::locate() {
            Ok(path) => path.display().to_string(),
            Err(e) => format!("none ({e:#})"),
        };
        // Once per process, and clap wants a 'static string.
        let text = format!("{}\nguest init: {init}", env!("CARGO_PKG_VERSION"));
        command = command.version(&*text.leak());
    }
    let matches = command.get_matches();
    cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
