//! Volumes through the real `firebuild` binary, under QEMU (TCG): `volume
//! create|ls|inspect|rm`, data that outlives its VM, `:ro`, the
//! single-writer rule, an ext4 image file given by path, a VM killed -9
//! leaving its volume for `e2fsck -p`, and every bad `--volume`.
//!
//! Needs root, Debian's `busybox-static`, `qemu-system-x86`, `e2fsprogs`,
//! the guest kernel and the static guest init (see tests/agent.rs).

use std::path::Path;
use std::process::Command;

use firebuild_vm::testing;

mod vm_world;

use vm_world::{text, World, KERNEL_ID};

const TAG: &str = "fbt/volumes:1";

/// Builds a FROM-scratch busybox image whose command sleeps.
fn build_image(w: &World) {
    let ctx = w.path("context");
    testing::busybox_tree(&ctx.join("tree"));
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY tree/ /\nENV PATH=/bin\nCMD [\"/bin/sh\", \"-c\", \"while :; do sleep 1; done\"]\n",
    )
    .unwrap();
    let dockerfile = ctx.join("Dockerfile");
    w.ok(
        &["rootfs"],
        &["--dockerfile", dockerfile.to_str().unwrap(), "--tag", TAG],
    );
}

/// `sh -c script` in `vm`; (success, stdout, stderr).
fn sh(w: &World, vm: &str, script: &str) -> (bool, String, String) {
    let out = w.exec(vm, &[], &["sh", "-c", script]);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `run --daemonize` that must be refused; returns its stderr.
fn refused_run(w: &World, name: &str, flags: &[&str]) -> String {
    let mut rest = vec![
        "--from",
        TAG,
        "--vmlinux-id",
        KERNEL_ID,
        "--name",
        name,
        "--daemonize",
    ];
    rest.extend_from_slice(flags);
    let out = w.run(&["run"], &rest);
    assert!(!out.status.success(), "run {flags:?} was accepted");
    assert!(
        !w.path("runs").join(name).exists(),
        "a refused run left its run directory"
    );
    text(&out.stderr)
}

fn inspect_volume(w: &World, name: &str) -> serde_json::Value {
    serde_json::from_str(&w.ok(&["volume", "inspect"], &[name])).unwrap()
}

#[test]
fn volume_data_outlives_its_vm_and_has_one_writer() {
    let mut w = World::new();
    build_image(&w);
    assert_eq!(
        w.ok(&["volume", "create"], &["data", "--size", "64m"])
            .trim(),
        "data"
    );
    let v = inspect_volume(&w, "data");
    assert_eq!(v["size"], 64 << 20);
    assert_eq!(v["fs"], "ext4");
    assert!(
        v["allocated_bytes"].as_u64().unwrap() < 16 << 20,
        "sparse: {v}"
    );
    assert_eq!(v["used_by"], serde_json::json!([]));
    let out = w.run(&["volume", "create"], &["data"]);
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    // The writer.
    let writer = w.start_vm(TAG, "fbt-vol-writer", &["--volume", "data:/srv/data"]);
    let (ok, mounts, err) = sh(&w, &writer, "grep ' /srv/data ' /proc/mounts");
    assert!(ok && mounts.contains("ext4 rw"), "{mounts}{err}");
    let (ok, _, err) = sh(&w, &writer, "echo kept > /srv/data/note && sync");
    assert!(ok, "{err}");

    // A second writer, or a reader while it writes, is refused by name.
    for flags in [["--volume", "data:/d"], ["--volume", "data:/d:ro"]] {
        let err = refused_run(&w, "fbt-vol-second", &flags);
        assert!(err.contains("read-write to VM fbt-vol-writer"), "{err}");
        assert!(err.contains(flags[1]), "names the flag value: {err}");
    }
    // In use: listed, and not removable.
    let ls = w.ok(&["volume", "ls"], &[]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("data ") && l.contains("fbt-vol-writer")),
        "{ls}"
    );
    let out = w.run(&["volume", "rm"], &["data"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("fbt-vol-writer"),
        "{}",
        text(&out.stderr)
    );

    // Stopped, the data is there for the next VMs; readers share it and
    // cannot write it, and nobody writes while they read.
    w.ok(&["kill"], &["--vmm-id", &writer, "--shutdown-timeout", "5"]);
    let r1 = w.start_vm(TAG, "fbt-vol-r1", &["--volume", "data:/srv/data:ro"]);
    let r2 = w.start_vm(TAG, "fbt-vol-r2", &["-v", "data:/mnt/data:ro"]);
    assert_eq!(sh(&w, &r1, "cat /srv/data/note").1.trim(), "kept");
    assert_eq!(sh(&w, &r2, "cat /mnt/data/note").1.trim(), "kept");
    let (ok, _, err) = sh(&w, &r1, "echo no > /srv/data/note");
    assert!(!ok && err.contains("Read-only file system"), "{err}");
    let err = refused_run(&w, "fbt-vol-late", &["--volume", "data:/d"]);
    assert!(err.contains("read-only to VM fbt-vol-r"), "{err}");
    let users = &inspect_volume(&w, "data")["used_by"];
    assert_eq!(users.as_array().unwrap().len(), 3, "{users}");

    // Purged, the volume can go; it leaves nothing behind.
    for vm in [&r1, &r2] {
        w.ok(&["kill"], &["--vmm-id", vm, "--shutdown-timeout", "5"]);
    }
    w.ok(&["purge"], &[]);
    w.ok(&["volume", "rm"], &["data"]);
    assert_eq!(
        w.ok(&["volume", "ls"], &[]).lines().count(),
        1,
        "header only"
    );
    assert_eq!(std::fs::read_dir(w.path("volumes")).unwrap().count(), 0);
}

/// `e2fsck -p` on `image`: its exit status (0 clean, 1 fixed).
fn e2fsck_preen(image: &Path) -> i32 {
    let out = Command::new("e2fsck")
        .arg("-p")
        .arg(image)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn an_image_file_volume_survives_a_killed_vm() {
    let mut w = World::new();
    build_image(&w);
    let disk = w.path("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mkfs.success());
    // Copy mode: the volume is the first disk after the config drive.
    let spec = format!("{}:/mnt/disk", disk.display());
    let vm = w.start_vm(TAG, "fbt-vol-file", &["--rootfs-mode", "copy", "-v", &spec]);
    let (ok, _, err) = sh(
        &w,
        &vm,
        "echo synced > /mnt/disk/before && sync && \
         (while :; do echo line >> /mnt/disk/log; done) >/dev/null 2>&1 &",
    );
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_secs(2));

    // kill -9 of the VMM in the middle of the writes.
    let inspected: serde_json::Value =
        serde_json::from_str(&w.ok(&["inspect"], &["--vmm-id", &vm])).unwrap();
    let pid = inspected["pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU survived SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = e2fsck_preen(&disk);
    assert!(status <= 1, "e2fsck -p exited {status}");
    let out = Command::new("debugfs")
        .args(["-R", "cat /before"])
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "synced");

    // Purge releases the file and leaves it in place.
    w.ok(&["purge"], &[]);
    assert!(disk.exists());
    assert_eq!(e2fsck_preen(&disk), 0);
}

#[test]
fn bad_volume_specs_and_names_are_refused_with_one_line() {
    let w = World::new();
    build_image(&w);
    w.ok(&["volume", "create"], &["data", "--size", "16m"]);
    let not_ext4 = w.path("text.img");
    std::fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
    let not_ext4 = format!("{}:/d", not_ext4.display());
    for (specs, says) in [
        (&["nope"][..], "expected NAME:/guest/path"),
        (&["rel/disk.img:/d"], "relative path"),
        (&["missing:/d"], "no volume \"missing\""),
        (&["data:relative"], "not absolute"),
        (&["data:/d:rx"], "use ro or rw"),
        (&["/no/such.img:/d"], "/no/such.img"),
        (&[not_ext4.as_str()], "not an ext4 image"),
        (&["data:/a", "data:/b"], "also given as data:/a"),
    ] {
        let flags: Vec<&str> = specs.iter().flat_map(|s| ["--volume", s]).collect();
        let err = refused_run(&w, "fbt-vol-bad", &flags);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        let named = specs.last().unwrap();
        assert!(
            first.contains(named) && first.contains(says),
            "{specs:?}: {err}"
        );
    }
    for (args, says) in [
        (&["../x"][..], "not valid"),
        (&["x", "--fs", "xfs"][..], "volumes are ext4"),
        (&["x", "--size", "1k"][..], "--size"),
    ] {
        let out = w.run(&["volume", "create"], args);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let names: Vec<String> = std::fs::read_dir(w.path("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["data"], "failed creates leave nothing");
}
