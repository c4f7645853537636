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
        "echo \"out $GREETING\"; pwd; echo to-stderr >&2; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 7",
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
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        w.tail_of_log()
    );
    assert_eq!(text(&out.stdout).trim(), "got hello over stdin");

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

    w.stop_containerd();
    w.start_containerd();
    let ls = text(&w.ok(&["task", "ls"]).stdout);
    assert!(
        ls.contains("t-bg") && ls.contains("RUNNING"),
        "{ls}\n{}",
        w.containerd_log()
            .lines()
            .filter(|l| !l.contains("loading plugin"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = exec(&w, "e2", "echo still here");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        w.tail_of_log()
    );
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
fn a_bind_mount_is_a_clear_error_and_leaves_nothing() {
    let w = World::new();
    let data = w.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        data.display()
    );
    let out = w.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &mount,
        &w.image,
        "t-bind",
        "true",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bind mount") && stderr.contains("/data"),
        "{stderr}"
    );
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
    let _ = w.run(&["container", "rm", "t-bind"]);
    w.eventually(Duration::from_secs(20), "the shim exits", || {
        w.shims().is_empty()
    });
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
}
