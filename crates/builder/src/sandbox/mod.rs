//! The RUN sandbox.
//!
//! [`run_in_root`] runs one command on a stage's layers. The caller has
//! mounted the layers (an overlay) on a private-mount-namespace worker
//! thread (see [`crate::mountns`]); the sandbox creates the mount points it
//! needs through that mount, then unmounts it: the command gets its own view
//! of the same layers, mounted inside its user namespace.
//!
//! The command's PID 1 is cloned into new user, PID, UTS, IPC and network
//! namespaces (the network one shared with the host only for
//! `--network host`). Its uid/gid 0..65535 are an unprivileged subordinate
//! range of the host ([`IdMap`]); it sees the layer cache through an
//! idmapped mount with the same mapping, so the image's owners stay exact.
//! Then it makes its own mount and cgroup namespaces, assembles the
//! filesystem ([`mounts`]): the overlay, `/dev` with the standard nodes
//! only, devpts, shm, `/proc` with runc's masks, a read-only `/sys`, the
//! step's binds; pivots into the root; and starts the command with Docker's
//! default capabilities (within the user namespace), no-new-privileges and
//! Docker's default seccomp profile ([`seccomp`]), reaping until it exits.
//! The default network is a user-mode NAT that cannot reach the host
//! ([`net`], [`egress`]); `--memory`, `--cpus` and `--pids-limit` are cgroup
//! limits ([`limits`]). When PID 1 exits the kernel kills everything left
//! in the PID namespace, and every mount goes with the namespaces; the
//! mount points the sandbox had to create are removed, so nothing of the
//! sandbox stays in the image.

mod child;
pub mod egress;
pub mod idmap;
pub mod limits;
mod mounts;
pub mod net;
pub mod seccomp;

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use crate::error::{BuildError, Result};
use crate::fsutil::{clean_rel, Root, Scope};
use crate::mountns::{from_cwd, mount, unmount, OverlayMount, OverlaySpec};
use child::{ChildPlan, ChildStep};
pub use idmap::IdMap;
pub use limits::Limits;
use mounts::Plan;

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

/// Network of a RUN step (`docker build --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// A network namespace of the step's own, with outbound access through
    /// a user-mode NAT that cannot reach the host.
    Default,
    /// A new, empty network namespace with only loopback.
    None,
    /// The host's network (only when the user asks for it).
    Host,
}

impl Network {
    pub fn parse(s: &str) -> std::result::Result<Network, String> {
        match s {
            "default" | "" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(format!(
                "unknown network {other:?}: use default, none or host"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// The sandbox settings of a build, as the user gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxSettings {
    /// The host ids the sandbox's ids stand for; `None`: the range of user
    /// `firebuild` in `/etc/subuid` and `/etc/subgid`.
    pub ids: Option<IdMap>,
    /// `--network`: what RUN steps get unless they say `--network=none`.
    pub network: Network,
    pub limits: Limits,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            ids: None,
            network: Network::Default,
            limits: Limits::default(),
        }
    }
}

impl SandboxSettings {
    /// The sandbox every RUN step of the build gets, after checking that
    /// this host can give it: an id range, the NAT, the limits' cgroup
    /// controllers. Called before the first step runs.
    pub fn resolve(&self) -> Result<SandboxOptions> {
        let ids = match self.ids {
            Some(ids) => ids,
            None => IdMap::from_system()?,
        };
        if self.network == Network::Default {
            net::find_slirp()?;
        }
        limits::Hierarchies::detect().check(&self.limits)?;
        if self.network == Network::Host {
            tracing::warn!(
                "--network host: RUN steps share the host's network, loopback services included"
            );
        }
        Ok(SandboxOptions {
            ids,
            network: self.network,
            limits: self.limits,
            egress: Arc::default(),
        })
    }
}

/// The sandbox of a build, checked ([`SandboxSettings::resolve`]).
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub ids: IdMap,
    pub network: Network,
    pub limits: Limits,
    /// The cgroup the build's NATs run in: made when the first step on the
    /// default network runs, removed with the last copy of these options.
    pub egress: Arc<OnceLock<std::result::Result<egress::EgressCgroup, String>>>,
}

impl SandboxOptions {
    fn egress(&self) -> Result<&egress::EgressCgroup> {
        self.egress
            .get_or_init(|| {
                // Kept as the message alone: it is a sandbox error again below.
                egress::EgressCgroup::for_build().map_err(|e| match e {
                    BuildError::Sandbox(message) => message,
                    other => other.to_string(),
                })
            })
            .as_ref()
            .map_err(|e| BuildError::Sandbox(e.clone()))
    }
}

/// Where a `RUN --mount` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSource {
    /// A path in the layer cache (cache mounts, the step's scratch files):
    /// seen through the idmapped cache, with its real owners.
    Store(PathBuf),
    /// A path of the host outside the cache (the build context): an
    /// idmapped bind where its filesystem allows one, else a plain bind
    /// (its files then show as owned by `nobody`).
    Host(PathBuf),
    /// A path inside another stage's tree, `StepRoot::stages[index]`, as
    /// resolved on the caller's mount of it.
    Stage { index: usize, path: PathBuf },
}

/// What a `RUN --mount`'s writes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    /// Writes stay in the source (cache mounts).
    Shared,
    /// Writes go to a throwaway layer and vanish with the step (BuildKit's
    /// `rw` binds).
    Throwaway,
}

/// A `RUN --mount` prepared by the engine.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: BindSource,
    /// Absolute path in the image.
    pub target: String,
    pub access: Access,
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
    /// What the step's `/etc/resolv.conf` and `/etc/hosts` say (the
    /// image's own files are left alone).
    pub resolv_conf: Option<String>,
    pub hosts: Option<String>,
}

/// How a command ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Exit status (128+N when killed by signal N).
    pub code: i32,
    /// The last [`TAIL_LINES`] lines of output.
    pub tail: Vec<String>,
    /// The build limit the step ran into, if any, said for the user.
    pub limit: Option<String>,
}

/// The layers a step runs on.
pub struct StepRoot<'a> {
    /// Where the caller mounted `overlay` on this thread (unmounted here
    /// before the command starts: it mounts its own).
    pub merged: &'a Path,
    pub overlay: OverlaySpec<'a>,
    /// The layer cache's root: every layer, upper and scratch dir is in it.
    pub store: &'a Path,
    /// Read-only trees of other stages (`RUN --mount=from=`), each with
    /// where the caller mounted it.
    pub stages: Vec<(OverlaySpec<'a>, &'a Path)>,
}

/// Docker's default capability set (number, name).
const DEFAULT_CAPS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (13, "CAP_NET_RAW"),
    (18, "CAP_SYS_CHROOT"),
    (27, "CAP_MKNOD"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// A mount point the sandbox needed; removed after the step if it had to
/// be created and is still empty.
enum Made {
    Dir(String),
    File(String),
}

/// Runs `spec` on `step` (mounted on this private-mount-namespace thread).
/// Output lines go to `on_line` as they come. `scratch` is a private
/// directory for the step's temporary files, inside the layer cache.
pub fn run_in_root(
    step: &StepRoot<'_>,
    scratch: &Path,
    sandbox: &SandboxOptions,
    spec: &RunSpec,
    on_line: &mut dyn FnMut(&str),
    cancel: &CancelToken,
) -> Result<RunOutcome> {
    let mut made: Vec<Made> = Vec::new();
    let prepared = Root::open(step.merged, Scope::InRoot)
        .map_err(BuildError::errno("opening", step.merged))
        .and_then(|root| prepare(&root, scratch, spec, &mut made));
    // Two overlays on one upper directory must never be live together: the
    // command's own view replaces this one (nothing holds it open now).
    let unmounted = unmount_when_free(step.merged).and_then(|()| fresh_workdir(&step.overlay));
    let result = prepared.and_then(|p| {
        unmounted?;
        run_child(step, scratch, sandbox, spec, p, on_line, cancel)
    });
    // What the step left is in the upper directory: tidy it there.
    if let Some((upper, _)) = step.overlay.upper {
        if let Ok(root) = Root::open(upper, Scope::InRoot) {
            cleanup_made(&root, &made);
        }
    }
    result
}

/// Unmounts `merged`, waiting a little while it is busy: a process another
/// thread of the builder is starting may hold a copy of a descriptor into
/// it for a moment (sandbox children drop theirs first thing).
fn unmount_when_free(merged: &Path) -> Result<()> {
    for _ in 0..400 {
        match unmount(merged, false) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            r => {
                return r.map_err(|e| {
                    BuildError::Sandbox(format!("unmounting {}: {e}", merged.display()))
                })
            }
        }
    }
    Err(BuildError::Sandbox(format!(
        "unmounting {}: still busy after 2s (is something on the host holding a file in it open?)",
        merged.display()
    )))
}

/// Empties the overlay's work directory after an unmount: a `volatile`
/// overlay leaves a marker there that refuses the next mount.
fn fresh_workdir(overlay: &OverlaySpec<'_>) -> Result<()> {
    let Some((_, work)) = overlay.upper else {
        return Ok(());
    };
    std::fs::remove_dir_all(work)
        .and_then(|()| std::fs::create_dir(work))
        .map_err(BuildError::io("renewing the overlay work directory", work))
}

/// A bind with its target's host path.
struct PreparedBind {
    source: BindSource,
    target: PathBuf,
    shown: String,
    access: Access,
    is_dir: bool,
}

/// Host paths (through the caller's mount) of what the sandbox mounts on.
struct Prepared {
    proc: PathBuf,
    sys: PathBuf,
    dev: PathBuf,
    tmp: Option<PathBuf>,
    /// (file in scratch, target).
    files: Vec<(PathBuf, PathBuf, &'static str)>,
    binds: Vec<PreparedBind>,
    /// Full paths to try for argv[0], found on the caller's mount (the
    /// command's own view shows the same files).
    exec_candidates: Vec<String>,
}

/// Creates mount points (through the root, so image symlinks cannot send
/// them outside) and the step's own files.
fn prepare(root: &Root, scratch: &Path, spec: &RunSpec, made: &mut Vec<Made>) -> Result<Prepared> {
    let proc = ensure_dir(root, "proc", made)?;
    let sys = ensure_dir(root, "sys", made)?;
    let dev = ensure_dir(root, "dev", made)?;
    // No /tmp in the image: give the step a private one that is not kept.
    let tmp = if exists_in_root(root, "tmp") {
        None
    } else {
        Some(ensure_dir(root, "tmp", made)?)
    };
    let mut files = Vec::new();
    for (file, content) in [
        ("etc/resolv.conf", &spec.resolv_conf),
        ("etc/hosts", &spec.hosts),
    ] {
        let Some(content) = content else { continue };
        // A private copy: the step may write it; the image keeps its own.
        let copy = scratch.join(file.replace('/', "_"));
        std::fs::write(&copy, content).map_err(BuildError::io("writing", &copy))?;
        let Some(target) = ensure_file(root, file, made)? else {
            tracing::debug!(file, "image has a dangling symlink here; not providing it");
            continue;
        };
        files.push((
            copy,
            target,
            if file.ends_with("hosts") {
                "/etc/hosts"
            } else {
                "/etc/resolv.conf"
            },
        ));
    }
    let mut binds = Vec::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        let (mut source, mut access) = (m.source.clone(), m.access);
        let host = match &source {
            BindSource::Store(p) | BindSource::Host(p) | BindSource::Stage { path: p, .. } => {
                p.clone()
            }
        };
        let is_dir = std::fs::metadata(&host)
            .map(|md| md.is_dir())
            .unwrap_or(true);
        if access == Access::Throwaway && !is_dir {
            // A file's throwaway layer is a copy of it.
            let copy = scratch.join(format!("rw{i}.file"));
            std::fs::copy(&host, &copy).map_err(BuildError::io("copying", &host))?;
            (source, access) = (BindSource::Store(copy), Access::Shared);
        }
        let rel = clean_rel(&m.target);
        let target = if is_dir {
            ensure_dir(root, &rel, made)?
        } else {
            ensure_file(root, &rel, made)?.ok_or_else(|| {
                BuildError::Sandbox(format!("mount target {} is a dangling symlink", m.target))
            })?
        };
        binds.push(PreparedBind {
            source,
            target,
            shown: m.target.clone(),
            access,
            is_dir,
        });
    }
    let exec_candidates = match spec.argv.first() {
        Some(argv0) => exec_candidates(root, argv0, &spec.env),
        None => Vec::new(),
    };
    Ok(Prepared {
        proc,
        sys,
        dev,
        tmp,
        files,
        binds,
        exec_candidates,
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

/// Mounts this thread attaches for one step (the idmapped views); detached
/// on drop.
#[derive(Default)]
struct Attached(Vec<PathBuf>);

impl Drop for Attached {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            if let Err(e) = unmount(target, true) {
                tracing::warn!(path = %target.display(), error = %e, "could not detach a sandbox mount");
            }
        }
    }
}

/// How the sandbox reaches host paths. Its PID 1 starts in the idmapped
/// copy of the layer cache: paths in the cache become relative to it (so
/// no ancestor directory of the cache needs to be open to the sandbox's
/// ids); other paths stay absolute.
struct Views<'a> {
    store: &'a Path,
    /// Where the idmapped copy of `store` is attached (a host path).
    mapped: PathBuf,
    /// Per bind: where (relative) its idmapped host source is attached.
    host: Vec<Option<PathBuf>>,
}

impl Views<'_> {
    fn seen(&self, p: &Path) -> PathBuf {
        p.strip_prefix(self.store)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    }

    /// The host path of a relative view path, through the idmapped copy
    /// (where the worker attaches what the sandbox mounts from).
    fn through_mapped(&self, rel: &Path) -> PathBuf {
        self.mapped.join(rel)
    }

    fn bind_source(&self, i: usize, b: &PreparedBind) -> PathBuf {
        match &b.source {
            BindSource::Host(p) => self.host[i].clone().unwrap_or_else(|| p.clone()),
            BindSource::Store(p) | BindSource::Stage { path: p, .. } => self.seen(p),
        }
    }
}

/// The sandbox's filesystem, in mount order.
fn plan_mounts(
    step: &StepRoot<'_>,
    scratch: &Path,
    p: &Prepared,
    v: &Views<'_>,
    own_net: bool,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let root = step
        .overlay
        .options(|d| v.seen(d))?
        .ok_or_else(|| BuildError::Sandbox("a RUN step needs a writable layer".into()))?;
    plan.overlay(&root, &v.seen(step.merged), "the stage")?;
    for (i, (spec, dir)) in step.stages.iter().enumerate() {
        let shown = format!("--mount from= #{i}");
        match spec.options(|d| v.seen(d))? {
            Some(o) => plan.overlay(&o, &v.seen(dir), &shown)?,
            None => plan.bind(&v.seen(&spec.single_dir()), &v.seen(dir), true, &shown)?,
        }
    }
    plan.dev(&v.seen(&p.dev))?;
    if let Some(tmp) = &p.tmp {
        plan.fs(
            "tmpfs",
            &v.seen(tmp),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
            "/tmp",
        )?;
    }
    plan.proc(&v.seen(&p.proc))?;
    plan.sys(&v.seen(&p.sys), own_net)?;
    for (copy, target, shown) in &p.files {
        plan.bind(&v.seen(copy), &v.seen(target), false, shown)?;
    }
    for (i, b) in p.binds.iter().enumerate() {
        let (source, target) = (v.bind_source(i, b), v.seen(&b.target));
        match b.access {
            Access::ReadOnly => plan.bind(&source, &target, true, &b.shown)?,
            Access::Shared => plan.bind(&source, &target, false, &b.shown)?,
            Access::Throwaway => {
                let layer = scratch.join(format!("rw{i}"));
                for d in ["upper", "work"] {
                    std::fs::create_dir_all(layer.join(d))
                        .map_err(BuildError::io("creating", &layer))?;
                }
                // lowerdir "." (the source is the cwd): no escaping needed.
                let upper = from_cwd(&source, &v.seen(&layer.join("upper")));
                let work = from_cwd(&source, &v.seen(&layer.join("work")));
                let o = OverlayMount {
                    data: format!(
                        "lowerdir=.,upperdir={},workdir={},userxattr",
                        upper.display(),
                        work.display()
                    ),
                    cwd: source,
                    flags: libc::MS_NODEV,
                };
                plan.overlay(&o, &target, &b.shown)?;
            }
        }
    }
    Ok(plan)
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

/// A name unique to this step on this host (cgroups, NAT).
fn step_name() -> String {
    format!("{}-{}", std::process::id(), crate::util::unique_suffix())
}

fn run_child(
    step: &StepRoot<'_>,
    scratch: &Path,
    sandbox: &SandboxOptions,
    spec: &RunSpec,
    prepared: Prepared,
    on_line: &mut dyn FnMut(&str),
    cancel: &CancelToken,
) -> Result<RunOutcome> {
    if spec.argv.is_empty() {
        return Err(BuildError::Sandbox("empty command".into()));
    }
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(BuildError::io("creating", p));
    let mut views = Views {
        store: step.store,
        mapped: scratch.join("idroot"),
        host: Vec::new(),
    };
    views.host = prepared
        .binds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            matches!(b.source, BindSource::Host(_))
                .then(|| views.seen(&scratch.join(format!("host{i}"))))
        })
        .collect();
    mkdir(&views.mapped)?;
    for (b, at) in prepared.binds.iter().zip(&views.host) {
        if let Some(at) = at {
            let at = step.store.join(at);
            if b.is_dir {
                mkdir(&at)?;
            } else {
                std::fs::write(&at, b"").map_err(BuildError::io("creating", &at))?;
            }
        }
    }
    let own_net = spec.network != Network::Host;
    let plan = plan_mounts(step, scratch, &prepared, &views, own_net)?;
    let caps: Vec<&str> = DEFAULT_CAPS.iter().map(|(_, n)| *n).collect();
    let seccomp = seccomp::docker_default(&caps).map_err(BuildError::Sandbox)?;

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut child_plan = ChildPlan {
        base: cstring(views.mapped.as_os_str().as_bytes(), "cache path")?,
        root: cstring(views.seen(step.merged).as_os_str().as_bytes(), "root path")?,
        mounts: plan.ops,
        hostname: spec.hostname.as_bytes().to_vec(),
        own_net,
        cwd: cstring(&spec.cwd, "working directory")?,
        dev_null: cstring("/dev/null", "path")?,
        exec_candidates: prepared
            .exec_candidates
            .iter()
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
        keep_caps: DEFAULT_CAPS.iter().fold(0u64, |m, (c, _)| m | (1 << c)),
        seccomp,
        out_w: out_w.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        go_r: go_r.as_raw_fd(),
    };
    child_plan.finish();

    let mut flags =
        libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if own_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: the child runs only `sandbox_init`, which makes syscalls on
    // data prepared above and never returns.
    let pid = unsafe { child::raw_clone(flags) };
    if pid == 0 {
        unsafe { child::sandbox_init(&child_plan) }
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

    // Until "go" the child only waits; on any failure here closing the
    // pipe makes it exit.
    let mut attached = Attached::default();
    let set_up = set_up_child(
        pid,
        &go_w,
        step,
        sandbox,
        spec,
        &views,
        &prepared,
        &mut attached,
    );
    let (cgroup, _nat) = match set_up {
        Ok(x) => x,
        Err(e) => {
            drop(go_w);
            reap(pid);
            return Err(e);
        }
    };
    let _ = rustix::io::write(&go_w, b"g");
    drop(go_w);

    let mut tail: VecDeque<String> = VecDeque::new();
    let read_result = pump_output(&out_r, on_line, &mut tail, cancel, pid);
    let status = reap(pid);
    read_result?;
    if cancel.is_cancelled() {
        return Err(BuildError::Interrupted);
    }
    let mut rec = [0u8; child::RECORD_LEN];
    if let Ok(child::RECORD_LEN) = rustix::io::read(&err_r, &mut rec) {
        return Err(child_error(&rec, spec, &plan.what));
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
        limit: cgroup.as_ref().and_then(|c| c.exceeded()),
    })
}

/// Between clone and "go": the child's id maps, cgroup, network and the
/// idmapped views it mounts from.
#[allow(clippy::too_many_arguments)]
fn set_up_child(
    pid: libc::pid_t,
    go: &OwnedFd,
    step: &StepRoot<'_>,
    sandbox: &SandboxOptions,
    spec: &RunSpec,
    views: &Views<'_>,
    prepared: &Prepared,
    attached: &mut Attached,
) -> Result<(Option<limits::StepCgroup>, Option<net::Nat>)> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let maps = |file: &str, line: String| {
        std::fs::write(proc.join(file), &line).map_err(|e| {
            BuildError::Sandbox(format!(
                "writing the sandbox's {file} ({}): {e}",
                line.trim()
            ))
        })
    };
    maps("uid_map", sandbox.ids.uid_line())?;
    maps("gid_map", sandbox.ids.gid_line())?;
    // The views the child mounts from, attached before it makes its mount
    // namespace.
    let userns = std::fs::File::open(proc.join("ns/user"))
        .map_err(BuildError::io("opening", proc.join("ns/user")))?;
    idmap::idmapped_bind(step.store, &views.mapped, userns.as_fd(), false).map_err(|e| {
        BuildError::Sandbox(format!(
            "an idmapped mount of the build cache {} failed: {e} (the RUN sandbox needs Linux 5.19 or newer and a cache on ext4, xfs, btrfs or tmpfs)",
            step.store.display()
        ))
    })?;
    attached.0.push(views.mapped.clone());
    for (b, at) in prepared.binds.iter().zip(&views.host) {
        let (Some(at), BindSource::Host(src)) = (at, &b.source) else {
            continue;
        };
        let at = views.through_mapped(at);
        let readonly = b.access == Access::ReadOnly;
        if let Err(e) = idmap::idmapped_bind(src, &at, userns.as_fd(), readonly) {
            tracing::debug!(source = %src.display(), error = %e, "no idmapped bind here; its files show as nobody in the sandbox");
            mount(Some(src), &at, None, libc::MS_BIND, None)
                .map_err(|e| BuildError::Sandbox(format!("binding {}: {e}", src.display())))?;
        }
        attached.0.push(at);
    }
    // The child may now make its mount namespace and become its root.
    rustix::io::write(go, b"m")
        .map_err(|e| BuildError::Sandbox(format!("starting the sandbox: {e}")))?;
    let name = step_name();
    let cgroup =
        limits::StepCgroup::create(&limits::Hierarchies::detect(), &sandbox.limits, &name)?;
    if let Some(c) = &cgroup {
        c.add(pid)?;
    }
    let nat = match spec.network {
        Network::Default => Some(net::Nat::start(pid, sandbox.egress()?)?),
        _ => None,
    };
    Ok((cgroup, nat))
}

/// Waits for the sandbox's PID 1; its status.
fn reap(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    status
}

/// The error a failure record from the child stands for.
fn child_error(rec: &[u8; child::RECORD_LEN], spec: &RunSpec, what: &[String]) -> BuildError {
    let word = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    let (step, errno, index) = (
        ChildStep::from_raw(word(0)),
        word(4) as i32,
        word(8) as usize,
    );
    let err = std::io::Error::from_raw_os_error(errno);
    match step {
        Some(ChildStep::Exec) => BuildError::Sandbox(format!(
            "cannot execute {:?}: {err}{}",
            spec.argv[0],
            if errno == libc::ENOENT {
                " (is it installed in the image, and on its PATH?)"
            } else {
                ""
            }
        )),
        Some(ChildStep::Mount) => BuildError::Sandbox(format!(
            "{} failed: {err}",
            what.get(index).map_or("mounting", String::as_str)
        )),
        step => BuildError::Sandbox(format!(
            "{} failed: {err}",
            step.map_or("set-up", ChildStep::describe)
        )),
    }
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
    use crate::mountns::{mount_overlay, with_private_mounts};
    use crate::testing::TEST_IDS;
    use std::os::unix::fs::MetadataExt;

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
            network: Network::None,
            hostname: "firebuild".into(),
            mounts: vec![],
            resolv_conf: Some("nameserver 192.0.2.53\n".into()),
            hosts: Some("127.0.0.1\tlocalhost\n".into()),
        }
    }

    struct Ran {
        result: Result<RunOutcome>,
        lines: Vec<String>,
        /// Top-level names in the step's diff.
        diff: Vec<String>,
        /// The diff itself (kept until the test ends).
        diff_dir: PathBuf,
        _cache: tempfile::TempDir,
    }

    /// Runs `spec` on a fresh layer above a busybox base.
    fn run(spec: &RunSpec, cancel: &CancelToken) -> Ran {
        let cache = tempfile::tempdir().unwrap();
        // Closed to others, as firebuild's own cache directories are: the
        // sandbox must not need to walk through it.
        std::fs::set_permissions(
            cache.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let store = LayerStore::open(cache.path()).unwrap();
        let base = store.new_work().unwrap();
        crate::testing::busybox_root(&base.diff());
        std::fs::create_dir_all(base.diff().join("home/app")).unwrap();
        std::os::unix::fs::chown(base.diff().join("home/app"), Some(1000), Some(1000)).unwrap();
        let key = Key::derive(None, "busybox");
        let base = store.commit(base, &key, None, "busybox").unwrap();
        let work = store.new_work().unwrap();
        let empty = work.scratch("empty").unwrap();
        let scratch = work.scratch("scratch").unwrap();
        let mut lines = Vec::new();
        let options = SandboxOptions {
            ids: TEST_IDS,
            network: spec.network,
            limits: Limits::default(),
            egress: Arc::default(),
        };
        let result = with_private_mounts(|| {
            let overlay = OverlaySpec {
                layers_dir: &store.layers_dir(),
                lower: std::slice::from_ref(&base.id),
                upper: Some((&work.diff(), &work.work())),
                empty_dir: &empty,
            };
            let merged = work.merged();
            mount_overlay(&overlay, &merged)?;
            let step = StepRoot {
                merged: &merged,
                overlay,
                store: store.root(),
                stages: vec![],
            };
            run_in_root(
                &step,
                &scratch,
                &options,
                spec,
                &mut |l| lines.push(l.to_owned()),
                cancel,
            )
        });
        let mut diff: Vec<String> = std::fs::read_dir(work.diff())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        diff.sort();
        let diff_dir = cache.path().join("kept-diff");
        std::fs::rename(work.diff(), &diff_dir).unwrap();
        Ran {
            result,
            lines,
            diff,
            diff_dir,
            _cache: cache,
        }
    }

    #[test]
    fn runs_isolated_and_leaves_nothing_of_the_sandbox() {
        let ran = run(
            &spec(
                "echo hello; echo pid=$$; hostname; ls /dev | tr '\\n' ' '; echo; \
                 grep -q 192.0.2.53 /etc/resolv.conf && echo resolv-ok; \
                 touch /sys/x 2>/dev/null || echo sys-ro; \
                 grep CapBnd /proc/self/status; grep NoNewPrivs /proc/self/status; \
                 grep '^Seccomp:' /proc/self/status; cat /proc/self/uid_map; \
                 echo made > /made; mkdir /owned; chown 1000:50 /owned; \
                 touch /home/app/by-root; exit 3",
            ),
            &CancelToken::new(),
        );
        let (out, lines) = (ran.result.unwrap(), &ran.lines);
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
        for want in [
            "resolv-ok",
            "sys-ro",
            "CapBnd:\t00000000a80425fb",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want} missing: {lines:?}");
        }
        // The sandbox's root is host uid 3000000000, not host root.
        let map: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
        assert_eq!(map, ["0", "3000000000", "65536"], "{lines:?}");
        // Only what the command wrote stays: no /proc, /dev, /sys, /etc/hosts
        // (overlayfs keeps /etc copied up, empty, from the mount points) ...
        assert_eq!(ran.diff, vec!["etc", "home", "made", "owned"]);
        assert_eq!(
            std::fs::read_dir(ran.diff_dir.join("etc")).unwrap().count(),
            0
        );
        // ... with the owners Docker would give: the sandbox's root is 0 on
        // disk, its `chown 1000:50` is 1000:50.
        let md = |p: &str| std::fs::symlink_metadata(ran.diff_dir.join(p)).unwrap();
        assert_eq!((md("made").uid(), md("made").gid()), (0, 0));
        assert_eq!((md("owned").uid(), md("owned").gid()), (1000, 50));
        assert_eq!(
            (md("home/app").uid(), md("home/app/by-root").uid()),
            (1000, 0)
        );
    }

    #[test]
    fn user_network_none_and_exec_errors() {
        let mut s = spec(
            "id -u; id -g; id -G; cat /proc/net/dev | grep -c :; grep CapEff /proc/self/status; ls /sys/class/net",
        );
        s.creds = Credentials {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 50],
        };
        let ran = run(&s, &CancelToken::new());
        assert_eq!(ran.result.unwrap().code, 0, "{:?}", ran.lines);
        assert_eq!(
            ran.lines[..4],
            ["1000", "1000", "1000 50", "1"],
            "only lo in a new netns"
        );
        assert_eq!(ran.lines[4], "CapEff:\t0000000000000000");
        assert_eq!(
            ran.lines[5], "lo",
            "/sys shows the sandbox's own network namespace"
        );

        let mut s = spec("");
        s.argv = vec!["no-such-tool".into()];
        let err = run(&s, &CancelToken::new()).result.unwrap_err().to_string();
        assert!(err.contains("cannot execute \"no-such-tool\""), "{err}");

        let mut s = spec("pwd");
        s.cwd = "/missing".into();
        let err = run(&s, &CancelToken::new()).result.unwrap_err().to_string();
        assert!(err.contains("working directory"), "{err}");
    }

    #[test]
    fn host_devices_kernel_knobs_and_namespaces_stay_out_of_reach() {
        let ran = run(
            &spec(
                "exec 2>/dev/null; \
                 mknod /blk b 7 0 && echo mknod-ok || echo mknod-refused; \
                 (echo 1 > /proc/sys/vm/drop_caches) && echo sysctl-written || echo sysctl-refused; \
                 (echo x > /proc/sysrq-trigger) && echo sysrq-written || echo sysrq-refused; \
                 cat /proc/kcore /proc/keys /proc/timer_list | wc -c; \
                 test -e /dev/kmsg && echo kmsg-present || echo kmsg-absent; \
                 mount -t tmpfs t /mnt && echo mounted || echo mount-refused; \
                 unshare -U true && echo unshared || echo unshare-refused; \
                 dmesg >/dev/null && echo dmesg-read || echo dmesg-refused",
            ),
            &CancelToken::new(),
        );
        assert_eq!(ran.result.unwrap().code, 0, "{:?}", ran.lines);
        assert_eq!(
            ran.lines,
            [
                "mknod-refused",
                "sysctl-refused",
                "sysrq-refused",
                "0",
                "kmsg-absent",
                "mount-refused",
                "unshare-refused",
                "dmesg-refused"
            ]
        );
    }

    #[test]
    fn cancel_kills_every_process_of_the_step() {
        let cancel = CancelToken::new();
        let c2 = cancel.clone();
        let marked = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| c.starts_with(b"sleep\x004242427"))
                        .unwrap_or(false)
                })
                .count()
        };
        // Cancel once both marker sleeps run.
        let t = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while marked() < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            c2.cancel();
        });
        let ran = run(
            &spec("sleep 4242427 & echo started; sleep 4242427"),
            &cancel,
        );
        t.join().unwrap();
        assert!(
            matches!(ran.result, Err(BuildError::Interrupted)),
            "{:?}",
            ran.result
        );
        assert_eq!(ran.lines, vec!["started"]);
        // Nothing of the step survives: no process runs the marker sleep.
        assert_eq!(marked(), 0, "sandbox processes survived the cancel");
    }
}
