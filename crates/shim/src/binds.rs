//! Bind mounts of the spec copied into the VM before its process starts,
//! through the agent (as `firebuild cp` copies): a VM shares no host
//! directory, so what kubelet and `ctr --mount` bind in arrives as files
//! the container may read (and change, without reaching the host).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use firebuild_agent_proto::{tree, write_frame, Copied, Failure, Frame, Kind, Request};
use firebuild_vm::{AgentConnection, AgentEndpoint};

use crate::spec::BindMount;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Copies every bind mount's source to its destination under `root` in
/// the VM (`/`, or a pod container's root; blocking). The destination's
/// missing parents are created.
pub fn copy_all(endpoint: &AgentEndpoint, root: &Path, binds: &[BindMount]) -> anyhow::Result<()> {
    for bind in binds {
        copy_one(endpoint, root, bind).with_context(|| {
            format!(
                "copying bind mount {} -> {} into the VM",
                bind.source.display(),
                bind.destination.display()
            )
        })?;
    }
    Ok(())
}

fn copy_one(endpoint: &AgentEndpoint, root: &Path, bind: &BindMount) -> anyhow::Result<Copied> {
    let parent = bind.destination.parent().unwrap_or(Path::new("/"));
    let parent = root.join(parent.strip_prefix("/").unwrap_or(parent));
    let name = bind
        .destination
        .file_name()
        .and_then(|n| n.to_str())
        .context("the destination has no usable name")?
        .to_owned();
    let mut conn = AgentConnection::open(endpoint, ANSWER_TIMEOUT)?;
    conn.request(Request::CopyIn {
        dest: parent.display().to_string(),
        parents: true,
    })?;
    let channel = conn.channel();
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let sender = {
        let source = bind.source.clone();
        std::thread::spawn(move || {
            tree::send_as(&source, &name, &mut |kind, payload| {
                let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                write_frame(&mut *w, &Frame::new(channel, kind, payload.to_vec()))
            })
        })
    };
    // The guest answers once the tree is complete, or refuses early:
    // either way the sender is done, or must stop (and the port be free).
    let answer = conn.recv(Some(ANSWER_TIMEOUT));
    if let Ok(stream) = conn.try_clone() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread failed"))?;
    let frame = answer?;
    match frame.kind {
        Kind::Reply => Ok(frame.parse()?),
        Kind::Error => {
            let failure: Failure = frame.parse()?;
            sent?;
            anyhow::bail!("{}", failure.message)
        }
        other => anyhow::bail!("the agent answered {other:?} to a copy"),
    }
}
