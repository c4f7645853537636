//! `firebuild`: the command-line edge. Parses flags, sets up logging, runs
//! the command, and reports errors as one clear line.

mod cli;
mod commands;
mod format;
mod guest_init;
mod logging;
mod profile;
mod settings;

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
            ExitCode::FAILURE
        }
    }
}
