//! A stand-in for Firecracker, for tests (cargo feature `test-support`,
//! off by default).
//!
//! **This is not Firecracker.** Firecracker cannot run on the machines
//! firebuild is developed on, so code that drives it is tested against
//! this stand-in instead. It serves Firecracker's HTTP API on a Unix
//! socket ([`StandIn`]), checks every request against the v1.16.1 API spec
//! ([`ApiSpec`], the crate's one copy at [`SPEC_PATH`]), enforces the API's
//! pre-boot/post-boot rules and answers errors as Firecracker does
//! (`400 {"fault_message": "..."}`). It boots nothing. On request
//! ([`Options`]) it also checks the host's kernel, drive and tap, writes
//! lines to the serial output as a guest would (on start, on
//! Ctrl-Alt-Del), keeps a request log file and exits after Ctrl-Alt-Del.
//!
//! For code that launches Firecracker, [`Executables`] installs stand-in
//! `firecracker` and `jailer` executables that run the stand-in as its own
//! process (see [`serve_process`]), and [`Netns`] makes a network
//! namespace holding a tap for them.
//!
//! Setup failures come back as [`StandInError`]; tests unwrap them.

mod netns;
mod openapi;
mod process;
mod record;
mod rules;
mod server;

use std::path::PathBuf;

pub use netns::Netns;
pub use openapi::{ApiSpec, Operation, SPEC_PATH, SPEC_YAML};
pub use process::{process_alive, serve_process, wait_gone, Executables, ProcessEnv, PROCESS_TEST};
pub use record::{read_request_log, Recorded};
pub use server::{Options, StandIn, VmModel};

/// Why the stand-in or one of its fixtures could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error("the Firecracker API spec ({SPEC_PATH}) cannot be used: {reason}")]
    Spec { reason: String },
    #[error("the Firecracker stand-in cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Firecracker stand-in cannot start its async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("`{command}` failed: {reason} (network namespaces need root and iproute2)")]
    Command { command: String, reason: String },
}
