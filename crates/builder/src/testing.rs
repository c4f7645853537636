//! Test support (feature `testing`) for this crate's unit and end-to-end
//! tests: a busybox-static root filesystem. Panics on failure: tests only.
//! Needs Debian's `busybox-static`.

use std::path::Path;

/// Fills `dir` with a minimal busybox root: `/bin/busybox`, an applet
/// symlink per command, and passwd/group with root and `app` (1000).
pub fn busybox_root(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .unwrap();
}

/// The subordinate id range the tests map the RUN sandbox to (not read from
/// the machine's /etc/subuid: tests bring their own settings). High and
/// unassigned: nothing on a host owns these ids.
pub const TEST_IDS: crate::sandbox::IdMap = crate::sandbox::IdMap {
    uid: 3_000_000_000,
    gid: 3_000_000_000,
    count: crate::sandbox::idmap::MIN_IDS,
};

/// The sandbox settings of the tests: [`TEST_IDS`], the default network.
pub fn sandbox() -> crate::sandbox::SandboxSettings {
    crate::sandbox::SandboxSettings {
        ids: Some(TEST_IDS),
        ..Default::default()
    }
}
