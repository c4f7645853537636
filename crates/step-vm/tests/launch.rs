//! A step VM whose VMM cannot start: the step fails with what the VMM did
//! (no panic from cleaning up inside the async runtime), and nothing of it
//! is left: no run directory, no process.
//!
//! Needs root (QEMU's confinement claims host ids). No guest boots here:
//! the "VMM" is `/bin/false` or a script that hangs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firebuild_builder::{CancelToken, Limits, Network, StepVm, StepVmError, VmStep};
use firebuild_cni::{CniPaths, CniRuntime};
use firebuild_step_vm::{MicroVmSteps, StepVmConfig};
use firebuild_vm::{AccelPolicy, IdPool, QemuConfig, QemuVmm, Runtime, VmmChoice};

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["vms", "cni/conf", "cni/cache", "upper", "ids"] {
            std::fs::create_dir_all(w.path(d)).unwrap();
        }
        // QEMU never reads them: it does not start.
        std::fs::write(w.path("vmlinux"), b"kernel").unwrap();
        std::fs::write(w.path("init.ext4"), b"init").unwrap();
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn steps(&self, qemu: &Path) -> MicroVmSteps {
        let vmm = QemuVmm::new(QemuConfig {
            binary: qemu.to_path_buf(),
            accel: AccelPolicy::Tcg,
            start_timeout: Duration::from_secs(3),
            ids: IdPool {
                dir: Some(self.path("ids")),
                ..Default::default()
            },
            ..Default::default()
        });
        MicroVmSteps::new(StepVmConfig {
            runtime: Runtime::with_backends(self.path("vms"), vec![Arc::new(vmm)]),
            cni: CniRuntime::new(CniPaths {
                conf_dir: self.path("cni/conf"),
                bin_dirs: vec![PathBuf::from("/usr/lib/cni")],
                cache_dir: self.path("cni/cache"),
            }),
            vmm: VmmChoice::Qemu,
            kernel: self.path("vmlinux"),
            kernel_id: "test".into(),
        })
        .unwrap()
    }

    fn run(&self, steps: &MicroVmSteps) -> Result<(), StepVmError> {
        let argv = vec!["true".to_owned()];
        let init = self.path("init.ext4");
        let upper = self.path("upper");
        let step = VmStep {
            init_disk: &init,
            layers: &[],
            upper: &upper,
            argv: &argv,
            env: &[],
            user: "root",
            cwd: "/",
            network: Network::None,
            script: None,
            limits: Limits::default(),
        };
        steps
            .run_step(&step, &mut |_| {}, &CancelToken::new())
            .map(|_| ())
    }

    /// Run directories left in the step VMs' run cache.
    fn vms_left(&self) -> Vec<String> {
        std::fs::read_dir(self.path("vms"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }
}

#[test]
fn a_vmm_that_exits_at_once_fails_the_step_with_its_status() {
    let w = World::new();
    let steps = w.steps(Path::new("/bin/false"));
    let err = w.run(&steps).unwrap_err().to_string();
    assert!(
        err.contains("starting the VM") && err.contains("exited with exit status: 1"),
        "{err}"
    );
    assert_eq!(w.vms_left(), Vec::<String>::new());
}

#[test]
fn a_vmm_that_hangs_is_stopped_and_the_step_fails() {
    let w = World::new();
    let hangs = w.path("hangs");
    std::fs::write(
        &hangs,
        "#!/bin/sh\necho 'stand-in VMM: hanging' >&2\nexec sleep 1001\n",
    )
    .unwrap();
    std::fs::set_permissions(&hangs, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let steps = w.steps(&hangs);
    let err = w.run(&steps).unwrap_err().to_string();
    assert!(err.contains("stand-in VMM: hanging"), "{err}");
    assert_eq!(w.vms_left(), Vec::<String>::new());
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 1001"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the hung VMM still runs");
}
