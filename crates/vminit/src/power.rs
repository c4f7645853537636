//! Ending the VM: sync, hand the exit status to the host, reboot.
//!
//! The host runs QEMU with `-no-reboot` and the kernel with `reboot=k`, and
//! Firecracker exits on a guest reboot, so a reboot ends the VM everywhere.

use std::io::Write;

use firebuild_metadata::boot::EXIT_CODE_MARKER;

/// Exit status for an unexpected internal error of the init itself (a panic).
pub const INTERNAL_FAILURE: i32 = firebuild_metadata::boot::init_failure::INTERNAL;

/// The console line carrying the exit status. It starts with a newline so
/// the marker begins a line even when the entrypoint's last output did not
/// end with one.
pub fn marker_line(code: i32) -> String {
    format!("\n{EXIT_CODE_MARKER}{code}\n")
}

/// Syncs filesystems, prints the exit-code marker and reboots. Never
/// returns; when not PID 1 (rebooting is refused) it exits with `code`.
pub fn power_off(code: i32) -> ! {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(marker_line(code).as_bytes());
        let _ = out.flush();
    }
    // SAFETY: reboot(2) with a valid command; it only returns on failure.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // SAFETY: getpid(2) has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        std::process::exit(code);
    }
    // PID 1 must never exit (the kernel would panic and the marker would be
    // the last word anyway); wait for the host to end the VM.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_metadata::boot::exit_code_from_console;

    #[test]
    fn marker_is_found_by_the_host_parser_even_after_a_partial_line() {
        let console = format!("hello without newline{}", marker_line(3));
        assert_eq!(exit_code_from_console(&console), Some(3));
        let console = format!(
            "line\r\n{}reboot: Restarting system\r\n",
            marker_line(0).replace('\n', "\r\n")
        );
        assert_eq!(exit_code_from_console(&console), Some(0));
    }
}
