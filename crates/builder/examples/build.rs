//! A thin command line over the build engine, for benchmarks and manual
//! runs until `firebuild rootfs` is wired to it:
//!
//! ```text
//! build --dockerfile SRC --tag T --store DIR --cache DIR --vminit FILE
//!       [--context DIR] [--no-cache] [--baseos] [--stage NAME]
//!       [--build-arg K=V]... [--size-mib N] [--network MODE] [--prune]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use firebuild_builder::{build, prune, BuildOptions, ImageType};
use firebuild_store::DirectoryStore;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).cloned()
    };
    let (Some(store), Some(cache), Some(vminit)) =
        (get("--store"), get("--cache"), get("--vminit"))
    else {
        eprintln!(
            "usage: build --dockerfile SRC --tag T --store DIR --cache DIR --vminit FILE [...]"
        );
        return ExitCode::from(2);
    };
    let store = DirectoryStore::new(store);
    if args.iter().any(|a| a == "--prune") {
        return match prune(&store, &PathBuf::from(&cache), true) {
            Ok(r) => {
                println!("{r:?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(dockerfile) = get("--dockerfile") else {
        eprintln!("--dockerfile is required");
        return ExitCode::from(2);
    };
    let mut o = BuildOptions::new(dockerfile, cache, vminit);
    o.tag = get("--tag");
    o.context_dir = get("--context").map(PathBuf::from);
    o.target_stage = get("--stage");
    o.filesystem_size_mib = get("--size-mib").and_then(|s| s.parse().ok());
    o.no_cache = args.iter().any(|a| a == "--no-cache");
    if let Some(n) = get("--network") {
        match firebuild_builder::Network::parse(&n) {
            Ok(n) => o.sandbox.network = n,
            Err(e) => {
                eprintln!("--network: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.iter().any(|a| a == "--baseos") {
        o.kind = ImageType::Baseos;
    }
    for (i, a) in args.iter().enumerate() {
        if a == "--build-arg" {
            if let Some((k, v)) = args.get(i + 1).and_then(|kv| kv.split_once('=')) {
                o.build_args.insert(k.into(), v.into());
            }
        }
    }
    if let Err(e) = o.cancel.cancel_on_signals() {
        eprintln!("error: installing signal handlers: {e}");
    }
    match build(&store, &o) {
        Ok(out) => {
            println!(
                "{} {} MiB {:.3}s steps={} cached={}",
                out.tag,
                out.metadata.rootfs_size >> 20,
                out.elapsed.as_secs_f64(),
                out.steps,
                out.cached_steps
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
