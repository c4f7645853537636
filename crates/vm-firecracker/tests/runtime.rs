//! The Firecracker backend inside the VM runtime (`run`, `ls`, `inspect`,
//! `logs`, `kill`, `purge`), with the stand-in `firecracker` and `jailer`
//! of `common` (Firecracker cannot run here).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{image, wait_gone, Fixture, Netns, STANDIN_EXIT_CODE};
use firebuild_vm::network::NetworkError;
use firebuild_vm::{
    Interrupts, NetworkAttachment, NetworkReleaser, QemuConfig, QemuVmm, RunMetadata, RunOutcome,
    RunSpec, Runtime, VmError, VmStatus, VmmChoice, VmmKind,
};
use firebuild_vm_firecracker::{FirecrackerConfig, FirecrackerDetails, FirecrackerVmm};

/// Not a test: the body of the `firecracker` stand-in process.
#[test]
fn standin_process() {
    common::standin_main();
}

/// Records the networks released (what CNI DEL would be asked).
#[derive(Default)]
struct Releases(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl NetworkReleaser for Releases {
    async fn release(&self, vm: &RunMetadata, a: &NetworkAttachment) -> Result<(), NetworkError> {
        self.0.lock().unwrap().push(format!("{}:{}", vm.id, a.tap));
        Ok(())
    }
}

/// A runtime with both backends, as the CLI builds it.
fn runtime(fx: &Fixture, config: FirecrackerConfig, releases: Arc<Releases>) -> Runtime {
    Runtime::with_backends(
        fx.run_cache(),
        vec![
            Arc::new(FirecrackerVmm::new(config)),
            Arc::new(QemuVmm::new(QemuConfig {
                // Found, never started here: only selection is tested.
                binary: "sh".into(),
                ..Default::default()
            })),
        ],
    )
    .with_network_releaser(releases)
}

fn spec(fx: &Fixture, name: &str, net: &Netns) -> RunSpec {
    let rootfs = fx.path().join("stored-rootfs.ext4");
    std::fs::write(&rootfs, b"stored image").unwrap();
    let mut spec = RunSpec::new(rootfs, image(), fx.kernel());
    spec.name = Some(name.into());
    spec.hostname = Some("fc-guest".into());
    spec.env = vec!["GREETING=hi".into()];
    spec.vmm = VmmChoice::Firecracker;
    spec.network_choice = firebuild_vm::NetworkChoice::Attached(net.attachment());
    spec.daemonize = true;
    spec
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn daemonized_vm_is_listed_inspected_killed_and_purged() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let releases = Arc::new(Releases::default());
    let rt = rt();
    rt.block_on(async {
        let runtime = runtime(&fx, fx.config(), releases.clone());
        let mut sink = Vec::new();
        let outcome = runtime
            .run(spec(&fx, "fc-web", &ns), &mut sink)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RunOutcome::Detached {
                id: "fc-web".into()
            }
        );

        // The MMDS document carries the run's env and hostname.
        let requests = fx.wait_requests("fc-web", 11);
        let meta = &requests[8]["body"]["latest"]["meta-data"];
        assert_eq!(requests[8]["path"], "/mmds");
        assert_eq!(meta["env"]["GREETING"], "hi");
        assert_eq!(meta["env"]["FROM_IMAGE"], "1");
        assert_eq!(meta["local-hostname"], "fc-guest");
        assert_eq!(meta["entrypoint-json"], r#"["/bin/app","serve"]"#);
        let boot_args = requests[3]["body"]["boot_args"].as_str().unwrap();
        assert!(boot_args.contains("firebuild.metadata=mmds"), "{boot_args}");
        // The stored image shared read-only, the VM's scratch disk after it.
        assert!(
            boot_args.contains("firebuild.overlay=/dev/vdb"),
            "{boot_args}"
        );
        let drive = |i: usize| &requests[i]["body"];
        assert_eq!(
            (&drive(4)["drive_id"], &drive(4)["is_read_only"]),
            (&"rootfs".into(), &true.into())
        );
        assert_eq!(
            (&drive(5)["drive_id"], &drive(5)["is_read_only"]),
            (&"scratch".into(), &false.into())
        );

        let listed = runtime.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, VmStatus::Running);
        assert_eq!(listed[0].vmm, VmmKind::Firecracker);
        assert_eq!(listed[0].ip.as_deref(), Some("10.213.0.2"));

        let inspected = runtime.inspect("fc-web").await.unwrap();
        assert_eq!(inspected.vmm_details["running"], true);
        assert_eq!(inspected.vmm_details["mode"], "jailed");
        let details: FirecrackerDetails =
            serde_json::from_value(inspected.vmm_details.clone()).unwrap();
        let jail_dir = details.process.jail.as_ref().unwrap().instance_dir();
        assert!(jail_dir.exists());

        // The console the jailed VMM writes reaches `logs`.
        let mut logs = Vec::new();
        runtime.logs("fc-web", false, &mut logs).await.unwrap();
        assert_eq!(
            String::from_utf8(logs).unwrap(),
            "stand-in guest fc-web is up\n"
        );

        // Running VMs are not purged.
        assert!(runtime.purge().await.unwrap().removed.is_empty());

        // `kill` and `purge` run later, in other processes, perhaps with
        // another profile: they need only the run metadata.
        let runtime = self::runtime(
            &fx,
            FirecrackerConfig {
                firecracker: fx.path().join("bin/gone"),
                jailer: fx.path().join("bin/gone"),
                ..Default::default()
            },
            releases.clone(),
        );
        let killed = runtime
            .kill("fc-web", Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(killed.status, VmStatus::Exited);
        assert_eq!(killed.exit_code, Some(STANDIN_EXIT_CODE));
        let last = fx.requests("fc-web").last().cloned().unwrap();
        assert_eq!(last["body"]["action_type"], "SendCtrlAltDel");
        assert!(wait_gone(details.process.pid));

        let report = runtime.purge().await.unwrap();
        assert_eq!(report.removed, ["fc-web"], "{report:?}");
        assert!(!jail_dir.exists());
        assert!(!fx.run_cache().join("fc-web").exists());
        assert_eq!(*releases.0.lock().unwrap(), ["fc-web:fctap0"]);
    });
}

#[test]
fn foreground_run_streams_the_console_and_stops_on_request() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let rt = rt();
    rt.block_on(async {
        let runtime = runtime(&fx, fx.config(), Arc::new(Releases::default()));
        let mut s = spec(&fx, "fc-fg", &ns);
        s.daemonize = false;
        s.remove_on_exit = true;
        // A stop request before the VM is up (an early Ctrl-C) is kept.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(()).unwrap();
        let mut console = Vec::new();
        let outcome = runtime
            .run_with(s, &mut console, Interrupts::Channel(rx))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RunOutcome::Exited {
                id: "fc-fg".into(),
                exit_code: Some(STANDIN_EXIT_CODE)
            }
        );
        let console = String::from_utf8(console).unwrap();
        assert!(
            console.contains("stand-in guest fc-fg is up"),
            "{console:?}"
        );
        assert!(!console.contains("firebuild-exit-code"), "{console:?}");
        // --rm: nothing is left, neither run directory nor jail.
        assert!(!fx.run_cache().join("fc-fg").exists());
        assert!(!fx.chroot_base().join("firecracker/fc-fg").exists());
    });
}

#[test]
fn a_killed_vmm_is_shown_exited_and_purged() {
    let fx = Fixture::new();
    let ns = Netns::new();
    let rt = rt();
    rt.block_on(async {
        let runtime = runtime(&fx, fx.config(), Arc::new(Releases::default()));
        let mut sink = Vec::new();
        runtime
            .run(spec(&fx, "fc-dies", &ns), &mut sink)
            .await
            .unwrap();
        let pid = runtime.inspect("fc-dies").await.unwrap().pid.unwrap();
        let p = firebuild_vm::ProcessIdentity::of(pid).unwrap();
        p.signal(rustix::process::Signal::KILL).unwrap();
        assert!(wait_gone(pid as u32));
        let listed = runtime.list().await.unwrap();
        assert_eq!(listed[0].status, VmStatus::Exited);
        assert_eq!(listed[0].exit_code, None);
        assert_eq!(
            runtime.inspect("fc-dies").await.unwrap().vmm_details["running"],
            false
        );
        let report = runtime.purge().await.unwrap();
        assert_eq!(report.removed, ["fc-dies"], "{report:?}");
        assert!(!fx.chroot_base().join("firecracker/fc-dies").exists());
    });
}

#[test]
fn vmm_selection() {
    let fx = Fixture::new();
    let rt = rt();
    rt.block_on(async {
        let kernel = fx.kernel();
        let select = |config: FirecrackerConfig, choice: VmmChoice| {
            let runtime = runtime(&fx, config, Arc::new(Releases::default()));
            let kernel = kernel.clone();
            async move {
                runtime
                    .select_backend(choice, &kernel)
                    .await
                    .map(|b| b.kind())
            }
        };
        assert_eq!(
            select(fx.config(), VmmChoice::Auto).await.unwrap(),
            VmmKind::Firecracker
        );
        let missing = FirecrackerConfig {
            firecracker: fx.path().join("bin/none"),
            ..fx.config()
        };
        // auto falls back to QEMU when Firecracker is not installed ...
        assert_eq!(
            select(missing.clone(), VmmChoice::Auto).await.unwrap(),
            VmmKind::Qemu
        );
        // ... an explicit --vmm firecracker says why it cannot.
        let err = select(missing, VmmChoice::Firecracker).await.unwrap_err();
        match &err {
            VmError::VmmUnavailable { kind, reason } => {
                assert_eq!(*kind, VmmKind::Firecracker);
                assert!(reason.contains("bin/none is missing"), "{reason}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            select(fx.config(), VmmChoice::Qemu).await.unwrap(),
            VmmKind::Qemu
        );
    });
}

#[test]
fn names_firecracker_refuses_fail_before_anything_is_created() {
    let fx = Fixture::new();
    let ns = Netns::new();
    rt().block_on(async {
        let runtime = runtime(&fx, fx.config(), Arc::new(Releases::default()));
        let mut sink = Vec::new();
        let err = runtime
            .run(spec(&fx, "fc_web", &ns), &mut sink)
            .await
            .unwrap_err();
        assert!(matches!(err, VmError::InvalidName { .. }), "{err}");
        assert!(fx.pids().is_empty());
        assert!(std::fs::read_dir(fx.run_cache()).unwrap().next().is_none());
    });
}

#[test]
fn a_start_refused_by_firecracker_removes_the_run_directory() {
    let fx = Fixture::new();
    let ns = Netns::with_tap(None);
    rt().block_on(async {
        let runtime = runtime(&fx, fx.config(), Arc::new(Releases::default()));
        let mut sink = Vec::new();
        let err = runtime
            .run(spec(&fx, "fc-notap", &ns), &mut sink)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/network-interfaces/eth0"),
            "{err}"
        );
        assert!(!fx.run_cache().join("fc-notap").exists());
        assert!(!fx.chroot_base().join("firecracker/fc-notap").exists());
        let pids = fx.pids();
        assert_eq!(pids.len(), 1);
        assert!(wait_gone(pids[0]));
    });
}
