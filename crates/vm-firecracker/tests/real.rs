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
    Disk, GuestDisk, Interrupts, NetworkAttachment, NetworkReleaser, RunMetadata, RunOutcome,
    RunSpec, Runtime, SnapshotStore, VmStatus, VmmChoice,
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Makes the `RunSpec` of a VM named so, on that network.
type SpecMaker = Box<dyn Fn(&str, &Netns) -> RunSpec>;

/// A runtime on the real binaries, under `dir`, and a `RunSpec` maker.
struct Real {
    runs: PathBuf,
    chroot_base: PathBuf,
    releases: Arc<Releases>,
    runtime: Runtime,
    spec: SpecMaker,
}

impl Real {
    fn new(bin: &Path, dir: &Path) -> Real {
        let runs = dir.join("runs");
        std::fs::create_dir(&runs).unwrap();
        let chroot_base = dir.join("jail");
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
        let kernel = kernel(dir);
        let rootfs = dir.join("stored-rootfs.ext4");
        std::fs::File::create(&rootfs)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let spec = move |name: &str, net: &Netns| {
            let mut spec = RunSpec::new(rootfs.clone(), image(), kernel.clone());
            spec.name = Some(name.into());
            spec.vmm = VmmChoice::Firecracker;
            spec.mem_mib = 128;
            spec.network_choice = firebuild_vm::NetworkChoice::Attached(net.attachment());
            spec.daemonize = true;
            spec
        };
        Real {
            runs,
            chroot_base,
            releases,
            runtime,
            spec: Box::new(spec),
        }
    }
}

#[test]
fn real_run_pause_resume_snapshot_and_a_fork_that_cannot_wake_leaves_nothing() {
    let Some(bin) = real_bin_dir() else { return };
    let _leftovers = Leftovers(vec!["fc-src", "fc-fork"]);
    let dir = tempfile::Builder::new().prefix("fbvr").tempdir().unwrap();
    let Real {
        runs,
        chroot_base,
        releases,
        runtime,
        spec,
    } = Real::new(&bin, dir.path());
    let rt = rt();
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

/// A pod's sandbox VM on the real Firecracker: booted with drives reserved
/// for its containers, one re-pointed at a container's image (the guest
/// told where and how big), then back, then kill and purge leave nothing.
#[test]
fn real_pod_vm_re_points_a_reserved_drive() {
    let Some(bin) = real_bin_dir() else { return };
    let _leftovers = Leftovers(vec!["fc-pod"]);
    let dir = tempfile::Builder::new().prefix("fbvp").tempdir().unwrap();
    let real = Real::new(&bin, dir.path());
    let image_file = dir.path().join("container.ext4");
    std::fs::File::create(&image_file)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let rt = rt();
    rt.block_on(async {
        let net = Netns::new();
        let mut spec = (real.spec)("fc-pod", &net);
        spec.hotplug_slots = 2;
        let mut sink = Vec::new();
        real.runtime.run(spec, &mut sink).await.unwrap();
        let vm = real.runtime.inspect("fc-pod").await.unwrap();
        let details: FirecrackerDetails = serde_json::from_value(vm.vmm_details.clone()).unwrap();
        let client = details.process.client();
        let path_of = |config: &firebuild_firecracker::models::FullVmConfiguration, id: &str| {
            config
                .drives
                .iter()
                .find(|d| d["drive_id"] == id)
                .map(|d| d["path_on_host"].as_str().unwrap().to_owned())
        };
        let booted = client.vm_config().await.unwrap();
        assert_eq!(
            path_of(&booted, "pod_slot_0").as_deref(),
            Some("/drive-pod_slot_0.img")
        );
        assert_eq!(
            path_of(&booted, "pod_slot_1").as_deref(),
            Some("/drive-pod_slot_1.img")
        );

        let disk = Disk {
            id: "fb-pod-0".into(),
            path: image_file.clone(),
            read_only: true,
            in_place: true,
        };
        let guest = real.runtime.attach_disk("fc-pod", 0, &disk).await.unwrap();
        // rootfs vda, scratch vdb, then the slots.
        assert_eq!(
            guest,
            GuestDisk::Device {
                name: "vdc".into(),
                sectors: 4096
            }
        );
        let plugged = client.vm_config().await.unwrap();
        assert_eq!(
            path_of(&plugged, "pod_slot_0").as_deref(),
            Some("/drive-pod_slot_0.plugged.img")
        );
        let jail_root = details.process.jail.clone().unwrap().root();
        assert!(jail_root.join("drive-pod_slot_0.plugged.img").exists());

        real.runtime.detach_disk("fc-pod", 0).await.unwrap();
        let unplugged = client.vm_config().await.unwrap();
        assert_eq!(
            path_of(&unplugged, "pod_slot_0").as_deref(),
            Some("/drive-pod_slot_0.img")
        );
        assert!(!jail_root.join("drive-pod_slot_0.plugged.img").exists());

        real.runtime
            .kill("fc-pod", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        real.runtime.purge().await.unwrap();
        assert_eq!(processes_of("fc-pod"), Vec::<u32>::new());
        assert!(
            !real.chroot_base.join("firecracker/fc-pod").exists(),
            "jail left"
        );
        assert!(!real.runs.join("fc-pod").exists(), "run dir left");
    });
}
