//! The guest kernel command line, as Firecracker wants it.
//!
//! Firecracker appends `root=/dev/vda rw|ro` (from the root drive),
//! `virtio_mmio.device=…` (one per device) and `pci=off` itself, so those
//! must not be in what we send: a second `root=` would fight with its own.

use std::fmt;

use crate::error::{Error, Result};

/// A Firecracker-style command line: serial console on ttyS0, reboot through
/// the keyboard controller (which makes Firecracker exit when the guest
/// reboots or gets Ctrl+Alt+Del), and no slow i8042 probing.
pub const RECOMMENDED_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Firecracker's x86_64 command line buffer.
pub const FIRECRACKER_CMDLINE_MAX: usize = 2048;

/// Room left for what Firecracker appends (`root=`, one `virtio_mmio.device=`
/// of about 35 bytes per device, `pci=off`).
pub const FIRECRACKER_APPEND_RESERVE: usize = 256;

/// Keys Firecracker sets itself.
const RESERVED_KEYS: &[&str] = &["root", "virtio_mmio.device"];

/// Builds a command line argument by argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootArgs {
    args: Vec<String>,
}

impl BootArgs {
    /// An empty command line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from [`RECOMMENDED_BOOT_ARGS`].
    pub fn recommended() -> Self {
        let mut b = Self::new();
        b.args = RECOMMENDED_BOOT_ARGS
            .split_whitespace()
            .map(str::to_string)
            .collect();
        b
    }

    /// Appends one argument (`quiet`, `init=/sbin/init`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends `key=value`.
    pub fn kv(self, key: &str, value: impl fmt::Display) -> Self {
        self.arg(format!("{key}={value}"))
    }

    /// The command line, checked with [`check_boot_args`].
    pub fn build(&self) -> Result<String> {
        let line = self.to_string();
        check_boot_args(&line)?;
        Ok(line)
    }
}

impl fmt::Display for BootArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.args.join(" "))
    }
}

/// Refuses what Firecracker would reject or fight with: keys it sets itself,
/// control characters, and lines too long to leave room for its additions.
pub fn check_boot_args(line: &str) -> Result<()> {
    if let Some(c) = line.chars().find(|c| c.is_control() && *c != ' ') {
        return Err(Error::config(
            "boot_args",
            format!("contains the control character {c:?}; use plain spaces between arguments"),
        ));
    }
    for token in line.split_whitespace() {
        let key = token.split_once('=').map_or(token, |(k, _)| k);
        if RESERVED_KEYS.contains(&key) {
            return Err(Error::config(
                "boot_args",
                format!("{token:?} is set by Firecracker itself (from the root drive and devices); remove it"),
            ));
        }
    }
    let max = FIRECRACKER_CMDLINE_MAX - FIRECRACKER_APPEND_RESERVE;
    if line.len() > max {
        return Err(Error::config(
            "boot_args",
            format!(
                "{} bytes, more than the {max} that leave room for Firecracker's own arguments in its {FIRECRACKER_CMDLINE_MAX}-byte command line",
                line.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommended_line_passes_and_extends() {
        let line = BootArgs::recommended()
            .kv("init", "/.firebuild/init")
            .kv("firebuild.metadata", "mmds")
            .build()
            .unwrap();
        assert!(line.starts_with("console=ttyS0 reboot=k panic=1"));
        assert!(line.ends_with("init=/.firebuild/init firebuild.metadata=mmds"));
    }

    #[test]
    fn keys_firecracker_sets_are_refused() {
        for bad in [
            "console=ttyS0 root=/dev/vda",
            "root=PARTUUID=1234",
            "virtio_mmio.device=4K@0xd0000000:5",
        ] {
            let err = check_boot_args(bad).unwrap_err().to_string();
            assert!(err.contains("set by Firecracker"), "{bad}: {err}");
        }
        // A key that merely starts with "root" is someone else's.
        check_boot_args("rootwait rootfstype=ext4").unwrap();
    }

    #[test]
    fn control_characters_and_overlong_lines_are_refused() {
        assert!(check_boot_args("a\nb").is_err());
        assert!(check_boot_args("a\0b").is_err());
        let long = "x".repeat(FIRECRACKER_CMDLINE_MAX - FIRECRACKER_APPEND_RESERVE + 1);
        let err = check_boot_args(&long).unwrap_err().to_string();
        assert!(err.contains("leave room"), "{err}");
        check_boot_args(&long[1..]).unwrap();
    }
}
