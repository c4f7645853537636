//! Test fixtures: the stand-in `firecracker` and `jailer` executables of
//! `firebuild_firecracker::standin`, a network namespace with a tap, and
//! the VM inputs the runtime would give the backend.
//!
//! Firecracker cannot run on our machines (no package; the KVM here runs
//! only special guest kernels), so `firecracker` is a shell script that
//! re-runs this test binary as the API stand-in: it serves Firecracker's
//! HTTP API on the requested socket, checks every request body against the
//! v1.16.1 spec, enforces the pre-/post-boot rules and the host resources
//! (kernel, drive, tap in its network namespace). It boots nothing. For
//! these tests it also keeps a log of the requests it got, writes one line
//! into the configured serial output once started (as a guest would), and
//! on SendCtrlAltDel writes the guest init's exit-code marker and exits (as
//! Firecracker does when the guest reboots).
//!
//! The `jailer` stand-in does what our code relies on (jail directory,
//! exec-file copy, pid file, API socket under the jail root, `--netns`); it
//! does not chroot, drop privileges or create cgroups.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_firecracker::standin::{self, Executables, Options};
use firebuild_firecracker::JailUser;
use firebuild_metadata::guest::MmdsLatest;
use firebuild_metadata::{GuestMetadata, ImageMetadata, MmdsDocument};
use firebuild_vm::guest::BootArgs;
use firebuild_vm::rundir::RunDir;
use firebuild_vm::{
    Disk, LaunchConfig, NetworkAttachment, ProcessIdentity, RunMetadata, StartedVm, VmStatus,
    VmmKind,
};
use firebuild_vm_firecracker::FirecrackerConfig;
use serde_json::Value;

/// Exit code the stand-in reports through the console marker on shutdown.
pub const STANDIN_EXIT_CODE: i32 = 3;
/// The tap the test network namespaces hold.
pub const TAP: &str = "fctap0";
pub const MAC: &str = "02:fc:00:00:00:2a";

/// The body of the `firecracker` stand-in process: each test binary calls
/// it from a `#[test] fn standin_process`. Does nothing unless started by
/// the stand-in script.
pub fn standin_main() {
    standin::serve_process(|env, options| Options {
        serial_on_start: Some(format!("stand-in guest {} is up\n", env.id)),
        serial_on_ctrl_alt_del: Some(format!("firebuild-exit-code={STANDIN_EXIT_CODE}\n")),
        ..options
    });
}

/// A temp dir with the stand-in executables, a run cache and a chroot
/// base. Kills every stand-in process it started when dropped.
pub struct Fixture {
    // Dropped first: kills the stand-in processes while their pid file is
    // still there.
    exes: Executables,
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new().prefix("fbvf").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("runs")).unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"\x7fELF stand-in kernel").unwrap();
        Fixture {
            exes: Executables::install(dir.path()).unwrap(),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn kernel(&self) -> PathBuf {
        self.path().join("vmlinux")
    }

    pub fn run_cache(&self) -> PathBuf {
        self.path().join("runs")
    }

    pub fn chroot_base(&self) -> PathBuf {
        self.path().join("jail")
    }

    /// Jailed, as uid/gid 10000, with patient timeouts: the stand-in is a
    /// whole test binary starting up on a loaded 2-core machine.
    pub fn config(&self) -> FirecrackerConfig {
        FirecrackerConfig {
            firecracker: self.exes.firecracker(),
            jailer: self.exes.jailer(),
            chroot_base: self.chroot_base(),
            user: Some(JailUser {
                uid: 10000,
                gid: 10000,
            }),
            id_range: firebuild_vm_firecracker::jail_ids::DEFAULT_RANGE,
            no_jailer: false,
            socket_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            snapshot_timeout: Duration::from_secs(30),
        }
    }

    pub fn direct_config(&self) -> FirecrackerConfig {
        FirecrackerConfig {
            no_jailer: true,
            ..self.config()
        }
    }

    /// The requests the stand-in of VM `id` received, in order.
    pub fn requests(&self, id: &str) -> Vec<Value> {
        self.exes.requests(id).unwrap()
    }

    /// `METHOD path` of each request of VM `id`.
    pub fn request_lines(&self, id: &str) -> Vec<String> {
        self.requests(id)
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Waits (at most 30 s) until the stand-in of `id` has logged `n`
    /// requests.
    pub fn wait_requests(&self, id: &str, n: usize) -> Vec<Value> {
        let requests = self
            .exes
            .wait_requests(id, n, Duration::from_secs(30))
            .unwrap();
        assert!(
            requests.len() >= n,
            "the stand-in of {id} logged fewer than {n} requests: {:?}",
            self.request_lines(id)
        );
        requests
    }

    /// Pids of every stand-in process started.
    pub fn pids(&self) -> Vec<u32> {
        self.exes.pids()
    }

    /// The inputs the runtime hands the backend for VM `id` (the default
    /// overlay layout): a run directory holding a hard link to a stored
    /// image (0644, root's) and a scratch disk, the full kernel command
    /// line, the guest metadata document.
    pub fn launch(&self, id: &str, network: Option<NetworkAttachment>) -> LaunchConfig {
        let run_dir = RunDir::create(&self.run_cache(), id).unwrap();
        let store = self.run_cache().parent().unwrap().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let image = store.join(format!("{id}.ext4"));
        std::fs::write(&image, b"stand-in stored image").unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&image, run_dir.rootfs()).unwrap();
        let scratch = run_dir.file("scratch.ext4");
        std::fs::write(&scratch, b"stand-in scratch disk").unwrap();
        let mut backend = firebuild_vm_firecracker::kernel_args();
        backend.push("firebuild.overlay=/dev/vdb".into());
        let backend: Vec<&str> = backend.iter().map(String::as_str).collect();
        let kernel_args = BootArgs::new(network.as_ref(), "fc-guest", None)
            .unwrap()
            .render(&backend)
            .unwrap();
        LaunchConfig {
            id: id.to_owned(),
            hotplug_slots: 0,
            root: Disk {
                id: "rootfs".into(),
                path: run_dir.rootfs(),
                read_only: true,
                in_place: false,
            },
            disks: vec![Disk {
                id: "scratch".into(),
                path: scratch,
                read_only: false,
                in_place: false,
            }],
            run_dir,
            kernel: self.kernel(),
            kernel_args,
            cpus: 2,
            mem_mib: 256,
            guest: guest_document(id),
            network,
        }
    }
}

/// The guest metadata of a VM: env, hostname, entrypoint.
pub fn guest_document(id: &str) -> MmdsDocument {
    MmdsDocument {
        latest: MmdsLatest {
            meta_data: GuestMetadata {
                vmm_id: id.to_owned(),
                entrypoint_json: r#"["/bin/app","serve"]"#.into(),
                env: BTreeMap::from([("GREETING".to_owned(), "hello from MMDS".to_owned())]),
                local_hostname: "fc-guest".into(),
                image_tag: "org/app:1".into(),
                ..Default::default()
            },
        },
    }
}

/// The run metadata the runtime would store for a VM started with `launch`.
pub fn run_metadata(launch: &LaunchConfig, started: &StartedVm) -> RunMetadata {
    RunMetadata {
        id: launch.id.clone(),
        name: launch.id.clone(),
        image: "org/app:1".into(),
        hostname: "fc-guest".into(),
        ip: launch.network.as_ref().map(|n| n.ip.to_string()),
        pid: Some(started.pid),
        pid_start_time: started.start_time,
        status: VmStatus::Running,
        created: time::OffsetDateTime::now_utc(),
        started: Some(time::OffsetDateTime::now_utc()),
        exited: None,
        exit_code: None,
        vmm: VmmKind::Firecracker,
        vmm_details: started.details.clone(),
        network: launch.network.clone(),
        kernel: launch.kernel.clone(),
        kernel_id: "k1".into(),
        kernel_args: launch.kernel_args.clone(),
        cpus: launch.cpus,
        mem_mib: launch.mem_mib,
        command: vec!["/bin/app".into(), "serve".into()],
        run_dir: launch.run_dir.path().to_owned(),
        daemonized: true,
        remove_on_exit: false,
        shutdown_timeout_secs: 15,
        creator: ProcessIdentity::current().unwrap(),
        has_healthcheck: false,
        rootfs_mode: firebuild_vm::RootfsMode::Overlay,
        root_disk: Some(launch.root.path.clone()),
        volumes: Vec::new(),
        from_snapshot: None,
    }
}

/// Image metadata with ENTRYPOINT `/bin/app` and CMD `serve`.
pub fn image() -> ImageMetadata {
    let mut image =
        firebuild_vm::testing::image_metadata("org", "app", "1", &["/bin/app"], &["serve"]);
    image.entrypoint_info.env = BTreeMap::from([("FROM_IMAGE".to_owned(), "1".to_owned())]);
    image.entrypoint_info.workdir = "/".into();
    image
}

/// A network namespace holding [`TAP`], made for one test, removed after.
pub struct Netns(standin::Netns);

impl Netns {
    pub fn new() -> Netns {
        Self::with_tap(Some(TAP))
    }

    pub fn with_tap(tap: Option<&str>) -> Netns {
        Netns(standin::Netns::create(tap).unwrap())
    }

    pub fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// What the CNI layer would hand the runtime.
    pub fn attachment(&self) -> NetworkAttachment {
        NetworkAttachment {
            netns: self.path(),
            tap: TAP.into(),
            guest_mac: MAC.into(),
            ip: "10.213.0.2".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.213.0.1".parse().unwrap()),
            nameservers: vec!["10.213.0.1".parse().unwrap()],
            mtu: Some(1400),
            network_name: "fbtest".into(),
            release_data: Value::Null,
        }
    }
}

/// Waits (at most 30 s) until `pid` is gone.
pub fn wait_gone(pid: u32) -> bool {
    standin::wait_gone(pid, Duration::from_secs(30))
}
