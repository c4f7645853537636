//! Test world: a network namespace playing "the host" (bridge, host veths,
//! iptables rules all live there), temp conf/cache dirs, and helpers to run
//! commands inside namespaces. Everything is removed on drop, also when a
//! test fails.

#![allow(dead_code)]

pub mod responder;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use firebuild_cni::{netns, CniPaths, CniRuntime, NetworkSpec};

/// Debian's plugin directory (containernetworking-plugins).
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct World {
    /// Short unique tag; prefixes every namespace and VM id of this world.
    pub tag: String,
    pub host_path: PathBuf,
    pub dir: tempfile::TempDir,
    pub rt: CniRuntime,
}

pub fn require_root_and_tools() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (namespaces, netlink, iptables)"
    );
    for tool in ["bridge", "host-local", "firewall", "portmap"] {
        assert!(
            Path::new(PLUGIN_DIR).join(tool).exists(),
            "CNI plugin {tool} missing: apt-get install -y containernetworking-plugins"
        );
    }
    for bin in ["/usr/sbin/iptables-save", "/bin/busybox", "/usr/sbin/ip"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} missing: apt-get install -y iptables busybox-static iproute2"
        );
    }
}

impl World {
    pub fn new(name: &str) -> World {
        require_root_and_tools();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("t{}{}{}", std::process::id() % 100_000, name, n);
        let host_name = format!("fbt-{tag}");
        let host_path = netns::create(&host_name).expect("create host netns");
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = CniPaths {
            conf_dir: dir.path().join("conf"),
            bin_dirs: vec![PLUGIN_DIR.into()],
            cache_dir: dir.path().join("cache"),
        };
        let rt = CniRuntime::new(paths).with_plugin_netns(&host_path);
        let w = World {
            tag,
            host_path,
            dir,
            rt,
        };
        w.host(&["ip", "link", "set", "lo", "up"]).ok();
        w
    }

    /// A VM id unique to this world.
    pub fn vm(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// A network spec with its IPAM store inside the temp dir.
    pub fn spec(&self, name: &str, subnet: &str) -> NetworkSpec {
        let mut spec = NetworkSpec::new(name, subnet.parse().unwrap());
        spec.ipam_data_dir = Some(self.ipam_dir());
        spec
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Runs a command in the host namespace.
    pub fn host(&self, args: &[&str]) -> Result<Output, String> {
        run_in(&self.host_path, args)
    }

    /// Namespaces of this world still present.
    pub fn namespaces(&self) -> Vec<String> {
        netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.contains(&self.tag))
            .collect()
    }

    /// Everything a teardown must restore, read from the host namespace.
    pub fn snapshot(&self, network: &str) -> Snapshot {
        let links =
            String::from_utf8_lossy(&self.host(&["ip", "-o", "link"]).unwrap().stdout).into_owned();
        let mut link_names: Vec<String> = links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        link_names.sort();
        let addrs = String::from_utf8_lossy(&self.host(&["ip", "-o", "addr"]).unwrap().stdout)
            .lines()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n");
        let iptables = strip_iptables(&String::from_utf8_lossy(
            &self.host(&["iptables-save"]).unwrap().stdout,
        ));
        let nft =
            String::from_utf8_lossy(&self.host(&["nft", "-s", "list", "ruleset"]).unwrap().stdout)
                .into_owned();
        Snapshot {
            links: link_names,
            addrs,
            namespaces: self.namespaces(),
            leases: leases(&self.ipam_dir().join(network)),
            iptables,
            nft,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for name in self.namespaces() {
            let _ = netns::delete(&netns::netns_path(&name));
        }
        let _ = netns::delete(&self.host_path);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: Vec<String>,
    pub addrs: String,
    pub namespaces: Vec<String>,
    pub leases: Vec<String>,
    pub iptables: String,
    pub nft: String,
}

/// iptables-save without the comment lines and packet counters that change by themselves.
fn strip_iptables(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                // ":CHAIN POLICY [pkts:bytes]"
                l.split(" [").next().unwrap_or(l).to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// host-local's lease files (one per address) in a network's store.
pub fn leases(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs a command with its network namespace set to `ns`.
pub fn run_in(ns: &Path, args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    netns::command_in_netns(&mut cmd, ns).map_err(|e| e.to_string())?;
    let out = cmd.output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Retries `f` a bounded number of times (services take a moment to listen).
pub fn retry<T>(attempts: u32, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut last = String::new();
    for _ in 0..attempts {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Err(last)
}

/// A child process killed on drop (a server inside a namespace).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts busybox httpd serving `body` on `port` inside `ns`.
pub fn httpd(ns: &Path, dir: &Path, port: u16, body: &str) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("index.html"), body).unwrap();
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(["httpd", "-f", "-p", &port.to_string(), "-h"])
        .arg(dir);
    netns::command_in_netns(&mut cmd, ns).unwrap();
    Child(cmd.spawn().expect("start busybox httpd"))
}

/// `GET /` from `addr` (`ip:port`) made from inside `ns`, with timeouts;
/// returns the body.
pub fn http_get(ns: &Path, addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    netns::in_netns(Some(ns), || -> Result<String, String> {
        let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .map_err(|e| format!("read {addr}: {e}"))?;
        match resp.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.to_string())
            }
            _ => Err(format!("bad response from {addr}: {resp:?}")),
        }
    })
    .map_err(|e| e.to_string())?
}
