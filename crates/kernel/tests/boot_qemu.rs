//! Builds (or reuses from the CI cache) the project's kernel from Debian's
//! `linux-source-6.1` and boots it under QEMU TCG (`-M q35`) to a tiny
//! busybox init that prints a marker on the serial console and powers off.
//!
//! Needs: linux-source-6.1 build-essential flex bison bc libelf-dev
//! libssl-dev qemu-system-x86 busybox-static e2fsprogs. The first run builds
//! the kernel (~17 minutes on 2 cores); later runs take seconds.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MARKER: &str = "FIREBUILD-KERNEL-BOOT-OK";
/// A hang guard, not a timing assertion: TCG on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let started = Instant::now();
            let path =
                firebuild_kernel::test_kernel::ensure_cached().unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "test kernel {} ready after {:.1?}",
                path.display(),
                started.elapsed()
            );
            path
        })
        .clone()
}

/// Kills and reaps QEMU if the test fails before it exits.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Boot {
    status: ExitStatus,
    console: String,
    elapsed: Duration,
}

/// Boots the test kernel (its ELF vmlinux, through the PVH entry point)
/// under `qemu-system-x86_64 -M q35 -accel tcg` with the serial console in
/// a file, and waits for QEMU to exit.
fn boot(dir: &Path, append: &str, extra: &[&str]) -> Boot {
    let mut args = vec!["-M", "q35"];
    args.extend_from_slice(extra);
    boot_machine(dir, append, &args)
}

/// Like [`boot`], with the machine type (`-M`) in `extra`.
fn boot_machine(dir: &Path, append: &str, extra: &[&str]) -> Boot {
    let console = dir.join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel())
        .args(["-append", append])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut qemu = Qemu(
        cmd.spawn()
            .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)"),
    );
    let status = loop {
        if let Some(status) = qemu.0.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let text = fs::read_to_string(&console).unwrap_or_default();
            panic!("QEMU did not exit within {BOOT_TIMEOUT:?}; console so far:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = qemu.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let console = fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.success(),
        "QEMU failed ({status}): {stderr}\nconsole:\n{console}"
    );
    Boot {
        status,
        console,
        elapsed,
    }
}

/// A root directory with a static busybox and `/init` running `script`.
fn rootfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    let init = root.join("init");
    fs::write(
        &init,
        format!("#!/bin/busybox sh\nexport PATH=/bin\n/bin/busybox --install -s /bin\n{script}"),
    )
    .unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// An ext4 image of `root`, made with `mkfs.ext4 -d`.
fn ext4(dir: &Path, root: &Path) -> PathBuf {
    let image = dir.join("root.ext4");
    fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(root)
        .arg(&image)
        .output()
        .expect("run mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// A `newc` cpio archive of `root` (what the kernel unpacks as initramfs),
/// plus a `/dev/console` node so init has a console.
fn initramfs(dir: &Path, root: &Path) -> PathBuf {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    fn walk(out: &mut Vec<u8>, ino: &mut u32, base: &Path, dir: &Path) {
        let mut items: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        items.sort();
        for path in items {
            let name = path
                .strip_prefix(base)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            *ino += 1;
            if meta.is_dir() {
                entry(out, *ino, &name, 0o040755, (0, 0), &[]);
                walk(out, ino, base, &path);
            } else {
                let mode = 0o100000 | (meta.permissions().mode() & 0o7777);
                entry(out, *ino, &name, mode, (0, 0), &fs::read(&path).unwrap());
            }
        }
    }
    let mut out = Vec::new();
    let mut ino = 1;
    walk(&mut out, &mut ino, root, root);
    entry(&mut out, ino + 1, "dev/console", 0o020600, (5, 1), &[]);
    entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    let path = dir.join("initramfs.cpio");
    fs::File::create(&path).unwrap().write_all(&out).unwrap();
    path
}

fn virtio_blk_root(image: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=none,id=root", image.display()),
        "-device".into(),
        "virtio-blk-pci,drive=root".into(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn boots_from_a_virtio_blk_ext4_root_with_its_devices_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(
        dir.path(),
        &format!(
            r#"mount -t proc proc /proc
mount -t sysfs sys /sys
for d in /sys/bus/virtio/drivers/*; do for l in "$d"/virtio*; do [ -e "$l" ] && echo "BOUND $(basename "$d")"; done; done
echo "FS $(cut -f2 /proc/filesystems | tr '\n' ' ')"
echo "ADDR $(ip -4 addr show dev eth0 | grep inet)"
echo "NS $(ls /proc/self/ns | tr '\n' ' ')"
echo "{MARKER} release=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#
        ),
    );
    let image = ext4(dir.path(), &root);
    let mut extra = virtio_blk_root(&image);
    for dev in [
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-device",
        "virtio-rng-pci",
        "-device",
        "virtio-balloon-pci",
        "-device",
        "virtio-serial-pci",
    ] {
        extra.push(dev.into());
    }
    let append = format!(
        "{} init=/init ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off",
        firebuild_kernel::test_kernel::QEMU_KERNEL_ARGS
    );
    let boot = boot(dir.path(), &append, &args(&extra));
    let console = &boot.console;
    let marker = console.lines().find(|l| l.contains(MARKER));
    assert!(marker.is_some(), "no marker on the console:\n{console}");
    for driver in [
        "virtio_blk",
        "virtio_net",
        "virtio_rng",
        "virtio_balloon",
        "virtio_console",
    ] {
        assert!(
            console.contains(&format!("BOUND {driver}")),
            "{driver} not bound:\n{console}"
        );
    }
    let fs_line = console
        .lines()
        .find(|l| l.starts_with("FS "))
        .unwrap_or_default();
    for fs in [
        "ext4", "squashfs", "overlay", "tmpfs", "cgroup2", "devtmpfs",
    ] {
        assert!(
            fs_line.split_whitespace().any(|f| f == fs),
            "{fs} missing: {fs_line}"
        );
    }
    assert!(
        console.contains("inet 10.0.2.15/24"),
        "ip= not applied:\n{console}"
    );
    let ns_line = console
        .lines()
        .find(|l| l.starts_with("NS "))
        .unwrap_or_default();
    for ns in ["user", "pid", "net", "mnt", "uts", "ipc", "cgroup"] {
        assert!(
            ns_line.split_whitespace().any(|n| n == ns),
            "{ns} namespace missing: {ns_line}"
        );
    }
    eprintln!(
        "boot to userspace and power-off: {:.2?} wall ({}) [{:?}]",
        boot.elapsed,
        marker.unwrap_or_default().trim(),
        boot.status
    );
}

#[test]
fn reboot_from_the_guest_makes_qemu_exit_under_no_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path(), &format!("echo {MARKER}\nreboot -f\n"));
    let cpio = initramfs(dir.path(), &root);
    let extra = ["-initrd".to_string(), cpio.display().to_string()];
    let boot = boot(
        dir.path(),
        "console=ttyS0 reboot=k panic=1 rdinit=/init",
        &args(&extra),
    );
    assert!(
        boot.console.contains(MARKER),
        "no marker:\n{}",
        boot.console
    );
    assert!(
        boot.console.contains("reboot: Restarting system"),
        "{}",
        boot.console
    );
    eprintln!("initramfs boot and reboot: {:.2?} wall", boot.elapsed);
}

#[test]
fn a_root_without_init_panics_and_qemu_exits() {
    // The failure path: no /init on the root disk. With panic=1 and
    // -no-reboot, QEMU must exit instead of hanging, and no marker appears.
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path(), "");
    fs::remove_file(root.join("init")).unwrap();
    let image = ext4(dir.path(), &root);
    let append = format!(
        "{} init=/init",
        firebuild_kernel::test_kernel::QEMU_KERNEL_ARGS
    );
    let boot = boot(dir.path(), &append, &args(&virtio_blk_root(&image)));
    assert!(!boot.console.contains(MARKER));
    assert!(boot.console.contains("Kernel panic"), "{}", boot.console);
}

#[test]
fn boots_on_microvm_with_virtio_mmio_devices_like_firecracker() {
    // Firecracker's transport: virtio-mmio devices announced on the kernel
    // command line (QEMU's microvm appends `virtio_mmio.device=` itself when
    // its ACPI is off). Without ACPI there is no power-off: the guest
    // reboots, and -no-reboot turns that into QEMU's exit, as Firecracker does.
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(
        dir.path(),
        &format!(
            r#"mount -t sysfs sys /sys
for d in /sys/bus/virtio/drivers/*; do for l in "$d"/virtio*; do [ -e "$l" ] && echo "BOUND $(basename "$d")"; done; done
echo {MARKER}
reboot -f
"#
        ),
    );
    let image = ext4(dir.path(), &root);
    let drive = format!("file={},format=raw,if=none,id=root", image.display());
    let extra = [
        "-M",
        "microvm,acpi=off",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=root",
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-device,netdev=n0",
    ];
    let append = format!(
        "{} init=/init",
        firebuild_kernel::test_kernel::QEMU_KERNEL_ARGS
    );
    let boot = boot_machine(dir.path(), &append, &extra);
    assert!(
        boot.console.contains("virtio_mmio.device="),
        "{}",
        boot.console
    );
    assert!(
        boot.console.contains(MARKER),
        "no marker:\n{}",
        boot.console
    );
    for driver in ["virtio_blk", "virtio_net"] {
        assert!(
            boot.console.contains(&format!("BOUND {driver}")),
            "{driver} not bound:\n{}",
            boot.console
        );
    }
    eprintln!(
        "microvm (virtio-mmio) boot and reboot: {:.2?} wall",
        boot.elapsed
    );
}
