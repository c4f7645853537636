//! The world of the CLI's VM tests: a temp dir with the store, kernel,
//! run cache and profile directories, the `firebuild` binary pointed at
//! them, QEMU under TCG. Dropping it kills and purges the VMs it started,
//! also when an assertion fails.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use firebuild_vm::testing;

pub const KERNEL_ID: &str = "fbt-vmlinux";
const BOOT_WAIT: Duration = Duration::from_secs(90);

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub vms: Vec<String>,
}

impl World {
    pub fn new() -> World {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (QEMU, mounts)"
        );
        let dir = tempfile::tempdir().unwrap();
        for d in ["runs", "rootfs", "vmlinux", "cache", "profiles"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let w = World {
            dir,
            vms: Vec::new(),
        };
        let kernel = testing::guest_kernel();
        w.ok(
            &["kernel", "add"],
            &["--file", kernel.to_str().unwrap(), "--id", KERNEL_ID],
        );
        w
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn settings(&self) -> Vec<String> {
        let p = |name: &str| self.path(name).display().to_string();
        vec![
            format!("--profile-conf-dir={}", p("profiles")),
            format!("--run-cache={}", p("runs")),
            format!("--cache-dir={}", p("cache")),
            format!(
                "--storage-provider-property-string=rootfs-storage-root={}",
                p("rootfs")
            ),
            format!(
                "--storage-provider-property-string=kernel-storage-root={}",
                p("vmlinux")
            ),
            format!(
                "--storage-provider-property-string=volume-storage-root={}",
                p("volumes")
            ),
            "--vmm=qemu".into(),
            "--qemu-accel=tcg".into(),
        ]
    }

    pub fn command(&self, command: &[&str], rest: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebuild"));
        cmd.args(command)
            .args(self.settings())
            .args(rest)
            .env_remove("RUST_LOG");
        cmd
    }

    pub fn run(&self, command: &[&str], rest: &[&str]) -> Output {
        self.command(command, rest)
            .stdin(Stdio::null())
            .output()
            .expect("run firebuild")
    }

    pub fn ok(&self, command: &[&str], rest: &[&str]) -> String {
        let out = self.run(command, rest);
        assert!(
            out.status.success(),
            "firebuild {command:?} {rest:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `firebuild exec --vmm-id VM <flags> -- <cmd>`.
    pub fn exec(&self, vm: &str, flags: &[&str], cmd: &[&str]) -> Output {
        let mut rest = vec!["--vmm-id", vm];
        rest.extend_from_slice(flags);
        rest.push("--");
        rest.extend_from_slice(cmd);
        self.run(&["exec"], &rest)
    }

    /// A daemonized VM of `image` (on the world's kernel unless `flags` say
    /// `--vmlinux-id`); returns once its agent answers.
    pub fn start_vm(&mut self, image: &str, name: &str, flags: &[&str]) -> String {
        let mut rest = vec![
            "--from",
            image,
            "--name",
            name,
            "--daemonize",
            "--mem",
            "128",
        ];
        // The world's kernel unless the flags choose one.
        if !flags.contains(&"--vmlinux-id") {
            rest.extend(["--vmlinux-id", KERNEL_ID]);
        }
        rest.extend_from_slice(flags);
        self.ok(&["run"], &rest);
        self.vms.push(name.to_owned());
        let deadline = Instant::now() + BOOT_WAIT;
        loop {
            let out = self.exec(name, &[], &["true"]);
            if out.status.success() {
                return name.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the agent of {name} never answered: {}\nconsole:\n{}",
                text(&out.stderr),
                std::fs::read_to_string(self.path("runs").join(name).join("console.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for vm in &self.vms {
            let _ = self.run(&["kill"], &["--vmm-id", vm, "--shutdown-timeout", "1"]);
        }
        let _ = self.run(&["purge"], &[]);
    }
}

/// The sha256 of a file, streamed.
pub fn sha256(p: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}
