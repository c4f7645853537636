//! The contract between the host runtime and the guest init at boot.
//!
//! Both sides use these constants, so they cannot drift apart.

/// Where the build installs the guest init inside every root filesystem; the
/// runtime boots with `init=` pointing here.
pub const GUEST_INIT_PATH: &str = "/.firebuild/init";

/// Kernel command line key telling the guest init where its metadata is:
/// `firebuild.metadata=mmds` (Firecracker MMDS V2 at [`MMDS_ADDRESS`]) or
/// `firebuild.metadata=/dev/vdb` (a raw config drive, see [`config_drive`]).
pub const METADATA_KERNEL_ARG: &str = "firebuild.metadata";

/// The value of [`METADATA_KERNEL_ARG`] that selects MMDS.
pub const METADATA_FROM_MMDS: &str = "mmds";

/// Kernel argument naming the scratch disk (`firebuild.overlay=/dev/vdX`):
/// the init mounts it, builds an overlay root with the read-only root drive
/// as its lower layer and a directory of the disk as its upper layer, and
/// switches into it before anything else runs.
pub const OVERLAY_KERNEL_ARG: &str = "firebuild.overlay";

/// Kernel argument of a build-step VM (with [`OVERLAY_KERNEL_ARG`]): the
/// step's lower layers, one ext4 disk each, bottom first
/// (`firebuild.layers=/dev/vdd,/dev/vde`). The init stacks them, not the
/// root drive (which then only carries the init), under the overlay root,
/// mounted with `userxattr` like the host's build overlays, and runs in
/// build mode (see `firebuild_vminit::build_step`).
pub const LAYERS_KERNEL_ARG: &str = "firebuild.layers";

/// The link-local address Firecracker serves MMDS on (its default).
pub const MMDS_ADDRESS: &str = "169.254.169.254";

/// The line the guest init prints on the console, right before powering
/// off, to hand the entrypoint's exit status to the host:
/// `firebuild-exit-code=<n>`. The host parses it from the console log.
pub const EXIT_CODE_MARKER: &str = "firebuild-exit-code=";

/// Exit statuses the guest init reports (through [`EXIT_CODE_MARKER`]) for
/// its own failures, distinct from anything a shell returns for a command
/// (126, 127, 128+signal).
pub mod init_failure {
    /// The guest metadata could not be read or parsed.
    pub const METADATA: i32 = 240;
    /// Mounting the early filesystems failed.
    pub const MOUNTS: i32 = 241;
    /// Network, hostname, hosts, resolv.conf or SSH key set-up failed.
    pub const CONFIGURE: i32 = 242;
    /// The entrypoint could not be started (not found, bad user, ...).
    pub const START: i32 = 243;
    /// The guest init itself failed unexpectedly (a bug: please report it).
    pub const INTERNAL: i32 = 244;
}

/// Finds the exit code in a console log: the last marker line wins.
pub fn exit_code_from_console(console: &str) -> Option<i32> {
    console
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(EXIT_CODE_MARKER)?.parse().ok())
}

/// The raw config drive used under QEMU: the JSON [`crate::guest::MmdsDocument`]
/// followed by NUL padding to a whole number of 512-byte sectors. No
/// filesystem, so the guest kernel needs no extra driver to read it.
pub mod config_drive {
    use crate::guest::MmdsDocument;

    const SECTOR: usize = 512;

    /// Serializes the document into the drive image bytes.
    pub fn encode(doc: &MmdsDocument) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec(doc)?;
        let padded = bytes.len().div_ceil(SECTOR).max(1) * SECTOR;
        bytes.resize(padded, 0);
        Ok(bytes)
    }

    /// Parses drive bytes: the JSON ends at the first NUL (or the end).
    pub fn decode(bytes: &[u8]) -> Result<MmdsDocument, serde_json::Error> {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        serde_json::from_slice(&bytes[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{GuestMetadata, MmdsDocument, MmdsLatest};

    #[test]
    fn config_drive_round_trip_is_sector_aligned() {
        let doc = MmdsDocument {
            latest: MmdsLatest {
                meta_data: GuestMetadata {
                    vmm_id: "abc".into(),
                    ..Default::default()
                },
            },
        };
        let bytes = config_drive::encode(&doc).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(config_drive::decode(&bytes).unwrap(), doc);
        assert!(config_drive::decode(b"not json\0\0").is_err());
    }

    #[test]
    fn exit_code_marker_last_one_wins() {
        let log = "hello\nfirebuild-exit-code=3\nnoise\r\nfirebuild-exit-code=7\r\n";
        assert_eq!(exit_code_from_console(log), Some(7));
        assert_eq!(exit_code_from_console("no marker here"), None);
    }
}
