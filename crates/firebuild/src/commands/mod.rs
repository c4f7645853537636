//! One module per command group; each takes its parsed arguments and the
//! global flags, and does the work through the library crates.

mod build;
mod dockerfile;
mod guest;
mod image;
mod image_transfer;
mod kernel;
mod network;
mod profile;
mod snapshot;
mod vm;
mod volume;

use std::process::ExitCode;

pub use guest::GuestFailure;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    match &cli.command {
        Command::ProfileCreate(args) => done(profile::create(global, args)),
        Command::ProfileLs => done(profile::list(global)),
        Command::ProfileInspect => done(profile::inspect(global)),
        Command::Image(command) => done(image::run(global, command)),
        Command::Volume(command) => done(volume::run(global, command)),
        Command::Baseos(args) => done(build::baseos(global, args)),
        Command::Rootfs(args) => done(build::rootfs(global, args)),
        Command::Run(args) => vm::run(global, args),
        Command::Ls(args) => vm::ls(global, args),
        Command::Inspect(args) => vm::inspect(global, args),
        Command::Kill(args) => vm::kill(global, args),
        Command::Purge(args) => vm::purge(global, args),
        Command::Logs(args) => vm::logs(global, args),
        Command::Exec(args) => guest::exec(global, args),
        Command::Cp(args) => guest::cp(global, args),
        Command::Wait(args) => guest::wait(global, args),
        Command::Pause(args) => snapshot::pause(global, args),
        Command::Resume(args) => snapshot::resume(global, args),
        Command::Snapshot(command) => done(snapshot::run(global, command)),
        Command::Kernel(command) => done(kernel::run(global, command)),
        Command::Dockerfile(command) => done(dockerfile::run(global, command)),
        Command::Network(command) => done(network::run(global, command)),
    }
}

/// Privileged work (namespaces, mounts, netlink, taps, KVM) needs root: say
/// so before doing anything.
pub fn require_root(command: &str) -> anyhow::Result<()> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!("`firebuild {command}` needs root (it uses namespaces, mounts and network devices): run it with sudo")
    }
}

/// `SOURCE_DATE_EPOCH` from the environment (unset or empty: none).
pub(super) fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => match v.parse::<i64>() {
            Ok(epoch) if epoch >= 0 => Ok(Some(epoch)),
            _ => anyhow::bail!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970; unset it or give one"
            ),
        },
        Err(_) => Ok(None),
    }
}
