//! The code that runs in the sandbox processes between `clone` and `execve`.
//!
//! The builder may be multi-threaded, so after a raw `clone` the child owns a
//! copy of memory in which another thread may have held the allocator's lock:
//! nothing here allocates, panics, or takes a lock. Everything it needs is
//! prepared by the parent in [`ChildPlan`]; it only makes syscalls. Failures
//! are reported as a (step, errno, index) record on a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::RawFd;

/// Where in the child set-up a failure happened (sent to the parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ChildStep {
    Wait = 1,
    Session,
    SandboxRoot,
    Namespaces,
    Hostname,
    Loopback,
    /// A [`MountOp`]; the record's index says which.
    Mount,
    PivotRoot,
    Fork,
    Stdio,
    Workdir,
    Capabilities,
    Groups,
    Gid,
    Uid,
    NoNewPrivs,
    Seccomp,
    Exec,
}

impl ChildStep {
    const ALL: [ChildStep; 18] = [
        ChildStep::Wait,
        ChildStep::Session,
        ChildStep::SandboxRoot,
        ChildStep::Namespaces,
        ChildStep::Hostname,
        ChildStep::Loopback,
        ChildStep::Mount,
        ChildStep::PivotRoot,
        ChildStep::Fork,
        ChildStep::Stdio,
        ChildStep::Workdir,
        ChildStep::Capabilities,
        ChildStep::Groups,
        ChildStep::Gid,
        ChildStep::Uid,
        ChildStep::NoNewPrivs,
        ChildStep::Seccomp,
        ChildStep::Exec,
    ];

    pub fn from_raw(n: u32) -> Option<ChildStep> {
        Self::ALL.into_iter().find(|s| *s as u32 == n)
    }

    pub fn describe(self) -> &'static str {
        match self {
            ChildStep::Wait => "waiting for the builder",
            ChildStep::Session => "starting a session",
            ChildStep::SandboxRoot => "becoming root of the sandbox's user namespace",
            ChildStep::Namespaces => "creating the mount and cgroup namespaces",
            ChildStep::Hostname => "setting the hostname",
            ChildStep::Loopback => "bringing up the loopback interface",
            ChildStep::Mount => "mounting",
            ChildStep::PivotRoot => "entering the image root (pivot_root)",
            ChildStep::Fork => "starting the command process",
            ChildStep::Stdio => "setting up stdin/stdout/stderr",
            ChildStep::Workdir => "entering the working directory",
            ChildStep::Capabilities => "dropping capabilities",
            ChildStep::Groups => "setting supplementary groups",
            ChildStep::Gid => "setting the group id",
            ChildStep::Uid => "setting the user id",
            ChildStep::NoNewPrivs => "setting no-new-privileges",
            ChildStep::Seccomp => "loading the seccomp filter",
            ChildStep::Exec => "executing the command",
        }
    }
}

/// One step of assembling the sandbox's filesystem, run in order by the
/// sandbox's PID 1 inside its user and mount namespaces. Paths are relative
/// to [`ChildPlan::base`] (the layer cache's idmapped copy) or absolute
/// (the host's `/dev` nodes and `/sys`); the image root is entered only
/// afterwards.
pub enum MountOp {
    /// `mount(2)`; with `cwd`, relative paths in `data` are resolved there
    /// (overlay lower dirs); `optional` skips targets that do not exist.
    Mount {
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
        cwd: Option<CString>,
        optional: bool,
    },
    /// A bind of `path` onto itself, then a read-only remount (absent paths
    /// are skipped). `flags` are kept on the remount.
    ReadOnly {
        path: CString,
        flags: libc::c_ulong,
    },
    /// Hides `path`: `/dev/null` over a file, an empty read-only tmpfs over
    /// a directory (absent paths are skipped).
    Mask {
        path: CString,
        dev_null: CString,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// An empty file (a bind target).
    File {
        path: CString,
    },
    Symlink {
        target: CString,
        path: CString,
    },
}

/// Everything the children need, prepared (allocated) by the parent.
pub struct ChildPlan {
    /// The idmapped copy of the layer cache (a host path, opened before the
    /// child drops host root: its ancestors may be closed to others). Every
    /// relative path below is resolved from it.
    pub base: CString,
    /// The image root after the mounts: pivoted into.
    pub root: CString,
    pub mounts: Vec<MountOp>,
    pub hostname: Vec<u8>,
    /// A network namespace of our own: bring its loopback up.
    pub own_net: bool,
    pub cwd: CString,
    pub dev_null: CString,
    /// Full paths to try for argv[0], in order (PATH search done here).
    pub exec_candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub argv_ptrs: Vec<*const libc::c_char>,
    pub env: Vec<CString>,
    pub env_ptrs: Vec<*const libc::c_char>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// Highest capability number the kernel knows.
    pub last_cap: u32,
    /// Capabilities kept (Docker's default set), as a bit mask.
    pub keep_caps: u64,
    /// The seccomp program loaded right before `execve`.
    pub seccomp: &'static [libc::sock_filter],
    pub out_w: RawFd,
    pub err_w: RawFd,
    pub go_r: RawFd,
}

impl ChildPlan {
    /// Fills the NULL-terminated pointer arrays (call after the strings are
    /// final; they point into `argv` and `env`).
    pub fn finish(&mut self) {
        self.argv_ptrs = self.argv.iter().map(|s| s.as_ptr()).collect();
        self.argv_ptrs.push(std::ptr::null());
        self.env_ptrs = self.env.iter().map(|s| s.as_ptr()).collect();
        self.env_ptrs.push(std::ptr::null());
    }
}

/// A failure record: step, errno, index of the mount op.
pub const RECORD_LEN: usize = 12;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Reports a failure to the parent and exits.
unsafe fn fail_at(plan: &ChildPlan, step: ChildStep, err: i32, index: u32) -> ! {
    let mut rec = [0u8; RECORD_LEN];
    rec[..4].copy_from_slice(&(step as u32).to_le_bytes());
    rec[4..8].copy_from_slice(&err.to_le_bytes());
    rec[8..].copy_from_slice(&index.to_le_bytes());
    libc::write(plan.err_w, rec.as_ptr().cast(), rec.len());
    libc::_exit(if step == ChildStep::Exec { 127 } else { 125 });
}

unsafe fn fail(plan: &ChildPlan, step: ChildStep, err: i32) -> ! {
    fail_at(plan, step, err, 0)
}

/// A fork: a raw clone, so no atfork handlers (which would take locks) run.
pub unsafe fn raw_clone(flags: libc::c_int) -> libc::pid_t {
    libc::syscall(
        libc::SYS_clone,
        (flags | libc::SIGCHLD) as libc::c_long,
        0 as libc::c_long,
        0 as libc::c_long,
        0 as libc::c_long,
        0 as libc::c_long,
    ) as libc::pid_t
}

fn ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Closes every descriptor from 3 up except `keep`, without allocating.
unsafe fn close_all_but(keep: &[RawFd; 3]) {
    let mut sorted = *keep;
    sorted.sort_unstable();
    let mut from: libc::c_uint = 3;
    for fd in sorted {
        let fd = fd as libc::c_uint;
        if fd > from {
            libc::syscall(libc::SYS_close_range, from, fd - 1, 0 as libc::c_uint);
        }
        from = from.max(fd + 1);
    }
    libc::syscall(
        libc::SYS_close_range,
        from,
        libc::c_uint::MAX,
        0 as libc::c_uint,
    );
}

/// Writes `/proc/self/fd/<fd>` (NUL-terminated) into `buf`, without
/// allocating.
fn proc_fd_path(fd: libc::c_int, buf: &mut [u8; 32]) {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
}

/// Is `path` absent (so an optional step is skipped)?
unsafe fn absent(path: &CString) -> bool {
    let mut st: libc::stat = std::mem::zeroed();
    libc::lstat(path.as_ptr(), &mut st) != 0 && errno() == libc::ENOENT
}

unsafe fn is_dir(path: &CString) -> bool {
    let mut st: libc::stat = std::mem::zeroed();
    libc::stat(path.as_ptr(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Runs one mount op from directory `base`; `Err(errno)` on failure.
unsafe fn run_op(op: &MountOp, base: libc::c_int) -> Result<(), i32> {
    let ok = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(errno()) };
    ok(libc::fchdir(base))?;
    match op {
        MountOp::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            cwd,
            optional,
        } => {
            if *optional && absent(target) {
                return Ok(());
            }
            // Relative targets are taken from `base` first: resolve them to
            // a descriptor before moving into `cwd`.
            let fd = libc::open(target.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(errno());
            }
            let mut at = [0u8; 32];
            proc_fd_path(fd, &mut at);
            if let Some(cwd) = cwd {
                if libc::chdir(cwd.as_ptr()) != 0 {
                    libc::close(fd);
                    return Err(errno());
                }
            }
            let rc = libc::mount(
                source.as_ptr(),
                at.as_ptr().cast(),
                ptr(fstype),
                *flags,
                ptr(data).cast(),
            );
            let r = ok(rc);
            libc::close(fd);
            r
        }
        MountOp::ReadOnly { path, flags } => {
            if absent(path) {
                return Ok(());
            }
            ok(libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                std::ptr::null(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                std::ptr::null(),
            ))
        }
        MountOp::Mask { path, dev_null } => {
            if absent(path) {
                return Ok(());
            }
            if is_dir(path) {
                ok(libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=0".as_ptr().cast(),
                ))
            } else {
                ok(libc::mount(
                    dev_null.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            }
        }
        MountOp::Mkdir { path, mode } => {
            if libc::mkdir(path.as_ptr(), *mode) != 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            Ok(())
        }
        MountOp::File { path } => {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            );
            if fd < 0 {
                return Err(errno());
            }
            libc::close(fd);
            Ok(())
        }
        MountOp::Symlink { target, path } => ok(libc::symlink(target.as_ptr(), path.as_ptr())),
    }
}

/// PID 1 of the sandbox: becomes root of its user namespace, assembles the
/// filesystem, enters the root, starts the command and reaps every process
/// until the command exits; its exit then makes the kernel kill whatever is
/// left in the PID namespace.
pub unsafe fn sandbox_init(plan: &ChildPlan) -> ! {
    // Die with the builder thread, and do not start if it is already gone
    // (the "go" pipe then reads EOF). The builder writes our id maps, then
    // sends a first byte; the second comes when our views are attached.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    // The clone copied every descriptor of the builder, other threads'
    // too (another build's tree, held open, would keep its mount busy):
    // keep only our pipes.
    close_all_but(&[plan.go_r, plan.out_w, plan.err_w]);
    let mut b = [0u8; 1];
    if libc::read(plan.go_r, b.as_mut_ptr().cast(), 1) != 1 {
        libc::_exit(125);
    }
    // Terminal signals (Ctrl-C) go to the builder, which stops the step.
    if libc::setsid() < 0 {
        fail(plan, ChildStep::Session, errno());
    }
    // Our own mount namespace, owned by our user namespace: made now, so it
    // holds the idmapped mounts the builder attached after the clone. The
    // cache's copy is opened while we are still host root to the path
    // lookup (its ancestors may be closed to everyone else).
    if libc::unshare(libc::CLONE_NEWNS) != 0
        || libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
    {
        fail(plan, ChildStep::Namespaces, errno());
    }
    let base = libc::open(
        plan.base.as_ptr(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if base < 0 {
        fail(plan, ChildStep::Namespaces, errno());
    }
    // Raw syscalls: glibc's wrappers would try to change the credentials of
    // every thread of the (copied) builder process and wait forever.
    let no_groups: [libc::gid_t; 0] = [];
    if libc::syscall(libc::SYS_setgroups, 0, no_groups.as_ptr()) != 0
        || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
        || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
    {
        fail(plan, ChildStep::SandboxRoot, errno());
    }
    // Changing credentials cleared the parent-death signal: set it again.
    // Should the builder have died meanwhile, the next read sees EOF.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    if libc::read(plan.go_r, b.as_mut_ptr().cast(), 1) != 1 {
        libc::_exit(125);
    }
    libc::close(plan.go_r);
    // The cgroup namespace is rooted at the build's cgroup we were moved
    // into meanwhile.
    if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
        fail(plan, ChildStep::Namespaces, errno());
    }
    if libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) != 0 {
        fail(plan, ChildStep::Hostname, errno());
    }
    if plan.own_net {
        if let Err(e) = loopback_up() {
            fail(plan, ChildStep::Loopback, e);
        }
    }
    for (i, op) in plan.mounts.iter().enumerate() {
        if let Err(e) = run_op(op, base) {
            fail_at(plan, ChildStep::Mount, e, i as u32);
        }
    }
    // pivot_root(".", ".") stacks the old root on the new one; detaching it
    // leaves only the image visible.
    if libc::fchdir(base) != 0
        || libc::chdir(plan.root.as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
        || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
        || libc::chdir(c"/".as_ptr()) != 0
    {
        fail(plan, ChildStep::PivotRoot, errno());
    }

    let cmd = raw_clone(0);
    if cmd < 0 {
        fail(plan, ChildStep::Fork, errno());
    }
    if cmd == 0 {
        exec_command(plan);
    }
    libc::close(plan.out_w);
    libc::close(plan.err_w);
    let mut code = 125;
    loop {
        let mut status = 0;
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == cmd {
            code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                125
            };
            break;
        }
        if pid < 0 && errno() != libc::EINTR {
            break;
        }
    }
    libc::_exit(code);
}

/// The command process: stdio, working directory, credentials,
/// capabilities, no-new-privileges, seccomp, then `execve`.
unsafe fn exec_command(plan: &ChildPlan) -> ! {
    let null = libc::open(plan.dev_null.as_ptr(), libc::O_RDONLY);
    if null < 0
        || libc::dup2(null, 0) < 0
        || libc::dup2(plan.out_w, 1) < 0
        || libc::dup2(plan.out_w, 2) < 0
    {
        fail(plan, ChildStep::Stdio, errno());
    }
    // Nothing but stdio (and the close-on-exec error pipe) reaches the command.
    libc::syscall(
        libc::SYS_close_range,
        3 as libc::c_uint,
        libc::c_uint::MAX,
        libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
    );
    // Signal state is inherited through exec: start clean.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }

    if libc::chdir(plan.cwd.as_ptr()) != 0 {
        fail(plan, ChildStep::Workdir, errno());
    }
    for cap in 0..=plan.last_cap {
        if plan.keep_caps & (1u64 << cap) == 0
            && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            && errno() != libc::EINVAL
        {
            fail(plan, ChildStep::Capabilities, errno());
        }
    }
    if libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) != 0 {
        fail(plan, ChildStep::Groups, errno());
    }
    if libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0 {
        fail(plan, ChildStep::Gid, errno());
    }
    if libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0 {
        fail(plan, ChildStep::Uid, errno());
    }
    // Root keeps Docker's default set; other users lost everything with
    // setresuid (their caps come only from file capabilities, bounded above).
    if plan.uid == 0 {
        let header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let lo = (plan.keep_caps & 0xffff_ffff) as u32;
        let hi = (plan.keep_caps >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: lo,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: hi,
            },
        ];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            fail(plan, ChildStep::Capabilities, errno());
        }
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(plan, ChildStep::NoNewPrivs, errno());
    }
    let prog = libc::sock_fprog {
        len: plan.seccomp.len() as u16,
        filter: plan.seccomp.as_ptr() as *mut libc::sock_filter,
    };
    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0 {
        fail(plan, ChildStep::Seccomp, errno());
    }
    let mut err = libc::ENOENT;
    for path in &plan.exec_candidates {
        libc::execve(
            path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.env_ptrs.as_ptr(),
        );
        let e = errno();
        // Keep looking on "not here"; remember a more telling error.
        if e != libc::ENOENT && e != libc::ENOTDIR {
            err = e;
        }
    }
    fail(plan, ChildStep::Exec, err);
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `ip link set lo up` with ioctls (a fresh network namespace has it down).
unsafe fn loopback_up() -> Result<(), i32> {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return Err(errno());
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) != 0 {
        return Err(errno());
    }
    req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    if libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req) != 0 {
        return Err(errno());
    }
    libc::close(sock);
    Ok(())
}
