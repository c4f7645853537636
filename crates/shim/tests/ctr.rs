//! The shim under a real containerd, driven with `ctr`: containers run in
//! QEMU (TCG) microVMs. Needs root, `containerd` (with `ctr`),
//! `docker-registry`, QEMU and the test kernel (`FIREBUILD_TEST_KERNEL`).

mod containerd_world;

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use containerd_world::{text, World};

const RUNTIME: &str = "io.containerd.firebuild.v2";

#[test]
fn run_gives_output_exit_status_env_cwd_and_stdin() {
    let w = World::new();
    let out = w.run(&[
        "run", "--rm", "--runtime", RUNTIME, "--env", "GREETING=from-the-vm", "--cwd", "/tmp",
        &w.image, "t-out", "sh", "-c",
        "echo \"out $GREETING\"; pwd; echo to-stderr >&2; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
         echo \"nofile $(ulimit -n)\"; grep NoNewPrivs /proc/self/status; exit 7",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {}\n{}",
        text(&out.stderr),
        w.tail_of_log()
    );
    assert!(stdout.contains("out from-the-vm"), "{stdout}");
    assert!(stdout.contains("/tmp\n"), "{stdout}");
    // PID 1 is the guest init, not the container's process: a VM.
    assert!(stdout.contains("/.firebuild/init"), "{stdout}");
    // The spec's rlimits (containerd's default NOFILE 1024) and
    // noNewPrivileges reach the process.
    assert!(stdout.contains("nofile 1024\n"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(
        text(&out.stderr).contains("to-stderr"),
        "{}",
        text(&out.stderr)
    );

    let mut child = w
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            &w.image,
            "t-in",
            "sh",
            "-c",
            "read line; echo \"got $line\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello over stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    w.assert_success("the container", &out);
    assert_eq!(text(&out.stdout).trim(), "got hello over stdin");

    // With -t the process gets a terminal (ctr needs one itself: script
    // gives it a pseudo-terminal of 40x100).
    let ctr = format!(
        "stty rows 40 cols 100; ctr --address {} run --rm -t --runtime {RUNTIME} {} t-tty sh -c 'tty; stty size'",
        w.path("containerd.sock").display(),
        w.image
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", w.tail_of_log());
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("40 100"), "{stdout}");

    // --rm left nothing: no VM, no mount, no task.
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
    // The image was converted once and reused by the second container.
    let images: Vec<_> = std::fs::read_dir(w.path("cache/shim-rootfs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ext4"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
}

#[test]
fn detached_task_exec_ps_survives_a_containerd_restart_then_kill_and_rm() {
    let mut w = World::new();
    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &w.image,
        "t-bg",
        "sh",
        "-c",
        "echo started > /tmp/state; while :; do sleep 1; done",
    ]);
    let exec = |w: &World, id: &str, script: &str| {
        w.run(&["task", "exec", "--exec-id", id, "t-bg", "sh", "-c", script])
    };
    let out = exec(&w, "e1", "cat /tmp/state; exit 3");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        text(&out.stderr),
        w.tail_of_log()
    );
    assert_eq!(text(&out.stdout).trim(), "started");
    let ps = text(&w.ok(&["task", "ps", "t-bg"]).stdout);
    assert!(ps.lines().count() >= 2, "{ps}");
    assert_eq!(w.vm_dirs().len(), 1, "{:?}", w.vm_dirs());
    // Metrics from the VM's own counters.
    let metrics = text(&w.ok(&["task", "metrics", "t-bg"]).stdout);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(value("memory.usage_in_bytes") > 0, "{metrics}");
    assert!(value("memory.limit_in_bytes") > 0, "{metrics}");
    // Pause and resume the VM.
    w.ok(&["task", "pause", "t-bg"]);
    assert!(text(&w.ok(&["task", "ls"]).stdout).contains("PAUSED"));
    w.ok(&["task", "resume", "t-bg"]);
    assert!(text(&w.ok(&["task", "ls"]).stdout).contains("RUNNING"));

    w.stop_containerd();
    w.start_containerd();
    let ls = text(&w.ok(&["task", "ls"]).stdout);
    assert!(ls.contains("t-bg") && ls.contains("RUNNING"), "{ls}");
    let out = exec(&w, "e2", "echo still here");
    w.assert_success("the container", &out);
    assert_eq!(text(&out.stdout).trim(), "still here");

    w.ok(&["task", "kill", "-s", "SIGKILL", "t-bg"]);
    w.eventually(Duration::from_secs(60), "the task stops", || {
        text(&w.run(&["task", "ls"]).stdout).contains("STOPPED")
    });
    w.ok(&["task", "rm", "t-bg"]);
    w.ok(&["container", "rm", "t-bg"]);
    w.eventually(Duration::from_secs(20), "the shim exits", || {
        w.shims().is_empty()
    });
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
}

#[test]
fn bind_mounts_reach_the_vm_and_bad_ones_are_clear_errors() {
    let w = World::new();
    let conf = w.path("conf");
    std::fs::create_dir_all(conf.join("sub")).unwrap();
    std::fs::write(conf.join("sub/key"), b"configured\n").unwrap();
    std::os::unix::fs::symlink("sub/key", conf.join("link")).unwrap();
    let hosts = w.path("hosts");
    std::fs::write(&hosts, b"10.1.2.3 service-a\n").unwrap();
    let conf_mount = format!(
        "type=bind,src={},dst=/etc/app/conf,options=rbind:ro",
        conf.display()
    );
    let hosts_mount = format!(
        "type=bind,src={},dst=/etc/hosts,options=rbind:rw",
        hosts.display()
    );
    let out = w.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &conf_mount,
        "--mount",
        &hosts_mount,
        &w.image,
        "t-bind",
        "sh",
        "-c",
        "cat /etc/app/conf/sub/key /etc/app/conf/link /etc/hosts; echo changed > /etc/hosts",
    ]);
    w.assert_success("the container", &out);
    assert_eq!(
        text(&out.stdout),
        "configured\nconfigured\n10.1.2.3 service-a\n"
    );
    // The guest's writes stay in the VM.
    assert_eq!(std::fs::read(&hosts).unwrap(), b"10.1.2.3 service-a\n");

    for (mount, expected) in [
        (
            format!(
                "type=bind,src={},dst=/data,options=rbind:rw",
                conf.display()
            ),
            "read-write directory",
        ),
        (
            format!(
                "type=bind,src={},dst=/data,options=rbind:ro",
                w.path("missing").display()
            ),
            "missing",
        ),
    ] {
        let out = w.run(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &mount,
            &w.image,
            "t-bad",
            "true",
        ]);
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("bind mount") && stderr.contains(expected),
            "{stderr}"
        );
        assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
        let _ = w.run(&["container", "rm", "t-bad"]);
    }
    w.eventually(Duration::from_secs(20), "the shims exit", || {
        w.shims().is_empty()
    });
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
}

/// The task's pid as `ctr task ls` shows it (the VMM's).
fn task_pid(w: &World, id: &str) -> i32 {
    let ls = text(&w.ok(&["task", "ls"]).stdout);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id} in {ls}"))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn a_dead_vm_is_an_exit_and_a_dead_shim_is_cleaned_up() {
    let w = World::new();
    let script = "while :; do sleep 1; done";
    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &w.image,
        "t-vm",
        "sh",
        "-c",
        script,
    ]);
    let vmm = task_pid(&w, "t-vm");
    assert!(alive(vmm));
    // The VMM dies under the task: an exit, not a hang.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(vmm).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    w.eventually(Duration::from_secs(30), "the task stops", || {
        text(&w.run(&["task", "ls"]).stdout).contains("STOPPED")
    });
    w.ok(&["task", "rm", "t-vm"]);
    w.ok(&["container", "rm", "t-vm"]);
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());

    // The shim dies: containerd's clean-up (`shim delete`) removes the VM.
    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &w.image,
        "t-shim",
        "sh",
        "-c",
        script,
    ]);
    let vmm = task_pid(&w, "t-shim");
    let shims = w.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(shims[0]).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    w.eventually(Duration::from_secs(60), "the VM is removed", || {
        !alive(vmm) && w.vm_dirs().is_empty()
    });
    let _ = w.run(&["task", "rm", "-f", "t-shim"]);
    w.ok(&["container", "rm", "t-shim"]);
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
}

/// Two network namespaces joined by a veth pair: `client` (10.211.N.1)
/// and `pod` (eth0, 10.211.N.2/24, default route via .1), as a CNI bridge
/// leaves a pod's. Removed on drop.
struct PodNet {
    client: String,
    pod: String,
    subnet: u8,
}

impl PodNet {
    fn new() -> PodNet {
        let id = std::process::id();
        let net = PodNet {
            client: format!("fbt-cl-{id}"),
            pod: format!("fbt-pod-{id}"),
            subnet: (id % 200) as u8 + 20,
        };
        let (c, p, n) = (&net.client, &net.pod, net.subnet);
        for cmd in [
            format!("ip netns add {c}"),
            format!("ip netns add {p}"),
            format!("ip -n {c} link add veth0 type veth peer name eth0 netns {p}"),
            format!("ip -n {c} addr add 10.211.{n}.1/24 dev veth0"),
            format!("ip -n {c} link set veth0 up"),
            format!("ip -n {p} addr add 10.211.{n}.2/24 dev eth0"),
            format!("ip -n {p} link set eth0 up"),
            format!("ip -n {p} link set lo up"),
            format!("ip -n {p} route add default via 10.211.{n}.1"),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
        }
        net
    }

    fn sh(&self, cmd: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .unwrap()
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = self.sh(&format!(
            "ip netns del {}; ip netns del {}",
            self.client, self.pod
        ));
    }
}

#[test]
fn a_joined_network_namespace_reaches_the_vm() {
    let w = World::new();
    let net = PodNet::new();
    let ns = format!("network:/var/run/netns/{}", net.pod);
    w.ok(&[
        "run", "-d", "--runtime", RUNTIME, "--with-ns", &ns, &w.image, "t-net", "sh", "-c",
        "mkdir -p /www && echo served-from-the-vm > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    let url = format!("http://10.211.{}.2/index.html", net.subnet);
    // curl: the host's static busybox wget crashes in getaddrinfo.
    let fetch = format!("ip netns exec {} curl -s -m 2 {url}", net.client);
    w.eventually(
        Duration::from_secs(60),
        "the server in the VM answers",
        || text(&net.sh(&fetch).stdout).contains("served-from-the-vm"),
    );
    // The guest holds the pod's address; the namespace's stack does not
    // see the traffic (it is redirected to the tap).
    let addr = text(
        &w.ok(&[
            "task",
            "exec",
            "--exec-id",
            "ip",
            "t-net",
            "ip",
            "-4",
            "addr",
        ])
        .stdout,
    );
    assert!(
        addr.contains(&format!("10.211.{}.2/24", net.subnet)),
        "{addr}"
    );
    let links = text(&net.sh(&format!("ip -n {} link", net.pod)).stdout);
    assert!(links.contains("fbtap0"), "{links}");

    w.ok(&["task", "kill", "-s", "SIGKILL", "t-net"]);
    w.eventually(Duration::from_secs(60), "the task stops", || {
        text(&w.run(&["task", "ls"]).stdout).contains("STOPPED")
    });
    w.ok(&["task", "rm", "t-net"]);
    w.ok(&["container", "rm", "t-net"]);
    // The namespace is the caller's again: no tap, no redirect.
    let links = text(&net.sh(&format!("ip -n {} link", net.pod)).stdout);
    assert!(!links.contains("fbtap0"), "{links}");
    let qdiscs = text(
        &net.sh(&format!("tc -n {} qdisc show dev eth0", net.pod))
            .stdout,
    );
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
}

/// SIGKILL to task `id`, then its task and container removed.
fn kill_and_remove(w: &World, id: &str) {
    w.ok(&["task", "kill", "-s", "SIGKILL", id]);
    w.eventually(Duration::from_secs(30), &format!("{id} stops"), || {
        text(&w.run(&["task", "ls"]).stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("STOPPED"))
    });
    w.ok(&["task", "rm", id]);
    w.ok(&["container", "rm", id]);
}

/// `ctr run` with the annotations containerd's CRI puts on a pod's
/// containers.
fn pod_args(kind: &str, sandbox: &str) -> Vec<String> {
    vec![
        "--annotation".into(),
        format!("io.kubernetes.cri.container-type={kind}"),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={sandbox}"),
    ]
}

fn ctr_args<'a>(head: &[&'a str], pod: &'a [String], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter()
        .copied()
        .chain(pod.iter().map(String::as_str))
        .chain(tail.iter().copied())
        .collect()
}

#[test]
fn a_pods_containers_share_its_vm_on_roots_of_their_own() {
    let w = World::new();
    let member_image =
        w.push_with_files("tools/member:1", &[("etc/member-image", "member\n")], &[]);
    let sandbox = pod_args("sandbox", "pod1");
    w.ok(&ctr_args(
        &["run", "-d", "--runtime", RUNTIME],
        &sandbox,
        &[
            &w.image,
            "pod1",
            "sh",
            "-c",
            "echo sandbox > /tmp/who; while :; do sleep 1; done",
        ],
    ));
    let boot_id = |id: &str, exec: &str| {
        let out = w.ok(&[
            "task",
            "exec",
            "--exec-id",
            exec,
            id,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ]);
        text(&out.stdout).trim().to_owned()
    };
    let pod_boot = boot_id("pod1", "b0");
    assert_eq!(pod_boot.len(), 36, "{pod_boot}");

    // A container of the pod: its own image as its root, in the pod's VM.
    let member = pod_args("container", "pod1");
    let config = w.path("pod-config");
    std::fs::write(&config, "pod-configured\n").unwrap();
    let config_mount = format!(
        "type=bind,src={},dst=/etc/pod-config,options=rbind:ro",
        config.display()
    );
    let out = w.run(&ctr_args(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &config_mount,
        ],
        &member,
        &[
            &member_image,
            "c1",
            "sh",
            "-c",
            "cat /etc/member-image /etc/pod-config; test -e /tmp/who || echo own-root; \
             echo mine > /tmp/mine; cat /proc/sys/kernel/random/boot_id; exit 5",
        ],
    ));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "stdout: {stdout}\nstderr: {}\n{}",
        text(&out.stderr),
        w.tail_of_log()
    );
    assert!(
        stdout.starts_with("member\npod-configured\nown-root\n"),
        "{stdout}"
    );
    assert!(stdout.contains(&pod_boot), "not the pod's VM: {stdout}");
    // Its writes stayed in its own root.
    let sandbox_view = w.run(&[
        "task",
        "exec",
        "--exec-id",
        "s1",
        "pod1",
        "cat",
        "/tmp/mine",
    ]);
    assert!(
        !sandbox_view.status.success(),
        "{}",
        text(&sandbox_view.stdout)
    );
    assert_eq!(w.vm_dirs().len(), 1, "{:?}", w.vm_dirs());

    // A detached member takes execs in its root; removing it gives its
    // slot back, and the next member takes it.
    w.ok(&ctr_args(
        &["run", "-d", "--runtime", RUNTIME],
        &member,
        &[&member_image, "c2", "sh", "-c", "while :; do sleep 1; done"],
    ));
    let out = w.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "c2",
        "cat",
        "/etc/member-image",
    ]);
    assert_eq!(text(&out.stdout), "member\n");
    assert_eq!(boot_id("c2", "e2"), pod_boot);
    kill_and_remove(&w, "c2");
    let gone = w.run(&[
        "task",
        "exec",
        "--exec-id",
        "s2",
        "pod1",
        "sh",
        "-c",
        "ls /.firebuild-pod",
    ]);
    w.assert_success("listing the pod's roots", &gone);
    assert!(!text(&gone.stdout).contains("c2"), "{}", text(&gone.stdout));
    let out = w.run(&ctr_args(
        &["run", "--rm", "--runtime", RUNTIME],
        &member,
        &[&member_image, "c3", "cat", "/etc/member-image"],
    ));
    w.assert_success("a member after a removed one", &out);
    assert_eq!(text(&out.stdout), "member\n");

    // A container naming a pod that is not there is refused by name.
    let orphan = pod_args("container", "no-such-pod");
    let out = w.run(&ctr_args(
        &["run", "--rm", "--runtime", RUNTIME],
        &orphan,
        &[&member_image, "c4", "true"],
    ));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-pod"),
        "{}",
        text(&out.stderr)
    );
    let _ = w.run(&["container", "rm", "c4"]);

    kill_and_remove(&w, "pod1");
    w.eventually(Duration::from_secs(20), "the shims exit", || {
        w.shims().is_empty()
    });
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
}
