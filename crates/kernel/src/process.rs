//! Runs build commands with their output appended to one log file, and turns
//! failures into errors that name the step and keep the log's path.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::build::BuildStep;
use crate::error::{Error, Result};

pub(crate) struct StepLog {
    path: PathBuf,
    file: File,
    niceness: Option<i32>,
}

impl StepLog {
    /// Creates (truncates) the log file, making its directory if needed.
    pub(crate) fn create(path: &Path, niceness: Option<i32>) -> Result<StepLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create log directory", dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .read(true)
            .open(path)
            .map_err(|e| Error::io("create build log", path, e))?;
        Ok(StepLog {
            path: path.to_path_buf(),
            file,
            niceness,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a line to the log; a log that cannot be written is reported
    /// by the next command's failure, not here.
    pub(crate) fn note(&mut self, text: &str) {
        let _ = writeln!(self.file, "{text}");
    }

    /// A command, run under `nice` when a niceness was asked for.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match self.niceness {
            Some(n) => {
                let mut c = Command::new("nice");
                c.arg("-n").arg(n.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Runs `cmd` to completion with stdout and stderr in the log.
    pub(crate) fn run(&mut self, step: BuildStep, cmd: &mut Command) -> Result<()> {
        self.run_counting(step, cmd, &mut |_| {})
    }

    /// [`StepLog::run`], calling `compiled` about once a second with how
    /// many objects kbuild has compiled so far (its `  CC ` lines in the
    /// log).
    pub(crate) fn run_counting(
        &mut self,
        step: BuildStep,
        cmd: &mut Command,
        compiled: &mut dyn FnMut(usize),
    ) -> Result<()> {
        self.note(&format!("==> [{step}] {cmd:?}"));
        let out = self
            .file
            .try_clone()
            .map_err(|e| Error::io("reopen build log", &self.path, e))?;
        let err = self
            .file
            .try_clone()
            .map_err(|e| Error::io("reopen build log", &self.path, e))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let start = self.file.seek(SeekFrom::End(0)).unwrap_or(0);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| self.failed(step, format!("could not start {program}: {e}")))?;
        let mut counter = ObjectCounter::new(&self.path, start);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(self.failed(step, format!("waiting for {program}: {e}"))),
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            if let Some(n) = counter.update() {
                compiled(n);
            }
        };
        if status.success() {
            Ok(())
        } else {
            let tail = self.tail(3);
            let mut detail = format!("{program} exited with {status}");
            if !tail.is_empty() {
                detail.push_str(&format!("; last output: {}", tail.join(" | ")));
            }
            Err(self.failed(step, detail))
        }
    }

    /// The error for a failed step, pointing at this log.
    pub(crate) fn failed(&mut self, step: BuildStep, detail: String) -> Error {
        self.note(&format!("==> [{step}] failed: {detail}"));
        let _ = self.file.flush();
        Error::StepFailed {
            step,
            detail,
            log: self.path.clone(),
        }
    }

    /// The last `n` non-empty lines of the log (read from its last 8 KiB).
    fn tail(&mut self, n: usize) -> Vec<String> {
        let mut buf = Vec::new();
        let len = self.file.seek(SeekFrom::End(0)).unwrap_or(0);
        if self
            .file
            .seek(SeekFrom::Start(len.saturating_sub(8192)))
            .is_ok()
        {
            let _ = (&mut self.file).take(8192).read_to_end(&mut buf);
        }
        let _ = self.file.seek(SeekFrom::End(0));
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("==> "))
            .map(str::to_string)
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

/// Counts kbuild's `  CC ` lines appended to the log after `offset`.
struct ObjectCounter {
    file: Option<File>,
    offset: u64,
    partial: Vec<u8>,
    count: usize,
}

impl ObjectCounter {
    fn new(log: &Path, offset: u64) -> ObjectCounter {
        ObjectCounter {
            file: File::open(log).ok(),
            offset,
            partial: Vec::new(),
            count: 0,
        }
    }

    /// The new count, when it changed.
    fn update(&mut self) -> Option<usize> {
        let file = self.file.as_mut()?;
        file.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut new = Vec::new();
        let n = file.read_to_end(&mut new).ok()?;
        self.offset += n as u64;
        self.partial.extend_from_slice(&new);
        let before = self.count;
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            if self.partial.starts_with(b"  CC ") {
                self.count += 1;
            }
            self.partial.drain(..=end);
        }
        (self.count != before).then_some(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_names_the_step_the_output_and_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("logs/build.log");
        let mut log = StepLog::create(&log_path, Some(5)).unwrap();
        let mut ok = log.command("sh");
        ok.args(["-c", "echo fine"]);
        log.run(BuildStep::Configure, &mut ok).unwrap();
        let mut bad = log.command("sh");
        bad.args(["-c", "echo first; echo 'error: boom' >&2; exit 3"]);
        let err = log
            .run(BuildStep::Compile, &mut bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed at step \"compile\""), "{err}");
        assert!(
            err.contains("exit status: 3") && err.contains("error: boom"),
            "{err}"
        );
        assert!(err.contains(&log_path.display().to_string()), "{err}");
        let text = std::fs::read_to_string(&log_path).unwrap();
        assert!(
            text.contains("fine") && text.contains("error: boom"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_program_is_a_step_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = StepLog::create(&dir.path().join("b.log"), None).unwrap();
        let mut cmd = log.command("/nonexistent/firebuild-tool");
        let err = log
            .run(BuildStep::Extract, &mut cmd)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("could not start /nonexistent/firebuild-tool"),
            "{err}"
        );
    }
}
