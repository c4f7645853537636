//! Log output on stderr: human-readable, or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{GlobalArgs, LogLevel};

pub fn init(global: &GlobalArgs) {
    let level = match global.log_level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // RUST_LOG, when set, refines per module; --log-level is the default.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if global.log_as_json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        let color = global
            .log_color
            .unwrap_or_else(|| std::io::stderr().is_terminal());
        builder
            .with_ansi(color)
            .with_target(false)
            .without_time()
            .init();
    }
}
