//! A network namespace holding a tap, for the stand-in's host check of
//! `PUT /network-interfaces` (Firecracker opens the tap in its own
//! namespace, so tests that launch into `--netns` need one).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::StandInError;

/// A network namespace made for one test (`ip netns add`), removed on drop.
/// Needs root and iproute2.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name, holding the tap `tap` if
    /// given.
    pub fn create(tap: Option<&str>) -> Result<Netns, StandInError> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fbsi-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // From here on, drop removes it, also when adding the tap fails.
        let ns = Netns { name };
        if let Some(tap) = tap {
            ip(&["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        }
        Ok(ns)
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, as `--netns` takes it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!("{e}");
        }
    }
}

fn ip(args: &[&str]) -> Result<(), StandInError> {
    let command = format!("ip {}", args.join(" "));
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| StandInError::Command {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(StandInError::Command {
        command,
        reason: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}
