//! Stand-ins for the `firecracker` and `jailer` executables, for tests of
//! code that launches them.
//!
//! `firecracker` is a shell script that re-runs the test binary that
//! installed it, as the test [`PROCESS_TEST`], with the socket, id and jail
//! root in the environment; that test calls [`serve_process`], which serves
//! the API stand-in until killed (or SendCtrlAltDel). The `jailer` script
//! does what callers rely on: the jail directory, a copy of the exec file,
//! the pid file, the API socket under the jail root, `--netns`; it does not
//! chroot, drop privileges or create cgroups.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::record::read_request_log;
use super::server::{Options, StandIn};
use super::StandInError;
use crate::process::ProcStat;

/// The test each binary that installs [`Executables`] must define, at its
/// root, as `#[test] fn standin_process() { serve_process(...) }`.
pub const PROCESS_TEST: &str = "standin_process";

const ENV_SOCKET: &str = "FIREBUILD_STANDIN_SOCKET";
const ENV_ID: &str = "FIREBUILD_STANDIN_ID";
const ENV_ROOT: &str = "FIREBUILD_STANDIN_ROOT";
const ENV_LOG: &str = "FIREBUILD_STANDIN_LOG";

/// What the `firecracker` script hands the stand-in process.
#[derive(Debug, Clone)]
pub struct ProcessEnv {
    /// The `--api-sock` path, as a host path.
    pub socket: PathBuf,
    /// The `--id` argument.
    pub id: String,
    /// The jail root, when started by the `jailer` stand-in.
    pub root: Option<PathBuf>,
    /// Where to keep the request log ([`Executables::requests`]).
    pub request_log: Option<PathBuf>,
}

impl ProcessEnv {
    /// `None` unless this process was started by the `firecracker` script.
    pub fn from_env() -> Option<ProcessEnv> {
        let socket = std::env::var_os(ENV_SOCKET)?;
        Some(ProcessEnv {
            socket: socket.into(),
            id: std::env::var(ENV_ID).unwrap_or_default(),
            root: std::env::var_os(ENV_ROOT).map(PathBuf::from),
            request_log: std::env::var_os(ENV_LOG).map(PathBuf::from),
        })
    }

    /// A stand-in process behaves like Firecracker: it checks the host's
    /// kernel, drive and tap, resolves paths in its jail, keeps the request
    /// log and exits after SendCtrlAltDel.
    pub fn options(&self) -> Options {
        Options {
            check_host_resources: true,
            root: self.root.clone(),
            exit_on_ctrl_alt_del: true,
            id: self.id.clone(),
            request_log: self.request_log.clone(),
            ..Options::default()
        }
    }
}

/// The body of the [`PROCESS_TEST`] test: does nothing unless started by
/// the `firecracker` script; then serves the stand-in with the options
/// `customize` makes of [`ProcessEnv::options`], and never returns.
pub fn serve_process(customize: impl FnOnce(&ProcessEnv, Options) -> Options) {
    let Some(env) = ProcessEnv::from_env() else {
        return;
    };
    let options = customize(&env, env.options());
    match StandIn::start_with(&env.socket, options) {
        Ok(standin) => loop {
            // Serving happens on the stand-in's thread until the process
            // is killed or exits after SendCtrlAltDel.
            std::thread::park();
            let _ = &standin;
        },
        Err(e) => {
            // Its stderr is what the launching code reports.
            eprintln!("firecracker stand-in: {e}");
            std::process::exit(1);
        }
    }
}

/// The `firecracker` and `jailer` stand-ins installed in `DIR/bin`, with
/// the pids of the stand-in processes and their request logs. Kills every
/// stand-in process it started when dropped.
pub struct Executables {
    bin: PathBuf,
    pids: PathBuf,
    logs: PathBuf,
}

impl Executables {
    /// Writes `DIR/bin/firecracker` and `DIR/bin/jailer`; the stand-in
    /// processes are this test binary (see [`PROCESS_TEST`]).
    pub fn install(dir: &Path) -> Result<Executables, StandInError> {
        let exes = Executables {
            bin: dir.join("bin"),
            pids: dir.join("standin.pids"),
            logs: dir.join("standin-logs"),
        };
        for d in [&exes.bin, &exes.logs] {
            std::fs::create_dir_all(d).map_err(|source| StandInError::Io {
                what: "create",
                path: d.clone(),
                source,
            })?;
        }
        let exe = std::env::current_exe().map_err(|source| StandInError::Io {
            what: "find the test binary",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        exes.script(
            "firecracker",
            &firecracker_script(&exe, &exes.pids, &exes.logs),
        )?;
        exes.script("jailer", &jailer_script())?;
        Ok(exes)
    }

    /// The `firecracker` stand-in.
    pub fn firecracker(&self) -> PathBuf {
        self.bin.join("firecracker")
    }

    /// The `jailer` stand-in.
    pub fn jailer(&self) -> PathBuf {
        self.bin.join("jailer")
    }

    /// Writes an executable script `bin/NAME` (e.g. a `firecracker` that
    /// fails), replacing what was there.
    pub fn script(&self, name: &str, text: &str) -> Result<PathBuf, StandInError> {
        let path = self.bin.join(name);
        std::fs::write(&path, text)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|source| StandInError::Io {
                what: "write",
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    /// Pids of every stand-in process started, in order.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The exchanges the stand-in of VM `id` has had so far (see
    /// [`super::Recorded::to_json`]).
    pub fn requests(&self, id: &str) -> Result<Vec<Value>, StandInError> {
        read_request_log(&self.logs.join(format!("{id}.json")))
    }

    /// Waits until the stand-in of `id` has had `n` exchanges or `timeout`
    /// passed; returns those it had.
    pub fn wait_requests(
        &self,
        id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, StandInError> {
        let start = Instant::now();
        loop {
            let requests = self.requests(id)?;
            if requests.len() >= n || start.elapsed() >= timeout {
                return Ok(requests);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Executables {
    /// Never leave a stand-in process behind, even when a test fails.
    fn drop(&mut self) {
        for pid in self.pids().into_iter().filter(|p| process_alive(*p)) {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Whether `pid` runs (a zombie does not).
pub fn process_alive(pid: u32) -> bool {
    ProcStat::read(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Polls until `pid` no longer runs or `timeout` passed; true if gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn firecracker_script(exe: &Path, pids: &Path, logs: &Path) -> String {
    format!(
        r#"#!/bin/sh
# Stand-in for the firecracker binary: serves the API stand-in on --api-sock.
sock=""; id=""
while [ $# -gt 0 ]; do
  case "$1" in
    --api-sock) sock="$2"; shift 2 ;;
    --id) id="$2"; shift 2 ;;
    *) shift ;;
  esac
done
echo $$ >> '{pids}'
{ENV_SOCKET}="$sock" {ENV_ID}="$id" {ENV_LOG}='{logs}/'"$id"'.json' exec '{exe}' --exact {PROCESS_TEST} --nocapture --test-threads=1 --quiet
"#,
        pids = pids.display(),
        logs = logs.display(),
        exe = exe.display()
    )
}

fn jailer_script() -> String {
    format!(
        r#"#!/bin/sh
# Stand-in for the jailer: jail dir, exec copy, pid file, socket under the
# root, Firecracker started inside --netns. With --daemonize it behaves as
# the real jailer's double fork does: the process started exits 0 at once,
# and a detached one does the rest, writing the pid file only after the
# started process is gone (reaped), so a caller that reads the pid file
# on the jailer's exit finds none.
all="$*"; id=""; exec_file=""; base=""; netns=""; daemonize=""
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id="$2"; shift 2 ;;
    --exec-file) exec_file="$2"; shift 2 ;;
    --chroot-base-dir) base="$2"; shift 2 ;;
    --netns) netns="$2"; shift 2 ;;
    --daemonize) daemonize=1; shift ;;
    --new-pid-ns) shift ;;
    --) shift; break ;;
    *) shift 2 ;;
  esac
done
[ "$1" = "--api-sock" ] || {{ echo "jailer stand-in: expected --api-sock after --" >&2; exit 2; }}
name=$(basename "$exec_file")
dir="$base/$name/$id"
root="$dir/root"
sock="$root$2"
mkdir -p "$root/run" || exit 1
cp "$exec_file" "$root/$name" || exit 1
echo "$all" > "$dir/jailer.args"
jail() {{
  if [ -n "$netns" ]; then
    {ENV_ROOT}="$root" nsenter --net="$netns" -- "$exec_file" --id "$id" --api-sock "$sock" </dev/null >"$dir/standin.out" 2>&1 &
  else
    {ENV_ROOT}="$root" "$exec_file" --id "$id" --api-sock "$sock" </dev/null >"$dir/standin.out" 2>&1 &
  fi
  echo $! > "$root/$name.pid"
}}
if [ -z "$daemonize" ]; then
  jail
  exit 0
fi
started=$$
(
  while kill -0 "$started" 2>/dev/null; do sleep 0.01; done
  jail
) </dev/null >/dev/null 2>&1 &
exit 0
"#
    )
}
