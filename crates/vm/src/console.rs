//! The serial console: streaming `console.log` to the user without the
//! exit-code marker line the guest init prints for the host.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use firebuild_metadata::boot::{exit_code_from_console, EXIT_CODE_MARKER};
use tokio::io::AsyncReadExt;

use crate::error::VmError;

/// Drops the `firebuild-exit-code=<n>` line from a byte stream, passing
/// everything else through as soon as it cannot be that line (so prompts
/// without a newline are not held back). The guest init prints a newline
/// before the marker (so it starts a line), which makes a blank line right
/// before it: that one is dropped too. What follows the marker is the
/// kernel powering off, and is dropped as well.
#[derive(Debug, Default)]
pub struct MarkerFilter {
    /// The current line, held while it may still be the marker.
    held: Vec<u8>,
    /// The current line was already let through (it is not the marker).
    passing: bool,
    /// A blank line, held until we know whether the marker follows.
    blank: Option<Vec<u8>>,
    /// The marker was seen: the guest is shutting down.
    ended: bool,
}

/// Could `line` (the start of a line) still be, or be, a marker line?
fn may_be_marker(line: &[u8]) -> bool {
    let text = trim_ascii_start(line);
    let marker = EXIT_CODE_MARKER.as_bytes();
    if text.len() <= marker.len() {
        return marker.starts_with(text);
    }
    text.starts_with(marker)
        && text[marker.len()..]
            .iter()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && *b == b'-') || b.is_ascii_whitespace())
}

fn trim_ascii_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Is `line` (without its newline) a complete marker line?
fn is_marker_line(line: &[u8]) -> bool {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.trim().strip_prefix(EXIT_CODE_MARKER))
        .is_some_and(|n| n.parse::<i32>().is_ok())
}

impl MarkerFilter {
    /// Feeds bytes, returns what may be shown now.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.ended {
                break;
            }
            if self.passing {
                out.push(b);
                if b == b'\n' {
                    self.passing = false;
                }
                continue;
            }
            if b == b'\n' {
                if is_marker_line(&self.held) {
                    self.ended = true;
                    self.blank = None;
                } else if self.held.iter().all(u8::is_ascii_whitespace) {
                    out.extend(self.blank.take().unwrap_or_default());
                    let mut line = std::mem::take(&mut self.held);
                    line.push(b);
                    self.blank = Some(line);
                } else {
                    out.extend(self.blank.take().unwrap_or_default());
                    out.append(&mut self.held);
                    out.push(b);
                }
                self.held.clear();
                continue;
            }
            self.held.push(b);
            if !may_be_marker(&self.held) {
                out.extend(self.blank.take().unwrap_or_default());
                out.append(&mut self.held);
                self.passing = true;
            }
        }
        out
    }

    /// Ends the stream: held output that is not the marker is shown.
    pub fn finish(&mut self) -> Vec<u8> {
        self.passing = false;
        let held = std::mem::take(&mut self.held);
        if self.ended || is_marker_line(&held) {
            return Vec::new();
        }
        let mut out = self.blank.take().unwrap_or_default();
        out.extend(held);
        out
    }
}

/// Reads the exit code from a console log (the last marker line), reading
/// only its tail: the marker is printed right before power-off.
pub fn exit_code_from_log(path: &Path) -> Option<i32> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    exit_code_from_console(&String::from_utf8_lossy(&buf))
}

/// Follows a growing log file from `offset`, writing what it reads through
/// a [`MarkerFilter`] into `sink`.
pub struct ConsoleFollower {
    path: std::path::PathBuf,
    file: tokio::fs::File,
    filter: MarkerFilter,
    buf: Vec<u8>,
}

/// How often a followed log is polled for new output.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

impl ConsoleFollower {
    pub async fn open(path: &Path) -> Result<Self, VmError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| VmError::io("opening the console log", path, e))?;
        Ok(ConsoleFollower {
            path: path.to_owned(),
            file,
            filter: MarkerFilter::default(),
            buf: vec![0; 64 * 1024],
        })
    }

    /// Copies everything new into `sink`; returns whether anything was read.
    pub async fn pump(&mut self, sink: &mut (dyn Write + Send)) -> Result<bool, VmError> {
        let mut any = false;
        loop {
            let n = self
                .file
                .read(&mut self.buf)
                .await
                .map_err(|e| VmError::io("reading the console log", &self.path, e))?;
            if n == 0 {
                break;
            }
            any = true;
            let shown = self.filter.feed(&self.buf[..n]);
            sink.write_all(&shown).map_err(VmError::ConsoleSink)?;
        }
        if any {
            sink.flush().map_err(VmError::ConsoleSink)?;
        }
        Ok(any)
    }

    /// Copies what is left and flushes a held partial line.
    pub async fn finish(&mut self, sink: &mut (dyn Write + Send)) -> Result<(), VmError> {
        self.pump(sink).await?;
        let rest = self.filter.finish();
        sink.write_all(&rest).map_err(VmError::ConsoleSink)?;
        sink.flush().map_err(VmError::ConsoleSink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_all(chunks: &[&[u8]]) -> String {
        let mut f = MarkerFilter::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(f.feed(c));
        }
        out.extend(f.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn drops_only_the_marker_line() {
        let text = b"hello\r\nfirebuild-exit-code=3\r\n[ 4.05] reboot: Restarting system\n";
        assert_eq!(filter_all(&[text]), "hello\r\n");
        // Byte by byte gives the same result.
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(filter_all(&chunks), "hello\r\n");
    }

    #[test]
    fn the_blank_line_before_the_marker_goes_too() {
        let text = "hello\r\n\r\nfirebuild-exit-code=0\r\n";
        assert_eq!(filter_all(&[text.as_bytes()]), "hello\r\n");
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(filter_all(&chunks), "hello\r\n");
        // Other blank lines stay.
        let text = "a\n\n\nb\n\n";
        assert_eq!(filter_all(&[text.as_bytes()]), text);
        let mut f = MarkerFilter::default();
        assert_eq!(f.feed(b"a\n\n"), b"a\n");
        assert_eq!(f.feed(b"b"), b"\nb");
    }

    #[test]
    fn lookalikes_pass() {
        let text = "firebuild-exit-code=x\nfirebuild-exit\nsay firebuild-exit-code=1\nfirebuild-exit-code=12 extra\n";
        assert_eq!(filter_all(&[text.as_bytes()]), text);
    }

    #[test]
    fn prompts_are_not_held_back() {
        let mut f = MarkerFilter::default();
        assert_eq!(f.feed(b"password: "), b"password: ");
        // A possible marker prefix is held until it is decided.
        assert_eq!(f.feed(b"\nfire"), b"\n");
        assert_eq!(f.feed(b"fox\n"), b"firefox\n");
        assert_eq!(f.feed(b"firebuild-exit-code=-1"), b"");
        assert_eq!(f.finish(), b"");
    }

    #[test]
    fn exit_code_from_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text = "x".repeat(200_000);
        text.push_str("\nfirebuild-exit-code=42\r\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(exit_code_from_log(&path), Some(42));
        std::fs::write(&path, "no marker").unwrap();
        assert_eq!(exit_code_from_log(&path), None);
        assert_eq!(exit_code_from_log(&dir.path().join("missing")), None);
    }

    #[tokio::test]
    async fn follower_streams_appended_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"one\n").unwrap();
        let mut follower = ConsoleFollower::open(&path).await.unwrap();
        let mut sink: Vec<u8> = Vec::new();
        assert!(follower.pump(&mut sink).await.unwrap());
        assert!(!follower.pump(&mut sink).await.unwrap());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"two\npartial").unwrap();
        assert!(follower.pump(&mut sink).await.unwrap());
        f.write_all(b" line\nfirebuild-exit-code=0\nreboot\n")
            .unwrap();
        follower.finish(&mut sink).await.unwrap();
        assert_eq!(String::from_utf8(sink).unwrap(), "one\ntwo\npartial line\n");
    }
}
