//! Shared set-up of the VM tests: the CI kernel, the static guest init, a
//! busybox root filesystem made with `mkfs.ext4 -d`, and guards that leave
//! nothing running or mounted.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use firebuild_metadata::ImageMetadata;
use firebuild_vm::testing;
use firebuild_vm::{
    AccelPolicy, ProcessIdentity, QemuConfig, QemuVmm, RunMetadata, RunSpec, Runtime, VmmChoice,
};

/// The cached CI test kernel (built on first use by the kernel crate).
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            firebuild_kernel::test_kernel::ensure_cached()
                .unwrap_or_else(|e| panic!("the CI test kernel is needed for VM tests: {e}"))
        })
        .clone()
}

/// Builds `root.ext4` in `dir`: busybox with all its applets in /bin, the
/// guest init at /.firebuild/init, users root and app (1000).
pub fn build_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    testing::busybox_tree(&root);
    let image = dir.join("root.ext4");
    testing::pack_ext4(&root, &image);
    image
}

/// Image metadata with the given ENTRYPOINT and CMD (exec form).
pub fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageMetadata {
    let mut image = testing::image_metadata("test", "busybox", "1", entrypoint, cmd);
    image.entrypoint_info.env = [("PATH".to_owned(), "/bin".to_owned())].into();
    image.entrypoint_info.shell = vec!["/bin/sh".into(), "-c".into()];
    image
}

/// A shell-script entrypoint: `/bin/sh -c SCRIPT`.
pub fn shell_image(script: &str) -> ImageMetadata {
    image(&["/bin/sh", "-c", script], &[])
}

/// One test's world: a temp dir with a root filesystem and a run cache,
/// and a runtime on QEMU/TCG. Dropping it kills any VMM still recorded in
/// the run cache, so a failing test leaves no process behind.
pub struct World {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub run_cache: PathBuf,
    pub runtime: Arc<Runtime>,
}

impl World {
    pub fn new() -> Self {
        Self::with_accel(AccelPolicy::Tcg)
    }

    pub fn with_accel(accel: AccelPolicy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = build_rootfs(dir.path());
        let run_cache = dir.path().join("vms");
        let qemu = QemuVmm::new(QemuConfig {
            accel,
            probe_timeout: Duration::from_secs(8),
            ..QemuConfig::default()
        });
        let runtime = Arc::new(Runtime::with_backends(&run_cache, vec![Arc::new(qemu)]));
        World {
            dir,
            rootfs,
            run_cache,
            runtime,
        }
    }

    /// A spec for `image` on QEMU with test-friendly defaults.
    pub fn spec(&self, image: ImageMetadata) -> RunSpec {
        let mut spec = RunSpec::new(self.rootfs.clone(), image, kernel());
        spec.vmm = VmmChoice::Qemu;
        spec.mem_mib = 128;
        spec.shutdown_timeout = Duration::from_secs(20);
        spec
    }

    /// Names of the entries in the run cache (VM dirs and hidden files).
    pub fn run_cache_entries(&self) -> Vec<String> {
        match std::fs::read_dir(&self.run_cache) {
            Ok(d) => {
                let mut v: Vec<String> = d
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    // The runtime's own bookkeeping: probe verdicts, id claims.
                    .filter(|n| !n.starts_with(".kvm-probe") && n != ".qemu-ids")
                    .collect();
                v.sort();
                v
            }
            Err(_) => vec![],
        }
    }

    /// VMM processes recorded in the run cache that are still alive.
    pub fn live_vmms(&self) -> Vec<ProcessIdentity> {
        let mut live = Vec::new();
        for name in self.run_cache_entries() {
            let path = self.run_cache.join(name).join("run.json");
            if let Ok(md) = RunMetadata::load(&path) {
                if let Some(p) = md.process().filter(|p| p.is_alive()) {
                    live.push(p);
                }
            }
        }
        live
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for p in self.live_vmms() {
            let _ = p.signal(rustix::process::Signal::KILL);
        }
    }
}

/// No process has `pid` with that start time, and no mount mentions `path`.
pub fn assert_gone(process: &ProcessIdentity, path: &Path) {
    assert!(!process.is_alive(), "VMM {} still runs", process.pid);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&*path.to_string_lossy()),
        "a mount under {} remains",
        path.display()
    );
}

/// A console sink tests can read while `run` writes into it.
#[derive(Clone, Default)]
pub struct SharedSink(pub Arc<Mutex<Vec<u8>>>);

impl SharedSink {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// Reads a VM's console log (raw, with the marker).
pub fn console_log(md: &RunMetadata) -> String {
    std::fs::read_to_string(md.run_dir.join("console.log")).unwrap_or_default()
}
