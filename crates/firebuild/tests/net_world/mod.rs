//! The world of the CLI's network tests: network namespaces the test makes
//! (one plays "the host": every `firebuild` command runs inside it, so the
//! bridge, the VM namespaces' veth peers, the iptables rules and every
//! address live there; one plays "another host" wired to it by a veth),
//! temp dirs, a busybox httpd image in the store. Only private addresses
//! inside those namespaces are ever contacted; the machine's own interfaces
//! are never touched. Dropping it tears everything down, also when an
//! assertion fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use firebuild_cni::netns;
use firebuild_vm::testing;

pub const PLUGIN_DIR: &str = "/usr/lib/cni";
pub const NETWORK: &str = "machines";
pub const SUBNET: &str = "192.168.127.0/24";
pub const IMAGE_TAG: &str = "fbt/httpd:1";
pub const KERNEL_ID: &str = "fbt-vmlinux";
/// The host namespace's own address on the link to "another host".
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
pub const OTHER_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
/// How long a VM may take to boot and answer under TCG.
pub const BOOT_WAIT: Duration = Duration::from_secs(60);

pub fn require_root_and_tools() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (namespaces, bridges, iptables, QEMU on a tap)"
    );
    for plugin in ["bridge", "host-local", "firewall", "portmap"] {
        assert!(
            Path::new(PLUGIN_DIR).join(plugin).exists(),
            "CNI plugin {plugin} missing: apt-get install -y containernetworking-plugins"
        );
    }
    for (tool, package) in [
        ("/bin/busybox", "busybox-static"),
        ("/usr/sbin/ip", "iproute2"),
        ("/usr/sbin/iptables-save", "iptables"),
        ("/usr/sbin/nft", "nftables"),
        ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: apt-get install -y {package}"
        );
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `args` with its network namespace set to `ns`.
pub fn run_in(ns: &Path, program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    netns::command_in_netns(&mut cmd, ns).expect("open the namespace");
    cmd.output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

pub fn ok_in(ns: &Path, program: &str, args: &[&str]) -> String {
    let out = run_in(ns, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}{}",
        ns.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
}

/// `GET /` from inside `ns`, with timeouts; the body of a 200 answer.
pub fn http_get(ns: &Path, addr: SocketAddr) -> Result<String, String> {
    netns::in_netns(Some(ns), || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut response = String::new();
        s.read_to_string(&mut response)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.to_owned())
            }
            _ => Err(format!("bad answer from {addr}: {response:?}")),
        }
    })
    .map_err(|e| e.to_string())?
}

/// Retries `f` until it succeeds or `limit` has passed.
pub fn eventually<T>(
    limit: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Builds the HTTP server image by hand (until `firebuild rootfs` is wired):
/// busybox with its applets, the guest init, users, a page, as an ext4 file
/// system in the store with its metadata.json.
pub fn store_httpd_image(store: &Path, work: &Path, page: &str) {
    let root = work.join("image-root");
    testing::busybox_tree(&root);
    for needed in ["httpd", "sh", "wget"] {
        assert!(
            root.join("bin").join(needed).exists(),
            "busybox has no {needed}"
        );
    }
    std::fs::create_dir(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), page).unwrap();

    let dir = store.join("fbt/httpd/1");
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("rootfs");
    testing::pack_ext4(&root, &rootfs);
    let metadata = serde_json::json!({
        "created-at-utc": 0,
        "image": {"org": "fbt", "image": "httpd", "version": "1"},
        "type": "rootfs",
        "tag": IMAGE_TAG,
        "ports": ["80/tcp"],
        "entrypoint-info": {
            "entrypoint": [],
            "cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
            "env": {"PATH": "/bin"},
            "shell": ["/bin/sh", "-c"],
            "user": "",
            "workdir": "",
        },
        "rootfs-size": std::fs::metadata(&rootfs).unwrap().len(),
    });
    std::fs::write(
        dir.join("metadata.json"),
        serde_json::to_vec_pretty(&metadata).unwrap(),
    )
    .unwrap();
}

/// Everything the VMs must leave as it was, read in the host namespace.
#[derive(Debug, PartialEq, Eq)]
pub struct HostState {
    pub links: Vec<String>,
    pub addrs: Vec<String>,
    pub routes: Vec<String>,
    /// Namespaces of this test's VMs.
    pub vm_namespaces: Vec<String>,
    /// host-local's leases of the network.
    pub leases: Vec<String>,
    /// Files in the CNI result cache.
    pub cni_cache: Vec<String>,
    pub run_cache: Vec<String>,
    pub iptables: String,
    pub nft: String,
}

/// iptables-save without comments and packet counters.
pub fn strip_iptables(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            Some(chain) => format!(":{}", chain.split(" [").next().unwrap_or(chain)),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn files_under(dir: &Path) -> Vec<String> {
    pub fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The test's world: namespaces, temp dirs, the stored image and kernel.
pub struct World {
    /// Prefix of every VM name (and so of every VM namespace).
    pub tag: String,
    pub host_name: String,
    pub host: PathBuf,
    pub other_name: String,
    pub other: PathBuf,
    pub dir: tempfile::TempDir,
    pub page: String,
}

impl World {
    pub fn new() -> World {
        require_root_and_tools();
        let pid = std::process::id();
        let tag = format!("fbt{pid}");
        let host_name = format!("fbt-host-{pid}");
        let other_name = format!("fbt-other-{pid}");
        let dir = tempfile::tempdir().unwrap();
        let w = World {
            host: netns::netns_path(&host_name),
            other: netns::netns_path(&other_name),
            host_name,
            other_name,
            page: format!("<h1>served by the microVM of {tag}</h1>\n"),
            tag,
            dir,
        };
        // From here on, Drop cleans up whatever exists.
        ip(&["netns", "add", &w.host_name]);
        ip(&["netns", "add", &w.other_name]);
        ip(&["-n", &w.host_name, "link", "set", "lo", "up"]);
        ip(&["-n", &w.other_name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &w.host_name,
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &w.other_name,
        ]);
        ip(&[
            "-n",
            &w.host_name,
            "addr",
            "add",
            &format!("{HOST_ADDR}/24"),
            "dev",
            "uplink",
        ]);
        ip(&[
            "-n",
            &w.other_name,
            "addr",
            "add",
            &format!("{OTHER_HOST_ADDR}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &w.host_name, "link", "set", "uplink", "up"]);
        ip(&["-n", &w.other_name, "link", "set", "eth0", "up"]);
        for d in ["conf", "cni-cache", "runs", "rootfs", "vmlinux", "cache"] {
            std::fs::create_dir_all(w.path(d)).unwrap();
        }
        store_httpd_image(&w.path("rootfs"), w.dir.path(), &w.page);
        w
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn vm(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// Flags pointing every command at this world's dirs.
    pub fn settings(&self) -> Vec<String> {
        let p = |name: &str| self.path(name).display().to_string();
        vec![
            format!("--cni-conf-dir={}", p("conf")),
            format!("--cni-cache-dir={}", p("cni-cache")),
            format!("--cni-bin-dir={PLUGIN_DIR}"),
            format!("--run-cache={}", p("runs")),
            format!("--cache-dir={}", p("cache")),
            format!(
                "--storage-provider-property-string=rootfs-storage-root={}",
                p("rootfs")
            ),
            format!(
                "--storage-provider-property-string=kernel-storage-root={}",
                p("vmlinux")
            ),
            format!(
                "--storage-provider-property-string=snapshot-storage-root={}",
                p("snapshots")
            ),
            "--vmm=qemu".into(),
            "--qemu-accel=tcg".into(),
        ]
    }

    /// Runs `firebuild <command> <settings> <rest>` inside the host namespace.
    pub fn firebuild(&self, command: &[&str], rest: &[&str]) -> Output {
        self.command(command, rest).output().expect("run firebuild")
    }

    /// The command [`World::firebuild`] runs, to spawn it.
    pub fn command(&self, command: &[&str], rest: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebuild"));
        cmd.args(command)
            .args(self.settings())
            .args(rest)
            .env_remove("RUST_LOG");
        netns::command_in_netns(&mut cmd, &self.host).expect("open the host namespace");
        cmd
    }

    /// Like [`World::firebuild`], asserting success; returns stdout.
    pub fn ok(&self, command: &[&str], rest: &[&str]) -> String {
        let out = self.firebuild(command, rest);
        assert!(
            out.status.success(),
            "firebuild {command:?} {rest:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn inspect(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect"], &["--vmm-id", id]))
            .expect("inspect prints JSON")
    }

    /// `firebuild run` of the image on the network, with extra flags before
    /// an optional `-- COMMAND`.
    pub fn run_vm(&self, name: &str, flags: &[&str], command: &[&str]) -> Output {
        let vm = self.vm(name);
        let mut rest = vec![
            "--from",
            IMAGE_TAG,
            "--vmlinux-id",
            KERNEL_ID,
            "--name",
            &vm,
            "--mem",
            "128",
            "--shutdown-timeout",
            "10",
        ];
        rest.extend_from_slice(flags);
        if !command.is_empty() {
            rest.push("--");
            rest.extend_from_slice(command);
        }
        self.firebuild(&["run"], &rest)
    }

    pub fn ipam_dir(&self) -> PathBuf {
        let conflist: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.path("conf").join(format!("{NETWORK}.conflist"))).unwrap(),
        )
        .unwrap();
        let data_dir = conflist["plugins"][0]["ipam"]["dataDir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.path("cni-cache").join("networks"));
        data_dir.join(NETWORK)
    }

    pub fn vm_namespaces(&self) -> Vec<String> {
        netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&format!("firebuild-{}-", self.tag)))
            .collect()
    }

    /// Link names in the host namespace.
    pub fn links(&self) -> Vec<String> {
        let mut v: Vec<String> = ok_in(&self.host, "ip", &["-o", "link"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect();
        v.sort();
        v
    }

    pub fn host_state(&self) -> HostState {
        let lines = |program: &str, args: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = ok_in(&self.host, program, args)
                .lines()
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let addrs = lines("ip", &["-o", "addr"])
            .iter()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect();
        let leases = files_under(&self.ipam_dir())
            .into_iter()
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect();
        HostState {
            links: self.links(),
            addrs,
            // IPv4 only, without the carrier flag: the bridge's carrier
            // and its IPv6 link-local routes come and go as ports do.
            routes: lines("ip", &["-4", "route", "show", "table", "all"])
                .iter()
                .map(|r| r.replace(" linkdown", ""))
                .collect(),
            vm_namespaces: self.vm_namespaces(),
            leases,
            cni_cache: files_under(&self.path("cni-cache"))
                .into_iter()
                .filter(|f| !f.starts_with("networks/"))
                .collect(),
            run_cache: files_under(&self.path("runs"))
                .into_iter()
                .filter(|f| !f.starts_with('.'))
                .collect(),
            iptables: strip_iptables(&ok_in(&self.host, "iptables-save", &[])),
            nft: ok_in(&self.host, "nft", &["-s", "list", "ruleset"]),
        }
    }

    /// QEMU pids recorded for this world's VMs that are still alive.
    pub fn live_vmm_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.path("runs")) else {
            return pids;
        };
        for d in dirs.filter_map(|d| d.ok()) {
            let Ok(bytes) = std::fs::read(d.path().join("run.json")) else {
                continue;
            };
            let Ok(md) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let Some(pid) = md["pid"].as_i64() else {
                continue;
            };
            // Only a QEMU of this world (the pid may have been reused):
            // its command line names files in the world's run cache.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if text(&cmdline).contains(&*self.path("runs").to_string_lossy()) {
                pids.push(pid as i32);
            }
        }
        pids
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The tool's own way first, then by force.
        for id in files_under(&self.path("runs"))
            .iter()
            .filter_map(|f| f.strip_suffix("/run.json"))
        {
            let _ = self.firebuild(&["kill"], &["--vmm-id", id, "--shutdown-timeout", "1"]);
        }
        let _ = self.firebuild(&["purge"], &[]);
        for pid in self.live_vmm_pids() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        for name in self.vm_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
        for name in [&self.other_name, &self.host_name] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
