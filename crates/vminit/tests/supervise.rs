//! The PID 1 supervision loop against real child processes.
//!
//! Runs without the libtest harness: the loop collects signals with
//! `sigtimedwait`, which needs them blocked in every thread of the process,
//! and reaps with `waitpid(-1)`, which must not race other tests. So this
//! is a single-threaded program that runs its cases in order. It makes
//! itself a child subreaper so orphans come to it as they would to PID 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_vminit::process::{self, StopPolicy, DEFAULT_PATH};
use firebuild_vminit::signals;
use firebuild_vminit::users::ExecUser;

fn root_user() -> ExecUser {
    ExecUser {
        uid: 0,
        gid: 0,
        supplementary: vec![],
        home: "/root".into(),
        name: Some("root".into()),
    }
}

fn start(script: &str) -> libc::pid_t {
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let env = vec![("PATH".to_string(), DEFAULT_PATH.to_string())];
    process::spawn(Path::new("/bin/sh"), &argv, &env, &root_user(), "/").expect("spawn sh")
}

fn policy(signal: libc::c_int, timeout_ms: u64) -> StopPolicy {
    StopPolicy {
        signal,
        timeout: Duration::from_millis(timeout_ms),
    }
}

/// Waits (bounded) for a file the child writes once its traps are set.
fn wait_for(path: &Path) {
    for _ in 0..1000 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the child never wrote {}", path.display());
}

fn raise(sig: libc::c_int) {
    // SAFETY: sends a signal to this (single-threaded) process; it is
    // blocked, so it stays pending for the supervision loop.
    assert_eq!(unsafe { libc::kill(libc::getpid(), sig) }, 0);
}

fn zombies_of_mine() -> Vec<String> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() }.to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some(after) = stat.rsplit_once(") ").map(|(_, a)| a.to_string()) else {
            continue;
        };
        let f: Vec<&str> = after.split(' ').collect();
        if f.len() > 1 && f[0] == "Z" && f[1] == me {
            out.push(stat);
        }
    }
    out
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn case(name: &str, f: impl FnOnce()) {
    print!("supervise: {name} ... ");
    f();
    println!("ok");
}

fn main() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only changes who adopts orphans.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    signals::block_handled().expect("block signals");
    // As under `nohup`: whatever this harness inherits, its children must
    // start with default dispositions, or the HUP case below would hang.
    // SAFETY: signal(2) with SIG_IGN on a blocked signal.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let dir = std::env::temp_dir().join(format!("vminit-supervise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir = TempDir(dir);

    case("exit code is returned", || {
        let pid = start("exit 3");
        assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 10_000)), 3);
    });

    case("the entrypoint starts with no signal blocked", || {
        // The supervisor keeps its signals blocked; the child must not
        // inherit that mask (a shell's traps would never fire).
        let pid = start("m=$(sed -n 's/^SigBlk:[[:space:]]*//p' /proc/$$/status); [ \"$m\" = 0000000000000000 ]");
        assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 10_000)), 0);
    });

    case("the entrypoint starts with no signal ignored", || {
        let pid = start("m=$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status); [ \"$m\" = 0000000000000000 ]");
        assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 10_000)), 0);
    });

    case("killed by a signal is 128+n", || {
        let pid = start("kill -9 $$");
        assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 10_000)), 137);
    });

    case("orphans are reaped while the entrypoint runs", || {
        let pidfile = dir.0.join("orphan.pid");
        // The subshell exits at once, orphaning its background child to us.
        // The entrypoint then waits for the orphan to vanish from /proc,
        // which only happens once the supervisor reaps it (a zombie stays
        // visible): exit 0 proves reaping, 99 means it never happened.
        let script = format!(
            "( sh -c 'echo $$ > {p}; exit 0' & ); \
             while [ ! -s {p} ]; do sleep 0.01; done; o=$(cat {p}); \
             for i in $(seq 1 1000); do [ -e /proc/$o ] || exit 0; sleep 0.01; done; exit 99",
            p = pidfile.display()
        );
        let pid = start(&script);
        assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 10_000)), 0);
        assert!(zombies_of_mine().is_empty(), "{:?}", zombies_of_mine());
    });

    case("a stop request sends STOPSIGNAL", || {
        let ready = dir.0.join("ready-usr1");
        let pid = start(&format!(
            "trap 'exit 42' USR1; trap '' TERM INT; touch {}; while :; do sleep 0.05; done",
            ready.display()
        ));
        wait_for(&ready);
        raise(libc::SIGINT); // what ctrl-alt-del gives PID 1
        assert_eq!(process::supervise(pid, policy(libc::SIGUSR1, 30_000)), 42);
    });

    case(
        "a stop request is followed by SIGKILL after the grace period",
        || {
            let ready = dir.0.join("ready-stubborn");
            let pid = start(&format!(
                "trap '' TERM INT; touch {}; while :; do sleep 0.05; done",
                ready.display()
            ));
            wait_for(&ready);
            raise(libc::SIGTERM);
            assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 200)), 137);
        },
    );

    case("other signals are forwarded as they are", || {
        let ready = dir.0.join("ready-hup");
        let pid = start(&format!(
            // Bounded: no stop request ends this case, so a HUP that never
            // arrives must end it (99) rather than hang the harness.
            "trap 'exit 7' HUP; touch {}; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 99",
            ready.display()
        ));
        wait_for(&ready);
        raise(libc::SIGHUP);
        assert_eq!(process::supervise(pid, policy(libc::SIGTERM, 30_000)), 7);
    });

    case("no zombies are left", || {
        // Give late orphans (the sleep of the killed loops) a moment to end,
        // then reap what is left without touching processes outside ours.
        std::thread::sleep(Duration::from_millis(200));
        loop {
            let mut st = 0;
            // SAFETY: plain waitpid.
            if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        assert!(zombies_of_mine().is_empty());
    });
}
