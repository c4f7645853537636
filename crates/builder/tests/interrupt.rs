//! A build killed in the middle of a RUN (SIGINT, SIGTERM, SIGKILL) leaves
//! no tag, no mounts and no processes. The build runs in a child process:
//! this test binary re-executed as the `driver` test. Run as root.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use firebuild_builder::{build, BuildError, BuildOptions};
use firebuild_store::DirectoryStore;

const DRIVER_ENV: &str = "FIREBUILD_TEST_DRIVER";

/// Not a test on its own: the child process of the tests below. It reads
/// `store|cache|dockerfile|vminit|tag` from the environment and builds.
#[test]
#[ignore]
fn driver() {
    let Ok(spec) = std::env::var(DRIVER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let store = DirectoryStore::new(parts[0]);
    let mut o = BuildOptions::new(parts[2], parts[1], parts[3]);
    o.tag = Some(parts[4].into());
    o.sandbox = firebuild_builder::testing::sandbox();
    o.cancel.cancel_on_signals().unwrap();
    match build(&store, &o) {
        Ok(_) => std::process::exit(0),
        Err(BuildError::Interrupted) => std::process::exit(130),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// Kills (by `signal`) the driver once its RUN step is running.
fn interrupt_with(signal: i32) {
    let f = Fixture::new();
    f.busybox_base();
    let marker = format!("3{}{signal}", std::process::id());
    let dockerfile = f.ctx().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        format!("FROM busybox:test\nRUN touch /started; sleep 1{marker} & sleep 2{marker}\n"),
    )
    .unwrap();
    let spec = format!(
        "{}|{}|{}|{}|tests/interrupted:1",
        f.store.root().display(),
        f.cache().display(),
        dockerfile.display(),
        f.dir.path().join("vminit").display()
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "driver",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DRIVER_ENV, spec)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(f.dir.path().join("driver.err")).unwrap())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(120);
    while processes_with(&format!("sleep 2{marker}")).is_empty() {
        assert!(Instant::now() < deadline, "the RUN step never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the driver exited early: {}",
            std::fs::read_to_string(f.dir.path().join("driver.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, signal) };
    let status = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the driver did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let _reap = Reap(child);
    if signal == libc::SIGKILL {
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    } else {
        assert_eq!(status.code(), Some(130), "graceful stop on signal {signal}");
    }
    // No processes: they die with the sandbox's PID 1 (PDEATHSIG on SIGKILL).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "sandbox processes survived: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        mounts_under(f.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(f.dir.path())
    );
    assert!(
        !f.store.contains(&"tests/interrupted:1".parse().unwrap()),
        "no tag"
    );
    let tmp: PathBuf = f.cache().join("build/tmp");
    if signal != libc::SIGKILL {
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "unfinished layers removed"
        );
    }
    // The next build cleans what a SIGKILL left, and works.
    f.build("FROM busybox:test\nRUN true\n", "tests/after:1")
        .expect("next build");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "stale layers cleaned"
    );
    let staging = f.store.root().join(".staging");
    assert_eq!(
        std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[test]
fn sigint_mid_run_leaves_nothing() {
    interrupt_with(libc::SIGINT);
}

#[test]
fn sigterm_mid_run_leaves_nothing() {
    interrupt_with(libc::SIGTERM);
}

#[test]
fn sigkill_mid_run_leaves_nothing() {
    interrupt_with(libc::SIGKILL);
}
