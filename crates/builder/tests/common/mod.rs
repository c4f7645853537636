//! Shared fixtures for the build engine's end-to-end tests (root needed).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use firebuild_builder::{build, BuildOptions, BuildOutput, ImageType};
use firebuild_store::DirectoryStore;

/// A store, a cache and a context directory in one temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: DirectoryStore,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("ctx")).unwrap();
        let store = DirectoryStore::new(dir.path().join("store"));
        // Any static binary stands in for the guest init here.
        std::fs::copy("/bin/busybox", dir.path().join("vminit")).unwrap();
        Fixture { dir, store }
    }

    pub fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn write(&self, rel: &str, data: &str) {
        let p = self.ctx().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// Options for a Dockerfile written into the context.
    pub fn opts(&self, dockerfile: &str, tag: &str) -> BuildOptions {
        let path = self.ctx().join("Dockerfile");
        std::fs::write(&path, dockerfile).unwrap();
        let mut o = BuildOptions::new(
            path.to_str().unwrap(),
            self.cache(),
            self.dir.path().join("vminit"),
        );
        o.tag = Some(tag.into());
        o.sandbox = firebuild_builder::testing::sandbox();
        o
    }

    pub fn build(&self, dockerfile: &str, tag: &str) -> firebuild_builder::Result<BuildOutput> {
        build(&self.store, &self.opts(dockerfile, tag))
    }

    /// Stores `busybox:test` (a baseos): FROM scratch plus a busybox tree.
    pub fn busybox_base(&self) {
        let tree = self.dir.path().join("bbctx");
        busybox_tree(&tree.join("rootfs"));
        std::fs::write(
            tree.join("Dockerfile"),
            "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n",
        )
        .unwrap();
        let mut o = BuildOptions::new(
            tree.join("Dockerfile").to_str().unwrap(),
            self.cache(),
            self.dir.path().join("vminit"),
        );
        o.kind = ImageType::Baseos;
        o.tag = Some("busybox:test".into());
        o.sandbox = firebuild_builder::testing::sandbox();
        build(&self.store, &o).expect("building the busybox base");
    }
}

/// A minimal busybox root: applets as symlinks, root and `app` users,
/// and the usual empty directories with a sticky /tmp.
pub fn busybox_tree(dir: &Path) {
    firebuild_builder::testing::busybox_root(dir);
    for d in ["root", "home", "var", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

/// Runs debugfs (read-only) on an image and returns its stdout.
pub fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The content of a file inside an image.
pub fn cat(image: &Path, path: &str) -> String {
    debugfs(image, &format!("cat {path}"))
}

/// (mode & 07777, uid, gid, type) of a path inside an image; None if missing.
pub fn stat(image: &Path, path: &str) -> Option<(u32, u32, u32, String)> {
    let text = debugfs(image, &format!("stat {path}"));
    let line = text.lines().find(|l| l.contains("Mode:"))?;
    let ty = line
        .split("Type:")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_owned();
    let mode =
        u32::from_str_radix(line.split("Mode:").nth(1)?.split_whitespace().next()?, 8).ok()?;
    let owner = text.lines().find(|l| l.starts_with("User:"))?;
    let mut it = owner.split_whitespace();
    let uid = it.nth(1)?.parse().ok()?;
    let gid = it.nth(1)?.parse().ok()?;
    Some((mode & 0o7777, uid, gid, ty))
}

/// `e2fsck -fn` passes.
pub fn fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines of /proc/mounts mentioning `needle`.
pub fn mounts_under(needle: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle.to_str().unwrap()))
        .map(String::from)
        .collect()
}

/// Pids whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}
