//! `vminit`: the firebuild guest init (PID 1). See the library docs.

use firebuild_vminit::{init, log, power, signals};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("vminit {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // SAFETY: getpid(2) has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!(
            "vminit: must run as PID 1: the kernel starts it with init={}",
            firebuild_metadata::boot::GUEST_INIT_PATH
        );
        std::process::exit(2);
    }
    // Signals stay pending until the supervision loop collects them, so a
    // stop request during boot is not lost.
    if let Err(e) = signals::block_handled() {
        log::warn(format_args!("blocking signals: {e}"));
    }
    // PID 1 must not die: a panic still ends the VM with a marker line.
    std::panic::set_hook(Box::new(|info| {
        log::error(format_args!("internal error: {info}"));
        power::power_off(power::INTERNAL_FAILURE);
    }));
    let code = match init::run() {
        Ok(code) => code,
        Err(e) => {
            log::error(format_args!("{e}"));
            e.code()
        }
    };
    power::power_off(code)
}
