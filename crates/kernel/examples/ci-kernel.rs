//! Prints the path of the CI test kernel, building it into the cache first
//! if needed (see `firebuild_kernel::test_kernel`). For `.ci/run`:
//!
//! ```sh
//! cargo run -q -p firebuild-kernel --example ci-kernel            # path
//! cargo run -q -p firebuild-kernel --example ci-kernel -- --key   # cache key only
//! ```

use std::process::ExitCode;

use firebuild_kernel::test_kernel::{cache_key, ensure_cached, CacheOptions};

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("--key") => cache_key(&CacheOptions::from_env().source),
        None => ensure_cached().map(|p| p.display().to_string()),
        Some(other) => {
            eprintln!("usage: ci-kernel [--key] (unknown argument {other:?})");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
