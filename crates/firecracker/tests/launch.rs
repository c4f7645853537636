//! `Machine::launch` end to end, with the stand-in `firecracker` and
//! `jailer` executables of `firebuild_firecracker::standin` (neither can
//! run here): shell scripts that re-run this test binary as the API
//! stand-in on the requested socket.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tempdir;
use firebuild_firecracker::models::InstanceState;
use firebuild_firecracker::standin::{self, Executables, Netns};
use firebuild_firecracker::{
    Error, JailUser, JailerConfig, LaunchConfig, LaunchMode, Machine, NetworkSpec, VmProcess,
    VmSpec,
};

/// Not a test: the body of the `firecracker` stand-in process.
#[test]
fn standin_process() {
    standin::serve_process(|_, options| options);
}

struct Fixture {
    // Dropped first: kills the stand-in processes while their pid file is
    // still there.
    exes: Executables,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempdir();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Fixture {
            exes: Executables::install(dir.path()).unwrap(),
            dir,
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn script(&self, name: &str, text: &str) -> PathBuf {
        self.exes.script(name, text).unwrap()
    }
    fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }
    fn spec(&self, id: &str) -> VmSpec {
        let run = self.run_dir();
        std::fs::write(run.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(run.join("rootfs.ext4"), b"rootfs").unwrap();
        VmSpec {
            log_path: Some(run.join("fc.log")),
            console_path: Some(run.join("console.log")),
            ..VmSpec::new(id, run.join("vmlinux"), run.join("rootfs.ext4"))
        }
    }
    /// Generous timeouts: the stand-in is a whole test binary starting up
    /// on a loaded 2-core CI machine.
    fn direct(&self) -> LaunchConfig {
        patient(LaunchConfig::new(
            self.exes.firecracker(),
            LaunchMode::Direct {
                run_dir: self.run_dir(),
                netns: None,
            },
        ))
    }
    fn jailer_config(&self) -> JailerConfig {
        JailerConfig {
            user: JailUser {
                uid: 10000,
                gid: 10000,
            },
            ..JailerConfig::new(self.exes.jailer(), self.path().join("jail"))
        }
    }
    fn jailed(&self) -> LaunchConfig {
        patient(LaunchConfig::new(
            self.exes.firecracker(),
            LaunchMode::Jailed(self.jailer_config()),
        ))
    }
    /// Pids of every stand-in process started.
    fn pids(&self) -> Vec<u32> {
        self.exes.pids()
    }
}

fn patient(mut config: LaunchConfig) -> LaunchConfig {
    config.socket_timeout = Duration::from_secs(60);
    config.request_timeout = Duration::from_secs(30);
    config
}

fn wait_gone(pid: u32) -> bool {
    standin::wait_gone(pid, Duration::from_secs(10))
}

#[test]
fn direct_launch_boots_manages_and_cleans_up() {
    let fx = Fixture::new();
    let m = Machine::launch(&fx.direct(), &fx.spec("vm-direct")).unwrap();
    let info = m.info().unwrap();
    assert_eq!(
        (info.id.as_str(), info.state),
        ("vm-direct", InstanceState::Running)
    );
    assert_eq!(
        m.process().api_socket,
        fx.run_dir().join("firecracker.socket")
    );
    assert!(m.process().jail.is_none());
    assert_eq!(
        m.vm_config()
            .unwrap()
            .boot_source
            .unwrap()
            .kernel_image_path,
        fx.run_dir().join("vmlinux")
    );
    m.pause().unwrap();
    assert_eq!(m.info().unwrap().state, InstanceState::Paused);
    m.resume().unwrap();

    // A later command finds it again from the persisted process record.
    let saved = serde_json::to_string(m.process()).unwrap();
    let again = Machine::attach(
        serde_json::from_str::<VmProcess>(&saved).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(again.info().unwrap().state, InstanceState::Running);
    let err = Machine::attach(m.process().clone(), Duration::from_secs(5))
        .unwrap()
        .cleanup()
        .unwrap_err();
    assert!(matches!(err, Error::StillRunning { .. }), "{err}");

    m.shutdown().unwrap();
    assert!(
        m.wait_exit(Duration::from_secs(20)),
        "the stand-in exits after Ctrl+Alt+Del"
    );
    assert!(!again.process().is_running());
    m.cleanup().unwrap();
    assert!(!fx.run_dir().join("firecracker.socket").exists());
}

#[test]
fn direct_launch_kill() {
    let fx = Fixture::new();
    let m = Machine::launch(&fx.direct(), &fx.spec("vm-kill")).unwrap();
    let pid = m.process().pid;
    m.kill().unwrap();
    assert!(!m.is_running());
    assert!(wait_gone(pid));
    m.cleanup().unwrap();
}

#[test]
fn direct_launch_refused_by_the_api_leaves_nothing_running() {
    let fx = Fixture::new();
    let spec = VmSpec {
        network: Some(NetworkSpec {
            tap: "fbnotap0".into(),
            guest_mac: None,
            mtu: None,
        }),
        ..fx.spec("vm-notap")
    };
    let err = Machine::launch(&fx.direct(), &spec).unwrap_err();
    match &err {
        Error::Api {
            path,
            fault_message,
            ..
        } => {
            assert_eq!(path, "/network-interfaces/eth0");
            assert!(fault_message.contains("fbnotap0"), "{fault_message}");
        }
        other => panic!("{other}"),
    }
    let pids = fx.pids();
    assert_eq!(pids.len(), 1);
    assert!(wait_gone(pids[0]), "the stand-in process was killed");
    assert!(!fx.run_dir().join("firecracker.socket").exists());
}

#[test]
fn direct_launch_of_a_binary_that_dies_reports_its_output() {
    let fx = Fixture::new();
    fx.script(
        "firecracker",
        "#!/bin/sh\necho 'Error: KVM not supported on this CPU' >&2\nexit 1\n",
    );
    let config = fx.direct();
    let err = Machine::launch(&config, &fx.spec("vm-dies")).unwrap_err();
    assert!(matches!(err, Error::ExitedEarly { .. }), "{err}");
    assert!(err.to_string().contains("KVM not supported"), "{err}");
}

#[test]
fn direct_launch_of_a_missing_binary() {
    let fx = Fixture::new();
    let config = LaunchConfig::new(
        fx.path().join("bin/nope"),
        LaunchMode::Direct {
            run_dir: fx.run_dir(),
            netns: None,
        },
    );
    let err = Machine::launch(&config, &fx.spec("vm")).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}

#[test]
fn jailed_launch_stages_the_jail_boots_and_cleans_up() {
    let fx = Fixture::new();
    let m = Machine::launch(&fx.jailed(), &fx.spec("vm-jailed")).unwrap();
    let jail = m.process().jail.clone().expect("jailed");
    let root = jail.root();
    assert_eq!(
        root,
        std::fs::canonicalize(fx.path())
            .unwrap()
            .join("jail/firecracker/vm-jailed/root")
    );
    assert_eq!(m.process().api_socket, root.join("run/firecracker.socket"));
    // The pid came from the jail's pid file.
    assert_eq!(
        std::fs::read_to_string(root.join("firecracker.pid"))
            .unwrap()
            .trim(),
        m.process().pid.to_string()
    );
    // Firecracker was given in-jail paths, which resolve inside the root.
    let cfg = m.vm_config().unwrap();
    assert_eq!(
        cfg.boot_source.unwrap().kernel_image_path,
        Path::new("/vmlinux")
    );
    assert_eq!(cfg.drives[0]["path_on_host"], "/rootfs.img");
    assert_eq!(cfg.other["logger"]["log_path"], "/firecracker.log");
    assert_eq!(std::fs::read(root.join("rootfs.img")).unwrap(), b"rootfs");
    let args = std::fs::read_to_string(jail.instance_dir().join("jailer.args")).unwrap();
    assert!(args.contains("--uid 10000 --gid 10000"), "{args}");
    assert!(
        args.contains("--daemonize --new-pid-ns --cgroup-version 1"),
        "{args}"
    );
    assert!(
        args.ends_with("-- --api-sock /run/firecracker.socket\n"),
        "{args}"
    );

    m.shutdown().unwrap();
    assert!(m.wait_exit(Duration::from_secs(20)));
    m.cleanup().unwrap();
    assert!(!jail.instance_dir().exists());
    // The VM's own files outlive the jail.
    assert!(fx.run_dir().join("rootfs.ext4").is_file());
}

#[test]
fn jailed_launch_refused_by_the_api_removes_the_jail() {
    let fx = Fixture::new();
    let spec = VmSpec {
        network: Some(NetworkSpec {
            tap: "fbnotap1".into(),
            guest_mac: None,
            mtu: None,
        }),
        ..fx.spec("vm-jail-fail")
    };
    let err = Machine::launch(&fx.jailed(), &spec).unwrap_err();
    assert!(
        matches!(&err, Error::Api { path, .. } if path == "/network-interfaces/eth0"),
        "{err}"
    );
    let pids = fx.pids();
    assert_eq!(pids.len(), 1);
    assert!(wait_gone(pids[0]));
    assert!(!fx.path().join("jail/firecracker/vm-jail-fail").exists());
}

#[test]
fn a_failing_jailer_is_reported_with_its_output() {
    let fx = Fixture::new();
    fx.script(
        "jailer",
        "#!/bin/sh\necho 'Jailer error: Failed to parse cgroup-version' >&2\nexit 1\n",
    );
    let err = Machine::launch(&fx.jailed(), &fx.spec("vm-badjailer")).unwrap_err();
    assert!(matches!(err, Error::JailerFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("Failed to parse cgroup-version"),
        "{err}"
    );
    assert!(!fx.path().join("jail/firecracker/vm-badjailer").exists());
}

#[test]
fn a_leftover_jail_blocks_a_new_launch_with_the_same_id() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.path().join("jail/firecracker/vm-again/root")).unwrap();
    let err = Machine::launch(&fx.jailed(), &fx.spec("vm-again")).unwrap_err();
    assert!(matches!(err, Error::JailExists { .. }), "{err}");
    // The leftover is not ours to remove.
    assert!(fx.path().join("jail/firecracker/vm-again/root").exists());
}

#[test]
fn async_launch_runs_inside_a_runtime_and_leaves_no_zombie() {
    let fx = Fixture::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let process = rt.block_on(async {
        let process = firebuild_firecracker::launch(&fx.direct(), &fx.spec("vm-async"))
            .await
            .unwrap();
        let info = process.client().instance_info().await.unwrap();
        assert_eq!(info.state, InstanceState::Running);
        process
    });
    assert!(process.is_running());
    process.kill().unwrap();
    assert!(process.wait_exit(Duration::from_secs(20)));
    // The VMM was our child: the background reaper collects it.
    let proc_dir = PathBuf::from(format!("/proc/{}", process.pid));
    for _ in 0..500 {
        if !proc_dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!proc_dir.exists(), "pid {} left as a zombie", process.pid);
    process.cleanup().unwrap();
}

#[test]
fn preflight_checks_ids_and_socket_paths_without_creating_anything() {
    let fx = Fixture::new();
    firebuild_firecracker::preflight(&fx.direct(), "vm-1").unwrap();
    firebuild_firecracker::preflight(&fx.jailed(), "vm-1").unwrap();
    assert!(
        !fx.path().join("jail").exists(),
        "preflight created the chroot base"
    );
    assert!(matches!(
        firebuild_firecracker::preflight(&fx.direct(), "vm_1"),
        Err(Error::InvalidVmId { .. })
    ));
    let deep = fx.path().join("x".repeat(100));
    let direct = LaunchConfig::new(
        fx.path().join("bin/firecracker"),
        LaunchMode::Direct {
            run_dir: deep.clone(),
            netns: None,
        },
    );
    assert!(matches!(
        firebuild_firecracker::preflight(&direct, "vm-1"),
        Err(Error::SocketPathTooLong { .. })
    ));
    let jailed = LaunchConfig::new(
        fx.path().join("bin/firecracker"),
        LaunchMode::Jailed(JailerConfig {
            chroot_base: deep,
            ..fx.jailer_config()
        }),
    );
    assert!(matches!(
        firebuild_firecracker::preflight(&jailed, "vm-1"),
        Err(Error::SocketPathTooLong { .. })
    ));
}

#[test]
fn availability_names_a_missing_or_unusable_binary() {
    let fx = Fixture::new();
    let missing = LaunchConfig::new(
        fx.path().join("bin/nope"),
        LaunchMode::Direct {
            run_dir: fx.run_dir(),
            netns: None,
        },
    );
    let err = firebuild_firecracker::availability(&missing).unwrap_err();
    assert!(err.to_string().contains("bin/nope"), "{err}");
    let plain = fx.path().join("bin/plain");
    std::fs::write(&plain, "").unwrap();
    let mut jailed = fx.jailed();
    if let LaunchMode::Jailed(j) = &mut jailed.mode {
        j.jailer = plain;
    }
    let err = firebuild_firecracker::availability(&jailed).unwrap_err();
    assert!(err.to_string().contains("not an executable file"), "{err}");
}

#[test]
fn direct_launch_enters_the_network_namespace_of_the_tap() {
    let fx = Fixture::new();
    let ns = Netns::create(Some("fbnstap0")).unwrap();
    let spec = VmSpec {
        network: Some(NetworkSpec {
            tap: "fbnstap0".into(),
            guest_mac: Some("02:fc:00:00:00:09".into()),
            mtu: None,
        }),
        ..fx.spec("vm-netns")
    };
    // Outside the namespace the tap does not exist: the stand-in refuses it.
    let err = Machine::launch(&fx.direct(), &spec).unwrap_err();
    assert!(
        matches!(&err, Error::Api { path, .. } if path == "/network-interfaces/eth0"),
        "{err}"
    );

    let config = LaunchConfig::new(
        fx.path().join("bin/firecracker"),
        LaunchMode::Direct {
            run_dir: fx.run_dir(),
            netns: Some(ns.path()),
        },
    );
    let m = Machine::launch(&config, &spec).unwrap();
    assert_eq!(m.info().unwrap().state, InstanceState::Running);
    m.kill().unwrap();
    m.cleanup().unwrap();
}
