//! The `Vmm` trait of the Firecracker backend, driven directly: what it
//! sends Firecracker (checked by the spec-enforcing API stand-in, see
//! `common`), stop, kill, clean-up, describe, availability and preflight.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{guest_document, run_metadata, wait_gone, Fixture, Netns, MAC, TAP};
use firebuild_vm::rundir::RunDir;
use firebuild_vm::{AgentEndpoint, Availability, Disk, GuestDisk, VmError, Vmm, VmmKind};
use firebuild_vm_firecracker::{FirecrackerConfig, FirecrackerDetails, FirecrackerVmm, Mode};
use serde_json::{json, Value};

/// Not a test: the body of the `firecracker` stand-in process.
#[test]
fn standin_process() {
    common::standin_main();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn jailed_start_configures_firecracker_then_stops_and_cleans_up() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let launch = fx.launch("vm-jailed", Some(ns.attachment()));
    let rt = rt();
    let started = rt.block_on(vmm.start(&launch)).unwrap();

    // Exactly the requests a boot needs, in order, each accepted (204) by
    // the stand-in, which validated every body against the v1.16.1 spec.
    let requests = fx.wait_requests("vm-jailed", 12);
    assert_eq!(
        fx.request_lines("vm-jailed"),
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/scratch",
            "PUT /network-interfaces/eth0",
            "PUT /mmds/config",
            "PUT /mmds",
            "PUT /vsock",
            "PUT /serial",
            "PUT /actions",
        ]
    );
    for r in &requests {
        assert_eq!(r["status"], 204, "{r}");
    }
    let body = |i: usize| requests[i]["body"].clone();
    // Paths are the jail's: the files were staged into its root.
    assert_eq!(body(0)["log_path"], "/firecracker.log");
    assert_eq!(body(1), json!({"metrics_path": "/firecracker.metrics"}));
    assert_eq!(
        body(2),
        json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false})
    );
    assert_eq!(
        body(3),
        json!({"kernel_image_path": "/vmlinux", "boot_args": launch.kernel_args})
    );
    let args = launch.kernel_args.as_str();
    for wanted in [
        "console=ttyS0",
        "reboot=k",
        "init=/.firebuild/init",
        "firebuild.metadata=mmds",
        "i8042.noaux",
        "ip=10.213.0.2::10.213.0.1:255.255.255.0:fc-guest:eth0:off:10.213.0.1",
    ] {
        assert!(args.split(' ').any(|a| a == wanted), "{wanted} in {args}");
    }
    assert!(
        !args.contains("root="),
        "Firecracker adds root= itself: {args}"
    );
    // The shared image read-only (Firecracker then adds `root=/dev/vda
    // ro`), the scratch disk writable, after it (/dev/vdb).
    assert!(
        args.split(' ').any(|a| a == "firebuild.overlay=/dev/vdb"),
        "{args}"
    );
    assert_eq!(
        body(4),
        json!({"drive_id": "rootfs", "path_on_host": "/rootfs.img", "is_root_device": true, "is_read_only": true})
    );
    assert_eq!(
        body(5),
        json!({"drive_id": "scratch", "path_on_host": "/drive-scratch.img", "is_root_device": false, "is_read_only": false})
    );
    assert_eq!(
        body(6),
        json!({"iface_id": "eth0", "host_dev_name": TAP, "guest_mac": MAC, "mtu": 1400})
    );
    assert_eq!(
        body(7),
        json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254"})
    );
    // The MMDS document is the guest metadata, as the config drive has it.
    let mmds = body(8);
    assert_eq!(
        mmds,
        serde_json::to_value(guest_document("vm-jailed")).unwrap()
    );
    let meta = &mmds["latest"]["meta-data"];
    assert_eq!(meta["env"]["GREETING"], "hello from MMDS");
    assert_eq!(meta["local-hostname"], "fc-guest");
    assert_eq!(meta["entrypoint-json"], r#"["/bin/app","serve"]"#);
    // The guest agent's vsock: Firecracker makes the socket in the jail,
    // owned by the jail user; nothing new is linked in.
    assert_eq!(body(9), json!({"guest_cid": 3, "uds_path": "/agent.vsock"}));
    assert_eq!(body(10), json!({"serial_out_path": "/console.log"}));
    assert_eq!(body(11), json!({"action_type": "InstanceStart"}));

    // What the runtime stores: the process record, jailed.
    let details: FirecrackerDetails = serde_json::from_value(started.details.clone()).unwrap();
    assert_eq!(details.mode, Mode::Jailed);
    assert_eq!(details.process.pid as i32, started.pid);
    assert_eq!(Some(details.process.start_time), started.start_time);
    let jail = details.process.jail.clone().expect("jailed");
    let root = jail.root();
    assert_eq!(
        root,
        std::fs::canonicalize(fx.chroot_base())
            .unwrap()
            .join("firecracker/vm-jailed/root")
    );
    assert_eq!(
        details.process.api_socket,
        root.join("run/firecracker.socket")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("firecracker.pid"))
            .unwrap()
            .trim(),
        started.pid.to_string()
    );
    let jailer_args = std::fs::read_to_string(jail.instance_dir().join("jailer.args")).unwrap();
    assert!(
        jailer_args.contains(&format!("--netns {}", ns.path().display())),
        "{jailer_args}"
    );
    assert!(
        jailer_args.contains("--uid 10000 --gid 10000"),
        "{jailer_args}"
    );
    // The shared image is linked in unchanged: readable by the jail user,
    // never owned or writable by it.
    let image = std::fs::metadata(root.join("rootfs.img")).unwrap();
    let stored = std::fs::metadata(launch.run_dir.rootfs()).unwrap();
    assert_eq!((image.dev(), image.ino()), (stored.dev(), stored.ino()));
    assert_eq!((image.uid(), image.mode() & 0o777), (0, 0o644));
    // The run directory's own files are the jail's (hard links), handed to
    // the jail user; so the console the runtime follows is the one written.
    for (run_file, jail_file) in [
        (launch.run_dir.file("scratch.ext4"), "drive-scratch.img"),
        (launch.run_dir.console_log(), "console.log"),
        (launch.run_dir.file("firecracker.log"), "firecracker.log"),
    ] {
        let a = std::fs::metadata(&run_file).unwrap();
        let b = std::fs::metadata(root.join(jail_file)).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "{jail_file}");
        assert_eq!((b.uid(), b.gid()), (10000, 10000), "{jail_file}");
    }
    let console = std::fs::read_to_string(launch.run_dir.console_log()).unwrap();
    assert_eq!(console, "stand-in guest vm-jailed is up\n");

    let vm = run_metadata(&launch, &started);
    assert!(vmm.is_running(&vm));
    assert_eq!(
        vmm.agent_endpoint(&vm),
        Some(AgentEndpoint::Vsock {
            socket: root.join("agent.vsock"),
            port: firebuild_agent_proto::VSOCK_PORT
        })
    );
    let described = vmm.describe(&vm);
    assert_eq!(described["running"], true);
    assert_eq!(described["mode"], "jailed");
    assert_eq!(described["pid"], started.pid);
    assert_eq!(described["jail_dir"], json!(jail.instance_dir()));
    assert_eq!(described["api_socket"], json!(details.process.api_socket));
    assert_eq!(
        described["log_path"],
        json!(launch.run_dir.file("firecracker.log"))
    );

    // The jail stays while the VM runs.
    let err = rt.block_on(vmm.cleanup(&vm)).unwrap_err();
    assert!(matches!(err, VmError::StillRunning { .. }), "{err}");
    assert!(root.exists());

    // Graceful stop: Ctrl-Alt-Del through the API; the stand-in exits like
    // Firecracker does when the guest reboots.
    rt.block_on(vmm.graceful_stop(&vm)).unwrap();
    assert!(wait_gone(details.process.pid));
    assert_eq!(
        fx.request_lines("vm-jailed").last().unwrap(),
        "PUT /actions"
    );
    assert_eq!(
        fx.requests("vm-jailed").last().unwrap()["body"],
        json!({"action_type": "SendCtrlAltDel"})
    );
    assert!(!vmm.is_running(&vm));
    assert_eq!(vmm.describe(&vm)["running"], false);
    // Stopping an exited VM is a no-op.
    rt.block_on(vmm.graceful_stop(&vm)).unwrap();
    rt.block_on(vmm.force_stop(&vm)).unwrap();

    rt.block_on(vmm.cleanup(&vm)).unwrap();
    assert!(!jail.instance_dir().exists());
    rt.block_on(vmm.cleanup(&vm)).unwrap();
    // The VM's own files outlive the jail (the runtime removes them).
    assert!(launch.run_dir.rootfs().is_file());
    assert!(std::fs::read_to_string(launch.run_dir.console_log())
        .unwrap()
        .ends_with("firebuild-exit-code=3\n"));
}

/// Without a fixed jail user each VM runs as an id of its own, which
/// clean-up gives back.
#[test]
fn each_jailed_vm_runs_as_an_id_of_its_own_until_cleaned_up() {
    let fx = Fixture::new();
    let config = FirecrackerConfig {
        user: None,
        id_range: firebuild_vm_firecracker::jail_ids::IdRange {
            first: 30000,
            count: 8,
        },
        ..fx.config()
    };
    let vmm = FirecrackerVmm::new(config);
    let rt = rt();
    let nets = [Netns::new(), Netns::new()];
    let mut vms = Vec::new();
    for (name, ns) in ["vm-id-a", "vm-id-b"].into_iter().zip(&nets) {
        let launch = fx.launch(name, Some(ns.attachment()));
        let started = rt.block_on(vmm.start(&launch)).unwrap();
        vms.push((launch, started));
    }
    let mut uids = Vec::new();
    for (launch, started) in &vms {
        let details: FirecrackerDetails = serde_json::from_value(started.details.clone()).unwrap();
        let jail = details.process.jail.clone().unwrap();
        let args = std::fs::read_to_string(jail.instance_dir().join("jailer.args")).unwrap();
        let uid = jail.user.uid;
        assert!(args.contains(&format!("--uid {uid} --gid {uid}")), "{args}");
        let console = std::fs::metadata(jail.root().join("console.log")).unwrap();
        assert_eq!((console.uid(), console.gid()), (uid, uid));
        // Its tap is its jail user's: unprivileged Firecracker attaches to it.
        let tap = std::process::Command::new("nsenter")
            .arg(format!(
                "--net={}",
                launch.network.as_ref().unwrap().netns.display()
            ))
            .args(["ip", "-details", "link", "show", common::TAP])
            .output()
            .unwrap();
        let tap = String::from_utf8_lossy(&tap.stdout);
        assert!(tap.contains(&format!("user {uid} group {uid}")), "{tap}");
        uids.push(uid);
        let vm = run_metadata(launch, started);
        rt.block_on(vmm.force_stop(&vm)).unwrap();
        assert!(wait_gone(details.process.pid));
        rt.block_on(vmm.cleanup(&vm)).unwrap();
    }
    assert_eq!(uids, [30000, 30001]);
    let claims = fx.chroot_base().join(".firebuild-jail-ids");
    assert_eq!(
        std::fs::read_dir(&claims).unwrap().count(),
        0,
        "ids released"
    );
}

#[test]
fn direct_start_and_force_stop() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let vmm = FirecrackerVmm::new(fx.direct_config());
    let launch = fx.launch("vm-direct", Some(ns.attachment()));
    let rt = rt();
    let started = rt.block_on(vmm.start(&launch)).unwrap();
    let details: FirecrackerDetails = serde_json::from_value(started.details.clone()).unwrap();
    assert_eq!(details.mode, Mode::Direct);
    assert!(details.process.jail.is_none());
    assert!(!fx.chroot_base().exists(), "no jail without the jailer");
    let socket = launch.run_dir.file("firecracker.socket");
    assert_eq!(details.process.api_socket, socket);
    // Host paths, the run directory's own files.
    let requests = fx.wait_requests("vm-direct", 12);
    assert_eq!(requests.len(), 12);
    assert_eq!(requests[3]["body"]["kernel_image_path"], json!(fx.kernel()));
    assert_eq!(
        requests[4]["body"]["path_on_host"],
        json!(launch.run_dir.rootfs())
    );
    assert_eq!(
        requests[5]["body"]["path_on_host"],
        json!(launch.run_dir.file("scratch.ext4"))
    );
    assert_eq!(
        requests[9]["body"],
        json!({"guest_cid": 3, "uds_path": launch.run_dir.file("agent.vsock")})
    );
    assert_eq!(
        requests[10]["body"]["serial_out_path"],
        json!(launch.run_dir.console_log())
    );

    let vm = run_metadata(&launch, &started);
    assert_eq!(
        vmm.agent_endpoint(&vm),
        Some(AgentEndpoint::Vsock {
            socket: launch.run_dir.file("agent.vsock"),
            port: firebuild_agent_proto::VSOCK_PORT
        })
    );
    assert_eq!(vmm.describe(&vm)["mode"], "direct");
    assert!(vmm.describe(&vm).get("jail_dir").is_none());
    rt.block_on(vmm.force_stop(&vm)).unwrap();
    assert!(!vmm.is_running(&vm));
    assert!(wait_gone(details.process.pid));
    // Killed, not asked: no Ctrl-Alt-Del was sent.
    assert_eq!(fx.requests("vm-direct").len(), 12);
    rt.block_on(vmm.cleanup(&vm)).unwrap();
    assert!(!socket.exists());
}

/// Volumes follow the scratch disk as drives of their own; a writable one
/// honours the guest's flushes (Writeback), as the spec allows.
#[test]
fn volumes_are_drives_after_the_scratch_disk() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let vmm = FirecrackerVmm::new(fx.direct_config());
    let mut launch = fx.launch("vm-volumes", Some(ns.attachment()));
    for (i, read_only) in [false, true].into_iter().enumerate() {
        let path = launch.run_dir.file(&format!("volume{i}.ext4"));
        std::fs::write(&path, b"volume").unwrap();
        launch.disks.push(Disk {
            id: format!("vol{i}"),
            path,
            read_only,
            in_place: true,
        });
    }
    let rt = rt();
    let started = rt.block_on(vmm.start(&launch)).unwrap();
    let requests = fx.wait_requests("vm-volumes", 14);
    let lines: Vec<String> = requests[4..8]
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            "PUT /drives/rootfs",
            "PUT /drives/scratch",
            "PUT /drives/vol0",
            "PUT /drives/vol1"
        ]
    );
    let (vol0, vol1) = (&requests[6]["body"], &requests[7]["body"]);
    assert_eq!(vol0["is_read_only"], json!(false));
    assert_eq!(vol0["cache_type"], json!("Writeback"));
    assert_eq!(vol0["path_on_host"], json!(launch.disks[1].path));
    assert_eq!(vol1["is_read_only"], json!(true));
    assert!(vol1.get("cache_type").is_none(), "{vol1}");
    assert_eq!(vmm.disk_device(1), "/dev/vdc");
    let vm = run_metadata(&launch, &started);
    rt.block_on(vmm.force_stop(&vm)).unwrap();
    rt.block_on(vmm.cleanup(&vm)).unwrap();
}

#[test]
fn start_refused_by_firecracker_leaves_nothing_running() {
    let fx = Fixture::new();
    // A namespace without the tap: Firecracker cannot open it.
    let ns = Netns::with_tap(None);
    let vmm = FirecrackerVmm::new(fx.config());
    let launch = fx.launch("vm-notap", Some(ns.attachment()));
    let err = rt().block_on(vmm.start(&launch)).unwrap_err();
    match &err {
        VmError::Start { kind, id, reason } => {
            assert_eq!((*kind, id.as_str()), (VmmKind::Firecracker, "vm-notap"));
            assert!(reason.contains("/network-interfaces/eth0"), "{reason}");
            assert!(reason.contains(TAP), "{reason}");
        }
        other => panic!("{other}"),
    }
    let pids = fx.pids();
    assert_eq!(pids.len(), 1);
    assert!(wait_gone(pids[0]), "the stand-in was killed");
    assert!(!fx.chroot_base().join("firecracker/vm-notap").exists());
}

#[test]
fn start_without_a_network_is_refused_before_anything_runs() {
    let fx = Fixture::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let launch = fx.launch("vm-nonet", None);
    let err = rt().block_on(vmm.start(&launch)).unwrap_err();
    assert!(err.to_string().contains("MMDS"), "{err}");
    assert!(err.to_string().contains("--vmm qemu"), "{err}");
    assert!(fx.pids().is_empty());
    assert!(!fx.chroot_base().exists());
}

#[test]
fn out_of_range_resources_are_refused_by_name() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let mut launch = fx.launch("vm-big", Some(ns.attachment()));
    launch.cpus = 300;
    let err = rt().block_on(vmm.start(&launch)).unwrap_err();
    assert!(err.to_string().contains("300 vCPUs"), "{err}");
    launch.cpus = 33;
    let err = rt().block_on(vmm.start(&launch)).unwrap_err();
    assert!(err.to_string().contains("vcpu_count"), "{err}");
    assert!(fx.pids().is_empty());
}

#[test]
fn disk_ids_firecracker_refuses_fail_before_anything_runs() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let mut launch = fx.launch("vm-vol", Some(ns.attachment()));
    // Firecracker's drive ids are letters, digits and `_`; "rootfs" is the
    // root drive's own.
    for id in ["my-vol", "rootfs"] {
        launch.disks[0].id = id.into();
        let err = rt().block_on(vmm.start(&launch)).unwrap_err();
        assert!(err.to_string().contains("drives.drive_id"), "{id}: {err}");
    }
    assert!(fx.pids().is_empty());
}

#[test]
fn force_stop_without_details_kills_the_recorded_pid() {
    let fx = Fixture::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let launch = fx.launch("vm-nodetails", None);
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let started = firebuild_vm::StartedVm {
        pid: child.id() as i32,
        start_time: Some(
            firebuild_vm::ProcessIdentity::of(child.id() as i32)
                .unwrap()
                .start_time,
        ),
        details: serde_json::Value::Null,
    };
    let vm = run_metadata(&launch, &started);
    let rt = rt();
    // Nothing recorded to ask: the graceful stop says so.
    let err = rt.block_on(vmm.graceful_stop(&vm)).unwrap_err();
    assert!(err.to_string().contains("no Firecracker process"), "{err}");
    rt.block_on(vmm.force_stop(&vm)).unwrap();
    child.wait().unwrap();
    // Never started as far as the backend knows: nothing to clean.
    rt.block_on(vmm.cleanup(&vm)).unwrap();

    let mut broken = vm.clone();
    broken.vmm_details = json!({"accel": "tcg"});
    for err in [
        rt.block_on(vmm.cleanup(&broken)).unwrap_err(),
        rt.block_on(vmm.force_stop(&broken)).unwrap_err(),
    ] {
        assert!(err.to_string().contains("vmm_details"), "{err}");
    }
}

fn reason(a: Availability) -> String {
    match a {
        Availability::Usable => panic!("expected unusable"),
        Availability::Unusable { reason } => reason,
    }
}

#[test]
fn availability_names_what_is_missing() {
    let fx = Fixture::new();
    let rt = rt();
    let check = |config: FirecrackerConfig, kernel: &Path| {
        rt.block_on(FirecrackerVmm::new(config).availability(kernel, &fx.run_cache()))
    };
    assert_eq!(check(fx.config(), &fx.kernel()), Availability::Usable);

    let r = reason(check(
        FirecrackerConfig {
            firecracker: "firecracker-not-installed".into(),
            ..fx.config()
        },
        &fx.kernel(),
    ));
    assert!(
        r.contains("firecracker-not-installed was not found in PATH"),
        "{r}"
    );
    assert!(r.contains("release tarball"), "{r}");

    let r = reason(check(
        FirecrackerConfig {
            jailer: fx.path().join("bin/no-jailer-here"),
            ..fx.config()
        },
        &fx.kernel(),
    ));
    assert!(r.contains("bin/no-jailer-here is missing"), "{r}");
    assert!(r.contains("--no-jailer"), "{r}");
    // Without the jailer, its binary is not needed.
    assert_eq!(
        check(
            FirecrackerConfig {
                jailer: fx.path().join("bin/no-jailer-here"),
                ..fx.direct_config()
            },
            &fx.kernel()
        ),
        Availability::Usable
    );

    let plain = fx.path().join("bin/plain");
    std::fs::write(&plain, "").unwrap();
    let r = reason(check(
        FirecrackerConfig {
            firecracker: plain,
            ..fx.config()
        },
        &fx.kernel(),
    ));
    assert!(
        r.contains("bin/plain is missing or not an executable"),
        "{r}"
    );

    let bz = fx.path().join("bzImage");
    std::fs::write(&bz, b"MZ compressed").unwrap();
    let r = reason(check(fx.config(), &bz));
    assert!(r.contains("bzImage") && r.contains("ELF vmlinux"), "{r}");
}

/// Not a test: run as an unprivileged user by the test below, prints the
/// availability it sees.
#[test]
fn availability_probe() {
    let Ok(dir) = std::env::var("FIREBUILD_AVAILABILITY_PROBE") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let vmm = FirecrackerVmm::new(FirecrackerConfig {
        firecracker: dir.join("bin/firecracker"),
        jailer: dir.join("bin/jailer"),
        ..Default::default()
    });
    let a = rt().block_on(vmm.availability(&dir.join("vmlinux"), &dir.join("runs")));
    println!("AVAILABILITY: {a:?}");
}

#[test]
fn availability_without_write_access_to_dev_kvm() {
    let fx = Fixture::new();
    // Let an unprivileged user reach the stand-in binaries.
    std::fs::set_permissions(fx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // As root /dev/kvm opens (the other tests rely on it).
    assert_eq!(
        rt().block_on(FirecrackerVmm::new(fx.config()).availability(&fx.kernel(), &fx.run_cache())),
        Availability::Usable,
        "/dev/kvm must open read-write for root on test machines"
    );
    let kvm = std::fs::metadata("/dev/kvm").unwrap();
    assert_eq!(
        kvm.mode() & 0o006,
        0,
        "this test needs a /dev/kvm that others cannot open read-write"
    );
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "availability_probe",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FIREBUILD_AVAILABILITY_PROBE", fx.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("AVAILABILITY: "))
        .unwrap_or_else(|| panic!("no probe output: {stdout}"));
    assert!(line.contains("Unusable"), "{line}");
    assert!(line.contains("cannot open /dev/kvm read-write"), "{line}");
    assert!(line.contains("Permission denied"), "{line}");
}

#[test]
fn preflight_checks_the_vm_id_socket_paths_and_filesystems() {
    let fx = Fixture::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let runs = fx.run_cache();
    vmm.preflight(&RunDir::new(&runs, "vm-1")).unwrap();
    assert!(!fx.chroot_base().exists(), "preflight creates nothing");

    // Names the runtime accepts but Firecracker does not.
    let err = vmm.preflight(&RunDir::new(&runs, "my_vm")).unwrap_err();
    match &err {
        VmError::InvalidName { name, reason } => {
            assert_eq!(name, "my_vm");
            assert!(reason.contains("letters, digits and hyphens"), "{reason}");
        }
        other => panic!("{other}"),
    }

    let deep = fx.path().join("x".repeat(90));
    let err = FirecrackerVmm::new(FirecrackerConfig {
        chroot_base: deep,
        ..fx.config()
    })
    .preflight(&RunDir::new(&runs, "vm-1"))
    .unwrap_err();
    assert!(err.to_string().contains("chroot base"), "{err}");
    // Direct mode: the socket is in the run directory.
    let err = FirecrackerVmm::new(fx.direct_config())
        .preflight(&RunDir::new(&fx.path().join("y".repeat(90)), "vm-1"))
        .unwrap_err();
    assert!(err.to_string().contains("run directory"), "{err}");

    // A chroot base on another filesystem would get copies, not links.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    assert_ne!(
        std::fs::metadata(shm.path()).unwrap().dev(),
        std::fs::metadata(fx.path()).unwrap().dev()
    );
    let err = FirecrackerVmm::new(FirecrackerConfig {
        chroot_base: shm.path().join("jail"),
        ..fx.config()
    })
    .preflight(&RunDir::new(&runs, "vm-1"))
    .unwrap_err();
    assert!(err.to_string().contains("different filesystems"), "{err}");
    // ... which does not matter without the jailer.
    FirecrackerVmm::new(FirecrackerConfig {
        chroot_base: shm.path().join("jail"),
        ..fx.direct_config()
    })
    .preflight(&RunDir::new(&runs, "vm-1"))
    .unwrap();
}

#[test]
fn kind_and_kernel_args() {
    let vmm = FirecrackerVmm::default();
    assert_eq!(vmm.kind(), VmmKind::Firecracker);
    let args = vmm.kernel_args(true);
    assert_eq!(
        args,
        vmm.kernel_args(false),
        "Firecracker adds root= ro|rw itself"
    );
    assert_eq!(
        (vmm.disk_device(0), vmm.disk_device(1)),
        ("/dev/vdb".into(), "/dev/vdc".into())
    );
    assert!(
        args.contains(&"firebuild.metadata=mmds".to_owned()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("root=")), "{args:?}");
}

/// Snapshot of a paused jailed VM, then a fork restored from it in a jail
/// of its own: every request checked by the stand-in against the spec; the
/// fork's drives sit at the in-jail paths the snapshot names, its memory is
/// the snapshot's file linked (shared pages), its tap its own.
#[test]
fn a_paused_vm_is_snapshotted_and_a_fork_restored_in_its_own_jail() {
    let fx = Fixture::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let rt = rt();
    let (source_net, fork_net) = (Netns::new(), Netns::new());
    let launch = fx.launch("vm-source", Some(source_net.attachment()));
    let started = rt.block_on(vmm.start(&launch)).unwrap();
    let vm = run_metadata(&launch, &started);

    // Not paused: Firecracker refuses, and nothing is left in the jail.
    let dir = fx.path().join("snapshot");
    std::fs::create_dir(&dir).unwrap();
    let err = rt
        .block_on(vmm.snapshot(&vm, &dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be paused"), "{err}");
    let details: FirecrackerDetails = serde_json::from_value(started.details.clone()).unwrap();
    let jail = details.process.jail.clone().unwrap();
    assert!(!jail.root().join("taken.mem").exists());

    rt.block_on(vmm.pause(&vm)).unwrap();
    let snapshot = rt.block_on(vmm.snapshot(&vm, &dir)).unwrap();
    assert_eq!(snapshot, json!({"jailed": true, "memory_file": true}));
    rt.block_on(vmm.resume(&vm)).unwrap();
    let lines = fx.request_lines("vm-source");
    assert_eq!(
        lines[lines.len() - 4..],
        [
            "PUT /snapshot/create",
            "PATCH /vm",
            "PUT /snapshot/create",
            "PATCH /vm"
        ]
        .map(String::from)
    );
    let requests = fx.requests("vm-source");
    assert_eq!(
        requests[requests.len() - 4]["status"],
        400,
        "refused while running"
    );
    assert_eq!(
        requests[requests.len() - 3]["body"],
        json!({"state": "Paused"})
    );
    let create = &requests[requests.len() - 2];
    assert_eq!(create["status"], 204, "{create}");
    assert_eq!(
        create["body"],
        json!({"mem_file_path": "/taken.mem", "snapshot_path": "/taken.state"})
    );
    // Taken out of the jail into the snapshot, root's; memory readable by
    // every fork's jail user.
    let memory = std::fs::metadata(dir.join("memory")).unwrap();
    assert_eq!(memory.len(), 256 << 20);
    assert_eq!((memory.uid(), memory.mode() & 0o777), (0, 0o444));
    let state = std::fs::metadata(dir.join("state")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (0, 0o400));
    assert!(!jail.root().join("taken.mem").exists() && !jail.root().join("taken.state").exists());

    // The fork: its own run directory, disks, jail and tap.
    let fork_launch = fx.launch("vm-fork", Some(fork_net.attachment()));
    let from = firebuild_vm::vmm::RestoreFrom {
        dir: &dir,
        details: &snapshot,
        source_mac: Some(MAC),
    };
    let fork = rt.block_on(vmm.restore(&fork_launch, &from)).unwrap();
    assert_eq!(
        fx.request_lines("vm-fork"),
        ["PUT /logger", "PUT /metrics", "PUT /snapshot/load"]
    );
    let load = &fx.requests("vm-fork")[2];
    assert_eq!(load["status"], 204, "{load}");
    assert_eq!(
        load["body"],
        json!({
            "snapshot_path": "/snapshot.state",
            "mem_backend": {"backend_type": "File", "backend_path": "/snapshot.mem"},
            "resume_vm": false,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": TAP}],
        })
    );
    let fork_details: FirecrackerDetails = serde_json::from_value(fork.details.clone()).unwrap();
    let fork_jail = fork_details.process.jail.clone().unwrap();
    assert_ne!(fork_jail.root(), jail.root());
    let linked = std::fs::metadata(fork_jail.root().join("snapshot.mem")).unwrap();
    assert_eq!(
        (linked.dev(), linked.ino()),
        (memory.dev(), memory.ino()),
        "linked, not copied"
    );
    let fork_vm = run_metadata(&fork_launch, &fork);
    rt.block_on(vmm.resume(&fork_vm)).unwrap();
    assert_eq!(fx.request_lines("vm-fork").last().unwrap(), "PATCH /vm");

    // A snapshot that lost its memory: refused, nothing left running.
    std::fs::remove_file(dir.join("memory")).unwrap();
    let broken_ns = Netns::new();
    let broken = fx.launch("vm-broken", Some(broken_ns.attachment()));
    let err = rt
        .block_on(vmm.restore(&broken, &from))
        .unwrap_err()
        .to_string();
    assert!(err.contains("memory"), "{err}");
    assert!(
        !fx.chroot_base().join("firecracker/vm-broken").exists(),
        "jail removed"
    );

    for (vm, pid) in [
        (&vm, details.process.pid),
        (&fork_vm, fork_details.process.pid),
    ] {
        rt.block_on(vmm.force_stop(vm)).unwrap();
        assert!(wait_gone(pid));
        rt.block_on(vmm.cleanup(vm)).unwrap();
    }
}

/// Pods: the VM boots with a read-only drive per slot on an empty
/// placeholder; a container's image is linked into the jail and the slot's
/// drive re-pointed at it (`PATCH /drives`), then back; the guest is told
/// the drive's place and size. Bad slots and too many devices are refused.
#[test]
fn pod_slots_are_reserved_drives_re_pointed_at_images() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let vmm = FirecrackerVmm::new(fx.config());
    let mut launch = fx.launch("vm-pod", Some(ns.attachment()));
    launch.hotplug_slots = 2;
    let rt = rt();
    let started = rt.block_on(vmm.start(&launch)).unwrap();
    let requests = fx.wait_requests("vm-pod", 14);
    let drives: Vec<Value> = requests
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/drives/pod_slot"))
        .map(|r| r["body"].clone())
        .collect();
    assert_eq!(
        drives,
        [
            json!({"drive_id": "pod_slot_0", "path_on_host": "/drive-pod_slot_0.img", "is_root_device": false, "is_read_only": true}),
            json!({"drive_id": "pod_slot_1", "path_on_host": "/drive-pod_slot_1.img", "is_root_device": false, "is_read_only": true}),
        ]
    );
    let details: FirecrackerDetails = serde_json::from_value(started.details.clone()).unwrap();
    let root = details.process.jail.clone().unwrap().root();
    assert_eq!(
        std::fs::metadata(root.join("drive-pod_slot_0.img"))
            .unwrap()
            .len(),
        0
    );
    let vm = run_metadata(&launch, &started);

    let image = fx.path().join("container.ext4");
    std::fs::write(&image, vec![0u8; 3 * 4096]).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let disk = Disk {
        id: "fb-pod-1".into(),
        path: image.clone(),
        read_only: true,
        in_place: true,
    };
    let guest = rt.block_on(vmm.attach_disk(&vm, 1, &disk)).unwrap();
    // rootfs vda, scratch vdb, slot 0 vdc, slot 1 vdd.
    assert_eq!(
        guest,
        GuestDisk::Device {
            name: "vdd".into(),
            sectors: 24
        }
    );
    let last = fx.requests("vm-pod").last().unwrap().clone();
    assert_eq!(
        (last["method"].as_str(), last["status"].as_u64()),
        (Some("PATCH"), Some(204))
    );
    assert_eq!(
        last["body"],
        json!({"drive_id": "pod_slot_1", "path_on_host": "/drive-pod_slot_1.plugged.img"})
    );
    let linked = std::fs::metadata(root.join("drive-pod_slot_1.plugged.img")).unwrap();
    let original = std::fs::metadata(&image).unwrap();
    assert_eq!(
        (linked.ino(), linked.uid()),
        (original.ino(), original.uid())
    );

    // Refused: a slot the VM does not have, an image Firecracker cannot
    // open (the stand-in answers as v1.16.1 does); nothing stays linked.
    let err = rt.block_on(vmm.attach_disk(&vm, 2, &disk)).unwrap_err();
    assert!(err.to_string().contains("slot 2 does not exist"), "{err}");
    let missing = Disk {
        path: fx.path().join("missing.ext4"),
        ..disk.clone()
    };
    let err = rt.block_on(vmm.attach_disk(&vm, 0, &missing)).unwrap_err();
    assert!(err.to_string().contains("missing.ext4"), "{err}");
    assert!(!root.join("drive-pod_slot_0.plugged.img").exists());

    // Detached: back on the placeholder, the image's link gone; twice is fine.
    rt.block_on(vmm.detach_disk(&vm, 1)).unwrap();
    let last = fx.requests("vm-pod").last().unwrap().clone();
    assert_eq!(
        last["body"],
        json!({"drive_id": "pod_slot_1", "path_on_host": "/drive-pod_slot_1.img"})
    );
    assert!(!root.join("drive-pod_slot_1.plugged.img").exists());
    rt.block_on(vmm.detach_disk(&vm, 1)).unwrap();
    rt.block_on(vmm.force_stop(&vm)).unwrap();
    // An exited VM has nothing to detach.
    rt.block_on(vmm.detach_disk(&vm, 1)).unwrap();
    rt.block_on(vmm.cleanup(&vm)).unwrap();

    // More slots than Firecracker has devices for: refused before it runs.
    let mut launch = fx.launch("vm-pod-big", Some(ns.attachment()));
    launch.hotplug_slots = 16;
    let err = rt.block_on(vmm.start(&launch)).unwrap_err().to_string();
    assert!(
        err.contains("pod-containers") && err.contains("at most 17"),
        "{err}"
    );
    assert!(fx.requests("vm-pod-big").is_empty());
}
