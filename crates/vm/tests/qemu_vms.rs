//! Real microVMs under QEMU (TCG): the runtime end to end with the CI
//! kernel, the static guest init and a busybox root filesystem.
//!
//! Needs: qemu-system-x86, busybox-static, e2fsprogs, iproute2; root.

mod support;

use std::time::Duration;

use firebuild_vm::{AccelPolicy, Interrupts, RunOutcome, VmError, VmStatus, VmmChoice, VmmKind};
use support::*;
use tokio::sync::mpsc;

const BOOT: Duration = Duration::from_secs(120);

fn no_interrupts() -> Interrupts {
    // The sender is dropped: no stop requests.
    Interrupts::Channel(mpsc::unbounded_channel().1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_entrypoint_env_hostname_ssh_and_exit_code() {
    let world = World::new();
    let script = r#"
echo first-line
echo "arg=$1"
echo "env A=$A B=$B C=$C IMG=$IMG"
echo "host=$(hostname)"
grep -q "$(hostname)" /etc/hosts && echo hosts-ok
stat -c '%a %U %n' /home/app/.ssh /home/app/.ssh/authorized_keys
cat /home/app/.ssh/authorized_keys
exit 3
"#;
    let mut img = image(&["/bin/sh", "-c", script, "entry"], &["cmd-arg"]);
    img.entrypoint_info.env.insert("IMG".into(), "image".into());
    img.entrypoint_info.env.insert("A".into(), "image".into());
    let mut spec = world.spec(img);
    let env_file = world.dir.path().join("run.env");
    std::fs::write(&env_file, "# comment\nA=file\nB=file\n").unwrap();
    spec.env_files = vec![env_file];
    spec.env = vec!["B=arg".into(), "C=arg".into()];
    spec.hostname = Some("fb-test-host".into());
    spec.name = Some("fg".into());
    let key = world.dir.path().join("id_ed25519.pub");
    std::fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey test@firebuild\n",
    )
    .unwrap();
    spec.identity_files = vec![key];
    spec.ssh_user = "app".into();

    let mut out: Vec<u8> = Vec::new();
    let outcome = tokio::time::timeout(
        BOOT,
        world.runtime.run_with(spec, &mut out, no_interrupts()),
    )
    .await
    .expect("the VM did not exit in time")
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        outcome,
        RunOutcome::Exited {
            id: "fg".into(),
            exit_code: Some(3)
        },
        "console:\n{text}"
    );
    for expected in [
        "first-line",
        "arg=cmd-arg",
        "env A=file B=arg C=arg IMG=image",
        "host=fb-test-host",
        "hosts-ok",
        "700 app /home/app/.ssh",
        "600 app /home/app/.ssh/authorized_keys",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey test@firebuild",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("firebuild-exit-code"),
        "marker shown:\n{text}"
    );

    // The VM is kept (no --rm) and listed as exited with its code.
    let vms = world.runtime.list().await.unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].status, VmStatus::Exited);
    assert_eq!(vms[0].exit_code, Some(3));
    assert_eq!(vms[0].vmm, VmmKind::Qemu);
    assert_eq!(vms[0].hostname, "fb-test-host");
    assert!(console_log(&vms[0]).contains("firebuild-exit-code=3"));
    // The stored image was never written.
    let process = vms[0].process().unwrap();
    let report = world.runtime.purge().await.unwrap();
    assert_eq!(report.removed, ["fg"]);
    assert!(world.run_cache_entries().is_empty());
    assert_gone(&process, &world.run_cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_only_image_with_auto_vmm_then_cmd_override_and_ctrl_c() {
    // `auto` on QEMU with accelerator probing: wherever KVM cannot boot the
    // kernel (as on our nested hosts) this must still end up booting.
    let world = World::with_accel(AccelPolicy::Auto);
    let img = image(&[], &["/bin/echo", "from-cmd"]);

    let mut spec = world.spec(img.clone());
    spec.vmm = VmmChoice::Auto;
    spec.remove_on_exit = true;
    let mut out: Vec<u8> = Vec::new();
    let outcome = tokio::time::timeout(
        BOOT,
        world.runtime.run_with(spec, &mut out, no_interrupts()),
    )
    .await
    .expect("the VM did not exit in time")
    .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        matches!(
            outcome,
            RunOutcome::Exited {
                exit_code: Some(0),
                ..
            }
        ),
        "{outcome:?}\n{text}"
    );
    assert!(text.contains("from-cmd"), "{text}");
    // --rm: nothing left.
    assert!(
        world.run_cache_entries().is_empty(),
        "{:?}",
        world.run_cache_entries()
    );

    // `-- CMD` replaces CMD; Ctrl-C (a stop request) reaches the entrypoint
    // as the image's STOPSIGNAL (default SIGTERM).
    let mut spec = world.spec(img);
    spec.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "trap 'echo got-term; exit 5' TERM; echo overridden-ready; while :; do sleep 1; done"
            .into(),
    ]);
    spec.name = Some("ctrlc".into());
    let sink = SharedSink::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = {
        let sink = sink.clone();
        tokio::spawn(async move {
            if eventually(BOOT, || sink.text().contains("overridden-ready")).await {
                tx.send(()).unwrap();
            }
        })
    };
    let mut writer = sink.clone();
    let outcome = tokio::time::timeout(
        BOOT,
        world
            .runtime
            .run_with(spec, &mut writer, Interrupts::Channel(rx)),
    )
    .await
    .expect("the VM did not stop in time")
    .unwrap();
    watcher.await.unwrap();
    let text = sink.text();
    assert_eq!(
        outcome,
        RunOutcome::Exited {
            id: "ctrlc".into(),
            exit_code: Some(5)
        },
        "{text}"
    );
    assert!(text.contains("got-term"), "{text}");
    assert!(!text.contains("from-cmd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonized_vm_stop_signal_ls_inspect_logs_kill_purge() {
    let world = World::new();
    let mut img = shell_image(
        "trap 'echo got-usr1; exit 0' USR1; echo daemon-ready; while :; do sleep 1; done",
    );
    img.stop_signal = Some("SIGUSR1".into());
    let mut spec = world.spec(img);
    spec.daemonize = true;
    let mut out: Vec<u8> = Vec::new();
    let outcome = world
        .runtime
        .run_with(spec, &mut out, no_interrupts())
        .await
        .unwrap();
    let RunOutcome::Detached { id } = outcome else {
        panic!("not detached: {outcome:?}");
    };
    assert!(out.is_empty());
    assert_eq!(id.len(), 20);

    // ls: running, with its pid; inspect: backend details.
    let vms = world.runtime.list().await.unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].id, id);
    assert_eq!(vms[0].status, VmStatus::Running);
    let process = vms[0].process().unwrap();
    assert!(process.is_alive());
    let inspected = world.runtime.inspect(&id).await.unwrap();
    assert_eq!(inspected.vmm_details["accel"], "tcg");
    assert_eq!(inspected.vmm_details["machine"], "q35");
    assert_eq!(inspected.vmm_details["running"], true);
    assert!(!inspected.name.is_empty());
    let json = serde_json::to_value(&inspected).unwrap();
    assert_eq!(json["status"], "running");
    // The run directory is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&inspected.run_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    // Wait for the entrypoint, following the log meanwhile.
    let runtime = world.runtime.clone();
    let follow_id = id.clone();
    let follower = tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        runtime.logs(&follow_id, true, &mut buf).await.map(|()| buf)
    });
    let md = inspected.clone();
    assert!(
        eventually(BOOT, || console_log(&md).contains("daemon-ready")).await,
        "{}",
        console_log(&md)
    );

    // kill: STOPSIGNAL (SIGUSR1) reaches the entrypoint, which exits 0.
    let killed = world.runtime.kill(&id, None).await.unwrap();
    assert_eq!(killed.status, VmStatus::Exited);
    assert_eq!(killed.exit_code, Some(0), "{}", console_log(&killed));
    let followed = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("logs -f did not end with the VM")
        .unwrap()
        .unwrap();
    let followed = String::from_utf8_lossy(&followed);
    assert!(
        followed.contains("daemon-ready") && followed.contains("got-usr1"),
        "{followed}"
    );
    let mut logs: Vec<u8> = Vec::new();
    world.runtime.logs(&id, false, &mut logs).await.unwrap();
    assert!(String::from_utf8_lossy(&logs).contains("got-usr1"));

    // kill again: already exited, no error.
    assert_eq!(
        world.runtime.kill(&id, None).await.unwrap().status,
        VmStatus::Exited
    );

    let report = world.runtime.purge().await.unwrap();
    assert_eq!(report.removed, vec![id.clone()]);
    assert!(report.failed.is_empty());
    assert!(world.run_cache_entries().is_empty());
    assert_gone(&process, &world.run_cache);
    assert!(matches!(
        world.runtime.inspect(&id).await.unwrap_err(),
        VmError::NotFound { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_at_once_and_a_killed_vmm() {
    let world = World::new();
    let img = shell_image("echo up-$0; while :; do sleep 1; done");
    let mut ids = Vec::new();
    for name in ["vm-a", "vm-b"] {
        let mut spec = world.spec(img.clone());
        spec.daemonize = true;
        spec.name = Some(name.into());
        spec.shutdown_timeout = Duration::from_secs(10);
        let mut out: Vec<u8> = Vec::new();
        match world
            .runtime
            .run_with(spec, &mut out, no_interrupts())
            .await
            .unwrap()
        {
            RunOutcome::Detached { id } => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, ["vm-a", "vm-b"]);
    let vms = world.runtime.list().await.unwrap();
    assert_eq!(vms.len(), 2);
    assert!(vms.iter().all(|v| v.status == VmStatus::Running));
    let (a, b) = (vms[0].clone(), vms[1].clone());
    assert_ne!(a.pid, b.pid);
    // Each QEMU runs under its seccomp filter, in a session of its own.
    for vm in [&a, &b] {
        let pid = vm.pid.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
        assert_eq!(
            rustix::process::getsid(rustix::process::Pid::from_raw(pid))
                .unwrap()
                .as_raw_nonzero()
                .get(),
            pid
        );
        assert!(cmdline(pid).contains("spawn=deny"), "{}", cmdline(pid));
        // Its disks are open files it inherited (it cannot open paths).
        assert!(
            cmdline(pid).contains("id=rootfs,file=/dev/fdset/1,"),
            "{}",
            cmdline(pid)
        );
    }
    // ... as an unprivileged uid/gid of its own, with no capabilities,
    // chrooted into an empty directory of its run directory.
    let mut uids = Vec::new();
    for vm in [&a, &b] {
        let pid = vm.pid.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let uid = vm.vmm_details["uid"].as_u64().unwrap() as u32;
        let range = firebuild_vm::host_ids::DEFAULT_QEMU_RANGE;
        assert!((range.first..range.first + range.count).contains(&uid));
        let id = uid.to_string();
        assert_eq!(field("Uid:"), [id.as_str(); 4].join(" "), "{status}");
        assert_eq!(field("Gid:"), [id.as_str(); 4].join(" "), "{status}");
        assert_eq!(field("Groups:"), id, "{status}");
        assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
            vm.run_dir.join("vmm-root")
        );
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1]);
    for vm in [&a, &b] {
        assert!(
            eventually(BOOT, || console_log(vm).contains("up-")).await,
            "{}: {}",
            vm.id,
            console_log(vm)
        );
    }

    // kill -9 of one VMM: ls shows it exited (no exit code), the other runs.
    let pa = a.process().unwrap();
    assert!(pa.signal(rustix::process::Signal::KILL).unwrap());
    assert!(
        pa.wait_exit(Duration::from_secs(10), Duration::from_millis(20))
            .await
    );
    let vms = world.runtime.list().await.unwrap();
    let find = |id: &str| vms.iter().find(|v| v.id == id).unwrap().clone();
    assert_eq!(find("vm-a").status, VmStatus::Exited);
    assert_eq!(find("vm-a").exit_code, None);
    assert_eq!(find("vm-b").status, VmStatus::Running);

    // purge removes only the dead one.
    let report = world.runtime.purge().await.unwrap();
    assert_eq!(report.removed, ["vm-a"]);
    assert_eq!(world.run_cache_entries(), ["vm-b"]);

    // kill with no grace period: the forced path (QMP quit, then SIGKILL).
    let killed = world
        .runtime
        .kill("vm-b", Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(killed.status, VmStatus::Exited);
    assert!(!b.process().unwrap().is_alive());
    assert_eq!(world.runtime.purge().await.unwrap().removed, ["vm-b"]);
    assert!(world.run_cache_entries().is_empty());
    assert_gone(&pa, &world.run_cache);
    assert_gone(&b.process().unwrap(), &world.run_cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_and_starts_nothing() {
    let world = World::new();
    let img = shell_image("echo never");
    let qemu_before = qemu_pids();

    // Unknown kernel.
    let mut spec = world.spec(img.clone());
    spec.kernel = world.dir.path().join("vmlinux-missing");
    let err = world.runtime.prepare(spec).await.err().unwrap();
    assert!(matches!(err, VmError::Kernel { .. }), "{err}");
    assert!(err.to_string().contains("vmlinux-missing"));

    // Bad env file: named with its line.
    let mut spec = world.spec(img.clone());
    let bad = world.dir.path().join("bad.env");
    std::fs::write(&bad, "GOOD=1\n=novalue\n").unwrap();
    spec.env_files = vec![bad];
    let mut out: Vec<u8> = Vec::new();
    let err = world
        .runtime
        .run_with(spec, &mut out, no_interrupts())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad.env, line 2"), "{err}");

    // Missing env file.
    let mut spec = world.spec(img.clone());
    spec.env_files = vec![world.dir.path().join("absent.env")];
    let err = world.runtime.prepare(spec).await.err().unwrap();
    assert!(matches!(err, VmError::EnvFileRead { .. }), "{err}");

    // Name clash: the second run fails, the first VM is untouched.
    let mut spec = world.spec(img.clone());
    spec.name = Some("taken".into());
    let first = world.runtime.prepare(spec.clone()).await.unwrap();
    let err = world
        .runtime
        .run_with(spec, &mut out, no_interrupts())
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::NameClash { .. }), "{err}");
    assert!(err.to_string().contains("taken"));
    assert_eq!(world.run_cache_entries(), ["taken"]);
    drop(first);

    // A kernel QEMU refuses: its own message, nothing left running.
    let mut spec = world.spec(img.clone());
    let garbage = world.dir.path().join("vmlinux-garbage");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    spec.kernel = garbage;
    let err = world
        .runtime
        .run_with(spec, &mut out, no_interrupts())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("QEMU exited with") && err.contains("invalid kernel header"),
        "{err}"
    );

    // A network namespace that does not exist.
    let mut spec = world.spec(img);
    spec.network_choice = firebuild_vm::NetworkChoice::Attached(firebuild_vm::NetworkAttachment {
        netns: "/var/run/netns/firebuild-no-such-ns".into(),
        tap: "tap0".into(),
        guest_mac: "02:fb:00:00:00:09".into(),
        ip: "10.99.0.2".parse().unwrap(),
        prefix: 24,
        gateway: None,
        nameservers: vec![],
        mtu: None,
        network_name: String::new(),
        release_data: serde_json::Value::Null,
    });
    let err = world.runtime.prepare(spec).await.err().unwrap();
    assert!(matches!(err, VmError::Netns { .. }), "{err}");

    assert!(
        world.run_cache_entries().is_empty(),
        "{:?}",
        world.run_cache_entries()
    );
    assert!(out.is_empty());
    // No QEMU was started by any of this (other tests' VMs may come and go,
    // so only look for new ones using this test's run cache).
    let started: Vec<_> = qemu_pids()
        .into_iter()
        .filter(|p| !qemu_before.contains(p))
        .filter(|p| cmdline(*p).contains(&*world.run_cache.to_string_lossy()))
        .collect();
    assert!(started.is_empty(), "QEMU started: {started:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cut_short_leaves_no_qemu_running() {
    let world = World::new();
    let mut spec = world.spec(image(&["/bin/sleep"], &["600"]));
    spec.name = Some("cut-short".into());
    spec.daemonize = true;
    let pid_file = world.run_cache.join("cut-short").join("vmm.pid");
    // QEMU writes its pid file early, well before it serves QMP: drop the
    // start then, as a Ctrl-C or a cancelled task would.
    let mut sink = std::io::sink();
    let start = world.runtime.run_with(spec, &mut sink, no_interrupts());
    let seen = async {
        loop {
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if let Ok(pid) = text.trim().parse::<i32>() {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let pid = tokio::select! {
        done = start => panic!("QEMU was up before its pid file was seen: {done:?}"),
        pid = seen => pid,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cmdline(pid).contains("cut-short") {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        world.run_cache_entries().is_empty(),
        "{:?}",
        world.run_cache_entries()
    );
}

fn qemu_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let args = cmdline(*pid);
            let argv0 = args.split(' ').next().unwrap_or_default();
            argv0
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .starts_with("qemu-system")
        })
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// A network namespace with a tap device made by the test, removed on drop.
struct TestNetns {
    name: String,
    path: std::path::PathBuf,
}

impl TestNetns {
    fn new(tap: &str, host_cidr: &str) -> Self {
        let name = format!("fbvm-test-{}", std::process::id());
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        let ns = TestNetns {
            path: format!("/var/run/netns/{name}").into(),
            name: name.clone(),
        };
        run(&["-n", &name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        run(&["-n", &name, "addr", "add", host_cidr, "dev", tap]);
        run(&["-n", &name, "link", "set", tap, "up"]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Records what the runtime asks the network layer to release.
#[derive(Default)]
struct RecordingReleaser(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl firebuild_vm::NetworkReleaser for RecordingReleaser {
    async fn release(
        &self,
        vm: &firebuild_vm::RunMetadata,
        attachment: &firebuild_vm::NetworkAttachment,
    ) -> Result<(), firebuild_vm::NetworkError> {
        self.0.lock().unwrap().push(format!(
            "{} {} {}",
            vm.id, attachment.tap, attachment.release_data
        ));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_attachment_runs_qemu_in_the_netns_on_its_tap() {
    let world = World::new();
    let netns = TestNetns::new("fbtap0", "10.77.0.1/24");
    let releaser = std::sync::Arc::new(RecordingReleaser::default());
    let runtime = firebuild_vm::Runtime::with_backends(
        &world.run_cache,
        vec![std::sync::Arc::new(firebuild_vm::QemuVmm::new(
            firebuild_vm::QemuConfig {
                accel: AccelPolicy::Tcg,
                ..Default::default()
            },
        ))],
    )
    .with_network_releaser(releaser.clone());

    let img = shell_image(
        "for i in 1 2 3 4 5 6 7 8; do ping -c 1 -W 2 10.77.0.1 >/dev/null 2>&1 && { echo ping-ok; ip -4 addr show eth0; exit 0; }; sleep 1; done; ip addr; exit 1",
    );
    let mut spec = world.spec(img);
    spec.name = Some("netvm".into());
    spec.daemonize = true;
    spec.remove_on_exit = true;
    let mut prepared = runtime.prepare(spec).await.unwrap();
    // The two-step flow: the network is set up once the id is known.
    prepared
        .attach_network(firebuild_vm::NetworkAttachment {
            netns: netns.path.clone(),
            tap: "fbtap0".into(),
            guest_mac: "02:fb:00:77:00:02".into(),
            ip: "10.77.0.2".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.77.0.1".parse().unwrap()),
            nameservers: vec!["10.77.0.1".parse().unwrap()],
            mtu: None,
            network_name: "test-net".into(),
            release_data: serde_json::json!({"container": "netvm"}),
        })
        .unwrap();
    let started = runtime.launch(prepared).await.unwrap();
    assert_eq!(started.ip.as_deref(), Some("10.77.0.2"));
    assert!(started
        .kernel_args
        .contains("ip=10.77.0.2::10.77.0.1:255.255.255.0:"));
    // QEMU runs inside the VM's network namespace.
    let vmm_ns = std::fs::metadata(format!("/proc/{}/ns/net", started.pid.unwrap()))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let want_ns = std::fs::metadata(&netns.path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(vmm_ns.unwrap(), want_ns.unwrap());

    let exited = runtime.wait("netvm", Some(BOOT)).await.unwrap();
    let log = console_log(&exited);
    assert_eq!(exited.exit_code, Some(0), "{log}");
    assert!(
        log.contains("ping-ok") && log.contains("10.77.0.2/24"),
        "{log}"
    );
    // The daemonless `--rm` clean-up happens on the next ls, and releases
    // the network through the hook.
    assert!(runtime.list().await.is_ok_and(|v| v.is_empty()));
    assert!(world.run_cache_entries().is_empty());
    assert_eq!(
        *releaser.0.lock().unwrap(),
        ["netvm fbtap0 {\"container\":\"netvm\"}"]
    );
}
