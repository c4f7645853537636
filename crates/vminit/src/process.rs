//! Starting the entrypoint with Docker's semantics, supervising it as PID 1
//! (reaping, forwarding signals, the stop sequence), and cleaning up.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::files::under;
use crate::log;
use crate::signals;
use crate::users::ExecUser;

/// Docker's PATH when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Grace period after the stop signal when the metadata gives none.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the init waits for other processes to die once the entrypoint
/// has exited and everything was sent SIGKILL.
const REAP_ALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no command to run: the image has no ENTRYPOINT or CMD and none was given (firebuild run ... -- CMD)")]
    NoCommand,
    #[error("entrypoint-json {json:?} is not a JSON array of strings: {reason}")]
    BadEntrypoint { json: String, reason: String },
    #[error("{program:?}: executable file not found in $PATH ({path})")]
    NotFound { program: String, path: String },
    #[error("{program:?}: not an executable file")]
    NotExecutable { program: String },
    #[error("preparing WORKDIR {dir}: {source}")]
    Workdir {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("starting {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Parses the metadata's `entrypoint-json` (the resolved ENTRYPOINT + CMD).
pub fn parse_argv(json: &str) -> Result<Vec<String>, StartError> {
    if json.trim().is_empty() {
        return Err(StartError::NoCommand);
    }
    let argv: Vec<String> = serde_json::from_str(json).map_err(|e| StartError::BadEntrypoint {
        json: json.to_string(),
        reason: e.to_string(),
    })?;
    if argv.is_empty() {
        return Err(StartError::NoCommand);
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(StartError::BadEntrypoint {
            json: json.to_string(),
            reason: "an argument contains a NUL byte".into(),
        });
    }
    Ok(argv)
}

/// The entrypoint's environment as Docker builds it: PATH (default when
/// unset), HOSTNAME, the image ENV merged with the run's `--env` (already
/// merged by the runtime), and HOME from passwd when unset.
pub fn build_env(
    env: &BTreeMap<String, String>,
    hostname: &str,
    home: &str,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if !env.contains_key("PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.contains_key("HOSTNAME") && !hostname.is_empty() {
        out.push(("HOSTNAME".into(), hostname.into()));
    }
    out.extend(
        env.iter()
            .filter(|(k, _)| !k.is_empty() && !k.contains(['=', '\0']))
            .map(|(k, v)| (k.clone(), v.replace('\0', ""))),
    );
    if !env.contains_key("HOME") {
        out.push(("HOME".into(), home.into()));
    }
    out
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program as the container runtime does: a name with a `/` is
/// taken as is (relative to the working directory), otherwise searched in
/// the entrypoint's PATH. `root` prefixes every probe (for tests); the
/// returned path is the guest path.
pub fn find_executable(
    root: &Path,
    program: &str,
    path_env: &str,
    workdir: &str,
) -> Result<PathBuf, StartError> {
    if program.contains('/') {
        let guest = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            Path::new(workdir).join(program)
        };
        let probe = under(root, &guest.to_string_lossy());
        if !probe.exists() {
            return Err(StartError::NotFound {
                program: program.into(),
                path: "given with a path".into(),
            });
        }
        if !is_executable_file(&probe) {
            return Err(StartError::NotExecutable {
                program: program.into(),
            });
        }
        return Ok(guest);
    }
    for dir in path_env.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let guest = if dir.starts_with('/') {
            Path::new(dir).join(program)
        } else {
            Path::new(workdir).join(dir).join(program)
        };
        if is_executable_file(&under(root, &guest.to_string_lossy())) {
            return Ok(guest);
        }
    }
    Err(StartError::NotFound {
        program: program.into(),
        path: format!("PATH={path_env}"),
    })
}

/// Creates WORKDIR when missing (as Docker does, owned by root) and returns
/// the directory to start in.
pub fn prepare_workdir(root: &Path, workdir: &str) -> Result<String, StartError> {
    let dir = if workdir.is_empty() { "/" } else { workdir };
    let path = under(root, dir);
    if !path.is_dir() {
        std::fs::create_dir_all(&path).map_err(|source| StartError::Workdir {
            dir: dir.into(),
            source,
        })?;
    }
    Ok(dir.to_string())
}

/// Starts the entrypoint: stdin from /dev/null, stdout/stderr inherited
/// (the console), its own session, the user's groups and ids, the working
/// directory and environment given. Returns its pid.
pub fn spawn(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
    user: &ExecUser,
    workdir: &str,
) -> Result<libc::pid_t, StartError> {
    let stdio = ProcessStdio {
        stdin: Stdio::null(),
        stdout: Stdio::inherit(),
        stderr: Stdio::inherit(),
        controlling_tty: false,
    };
    start(
        program,
        argv,
        env,
        user,
        workdir,
        stdio,
        &ProcessLimits::default(),
    )
    .map(|c| c.id() as libc::pid_t)
}

/// Limits a started process takes on (an OCI process's rlimits and
/// `noNewPrivileges`); the default sets nothing.
#[derive(Debug, Clone, Default)]
pub struct ProcessLimits {
    /// `(resource, soft, hard)` for setrlimit(2).
    pub rlimits: Vec<(libc::c_int, u64, u64)>,
    pub no_new_privileges: bool,
    /// A pod container's root: the process gets a mount namespace of its
    /// own and is chrooted there (the working directory is inside it).
    pub root: Option<PathBuf>,
}

/// The setrlimit(2) resource of an OCI rlimit name (`RLIMIT_NOFILE`).
pub fn rlimit_resource(name: &str) -> Option<libc::c_int> {
    let r = match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    };
    Some(r as libc::c_int)
}

/// Where a started process's stdio goes.
pub struct ProcessStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Make stdin (a pseudo-terminal's slave) the session's controlling
    /// terminal, so Ctrl-C and window sizes reach the process.
    pub controlling_tty: bool,
}

/// Starts `program` in a session of its own with the user's groups and
/// ids, the working directory, environment, stdio and limits given. The
/// caller (PID 1's supervision loop, or the agent) reaps it.
pub fn start(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
    user: &ExecUser,
    workdir: &str,
    stdio: ProcessStdio,
    limits: &ProcessLimits,
) -> Result<std::process::Child, StartError> {
    let mut cmd = Command::new(program);
    if let Some(first) = argv.first() {
        cmd.arg0(first);
    }
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr);
    let groups: Vec<libc::gid_t> = user.supplementary.clone();
    let (uid, gid) = (user.uid, user.gid);
    let tty = stdio.controlling_tty;
    let rlimits = limits.rlimits.clone();
    let no_new_privileges = limits.no_new_privileges;
    // The standard library changes directory before the pre-exec hook, so
    // inside a container root the hook does it (after the chroot).
    let nul_free = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| StartError::Spawn {
            program: program.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"),
        })
    };
    let root = limits.root.as_deref().map(nul_free).transpose()?;
    let workdir = nul_free(Path::new(workdir))?;
    // SAFETY: the closure only makes async-signal-safe system calls and
    // touches memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The init keeps its handled signals blocked; the mask survives
            // exec, and the standard library does not reset it (nor any
            // disposition but SIGPIPE's).
            signals::reset_dispositions();
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
            // A new session: without a controlling terminal, as Docker runs
            // a container process without a TTY, or with the one given.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(root) = &root {
                // The container's mounts stay its own; the VM's root is
                // out of its view.
                if libc::unshare(libc::CLONE_NEWNS) < 0
                    || libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) < 0
                    || libc::chroot(root.as_ptr()) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chdir(workdir.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Before the ids change: raising a hard limit needs root.
            for &(resource, soft, hard) in &rlimits {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource as _, &limit) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(gid) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(uid) < 0 {
                return Err(io::Error::last_os_error());
            }
            if no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The Child handle is never waited on through std: PID 1 reaps with
    // waitpid(-1), the agent with waitpid(pid).
    cmd.spawn().map_err(|source| StartError::Spawn {
        program: program.display().to_string(),
        source,
    })
}

/// The entrypoint's exit status as a shell reports it: the exit code, or
/// 128 + the signal number when killed by a signal.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// How the init stops the entrypoint on request.
#[derive(Debug, Clone, Copy)]
pub struct StopPolicy {
    /// The image's STOPSIGNAL.
    pub signal: libc::c_int,
    /// How long to wait after it before SIGKILL.
    pub timeout: Duration,
}

/// Reaps every exited child; returns the main child's wait status once seen.
fn reap(main: libc::pid_t) -> Option<libc::c_int> {
    let mut main_status = None;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid(2) with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return main_status;
        }
        if pid == main {
            main_status = Some(status);
        }
    }
}

fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain kill(2); failure (already gone) is fine.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Supervises the entrypoint until it exits: reaps zombies, forwards
/// signals, and on a stop request (SIGINT/SIGTERM/SIGPWR to PID 1) sends the
/// stop signal, then SIGKILL after the grace period. Returns its exit code.
/// The handled signals must be blocked (see [`signals::block_handled`]).
pub fn supervise(main: libc::pid_t, stop: StopPolicy) -> i32 {
    let mut deadline: Option<Instant> = None;
    let mut killed = false;
    loop {
        if let Some(status) = reap(main) {
            return exit_code(status);
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let sig = match signals::wait(timeout) {
            Ok(sig) => sig,
            Err(e) => {
                log::warn(format_args!("waiting for signals: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        };
        match sig {
            Some(libc::SIGCHLD) => {}
            Some(s) if signals::STOP_REQUESTS.contains(&s) => {
                if deadline.is_none() && !killed {
                    log::info(format_args!(
                        "stop requested: sending signal {} to the entrypoint, SIGKILL in {:?}",
                        stop.signal, stop.timeout
                    ));
                    deadline = Some(Instant::now() + stop.timeout);
                }
                kill(main, stop.signal);
            }
            Some(s) => kill(main, s),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            log::warn(format_args!(
                "the entrypoint did not exit within {:?} of the stop signal: killing it",
                stop.timeout
            ));
            // Its whole process group: it runs in its own session.
            kill(-main, libc::SIGKILL);
            kill(main, libc::SIGKILL);
            deadline = None;
            killed = true;
        }
    }
}

/// Kills every remaining process (PID 1 is spared by the kernel) and reaps
/// them, waiting at most a few seconds for ones stuck in the kernel.
pub fn kill_all_and_reap() {
    kill(-1, libc::SIGKILL);
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid(2).
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            return; // ECHILD: nothing left.
        }
        if pid == 0 {
            if start.elapsed() >= REAP_ALL_TIMEOUT {
                log::warn(format_args!("some processes did not exit after SIGKILL"));
                return;
            }
            let _ = signals::wait(Some(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn argv_from_entrypoint_json() {
        assert_eq!(
            parse_argv(r#"["/bin/sh","-c","echo hi"]"#).unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert!(matches!(parse_argv(""), Err(StartError::NoCommand)));
        assert!(matches!(parse_argv("[]"), Err(StartError::NoCommand)));
        assert!(matches!(
            parse_argv("\"echo\""),
            Err(StartError::BadEntrypoint { .. })
        ));
        assert!(matches!(
            parse_argv("[1,2]"),
            Err(StartError::BadEntrypoint { .. })
        ));
        assert!(matches!(
            parse_argv(r#"["a\u0000b"]"#),
            Err(StartError::BadEntrypoint { .. })
        ));
    }

    #[test]
    fn env_defaults_and_overrides() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        let e = build_env(&env, "vm1", "/home/app");
        assert_eq!(
            e,
            [
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("HOSTNAME".into(), "vm1".into()),
                ("A".into(), "1".into()),
                ("HOME".into(), "/home/app".into()),
            ]
        );
        env.insert("PATH".into(), "/opt/bin".into());
        env.insert("HOME".into(), "/data".into());
        env.insert("HOSTNAME".into(), "custom".into());
        env.insert("BAD=KEY".into(), "x".into());
        let e = build_env(&env, "vm1", "/home/app");
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["A", "HOME", "HOSTNAME", "PATH"]);
        assert!(e.contains(&("HOME".into(), "/data".into())));
    }

    fn make_exec(path: &Path, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn executable_lookup_in_path_and_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        make_exec(&root.join("usr/bin/tool"), 0o755);
        make_exec(&root.join("bin/tool"), 0o644); // not executable: skipped
        make_exec(&root.join("app/run.sh"), 0o755);
        std::fs::create_dir_all(root.join("usr/local/bin/tool")).unwrap(); // a directory: skipped
        assert_eq!(
            find_executable(root, "tool", "/usr/local/bin:/bin:/usr/bin", "/").unwrap(),
            PathBuf::from("/usr/bin/tool")
        );
        assert_eq!(
            find_executable(root, "/app/run.sh", "", "/").unwrap(),
            PathBuf::from("/app/run.sh")
        );
        assert_eq!(
            find_executable(root, "./run.sh", "", "/app").unwrap(),
            PathBuf::from("/app/./run.sh")
        );
        let e = find_executable(root, "missing", "/bin:/usr/bin", "/").unwrap_err();
        assert!(matches!(e, StartError::NotFound { .. }));
        assert!(e.to_string().contains("PATH=/bin:/usr/bin"));
        assert!(matches!(
            find_executable(root, "/bin/tool", "", "/"),
            Err(StartError::NotExecutable { .. })
        ));
        assert!(matches!(
            find_executable(root, "/nope", "", "/"),
            Err(StartError::NotFound { .. })
        ));
    }

    #[test]
    fn workdir_is_created_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare_workdir(dir.path(), "").unwrap(), "/");
        assert_eq!(prepare_workdir(dir.path(), "/srv/app").unwrap(), "/srv/app");
        assert!(dir.path().join("srv/app").is_dir());
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert!(matches!(
            prepare_workdir(dir.path(), "/file/sub"),
            Err(StartError::Workdir { .. })
        ));
    }

    #[test]
    fn exit_codes_like_a_shell() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGTERM), 128 + 15);
        assert_eq!(exit_code(libc::SIGKILL), 137);
    }

    #[test]
    fn spawn_runs_as_the_user_in_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let user = ExecUser {
            uid: 4321,
            gid: 4322,
            supplementary: vec![4323, 4324],
            home: "/".into(),
            name: None,
        };
        let script = format!(
            "echo \"$(id -u) $(id -g) $(id -G) $(pwd) $FOO sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$\" > {}; read x; echo \"stdin=$x\" >> {}",
            out.display(),
            out.display()
        );
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let env = vec![
            ("FOO".to_string(), "bar".to_string()),
            ("PATH".into(), DEFAULT_PATH.into()),
        ];
        let pid = spawn(
            Path::new("/bin/sh"),
            &argv,
            &env,
            &user,
            dir.path().to_str().unwrap(),
        )
        .unwrap();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(exit_code(status), 0);
        let text = std::fs::read_to_string(&out).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with(&format!(
                "4321 4322 4322 4323 4324 {} bar",
                dir.path().display()
            )),
            "{text}"
        );
        assert!(text.contains("stdin=\n"), "stdin is /dev/null: {text}");
        let sid = first
            .split("sid=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let pid = first.split("pid=").nth(1).unwrap();
        assert_eq!(sid, pid, "the entrypoint leads its own session");
    }

    #[test]
    fn spawn_reports_a_missing_program_and_a_bad_workdir() {
        let root = ExecUser {
            uid: 0,
            gid: 0,
            supplementary: vec![],
            home: "/".into(),
            name: None,
        };
        let e = spawn(
            Path::new("/nonexistent/prog"),
            &["prog".into()],
            &[],
            &root,
            "/",
        )
        .unwrap_err();
        assert!(matches!(e, StartError::Spawn { .. }));
        let e = spawn(
            Path::new("/bin/true"),
            &["true".into()],
            &[],
            &root,
            "/nonexistent-dir",
        )
        .unwrap_err();
        assert!(matches!(e, StartError::Spawn { .. }));
    }
}
