//! Per-layer download and upload progress on a terminal; silent when
//! stderr is not one.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of progress bars, one per blob.
#[derive(Clone)]
pub(crate) struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars are drawn only when `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Progress {
        let multi = (enabled && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { multi }
    }

    /// A bar for one blob of `size` bytes.
    pub fn bar(&self, label: &str, size: u64) -> Bar {
        let Some(multi) = &self.multi else {
            return Bar::hidden();
        };
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let pb = multi.add(ProgressBar::new(size).with_style(style));
        pb.set_prefix(label.to_string());
        Bar(pb)
    }
}

/// One blob's bar.
#[derive(Clone)]
pub(crate) struct Bar(ProgressBar);

impl Bar {
    /// A bar that draws nothing (blobs too small to show).
    pub fn hidden() -> Bar {
        Bar(ProgressBar::hidden())
    }

    pub fn set(&self, pos: u64) {
        self.0.set_position(pos);
    }

    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    pub fn done(&self, msg: &'static str) {
        self.0.finish_with_message(msg);
    }

    pub fn failed(&self) {
        self.0.abandon_with_message("failed");
    }
}
