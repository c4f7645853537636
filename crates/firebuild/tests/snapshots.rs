//! Snapshots and forks through the real `firebuild` binary, QEMU under TCG:
//! pause/resume of an httpd VM, a snapshot of it, three forks answering at
//! their own addresses at once with the source's memory (a tmpfs token),
//! uptime and disk, but their own hostname, clock, entropy and writes;
//! `snapshot ls|inspect|rm`, and the failure paths (unknown VM or tag, an
//! incomplete snapshot, a full disk, Ctrl-C during create), leaving the host
//! as it was.
//!
//! Runs in the network test world (tests/net_world): needs root, Debian's
//! `containernetworking-plugins`, `busybox-static`, `qemu-system-x86`,
//! `e2fsprogs`, `iptables`, `iproute2`, the guest kernel and the static
//! guest init (see tests/network.rs).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firebuild_vm::testing;

mod net_world;

use net_world::*;

const SNAPSHOT: &str = "fbt/httpd:warm";

fn ip_of(w: &World, id: &str) -> Ipv4Addr {
    w.inspect(id)["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no address"))
        .parse()
        .unwrap()
}

fn answers(w: &World, ip: Ipv4Addr) -> Result<String, String> {
    http_get(&w.host, SocketAddr::from((ip, 80)))
}

/// `sh -c SCRIPT` in VM `id`; its stdout, trimmed.
fn sh(w: &World, id: &str, script: &str) -> String {
    w.ok(&["exec"], &["--vmm-id", id, "--", "sh", "-c", script])
        .trim()
        .to_owned()
}

fn status(w: &World, id: &str) -> String {
    w.inspect(id)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn uptime(w: &World, id: &str) -> f64 {
    sh(w, id, "cut -d' ' -f1 /proc/uptime").parse().unwrap()
}

fn fails(w: &World, command: &[&str], rest: &[&str]) -> String {
    let out = w.firebuild(command, rest);
    assert!(
        !out.status.success(),
        "firebuild {command:?} {rest:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Unmounts a tmpfs the test mounted, also when an assertion fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn forks_of_a_snapshot_answer_at_once_with_the_source_memory_and_their_own_identity() {
    let started = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let w = World::new();
    let kernel = testing::guest_kernel();
    w.ok(
        &["kernel", "add"],
        &["--file", kernel.to_str().unwrap(), "--id", KERNEL_ID],
    );
    w.ok(&["network", "create", NETWORK], &["--subnet", SUBNET]);

    // The source: the httpd image on the network.
    let src = w.vm("src");
    let out = w.run_vm("src", &["--daemonize", "--cni-network-name", NETWORK], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src_ip = ip_of(&w, &src);
    let page = eventually(BOOT_WAIT, || answers(&w, src_ip)).expect("the source answers");
    assert_eq!(page, w.page);
    lap("source up");

    // State only in guest memory and on its scratch disk.
    let token = format!("token-{}", std::process::id());
    sh(
        &w,
        &src,
        &format!(
            "mkdir -p /mem && mount -t tmpfs mem /mem && echo {token} > /mem/token && echo source > /etc/who && sync"
        ),
    );

    // pause stops the service; resume brings it back.
    w.ok(&["pause"], &["--vmm-id", &src]);
    assert_eq!(status(&w, &src), "paused");
    assert!(w.ok(&["ls"], &[]).contains("paused"));
    assert!(answers(&w, src_ip).is_err(), "a paused VM does not answer");
    let err = fails(&w, &["exec"], &["--vmm-id", &src, "--", "true"]);
    assert!(err.contains("paused"), "{err}");
    w.ok(&["resume"], &["--vmm-id", &src]);
    assert_eq!(status(&w, &src), "running");
    eventually(Duration::from_secs(20), || answers(&w, src_ip)).expect("answers after resume");
    lap("pause/resume");

    // Refused before anything is written.
    let err = fails(
        &w,
        &["snapshot", "create"],
        &["--vmm-id", "fbt-nope", "--tag", SNAPSHOT],
    );
    assert!(err.contains("no VM \"fbt-nope\""), "{err}");
    let err = fails(
        &w,
        &["run"],
        &["--from-snapshot", "fbt/none:1", "--daemonize"],
    );
    assert!(err.contains("no such snapshot"), "{err}");

    // A full disk: nothing published, the source keeps running.
    let tiny = w.path("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "fbt-tiny"])
        .arg(&tiny)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounted = Mounted(tiny.clone());
    let tiny_root = format!(
        "--storage-provider-property-string=snapshot-storage-root={}",
        tiny.display()
    );
    let err = fails(
        &w,
        &["snapshot", "create"],
        &["--vmm-id", &src, "--tag", SNAPSHOT, &tiny_root],
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(status(&w, &src), "running");
    answers(&w, src_ip).expect("the source answers after a failed snapshot");
    let left = files_under(&tiny);
    assert!(left.is_empty(), "a failed snapshot left {left:?}");
    drop(mounted);
    lap("disk full");

    // Ctrl-C during create: either it finished, or nothing of it is kept;
    // the source runs on either way.
    let mut child = w.command(
        &["snapshot", "create"],
        &["--vmm-id", &src, "--tag", "fbt/httpd:int"],
    );
    let mut child = child.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let interrupted = !child.wait().unwrap().success();
    let stored = w.ok(&["snapshot", "ls"], &[]);
    assert_eq!(stored.contains("fbt/httpd:int"), !interrupted, "{stored}");
    if !interrupted {
        w.ok(&["snapshot", "rm"], &["fbt/httpd:int"]);
    }
    assert_eq!(status(&w, &src), "running");
    answers(&w, src_ip).expect("the source answers after Ctrl-C");

    // The snapshot.
    let uptime_at_snapshot = uptime(&w, &src);
    w.ok(
        &["snapshot", "create"],
        &["--vmm-id", &src, "--tag", SNAPSHOT],
    );
    assert_eq!(status(&w, &src), "running", "resumed after the snapshot");
    answers(&w, src_ip).expect("the source answers after its snapshot");
    let listed = w.ok(&["snapshot", "ls"], &[]);
    assert!(
        listed.contains(SNAPSHOT) && listed.contains(&src),
        "{listed}"
    );
    lap("snapshot");

    // Three forks, all answering at once at addresses of their own.
    let forks: Vec<String> = (1..=3).map(|i| w.vm(&format!("fork{i}"))).collect();
    for fork in &forks {
        let t = Instant::now();
        w.ok(
            &["run"],
            &["--from-snapshot", SNAPSHOT, "--name", fork, "--daemonize"],
        );
        eprintln!("fork {fork} resumed in {:.1}s", t.elapsed().as_secs_f64());
    }
    lap("forks up");
    let ips: Vec<Ipv4Addr> = forks.iter().map(|f| ip_of(&w, f)).collect();
    let distinct: BTreeSet<Ipv4Addr> = ips.iter().copied().chain([src_ip]).collect();
    assert_eq!(distinct.len(), 4, "source {src_ip}, forks {ips:?}");
    for ip in ips.iter().chain([&src_ip]) {
        assert_eq!(answers(&w, *ip).expect("every VM answers"), w.page);
    }

    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut hostnames = BTreeSet::new();
    let mut randoms = BTreeSet::new();
    for (fork, ip) in forks.iter().zip(&ips) {
        assert_eq!(
            sh(&w, fork, "cat /mem/token"),
            token,
            "memory of the source"
        );
        assert_eq!(sh(&w, fork, "cat /etc/who"), "source", "disk of the source");
        let up = uptime(&w, fork);
        assert!(
            up >= uptime_at_snapshot,
            "{fork}: uptime {up} < {uptime_at_snapshot}: a reboot?"
        );
        let clock: i64 = sh(&w, fork, "date +%s").parse().unwrap();
        assert!(
            (clock - host_now).abs() < 60,
            "{fork}: clock {clock}, host {host_now}"
        );
        let hostname = sh(&w, fork, "hostname");
        assert_eq!(w.inspect(fork)["hostname"], hostname.as_str());
        hostnames.insert(hostname);
        randoms.insert(sh(&w, fork, "head -c 16 /dev/urandom | od -An -tx1"));
        let own = sh(&w, fork, "ip -4 -o addr show dev eth0");
        assert!(own.contains(&format!("{ip}/")), "{fork}: {own}");
    }
    hostnames.insert(sh(&w, &src, "hostname"));
    assert_eq!(hostnames.len(), 4, "{hostnames:?}");
    assert_eq!(randoms.len(), 3, "forks share a random stream: {randoms:?}");

    // One fork's writes are its own.
    sh(&w, &forks[0], "echo mine > /etc/who && sync");
    assert_eq!(sh(&w, &forks[1], "cat /etc/who"), "source");
    assert_eq!(sh(&w, &src, "cat /etc/who"), "source");
    lap("fork identities");

    // rm refused while forks run; inspect names them.
    let inspected: serde_json::Value =
        serde_json::from_str(&w.ok(&["snapshot", "inspect"], &[SNAPSHOT])).unwrap();
    assert_eq!(inspected["vms"].as_array().unwrap().len(), 3, "{inspected}");
    assert_eq!(inspected["source_vm"], src.as_str());
    let err = fails(&w, &["snapshot", "rm"], &[SNAPSHOT]);
    assert!(
        err.contains("in use by VM") && err.contains(&forks[0]),
        "{err}"
    );

    // --stop: the VM is stopped once its snapshot is written. A snapshot
    // that lost a file is refused, saying which, and can be removed.
    w.ok(
        &["snapshot", "create"],
        &["--vmm-id", &forks[2], "--tag", "fbt/httpd:broken", "--stop"],
    );
    assert_eq!(status(&w, &forks[2]), "exited");
    let err = fails(
        &w,
        &["snapshot", "create"],
        &["--vmm-id", &forks[2], "--tag", "fbt/httpd:late"],
    );
    assert!(err.contains("only a running or paused VM"), "{err}");
    std::fs::remove_file(w.path("snapshots").join("fbt/httpd/broken/state")).unwrap();
    let err = fails(
        &w,
        &["run"],
        &["--from-snapshot", "fbt/httpd:broken", "--daemonize"],
    );
    assert!(err.contains("incomplete (state is missing"), "{err}");
    w.ok(&["snapshot", "rm"], &["fbt/httpd:broken"]);

    // Everything goes: VMs, networks, snapshots; the host is as it was.
    for vm in forks.iter().chain([&src]) {
        w.ok(&["kill"], &["--vmm-id", vm, "--shutdown-timeout", "2s"]);
    }
    w.ok(&["purge"], &[]);
    w.ok(&["snapshot", "rm"], &[SNAPSHOT]);
    let left = files_under(&w.path("snapshots"));
    assert!(left.is_empty(), "{left:?}");
    assert!(w.live_vmm_pids().is_empty(), "QEMU left running");
    // The bridge and its firewall chains stay with the network; nothing of
    // any VM does.
    let after = w.host_state();
    assert_eq!(after.links, ["fb-machines", "lo", "uplink"], "{after:?}");
    assert!(after.vm_namespaces.is_empty(), "{after:?}");
    assert!(
        after.leases.is_empty() && after.cni_cache.is_empty(),
        "{after:?}"
    );
    assert!(after.run_cache.is_empty(), "{after:?}");
    lap("cleaned up");
}
