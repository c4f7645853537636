//! Firecracker's jailer: the jail's layout, the files staged into it, the
//! command line, the pid file, and cleanup.
//!
//! The jailer builds `<chroot_base>/<exec_file_name>/<id>/root`, copies the
//! Firecracker binary there, chroots into it, drops to `--uid/--gid` and
//! execs Firecracker. Everything the VM uses must be inside that root and
//! usable by that uid, so we hard-link (or copy) it in before starting.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupLayout, CgroupSetting, CgroupVersion};
use crate::error::{Error, Result};
use crate::spec::{check_api_id, check_vm_id, VmSpec};
use crate::transport::check_socket_path;

/// The jailer's own default chroot base.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The API socket path inside the jail (Firecracker's default).
pub const JAILED_API_SOCKET: &str = "/run/firecracker.socket";
/// uid and gid used when the host has no `firebuild` user.
pub const DEFAULT_JAIL_ID: u32 = 10000;
/// The system user whose uid/gid jailed Firecracker runs as, when present.
pub const JAIL_USER_NAME: &str = "firebuild";

/// Names of the staged files inside the jail root.
const KERNEL_NAME: &str = "vmlinux";
const INITRD_NAME: &str = "initrd";
const ROOTFS_NAME: &str = "rootfs.img";
const LOG_NAME: &str = "firecracker.log";
const METRICS_NAME: &str = "firecracker.metrics";
const CONSOLE_NAME: &str = "console.log";

/// The unprivileged identity Firecracker runs as inside the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailUser {
    pub uid: u32,
    pub gid: u32,
}

impl JailUser {
    /// The `firebuild` system user if /etc/passwd has one, else
    /// [`DEFAULT_JAIL_ID`] for both uid and gid. Never root.
    pub fn host_default() -> Self {
        fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|text| Self::from_passwd(&text, JAIL_USER_NAME))
            .filter(|u| u.uid != 0)
            .unwrap_or(JailUser {
                uid: DEFAULT_JAIL_ID,
                gid: DEFAULT_JAIL_ID,
            })
    }

    /// The uid and primary gid of `name` in a passwd file.
    pub fn from_passwd(passwd: &str, name: &str) -> Option<Self> {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(JailUser { uid, gid })
        })
    }
}

/// How to run the jailer: the profile's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailerConfig {
    /// The `jailer` binary (same release as Firecracker).
    pub jailer: PathBuf,
    /// `--chroot-base-dir`; keep it on the same filesystem as the run
    /// directories so VM files are hard-linked, not copied.
    pub chroot_base: PathBuf,
    pub user: JailUser,
    /// `--netns`: the network namespace holding the VM's tap.
    pub netns: Option<PathBuf>,
    /// `--cgroup` settings, e.g. `cpu.shares=512`.
    pub cgroups: Vec<CgroupSetting>,
    /// `--cgroup-version`; `None` picks from the host's layout.
    pub cgroup_version: Option<CgroupVersion>,
    /// `--parent-cgroup`; `None` means the jailer's default (the exec name).
    pub parent_cgroup: Option<String>,
    /// `--new-pid-ns`: Firecracker becomes pid 1 of its own pid namespace.
    pub new_pid_ns: bool,
}

impl JailerConfig {
    /// Defaults: [`JailUser::host_default`], no netns, no cgroup settings,
    /// detected cgroup version, a new pid namespace.
    pub fn new(jailer: impl Into<PathBuf>, chroot_base: impl Into<PathBuf>) -> Self {
        JailerConfig {
            jailer: jailer.into(),
            chroot_base: chroot_base.into(),
            user: JailUser::host_default(),
            netns: None,
            cgroups: Vec::new(),
            cgroup_version: None,
            parent_cgroup: None,
            new_pid_ns: true,
        }
    }
}

/// How a staged file relates to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Belongs to this VM alone (its rootfs copy, its logs): linked in and
    /// handed to the jail user, so Firecracker can write it.
    Owned,
    /// Shared with others (a stored kernel, a stored image attached
    /// read-only): linked when world-readable, else copied and the copy
    /// handed over; the original's owner and mode are never changed, so the
    /// jail user can read it but not write it.
    Shared,
    /// A volume: hard-linked (never copied: its writes must reach the file
    /// itself) and handed to the jail user, read-only or not, so the
    /// jailed Firecracker can open it; the volume is the jail user's from
    /// then on. Fails when the file is on another filesystem than the jail.
    InPlace,
}

/// One VM's jail. Serializable so a later command can find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jail {
    /// Canonical chroot base (the jailer canonicalizes it too).
    pub chroot_base: PathBuf,
    /// Canonical Firecracker binary: the jail is named after its file name.
    pub exec_file: PathBuf,
    pub vm_id: String,
    pub user: JailUser,
    /// Parent of the VM's cgroup directories.
    pub parent_cgroup: String,
}

impl Jail {
    /// Works out the jail for `vm_id`: creates the chroot base if needed,
    /// resolves symlinks as the jailer does, and checks the API socket path
    /// fits in a Unix socket address.
    pub fn new(config: &JailerConfig, firecracker: &Path, vm_id: &str) -> Result<Jail> {
        check_vm_id(vm_id)?;
        if config.user.uid == 0 || config.user.gid == 0 {
            tracing::warn!(
                uid = config.user.uid,
                gid = config.user.gid,
                "jailed Firecracker will run with root ids; set a non-root jail user"
            );
        }
        fs::create_dir_all(&config.chroot_base)
            .map_err(|e| Error::io("cannot create the chroot base", &config.chroot_base, e))?;
        let chroot_base = fs::canonicalize(&config.chroot_base)
            .map_err(|e| Error::io("cannot resolve the chroot base", &config.chroot_base, e))?;
        let exec_file = fs::canonicalize(firecracker)
            .map_err(|e| Error::io("cannot find the Firecracker binary", firecracker, e))?;
        let exec_name = file_name(&exec_file)?;
        let parent_cgroup = match &config.parent_cgroup {
            Some(p) => check_parent_cgroup(p)?,
            None => exec_name,
        };
        let jail = Jail {
            chroot_base,
            exec_file,
            vm_id: vm_id.to_string(),
            user: config.user,
            parent_cgroup,
        };
        check_socket_path(&jail.api_socket(), "chroot base (or VM id)")?;
        Ok(jail)
    }

    /// The exec file's name, which names the jail directory.
    pub fn exec_name(&self) -> String {
        file_name(&self.exec_file).unwrap_or_default()
    }

    /// `<chroot_base>/<exec_name>/<vm_id>`: everything of this jail.
    pub fn instance_dir(&self) -> PathBuf {
        self.chroot_base.join(self.exec_name()).join(&self.vm_id)
    }

    /// The jail root, `/` for the jailed Firecracker.
    pub fn root(&self) -> PathBuf {
        self.instance_dir().join("root")
    }

    /// The API socket as seen from the host.
    pub fn api_socket(&self) -> PathBuf {
        self.host_path(Path::new(JAILED_API_SOCKET))
    }

    /// The pid file the jailer writes with `--new-pid-ns`.
    pub fn pid_file(&self) -> PathBuf {
        self.root().join(format!("{}.pid", self.exec_name()))
    }

    /// Where the jailer's stderr is kept (outside the root, so the VM never sees it).
    pub fn jailer_log(&self) -> PathBuf {
        self.instance_dir().join("jailer.stderr")
    }

    /// The host path of a path inside the jail.
    pub fn host_path(&self, in_jail: &Path) -> PathBuf {
        self.root()
            .join(in_jail.strip_prefix("/").unwrap_or(in_jail))
    }

    /// Creates an empty jail root; refuses if one is left from an earlier VM.
    pub fn create(&self) -> Result<()> {
        let dir = self.instance_dir();
        if fs::symlink_metadata(&dir).is_ok() {
            return Err(Error::JailExists { path: dir });
        }
        fs::create_dir_all(self.root())
            .map_err(|e| Error::io("cannot create the jail root", self.root(), e))?;
        // Root's alone: the jail holds guest memory (a restored VM's
        // snapshot) and disks; the jailed Firecracker, chrooted into the
        // root below, never passes through it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("cannot restrict the jail", &dir, e))
    }

    /// Puts `host` into the jail root as `name` and returns its path inside
    /// the jail. Hard-links when possible (same filesystem), else copies.
    pub fn link_in(&self, host: &Path, name: &str, access: Access) -> Result<PathBuf> {
        let target = self.root().join(name);
        let meta = fs::metadata(host).map_err(|e| Error::io("cannot stage", host, e))?;
        if !meta.is_file() {
            return Err(Error::config(
                "jail",
                format!("{} is not a regular file", host.display()),
            ));
        }
        match access {
            Access::Owned => {
                if !link_or_copy(host, &target)? {
                    tracing::warn!(
                        file = %host.display(),
                        jail = %self.root().display(),
                        "copied into the jail (different filesystem): the VM writes the copy"
                    );
                }
                self.chown(&target)?;
            }
            Access::InPlace => {
                fs::hard_link(host, &target).map_err(|e| {
                    Error::config(
                        "jail",
                        format!(
                            "the volume {} cannot be linked into the jail {} ({e}): keep the volume store on the filesystem of the jailer's chroot base (--chroot-base)",
                            host.display(),
                            self.root().display()
                        ),
                    )
                })?;
                self.chown(&target)?;
            }
            Access::Shared if meta.mode() & 0o004 != 0 => {
                link_or_copy(host, &target)?;
            }
            Access::Shared => {
                // Not world-readable: give the jail user its own copy rather
                // than changing the shared original's owner.
                fs::copy(host, &target)
                    .map_err(|e| Error::io("cannot copy into the jail", &target, e))?;
                self.chown(&target)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o400))
                    .map_err(|e| Error::io("cannot chmod", &target, e))?;
            }
        }
        Ok(Path::new("/").join(name))
    }

    /// Stages every file `spec` names into the jail and returns the spec
    /// with in-jail paths, ready for [`crate::Client::configure_and_start`].
    /// Read-only drives (the root drive too) are [`Access::Shared`]: they may
    /// be a stored image other VMs use. Writable ones are [`Access::Owned`].
    /// Log, metrics and console files are created (empty) at their host
    /// paths first, so the host reads them there (when hard-linked).
    pub fn stage(&self, spec: &VmSpec) -> Result<VmSpec> {
        let mut jailed = spec.clone();
        jailed.kernel = self.link_in(&spec.kernel, KERNEL_NAME, Access::Shared)?;
        if let Some(initrd) = &spec.initrd {
            jailed.initrd = Some(self.link_in(initrd, INITRD_NAME, Access::Shared)?);
        }
        jailed.root_drive = self.link_in(
            &spec.root_drive,
            ROOTFS_NAME,
            drive_access(spec.root_read_only),
        )?;
        for (d, out) in spec.drives.iter().zip(jailed.drives.iter_mut()) {
            let name = drive_name(&d.drive_id)?;
            let access = if d.in_place {
                Access::InPlace
            } else {
                drive_access(d.read_only)
            };
            out.path = self.link_in(&d.path, &name, access)?;
        }
        for (host, name, out) in [
            (&spec.log_path, LOG_NAME, &mut jailed.log_path),
            (&spec.metrics_path, METRICS_NAME, &mut jailed.metrics_path),
            (&spec.console_path, CONSOLE_NAME, &mut jailed.console_path),
        ] {
            if let Some(host) = host {
                touch(host)?;
                *out = Some(self.link_in(host, name, Access::Owned)?);
            }
        }
        if let (Some(v), Some(out)) = (&spec.vsock, jailed.vsock.as_mut()) {
            // Firecracker creates the socket itself, inside the jail.
            let name = file_name(&v.uds_path)?;
            out.uds_path = Path::new("/").join(&name);
            check_socket_path(
                &self.host_path(&out.uds_path),
                "chroot base or vsock socket name",
            )?;
        }
        Ok(jailed)
    }

    /// Links `image` into the jail as what drive `drive_id` is re-pointed
    /// at while the VM runs (`PATCH /drives`), read-only and shared (see
    /// [`Access::Shared`]), in place of an earlier one; returns its path
    /// inside the jail. Firecracker keeps the file it had open until the
    /// re-point, so replacing the link is safe.
    pub fn link_replacement(&self, drive_id: &str, image: &Path) -> Result<PathBuf> {
        let name = replacement_name(drive_id)?;
        self.remove_replacement(drive_id)?;
        self.link_in(image, &name, Access::Shared)
    }

    /// Removes what [`Jail::link_replacement`] linked for `drive_id`.
    /// Idempotent.
    pub fn remove_replacement(&self, drive_id: &str) -> Result<()> {
        let path = self.root().join(replacement_name(drive_id)?);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// The jailer's arguments, in the order its documentation gives them.
    pub fn jailer_args(&self, config: &JailerConfig, version: CgroupVersion) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            self.vm_id.clone().into(),
            "--exec-file".into(),
            self.exec_file.clone().into(),
            "--uid".into(),
            self.user.uid.to_string().into(),
            "--gid".into(),
            self.user.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
        ];
        if let Some(netns) = &config.netns {
            args.push("--netns".into());
            args.push(netns.clone().into());
        }
        args.push("--daemonize".into());
        if config.new_pid_ns {
            args.push("--new-pid-ns".into());
        }
        args.push("--cgroup-version".into());
        args.push(version.as_arg().into());
        if let Some(parent) = &config.parent_cgroup {
            args.push("--parent-cgroup".into());
            args.push(parent.into());
        }
        for setting in &config.cgroups {
            args.push("--cgroup".into());
            args.push(setting.to_string().into());
        }
        args.push("--".into());
        args.push("--api-sock".into());
        args.push(JAILED_API_SOCKET.into());
        args
    }

    /// The jailer command. It must not run as a process group leader
    /// (`--daemonize` calls `setsid()`), so no process group is set here.
    pub fn jailer_command(&self, config: &JailerConfig, version: CgroupVersion) -> Command {
        let mut cmd = Command::new(&config.jailer);
        cmd.args(self.jailer_args(config, version));
        cmd
    }

    /// Reads the pid the jailer stored for the process it cloned.
    pub fn read_pid(&self) -> Result<u32> {
        let path = self.pid_file();
        let text = fs::read_to_string(&path).map_err(|e| Error::PidFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        parse_pid(&text).ok_or_else(|| Error::PidFile {
            path,
            reason: format!("{:?} is not a process id", text.trim()),
        })
    }

    /// Removes the jail directory and the VM's cgroup directories. Call it
    /// only once the VM's process is gone (cgroups with tasks cannot go).
    pub fn remove(&self, layout: &CgroupLayout) -> Result<()> {
        let dir = self.instance_dir();
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove the jail", dir, e)),
        }
        let removed = layout.remove_vm_dirs(&self.parent_cgroup, &self.vm_id)?;
        tracing::debug!(jail = %dir.display(), cgroups = ?removed, "jail removed");
        Ok(())
    }

    fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.user.uid), Some(self.user.gid))
            .map_err(|e| Error::io("cannot hand over to the jail user", path, e))
    }
}

/// Hard-links `src` to `dst`, or copies when linking is impossible (another
/// filesystem, or hard-link protection). Returns whether it linked.
fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(e)
            if e.raw_os_error() == Some(libc_errno::EXDEV)
                || e.raw_os_error() == Some(libc_errno::EPERM) =>
        {
            fs::copy(src, dst).map_err(|e| Error::io("cannot copy into the jail", dst, e))?;
            Ok(false)
        }
        Err(e) => Err(Error::io("cannot link into the jail", dst, e)),
    }
}

/// The errno values we react to, without a libc dependency.
mod libc_errno {
    pub const EPERM: i32 = rustix::io::Errno::PERM.raw_os_error();
    pub const EXDEV: i32 = rustix::io::Errno::XDEV.raw_os_error();
}

/// Creates `path` empty unless it exists.
fn touch(path: &Path) -> Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| Error::io("cannot create", path, e))
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::config("path", format!("{} has no UTF-8 file name", path.display())))
}

fn check_parent_cgroup(parent: &str) -> Result<String> {
    let ok = !parent.is_empty()
        && !parent.starts_with('/')
        && parent
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(Error::config(
            "parent_cgroup",
            format!("{parent:?} must be a relative path without '.' or '..'"),
        ));
    }
    Ok(parent.to_string())
}

/// Parses a pid file's content.
pub fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// The staged name of an extra drive: distinct per drive id and from the
/// root drive's; the id check keeps it one plain file name.
fn drive_name(drive_id: &str) -> Result<String> {
    check_api_id("drives.drive_id", drive_id)?;
    Ok(format!("drive-{drive_id}.img"))
}

/// Where [`Jail::stage`] puts drive `drive_id`, inside the jail.
pub fn staged_drive_path(drive_id: &str) -> Result<PathBuf> {
    Ok(Path::new("/").join(drive_name(drive_id)?))
}

fn replacement_name(drive_id: &str) -> Result<String> {
    check_api_id("drives.drive_id", drive_id)?;
    Ok(format!("drive-{drive_id}.plugged.img"))
}

/// A read-only drive may be a shared stored image: the jail user reads it
/// and never owns it. A writable one is the VM's own.
fn drive_access(read_only: bool) -> Access {
    if read_only {
        Access::Shared
    } else {
        Access::Owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nfirebuild:x:998:997::/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(
            JailUser::from_passwd(passwd, "firebuild"),
            Some(JailUser { uid: 998, gid: 997 })
        );
        assert_eq!(JailUser::from_passwd(passwd, "nobody"), None);
        assert_eq!(
            JailUser::from_passwd("firebuild:x:abc:1::/:/bin/sh", "firebuild"),
            None
        );
        assert_ne!(JailUser::host_default().uid, 0);
    }

    #[test]
    fn pid_parsing() {
        assert_eq!(parse_pid("1234"), Some(1234));
        assert_eq!(parse_pid(" 42\n"), Some(42));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("12ab"), None);
        assert_eq!(parse_pid("-5"), None);
    }

    #[test]
    fn parent_cgroup_must_stay_inside() {
        check_parent_cgroup("firebuild/vms").unwrap();
        for bad in ["", "/abs", "a/../b", "./a", "a//b"] {
            assert!(check_parent_cgroup(bad).is_err(), "{bad}");
        }
    }
}
