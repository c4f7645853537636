//! Signal names (Docker's STOPSIGNAL forms) and the init's signal mask.

use std::io;
use std::time::Duration;

/// Signals PID 1 handles synchronously: blocked at start, then collected with
/// `sigtimedwait` in the supervision loop, so no async handler is needed.
pub const HANDLED: &[libc::c_int] = &[
    libc::SIGCHLD,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGPWR,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Signals that ask the VM to stop: SIGINT is what the kernel sends PID 1 on
/// ctrl-alt-del once `RB_DISABLE_CAD` is set (QEMU `sendkey
/// ctrl-alt-delete`, Firecracker `SendCtrlAltDel`); SIGTERM and SIGPWR are
/// the conventional init stop requests.
pub const STOP_REQUESTS: &[libc::c_int] = &[libc::SIGINT, libc::SIGTERM, libc::SIGPWR];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown signal {0:?}: use a name such as SIGTERM or TERM, SIGRTMIN+3, or a number from 1 to 64"
)]
pub struct SignalError(pub String);

const NAMES: &[(&str, libc::c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The kernel's real-time range as seen by programs: glibc reserves the
/// first two, so SIGRTMIN is 34, as Docker (Go) also counts it.
const RTMIN: libc::c_int = 34;
const RTMAX: libc::c_int = 64;

/// Parses a signal as Docker accepts STOPSIGNAL: `SIGTERM`, `TERM`,
/// `sigterm`, `15`, `SIGRTMIN+3`, `RTMAX-1`. Empty means SIGTERM.
pub fn parse_signal(text: &str) -> Result<libc::c_int, SignalError> {
    let err = || SignalError(text.to_string());
    let t = text.trim();
    if t.is_empty() {
        return Ok(libc::SIGTERM);
    }
    if let Ok(n) = t.parse::<libc::c_int>() {
        return if (1..=RTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(err())
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let offset = |rest: &str, sign: char| -> Option<libc::c_int> {
        if rest.is_empty() {
            return Some(0);
        }
        let n: libc::c_int = rest.strip_prefix(sign)?.parse().ok()?;
        Some(if sign == '+' { n } else { -n })
    };
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        offset(rest, '+').map(|o| RTMIN + o)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        offset(rest, '-').map(|o| RTMAX + o)
    } else {
        None
    };
    n.filter(|n| (RTMIN..=RTMAX).contains(n)).ok_or_else(err)
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks the handled signals in the calling thread (PID 1's only thread),
/// so they stay pending until [`wait`] collects them. Children get an empty
/// mask back (the standard library resets it before exec).
pub fn block_handled() -> io::Result<()> {
    let set = sigset(HANDLED);
    // SAFETY: valid set pointer; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Puts every signal back to its default action, in a child about to exec
/// (async-signal-safe). A mask is not all a process inherits: a signal
/// ignored on entry (SIGHUP under `nohup`, SIGPIPE in Rust programs) stays
/// ignored across exec, and a shell cannot even trap it. As a PID 1 must,
/// the init hands its processes a clean slate.
pub fn reset_dispositions() {
    /// The kernel's `struct sigaction` (x86_64), which glibc's wrapper
    /// would refuse for the two real-time signals it reserves.
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=RTMAX {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct and no old-action
        // pointer; in a child about to exec, no handler is needed.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// Unblocks every signal (before handing over to the image's own init).
pub fn unblock_all() -> io::Result<()> {
    let set = sigset(&[]);
    // SAFETY: valid set pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of the handled signals (they must be blocked), at most
/// `timeout` (forever when `None`). `Ok(None)` on timeout or interruption.
pub fn wait(timeout: Option<Duration>) -> io::Result<Option<libc::c_int>> {
    let set = sigset(HANDLED);
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: valid set and optional timespec; siginfo is not requested.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), ts_ptr) };
    if rc >= 0 {
        return Ok(Some(rc));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_short_names_and_numbers() {
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal(" sigquit "), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("USR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("SIGPWR"), Ok(libc::SIGPWR));
        assert_eq!(parse_signal(""), Ok(libc::SIGTERM), "empty is the default");
        assert_eq!(parse_signal("SIGRTMIN"), Ok(34));
        assert_eq!(parse_signal("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse_signal("RTMAX-1"), Ok(63));
        assert_eq!(parse_signal("64"), Ok(64));
    }

    #[test]
    fn rejects_unknown_and_out_of_range() {
        for bad in [
            "SIGFOO",
            "0",
            "65",
            "-1",
            "TERM15",
            "SIGRTMIN+40",
            "RTMAX+1",
            "RTMIN-1",
            "SIG",
        ] {
            let e = parse_signal(bad).unwrap_err();
            assert_eq!(e, SignalError(bad.to_string()));
            assert!(e.to_string().contains(bad));
        }
    }
}
