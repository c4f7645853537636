//! A minimal QMP client: one JSON object per line over QEMU's Unix socket.
//! Enough for `send-key`, `quit`, `stop`/`cont` and migration to and from
//! a file descriptor passed with `getfd`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::error::VmError;

/// A negotiated QMP session.
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation
    /// mode. Every step is bounded by `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, VmError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| qmp_error(socket, "timed out connecting"))?
            .map_err(|e| qmp_error(socket, &format!("connecting: {e}")))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            socket: socket.to_owned(),
            reader: BufReader::new(read),
            writer,
            timeout,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error(
                socket,
                &format!("unexpected greeting {greeting}"),
            ));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value; QEMU's `error` is
    /// turned into [`VmError::Qmp`]. Events arriving meanwhile are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmError> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        tokio::time::timeout(self.timeout, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| qmp_error(&self.socket, &format!("timed out sending {command}")))?
            .map_err(|e| qmp_error(&self.socket, &format!("sending {command}: {e}")))?;
        self.read_reply(command).await
    }

    /// The reply to `command`, skipping events.
    async fn read_reply(&mut self, command: &str) -> Result<Value, VmError> {
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(ret) = message.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = message.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(qmp_error(&self.socket, &format!("{command}: {desc}")));
            }
        }
    }

    /// Hands `fd` to QEMU under `name` (`getfd`, the descriptor travels
    /// with the command as SCM_RIGHTS), for `fd:<name>` migration URIs.
    pub async fn pass_fd(
        &mut self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), VmError> {
        self.execute_with_fd("getfd", json!({ "fdname": name }), fd)
            .await
            .map(drop)
    }

    /// Adds `fd` to fd set `set` (`add-fd`), which block devices open as
    /// `/dev/fdset/<set>`.
    pub async fn add_fd(
        &mut self,
        set: u32,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), VmError> {
        self.execute_with_fd("add-fd", json!({ "fdset-id": set }), fd)
            .await
            .map(drop)
    }

    /// Runs `command` with `fd` sent along as SCM_RIGHTS.
    async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, VmError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        let fds = [fd];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
        let socket = self.writer.as_ref();
        let sent = tokio::time::timeout(self.timeout, async {
            loop {
                socket.writable().await?;
                match socket.try_io(tokio::io::Interest::WRITABLE, || {
                    rustix::net::sendmsg(
                        socket,
                        &[std::io::IoSlice::new(line.as_bytes())],
                        &mut control,
                        rustix::net::SendFlags::empty(),
                    )
                    .map_err(std::io::Error::from)
                }) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| qmp_error(&self.socket, "timed out passing a file descriptor"))?
        .map_err(|e| qmp_error(&self.socket, &format!("passing a file descriptor: {e}")))?;
        if sent != line.len() {
            return Err(qmp_error(
                &self.socket,
                &format!("{command} was sent only in part"),
            ));
        }
        self.read_reply(command).await
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate` ...).
    pub async fn status(&mut self) -> Result<String, VmError> {
        let status = self.execute("query-status", None).await?;
        Ok(status["status"].as_str().unwrap_or("unknown").to_owned())
    }

    /// Waits until the migration QEMU runs (out or in) is over; an error
    /// carries QEMU's reason.
    pub async fn wait_for_migration(&mut self, poll: Duration) -> Result<(), VmError> {
        loop {
            let state = self.execute("query-migrate", None).await?;
            match state["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    let why = state["error-desc"].as_str().unwrap_or("no reason given");
                    return Err(qmp_error(&self.socket, &format!("migration failed: {why}")));
                }
                _ => tokio::time::sleep(poll).await,
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| qmp_error(&self.socket, "timed out waiting for QEMU"))?
            .map_err(|e| qmp_error(&self.socket, &format!("reading: {e}")))?;
        if n == 0 {
            return Err(qmp_error(&self.socket, "QEMU closed the connection"));
        }
        serde_json::from_str(&line)
            .map_err(|e| qmp_error(&self.socket, &format!("bad message {line:?}: {e}")))
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub async fn ctrl_alt_delete(&mut self) -> Result<(), VmError> {
        let keys: Vec<Value> = ["ctrl", "alt", "delete"]
            .iter()
            .map(|k| json!({ "type": "qcode", "data": k }))
            .collect();
        self.execute("send-key", Some(json!({ "keys": keys })))
            .await
            .map(drop)
    }

    /// Asks QEMU to exit now. QEMU may close the socket before replying.
    pub async fn quit(&mut self) -> Result<(), VmError> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(VmError::Qmp { reason, .. }) if reason.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn qmp_error(socket: &Path, reason: &str) -> VmError {
    VmError::Qmp {
        socket: socket.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: checks each request, answers from the script.
    async fn fake_qemu(listener: UnixListener, script: Vec<(&'static str, String)>) -> Vec<Value> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for (expect, reply) in script {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let req: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(req["execute"], expect);
            seen.push(req);
            write.write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_sends_keys() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_qemu(
            listener,
            vec![
                ("qmp_capabilities", "{\"return\": {}}\n".into()),
                (
                    "send-key",
                    "{\"event\": \"X\", \"data\": {}}\n{\"return\": {}}\n".into(),
                ),
                (
                    "query-status",
                    "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n".into(),
                ),
            ],
        ));
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
        qmp.ctrl_alt_delete().await.unwrap();
        let err = qmp.execute("query-status", None).await.unwrap_err();
        assert!(err.to_string().contains("query-status: nope"), "{err}");
        let seen = server.await.unwrap();
        assert_eq!(seen[1]["arguments"]["keys"][2]["data"], "delete");
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_missing_socket_fails() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let err = Qmp::connect(&sock, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("connecting"), "{err}");

        let listener = UnixListener::bind(&sock).unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(s);
        });
        let err = Qmp::connect(&sock, Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("timed out"), "{err}");
        hold.abort();
    }
}
