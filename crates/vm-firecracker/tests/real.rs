//! The runtime on the real Firecracker v1.16.1 and jailer, where they are
//! (`$FIREBUILD_TEST_FIRECRACKER_DIR`, else
//! `<workspace>/../shared/firecracker/bin`; skipped with a reason
//! otherwise): what a new user does, `run`, `pause`, `resume`,
//! `snapshot create`, then `run --from-snapshot`.
//!
//! `/dev/kvm` here is nested and a normal guest kernel does not boot under
//! it, so the guest never runs and its agent never answers: the fork's
//! identity step fails (after the runtime's agent timeout, 60 s), and that
//! failure must leave nothing: no process, jail, run directory or cgroup,
//! its network released.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{image, Netns};
use firebuild_vm::network::NetworkError;
use firebuild_vm::{
    Interrupts, NetworkAttachment, NetworkReleaser, RunMetadata, RunOutcome, RunSpec, Runtime,
    SnapshotStore, VmStatus, VmmChoice,
};
use firebuild_vm_firecracker::{FirecrackerConfig, FirecrackerDetails, FirecrackerVmm};

fn real_bin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FIREBUILD_TEST_FIRECRACKER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/firecracker/bin")
        });
    if dir.join("firecracker").is_file() && dir.join("jailer").is_file() {
        return Some(dir);
    }
    println!(
        "skipped: no real Firecracker and jailer in {} (set FIREBUILD_TEST_FIRECRACKER_DIR)",
        dir.display()
    );
    None
}

/// The test kernel if `FIREBUILD_TEST_KERNEL` names it, else a minimal
/// x86_64 ELF that halts (no guest boots here either way).
fn kernel(dir: &Path) -> PathBuf {
    if let Some(k) = std::env::var_os("FIREBUILD_TEST_KERNEL") {
        return k.into();
    }
    const BASE: u64 = 0x100_0000;
    const CODE_AT: u64 = 64 + 56;
    let code = [0xfa, 0xf4, 0xeb, 0xfd];
    let size = CODE_AT + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&62u16.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + CODE_AT).to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    for v in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    let path = dir.join("halt.elf");
    std::fs::write(&path, elf).unwrap();
    path
}

#[derive(Default)]
struct Releases(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl NetworkReleaser for Releases {
    async fn release(&self, vm: &RunMetadata, a: &NetworkAttachment) -> Result<(), NetworkError> {
        self.0.lock().unwrap().push(format!("{}:{}", vm.id, a.tap));
        Ok(())
    }
}

/// Live processes whose command line has `--id <id>`.
fn processes_of(id: &str) -> Vec<u32> {
    let needle = format!("\0--id\0{id}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && format!("\0{}", String::from_utf8_lossy(&cmd)).contains(&needle)
        })
        .collect()
}

/// Kills what a failed test left of the VMs it named.
struct Leftovers(Vec<&'static str>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for id in &self.0 {
            for pid in processes_of(id) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

#[test]
fn real_run_pause_resume_snapshot_and_a_fork_that_cannot_wake_leaves_nothing() {
    let Some(bin) = real_bin_dir() else { return };
    let _leftovers = Leftovers(vec!["fc-src", "fc-fork"]);
    let dir = tempfile::Builder::new().prefix("fbvr").tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let chroot_base = dir.path().join("jail");
    let config = FirecrackerConfig {
        firecracker: bin.join("firecracker"),
        jailer: bin.join("jailer"),
        chroot_base: chroot_base.clone(),
        user: None,
        id_range: firebuild_vm_firecracker::jail_ids::DEFAULT_RANGE,
        no_jailer: false,
        socket_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        snapshot_timeout: Duration::from_secs(120),
    };
    let releases = Arc::new(Releases::default());
    let runtime = Runtime::with_backends(&runs, vec![Arc::new(FirecrackerVmm::new(config))])
        .with_network_releaser(releases.clone());
    let kernel = kernel(dir.path());
    let rootfs = dir.path().join("stored-rootfs.ext4");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let spec = |name: &str, net: &Netns| {
        let mut spec = RunSpec::new(rootfs.clone(), image(), kernel.clone());
        spec.name = Some(name.into());
        spec.vmm = VmmChoice::Firecracker;
        spec.mem_mib = 128;
        spec.network_choice = firebuild_vm::NetworkChoice::Attached(net.attachment());
        spec.daemonize = true;
        spec
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (source_net, fork_net) = (Netns::new(), Netns::new());
        let mut sink = Vec::new();
        let outcome = runtime
            .run(spec("fc-src", &source_net), &mut sink)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RunOutcome::Detached {
                id: "fc-src".into()
            }
        );
        assert_eq!(
            runtime.pause("fc-src").await.unwrap().status,
            VmStatus::Paused
        );
        assert_eq!(
            runtime.resume("fc-src").await.unwrap().status,
            VmStatus::Running
        );

        let store = SnapshotStore::new(dir.path().join("snapshots"));
        let tag = "org/snap:1".parse().unwrap();
        let staging = store.begin(&tag).unwrap();
        let (_stop, stops) = tokio::sync::mpsc::unbounded_channel();
        let (record, image) = runtime
            .snapshot(
                "fc-src",
                "org/snap:1",
                staging.dir(),
                false,
                Interrupts::Channel(stops),
            )
            .await
            .unwrap();
        staging.publish(&record, &image).unwrap();
        assert_eq!(
            runtime.inspect("fc-src").await.unwrap().status,
            VmStatus::Running
        );

        // The fork restores (Firecracker loads the snapshot into a jail of
        // its own) and then fails at the identity step: no guest runs here.
        let mut fork = spec("fc-fork", &fork_net);
        fork.snapshot = Some(store.get(&tag).unwrap());
        let err = runtime.run(fork, &mut sink).await.unwrap_err().to_string();
        assert!(err.contains("identity"), "{err}");
        assert_eq!(processes_of("fc-fork"), Vec::<u32>::new());
        assert!(
            !chroot_base.join("firecracker/fc-fork").exists(),
            "jail left"
        );
        assert!(!runs.join("fc-fork").exists(), "run dir left");
        // Its network was attached by the caller (here the test), who keeps
        // it; one the runtime got from a provider (CNI) it hands back.

        // The source runs on; kill and purge leave nothing of it.
        let src = runtime.inspect("fc-src").await.unwrap();
        let details: FirecrackerDetails = serde_json::from_value(src.vmm_details.clone()).unwrap();
        let jail_dir = details.process.jail.unwrap().instance_dir();
        runtime
            .kill("fc-src", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        runtime.purge().await.unwrap();
        assert_eq!(processes_of("fc-src"), Vec::<u32>::new());
        assert!(!jail_dir.exists(), "jail of fc-src left");
        assert!(!runs.join("fc-src").exists(), "run dir of fc-src left");
        assert_eq!(*releases.0.lock().unwrap(), ["fc-src:fctap0"]);
    });
}
