//! Shared read-only images under QEMU (TCG): VMs boot the stored image in
//! place on an overlay root, write only to their scratch disks, and never
//! change the image; `--rootfs-mode copy` keeps the private copy.
//!
//! Needs: qemu-system-x86, busybox-static, e2fsprogs; root.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use firebuild_metadata::InitMode;
use firebuild_vm::{testing, Interrupts, RootfsMode, RunMetadata, RunOutcome, VmStatus};
use support::*;
use tokio::sync::mpsc;

const BOOT: Duration = Duration::from_secs(180);

fn no_interrupts() -> Interrupts {
    Interrupts::Channel(mpsc::unbounded_channel().1)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Allocated bytes of everything under `dir`, hard links counted once.
fn allocated(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A busybox image with `extra_mib` MiB of incompressible data in
/// /data/blob, and none of the directories the init mounts on (/proc,
/// /dev, /sys, /run, /tmp), as a FROM-scratch image may be.
fn big_image(dir: &Path, extra_mib: usize) -> PathBuf {
    let root = dir.join("tree");
    testing::busybox_tree(&root);
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        std::fs::remove_dir(root.join(d)).unwrap();
    }
    std::fs::create_dir(root.join("data")).unwrap();
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("count={extra_mib}"))
        .arg(format!("of={}", root.join("data/blob").display()))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(root.join("etc/motd"), "from the image\n").unwrap();
    let image = dir.join("big.ext4");
    testing::pack_ext4_sized(&root, &image, &format!("{}M", extra_mib + 64));
    image
}

async fn start(world: &World, spec: firebuild_vm::RunSpec) -> RunMetadata {
    let mut sink = Vec::new();
    let outcome = world
        .runtime
        .run_with(spec, &mut sink, no_interrupts())
        .await
        .unwrap();
    let RunOutcome::Detached { id } = outcome else {
        panic!("not detached: {outcome:?}");
    };
    world.runtime.inspect(&id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_vms_share_one_image_and_write_only_their_scratch_disks() {
    let world = World::new();
    let image_path = big_image(world.dir.path(), 200);
    let before = sha256(&image_path);
    let image_bytes = std::fs::metadata(&image_path).unwrap().len();

    // Each VM rewrites a file from the image, adds 2 MiB, and reports what
    // it sees: its own writes only, on an overlay root.
    let script = "echo \"written by $(hostname)\" > /etc/motd; \
        dd if=/dev/zero of=/data/new bs=1M count=2 2>/dev/null; sync; \
        echo \"motd=$(cat /etc/motd) root=$(grep ' / ' /proc/mounts | cut -d' ' -f3)\"; \
        echo done-writing; while :; do sleep 1; done";
    let mut vms = Vec::new();
    for i in 0..5 {
        let mut spec = world.spec(shell_image(script));
        spec.rootfs = image_path.clone();
        spec.daemonize = true;
        spec.hostname = Some(format!("vm{i}"));
        vms.push(start(&world, spec).await);
    }
    for md in &vms {
        assert!(
            eventually(BOOT, || console_log(md).contains("done-writing")).await,
            "{}",
            console_log(md)
        );
        let log = console_log(md);
        assert!(
            log.contains(&format!("motd=written by {} root=overlay", md.hostname)),
            "{log}"
        );
        assert_eq!(md.rootfs_mode, RootfsMode::Overlay);
        assert!(
            md.uses_image(&image_path),
            "the image is linked, never copied"
        );
        let used = md.disk_usage();
        assert!(
            (2 << 20..32 << 20).contains(&used),
            "VM {} uses {used} bytes of scratch disk",
            md.id
        );
    }
    // The whole run cache: what the VMs wrote, not five images.
    let cache = allocated(&world.run_cache);
    assert!(
        cache < image_bytes + 5 * (32 << 20),
        "the run cache takes {cache} bytes for a {image_bytes}-byte image"
    );
    for md in &vms {
        assert_eq!(
            world.runtime.kill(&md.id, None).await.unwrap().status,
            VmStatus::Exited
        );
    }
    assert_eq!(sha256(&image_path), before, "a VM changed the stored image");
    // Purged VMs release their links; the image stays.
    assert_eq!(world.runtime.purge().await.unwrap().removed.len(), 5);
    assert!(world.run_cache_entries().is_empty());
    assert_eq!(sha256(&image_path), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_init_sees_a_writable_overlay_root_and_copy_mode_writes_a_copy() {
    let world = World::new();
    let before = sha256(&world.rootfs);

    // init-mode image: the image's own /sbin/init starts on the overlay.
    let tree = world.dir.path().join("init-tree");
    testing::busybox_tree(&tree);
    std::fs::create_dir_all(tree.join("sbin")).unwrap();
    std::fs::write(
        tree.join("sbin/init"),
        "#!/bin/sh\necho pid=$$ root=$(grep ' / ' /proc/mounts | cut -d' ' -f3)\n\
         touch /made-by-init && echo root-writable\nsync; poweroff -f\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tree.join("sbin/init"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let init_image = world.dir.path().join("init.ext4");
    testing::pack_ext4(&tree, &init_image);
    let init_before = sha256(&init_image);
    let mut spec = world.spec(shell_image("true"));
    spec.rootfs = init_image.clone();
    spec.init_mode = InitMode::Image;
    spec.daemonize = true;
    let md = start(&world, spec).await;
    assert!(
        eventually(BOOT, || console_log(&md).contains("root-writable")).await,
        "{}",
        console_log(&md)
    );
    assert!(
        console_log(&md).contains("pid=1 root=overlay"),
        "{}",
        console_log(&md)
    );

    // copy mode: the VM writes its private copy in place.
    let mut spec = world.spec(shell_image(
        "echo changed > /etc/motd; sync; echo root=$(grep ' / ' /proc/mounts | cut -d' ' -f3)",
    ));
    spec.rootfs_mode = RootfsMode::Copy;
    let sink = SharedSink::default();
    let mut out = sink.clone();
    let outcome = world
        .runtime
        .run_with(spec, &mut out, no_interrupts())
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            RunOutcome::Exited {
                exit_code: Some(0),
                ..
            }
        ),
        "{outcome:?}: {}",
        sink.text()
    );
    assert!(sink.text().contains("root=ext4"), "{}", sink.text());

    assert_eq!(sha256(&world.rootfs), before);
    assert_eq!(sha256(&init_image), init_before);
}
