//! One host connection: frames in, requests dispatched by channel, replies
//! and output out. When the host goes away (EOF, or a broken stream) the
//! processes it started are hung up.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebuild_agent_proto::frame::CHUNK;
use firebuild_agent_proto::tree::{self, TreeWriter};
use firebuild_agent_proto::{
    read_frame, write_frame, ContainerRootReady, Envelope, Failure, Frame, Kind, Pong, Removed,
    Request, VERSION,
};

use super::{exec, Context};
use crate::log;

/// The connection's write side, shared by every session on it (one frame
/// per write, under the lock).
pub type Writer = Arc<ConnWriter>;

pub struct ConnWriter {
    file: Mutex<File>,
    /// Set when the host went away: a virtio-serial port is reused by the
    /// next client, which must not get frames of the sessions before it.
    closed: AtomicBool,
}

/// Sends a frame; a host that went away is noticed by the reader.
pub fn send(w: &Writer, frame: &Frame) -> io::Result<()> {
    let mut f = w.file.lock().unwrap_or_else(|e| e.into_inner());
    if w.closed.load(Ordering::SeqCst) {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    write_frame(&mut *f, frame)
}

pub fn fail(w: &Writer, channel: u32, failure: &Failure) {
    let _ = send(w, &Frame::json(channel, Kind::Error, failure));
}

fn reply(w: &Writer, channel: u32, value: &impl serde::Serialize) {
    let _ = send(w, &Frame::json(channel, Kind::Reply, value));
}

enum Session {
    Exec(exec::Control),
    /// `None` once the copy failed: its remaining frames are dropped.
    CopyIn(Option<Box<TreeWriter>>),
}

/// How long the rest of a frame may take once its first bytes arrived. A
/// frame cut short means its client is gone (a virtio-serial port may
/// already carry the next client's bytes): the connection ends, and the
/// port is reopened, which drops what it still holds.
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads from the connection, waiting without limit for the start of a
/// frame and at most [`FRAME_TIMEOUT`] for anything after it.
struct FrameReader {
    file: File,
    /// Set before each frame: the next read may wait forever.
    idle: bool,
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = if self.idle {
            -1
        } else {
            FRAME_TIMEOUT.as_millis() as libc::c_int
        };
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid descriptor.
        match unsafe { libc::poll(&mut pfd, 1, timeout) } {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a frame stopped half-way",
                ))
            }
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
        let n = self.file.read(buf)?;
        self.idle = false;
        Ok(n)
    }
}

/// Serves one connection until the host closes it.
pub fn serve(reader: File, writer: File, ctx: &Arc<Context>) {
    let out: Writer = Arc::new(ConnWriter {
        file: Mutex::new(writer),
        closed: AtomicBool::new(false),
    });
    let mut sessions: HashMap<u32, Session> = HashMap::new();
    let mut r = BufReader::with_capacity(
        CHUNK + 64,
        FrameReader {
            file: reader,
            idle: true,
        },
    );
    loop {
        if r.buffer().is_empty() {
            r.get_mut().idle = true;
        }
        match read_frame(&mut r) {
            Ok(Some(frame)) => handle(frame, &mut sessions, &out, ctx),
            Ok(None) => break,
            Err(e) => {
                log::warn(format_args!("agent: dropping a host connection: {e}"));
                break;
            }
        }
    }
    // Under the lock: no frame of ours is half-way out when it closes.
    {
        let _f = out.file.lock().unwrap_or_else(|e| e.into_inner());
        out.closed.store(true, Ordering::SeqCst);
    }
    for (_, s) in sessions.drain() {
        if let Session::Exec(c) = s {
            c.hang_up();
        }
    }
}

fn handle(frame: Frame, sessions: &mut HashMap<u32, Session>, out: &Writer, ctx: &Arc<Context>) {
    let ch = frame.channel;
    match frame.kind {
        Kind::Request => {
            sessions.retain(|_, s| !matches!(s, Session::Exec(c) if c.finished()));
            let env: Envelope = match frame.parse() {
                Ok(e) => e,
                Err(e) => return fail(out, ch, &Failure::new(1, e.to_string())),
            };
            if env.version != VERSION {
                return fail(
                    out,
                    ch,
                    &Failure::new(
                        1,
                        format!(
                            "the host speaks agent protocol {}, this VM's guest init speaks {VERSION}: use the same firebuild for both (rebuild the image)",
                            env.version
                        ),
                    ),
                );
            }
            match env.request {
                Request::Exec(req) => match exec::start(ctx, ch, req, out) {
                    Ok(c) => {
                        sessions.insert(ch, Session::Exec(c));
                    }
                    Err(f) => fail(out, ch, &f),
                },
                Request::CopyIn { dest, parents } => {
                    let made = if parents {
                        std::fs::create_dir_all(&dest)
                    } else {
                        Ok(())
                    };
                    match made {
                        Ok(()) => {
                            sessions
                                .insert(ch, Session::CopyIn(Some(Box::new(TreeWriter::new(dest)))));
                        }
                        Err(e) => fail(out, ch, &Failure::new(1, format!("creating {dest}: {e}"))),
                    }
                }
                Request::CopyOut { source } => {
                    let out = Arc::clone(out);
                    std::thread::spawn(move || copy_out(&source, ch, &out));
                }
                Request::LayerOut if crate::build_step::is_build_mode() => {
                    let out = Arc::clone(out);
                    std::thread::spawn(move || layer_out(ch, &out));
                }
                Request::LayerOut => fail(
                    out,
                    ch,
                    &Failure::new(1, "this VM does not run a build step"),
                ),
                Request::Health => reply(out, ch, &ctx.health.report()),
                Request::Stats => match super::stats::read() {
                    Ok(stats) => reply(out, ch, &stats),
                    Err(e) => fail(out, ch, &Failure::new(1, format!("reading /proc: {e}"))),
                },
                Request::Reidentify(identity) => match super::reidentify::apply(ctx, &identity) {
                    Ok(done) => reply(out, ch, &done),
                    Err(e) => fail(
                        out,
                        ch,
                        &Failure::new(1, format!("taking on the fork's identity: {e}")),
                    ),
                },
                Request::ContainerRoot { id, disk } => {
                    // Waits for the hot-plugged disk: off this connection's loop.
                    let out = Arc::clone(out);
                    std::thread::spawn(move || match super::pod::mount_root(&id, &disk) {
                        Ok(root) => reply(
                            &out,
                            ch,
                            &ContainerRootReady {
                                path: root.display().to_string(),
                            },
                        ),
                        Err(e) => fail(
                            &out,
                            ch,
                            &Failure::new(1, format!("mounting the root of container {id}: {e}")),
                        ),
                    });
                }
                Request::RemoveContainerRoot { id } => match super::pod::remove_root(&id) {
                    Ok(()) => reply(out, ch, &Removed {}),
                    Err(e) => fail(
                        out,
                        ch,
                        &Failure::new(1, format!("removing the root of container {id}: {e}")),
                    ),
                },
                Request::Ping => reply(
                    out,
                    ch,
                    &Pong {
                        version: VERSION,
                        agent: env!("CARGO_PKG_VERSION").into(),
                    },
                ),
            }
        }
        Kind::Stdin | Kind::Resize | Kind::Signal => {
            if let Some(Session::Exec(c)) = sessions.get_mut(&ch) {
                c.control(&frame);
            }
        }
        Kind::Entry | Kind::Data | Kind::End => {
            let Some(Session::CopyIn(slot)) = sessions.get_mut(&ch) else {
                return;
            };
            let Some(writer) = slot.as_mut() else {
                if frame.kind == Kind::End {
                    sessions.remove(&ch);
                }
                return;
            };
            match tree::receive(writer, frame.kind, &frame.payload) {
                Ok(false) => {}
                Ok(true) => {
                    let writer = slot.take().expect("checked above");
                    match writer.finish() {
                        Ok(copied) => reply(out, ch, &copied),
                        Err(e) => fail(out, ch, &Failure::new(1, e.to_string())),
                    }
                    sessions.remove(&ch);
                }
                Err(e) => {
                    // Dropping the writer removes the file it was writing.
                    *slot = None;
                    fail(out, ch, &Failure::new(1, e.to_string()));
                }
            }
        }
        _ => {}
    }
}

/// Sends the tree at `source`, or the error that stops it.
fn copy_out(source: &str, ch: u32, out: &Writer) {
    let sent = tree::send(std::path::Path::new(source), &mut |kind, payload| {
        send(out, &Frame::new(ch, kind, payload.to_vec()))
    });
    if let Err(e) = sent {
        fail(out, ch, &Failure::new(1, e.to_string()));
    }
}

/// Ends the build step and sends its diff, or the error that stops it.
fn layer_out(ch: u32, out: &Writer) {
    let sent = (|| {
        let upper = crate::build_step::finish()?;
        crate::build_step::enter(&upper)?;
        tree::send_layer(std::path::Path::new("."), &mut |kind, payload| {
            send(out, &Frame::new(ch, kind, payload.to_vec()))
        })
    })();
    if let Err(e) = sent {
        fail(
            out,
            ch,
            &Failure::new(1, format!("sending the step's diff: {e}")),
        );
    }
}
