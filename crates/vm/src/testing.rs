//! Test support (feature `testing`) for the VM test suites of this crate
//! and the crates above it: the static guest init, a busybox root
//! filesystem with the init at `/.firebuild/init` packed with
//! `mkfs.ext4 -d`, and image metadata. These helpers panic with a message
//! naming what is missing: they are for tests only.
//!
//! Needs Debian's `busybox-static` and `e2fsprogs`.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use firebuild_metadata::boot::GUEST_INIT_PATH;
use firebuild_metadata::image::{BuildConfig, EntrypointInfo, ImageName, ImageType};
use firebuild_metadata::ImageMetadata;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static guest init: `$FIREBUILD_VMINIT`, else the output of
/// `scripts/build-vminit.sh` (built if missing).
pub fn vminit() -> PathBuf {
    static VMINIT: OnceLock<PathBuf> = OnceLock::new();
    VMINIT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("FIREBUILD_VMINIT").filter(|v| !v.is_empty()) {
                return PathBuf::from(p);
            }
            let built = workspace_root().join("target/x86_64-unknown-linux-gnu/release/vminit");
            if built.is_file() {
                return built;
            }
            let out = Command::new("sh")
                .arg(workspace_root().join("scripts/build-vminit.sh"))
                .output()
                .expect("running scripts/build-vminit.sh");
            assert!(
                out.status.success(),
                "scripts/build-vminit.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// The CI kernel cache (`ci-kernel` of firebuild-kernel builds into it).
const KERNEL_CACHE: &str = "/var/cache/firebuild-ci/kernels";

/// The guest kernel the VM tests boot: `$FIREBUILD_TEST_KERNEL`, else the
/// newest kernel in the CI cache.
pub fn guest_kernel() -> PathBuf {
    if let Some(p) = std::env::var_os("FIREBUILD_TEST_KERNEL").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let newest = std::fs::read_dir(KERNEL_CACHE).ok().and_then(|dirs| {
        dirs.filter_map(|d| d.ok())
            .map(|d| d.path().join("vmlinux"))
            .filter(|k| k.is_file())
            .max_by_key(|k| k.metadata().and_then(|m| m.modified()).ok())
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no guest kernel: set FIREBUILD_TEST_KERNEL or build one into {KERNEL_CACHE} \
             (cargo run -p firebuild-kernel --example ci-kernel)"
        )
    })
}

/// Fills the directory `root` with a bootable busybox tree: busybox with
/// all its applets in /bin, the guest init (0755), empty mount points, a
/// sticky /tmp, and users root and app (1000, home /home/app).
pub fn busybox_tree(root: &Path) {
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "home/app",
        ".firebuild",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install -y busybox-static)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    let init = root.join(GUEST_INIT_PATH.trim_start_matches('/'));
    std::fs::copy(vminit(), &init).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).unwrap();
}

/// Packs the directory `root` into a 64 MiB ext4 file system at `image`
/// with `mkfs.ext4 -d`, then removes `root`.
pub fn pack_ext4(root: &Path, image: &Path) {
    pack_ext4_sized(root, image, "64M");
}

/// [`pack_ext4`] into a file system of `size` (mkfs.ext4's notation).
pub fn pack_ext4_sized(root: &Path, image: &Path, size: &str) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(root)
        .arg(image)
        .arg(size)
        .output()
        .expect("mkfs.ext4 (apt-get install -y e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(root).unwrap();
}

/// Metadata of a root filesystem image `org/image:version` with the
/// given ENTRYPOINT and CMD (exec form); everything else empty or
/// default, for the caller to set.
pub fn image_metadata(
    org: &str,
    image: &str,
    version: &str,
    entrypoint: &[&str],
    cmd: &[&str],
) -> ImageMetadata {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ImageMetadata {
        created_at_utc: 0,
        image: ImageName {
            org: org.into(),
            image: image.into(),
            version: version.into(),
        },
        labels: BTreeMap::new(),
        kind: ImageType::Rootfs,
        build_config: BuildConfig::default(),
        entrypoint_info: EntrypointInfo {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            env: BTreeMap::new(),
            shell: vec![],
            user: String::new(),
            workdir: String::new(),
        },
        parent: None,
        ports: vec![],
        tag: format!("{org}/{image}:{version}"),
        volumes: vec![],
        stop_signal: None,
        healthcheck: None,
        onbuild: vec![],
        base_image_digest: None,
        rootfs_size: 0,
        rootfs_digest: None,
    }
}
