//! The build network's filter on hosts with many addresses: each test runs
//! itself again in a network namespace of its own (`unshare -n`) whose `lo`
//! holds 3, 60 or 600 more addresses, so the machine's own interfaces are
//! neither needed nor touched. There a default-network build works, and a
//! RUN that connects to the last of those addresses fails at its line.
//! Run as root.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use firebuild_builder::BuildError;

/// Set in the re-run of a test inside its namespace: how many addresses.
const INSIDE: &str = "FIREBUILD_TEST_NETNS_ADDRESSES";

/// The `n`th extra address (1-based), from 10.91.0.1 upwards.
fn extra_address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 91, 0, 0)) + n)
}

/// Runs test `name` again in a new network namespace with `count` extra
/// addresses, or, inside it, runs `body`.
fn in_namespace_with(name: &str, count: u32) {
    if std::env::var_os(INSIDE).is_some() {
        inside(count);
        return;
    }
    let out = Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, count.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("running unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "in the namespace:\n{text}");
    // The inner harness ran this very test (not zero tests).
    assert!(text.contains("1 passed"), "in the namespace:\n{text}");
}

fn inside(count: u32) {
    let mut batch = String::from("link set lo up\n");
    for n in 1..=count {
        batch.push_str(&format!("addr add {}/32 dev lo\n", extra_address(n)));
    }
    let mut ip = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ip.stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success(), "adding {count} addresses");

    // A service on every address of this namespace.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = Arc::new(AtomicBool::new(false));
    let flag = reached.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            flag.store(true, Ordering::SeqCst);
            let _ = conn.write_all(b"host-service\n");
        }
    });

    let f = Fixture::new();
    f.busybox_base();
    let out = f
        .build(
            "FROM busybox:test\nRUN ip -4 -o addr show tap0 > /nat\n",
            "tests/many:1",
        )
        .expect("a default-network build");
    assert!(
        cat(&out.dir.join("rootfs"), "/nat").contains("10.0.2.100/24"),
        "the step had the NAT's interface"
    );

    let last = extra_address(count);
    let df = format!("FROM busybox:test\nRUN true\nRUN nc -w 3 {last} {port} </dev/null\n");
    let err = f.build(&df, "tests/many:2").unwrap_err();
    match &err {
        BuildError::RunFailed { at, .. } => assert_eq!(at.line, 3, "{err}"),
        other => panic!("connecting to {last} was not a failed RUN: {other}"),
    }
    assert!(
        !reached.load(Ordering::SeqCst),
        "a RUN step connected to {last}"
    );
}

#[test]
fn three_more_addresses() {
    in_namespace_with("three_more_addresses", 3);
}

#[test]
fn sixty_more_addresses() {
    in_namespace_with("sixty_more_addresses", 60);
}

#[test]
fn six_hundred_more_addresses() {
    in_namespace_with("six_hundred_more_addresses", 600);
}
