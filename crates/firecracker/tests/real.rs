//! The backend against the real Firecracker v1.16.1 and its jailer, where
//! they are: `$FIREBUILD_TEST_FIRECRACKER_DIR`, else
//! `<workspace>/../shared/firecracker/bin` (CI has it). Without them each
//! test prints why it skipped.
//!
//! What runs here: the jailer for real (chroot, its own uid/gid per VM,
//! `--netns`, cgroup v1 or v2 as the host has them, `--new-pid-ns`,
//! `--daemonize`), every request `configure_and_start` sends (read-only
//! root, scratch drive, a volume linked in place, tap, vsock, MMDS V2,
//! logger, metrics, serial), pause, resume, snapshot create, snapshot load
//! into several forks (each in its own jail, as its own uid), kill and
//! cleanup, and failed launches leaving nothing behind.
//!
//! What cannot: `/dev/kvm` on these machines is nested and a normal guest
//! kernel does not boot under it, so no guest runs; the "kernel" is the
//! project's test kernel when `FIREBUILD_TEST_KERNEL` names it, else a
//! tiny ELF that halts. Firecracker configures, starts, pauses, snapshots
//! and restores the instance all the same.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_firecracker::models::{InstanceState, PartialDrive, SnapshotCreateParams};
use firebuild_firecracker::standin::Netns;
use firebuild_firecracker::{
    staged_drive_path, CgroupLayout, CgroupSetting, DriveSpec, Error, JailUser, JailerConfig,
    LaunchConfig, LaunchMode, Machine, NetworkSpec, SnapshotFiles, VmSpec, VsockSpec,
    MAX_VIRTIO_DEVICES,
};

/// Where the real binaries are, or why the tests skip.
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

/// A kernel Firecracker accepts: the test kernel if named, else a minimal
/// x86_64 ELF whose one segment (at 16 MiB) is `cli; hlt; jmp hlt`.
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
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + CODE_AT).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    let path = dir.join("halt.elf");
    std::fs::write(&path, elf).unwrap();
    path
}

/// One VM's own files, network namespace and tap (owned by its jail user).
struct VmFiles {
    netns: Netns,
    spec: VmSpec,
}

struct Real {
    bin: PathBuf,
    dir: tempfile::TempDir,
    kernel: PathBuf,
    /// The stored image every VM attaches read-only (root's, 0644).
    image: PathBuf,
    /// Its own cgroup parent, removed at the end.
    parent_cgroup: String,
    /// The VM ids made: whatever of them a failed test left is killed.
    ids: std::cell::RefCell<Vec<String>>,
}

impl Real {
    fn new() -> Option<Real> {
        let bin = real_bin_dir()?;
        let dir = common::tempdir();
        let kernel = kernel(dir.path());
        let image = dir.path().join("stored.ext4");
        sparse(&image, 1 << 20);
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
        Some(Real {
            bin,
            dir,
            kernel,
            image,
            parent_cgroup: format!("firebuild-test-{}", std::process::id()),
            ids: Default::default(),
        })
    }

    fn chroot_base(&self) -> PathBuf {
        self.dir.path().join("jail")
    }

    fn config(&self, uid: u32, netns: &Netns) -> LaunchConfig {
        let mut jailer = JailerConfig::new(self.bin.join("jailer"), self.chroot_base());
        jailer.user = JailUser { uid, gid: uid };
        jailer.netns = Some(netns.path());
        jailer.parent_cgroup = Some(self.parent_cgroup.clone());
        jailer.cgroups = vec![CgroupSetting::parse("cpu.shares=512").unwrap()];
        let mut config =
            LaunchConfig::new(self.bin.join("firecracker"), LaunchMode::Jailed(jailer));
        config.socket_timeout = Duration::from_secs(30);
        config.request_timeout = Duration::from_secs(30);
        config
    }

    /// A VM's inputs: the shared image read-only, its own scratch disk and
    /// volume, logs, console, vsock, MMDS document, tap.
    fn vm(&self, id: &str, uid: u32) -> VmFiles {
        self.ids.borrow_mut().push(id.to_owned());
        let run = self.dir.path().join(id);
        std::fs::create_dir(&run).unwrap();
        let scratch = run.join("scratch.ext4");
        sparse(&scratch, 1 << 20);
        let volume = run.join("volume.ext4");
        sparse(&volume, 1 << 20);
        let netns = Netns::create(None).unwrap();
        let ok = std::process::Command::new("ip")
            .args([
                "-n",
                netns.name(),
                "tuntap",
                "add",
                "dev",
                "fctap0",
                "mode",
                "tap",
            ])
            .args(["user", &uid.to_string(), "group", &uid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let spec = VmSpec {
            boot_args: "console=ttyS0 reboot=k panic=1".into(),
            root_read_only: true,
            mem_size_mib: 128,
            drives: vec![
                DriveSpec {
                    drive_id: "scratch".into(),
                    path: scratch,
                    read_only: false,
                    in_place: false,
                },
                DriveSpec {
                    drive_id: "vol1".into(),
                    path: volume,
                    read_only: false,
                    in_place: true,
                },
            ],
            network: Some(NetworkSpec {
                tap: "fctap0".into(),
                guest_mac: Some("02:fc:00:00:00:2a".into()),
                mtu: None,
            }),
            mmds: Some(serde_json::json!({"latest": {"meta-data": {"vmm-id": id}}})),
            log_path: Some(run.join("firecracker.log")),
            metrics_path: Some(run.join("firecracker.metrics")),
            console_path: Some(run.join("console.log")),
            vsock: Some(VsockSpec {
                guest_cid: 3,
                uds_path: run.join("agent.vsock"),
            }),
            ..VmSpec::new(id, &self.kernel, &self.image)
        };
        VmFiles { netns, spec }
    }

    fn jail_dir(&self, id: &str) -> PathBuf {
        self.chroot_base().join("firecracker").join(id)
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        // A failed test leaves no VM running.
        for id in self.ids.borrow().iter() {
            for pid in processes_of(id) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(100));
            for dir in cgroup_dirs(&self.parent_cgroup, id) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        // Only the parent the tests made: the VM dirs below it are gone by
        // now unless a test failed (then rmdir fails and says nothing).
        if let Ok(layout) = CgroupLayout::detect() {
            for h in layout.v1.iter().chain(layout.v2.iter()) {
                let _ = std::fs::remove_dir(h.path.join(&self.parent_cgroup));
            }
        }
    }
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// Pids of live processes whose command line has `--id <id>`: what a
/// jailer started for that VM, inside or outside a jail.
fn processes_of(id: &str) -> Vec<u32> {
    let needle = format!("\0--id\0{id}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && format!("\0{}", String::from_utf8_lossy(&cmd)).contains(&needle)
        })
        .collect()
}

/// The cgroup directories the jailer made for `id` under `parent`.
fn cgroup_dirs(parent: &str, id: &str) -> Vec<PathBuf> {
    let layout = CgroupLayout::detect().unwrap();
    layout
        .v1
        .iter()
        .chain(layout.v2.iter())
        .map(|h| h.path.join(parent).join(id))
        .filter(|p| p.exists())
        .collect()
}

/// `uid` and `gid` lines' first (real) ids of a process.
fn ids_of(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let id = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    (id("Uid:"), id("Gid:"))
}

/// `GET path` on an API socket, raw HTTP: the status and the body.
/// Firecracker keeps the connection open, so the body is read by its
/// Content-Length.
fn raw_get(socket: &Path, path: &str, accept: &str) -> (u16, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed mid-answer");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body.to_string());
            }
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Everything a VM left: none of its processes, no jail, no cgroup.
fn assert_gone(real: &Real, id: &str) {
    assert_eq!(processes_of(id), Vec::<u32>::new(), "processes of {id}");
    assert!(!real.jail_dir(id).exists(), "jail of {id} left");
    assert_eq!(
        cgroup_dirs(&real.parent_cgroup, id),
        Vec::<PathBuf>::new(),
        "cgroups of {id}"
    );
}

/// A jailed VM with every device, then pause, resume, a snapshot, forks
/// from it in jails of their own (own uid, own tap), a fork whose snapshot
/// is broken (nothing left), kill and cleanup of all.
#[test]
fn real_jailed_vm_snapshot_and_forks() {
    let Some(real) = Real::new() else { return };
    let source = real.vm("fc-src", 10101);
    let machine = Machine::launch(&real.config(10101, &source.netns), &source.spec).unwrap();
    let process = machine.process().clone();
    let jail = process.jail.clone().unwrap();

    // The jailer: chrooted into the jail root, as the VM's own ids, in the
    // cgroup with the setting asked for, Firecracker's pid from its pid file.
    assert_eq!(ids_of(process.pid), (10101, 10101));
    let root = std::fs::metadata(format!("/proc/{}/root", process.pid)).unwrap();
    let jail_root = std::fs::metadata(jail.root()).unwrap();
    assert_eq!((root.dev(), root.ino()), (jail_root.dev(), jail_root.ino()));
    let cgroups = cgroup_dirs(&real.parent_cgroup, "fc-src");
    assert!(!cgroups.is_empty(), "no cgroup made for fc-src");
    let with_shares: Vec<_> = cgroups
        .iter()
        .filter(|d| d.join("cpu.shares").exists())
        .collect();
    assert!(!with_shares.is_empty(), "no cpu.shares in {cgroups:?}");
    if let Some(cpu) = with_shares.first() {
        let shares = std::fs::read_to_string(cpu.join("cpu.shares")).unwrap();
        assert_eq!(shares.trim(), "512");
        let tasks = std::fs::read_to_string(cpu.join("tasks")).unwrap();
        assert!(
            tasks.lines().any(|t| t == process.pid.to_string()),
            "{tasks}"
        );
    }

    // Every request was taken; Firecracker holds what we sent.
    let info = machine.info().unwrap();
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.id, "fc-src");
    let config = machine.vm_config().unwrap();
    // After the start Firecracker lists its devices in no set order.
    let mut drives: Vec<_> = config
        .drives
        .iter()
        .map(|d| {
            (
                d["drive_id"].as_str().unwrap().to_owned(),
                d["is_read_only"].as_bool().unwrap(),
                d["is_root_device"].as_bool().unwrap(),
                d["path_on_host"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    drives.sort();
    assert_eq!(
        drives,
        [
            ("rootfs".into(), true, true, "/rootfs.img".into()),
            ("scratch".into(), false, false, "/drive-scratch.img".into()),
            ("vol1".into(), false, false, "/drive-vol1.img".into()),
        ]
    );
    let other = serde_json::to_value(&config).unwrap();
    assert_eq!(other["vsock"]["uds_path"], "/agent.vsock", "{other}");
    assert_eq!(other["mmds-config"]["version"], "V2", "{other}");
    assert_eq!(
        other["network-interfaces"][0]["host_dev_name"], "fctap0",
        "{other}"
    );
    let (status, mmds) = raw_get(&process.api_socket, "/mmds", "application/json");
    assert_eq!(status, 200, "{mmds}");
    let mmds: serde_json::Value = serde_json::from_str(&mmds).unwrap();
    assert_eq!(mmds["latest"]["meta-data"]["vmm-id"], "fc-src");
    // The vsock socket Firecracker made, in the jail, the jail user's.
    let vsock = std::fs::metadata(jail.root().join("agent.vsock")).unwrap();
    assert_eq!(vsock.uid(), 10101);
    // The volume is the file itself, the shared image never changed hands.
    let volume = std::fs::metadata(&source.spec.drives[1].path).unwrap();
    let linked = std::fs::metadata(jail.root().join("drive-vol1.img")).unwrap();
    assert_eq!((volume.ino(), volume.uid()), (linked.ino(), 10101));
    assert_eq!(std::fs::metadata(&real.image).unwrap().uid(), 0);

    machine.pause().unwrap();
    assert_eq!(machine.info().unwrap().state, InstanceState::Paused);
    machine.resume().unwrap();
    assert_eq!(machine.info().unwrap().state, InstanceState::Running);
    machine.pause().unwrap();

    // The snapshot, written in the jail by the jail user, taken out.
    for name in ["taken.state", "taken.mem"] {
        let f = jail.root().join(name);
        std::fs::File::create(&f).unwrap();
        std::os::unix::fs::chown(&f, Some(10101), Some(10101)).unwrap();
    }
    block_on(
        machine
            .client()
            .client()
            .clone()
            .with_timeout(Duration::from_secs(120))
            .create_snapshot(&SnapshotCreateParams {
                mem_file_path: "/taken.mem".into(),
                snapshot_path: "/taken.state".into(),
                snapshot_type: None,
            }),
    )
    .unwrap();
    let snapshot = real.dir.path().join("snapshot");
    std::fs::create_dir(&snapshot).unwrap();
    let files = SnapshotFiles {
        state: snapshot.join("state"),
        memory: snapshot.join("memory"),
    };
    std::fs::rename(jail.root().join("taken.state"), &files.state).unwrap();
    std::fs::rename(jail.root().join("taken.mem"), &files.memory).unwrap();
    for (f, mode) in [(&files.state, 0o444), (&files.memory, 0o444)] {
        std::os::unix::fs::chown(f, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    assert_eq!(std::fs::metadata(&files.memory).unwrap().len(), 128 << 20);
    machine.resume().unwrap();

    // Forks: each its own jail, uid and tap; memory linked, not copied.
    let memory = std::fs::metadata(&files.memory).unwrap();
    let mut forks = Vec::new();
    for (id, uid) in [("fc-fork1", 10102), ("fc-fork2", 10103)] {
        let vm = real.vm(id, uid);
        let config = real.config(uid, &vm.netns);
        let process = block_on(firebuild_firecracker::restore(&config, &vm.spec, &files))
            .unwrap_or_else(|e| panic!("restoring {id}: {e}"));
        let fork = Machine::attach(process, Duration::from_secs(30)).unwrap();
        assert_eq!(fork.info().unwrap().state, InstanceState::Paused);
        assert_eq!(ids_of(fork.process().pid), (uid, uid));
        let fork_jail = fork.process().jail.clone().unwrap();
        let linked = std::fs::metadata(fork_jail.root().join("snapshot.mem")).unwrap();
        assert_eq!((linked.dev(), linked.ino()), (memory.dev(), memory.ino()));
        fork.resume().unwrap();
        assert_eq!(fork.info().unwrap().state, InstanceState::Running);
        forks.push((id, vm, fork));
    }

    // A broken snapshot: Firecracker refuses the load; nothing is left.
    let broken_dir = real.dir.path().join("broken");
    std::fs::create_dir(&broken_dir).unwrap();
    let broken = SnapshotFiles {
        state: broken_dir.join("state"),
        memory: files.memory.clone(),
    };
    std::fs::write(&broken.state, b"not a snapshot").unwrap();
    std::fs::set_permissions(&broken.state, std::fs::Permissions::from_mode(0o444)).unwrap();
    let vm = real.vm("fc-broken", 10104);
    let err = block_on(firebuild_firecracker::restore(
        &real.config(10104, &vm.netns),
        &vm.spec,
        &broken,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Api { .. }), "{err}");
    assert!(err.to_string().contains("/snapshot/load"), "{err}");
    assert_gone(&real, "fc-broken");

    // Kill and clean up: nothing of any of them is left.
    for (id, _vm, fork) in forks {
        fork.kill().unwrap();
        fork.cleanup().unwrap();
        assert_gone(&real, id);
    }
    machine.kill().unwrap();
    machine.cleanup().unwrap();
    assert_gone(&real, "fc-src");
}

/// A jailer that fails after it detached (its netns is gone) and one that
/// fails at once (a uid the jail root refuses is not one; a missing exec
/// file is): each reported, nothing left.
#[test]
fn real_failed_launches_leave_nothing() {
    let Some(real) = Real::new() else { return };
    let vm = real.vm("fc-nonet", 10111);
    let mut config = real.config(10111, &vm.netns);
    if let LaunchMode::Jailed(j) = &mut config.mode {
        j.netns = Some(real.dir.path().join("no-such-netns"));
    }
    let err = Machine::launch(&config, &vm.spec).unwrap_err();
    assert!(matches!(err, Error::JailerFailed { .. }), "{err}");
    assert_gone(&real, "fc-nonet");

    // Firecracker itself refuses a request (a tap that is not there): the
    // jailed process is killed and the jail removed.
    let vm = real.vm("fc-notap", 10112);
    let mut spec = vm.spec.clone();
    spec.network.as_mut().unwrap().tap = "missing0".into();
    let err = Machine::launch(&real.config(10112, &vm.netns), &spec).unwrap_err();
    assert!(matches!(err, Error::Api { .. }), "{err}");
    assert_gone(&real, "fc-notap");
}

/// Pods on Firecracker: drives reserved at boot (read-only, an empty
/// placeholder) and re-pointed with `PATCH /drives` at a container's image
/// linked into the jail, then back; what Firecracker refuses; how many
/// devices one VM takes ([`MAX_VIRTIO_DEVICES`]).
#[test]
fn real_reserved_drives_are_re_pointed_while_the_vm_runs() {
    let Some(real) = Real::new() else { return };
    let vm = real.vm("fc-pod", 10121);
    let run = real.dir.path().join("fc-pod");
    let placeholder = run.join("reserved.empty");
    std::fs::write(&placeholder, b"").unwrap();
    std::fs::set_permissions(&placeholder, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut spec = vm.spec.clone();
    for slot in 0..2 {
        spec.drives.push(DriveSpec {
            drive_id: format!("pod_slot_{slot}"),
            path: placeholder.clone(),
            read_only: true,
            in_place: false,
        });
    }
    let machine = Machine::launch(&real.config(10121, &vm.netns), &spec).unwrap();
    let jail = machine.process().jail.clone().unwrap();
    let image = run.join("container.ext4");
    sparse(&image, 3 << 20);
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let patch = |id: &str, path: &Path| {
        machine.client().patch_drive(&PartialDrive {
            drive_id: id.into(),
            path_on_host: Some(path.to_owned()),
        })
    };
    let path_of = |id: &str| {
        machine
            .vm_config()
            .unwrap()
            .drives
            .iter()
            .find(|d| d["drive_id"] == id)
            .map(|d| d["path_on_host"].as_str().unwrap().to_owned())
    };
    // Booted with the placeholder, linked (not copied) into the jail.
    let reserved = staged_drive_path("pod_slot_1").unwrap();
    assert_eq!(path_of("pod_slot_1").unwrap(), reserved.to_str().unwrap());
    let linked = std::fs::metadata(jail.host_path(&reserved)).unwrap();
    assert_eq!(linked.ino(), std::fs::metadata(&placeholder).unwrap().ino());

    // Re-pointed at the image: a link of it in the jail, the original
    // untouched (root's, read-only to the jail user).
    let in_jail = jail.link_replacement("pod_slot_1", &image).unwrap();
    patch("pod_slot_1", &in_jail).unwrap();
    assert_eq!(path_of("pod_slot_1").unwrap(), in_jail.to_str().unwrap());
    let image_meta = std::fs::metadata(&image).unwrap();
    let linked = std::fs::metadata(jail.host_path(&in_jail)).unwrap();
    assert_eq!((linked.ino(), image_meta.uid()), (image_meta.ino(), 0));
    // A second link for the same drive replaces the first.
    assert_eq!(
        jail.link_replacement("pod_slot_1", &image).unwrap(),
        in_jail
    );

    // What the real one refuses, as the stand-in answers it too.
    let err = patch("pod_slot_9", &in_jail).unwrap_err().to_string();
    assert!(
        err.contains("400") && err.contains("Device not found"),
        "{err}"
    );
    let err = patch("pod_slot_0", Path::new("/no-such.img"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("No such file or directory"),
        "{err}"
    );
    assert_eq!(
        path_of("pod_slot_0").unwrap(),
        staged_drive_path("pod_slot_0").unwrap().to_str().unwrap()
    );

    // Back to the placeholder; the image's link goes.
    patch("pod_slot_1", &reserved).unwrap();
    assert_eq!(path_of("pod_slot_1").unwrap(), reserved.to_str().unwrap());
    jail.remove_replacement("pod_slot_1").unwrap();
    jail.remove_replacement("pod_slot_1").unwrap();
    assert!(!jail.host_path(&in_jail).exists());
    machine.kill().unwrap();
    machine.cleanup().unwrap();
    assert_gone(&real, "fc-pod");

    // The device limit: the VM's block devices, network and vsock share 17
    // interrupt lines (VMGenID and VMClock take two of the 19).
    for blocks in [MAX_VIRTIO_DEVICES - 2, MAX_VIRTIO_DEVICES - 1] {
        let id = format!("fc-blocks{blocks}");
        let uid = 10130 + blocks as u32;
        let vm = real.vm(&id, uid);
        let mut spec = vm.spec.clone();
        while spec.drives.len() + 1 < blocks {
            spec.drives.push(DriveSpec {
                drive_id: format!("extra{}", spec.drives.len()),
                path: real.image.clone(),
                read_only: true,
                in_place: false,
            });
        }
        let launched = Machine::launch(&real.config(uid, &vm.netns), &spec);
        if blocks + 2 <= MAX_VIRTIO_DEVICES {
            let machine = launched.unwrap();
            assert_eq!(machine.info().unwrap().state, InstanceState::Running);
            machine.kill().unwrap();
            machine.cleanup().unwrap();
        } else {
            let err = launched.err().unwrap().to_string();
            assert!(
                err.contains("InstanceStart") && err.contains("not available"),
                "{err}"
            );
        }
        assert_gone(&real, &id);
    }
}
