//! A running Firecracker process as later commands find it again: its pid
//! (guarded against pid reuse by the process start time), its API socket
//! and its jail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::jail::Jail;

/// What to keep (e.g. in the VM's state file) to manage the VM later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProcess {
    pub vm_id: String,
    pub pid: u32,
    /// Start time of the process in clock ticks after boot (`/proc/<pid>/stat`
    /// field 22): a pid whose start time differs is another process.
    pub start_time: u64,
    /// The API socket, as a host path.
    pub api_socket: PathBuf,
    /// The jail, when started through the jailer.
    pub jail: Option<Jail>,
}

/// What /proc says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

impl ProcStat {
    /// Reads /proc/<pid>/stat; `None` when there is no such process.
    pub(crate) fn read(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&text)
    }
}

/// Parses /proc/<pid>/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

impl VmProcess {
    /// Records `pid` with its current start time.
    pub fn new(vm_id: &str, pid: u32, api_socket: PathBuf, jail: Option<Jail>) -> Result<Self> {
        let stat = ProcStat::read(pid).ok_or_else(|| Error::ExitedEarly {
            pid,
            socket: api_socket.clone(),
            hint: None,
        })?;
        Ok(VmProcess {
            vm_id: vm_id.to_string(),
            pid,
            start_time: stat.start_time,
            api_socket,
            jail,
        })
    }

    /// Whether the recorded process still runs (a zombie does not).
    pub fn is_running(&self) -> bool {
        match ProcStat::read(self.pid) {
            Some(stat) => {
                stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X' | 'x')
            }
            None => false,
        }
    }

    /// Sends SIGKILL if the process still runs.
    pub fn kill(&self) -> Result<()> {
        self.signal(rustix::process::Signal::KILL, "SIGKILL")
    }

    /// Sends SIGTERM if the process still runs.
    pub fn terminate(&self) -> Result<()> {
        self.signal(rustix::process::Signal::TERM, "SIGTERM")
    }

    fn signal(&self, signal: rustix::process::Signal, name: &'static str) -> Result<()> {
        use rustix::io::Errno;
        let err = |e: Errno| Error::Signal {
            signal: name,
            pid: self.pid,
            source: e.into(),
        };
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(());
        };
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        // The pidfd pins the process: once it is confirmed ours, the signal
        // cannot reach a process that reused the pid.
        if !self.is_running() {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(&pidfd, signal) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// A client for this VM's API socket.
    pub fn client(&self) -> crate::Client {
        crate::Client::new(&self.api_socket)
    }

    /// Removes what the VM left outside its run directory: the jail and its
    /// cgroups, or the API socket when not jailed. Refuses while it runs.
    /// Idempotent.
    pub fn cleanup(&self) -> Result<()> {
        if self.is_running() {
            return Err(Error::StillRunning { pid: self.pid });
        }
        match &self.jail {
            Some(jail) => jail.remove(&crate::CgroupLayout::detect()?),
            None => crate::machine::remove_stale_socket(&self.api_socket),
        }
    }

    /// Polls until the process is gone or `timeout` passed; true if gone.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if !self.is_running() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Pids of the live processes whose root directory is `root` (the jail
/// root they chrooted into): everything a jailer started for that jail,
/// whether or not it has written its pid file yet. Empty when `root` is
/// gone. Needs the right to read other users' `/proc/<pid>/root` (root).
pub(crate) fn processes_rooted_at(root: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(root) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/root"))
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .filter(|pid| ProcStat::read(*pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x')))
        .collect()
}

/// SIGKILLs every process rooted at `root` (see [`processes_rooted_at`])
/// and waits up to `grace` for them to go; returns the pids still there.
/// Each is pinned by a pidfd and checked again before the signal, so a
/// reused pid is never hit.
pub(crate) fn kill_rooted_at(root: &std::path::Path, grace: Duration) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let start = Instant::now();
    loop {
        let pids = processes_rooted_at(root);
        if pids.is_empty() || start.elapsed() >= grace {
            return pids;
        }
        let want = std::fs::metadata(root).ok();
        for pid in pids {
            let Some(raw) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            else {
                continue;
            };
            let still_ours = want.as_ref().is_some_and(|w| {
                std::fs::metadata(format!("/proc/{pid}/root"))
                    .is_ok_and(|m| m.dev() == w.dev() && m.ino() == w.ino())
            });
            if still_ours {
                let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "4242 (fire cracker) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
    }

    #[test]
    fn own_process_is_running_and_pid_reuse_is_detected() {
        let me = std::process::id();
        let p = VmProcess::new("t", me, PathBuf::from("/nonexistent"), None).unwrap();
        assert!(p.is_running());
        let reused = VmProcess {
            start_time: p.start_time + 1,
            ..p.clone()
        };
        assert!(!reused.is_running());
        // Signalling a "reused" pid must not touch the live process.
        reused.kill().unwrap();
        assert!(p.is_running());
    }

    #[test]
    fn exited_child_is_not_running() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = VmProcess::new("t", child.id(), PathBuf::from("/x"), None).unwrap();
        assert!(p.is_running());
        p.kill().unwrap();
        // Unreaped, it is a zombie: not running either.
        assert!(p.wait_exit(Duration::from_secs(10)));
        child.wait().unwrap();
        assert!(!p.is_running());
    }
}
