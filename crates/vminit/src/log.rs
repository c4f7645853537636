//! Console messages of the init.
//!
//! A tiny stand-in for a logging framework: the init writes a handful of
//! lines to the console (its stderr), and a full subscriber would add most of
//! the binary's size. Info lines appear only with `firebuild.debug` on the
//! kernel command line; warnings and errors always do.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Turns info lines on or off.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

fn line(level: &str, msg: std::fmt::Arguments<'_>) {
    // One write per line so concurrent console output does not interleave
    // mid-line; errors writing to the console cannot be reported anywhere.
    let text = format!("vminit: {level}{msg}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Prints an info line when verbose.
pub fn info(msg: std::fmt::Arguments<'_>) {
    if VERBOSE.load(Ordering::Relaxed) {
        line("", msg);
    }
}

/// Prints a warning line.
pub fn warn(msg: std::fmt::Arguments<'_>) {
    line("warning: ", msg);
}

/// Prints an error line.
pub fn error(msg: std::fmt::Arguments<'_>) {
    line("error: ", msg);
}
