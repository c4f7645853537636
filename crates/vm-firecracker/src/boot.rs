//! The Firecracker backend's part of the guest kernel command line.

use firebuild_firecracker::RECOMMENDED_BOOT_ARGS;
use firebuild_metadata::boot::{GUEST_INIT_PATH, METADATA_FROM_MMDS, METADATA_KERNEL_ARG};
use firebuild_vm::guest::BootArgs;

/// What the guest needs under Firecracker: [`RECOMMENDED_BOOT_ARGS`] (serial
/// console, `reboot=k` so Firecracker exits when the guest reboots, no
/// i8042 probing), the guest init, and `firebuild.metadata=mmds` so the init
/// reads its metadata from MMDS.
///
/// No `root=`: Firecracker appends `root=/dev/vda rw` (and its
/// `virtio_mmio.device=` entries) itself. Arguments the runtime already
/// puts first on every command line (console, reboot, panic, init) are left
/// out rather than repeated.
pub fn kernel_args() -> Vec<String> {
    let common = BootArgs::new(None, "firecracker", None)
        .map(|b| b.common)
        .unwrap_or_default();
    RECOMMENDED_BOOT_ARGS
        .split_whitespace()
        .map(str::to_owned)
        .chain([
            format!("init={GUEST_INIT_PATH}"),
            format!("{METADATA_KERNEL_ARG}={METADATA_FROM_MMDS}"),
        ])
        .filter(|arg| !common.contains(arg))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line_has_every_needed_argument_once_and_no_root() {
        let args = kernel_args();
        assert!(args.contains(&"firebuild.metadata=mmds".to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = BootArgs::new(None, "h", None)
            .unwrap()
            .render(&refs)
            .unwrap();
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for wanted in RECOMMENDED_BOOT_ARGS
            .split_whitespace()
            .chain(["init=/.firebuild/init", "firebuild.metadata=mmds"])
        {
            let n = tokens.iter().filter(|t| **t == wanted).count();
            assert_eq!(n, 1, "{wanted} appears {n} times in {line}");
        }
        assert!(!tokens.iter().any(|t| t.starts_with("root=")), "{line}");
        firebuild_firecracker::check_boot_args(&line).unwrap();
    }
}
