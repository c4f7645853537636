//! The jail: command line, files staged into it, socket path limits, pid
//! file and cleanup; with a fake Firecracker binary in a temp chroot base.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{full_spec, tempdir};
use firebuild_firecracker::{
    Access, CgroupLayout, CgroupSetting, CgroupVersion, DriveSpec, Error, Hierarchy, Jail,
    JailUser, JailerConfig, VmSpec,
};

const USER: JailUser = JailUser {
    uid: 10000,
    gid: 10001,
};

/// A temp dir with a fake firecracker binary and a chroot base.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempdir();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let fc = dir.path().join("bin/firecracker-v1.16.1-x86_64");
        std::fs::write(&fc, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fc, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Profiles usually point at a symlink; the jail is named after its target.
        std::os::unix::fs::symlink(&fc, dir.path().join("bin/firecracker")).unwrap();
        Fixture { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn firecracker(&self) -> PathBuf {
        self.path().join("bin/firecracker")
    }
    fn config(&self) -> JailerConfig {
        JailerConfig {
            user: USER,
            ..JailerConfig::new("/usr/local/bin/jailer", self.path().join("jail"))
        }
    }
    fn jail(&self, id: &str) -> Jail {
        Jail::new(&self.config(), &self.firecracker(), id).unwrap()
    }
}

fn args(v: Vec<OsString>) -> Vec<String> {
    v.into_iter().map(|a| a.into_string().unwrap()).collect()
}

#[test]
fn layout_follows_the_jailer() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    let base = std::fs::canonicalize(fx.path().join("jail")).unwrap();
    assert_eq!(jail.exec_name(), "firecracker-v1.16.1-x86_64");
    assert_eq!(
        jail.root(),
        base.join("firecracker-v1.16.1-x86_64/vm-1/root")
    );
    assert_eq!(
        jail.api_socket(),
        jail.root().join("run/firecracker.socket")
    );
    assert_eq!(
        jail.pid_file(),
        jail.root().join("firecracker-v1.16.1-x86_64.pid")
    );
    assert_eq!(jail.parent_cgroup, "firecracker-v1.16.1-x86_64");
    assert_eq!(
        jail.host_path(Path::new("/vmlinux")),
        jail.root().join("vmlinux")
    );
}

#[test]
fn jailer_command_line() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    let base = jail.chroot_base.to_str().unwrap().to_string();
    let exec = jail.exec_file.to_str().unwrap().to_string();
    assert_eq!(
        args(jail.jailer_args(&fx.config(), CgroupVersion::V1)),
        [
            "--id",
            "vm-1",
            "--exec-file",
            &exec,
            "--uid",
            "10000",
            "--gid",
            "10001",
            "--chroot-base-dir",
            &base,
            "--daemonize",
            "--new-pid-ns",
            "--cgroup-version",
            "1",
            "--",
            "--api-sock",
            "/run/firecracker.socket",
        ]
    );
    let config = JailerConfig {
        netns: Some("/var/run/netns/fb-vm-1".into()),
        cgroups: vec![
            CgroupSetting::parse("cpu.max=50000 100000").unwrap(),
            CgroupSetting::parse("memory.max=512M").unwrap(),
        ],
        parent_cgroup: Some("firebuild".into()),
        new_pid_ns: false,
        ..fx.config()
    };
    let jail = Jail::new(&config, &fx.firecracker(), "vm-1").unwrap();
    assert_eq!(jail.parent_cgroup, "firebuild");
    let cmd = jail.jailer_command(&config, CgroupVersion::V2);
    assert_eq!(cmd.get_program(), "/usr/local/bin/jailer");
    assert_eq!(
        cmd.get_args()
            .map(|a| a.to_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "--id",
            "vm-1",
            "--exec-file",
            &exec,
            "--uid",
            "10000",
            "--gid",
            "10001",
            "--chroot-base-dir",
            &base,
            "--netns",
            "/var/run/netns/fb-vm-1",
            "--daemonize",
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            "firebuild",
            "--cgroup",
            "cpu.max=50000 100000",
            "--cgroup",
            "memory.max=512M",
            "--",
            "--api-sock",
            "/run/firecracker.socket",
        ]
    );
}

#[test]
fn bad_ids_and_parents_are_refused() {
    let fx = Fixture::new();
    for id in ["", "../../etc", "vm_1", &"x".repeat(65)] {
        let err = Jail::new(&fx.config(), &fx.firecracker(), id).unwrap_err();
        assert!(matches!(err, Error::InvalidVmId { .. }), "{id}: {err}");
    }
    let config = JailerConfig {
        parent_cgroup: Some("../escape".into()),
        ..fx.config()
    };
    assert!(Jail::new(&config, &fx.firecracker(), "vm").is_err());
    let err = Jail::new(&fx.config(), &fx.path().join("bin/missing"), "vm").unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot find the Firecracker binary"),
        "{err}"
    );
}

#[test]
fn socket_path_length_is_checked_against_the_jail_root() {
    let fx = Fixture::new();
    // Room left for the rest of the path: base + /firecracker-v1.16.1-x86_64/<id>/root/run/firecracker.socket
    let base = fx.path().join("jail");
    let base_len = std::fs::canonicalize(fx.path())
        .unwrap()
        .join("jail")
        .as_os_str()
        .len();
    let fixed = "/firecracker-v1.16.1-x86_64/".len() + "/root/run/firecracker.socket".len();
    let fits = 107 - base_len - fixed;
    Jail::new(
        &JailerConfig {
            chroot_base: base.clone(),
            ..fx.config()
        },
        &fx.firecracker(),
        &"a".repeat(fits),
    )
    .unwrap();
    let err = Jail::new(
        &JailerConfig {
            chroot_base: base,
            ..fx.config()
        },
        &fx.firecracker(),
        &"a".repeat(fits + 1),
    )
    .unwrap_err();
    match &err {
        Error::SocketPathTooLong { len, max, .. } => assert_eq!((*len, *max), (108, 107)),
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("use a shorter chroot base"),
        "{err}"
    );
}

#[test]
fn staging_links_owned_files_and_hands_them_to_the_jail_user() {
    let fx = Fixture::new();
    let vmdir = fx.path().join("run");
    std::fs::create_dir(&vmdir).unwrap();
    let spec = full_spec(&vmdir);
    // A world-readable shared kernel is linked and left alone.
    std::fs::set_permissions(&spec.kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A world-readable read-only drive is shared like the kernel.
    std::fs::set_permissions(&spec.drives[1].path, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A private initrd is copied for the jail user; the original is untouched.
    std::fs::set_permissions(
        spec.initrd.as_ref().unwrap(),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let staged = jail.stage(&spec).unwrap();

    assert_eq!(staged.kernel, Path::new("/vmlinux"));
    assert_eq!(staged.initrd.as_deref(), Some(Path::new("/initrd")));
    assert_eq!(staged.root_drive, Path::new("/rootfs.img"));
    // Each drive under a name of its own.
    assert_eq!(staged.drives[0].path, Path::new("/drive-scratch.img"));
    assert_eq!(staged.drives[1].path, Path::new("/drive-data.img"));
    assert_eq!(
        staged.log_path.as_deref(),
        Some(Path::new("/firecracker.log"))
    );
    assert_eq!(
        staged.metrics_path.as_deref(),
        Some(Path::new("/firecracker.metrics"))
    );
    assert_eq!(
        staged.console_path.as_deref(),
        Some(Path::new("/console.log"))
    );
    assert_eq!(
        staged.vsock.as_ref().unwrap().uds_path,
        Path::new("/v.sock")
    );
    // Nothing else changed.
    assert_eq!(
        VmSpec {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            root_drive: spec.root_drive.clone(),
            drives: spec.drives.clone(),
            log_path: spec.log_path.clone(),
            metrics_path: spec.metrics_path.clone(),
            console_path: spec.console_path.clone(),
            vsock: spec.vsock.clone(),
            ..staged.clone()
        },
        spec
    );

    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    let inside = |p: &Path| jail.host_path(p);
    // Owned: same inode, jail user's.
    for (host, jailed) in [
        (&spec.root_drive, &staged.root_drive),
        (&spec.drives[0].path, &staged.drives[0].path),
        (
            spec.log_path.as_ref().unwrap(),
            staged.log_path.as_ref().unwrap(),
        ),
        (
            spec.console_path.as_ref().unwrap(),
            staged.console_path.as_ref().unwrap(),
        ),
    ] {
        let (h, j) = (meta(host), meta(&inside(jailed)));
        assert_eq!(h.ino(), j.ino(), "{} is hard-linked", host.display());
        assert_eq!((j.uid(), j.gid()), (10000, 10001));
    }
    // Log files did not exist on the host: created there first.
    assert!(spec.metrics_path.as_ref().unwrap().is_file());
    // Shared, world-readable: linked, still root's.
    for (host, jailed) in [
        (&spec.kernel, &staged.kernel),
        (&spec.drives[1].path, &staged.drives[1].path),
    ] {
        let j = meta(&inside(jailed));
        assert_eq!(
            j.ino(),
            meta(host).ino(),
            "{} is hard-linked",
            host.display()
        );
        assert_eq!((j.uid(), j.mode() & 0o777), (0, 0o644));
    }
    // Shared, private: a separate copy for the jail user, original unchanged.
    let (orig, copy) = (
        meta(spec.initrd.as_ref().unwrap()),
        meta(&inside(staged.initrd.as_ref().unwrap())),
    );
    assert_ne!(orig.ino(), copy.ino());
    assert_eq!(
        (copy.uid(), copy.gid(), copy.mode() & 0o777),
        (10000, 10001, 0o400)
    );
    assert_eq!((orig.uid(), orig.mode() & 0o777), (0, 0o600));
    assert_eq!(
        std::fs::read(inside(staged.initrd.as_ref().unwrap())).unwrap(),
        b"initrd"
    );
}

/// The stored image attached read-only is shared by every VM of its tag:
/// staged without any change to it, while the VM's scratch disk becomes the
/// jail user's.
#[test]
fn staging_a_read_only_root_shares_the_stored_image_and_hands_over_the_scratch_disk() {
    let fx = Fixture::new();
    let store = fx.path().join("store");
    let run = fx.path().join("run");
    std::fs::create_dir(&store).unwrap();
    std::fs::create_dir(&run).unwrap();
    let image = store.join("rootfs");
    std::fs::write(&image, b"stored image").unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let scratch = run.join("scratch.ext4");
    std::fs::write(&scratch, b"scratch").unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kernel = run.join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = VmSpec {
        root_read_only: true,
        drives: vec![DriveSpec {
            drive_id: "scratch".into(),
            path: scratch.clone(),
            read_only: false,
            in_place: false,
        }],
        ..VmSpec::new("vm-1", &kernel, &image)
    };
    let before = std::fs::metadata(&image).unwrap();

    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let staged = jail.stage(&spec).unwrap();

    let meta = |p: &Path| std::fs::metadata(jail.host_path(p)).unwrap();
    let root = meta(&staged.root_drive);
    assert_eq!((root.dev(), root.ino()), (before.dev(), before.ino()));
    let after = std::fs::metadata(&image).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    assert_eq!((after.uid(), after.mode() & 0o777), (0, 0o644));
    let s = meta(&staged.drives[0].path);
    assert_eq!(s.ino(), std::fs::metadata(&scratch).unwrap().ino());
    assert_eq!((s.uid(), s.gid(), s.mode() & 0o777), (10000, 10001, 0o600));
    assert_ne!(staged.root_drive, staged.drives[0].path);
}

/// Volumes are linked, never copied (their writes must reach the file),
/// and handed to the jail user even when attached read-only.
#[test]
fn volumes_are_linked_in_place_and_handed_to_the_jail_user() {
    let fx = Fixture::new();
    let run = fx.path().join("run");
    let volumes = fx.path().join("volumes");
    std::fs::create_dir(&run).unwrap();
    std::fs::create_dir(&volumes).unwrap();
    let image = run.join("rootfs.ext4");
    std::fs::write(&image, b"image").unwrap();
    std::fs::write(run.join("vmlinux"), b"kernel").unwrap();
    let volume = |name: &str| {
        let p = volumes.join(name);
        std::fs::write(&p, b"volume").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let (data, seed) = (volume("data.ext4"), volume("seed.ext4"));
    let spec = VmSpec {
        drives: [("vol0", &data, false), ("vol1", &seed, true)]
            .into_iter()
            .map(|(id, path, read_only)| DriveSpec {
                drive_id: id.into(),
                path: path.clone(),
                read_only,
                in_place: true,
            })
            .collect(),
        ..VmSpec::new("vm-1", run.join("vmlinux"), &image)
    };
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let staged = jail.stage(&spec).unwrap();
    for (drive, original) in staged.drives.iter().zip([&data, &seed]) {
        let inside = std::fs::metadata(jail.host_path(&drive.path)).unwrap();
        let orig = std::fs::metadata(original).unwrap();
        assert_eq!(
            (inside.dev(), inside.ino()),
            (orig.dev(), orig.ino()),
            "linked"
        );
        assert_eq!(
            (orig.uid(), orig.gid(), orig.mode() & 0o777),
            (10000, 10001, 0o600)
        );
    }

    // Across filesystems a volume is refused, not copied.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let same_fs =
        std::fs::metadata(shm.path()).unwrap().dev() == std::fs::metadata(&run).unwrap().dev();
    if same_fs {
        eprintln!("skipping the cross-filesystem case: /dev/shm is on the test's filesystem");
        return;
    }
    let far = shm.path().join("far.ext4");
    std::fs::write(&far, b"volume").unwrap();
    let other = fx.jail("vm-2");
    other.create().unwrap();
    let err = other
        .stage(&VmSpec {
            vm_id: "vm-2".into(),
            drives: vec![DriveSpec {
                drive_id: "vol0".into(),
                path: far.clone(),
                read_only: false,
                in_place: true,
            }],
            ..spec
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("far.ext4") && err.contains("--chroot-base"),
        "{err}"
    );
}

/// A stored image the jail user could not read is copied for it rather
/// than handed over; a writable root drive stays the VM's own, as before.
#[test]
fn a_private_read_only_root_is_copied_and_a_writable_root_is_handed_over() {
    let fx = Fixture::new();
    let dir = fx.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let image = dir.join("rootfs.ext4");
    std::fs::write(&image, b"image").unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
    let spec = VmSpec {
        root_read_only: true,
        ..VmSpec::new("vm-1", dir.join("vmlinux"), &image)
    };
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let staged = jail.stage(&spec).unwrap();
    let copy = std::fs::metadata(jail.host_path(&staged.root_drive)).unwrap();
    let orig = std::fs::metadata(&image).unwrap();
    assert_ne!(copy.ino(), orig.ino());
    assert_eq!((copy.uid(), copy.mode() & 0o777), (10000, 0o400));
    assert_eq!((orig.uid(), orig.mode() & 0o777), (0, 0o600));

    let writable = fx.jail("vm-2");
    writable.create().unwrap();
    let staged = writable
        .stage(&VmSpec {
            vm_id: "vm-2".into(),
            root_read_only: false,
            ..spec
        })
        .unwrap();
    let linked = std::fs::metadata(writable.host_path(&staged.root_drive)).unwrap();
    assert_eq!((linked.ino(), linked.uid()), (orig.ino(), 10000));
}

#[test]
fn staging_refuses_a_drive_id_that_is_no_file_name() {
    let fx = Fixture::new();
    let dir = fx.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let mut spec = full_spec(&dir);
    spec.drives[0].drive_id = "../escape".into();
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let err = jail.stage(&spec).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "drives.drive_id",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn staging_copies_across_filesystems() {
    // /dev/shm is a tmpfs, the temp dir is not: linking fails with EXDEV.
    let shm = tempfile::Builder::new()
        .prefix("fbfc")
        .tempdir_in("/dev/shm")
        .unwrap();
    let fx = Fixture::new();
    if std::fs::metadata(shm.path()).unwrap().dev() == std::fs::metadata(fx.path()).unwrap().dev() {
        panic!("this test needs /dev/shm on another filesystem than the temp dir");
    }
    let rootfs = shm.path().join("rootfs.ext4");
    std::fs::write(&rootfs, b"ext4").unwrap();
    let jail = fx.jail("vm-x");
    jail.create().unwrap();
    let inside = jail.link_in(&rootfs, "rootfs.img", Access::Owned).unwrap();
    let copy = std::fs::metadata(jail.host_path(&inside)).unwrap();
    assert_ne!(copy.dev(), std::fs::metadata(&rootfs).unwrap().dev());
    assert_eq!(
        (copy.uid(), std::fs::read(jail.host_path(&inside)).unwrap()),
        (10000, b"ext4".to_vec())
    );
}

#[test]
fn staging_refuses_missing_files_and_directories() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let err = jail
        .link_in(&fx.path().join("nope"), "x", Access::Owned)
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(jail.link_in(fx.path(), "x", Access::Shared).is_err());
}

#[test]
fn a_leftover_jail_is_not_reused() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let err = jail.create().unwrap_err();
    assert!(matches!(err, Error::JailExists { .. }), "{err}");
}

#[test]
fn pid_file_is_read_from_the_jail_root() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    let err = jail.read_pid().unwrap_err();
    assert!(matches!(err, Error::PidFile { .. }), "{err}");
    std::fs::write(jail.pid_file(), "garbage").unwrap();
    assert!(jail
        .read_pid()
        .unwrap_err()
        .to_string()
        .contains("not a process id"));
    std::fs::write(jail.pid_file(), "4242").unwrap();
    assert_eq!(jail.read_pid().unwrap(), 4242);
}

#[test]
fn cleanup_removes_the_jail_and_the_vm_cgroups_only() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    jail.create().unwrap();
    jail.stage(&full_spec(&{
        let d = fx.path().join("run");
        std::fs::create_dir(&d).unwrap();
        d
    }))
    .unwrap();
    // Cgroup hierarchies stood in by plain directories (rmdir works alike).
    let cg = fx.path().join("cg");
    let hierarchy = |name: &str| Hierarchy {
        path: cg.join(name),
        controllers: vec![name.into()],
    };
    let layout = CgroupLayout {
        v1: vec![hierarchy("cpu"), hierarchy("memory")],
        v2: Some(hierarchy("unified")),
    };
    for h in ["cpu", "unified"] {
        std::fs::create_dir_all(cg.join(h).join(&jail.parent_cgroup).join("vm-1")).unwrap();
        std::fs::create_dir_all(cg.join(h).join(&jail.parent_cgroup).join("vm-2")).unwrap();
    }
    let other = fx.jail("vm-2");
    other.create().unwrap();

    jail.remove(&layout).unwrap();
    assert!(!jail.instance_dir().exists());
    assert!(other.root().exists(), "another VM's jail stays");
    for h in ["cpu", "unified"] {
        assert!(!cg.join(h).join(&jail.parent_cgroup).join("vm-1").exists());
        assert!(cg.join(h).join(&jail.parent_cgroup).join("vm-2").exists());
    }
    // The run dir's files survive the jail (only links went).
    assert!(fx.path().join("run/rootfs.ext4").is_file());
    // Idempotent.
    jail.remove(&layout).unwrap();

    // A cgroup that cannot go (stand-in: not empty) is reported.
    std::fs::create_dir_all(cg.join("cpu").join(&other.parent_cgroup).join("vm-2/task")).unwrap();
    let err = other.remove(&layout).unwrap_err();
    assert!(matches!(err, Error::CgroupRemove { .. }), "{err}");
}

#[test]
fn jail_round_trips_through_json() {
    let fx = Fixture::new();
    let jail = fx.jail("vm-1");
    let back: Jail = serde_json::from_str(&serde_json::to_string(&jail).unwrap()).unwrap();
    assert_eq!(back, jail);
}
