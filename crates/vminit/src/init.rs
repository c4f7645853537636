//! The init's sequence: mounts, metadata, network and files, then the
//! entrypoint (or the image's own init).

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use firebuild_metadata::boot::init_failure;
use firebuild_metadata::guest::GuestNetwork;
use firebuild_metadata::{GuestMetadata, InitMode};

use crate::build_step::{self, BuildStepError};
use crate::cmdline::{CmdlineError, KernelCmdline, MetadataSource};
use crate::files::{self, FileError};
use crate::log;
use crate::metadata::{self, MetadataError};
use crate::mounts::{self, MountError, MountOutcome};
use crate::network::{self, NetError};
use crate::overlay::{self, OverlayError};
use crate::process::{self, StartError, StopPolicy, DEFAULT_STOP_TIMEOUT};
use crate::signals::{self, SignalError};
use crate::users::{self, UserError};
use crate::volumes::{self, VolumeError};

/// The image's own init for `init-mode: image`.
pub const IMAGE_INIT: &str = "/sbin/init";

/// How long a config drive's device node may take to appear.
const DRIVE_WAIT: Duration = Duration::from_secs(5);

/// A failure of the init, with the exit status it reports to the host.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting the early filesystems: {0}")]
    Mounts(#[from] MountError),
    #[error("assembling the overlay root: {0}")]
    Overlay(#[from] OverlayError),
    #[error("mounting the volumes: {0}")]
    Volumes(#[from] VolumeError),
    #[error("setting up the build step: {0}")]
    BuildStep(#[from] BuildStepError),
    #[error("reading the guest metadata: {0}")]
    Cmdline(#[from] CmdlineError),
    #[error("reading the guest metadata: {0}")]
    Metadata(#[from] MetadataError),
    #[error("reaching MMDS: {0}")]
    MmdsNetwork(#[source] NetError),
    #[error("configuring the VM: {0}")]
    Configure(#[from] ConfigureError),
    #[error("starting the entrypoint: {0}")]
    Start(#[from] StartFailure),
}

impl InitError {
    /// The exit status reported for this failure.
    pub fn code(&self) -> i32 {
        match self {
            InitError::Mounts(_)
            | InitError::Overlay(_)
            | InitError::Volumes(_)
            | InitError::BuildStep(_) => init_failure::MOUNTS,
            InitError::Cmdline(_) | InitError::Metadata(_) | InitError::MmdsNetwork(_) => {
                init_failure::METADATA
            }
            InitError::Configure(_) => init_failure::CONFIGURE,
            InitError::Start(_) => init_failure::START,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Network(#[from] NetError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Users(#[from] UserError),
    #[error("setting the hostname to {name:?}: {source}")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartFailure {
    #[error(transparent)]
    Process(#[from] StartError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("STOPSIGNAL: {0}")]
    StopSignal(#[from] SignalError),
    #[error("handing over to the image's {IMAGE_INIT}: {0}")]
    ImageInit(#[source] io::Error),
}

/// Picks the hostname: the metadata's, else the one from `ip=`, else the
/// kernel's current one (unless unset), else the VM id.
pub fn choose_hostname(
    meta: &GuestMetadata,
    kernel_ip_hostname: Option<&str>,
    current: &str,
) -> String {
    [
        meta.local_hostname.as_str(),
        kernel_ip_hostname.unwrap_or(""),
        if current == "(none)" { "" } else { current },
        meta.vmm_id.as_str(),
    ]
    .into_iter()
    .map(str::trim)
    .find(|h| !h.is_empty())
    .unwrap_or("firebuild")
    .to_string()
}

/// Name servers from every metadata interface (deduplicated, in order),
/// else the ones the kernel learned from `ip=` (/proc/net/pnp text).
pub fn collect_nameservers(network: &GuestNetwork, pnp: &str) -> Result<Vec<IpAddr>, FileError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for iface in network.interfaces.values() {
        for ns in files::parse_nameservers(&iface.nameservers)? {
            if seen.insert(ns) {
                out.push(ns);
            }
        }
    }
    if out.is_empty() {
        out = files::nameservers_from_pnp(pnp);
    }
    Ok(out)
}

fn kernel_hostname() -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: the buffer is valid for its length; it is NUL-terminated below.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr(), buf.len() - 1) };
    if rc != 0 {
        return String::new();
    }
    // SAFETY: the last byte was never written, so the string is terminated.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn set_kernel_hostname(name: &str) -> Result<(), ConfigureError> {
    // SAFETY: pointer and length describe `name`'s bytes.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(ConfigureError::Hostname {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes sure fds 0, 1 and 2 are open, on /dev/console when the kernel
/// could not give init a console (no /dev/console in the image before
/// devtmpfs was mounted).
pub fn ensure_console() {
    ensure_console_in("/dev");
}

/// [`ensure_console`] with devtmpfs mounted on `dev_dir`.
pub fn ensure_console_in(dev_dir: &str) {
    for fd in 0..3 {
        // SAFETY: F_GETFD on a small integer has no side effects.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        for dev in ["console", "ttyS0", "null"] {
            let dev = format!("{dev_dir}/{dev}");
            if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
                // SAFETY: both descriptors are valid; dup2 onto the missing fd.
                unsafe { libc::dup2(f.as_raw_fd(), fd) };
                break;
            }
        }
    }
}

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// What [`connect`] found and set up.
struct Connected {
    meta: GuestMetadata,
    hostname: String,
    own_ip: Option<std::net::Ipv4Addr>,
    nameservers: Vec<IpAddr>,
}

/// Configures the VM from its metadata; returns the metadata and hostname.
fn configure(cmdline: &KernelCmdline) -> Result<(GuestMetadata, String), InitError> {
    let Connected {
        meta,
        hostname,
        own_ip,
        nameservers,
    } = connect(cmdline)?;
    let root = Path::new("/");
    (|| -> Result<(), FileError> {
        files::write_hostname(root, &hostname)?;
        files::write_hosts(root, &hostname, own_ip.map(IpAddr::V4))?;
        files::write_resolv(root, &nameservers)?;
        files::ensure_nsswitch(root)?;
        // The run's user sources it; an unknown user leaves it root's.
        let owner =
            users::resolve_user_in_root(root, &meta.user).map_or((0, 0), |u| (u.uid, u.gid));
        files::write_env_script(root, &meta.env, owner)
    })()
    .map_err(ConfigureError::from)?;

    if meta.users.values().any(|u| !u.ssh_keys.trim().is_empty()) {
        let passwd = users::read_passwd(root).map_err(ConfigureError::from)?;
        for (name, user) in &meta.users {
            if !user.ssh_keys.trim().is_empty() {
                files::install_ssh_keys(root, name, &user.ssh_keys, &passwd)
                    .map_err(ConfigureError::from)?;
            }
        }
    }
    Ok((meta, hostname))
}

/// Reads the metadata, sets the hostname and brings the network up; writes
/// nothing into the root.
fn connect(cmdline: &KernelCmdline) -> Result<Connected, InitError> {
    let source = cmdline.metadata_source()?;
    let kernel_ip = cmdline.ip_config();

    network::loopback_up().map_err(ConfigureError::from)?;
    if source == MetadataSource::Mmds {
        if let Some(dev) =
            network::prepare_for_mmds(kernel_ip.as_ref()).map_err(InitError::MmdsNetwork)?
        {
            log::info(format_args!(
                "{dev} gets a link-local address to reach MMDS"
            ));
        }
    }
    let meta = metadata::read(&source, DRIVE_WAIT)?;
    log::info(format_args!("metadata of VM {:?} read", meta.vmm_id));

    let hostname = choose_hostname(
        &meta,
        kernel_ip.as_ref().and_then(|k| k.hostname.as_deref()),
        &kernel_hostname(),
    );
    files::validate_hostname(&hostname).map_err(ConfigureError::from)?;
    set_kernel_hostname(&hostname)?;

    let own_ip =
        network::configure(&meta.network, kernel_ip.as_ref()).map_err(ConfigureError::from)?;
    let nameservers = collect_nameservers(&meta.network, &read_proc("/proc/net/pnp"))
        .map_err(ConfigureError::from)?;
    Ok(Connected {
        meta,
        hostname,
        own_ip,
        nameservers,
    })
}

/// Build mode: sets the step's root up, then serves the host through the
/// agent until the host ends the VM. Returns the agent's exit status.
fn run_build_step(scratch: &str) -> Result<i32, InitError> {
    build_step::mount_step_filesystems(scratch)?;
    ensure_console();
    let cmdline = KernelCmdline::parse(&read_proc("/proc/cmdline"));
    log::set_verbose(cmdline.debug());
    let Connected {
        meta,
        hostname,
        nameservers,
        ..
    } = connect(&cmdline)?;
    let resolv: String = nameservers
        .iter()
        .map(|ns| format!("nameserver {ns}\n"))
        .collect();
    build_step::bind_etc_files(
        &build_step::hosts_file(&hostname),
        (!resolv.is_empty()).then_some(resolv.as_str()),
    )?;
    let agent = crate::agent::start(&meta, &hostname)
        .ok_or_else(|| StartFailure::ImageInit(io::Error::other("the agent did not start")))?;
    log::info(format_args!(
        "build step root ready; the agent runs as pid {agent}"
    ));
    let stop = StopPolicy {
        signal: libc::SIGKILL,
        timeout: DEFAULT_STOP_TIMEOUT,
    };
    Ok(process::supervise(agent, stop))
}

/// Starts the entrypoint and supervises it; returns its exit code.
fn run_entrypoint(meta: &GuestMetadata, hostname: &str) -> Result<i32, InitError> {
    let root = Path::new("/");
    let argv = process::parse_argv(&meta.entrypoint_json).map_err(StartFailure::from)?;
    let stop = StopPolicy {
        signal: signals::parse_signal(&meta.stop_signal).map_err(StartFailure::from)?,
        timeout: match meta.stop_timeout_seconds {
            0 => DEFAULT_STOP_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        },
    };
    let user = users::resolve_user_in_root(root, &meta.user).map_err(StartFailure::from)?;
    let workdir = process::prepare_workdir(root, &meta.workdir).map_err(StartFailure::from)?;
    let env = process::build_env(&meta.env, hostname, &user.home);
    let path_env = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(process::DEFAULT_PATH, |(_, v)| v.as_str());
    let program =
        process::find_executable(root, &argv[0], path_env, &workdir).map_err(StartFailure::from)?;
    log::info(format_args!(
        "starting {argv:?} as {}:{} in {workdir}",
        user.uid, user.gid
    ));
    let pid = process::spawn(&program, &argv, &env, &user, &workdir).map_err(StartFailure::from)?;
    let code = process::supervise(pid, stop);
    log::info(format_args!("the entrypoint exited with status {code}"));
    process::kill_all_and_reap();
    Ok(code)
}

/// Agent mode: no entrypoint; the host starts every process through the
/// agent. A stop (ctrl-alt-del, SIGTERM) ends the agent and with it the VM;
/// processes the agent started are killed on the way out.
fn serve_agent(agent: Option<i32>) -> Result<i32, InitError> {
    let agent = agent
        .ok_or_else(|| StartFailure::ImageInit(io::Error::other("the agent did not start")))?;
    let stop = StopPolicy {
        signal: libc::SIGKILL,
        timeout: DEFAULT_STOP_TIMEOUT,
    };
    let code = process::supervise(agent, stop);
    process::kill_all_and_reap();
    Ok(code)
}

/// Hands PID 1 over to the image's own init; returns only on failure.
fn exec_image_init() -> InitError {
    if let Err(e) = signals::unblock_all() {
        return StartFailure::ImageInit(e).into();
    }
    signals::reset_dispositions();
    let err = Command::new(IMAGE_INIT).arg0(IMAGE_INIT).exec();
    let _ = signals::block_handled();
    StartFailure::ImageInit(err).into()
}

/// The whole init. Returns the exit status to report: the entrypoint's, or
/// a failure's distinct code. The caller powers off with it.
pub fn run() -> Result<i32, InitError> {
    // SAFETY: umask(2) has no preconditions.
    unsafe { libc::umask(0o022) };
    // Ctrl-alt-del becomes SIGINT to PID 1: the host's graceful stop.
    // SAFETY: reboot(2) with RB_DISABLE_CAD only changes that behaviour.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };

    let root = overlay::switch_root_if_asked()?;
    if let overlay::Root::Layers { scratch } = &root {
        return run_build_step(scratch);
    }
    let mounted = mounts::mount_early();
    ensure_console();
    for (target, outcome) in mounted? {
        match outcome {
            MountOutcome::Unsupported(why) => {
                log::warn(format_args!("{target} not mounted: {why}"))
            }
            MountOutcome::SkippedNotEmpty => {
                log::info(format_args!("{target} has image files: no tmpfs mounted"))
            }
            _ => {}
        }
    }
    let cmdline = KernelCmdline::parse(&read_proc("/proc/cmdline"));
    log::set_verbose(cmdline.debug());
    if root == overlay::Root::Overlay {
        log::info(format_args!(
            "root: an overlay on the read-only image, its writes on the scratch disk"
        ));
    }

    let (meta, hostname) = configure(&cmdline)?;
    volumes::mount_all(Path::new("/"), &meta.volumes, DRIVE_WAIT)?;
    let agent = crate::agent::start(&meta, &hostname);
    if let Some(pid) = agent {
        log::info(format_args!("the agent runs as pid {pid}"));
    }
    match meta.init_mode {
        InitMode::Image => Err(exec_image_init()),
        InitMode::Entrypoint => run_entrypoint(&meta, &hostname),
        InitMode::Agent => serve_agent(agent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_metadata::guest::GuestNetworkInterface;

    #[test]
    fn hostname_priority() {
        let mut meta = GuestMetadata {
            vmm_id: "vm-1".into(),
            ..Default::default()
        };
        assert_eq!(choose_hostname(&meta, None, "(none)"), "vm-1");
        assert_eq!(choose_hostname(&meta, None, "kernelname"), "kernelname");
        assert_eq!(
            choose_hostname(&meta, Some("fromip"), "kernelname"),
            "fromip"
        );
        meta.local_hostname = "quiet-otter".into();
        assert_eq!(choose_hostname(&meta, Some("fromip"), "k"), "quiet-otter");
        let empty = GuestMetadata::default();
        assert_eq!(choose_hostname(&empty, None, ""), "firebuild");
    }

    #[test]
    fn nameservers_from_interfaces_then_pnp() {
        let mut net = GuestNetwork::default();
        assert_eq!(
            collect_nameservers(&net, "nameserver 10.0.0.1\n").unwrap(),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        for (k, ns) in [("a", "1.1.1.1,8.8.8.8"), ("b", "8.8.8.8, 9.9.9.9")] {
            net.interfaces.insert(
                k.into(),
                GuestNetworkInterface {
                    nameservers: ns.into(),
                    ..Default::default()
                },
            );
        }
        let got: Vec<String> = collect_nameservers(&net, "nameserver 10.0.0.1\n")
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["1.1.1.1", "8.8.8.8", "9.9.9.9"]);
        net.interfaces.get_mut("a").unwrap().nameservers = "bogus".into();
        assert!(collect_nameservers(&net, "").is_err());
    }

    #[test]
    fn failure_codes_are_distinct() {
        let e: InitError = CmdlineError::NoMetadataArg.into();
        assert_eq!(e.code(), init_failure::METADATA);
        assert!(e.to_string().starts_with("reading the guest metadata: "));
        let e: InitError = StartFailure::from(StartError::NoCommand).into();
        assert_eq!(e.code(), init_failure::START);
        let e: InitError = ConfigureError::from(FileError::BadHostname("x y".into())).into();
        assert_eq!(e.code(), init_failure::CONFIGURE);
        let e: InitError = MountError::MountInfo(io::Error::other("x")).into();
        assert_eq!(e.code(), init_failure::MOUNTS);
    }
}
