//! The world of the shim's tests: a containerd of its own (root, state,
//! socket and config in a temp dir, the CRI plugin off), the shim binary
//! on its PATH, a firebuild profile with the test kernel and QEMU under
//! TCG, and a docker-registry holding a busybox image. Dropping it removes
//! every task, VM and mount it made, also when an assertion fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use firebuild_host::profile::ProfileDir;
use firebuild_host::SettingsArgs;
use firebuild_oci::manifest::Compression;
use firebuild_oci::testing::{busybox_rootfs_tar, push_image, TestRegistry};
use firebuild_oci::{block_on, RegistryConfig};

pub const KERNEL_ID: &str = "fbt-vmlinux";
pub const PROFILE: &str = "shim-test";

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub struct World {
    pub dir: tempfile::TempDir,
    containerd: Option<Child>,
    pub registry: TestRegistry,
    pub image: String,
    /// The containerd namespace `ctr` works in (`k8s.io` with the CRI).
    pub namespace: String,
}

impl World {
    /// containerd without its CRI plugin.
    pub fn new() -> World {
        World::build(None)
    }

    /// containerd with its CRI plugin configured by `cri` (given the
    /// world's directory, the TOML of `[plugins."io.containerd.grpc.v1.cri"]`);
    /// `ctr` works in the CRI's namespace.
    pub fn with_cri(cri: &dyn Fn(&Path) -> String) -> World {
        World::build(Some(cri))
    }

    fn build(cri: Option<&dyn Fn(&Path) -> String>) -> World {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (containerd, QEMU, mounts)"
        );
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "profiles", "runs", "cache", "rootfs", "vmlinux", "root", "state",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let p = |name: &str| dir.path().join(name);
        let cri = cri.map(|section| section(dir.path()));
        let args = SettingsArgs {
            run_cache: Some(p("runs")),
            cache_dir: Some(p("cache")),
            storage_provider_property_string: vec![
                (
                    "rootfs-storage-root".into(),
                    p("rootfs").display().to_string(),
                ),
                (
                    "kernel-storage-root".into(),
                    p("vmlinux").display().to_string(),
                ),
            ],
            vmm: Some(firebuild_vm::VmmChoice::Qemu),
            qemu_accel: Some(firebuild_vm::AccelPolicy::Tcg),
            default_vmlinux_id: Some(KERNEL_ID.into()),
            ..Default::default()
        };
        ProfileDir::new(p("profiles"))
            .create_or_update(PROFILE, &args)
            .unwrap();
        firebuild_kernel::KernelStore::new(p("vmlinux"))
            .add_file(&firebuild_vm::testing::guest_kernel(), KERNEL_ID, false)
            .unwrap();
        std::fs::write(
            p("shim.toml"),
            format!(
                "profile = {PROFILE:?}\nprofile-conf-dir = {:?}\n",
                p("profiles").display().to_string()
            ),
        )
        .unwrap();
        std::fs::write(
            p("containerd.toml"),
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n{}[grpc]\n  address = {:?}\n{}",
                p("root").display().to_string(),
                p("state").display().to_string(),
                if cri.is_some() {
                    ""
                } else {
                    "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
                },
                p("containerd.sock").display().to_string(),
                cri.as_deref().unwrap_or_default(),
            ),
        )
        .unwrap();
        let registry = TestRegistry::start().unwrap();
        let image = registry.reference("tools/busybox:1");
        block_on(push_image(
            &p("cache").join("push"),
            &RegistryConfig::default(),
            &image,
            &[(busybox_rootfs_tar().unwrap(), Compression::Gzip)],
            |cfg| cfg.env = vec!["PATH=/bin:/sbin".into()],
        ))
        .unwrap()
        .unwrap();
        let mut w = World {
            image: image.to_string(),
            dir,
            containerd: None,
            registry,
            namespace: if cri.is_some() { "k8s.io" } else { "default" }.into(),
        };
        w.start_containerd();
        w.ok(&["image", "pull", "--plain-http", &w.image.clone()]);
        w
    }

    /// Pushes busybox with a layer of `files` on top as `name` (its CMD
    /// `cmd`, when given) to the test registry and pulls it into
    /// containerd; returns its reference.
    pub fn push_with_files(&self, name: &str, files: &[(&str, &str)], cmd: &[&str]) -> String {
        let mut layer = firebuild_oci::testing::TarBuilder::new();
        for (path, contents) in files {
            layer.file(path, 0o644, contents.as_bytes());
        }
        let image = self.registry.reference(name);
        block_on(push_image(
            &self.path("cache").join("push"),
            &RegistryConfig::default(),
            &image,
            &[
                (busybox_rootfs_tar().unwrap(), Compression::Gzip),
                (layer.finish(), Compression::Gzip),
            ],
            |cfg| {
                cfg.env = vec!["PATH=/bin:/sbin".into()];
                if !cmd.is_empty() {
                    cfg.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
                }
            },
        ))
        .unwrap()
        .unwrap();
        let image = image.to_string();
        self.ok(&["image", "pull", "--plain-http", &image]);
        image
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    /// Starts containerd (again) and waits until it answers.
    pub fn start_containerd(&mut self) {
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-firebuild-v2"));
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.path("containerd.toml"))
            .env("PATH", path)
            .env("FIREBUILD_SHIM_CONFIG", self.path("shim.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("running containerd (apt install containerd)");
        self.containerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ctr(&["version"]).output().unwrap();
            if out.status.success() && text(&out.stdout).contains("Server:") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                self.containerd_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops containerd (SIGTERM) as a restart or upgrade does: shims and
    /// their tasks stay.
    pub fn stop_containerd(&mut self) {
        if let Some(mut child) = self.containerd.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }

    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.namespace])
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.ctr(args).stdin(Stdio::null()).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        self.assert_success(&format!("ctr {args:?}"), &out);
        out
    }

    /// Fails the test with what `what` printed and containerd's log tail.
    pub fn assert_success(&self, what: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.tail_of_log()
        );
    }

    pub fn tail_of_log(&self) -> String {
        let log = self.containerd_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The VMs the shim has in the run cache.
    pub fn vm_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.path("runs"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mounts under this world's directory.
    pub fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    /// Shim processes serving this containerd.
    pub fn shims(&self) -> Vec<i32> {
        let socket = self.socket().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = text(&cmdline);
            if cmdline.contains("containerd-shim-firebuild-v2") && cmdline.contains(&socket) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Waits until `check` holds, for at most `timeout`.
    pub fn eventually(&self, timeout: Duration, what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.containerd.is_some() {
            let tasks = self.run(&["task", "ls", "-q"]);
            for id in text(&tasks.stdout).lines() {
                let _ = self.run(&["task", "kill", "-s", "SIGKILL", id]);
            }
            std::thread::sleep(Duration::from_secs(1));
            for id in text(&tasks.stdout).lines() {
                let _ = self.run(&["task", "rm", "-f", id]);
            }
            let containers = self.run(&["container", "ls", "-q"]);
            for id in text(&containers.stdout).lines() {
                let _ = self.run(&["container", "rm", id]);
            }
        }
        self.stop_containerd();
        for pid in self.shims() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // VMs a failed test left: stopped and removed as the shim would.
        if let Ok(settings) = firebuild_host::Settings::resolve(
            Some(PROFILE),
            &self.path("profiles"),
            &SettingsArgs::default(),
        ) {
            if let Ok(runtime) = firebuild_host::wiring::vm_runtime(&settings, false) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for vm in self.vm_dirs() {
                    let _ = rt.block_on(runtime.remove(&vm, Duration::from_secs(2)));
                }
            }
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = rustix::mount::unmount(Path::new(&m), rustix::mount::UnmountFlags::DETACH);
        }
    }
}
