//! Robust process identity: a pid plus the process's start time (field 22 of
//! `/proc/<pid>/stat`, in clock ticks since boot), so a pid reused by another
//! process is never mistaken for the VMM. Signals go through a pidfd opened
//! and then re-checked, so they cannot hit a process that replaced ours.

use std::io;

use rustix::process::{Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};

/// A process, identified beyond its (reusable) pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Start time in clock ticks after boot, from `/proc/<pid>/stat`.
    pub start_time: u64,
}

/// The parts of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatInfo {
    state: char,
    start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<StatInfo> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: field 3 is the state, field 22 the start time.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(StatInfo { state, start_time })
}

fn read_stat(pid: i32) -> io::Result<StatInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat format"),
        )
    })
}

impl ProcessIdentity {
    /// Identifies the live process `pid`.
    pub fn of(pid: i32) -> io::Result<Self> {
        let stat = read_stat(pid)?;
        Ok(ProcessIdentity {
            pid,
            start_time: stat.start_time,
        })
    }

    /// This process.
    pub fn current() -> io::Result<Self> {
        Self::of(std::process::id() as i32)
    }

    /// True while the process exists, is the same one (same start time) and
    /// has not exited (a zombie counts as exited).
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Ok(stat) => stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X'),
            Err(_) => false,
        }
    }

    /// Sends `signal` if the process is still this one. Returns `false` when
    /// it has already gone.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let Some(pid) = Pid::from_raw(self.pid) else {
            return Ok(false);
        };
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        // The pidfd pins the process that holds `pid` now; only signal it
        // if that is still the one we recorded.
        if !self.is_alive() {
            return Ok(false);
        }
        match rustix::process::pidfd_send_signal(&pidfd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the process is gone, polling every `interval`, for at
    /// most `timeout`. Returns whether it is gone.
    pub async fn wait_exit(
        &self,
        timeout: std::time::Duration,
        interval: std::time::Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 100000 200 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let info = parse_stat(line).unwrap();
        assert_eq!(info.state, 'S');
        assert_eq!(info.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none());
    }

    #[test]
    fn current_process_is_alive() {
        let me = ProcessIdentity::current().unwrap();
        assert!(me.is_alive());
        // Same pid, different start time: a reused pid is not "us".
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
        assert!(!impostor.signal(Signal::TERM).unwrap());
    }

    #[tokio::test]
    async fn child_exit_and_zombie_are_detected() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id() as i32).unwrap();
        assert!(id.is_alive());
        assert!(id.signal(Signal::KILL).unwrap());
        // Not yet reaped: a zombie, which counts as exited.
        assert!(
            id.wait_exit(Duration::from_secs(5), Duration::from_millis(10))
                .await
        );
        child.wait().unwrap();
        assert!(!id.is_alive());
        assert!(!id.signal(Signal::KILL).unwrap());
        assert!(ProcessIdentity::of(child.id() as i32).is_err());
    }
}
