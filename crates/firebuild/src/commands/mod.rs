//! One module per command group; each takes its parsed arguments and the
//! global flags, and does the work through the library crates.

mod dockerfile;
mod image;
mod kernel;
mod network;
mod profile;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// A command a later piece of work fills in.
#[derive(Debug, thiserror::Error)]
#[error("`firebuild {0}` is not implemented yet")]
pub struct NotImplemented(pub &'static str);

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    match &cli.command {
        Command::ProfileCreate(args) => profile::create(global, args),
        Command::ProfileLs => profile::list(global),
        Command::ProfileInspect => profile::inspect(global),
        Command::Image(command) => image::run(global, command),
        Command::Baseos(_) => Err(NotImplemented("baseos").into()),
        Command::Rootfs(args) => {
            if args.legacy.given() {
                tracing::warn!("--bootstrap-* flags are ignored: builds run in a sandbox on the host, not in a VM");
            }
            Err(NotImplemented("rootfs").into())
        }
        Command::Run(_) => Err(NotImplemented("run").into()),
        Command::Ls(_) => Err(NotImplemented("ls").into()),
        Command::Inspect(_) => Err(NotImplemented("inspect").into()),
        Command::Kill(_) => Err(NotImplemented("kill").into()),
        Command::Purge(_) => Err(NotImplemented("purge").into()),
        Command::Logs(_) => Err(NotImplemented("logs").into()),
        Command::Kernel(command) => kernel::run(global, command),
        Command::Dockerfile(command) => dockerfile::run(global, command),
        Command::Network(command) => network::run(global, command),
    }?;
    Ok(ExitCode::SUCCESS)
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
