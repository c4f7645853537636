//! Shared read-only images through the real `firebuild` binary: an image
//! built with `rootfs --dockerfile`, VMs on overlay roots under QEMU (TCG),
//! a rebuild re-tagging the image while they run, `image rm` refused while
//! VMs use it, disk use in `ls`/`inspect`, and bad `run` disk flags.
//!
//! Needs root, Debian's `busybox-static`, `qemu-system-x86`, `e2fsprogs`,
//! the guest kernel and the static guest init (see tests/agent.rs).

use std::path::Path;

use firebuild_vm::testing;

mod vm_world;

use vm_world::{sha256, text, World, KERNEL_ID};

const TAG: &str = "fbt/shared:1";

/// A FROM-scratch context: a busybox tree with `/etc/version` = `version`.
fn write_context(dir: &Path, version: &str) {
    let tree = dir.join("tree");
    if !tree.exists() {
        testing::busybox_tree(&tree);
    }
    std::fs::write(tree.join("etc/version"), format!("{version}\n")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY tree/ /\nENV PATH=/bin\nCMD [\"/bin/sh\", \"-c\", \"while :; do sleep 1; done\"]\n",
    )
    .unwrap();
}

fn build(w: &World, ctx: &Path) {
    let dockerfile = ctx.join("Dockerfile");
    w.ok(
        &["rootfs"],
        &["--dockerfile", dockerfile.to_str().unwrap(), "--tag", TAG],
    );
}

fn cat_version(w: &World, vm: &str) -> String {
    let out = w.exec(vm, &[], &["cat", "/etc/version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn vms_share_the_image_keep_it_across_a_rebuild_and_hold_off_image_rm() {
    let mut w = World::new();
    let ctx = w.path("context");
    write_context(&ctx, "v1");
    build(&w, &ctx);
    let a = w.start_vm(TAG, "fbt-shared-a", &[]);
    let b = w.start_vm(TAG, "fbt-shared-b", &["--disk-size", "64m"]);

    // One VM's writes are its own; the image is never written.
    let image = w.path("rootfs").join("fbt/shared/1/rootfs");
    let sha_v1 = sha256(&image);
    let out = w.exec(&a, &[], &["sh", "-c", "echo mine > /etc/version; sync"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(cat_version(&w, &a), "mine");
    assert_eq!(cat_version(&w, &b), "v1");
    assert_eq!(sha256(&image), sha_v1);
    let out = w.exec(&b, &[], &["df", "-k", "/"]);
    assert!(
        text(&out.stdout).contains("overlay"),
        "{}",
        text(&out.stdout)
    );

    // ls and inspect show what each VM's disk takes on the host.
    let ls = w.ok(&["ls"], &[]);
    assert!(ls.lines().next().unwrap().contains("DISK"), "{ls}");
    let inspected: serde_json::Value =
        serde_json::from_str(&w.ok(&["inspect"], &["--vmm-id", &a])).unwrap();
    let disk = inspected["disk_bytes"].as_u64().unwrap();
    assert!(disk > 0 && disk < 64 << 20, "{disk}");
    assert_eq!(inspected["rootfs_mode"], "overlay");

    // image rm is refused while VMs use the image, naming them.
    let out = w.run(&["image", "rm"], &[TAG]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("fbt-shared-a") && err.contains("fbt-shared-b") && err.contains("--force"),
        "{err}"
    );
    assert!(image.exists());

    // A rebuild re-tags; running VMs keep the image they booted.
    write_context(&ctx, "v2");
    build(&w, &ctx);
    assert_eq!(cat_version(&w, &a), "mine");
    assert_eq!(cat_version(&w, &b), "v1");
    let c = w.start_vm(TAG, "fbt-shared-c", &["--rootfs-mode", "copy"]);
    assert_eq!(cat_version(&w, &c), "v2");
    let inspected: serde_json::Value =
        serde_json::from_str(&w.ok(&["inspect"], &["--vmm-id", &c])).unwrap();
    assert_eq!(inspected["rootfs_mode"], "copy");

    // A copy-mode VM does not hold the image: only the overlay ones did,
    // and they use the old one. So rm of the new image works at once.
    for vm in [&a, &b, &c] {
        w.ok(&["kill"], &["--vmm-id", vm, "--shutdown-timeout", "2"]);
    }
    w.ok(&["image", "rm"], &[TAG]);
    w.ok(&["purge"], &[]);
    assert!(std::fs::read_dir(w.path("runs")).unwrap().next().is_none());
}

#[test]
fn image_rm_force_keeps_the_data_until_the_vm_is_purged() {
    let mut w = World::new();
    let ctx = w.path("context");
    write_context(&ctx, "v1");
    build(&w, &ctx);
    let a = w.start_vm(TAG, "fbt-force", &[]);
    w.ok(&["image", "rm"], &["--force", TAG]);
    assert!(!w.path("rootfs").join("fbt/shared/1").exists());
    // The VM still reads the image it booted.
    assert_eq!(cat_version(&w, &a), "v1");
    w.ok(&["kill"], &["--vmm-id", &a, "--shutdown-timeout", "2"]);
    w.ok(&["purge"], &[]);
}

#[test]
fn bad_disk_flags_are_refused_before_anything_starts() {
    let w = World::new();
    let ctx = w.path("context");
    write_context(&ctx, "v1");
    build(&w, &ctx);
    for (flags, expect) in [
        (&["--disk-size", "1k"][..], "--disk-size"),
        (&["--disk-size", "lots"][..], "lots"),
        (&["--rootfs-mode", "cow"][..], "overlay or copy"),
    ] {
        let mut rest = vec!["--from", TAG, "--vmlinux-id", KERNEL_ID, "--daemonize"];
        rest.extend_from_slice(flags);
        let out = w.run(&["run"], &rest);
        assert!(!out.status.success(), "{flags:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{flags:?}: {err}");
    }
    assert!(std::fs::read_dir(w.path("runs")).unwrap().next().is_none());
}
