//! The RUN sandbox.
//!
//! [`run_in_root`] runs one command inside a stage's root filesystem, which
//! the caller has mounted (an overlay) on a private-mount-namespace worker
//! thread (see [`crate::mountns`]). The worker prepares the mount points and
//! the mounts that need no new PID or network namespace (`/dev`, devpts,
//! shm, resolv.conf, hosts, `RUN --mount` binds); then a child is cloned
//! into new mount, PID, UTS, IPC and cgroup namespaces (and a new network
//! namespace for `--network=none`). That child is PID 1: it mounts `/proc`
//! and a read-only `/sys`, pivots into the root, starts the command with
//! Docker's default capabilities and no-new-privileges, and reaps until the
//! command exits. When it exits the kernel kills everything left in the PID
//! namespace, and its mounts go with the mount namespace; the worker then
//! detaches its own mounts and removes the mount points it had to create,
//! so nothing of the sandbox stays in the image.

mod child;

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use crate::error::{BuildError, Result};
use crate::fsutil::{clean_rel, Root, Scope};
use crate::mountns::{bind_readonly, mount, unmount};
use child::{ChildPlan, ChildStep};

/// How many output lines a failing RUN reports.
pub const TAIL_LINES: usize = 20;

/// A flag that stops the build: set it (e.g. from a signal handler) and the
/// running step is killed and the build returns [`BuildError::Interrupted`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Cancels on SIGINT and SIGTERM (the signals stop being fatal to the
    /// process, so the build can clean up and return).
    pub fn cancel_on_signals(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&self.0))?;
        }
        Ok(())
    }
}

/// Network of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network (Docker's build default).
    Host,
    /// A new, empty network namespace with only loopback.
    None,
}

/// A `RUN --mount` prepared by the engine: a host directory (or file) to
/// bind on `target`.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path in the image.
    pub target: String,
    pub readonly: bool,
}

/// The user a command runs as, resolved through the image's passwd/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub argv: Vec<String>,
    /// `KEY=value`, final.
    pub env: Vec<String>,
    /// Absolute working directory in the image (must exist).
    pub cwd: String,
    pub creds: Credentials,
    pub network: Network,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    /// Host files copied to `/etc/resolv.conf` and `/etc/hosts` for the step.
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
}

/// How a command ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Exit status (128+N when killed by signal N).
    pub code: i32,
    /// The last [`TAIL_LINES`] lines of output.
    pub tail: Vec<String>,
}

/// Docker's default capability set.
const DEFAULT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// A mount point the sandbox needed; removed after the step if it had to
/// be created and is still empty.
enum Made {
    Dir(String),
    File(String),
}

/// Runs `spec` in `root` (the stage's merged filesystem, mounted on this
/// private-mount-namespace thread). Output lines go to `on_line` as they
/// come. `scratch` is a private directory for the step's temporary files.
pub fn run_in_root(
    root_path: &Path,
    scratch: &Path,
    spec: &RunSpec,
    on_line: &mut dyn FnMut(&str),
    cancel: &CancelToken,
) -> Result<RunOutcome> {
    let root =
        Root::open(root_path, Scope::InRoot).map_err(BuildError::errno("opening", root_path))?;
    let mut made: Vec<Made> = Vec::new();
    let mut mounted: Vec<PathBuf> = Vec::new();
    let result = (|| {
        let prepared = prepare(&root, scratch, spec, &mut made, &mut mounted)?;
        run_child(&root, spec, prepared, on_line, cancel)
    })();
    for target in mounted.iter().rev() {
        if let Err(e) = unmount(target, true) {
            tracing::warn!(path = %target.display(), error = %e, "could not detach a sandbox mount");
        }
    }
    cleanup_made(&root, &made);
    result
}

struct Prepared {
    proc_target: PathBuf,
    sys_target: PathBuf,
}

/// Creates mount points (through the root, so image symlinks cannot send
/// them outside) and mounts what the worker can.
fn prepare(
    root: &Root,
    scratch: &Path,
    spec: &RunSpec,
    made: &mut Vec<Made>,
    mounted: &mut Vec<PathBuf>,
) -> Result<Prepared> {
    let proc_target = ensure_dir(root, "proc", made)?;
    let sys_target = ensure_dir(root, "sys", made)?;
    let dev = ensure_dir(root, "dev", made)?;
    mount_dev(&dev, mounted)?;
    if !exists_in_root(root, "tmp") {
        // No /tmp in the image: give the step a private one that is not kept.
        let tmp = ensure_dir(root, "tmp", made)?;
        mount(
            Some(Path::new("tmpfs")),
            &tmp,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        )
        .map_err(|e| BuildError::Sandbox(format!("mounting /tmp: {e}")))?;
        mounted.push(tmp);
    }
    for (file, source) in [
        ("etc/resolv.conf", &spec.resolv_conf),
        ("etc/hosts", &spec.hosts),
    ] {
        let Some(source) = source else { continue };
        // A private copy: the step may write it; the image keeps its own.
        let copy = scratch.join(file.replace('/', "_"));
        std::fs::copy(source, &copy).map_err(BuildError::io("copying", source))?;
        let Some(target) = ensure_file(root, file, made)? else {
            tracing::debug!(file, "image has a dangling symlink here; not providing it");
            continue;
        };
        mount(Some(&copy), &target, None, libc::MS_BIND, None)
            .map_err(|e| BuildError::Sandbox(format!("providing /{file}: {e}")))?;
        mounted.push(target);
    }
    for m in &spec.mounts {
        let rel = clean_rel(&m.target);
        let is_dir = std::fs::metadata(&m.source)
            .map(|md| md.is_dir())
            .unwrap_or(true);
        let target = if is_dir {
            ensure_dir(root, &rel, made)?
        } else {
            ensure_file(root, &rel, made)?.ok_or_else(|| {
                BuildError::Sandbox(format!("mount target {} is a dangling symlink", m.target))
            })?
        };
        let r = if m.readonly {
            bind_readonly(&m.source, &target)
        } else {
            mount(
                Some(&m.source),
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
        };
        r.map_err(|e| {
            BuildError::Sandbox(format!(
                "mounting {} on {}: {e}",
                m.source.display(),
                m.target
            ))
        })?;
        mounted.push(target);
    }
    Ok(Prepared {
        proc_target,
        sys_target,
    })
}

fn exists_in_root(root: &Root, rel: &str) -> bool {
    root.open_at(rel, OFlags::PATH).is_ok()
}

/// The host path of directory `rel` in the root, creating it if missing.
fn ensure_dir(root: &Root, rel: &str, made: &mut Vec<Made>) -> Result<PathBuf> {
    let mut created = Vec::new();
    let fd = root
        .mkdir_all(rel, 0o755, None, &mut created)
        .map_err(|e| {
            BuildError::Sandbox(format!("creating mount point /{rel} in the image: {e}"))
        })?;
    made.extend(created.into_iter().map(Made::Dir));
    root.host_path_of(&fd)
        .map_err(|e| BuildError::Sandbox(format!("resolving /{rel} in the image: {e}")))
}

/// The host path of file `rel` in the root, creating an empty one if
/// missing; `None` when the name is a dangling symlink.
fn ensure_file(root: &Root, rel: &str, made: &mut Vec<Made>) -> Result<Option<PathBuf>> {
    let err =
        |e: rustix::io::Errno| BuildError::Sandbox(format!("preparing /{rel} in the image: {e}"));
    if let Ok(fd) = root.open_at(rel, OFlags::PATH) {
        return root.host_path_of(&fd).map(Some).map_err(err);
    }
    let (parent, name) = match crate::fsutil::split_last(rel) {
        Some(x) => x,
        None => return Ok(None),
    };
    let mut created = Vec::new();
    let dir = root
        .mkdir_all(parent, 0o755, None, &mut created)
        .map_err(err)?;
    made.extend(created.into_iter().map(Made::Dir));
    match rustix::fs::openat(
        &dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    ) {
        Ok(_) => {}
        Err(rustix::io::Errno::EXIST) => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    made.push(Made::File(rel.to_owned()));
    let fd = root
        .open_at(rel, OFlags::PATH | OFlags::NOFOLLOW)
        .map_err(err)?;
    root.host_path_of(&fd).map(Some).map_err(err)
}

/// Removes the mount points made for the step, innermost first, only while
/// they are still empty (the step may have put something there).
fn cleanup_made(root: &Root, made: &[Made]) {
    for m in made.iter().rev() {
        let (rel, is_dir) = match m {
            Made::Dir(r) => (r, true),
            Made::File(r) => (r, false),
        };
        let Ok(Some((dir, name))) = root.parent_of(rel) else {
            continue;
        };
        if is_dir {
            let _ = rustix::fs::unlinkat(&dir, &name, rustix::fs::AtFlags::REMOVEDIR);
        } else if let Ok(Some(st)) = crate::fsutil::lstat_at(&dir, &name) {
            if st.st_size == 0 && crate::fsutil::file_type(&st) == rustix::fs::FileType::RegularFile
            {
                let _ = rustix::fs::unlinkat(&dir, &name, rustix::fs::AtFlags::empty());
            }
        }
    }
}

/// A minimal `/dev`: a tmpfs with the usual nodes, devpts and shm.
fn mount_dev(dev: &Path, mounted: &mut Vec<PathBuf>) -> Result<()> {
    let e = |what: &str, err: std::io::Error| {
        BuildError::Sandbox(format!("setting up /dev ({what}): {err}"))
    };
    mount(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(|x| e("tmpfs", x))?;
    mounted.push(dev.to_path_buf());
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|x| e(name, x.into()))?;
        rustix::fs::chmod(&p, Mode::from_raw_mode(0o666)).map_err(|x| e(name, x.into()))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(|x| e(name, x))?;
    }
    for sub in ["pts", "shm"] {
        std::fs::create_dir(dev.join(sub)).map_err(|x| e(sub, x))?;
    }
    mount(
        Some(Path::new("devpts")),
        &dev.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(|x| e("devpts", x))?;
    mounted.push(dev.join("pts"));
    mount(
        Some(Path::new("shm")),
        &dev.join("shm"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|x| e("shm", x))?;
    mounted.push(dev.join("shm"));
    Ok(())
}

fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| BuildError::Sandbox(format!("{what} contains a NUL byte")))
}

/// Where to look for argv[0]: itself when it has a `/`, else each PATH
/// directory (as the image's PATH says, like Docker does).
fn exec_candidates(root: &Root, argv0: &str, env: &[String]) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_owned()];
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(crate::config::DEFAULT_PATH);
    let mut out: Vec<String> = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .collect();
    // Prefer candidates that exist, so the error names the real problem.
    out.sort_by_key(|c| !exists_in_root(root, &clean_rel(c)));
    out
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| BuildError::Sandbox(format!("creating a pipe: {e}")))
}

fn run_child(
    root: &Root,
    spec: &RunSpec,
    prepared: Prepared,
    on_line: &mut dyn FnMut(&str),
    cancel: &CancelToken,
) -> Result<RunOutcome> {
    if spec.argv.is_empty() {
        return Err(BuildError::Sandbox("empty command".into()));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut plan = ChildPlan {
        root: cstring(root.path().as_os_str().as_bytes(), "root path")?,
        proc_target: cstring(prepared.proc_target.as_os_str().as_bytes(), "path")?,
        sys_target: cstring(prepared.sys_target.as_os_str().as_bytes(), "path")?,
        hostname: spec.hostname.as_bytes().to_vec(),
        new_net: spec.network == Network::None,
        cwd: cstring(&spec.cwd, "working directory")?,
        dev_null: cstring("/dev/null", "path")?,
        exec_candidates: exec_candidates(root, &spec.argv[0], &spec.env)
            .into_iter()
            .map(|c| cstring(c, "command path"))
            .collect::<Result<_>>()?,
        argv: spec
            .argv
            .iter()
            .map(|a| cstring(a, "command argument"))
            .collect::<Result<_>>()?,
        argv_ptrs: Vec::new(),
        env: spec
            .env
            .iter()
            .map(|a| cstring(a, "environment variable"))
            .collect::<Result<_>>()?,
        env_ptrs: Vec::new(),
        uid: spec.creds.uid,
        gid: spec.creds.gid,
        groups: spec.creds.groups.clone(),
        last_cap: last_cap().min(63),
        keep_caps: DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1 << c)),
        out_w: out_w.as_raw_fd(),
        out_r: out_r.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        err_r: err_r.as_raw_fd(),
        go_r: go_r.as_raw_fd(),
        go_w: go_w.as_raw_fd(),
    };
    plan.finish();

    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP;
    if spec.network == Network::None {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: the child runs only `sandbox_init`, which makes syscalls on
    // data prepared above and never returns.
    let pid = unsafe { child::raw_clone(flags) };
    if pid == 0 {
        unsafe { child::sandbox_init(&plan) }
    }
    if pid < 0 {
        return Err(BuildError::Sandbox(format!(
            "creating the sandbox process: {}",
            std::io::Error::last_os_error()
        )));
    }
    drop(out_w);
    drop(err_w);
    drop(go_r);
    // Let the child go: it checks the builder is alive through this pipe.
    let _ = rustix::io::write(&go_w, b"g");
    drop(go_w);

    let mut tail: VecDeque<String> = VecDeque::new();
    let read_result = pump_output(&out_r, on_line, &mut tail, cancel, pid);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    read_result?;
    if cancel.is_cancelled() {
        return Err(BuildError::Interrupted);
    }
    let mut rec = [0u8; 8];
    if let Ok(8) = rustix::io::read(&err_r, &mut rec) {
        let step = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let errno = i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let err = std::io::Error::from_raw_os_error(errno);
        let step = ChildStep::from_raw(step);
        if step == Some(ChildStep::Exec) {
            return Err(BuildError::Sandbox(format!(
                "cannot execute {:?}: {err}{}",
                spec.argv[0],
                if errno == libc::ENOENT {
                    " (is it installed in the image, and on its PATH?)"
                } else {
                    ""
                }
            )));
        }
        return Err(BuildError::Sandbox(format!(
            "{} failed: {err}",
            step.map_or("set-up", ChildStep::describe)
        )));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        125
    };
    Ok(RunOutcome {
        code,
        tail: tail.into_iter().collect(),
    })
}

/// Streams the command's output line by line until every writer is gone,
/// killing the sandbox when the build is cancelled.
fn pump_output(
    out: &OwnedFd,
    on_line: &mut dyn FnMut(&str),
    tail: &mut VecDeque<String>,
    cancel: &CancelToken,
    pid: libc::pid_t,
) -> Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut killed = false;
    let mut emit = |line: &[u8], tail: &mut VecDeque<String>| {
        let s = String::from_utf8_lossy(line);
        let s = s.trim_end_matches('\r');
        on_line(s);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(s.to_owned());
    };
    loop {
        if cancel.is_cancelled() && !killed {
            // PID 1 of the namespace: the kernel kills the rest with it.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        let mut fds = [rustix::event::PollFd::new(
            out,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: Duration::from_millis(100).as_nanos() as _,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(BuildError::Sandbox(format!("waiting for output: {e}"))),
        }
        let n = match rustix::io::read(out, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(BuildError::Sandbox(format!("reading output: {e}"))),
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            emit(&line[..line.len() - 1], tail);
        }
        if pending.len() > 16384 {
            let line: Vec<u8> = std::mem::take(&mut pending);
            emit(&line, tail);
        }
    }
    if !pending.is_empty() {
        emit(&pending, tail);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Key, LayerStore};
    use crate::mountns::{mount_overlay, with_private_mounts, OverlaySpec};

    fn spec(cmd: &str) -> RunSpec {
        RunSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec![format!("PATH={}", crate::config::DEFAULT_PATH)],
            cwd: "/".into(),
            creds: Credentials {
                uid: 0,
                gid: 0,
                groups: vec![0],
            },
            network: Network::Host,
            hostname: "firebuild".into(),
            mounts: vec![],
            resolv_conf: Some("/etc/resolv.conf".into()),
            hosts: Some("/etc/hosts".into()),
        }
    }

    /// Runs `spec` on a fresh layer above a busybox base; returns the
    /// outcome (or error), all output lines and the diff's top-level names.
    fn run(spec: &RunSpec, cancel: &CancelToken) -> (Result<RunOutcome>, Vec<String>, Vec<String>) {
        let cache = tempfile::tempdir().unwrap();
        let store = LayerStore::open(cache.path()).unwrap();
        let base = store.new_work().unwrap();
        crate::testing::busybox_root(&base.diff());
        let key = Key::derive(None, "busybox");
        let base = store.commit(base, &key, None, "busybox").unwrap();
        let work = store.new_work().unwrap();
        let empty = work.scratch("empty").unwrap();
        let scratch = work.scratch("scratch").unwrap();
        let mut lines = Vec::new();
        let res = with_private_mounts(|| {
            mount_overlay(
                &OverlaySpec {
                    layers_dir: &store.layers_dir(),
                    lower: std::slice::from_ref(&base.id),
                    upper: Some((&work.diff(), &work.work())),
                    empty_dir: &empty,
                },
                &work.merged(),
            )?;
            run_in_root(
                &work.merged(),
                &scratch,
                spec,
                &mut |l| lines.push(l.to_owned()),
                cancel,
            )
        });
        if work.diff().join("etc").exists() {
            assert_eq!(
                std::fs::read_dir(work.diff().join("etc")).unwrap().count(),
                0
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(work.diff())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        (res, lines, names)
    }

    #[test]
    fn runs_isolated_and_leaves_nothing_of_the_sandbox() {
        let (res, lines, diff) = run(
            &spec(
                "echo hello; echo pid=$$; hostname; ls /dev | tr '\\n' ' '; echo; \
                 grep -c . /etc/resolv.conf >/dev/null && echo resolv-ok; \
                 touch /sys/x 2>/dev/null || echo sys-ro; \
                 grep CapBnd /proc/self/status; grep NoNewPrivs /proc/self/status; \
                 echo made > /made; exit 3",
            ),
            &CancelToken::new(),
        );
        let out = res.unwrap();
        assert_eq!(out.code, 3, "{lines:?}");
        assert_eq!(lines[0], "hello");
        assert_eq!(
            lines[1], "pid=2",
            "the command is PID 2 under the sandbox init"
        );
        assert_eq!(lines[2], "firebuild");
        for node in ["null", "zero", "urandom", "pts", "shm", "ptmx", "fd"] {
            assert!(
                lines[3].split(' ').any(|n| n == node),
                "{node} missing: {}",
                lines[3]
            );
        }
        assert!(lines.contains(&"resolv-ok".to_string()), "{lines:?}");
        assert!(lines.contains(&"sys-ro".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"CapBnd:\t00000000a80425fb".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"NoNewPrivs:\t1".to_string()), "{lines:?}");
        assert_eq!(out.tail.last().map(String::as_str), Some("NoNewPrivs:\t1"));
        // Only what the command wrote stays: no /proc, /dev, /sys, /etc/hosts
        // (overlayfs keeps /etc copied up, empty, from the mount points).
        assert_eq!(diff, vec!["etc", "made"]);
    }

    #[test]
    fn user_network_none_and_exec_errors() {
        let mut s = spec(
            "id -u; id -g; id -G; cat /proc/net/dev | grep -c :; grep CapEff /proc/self/status",
        );
        s.creds = Credentials {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 50],
        };
        s.network = Network::None;
        let (res, lines, _) = run(&s, &CancelToken::new());
        assert_eq!(res.unwrap().code, 0);
        assert_eq!(
            lines[..4],
            ["1000", "1000", "1000 50", "1"],
            "only lo in a new netns"
        );
        assert_eq!(lines[4], "CapEff:\t0000000000000000");

        let mut s = spec("");
        s.argv = vec!["no-such-tool".into()];
        let (res, _, _) = run(&s, &CancelToken::new());
        let err = res.unwrap_err().to_string();
        assert!(err.contains("cannot execute \"no-such-tool\""), "{err}");

        let mut s = spec("pwd");
        s.cwd = "/missing".into();
        let (res, _, _) = run(&s, &CancelToken::new());
        assert!(res.unwrap_err().to_string().contains("working directory"));
    }

    #[test]
    fn cancel_kills_every_process_of_the_step() {
        let cancel = CancelToken::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            c2.cancel();
        });
        let (res, lines, _) = run(
            &spec("sleep 4242427 & echo started; sleep 4242427"),
            &cancel,
        );
        t.join().unwrap();
        assert!(matches!(res, Err(BuildError::Interrupted)), "{res:?}");
        assert_eq!(lines, vec!["started"]);
        // Nothing of the step survives: no process runs the marker sleep.
        let alive = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| c.starts_with(b"sleep\x004242427"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(alive, 0, "sandbox processes survived the cancel");
    }
}
