//! The sandbox's filesystem, as a list of [`MountOp`]s its PID 1 runs
//! inside its user and mount namespaces (each with a description for
//! errors).
//!
//! What a RUN step sees, as runc gives a container: the stage's overlay,
//! mounted from an idmapped view of the layer cache; a tmpfs `/dev` with
//! only the standard nodes (bound from the host's, nothing else can be
//! opened: every filesystem mounted in the user namespace is `nodev`, and
//! binds are remounted `nodev`); devpts and shm; a fresh `/proc` with runc's
//! masked and read-only paths; a read-only `/sys`; the step's resolv.conf,
//! hosts and `RUN --mount`s.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::child::MountOp;
use crate::error::{BuildError, Result};
use crate::mountns::OverlayMount;

/// runc's (and Docker's) masked paths under `/proc`: unreadable in the
/// sandbox.
pub const PROC_MASKED: &[&str] = &[
    "asound",
    "acpi",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];

/// The same under `/sys`.
pub const SYS_MASKED: &[&str] = &["firmware", "devices/virtual/powercap"];

/// runc's (and Docker's) read-only paths under `/proc`.
pub const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// The device nodes of the sandbox's `/dev`, bound from the host's.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A list of mount ops and what each does.
#[derive(Default)]
pub struct Plan {
    pub ops: Vec<MountOp>,
    pub what: Vec<String>,
}

fn c(p: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(p.as_ref().to_vec())
        .map_err(|_| BuildError::Sandbox("a sandbox path contains a NUL byte".into()))
}

fn cp(p: &Path) -> Result<CString> {
    c(p.as_os_str().as_bytes())
}

impl Plan {
    fn push(&mut self, op: MountOp, what: String) {
        self.ops.push(op);
        self.what.push(what);
    }

    /// A filesystem of type `fstype` on `target`.
    pub fn fs(
        &mut self,
        fstype: &str,
        target: &Path,
        flags: libc::c_ulong,
        data: &str,
        shown: &str,
    ) -> Result<()> {
        self.push(
            MountOp::Mount {
                source: c(fstype)?,
                target: cp(target)?,
                fstype: Some(c(fstype)?),
                flags,
                data: (!data.is_empty()).then(|| c(data)).transpose()?,
                cwd: None,
                optional: false,
            },
            format!("mounting {fstype} on {shown}"),
        );
        Ok(())
    }

    /// An overlay (options from [`crate::mountns::OverlaySpec::options`]).
    pub fn overlay(&mut self, o: &OverlayMount, target: &Path, shown: &str) -> Result<()> {
        self.push(
            MountOp::Mount {
                source: c("overlay")?,
                target: cp(target)?,
                fstype: Some(c("overlay")?),
                flags: o.flags | libc::MS_NODEV,
                data: Some(c(&o.data)?),
                cwd: Some(cp(&o.cwd)?),
                optional: false,
            },
            format!("mounting the layers of {shown}"),
        );
        Ok(())
    }

    /// A bind of `source` on `target`, remounted `nodev` (and read-only).
    pub fn bind(
        &mut self,
        source: &Path,
        target: &Path,
        readonly: bool,
        shown: &str,
    ) -> Result<()> {
        let what = format!("binding {} on {shown}", source.display());
        self.push(
            MountOp::Mount {
                source: cp(source)?,
                target: cp(target)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
                cwd: None,
                optional: false,
            },
            what.clone(),
        );
        let ro = if readonly { libc::MS_RDONLY } else { 0 };
        self.push(
            MountOp::Mount {
                source: c("none")?,
                target: cp(target)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV | ro,
                data: None,
                cwd: None,
                optional: false,
            },
            what,
        );
        Ok(())
    }

    pub fn mkdir(&mut self, path: &Path, mode: libc::mode_t, shown: &str) -> Result<()> {
        self.push(
            MountOp::Mkdir {
                path: cp(path)?,
                mode,
            },
            format!("creating {shown}"),
        );
        Ok(())
    }

    pub fn file(&mut self, path: &Path, shown: &str) -> Result<()> {
        self.push(
            MountOp::File { path: cp(path)? },
            format!("creating {shown}"),
        );
        Ok(())
    }

    pub fn symlink(&mut self, target: &str, path: &Path, shown: &str) -> Result<()> {
        self.push(
            MountOp::Symlink {
                target: c(target)?,
                path: cp(path)?,
            },
            format!("creating the symlink {shown}"),
        );
        Ok(())
    }

    /// `/dev`: a tmpfs with the standard nodes, devpts and shm.
    pub fn dev(&mut self, dev: &Path) -> Result<()> {
        self.fs(
            "tmpfs",
            dev,
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            "mode=755,size=65536k",
            "/dev",
        )?;
        for name in DEVICES {
            let node = dev.join(name);
            let shown = format!("/dev/{name}");
            self.file(&node, &shown)?;
            // Not remounted nodev: these binds are the nodes.
            self.push(
                MountOp::Mount {
                    source: cp(&Path::new("/dev").join(name))?,
                    target: cp(&node)?,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                    cwd: None,
                    optional: false,
                },
                format!("binding /dev/{name} on {shown}"),
            );
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
            ("core", "/proc/kcore"),
        ] {
            self.symlink(target, &dev.join(name), &format!("/dev/{name}"))?;
        }
        self.mkdir(&dev.join("pts"), 0o755, "/dev/pts")?;
        self.fs(
            "devpts",
            &dev.join("pts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
            "/dev/pts",
        )?;
        self.mkdir(&dev.join("shm"), 0o1777, "/dev/shm")?;
        self.fs(
            "tmpfs",
            &dev.join("shm"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "mode=1777,size=65536k",
            "/dev/shm",
        )
    }

    /// A fresh `/proc` on `proc` with runc's masked and read-only paths.
    pub fn proc(&mut self, proc: &Path) -> Result<()> {
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        self.fs("proc", proc, nosuid, "", "/proc")?;
        for p in PROC_READ_ONLY {
            self.push(
                MountOp::ReadOnly {
                    path: cp(&proc.join(p))?,
                    flags: nosuid,
                },
                format!("making /proc/{p} read-only"),
            );
        }
        self.masks(proc, "/proc", PROC_MASKED)
    }

    /// A read-only `/sys` on `sys`: a fresh sysfs in the sandbox's own
    /// network namespace (it shows only that namespace's interfaces), else
    /// a read-only view of the host's.
    pub fn sys(&mut self, sys: &Path, own_net: bool) -> Result<()> {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
        if own_net {
            self.fs("sysfs", sys, flags, "", "/sys")?;
        } else {
            self.bind(Path::new("/sys"), sys, true, "/sys")?;
        }
        self.masks(sys, "/sys", SYS_MASKED)
    }

    fn masks(&mut self, dir: &Path, shown: &str, names: &[&str]) -> Result<()> {
        for p in names {
            self.push(
                MountOp::Mask {
                    path: cp(&dir.join(p))?,
                    dev_null: c("/dev/null")?,
                },
                format!("masking {shown}/{p}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_proc_and_sys_plans() {
        let root = Path::new("/r");
        let mut p = Plan::default();
        p.dev(&root.join("dev")).unwrap();
        p.proc(&root.join("proc")).unwrap();
        p.sys(&root.join("sys"), true).unwrap();
        assert_eq!(p.ops.len(), p.what.len());
        let shown = p.what.join("\n");
        for want in [
            "mounting tmpfs on /dev",
            "binding /dev/null on /dev/null",
            "mounting devpts on /dev/pts",
            "mounting proc on /proc",
            "making /proc/sys read-only",
            "making /proc/sysrq-trigger read-only",
            "masking /proc/kcore",
            "mounting sysfs on /sys",
            "masking /sys/firmware",
        ] {
            assert!(shown.contains(want), "{want} missing from\n{shown}");
        }
        // No device node is created: every node is a bind of the host's.
        assert!(!shown.contains("mknod"));
        let mut host = Plan::default();
        host.sys(&root.join("sys"), false).unwrap();
        assert!(
            host.what[0].starts_with("binding /sys on /sys"),
            "{:?}",
            host.what
        );
    }
}
