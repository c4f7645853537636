//! The backend's settings (from the profile and the `run` flags), and the
//! per-VM `firebuild_firecracker::LaunchConfig` made from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jail_ids::IdRange;
use firebuild_firecracker::{
    JailUser, JailerConfig, LaunchConfig, LaunchMode, DEFAULT_CHROOT_BASE, DEFAULT_SOCKET_TIMEOUT,
};

/// Settings of the Firecracker backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary: a path, or a name looked up in `PATH`.
    pub firecracker: PathBuf,
    /// The `jailer` binary of the same release: a path or a name in `PATH`.
    pub jailer: PathBuf,
    /// `--chroot-base-dir` of the jailer. Must be on the same filesystem as
    /// the run cache: the VM's files are hard-linked into the jail.
    pub chroot_base: PathBuf,
    /// One uid/gid every jailed Firecracker runs as; `None` (the default)
    /// gives each VM an id of its own from `id_range`.
    pub user: Option<JailUser>,
    /// Where per-VM jail ids come from (see [`crate::jail_ids`]).
    pub id_range: IdRange,
    /// `--no-jailer`: run Firecracker directly as the caller (development
    /// hosts only; no chroot, no privilege drop, no cgroups).
    pub no_jailer: bool,
    /// How long Firecracker may take to open its API socket (and the jailer
    /// to set the jail up).
    pub socket_timeout: Duration,
    /// Bound on each API request.
    pub request_timeout: Duration,
    /// Bound on `PUT /snapshot/create`, which writes all guest memory.
    pub snapshot_timeout: Duration,
}

impl Default for FirecrackerConfig {
    /// `firecracker` and `jailer` from `PATH`, chroot base `/srv/jailer`,
    /// the host's default jail user, jailed.
    fn default() -> Self {
        FirecrackerConfig {
            firecracker: PathBuf::from("firecracker"),
            jailer: PathBuf::from("jailer"),
            chroot_base: PathBuf::from(DEFAULT_CHROOT_BASE),
            user: None,
            id_range: crate::jail_ids::DEFAULT_RANGE,
            no_jailer: false,
            socket_timeout: DEFAULT_SOCKET_TIMEOUT,
            request_timeout: firebuild_firecracker::DEFAULT_REQUEST_TIMEOUT,
            snapshot_timeout: Duration::from_secs(300),
        }
    }
}

impl FirecrackerConfig {
    /// The fixed jail user, or for checks that start no VM the first id of
    /// the range.
    pub fn jail_user(&self) -> JailUser {
        self.user.unwrap_or(JailUser {
            uid: self.id_range.first,
            gid: self.id_range.first,
        })
    }

    /// How to start Firecracker for one VM: `firecracker` is the resolved
    /// binary, `run_dir` the VM's run directory (holds the API socket when
    /// not jailed), `netns` the namespace of its tap, `user` the jail user
    /// (default [`Self::jail_user`]).
    pub(crate) fn launch_config(
        &self,
        firecracker: PathBuf,
        jailer: Option<PathBuf>,
        run_dir: &Path,
        netns: Option<PathBuf>,
        user: Option<JailUser>,
    ) -> LaunchConfig {
        let mode = match jailer {
            Some(jailer) if !self.no_jailer => LaunchMode::Jailed(JailerConfig {
                user: user.unwrap_or_else(|| self.jail_user()),
                netns,
                ..JailerConfig::new(jailer, &self.chroot_base)
            }),
            _ => LaunchMode::Direct {
                run_dir: run_dir.to_owned(),
                netns,
            },
        };
        LaunchConfig {
            socket_timeout: self.socket_timeout,
            request_timeout: self.request_timeout,
            ..LaunchConfig::new(firecracker, mode)
        }
    }
}

/// Resolves a command name the way `execvp` does: a path with a `/` is
/// taken as is, a bare name is looked up in `PATH`. Only executable regular
/// files count.
pub(crate) fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.as_os_str().is_empty() {
        return None;
    }
    if binary.components().count() > 1 {
        return is_executable(binary).then(|| binary.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jailed_unless_no_jailer() {
        let config = FirecrackerConfig {
            user: Some(JailUser {
                uid: 1234,
                gid: 5678,
            }),
            chroot_base: "/jails".into(),
            ..Default::default()
        };
        let lc = config.launch_config(
            "/bin/fc".into(),
            Some("/bin/jailer".into()),
            Path::new("/run/vm1"),
            Some("/run/netns/vm1".into()),
            None,
        );
        match lc.mode {
            LaunchMode::Jailed(j) => {
                assert_eq!(j.jailer, Path::new("/bin/jailer"));
                assert_eq!(j.chroot_base, Path::new("/jails"));
                assert_eq!((j.user.uid, j.user.gid), (1234, 5678));
                assert_eq!(j.netns.as_deref(), Some(Path::new("/run/netns/vm1")));
                assert!(j.new_pid_ns);
            }
            other => panic!("{other:?}"),
        }
        let direct = FirecrackerConfig {
            no_jailer: true,
            ..config
        };
        let lc = direct.launch_config(
            "/bin/fc".into(),
            Some("/bin/jailer".into()),
            Path::new("/run/vm1"),
            None,
            None,
        );
        assert_eq!(
            lc.mode,
            LaunchMode::Direct {
                run_dir: "/run/vm1".into(),
                netns: None
            }
        );
    }

    #[test]
    fn default_user_is_never_root() {
        assert_ne!(FirecrackerConfig::default().jail_user().uid, 0);
    }

    #[test]
    fn binaries_resolve_like_execvp() {
        assert!(find_binary(Path::new("sh")).is_some());
        assert!(find_binary(Path::new("/bin/sh")).is_some());
        assert!(find_binary(Path::new("no-such-binary-firebuild")).is_none());
        assert!(find_binary(Path::new("")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(find_binary(&plain).is_none());
    }
}
