//! Hostile Dockerfiles: RUN steps that try to reach the host. Each attempt
//! must be refused or contained, and the host is checked unchanged
//! afterwards. Run as root.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use firebuild_builder::{build, BuildError, Limits, Network};

/// A non-loopback IPv4 address of this host, if it has one.
fn host_address() -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
}

/// Restores a host knob if a probe got through (it must not), so the host
/// is left as it was either way.
struct Knob {
    path: &'static str,
    before: String,
}

impl Knob {
    fn read(path: &'static str) -> Knob {
        Knob {
            path,
            before: std::fs::read_to_string(path).unwrap_or_default(),
        }
    }
    fn changed(&self) -> bool {
        std::fs::read_to_string(self.path).unwrap_or_default() != self.before
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        if self.changed() {
            let _ = std::fs::write(self.path, &self.before);
        }
    }
}

#[test]
fn kernel_devices_and_knobs_of_the_host_are_out_of_reach() {
    let f = Fixture::new();
    f.busybox_base();
    let core = Knob::read("/proc/sys/kernel/core_pattern");
    let df = "FROM busybox:test\n\
        RUN exec 2>/dev/null; \
        { (mknod /tmp/d b 254 0 && head -c 512 /tmp/d >/dev/null) && echo blockdev-read || echo blockdev-refused; \
        (echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern) && echo core-written || echo core-refused; \
        (echo 1 > /proc/sys/vm/drop_caches) && echo sysctl-written || echo sysctl-refused; \
        (test -c /dev/kmsg && echo pwn > /dev/kmsg) && echo kmsg-written || echo kmsg-refused; \
        tr -s ' ' < /proc/self/uid_map | sed 's/^ //'; \
        ls /sys/class/net | tr '\\n' ' '; echo; \
        (mount -t proc proc /mnt) && echo mounted || echo mount-refused; } > /results\n";
    let out = f
        .build(df, "tests/hostile:1")
        .expect("the hostile steps run (and fail inside)");
    assert!(
        !core.changed(),
        "a RUN step changed the host's core_pattern"
    );
    let results = cat(&out.dir.join("rootfs"), "/results");
    let lines: Vec<&str> = results.lines().collect();
    assert_eq!(
        lines,
        [
            "blockdev-refused",
            "core-refused",
            "sysctl-refused",
            "kmsg-refused",
            "0 3000000000 65536",
            "lo tap0 ",
            "mount-refused"
        ],
        "{results}"
    );
}

#[test]
fn services_of_the_host_are_unreachable_but_the_network_works() {
    let f = Fixture::new();
    f.busybox_base();
    // A service on every address of the host, loopback included, that
    // answers and hangs up (busybox nc only exits when the peer closes).
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
    let mut targets = vec![format!("127.0.0.1:{port}"), format!("10.0.2.2:{port}")];
    targets.extend(host_address().map(|a| format!("{a}:{port}")));
    let probes: String = targets
        .iter()
        .map(|t| {
            let (addr, port) = t.split_once(':').unwrap();
            format!(
                "nc -w 3 {addr} {port} </dev/null && echo {t}-reached || echo {t}-unreachable; "
            )
        })
        .collect();
    // The control: the same probe reaches a listener of the step's own, so
    // "unreachable" means the host is out of reach, not that nc is broken.
    let control = "(nc -l -p 7 127.0.0.1 </dev/null &) ; sleep 1; \
        nc -w 3 127.0.0.1 7 </dev/null && echo control-reached; ";
    let df = format!(
        "FROM busybox:test\nRUN exec 2>/dev/null; {{ {control} {probes} grep -c nameserver /etc/resolv.conf; ip -4 -o addr show tap0 | tr -s ' ' | cut -d' ' -f4; }} > /results\n"
    );
    let out = f.build(&df, "tests/net:1").expect("the probes run");
    let results = cat(&out.dir.join("rootfs"), "/results");
    assert!(results.contains("control-reached"), "{results}");
    for t in &targets {
        assert!(
            results.contains(&format!("{t}-unreachable")),
            "{t} was reachable:\n{results}"
        );
    }
    assert!(
        results.contains("\n1\n10.0.2.100/24"),
        "resolv.conf and tap0 of the NAT:\n{results}"
    );
    assert!(
        !reached.load(Ordering::SeqCst),
        "a RUN step connected to the host's service:\n{results}"
    );

    // --network none: loopback only.
    let mut o = f.opts(
        "FROM busybox:test\nRUN ls /sys/class/net > /ifaces\n",
        "tests/none:1",
    );
    o.sandbox.network = Network::None;
    let out = build(&f.store, &o).expect("--network none");
    assert_eq!(cat(&out.dir.join("rootfs"), "/ifaces"), "lo\n");

    // RUN --network=host is refused unless the build asks for the host's network.
    let err = f
        .build(
            "FROM busybox:test\nRUN --network=host true\n",
            "tests/host:1",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("--network host"), "{err}");
}

#[test]
fn limits_stop_floods_and_large_allocations_and_say_so() {
    let f = Fixture::new();
    f.busybox_base();
    let mut o = f.opts(
        "FROM busybox:test\nRUN for i in $(seq 100); do sleep 30 & done; wait\n",
        "tests/flood:1",
    );
    o.sandbox.limits = Limits {
        pids: Some(20),
        ..Default::default()
    };
    let err = build(&f.store, &o).unwrap_err();
    assert!(matches!(err, BuildError::RunFailed { .. }), "{err}");
    assert!(err.to_string().contains("--pids-limit 20"), "{err}");

    let mut o = f.opts(
        "FROM busybox:test\nRUN dd if=/dev/zero of=/dev/null bs=128M count=1\n",
        "tests/oom:1",
    );
    o.sandbox.limits = Limits {
        memory: Some(32 << 20),
        ..Default::default()
    };
    let err = build(&f.store, &o).unwrap_err();
    assert!(err.to_string().contains("--memory 32m"), "{err}");
    assert!(!f.store.contains(&"tests/oom:1".parse().unwrap()));

    // Within the limits, the same build works.
    let mut o = f.opts(
        "FROM busybox:test\nRUN dd if=/dev/zero of=/dev/null bs=1M count=1\n",
        "tests/fits:1",
    );
    o.sandbox.limits = Limits {
        memory: Some(64 << 20),
        pids: Some(20),
        cpu_quota_us: Some(50_000),
    };
    build(&f.store, &o).expect("a step within its limits");
}

#[test]
fn owners_stay_exact_through_the_user_namespace() {
    let f = Fixture::new();
    f.busybox_base();
    f.write("c.txt", "c\n");
    let df = "FROM busybox:test\n\
        COPY --chown=1000:50 c.txt /c\n\
        RUN mkdir -p /d/e && echo f > /d/f && chown 1000:50 /d/e && chown 65534:65534 /d/f && \
            ln /d/f /d/hard && ln -s f /d/sym && chmod 4755 /d/f && cat /c > /d/copy && touch /home/made\n";
    let out = f.build(df, "tests/owners:1").expect("build");
    let img = out.dir.join("rootfs");
    assert_eq!(stat(&img, "/d").unwrap(), (0o755, 0, 0, "directory".into()));
    assert_eq!(
        stat(&img, "/d/e").unwrap(),
        (0o755, 1000, 50, "directory".into())
    );
    assert_eq!(
        stat(&img, "/d/f").unwrap(),
        (0o4755, 65534, 65534, "regular".into())
    );
    assert!(debugfs(&img, "stat /d/hard").contains("Links: 2"));
    assert_eq!(stat(&img, "/d/sym").unwrap().1, 0);
    assert_eq!(stat(&img, "/c").unwrap().1, 1000);
    assert_eq!(stat(&img, "/d/copy").unwrap().1, 0);
    assert_eq!(stat(&img, "/home/made").unwrap().1, 0);
    fsck_clean(&img);
}
