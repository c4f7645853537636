//! `rootfs --isolation microvm` through the real binary: RUN steps in
//! microVMs under QEMU (TCG), their diffs back in the step cache, the
//! image's contents and owners as the sandbox makes them, hostile steps
//! contained, and nothing left behind.
//!
//! Needs root, Debian's `busybox-static`, `qemu-system-x86`, `e2fsprogs`,
//! the guest kernel and the static guest init (see tests/agent.rs).

use std::path::Path;
use std::process::Command;

use firebuild_vm::testing;

mod vm_world;

use vm_world::{text, World};

/// `debugfs -R CMD` on an image; its stdout.
fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .unwrap();
    text(&out.stdout)
}

fn write_context(w: &World, dockerfile: &str) -> std::path::PathBuf {
    let ctx = w.path("context");
    if !ctx.join("tree").exists() {
        testing::busybox_tree(&ctx.join("tree"));
        std::fs::write(ctx.join("tree/etc/removed"), "from the first layer\n").unwrap();
        std::fs::create_dir_all(ctx.join("tree/srv/old")).unwrap();
        std::fs::write(ctx.join("tree/srv/old/file"), "old\n").unwrap();
    }
    let path = ctx.join("Dockerfile");
    std::fs::write(&path, dockerfile).unwrap();
    path
}

fn build(w: &World, dockerfile: &Path, tag: &str, flags: &[&str]) -> std::process::Output {
    let mut rest = vec![
        "--dockerfile",
        dockerfile.to_str().unwrap(),
        "--tag",
        tag,
        "--isolation",
        "microvm",
    ];
    rest.extend_from_slice(flags);
    w.run(&["rootfs"], &rest)
}

fn assert_nothing_left(w: &World) {
    let vms = w.path("cache").join("step-vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "step VMs left: {left:?}");
    let qemu = Command::new("pgrep")
        .args(["-f", &vms.display().to_string()])
        .output()
        .unwrap();
    assert!(qemu.stdout.is_empty(), "a step VM's QEMU still runs");
}

#[test]
fn run_steps_run_in_microvms_and_their_diffs_become_the_layers() {
    let w = World::new();
    let dockerfile = write_context(
        &w,
        "FROM scratch\n\
         COPY tree/ /\n\
         ENV PATH=/bin\n\
         RUN uname -r > /kernel-release && echo data > /owned && chown 1000:1000 /owned \
             && rm /etc/removed && rm -r /srv/old && mkdir -p /srv/old && echo new > /srv/old/new \
             && mkfifo /fifo && echo temp > /tmp/kept \
             && mkdir -p /opt/net && mknod -m 640 /opt/net/tun c 10 200 && chown 0:5 /opt/net/tun \
             && mknod /opt/net/blk b 7 0 && mknod /dev/in-dev c 1 3\n\
         USER app\n\
         WORKDIR /home/app/work\n\
         RUN <<EOF\n\
         id -u > mine\n\
         cat /owned >> mine\n\
         EOF\n",
    );
    let out = build(&w, &dockerfile, "fbt/microvm:1", &["--network", "none"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let image = w.path("rootfs").join("fbt/microvm/1/rootfs");

    // RUN saw the guest kernel, not this host's.
    let release = debugfs(&image, "cat /kernel-release");
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    assert!(!release.trim().is_empty());
    assert_ne!(release.trim(), host.trim(), "RUN ran on the host kernel");
    // Owners, removals (whiteouts), an opaque directory, a FIFO, /tmp.
    let owned = debugfs(&image, "stat /owned");
    assert!(owned.contains("User:  1000   Group:  1000"), "{owned}");
    assert!(
        !image_has(&image, "/etc/removed"),
        "the whiteout removed it"
    );
    assert!(
        !image_has(&image, "/srv/old/file"),
        "the opaque dir hides the old file"
    );
    assert_eq!(debugfs(&image, "cat /srv/old/new").trim(), "new");
    assert!(debugfs(&image, "stat /fifo").contains("Type: FIFO"));
    assert_eq!(debugfs(&image, "cat /tmp/kept").trim(), "temp");
    // Device nodes, as Docker keeps them; never a node on the host.
    let tun = debugfs(&image, "stat /opt/net/tun");
    assert!(tun.contains("Type: character special"), "{tun}");
    assert!(
        tun.contains("Mode:  0640") && tun.contains("Group:     5"),
        "{tun}"
    );
    assert!(tun.contains("Device major/minor number: 10:200"), "{tun}");
    let blk = debugfs(&image, "stat /opt/net/blk");
    assert!(blk.contains("Type: block special"), "{blk}");
    assert!(blk.contains("Device major/minor number: 07:00"), "{blk}");
    assert!(
        !image_has(&image, "/dev/in-dev"),
        "/dev stays out of layers"
    );
    assert_eq!(
        host_device_nodes(&w.path("")),
        Vec::<std::path::PathBuf>::new()
    );
    // USER, WORKDIR and a heredoc.
    assert_eq!(debugfs(&image, "cat /home/app/work/mine"), "1000\ndata\n");
    // Nothing of the VM's own in the layers.
    for path in [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/dev/pipes",
        "/dev/.firebuild-scratch",
    ] {
        assert!(!image_has(&image, path), "{path} leaked into the image");
    }
    assert_nothing_left(&w);

    // The same steps again come from the cache: no VM boots.
    let again = build(&w, &dockerfile, "fbt/microvm:2", &["--network", "none"]);
    let log = text(&again.stderr);
    assert!(again.status.success(), "{log}");
    let field = |name: &str| -> String {
        let at = log
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {log}"));
        log[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect()
    };
    assert_eq!(
        field("steps"),
        field("cached"),
        "every step from the cache: {log}"
    );
}

/// Every device node under `dir` but whiteouts (character 0/0).
fn host_device_nodes(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_dir() {
            found.extend(host_device_nodes(&e.path()));
        } else if ft.is_block_device() || (ft.is_char_device() && md.rdev() != 0) {
            found.push(e.path());
        }
    }
    found
}

/// Whether `path` exists in the image (debugfs prints an error otherwise).
fn image_has(image: &Path, path: &str) -> bool {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .unwrap();
    !text(&out.stderr).contains("File not found")
}

#[test]
fn a_failing_step_names_its_line_and_leaves_no_vm() {
    let w = World::new();
    let dockerfile = write_context(
        &w,
        "FROM scratch\nCOPY tree/ /\nENV PATH=/bin\nRUN echo about to fail && exit 3\n",
    );
    let out = build(
        &w,
        &dockerfile,
        "fbt/microvm-fail:1",
        &["--network", "none"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Dockerfile:4:") && err.contains("status 3"),
        "{err}"
    );
    assert!(err.contains("about to fail"), "the output tail: {err}");
    assert!(!w.path("rootfs").join("fbt/microvm-fail").exists());
    assert_nothing_left(&w);
}

/// Two network namespaces standing in for this host and the internet: the
/// build runs in "host", whose default route leads to "outside". Removed
/// (with the bridge, veths and rules made in them) on drop.
struct Hosts {
    host: std::path::PathBuf,
    outside: std::path::PathBuf,
    names: [String; 2],
}

const HOST_UPLINK: &str = "10.198.0.1";
const OUTSIDE_ADDR: &str = "10.198.0.2";

impl Hosts {
    fn new() -> Hosts {
        let pid = std::process::id();
        let names = [format!("fbt-bh-{pid}"), format!("fbt-bo-{pid}")];
        let hosts = Hosts {
            host: firebuild_cni::netns::netns_path(&names[0]),
            outside: firebuild_cni::netns::netns_path(&names[1]),
            names,
        };
        let [h, o] = &hosts.names;
        for args in [
            vec!["netns", "add", h],
            vec!["netns", "add", o],
            vec!["-n", h, "link", "set", "lo", "up"],
            vec!["-n", o, "link", "set", "lo", "up"],
            vec![
                "-n", h, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns",
                o,
            ],
            vec!["-n", h, "addr", "add", "10.198.0.1/24", "dev", "uplink"],
            vec!["-n", o, "addr", "add", "10.198.0.2/24", "dev", "eth0"],
            vec!["-n", h, "link", "set", "uplink", "up"],
            vec!["-n", o, "link", "set", "eth0", "up"],
            vec!["-n", h, "route", "add", "default", "via", OUTSIDE_ADDR],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        }
        // A host whose VMs reach the outside routes for them.
        let forward = Command::new("ip")
            .args(["netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status()
            .unwrap();
        assert!(forward.success());
        hosts
    }

    /// A service on `addr` inside `ns` that answers every connection with
    /// `token` and hangs up (busybox nc only exits when the peer closes).
    fn serve(ns: &Path, addr: &str, token: &str) -> Service {
        let listener =
            firebuild_cni::netns::in_netns(Some(ns), || std::net::TcpListener::bind(addr))
                .unwrap()
                .unwrap();
        let port = listener.local_addr().unwrap().port();
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = reached.clone();
        let token = format!("{token}\n");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = std::io::Write::write_all(&mut conn, token.as_bytes());
            }
        });
        Service { port, reached }
    }
}

struct Service {
    port: u16,
    reached: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Service {
    fn was_reached(&self) -> bool {
        self.reached.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[test]
fn hostile_steps_stay_in_their_microvm_and_reach_the_outside_not_the_host() {
    let w = World::new();
    let hosts = Hosts::new();
    let host_token = format!("host-service-{}", std::process::id());
    let outside_token = format!("outside-service-{}", std::process::id());
    let host_service = Hosts::serve(&hosts.host, "0.0.0.0:0", &host_token);
    let host_port = host_service.port;
    let outside_service =
        Hosts::serve(&hosts.outside, &format!("{OUTSIDE_ADDR}:0"), &outside_token);
    let outside_port = outside_service.port;
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let dockerfile = write_context(
        &w,
        &format!(
            "FROM scratch\nCOPY tree/ /\nENV PATH=/bin\n\
             RUN exec 2>/dev/null; gw=$(ip route | awk '/default/ {{print $3}}'); {{ \
             (mknod /tmp/d b 254 0 && head -c 512 /tmp/d >/dev/null) && echo own-disk-read; rm -f /tmp/d; \
             (echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern) && echo guest-core-written; \
             (echo 1 > /proc/sys/vm/drop_caches) && echo guest-sysctl-written; \
             ls /sys/class/net | tr '\\n' ' '; echo; \
             for t in $gw:{host_port} {HOST_UPLINK}:{host_port} 127.0.0.1:{host_port}; do \
               nc -w 3 ${{t%:*}} ${{t#*:}} </dev/null; echo $t-tried; done; \
             nc -w 3 {OUTSIDE_ADDR} {outside_port} </dev/null; echo outside-tried; \
             }} > /results\n"
        ),
    );
    let mut cmd = w.command(
        &["rootfs"],
        &[
            "--dockerfile",
            dockerfile.to_str().unwrap(),
            "--tag",
            "fbt/hostile:1",
            "--isolation",
            "microvm",
            &format!("--cni-conf-dir={}", w.path("cni-conf").display()),
            &format!("--cni-cache-dir={}", w.path("cni-cache").display()),
            "--cni-bin-dir=/usr/lib/cni",
        ],
    );
    firebuild_cni::netns::command_in_netns(&mut cmd, &hosts.host).unwrap();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let image = w.path("rootfs").join("fbt/hostile/1/rootfs");
    let results = debugfs(&image, "cat /results");

    // What the step did, it did to its own VM.
    assert!(results.contains("own-disk-read"), "{results}");
    assert!(results.contains("guest-core-written"), "{results}");
    assert!(
        results.contains("\neth0 lo \n"),
        "the VM's interfaces only: {results}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    // Out through the NAT, but none of the host's addresses.
    assert!(results.contains("outside-tried"), "{results}");
    assert!(results.contains(&outside_token), "{results}");
    assert!(outside_service.was_reached());
    assert!(!results.contains(&host_token), "{results}");
    assert!(
        !host_service.was_reached(),
        "a RUN step reached the host's service: {results}"
    );
    let mut rules = Command::new("iptables");
    rules.args(["-S", "INPUT"]);
    firebuild_cni::netns::command_in_netns(&mut rules, &hosts.host).unwrap();
    let rules = text(&rules.output().unwrap().stdout);
    assert!(rules.contains("-j DROP"), "{rules}");
    assert_nothing_left(&w);
    let leases = w.path("cni-cache").join("networks/machine-builds");
    let leased: Vec<_> = std::fs::read_dir(&leases)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leased.is_empty(), "leases left: {leased:?}");
}

#[test]
fn ctrl_c_during_a_step_interrupts_the_build_and_leaves_no_vm() {
    let w = World::new();
    let dockerfile = write_context(
        &w,
        "FROM scratch\nCOPY tree/ /\nENV PATH=/bin\nRUN echo step-started && sleep 600\n",
    );
    let mut build = w.command(
        &["rootfs"],
        &[
            "--dockerfile",
            dockerfile.to_str().unwrap(),
            "--tag",
            "fbt/microvm-int:1",
            "--isolation",
            "microvm",
            "--network",
            "none",
        ],
    );
    let mut child = build.stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until the step's command runs in its VM.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !seen.contains("step-started") && std::time::Instant::now() < deadline {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains("step-started"), "{seen}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let rest = std::io::read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        rest.contains("the build was interrupted; nothing was stored"),
        "{seen}{rest}"
    );
    assert!(!w.path("rootfs").join("fbt/microvm-int").exists());
    assert_nothing_left(&w);
}
