//! Boots the static init in QEMU (TCG) with a busybox root filesystem.
//!
//! Opt-in, because it needs a guest kernel and the static build:
//!
//! ```sh
//! FIREBUILD_VMINIT=$(scripts/build-vminit.sh) \
//! FIREBUILD_TEST_KERNEL=/var/cache/firebuild-ci/kernels/<id>/vmlinux \
//!     cargo test -p firebuild-vminit --test qemu_smoke
//! ```
//!
//! Needs qemu-system-x86, busybox-static and e2fsprogs. Without
//! FIREBUILD_TEST_KERNEL it prints that it was skipped. No libtest
//! harness: the same binary doubles as the MMDS stand-in that QEMU's user
//! network spawns per connection (`--mmds-stdio`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firebuild_metadata::boot::{config_drive, exit_code_from_console, init_failure};
use firebuild_metadata::guest::{MmdsDocument, MmdsLatest};
use firebuild_metadata::GuestMetadata;

const TOKEN: &str = "smoke-token";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One HTTP exchange on stdin/stdout with the MMDS V2 token rules.
fn mmds_stdio(meta_path: &str) {
    let meta = std::fs::read_to_string(meta_path).unwrap_or_default();
    let mut input = BufReader::new(std::io::stdin());
    let mut request = String::new();
    let _ = input.read_line(&mut request);
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if input.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let words: Vec<&str> = request.split_whitespace().collect();
    let (status, body) = match words.get(..2) {
        Some(["PUT", "/latest/api/token"]) if h("x-metadata-token-ttl-seconds").is_some() => {
            ("200 OK", TOKEN.to_string())
        }
        Some(["GET", _]) if h("x-metadata-token") != Some(TOKEN) => {
            ("401 Unauthorized", "No MMDS token provided.".into())
        }
        Some(["GET", "/latest/meta-data"]) if h("accept") == Some("application/json") => {
            ("200 OK", meta)
        }
        _ => ("400 Bad Request", "unexpected request".into()),
    };
    let mut out = std::io::stdout();
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = out.flush();
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running QEMU; killed and reaped when dropped.
struct Vm(Child);
impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    kernel: PathBuf,
    vminit: PathBuf,
    dir: TempDir,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a helper command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    /// A fresh ext4 root: busybox, a passwd with `app`, the init.
    fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.0.join(name);
        for d in ["bin", "etc", ".firebuild", "home/app", "root"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::copy(&self.vminit, root.join(".firebuild/init")).expect("copy vminit");
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
        )
        .expect("group");
        std::fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n").expect("hosts");
        std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).expect("chown");
        let image = self.dir.0.join(format!("{name}.ext4"));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&image)
            .arg("64M"));
        image
    }

    fn drive(&self, name: &str, meta: &GuestMetadata) -> PathBuf {
        let doc = MmdsDocument {
            latest: MmdsLatest {
                meta_data: meta.clone(),
            },
        };
        let path = self.dir.0.join(format!("{name}.img"));
        std::fs::write(&path, config_drive::encode(&doc).expect("encode")).expect("write drive");
        path
    }

    /// Starts QEMU; the console goes to `<name>.log`.
    fn boot(&self, name: &str, root: &Path, append: &str, extra: &[String]) -> (Vm, PathBuf) {
        let log = self.dir.0.join(format!("{name}.log"));
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", "q35", "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/.firebuild/init quiet {append}"
            ))
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", root.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64");
        (Vm(child), log)
    }
}

fn console(log: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Waits for QEMU to exit; returns the console text.
fn finish(mut vm: Vm, log: &Path) -> String {
    let start = Instant::now();
    loop {
        if let Some(status) = vm.0.try_wait().expect("wait for qemu") {
            assert!(status.success(), "qemu failed: {status}\n{}", console(log));
            return console(log);
        }
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "the VM did not power off\n{}",
            console(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_line(log: &Path, prefix: &str) {
    let start = Instant::now();
    while !console(log)
        .lines()
        .any(|l| l.trim_start().starts_with(prefix))
    {
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "no {prefix:?} line\n{}",
            console(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn contains_all(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "console lacks {n:?}:\n{text}");
    }
}

fn argv(script: &str) -> String {
    serde_json::to_string(&["/bin/sh", "-c", script]).expect("json")
}

fn case(name: &str, f: impl FnOnce()) {
    println!("qemu_smoke: {name} ...");
    f();
    println!("qemu_smoke: {name} ok");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--mmds-stdio") {
        mmds_stdio(args.get(2).map_or("", String::as_str));
        return;
    }
    let Some(kernel) = std::env::var_os("FIREBUILD_TEST_KERNEL").map(PathBuf::from) else {
        println!("qemu_smoke: skipped (set FIREBUILD_TEST_KERNEL to a guest kernel)");
        return;
    };
    let vminit = std::env::var_os("FIREBUILD_VMINIT").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-gnu/release/vminit")
        },
        PathBuf::from,
    );
    assert!(
        vminit.is_file(),
        "{} missing: run scripts/build-vminit.sh",
        vminit.display()
    );
    let dir = std::env::temp_dir().join(format!("vminit-qemu-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let env = Env {
        kernel,
        vminit,
        dir: TempDir(dir),
    };

    case(
        "config drive: user, workdir, env, files, keys, network, exit code",
        || {
            let meta: GuestMetadata = serde_json::from_value(serde_json::json!({
            "vmm-id": "smoke-1",
            "local-hostname": "quiet-otter",
            "entrypoint-json": argv(
                "echo \"hello from $(hostname) as $(id) in $(pwd)\"; echo \"G=$GREETING H=$HOME\"; \
                 cat /etc/hosts /etc/resolv.conf /etc/hostname; \
                 stat -c 'mode %a %u:%g %n' /home/app/.ssh /home/app/.ssh/authorized_keys; \
                 ip -4 addr show eth0; ip link show eth0; ip route; exit 3"
            ),
            "env": {"GREETING": "it's fine"},
            "user": "app",
            "workdir": "/srv/work",
            "users": {"app": {"ssh-keys": "ssh-ed25519 AAAAC3Nza smoke@test"}},
            "network": {"interfaces": {"52:54:00:12:34:56": {
                "ip-addr": "10.0.2.15/24", "gateway": "10.0.2.2",
                "nameservers": "10.0.2.3", "mtu": 1400}}},
        }))
        .expect("metadata");
            let root = env.rootfs("task");
            let drive = env.drive("task", &meta);
            let (vm, log) = env.boot(
                "task",
                &root,
                "firebuild.metadata=/dev/vdb",
                &[
                    "-drive".into(),
                    format!("file={},if=virtio,format=raw,readonly=on", drive.display()),
                    "-netdev".into(),
                    "user,id=n0".into(),
                    "-device".into(),
                    "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56".into(),
                ],
            );
            let out = finish(vm, &log);
            contains_all(
            &out,
            &[
                "hello from quiet-otter as uid=1000(app) gid=1000(app) groups=10(wheel) in /srv/work",
                "G=it's fine H=/home/app",
                "10.0.2.15\tquiet-otter",
                "nameserver 10.0.2.3",
                "mode 700 1000:1000 /home/app/.ssh\r",
                "mode 600 1000:1000 /home/app/.ssh/authorized_keys",
                "inet 10.0.2.15/24",
                "mtu 1400",
                "default via 10.0.2.2 dev eth0",
            ],
        );
            assert_eq!(exit_code_from_console(&out), Some(3), "{out}");
        },
    );

    case(
        "ctrl-alt-del stops the entrypoint with its STOPSIGNAL",
        || {
            let meta: GuestMetadata = serde_json::from_value(serde_json::json!({
                "vmm-id": "smoke-2",
                "entrypoint-json": argv(
                    "trap 'echo got USR1; exit 42' USR1; echo ready; while :; do sleep 1; done"
                ),
                "stop-signal": "SIGUSR1",
                "stop-timeout-seconds": 60,
            }))
            .expect("metadata");
            let root = env.rootfs("stop");
            let drive = env.drive("stop", &meta);
            let monitor = env.dir.0.join("stop.monitor");
            let (vm, log) = env.boot(
                "stop",
                &root,
                "firebuild.metadata=/dev/vdb",
                &[
                    "-drive".into(),
                    format!("file={},if=virtio,format=raw,readonly=on", drive.display()),
                    "-monitor".into(),
                    format!("unix:{},server=on,wait=off", monitor.display()),
                ],
            );
            wait_for_line(&log, "ready");
            let mut mon = std::os::unix::net::UnixStream::connect(&monitor).expect("monitor");
            mon.write_all(b"sendkey ctrl-alt-delete\n")
                .expect("sendkey");
            let out = finish(vm, &log);
            contains_all(&out, &["got USR1"]);
            assert_eq!(exit_code_from_console(&out), Some(42), "{out}");
        },
    );

    case("MMDS V2 through a link-local bootstrap address", || {
        let meta = serde_json::json!({
            "vmm-id": "smoke-3",
            "local-hostname": "mmds-vm",
            "entrypoint-json": argv("echo \"via mmds on $(hostname)\"; ip -4 addr show eth0"),
            "network": {"interfaces": {"eth0": {"ip-addr": "169.254.0.15/16", "gateway": "169.254.0.2"}}},
        });
        let meta_path = env.dir.0.join("mmds.json");
        std::fs::write(&meta_path, meta.to_string()).expect("write metadata");
        let me = std::env::current_exe().expect("current exe");
        let root = env.rootfs("mmds");
        let (vm, log) = env.boot(
            "mmds",
            &root,
            "firebuild.metadata=mmds",
            &[
                "-netdev".into(),
                format!(
                    "user,id=n0,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.100,\
                     guestfwd=tcp:169.254.169.254:80-cmd:{} --mmds-stdio {}",
                    me.display(),
                    meta_path.display()
                ),
                "-device".into(),
                "virtio-net-pci,netdev=n0".into(),
            ],
        );
        let out = finish(vm, &log);
        contains_all(&out, &["via mmds on mmds-vm", "inet 169.254.0.15/16"]);
        assert_eq!(exit_code_from_console(&out), Some(0), "{out}");
    });

    case("a missing program is a start failure", || {
        let meta = GuestMetadata {
            vmm_id: "smoke-4".into(),
            entrypoint_json: r#"["nosuchprog"]"#.into(),
            ..Default::default()
        };
        let root = env.rootfs("fail");
        let drive = env.drive("fail", &meta);
        let (vm, log) = env.boot(
            "fail",
            &root,
            "firebuild.metadata=/dev/vdb",
            &[
                "-drive".into(),
                format!("file={},if=virtio,format=raw,readonly=on", drive.display()),
            ],
        );
        let out = finish(vm, &log);
        contains_all(
            &out,
            &["\"nosuchprog\": executable file not found in $PATH"],
        );
        assert_eq!(
            exit_code_from_console(&out),
            Some(init_failure::START),
            "{out}"
        );
    });
}
