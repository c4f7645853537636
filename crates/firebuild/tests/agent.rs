//! The guest agent through the real `firebuild` binary: `exec`, `cp`,
//! `wait` and health checks on a daemonized busybox microVM with no
//! network, booted under QEMU (TCG). Everything lives in a temp dir; the
//! VM is killed and purged at the end, also when an assertion fails.
//!
//! Needs root, Debian's `busybox-static`, `qemu-system-x86`, `e2fsprogs`,
//! the guest kernel (`$FIREBUILD_TEST_KERNEL`, else the CI cache) and the
//! static guest init (`$FIREBUILD_VMINIT`, else `scripts/build-vminit.sh`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use firebuild_vm::testing;

const IMAGE_TAG: &str = "fbt/agent:1";

mod vm_world;

use vm_world::{sha256, text, World};

/// A busybox image whose entrypoint runs until /tmp/stop appears, then
/// exits 5.
fn store_image(store: &Path, work: &Path) {
    let root = work.join("image-root");
    testing::busybox_tree(&root);
    let dir = store.join("fbt/agent/1");
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("rootfs");
    testing::pack_ext4(&root, &rootfs);
    let metadata = serde_json::json!({
        "created-at-utc": 0,
        "image": {"org": "fbt", "image": "agent", "version": "1"},
        "type": "rootfs",
        "tag": IMAGE_TAG,
        "entrypoint-info": {
            "entrypoint": [],
            "cmd": ["/bin/sh", "-c", "while [ ! -f /tmp/stop ]; do sleep 0.2; done; exit 5"],
            "env": {"PATH": "/bin", "FROM_IMAGE": "yes"},
            "shell": ["/bin/sh", "-c"],
            "user": "",
            "workdir": "/home/app",
        },
        "rootfs-size": std::fs::metadata(&rootfs).unwrap().len(),
    });
    std::fs::write(
        dir.join("metadata.json"),
        serde_json::to_vec_pretty(&metadata).unwrap(),
    )
    .unwrap();
}

#[test]
fn exec_cp_wait_and_health_through_the_agent() {
    let mut w = World::new();
    store_image(&w.path("rootfs"), w.dir.path());
    let vm = w.start_vm(
        IMAGE_TAG,
        "fbt-agent",
        &[
            "--health-cmd",
            "test -f /tmp/healthy",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
        ],
    );

    // Output, separate streams, exit codes.
    let out = w.exec(&vm, &[], &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    // The image's environment and WORKDIR, then overrides.
    let out = w.exec(&vm, &[], &["sh", "-c", "echo $FROM_IMAGE; pwd; id -u"]);
    assert_eq!(text(&out.stdout), "yes\n/home/app\n0\n");
    let out = w.exec(
        &vm,
        &["--user", "app", "--workdir", "/tmp", "--env", "A=b"],
        &["sh", "-c", "id -u; pwd; echo $A"],
    );
    assert_eq!(
        text(&out.stdout),
        "1000\n/tmp\nb\n",
        "{}",
        text(&out.stderr)
    );

    // Stdin, forwarded with -i until EOF.
    let mut child = w
        .command(
            &["exec"],
            &["--vmm-id", &vm, "-i", "--", "sh", "-c", "cat; echo done"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "from stdin\ndone\n");

    // A pseudo-terminal with -t.
    let out = w.exec(
        &vm,
        &["-t"],
        &["sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"],
    );
    assert!(
        text(&out.stdout).contains("on-a-tty"),
        "{:?}",
        text(&out.stdout)
    );

    // Errors the guest saw, with Docker's codes.
    let out = w.exec(&vm, &["--user", "nobody-here"], &["true"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        text(&out.stderr).contains("nobody-here"),
        "{}",
        text(&out.stderr)
    );
    let out = w.exec(&vm, &["--workdir", "/no/such/dir"], &["true"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        text(&out.stderr).contains("/no/such/dir"),
        "{}",
        text(&out.stderr)
    );
    let out = w.exec(&vm, &[], &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );

    // Two execs at once: each waits for the other to have started.
    let both = |me: &str, other: &str| {
        w.command(
            &["exec"],
            &[
                "--vmm-id",
                &vm,
                "--",
                "timeout",
                "30",
                "sh",
                "-c",
                &format!(
                    "touch /tmp/{me}; while [ ! -f /tmp/{other} ]; do sleep 0.1; done; echo {me}"
                ),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (both("c1", "c2"), both("c2", "c1"));
    assert_eq!(text(&a.wait_with_output().unwrap().stdout), "c1\n");
    assert_eq!(text(&b.wait_with_output().unwrap().stdout), "c2\n");

    // A client that died in the middle of a frame does not wedge its port
    // for the next one (the next client takes the same, first free port).
    {
        let sock = w.path("runs").join(&vm).join("agent-0.sock");
        let mut cut = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        cut.write_all(&[0, 0, 0x10, 0, 0, 0, 0, 7, 2, b'x'])
            .unwrap();
    }
    let out = w.exec(&vm, &[], &["echo", "after-a-cut-frame"]);
    assert_eq!(
        text(&out.stdout),
        "after-a-cut-frame\n",
        "{}",
        text(&out.stderr)
    );

    // A killed exec leaves nothing running in the guest.
    let mut sleeper = w
        .command(&["exec"], &["--vmm-id", &vm, "--", "sleep", "4242"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let count = "ps | grep -c '[s]leep 4242'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while text(&w.exec(&vm, &[], &["sh", "-c", count]).stdout).trim() != "1" {
        assert!(Instant::now() < deadline, "the sleeper never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while text(&w.exec(&vm, &[], &["sh", "-c", count]).stdout).trim() != "0" {
        assert!(
            Instant::now() < deadline,
            "the killed exec's process still runs in the guest"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // cp of a 20 MB random file in and out: same bytes, same mode.
    let big = w.path("big.bin");
    let mut data = vec![0u8; 20 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data)
        .unwrap();
    std::fs::write(&big, &data).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    w.ok(&["cp"], &[big.to_str().unwrap(), &format!("{vm}:/tmp/")]);
    let out = w.exec(
        &vm,
        &[],
        &[
            "sh",
            "-c",
            "sha256sum /tmp/big.bin; stat -c %a /tmp/big.bin",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}  /tmp/big.bin\n640\n", sha256(&big))
    );
    let back = w.path("back.bin");
    w.ok(
        &["cp"],
        &[&format!("{vm}:/tmp/big.bin"), back.to_str().unwrap()],
    );
    assert_eq!(sha256(&back), sha256(&big));
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    // A directory tree with a symlink, owners and modes, in and out.
    let tree = w.path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f"), "f\n").unwrap();
    std::os::unix::fs::symlink("sub/f", tree.join("link")).unwrap();
    std::os::unix::fs::chown(tree.join("sub/f"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    w.ok(
        &["cp"],
        &[tree.to_str().unwrap(), &format!("{vm}:/tmp/copied")],
    );
    let out = w.exec(&vm, &[], &["sh", "-c", "cat /tmp/copied/link; stat -c '%u %a' /tmp/copied/sub/f /tmp/copied/sub; readlink /tmp/copied/link"]);
    assert_eq!(text(&out.stdout), "f\n1000 644\n0 750\nsub/f\n");
    let out_dir = w.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    w.ok(
        &["cp"],
        &[&format!("{vm}:/tmp/copied"), out_dir.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("copied/link")).unwrap(),
        "f\n"
    );
    assert_eq!(
        std::fs::read_link(out_dir.join("copied/link")).unwrap(),
        Path::new("sub/f")
    );

    // cp errors name the path and write nothing.
    let out = w.run(
        &["cp"],
        &[big.to_str().unwrap(), &format!("{vm}:/no/such/dir/x")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/no/such/dir"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run(
        &["cp"],
        &[&format!("{vm}:/no/such/file"), out_dir.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/no/such/file"),
        "{}",
        text(&out.stderr)
    );
    assert!(!out_dir.join("file").exists());
    let out = w.run(
        &["cp"],
        &[w.path("missing").to_str().unwrap(), &format!("{vm}:/tmp/")],
    );
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        text(&out.stderr)
    );
    let out = w.exec(&vm, &[], &["sh", "-c", "ls -a /tmp | grep -c fbcp || true"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "0",
        "temporary files left in the guest"
    );

    // Health: unhealthy while the check fails, healthy once it passes.
    let status = |w: &World| {
        let ls = w.ok(&["ls"], &[]);
        ls.lines()
            .find(|l| l.starts_with(&vm))
            .unwrap_or_default()
            .to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status(&w).contains("(unhealthy)") {
        assert!(Instant::now() < deadline, "never unhealthy: {}", status(&w));
        std::thread::sleep(Duration::from_millis(500));
    }
    w.exec(&vm, &[], &["touch", "/tmp/healthy"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status(&w).contains("(healthy)") {
        assert!(Instant::now() < deadline, "never healthy: {}", status(&w));
        std::thread::sleep(Duration::from_millis(500));
    }
    let inspected: serde_json::Value =
        serde_json::from_str(&w.ok(&["inspect"], &["--vmm-id", &vm])).unwrap();
    assert_eq!(inspected["health"]["Status"], "healthy");
    assert_eq!(inspected["health"]["FailingStreak"], 0);
    let log = inspected["health"]["Log"].as_array().unwrap();
    assert!(!log.is_empty() && log.len() <= 5, "{log:?}");
    assert_eq!(log.last().unwrap()["ExitCode"], 0);

    // wait: the entrypoint's exit code, printed and returned.
    w.exec(&vm, &[], &["touch", "/tmp/stop"]);
    let out = w.run(&["wait"], &["--vmm-id", &vm]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stdout), "5\n");

    // An exited VM, and one that does not exist: one line, no hang.
    let out = w.exec(&vm, &[], &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&vm) && text(&out.stderr).contains("exited"),
        "{}",
        text(&out.stderr)
    );
    let out = w.exec("no-such-vm", &[], &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-vm"),
        "{}",
        text(&out.stderr)
    );
}
