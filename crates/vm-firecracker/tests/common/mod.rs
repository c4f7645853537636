//! Test fixtures: stand-ins for the `firecracker` and `jailer` executables,
//! a network namespace with a tap, and the VM inputs the runtime would give
//! the backend.
//!
//! Firecracker cannot run on our machines (no package; the KVM here runs
//! only special guest kernels), so `firecracker` is a shell script that
//! re-runs this test binary as the API stand-in of crates/firecracker: it
//! serves Firecracker's HTTP API on the requested socket, checks every
//! request body against the v1.16.1 spec, enforces the pre-/post-boot rules
//! and the host resources (kernel, drive, tap in its network namespace). It
//! boots nothing. For these tests it also records the requests it got into
//! a file, writes one line into the configured serial output once started
//! (as a guest would), and on SendCtrlAltDel writes the guest init's
//! exit-code marker and exits (as Firecracker does when the guest reboots).
//!
//! The `jailer` stand-in does what our code relies on (jail directory,
//! exec-file copy, pid file, API socket under the jail root, `--netns`); it
//! does not chroot, drop privileges or create cgroups.
#![allow(dead_code)]

// The stand-in and its spec validator are not exported by
// firebuild-firecracker; they are compiled in from its test tree (and
// tests/spec links to its copy of the spec) rather than duplicated.
#[path = "../../../firecracker/tests/common/openapi.rs"]
pub mod openapi;
#[path = "../../../firecracker/tests/common/standin.rs"]
pub mod standin;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use firebuild_firecracker::JailUser;
use firebuild_metadata::guest::MmdsLatest;
use firebuild_metadata::image::{BuildConfig, EntrypointInfo, ImageName, ImageType};
use firebuild_metadata::{GuestMetadata, ImageMetadata, MmdsDocument};
use firebuild_vm::guest::BootArgs;
use firebuild_vm::rundir::RunDir;
use firebuild_vm::{
    LaunchConfig, NetworkAttachment, ProcessIdentity, RunMetadata, StartedVm, VmStatus, VmmKind,
};
use firebuild_vm_firecracker::FirecrackerConfig;
use serde_json::{json, Value};
use standin::{Options, StandIn};

/// Exit code the stand-in reports through the console marker on shutdown.
pub const STANDIN_EXIT_CODE: i32 = 3;
/// The tap the test network namespaces hold.
pub const TAP: &str = "fctap0";
pub const MAC: &str = "02:fc:00:00:00:2a";

/// The body of the `firecracker` stand-in process: each test binary calls
/// it from a `#[test] fn standin_process`. Does nothing unless started by
/// the stand-in script.
pub fn standin_main() {
    let Ok(socket) = std::env::var("FIREBUILD_STANDIN_SOCKET") else {
        return;
    };
    let root = std::env::var_os("FIREBUILD_STANDIN_ROOT").map(PathBuf::from);
    let log = PathBuf::from(std::env::var("FIREBUILD_STANDIN_LOG").expect("log path"));
    let id = std::env::var("FIREBUILD_STANDIN_ID").unwrap_or_default();
    let standin = StandIn::start_with(
        Path::new(&socket),
        Options {
            check_host_resources: true,
            root: root.clone(),
            id: id.clone(),
            ..Options::default()
        },
    );
    let mut written = 0;
    let mut booted = false;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        // The log is read before the VM state and written after the console:
        // once the log shows InstanceStart, the console line is there too.
        let records = standin.log();
        let (started, serial, shutdown) =
            standin.vm(|vm| (vm.started, vm.serial.clone(), vm.ctrl_alt_del));
        let console = serial
            .as_ref()
            .and_then(|s| s["serial_out_path"].as_str())
            .map(|p| in_root(root.as_deref(), p));
        if started && !booted {
            booted = true;
            if let Some(c) = &console {
                append(c, &format!("stand-in guest {id} is up\n"));
            }
        }
        if shutdown {
            if let Some(c) = &console {
                append(c, &format!("firebuild-exit-code={STANDIN_EXIT_CODE}\n"));
            }
            write_log(&log, &standin.log());
            std::process::exit(0);
        }
        if records.len() != written {
            write_log(&log, &records);
            written = records.len();
        }
    }
}

fn in_root(root: Option<&Path>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match root {
        Some(r) => r.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_owned(),
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("the serial output exists");
    f.write_all(text.as_bytes()).unwrap();
}

/// Writes the requests so far as a JSON array, atomically.
fn write_log(path: &Path, records: &[standin::Recorded]) {
    let entries: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "method": r.method,
                "path": r.path,
                "body": serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null),
                "status": r.status,
                "answer": String::from_utf8_lossy(&r.answer),
            })
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&entries).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn firecracker_script(pids: &Path, logs: &Path) -> String {
    let exe = std::env::current_exe().unwrap();
    format!(
        r#"#!/bin/sh
# Stand-in for the firecracker binary: serves the API stand-in on --api-sock.
sock=""; id=""
while [ $# -gt 0 ]; do
  case "$1" in
    --api-sock) sock="$2"; shift 2 ;;
    --id) id="$2"; shift 2 ;;
    *) shift ;;
  esac
done
echo $$ >> '{pids}'
FIREBUILD_STANDIN_SOCKET="$sock" FIREBUILD_STANDIN_ID="$id" FIREBUILD_STANDIN_LOG='{logs}/'"$id"'.json' exec '{exe}' --exact standin_process --nocapture --test-threads=1 --quiet
"#,
        pids = pids.display(),
        logs = logs.display(),
        exe = exe.display()
    )
}

const JAILER_SCRIPT: &str = r#"#!/bin/sh
# Stand-in for the jailer: jail dir, exec copy, pid file, socket under the
# root, Firecracker started inside --netns.
all="$*"; id=""; exec_file=""; base=""; netns=""
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id="$2"; shift 2 ;;
    --exec-file) exec_file="$2"; shift 2 ;;
    --chroot-base-dir) base="$2"; shift 2 ;;
    --netns) netns="$2"; shift 2 ;;
    --daemonize|--new-pid-ns) shift ;;
    --) shift; break ;;
    *) shift 2 ;;
  esac
done
[ "$1" = "--api-sock" ] || { echo "jailer stand-in: expected --api-sock after --" >&2; exit 2; }
name=$(basename "$exec_file")
dir="$base/$name/$id"
root="$dir/root"
mkdir -p "$root/run" || exit 1
cp "$exec_file" "$root/$name" || exit 1
echo "$all" > "$dir/jailer.args"
if [ -n "$netns" ]; then
  FIREBUILD_STANDIN_ROOT="$root" nsenter --net="$netns" -- "$exec_file" --id "$id" --api-sock "$root$2" </dev/null >"$dir/standin.out" 2>&1 &
else
  FIREBUILD_STANDIN_ROOT="$root" "$exec_file" --id "$id" --api-sock "$root$2" </dev/null >"$dir/standin.out" 2>&1 &
fi
echo $! > "$root/$name.pid"
"#;

/// A temp dir with the stand-in executables, a run cache and a chroot
/// base. Kills every stand-in process it started when dropped.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let fx = Fixture {
            dir: tempfile::Builder::new().prefix("fbvf").tempdir().unwrap(),
        };
        for d in ["bin", "logs", "runs"] {
            std::fs::create_dir(fx.path().join(d)).unwrap();
        }
        fx.script(
            "firecracker",
            &firecracker_script(&fx.path().join("pids"), &fx.path().join("logs")),
        );
        fx.script("jailer", JAILER_SCRIPT);
        std::fs::write(fx.kernel(), b"\x7fELF stand-in kernel").unwrap();
        fx
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join("bin").join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub fn kernel(&self) -> PathBuf {
        self.path().join("vmlinux")
    }

    pub fn run_cache(&self) -> PathBuf {
        self.path().join("runs")
    }

    pub fn chroot_base(&self) -> PathBuf {
        self.path().join("jail")
    }

    /// Jailed, as uid/gid 10000, with patient timeouts: the stand-in is a
    /// whole test binary starting up on a loaded 2-core machine.
    pub fn config(&self) -> FirecrackerConfig {
        FirecrackerConfig {
            firecracker: self.path().join("bin/firecracker"),
            jailer: self.path().join("bin/jailer"),
            chroot_base: self.chroot_base(),
            user: Some(JailUser {
                uid: 10000,
                gid: 10000,
            }),
            no_jailer: false,
            socket_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }

    pub fn direct_config(&self) -> FirecrackerConfig {
        FirecrackerConfig {
            no_jailer: true,
            ..self.config()
        }
    }

    /// The requests the stand-in of VM `id` received, in order.
    pub fn requests(&self, id: &str) -> Vec<Value> {
        let path = self.path().join("logs").join(format!("{id}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => Vec::new(),
        }
    }

    /// `METHOD path` of each request of VM `id`.
    pub fn request_lines(&self, id: &str) -> Vec<String> {
        self.requests(id)
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Waits until the stand-in of `id` has logged `n` requests.
    pub fn wait_requests(&self, id: &str, n: usize) -> Vec<Value> {
        for _ in 0..1500 {
            let r = self.requests(id);
            if r.len() >= n {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the stand-in of {id} logged fewer than {n} requests: {:?}",
            self.request_lines(id)
        );
    }

    /// Pids of every stand-in process started.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path().join("pids"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }

    /// The inputs the runtime hands the backend for VM `id`: a run
    /// directory with a root filesystem file, the full kernel command line,
    /// the guest metadata document.
    pub fn launch(&self, id: &str, network: Option<NetworkAttachment>) -> LaunchConfig {
        let run_dir = RunDir::create(&self.run_cache(), id).unwrap();
        std::fs::write(run_dir.rootfs(), b"stand-in rootfs").unwrap();
        let backend = firebuild_vm_firecracker::kernel_args();
        let backend: Vec<&str> = backend.iter().map(String::as_str).collect();
        let kernel_args = BootArgs::new(network.as_ref(), "fc-guest", None)
            .unwrap()
            .render(&backend)
            .unwrap();
        LaunchConfig {
            id: id.to_owned(),
            rootfs: run_dir.rootfs(),
            run_dir,
            kernel: self.kernel(),
            kernel_args,
            cpus: 2,
            mem_mib: 256,
            guest: guest_document(id),
            network,
        }
    }
}

impl Drop for Fixture {
    /// Never leave a stand-in process behind, even when a test fails.
    fn drop(&mut self) {
        for pid in self.pids() {
            if let Ok(p) = ProcessIdentity::of(pid as i32) {
                let _ = p.signal(rustix::process::Signal::KILL);
            }
        }
    }
}

/// The guest metadata of a VM: env, hostname, entrypoint.
pub fn guest_document(id: &str) -> MmdsDocument {
    MmdsDocument {
        latest: MmdsLatest {
            meta_data: GuestMetadata {
                vmm_id: id.to_owned(),
                entrypoint_json: r#"["/bin/app","serve"]"#.into(),
                env: BTreeMap::from([("GREETING".to_owned(), "hello from MMDS".to_owned())]),
                local_hostname: "fc-guest".into(),
                image_tag: "org/app:1".into(),
                ..Default::default()
            },
        },
    }
}

/// The run metadata the runtime would store for a VM started with `launch`.
pub fn run_metadata(launch: &LaunchConfig, started: &StartedVm) -> RunMetadata {
    RunMetadata {
        id: launch.id.clone(),
        name: launch.id.clone(),
        image: "org/app:1".into(),
        hostname: "fc-guest".into(),
        ip: launch.network.as_ref().map(|n| n.ip.to_string()),
        pid: Some(started.pid),
        pid_start_time: started.start_time,
        status: VmStatus::Running,
        created: time::OffsetDateTime::now_utc(),
        started: Some(time::OffsetDateTime::now_utc()),
        exited: None,
        exit_code: None,
        vmm: VmmKind::Firecracker,
        vmm_details: started.details.clone(),
        network: launch.network.clone(),
        kernel: launch.kernel.clone(),
        kernel_id: "k1".into(),
        kernel_args: launch.kernel_args.clone(),
        cpus: launch.cpus,
        mem_mib: launch.mem_mib,
        command: vec!["/bin/app".into(), "serve".into()],
        run_dir: launch.run_dir.path().to_owned(),
        daemonized: true,
        remove_on_exit: false,
        shutdown_timeout_secs: 15,
        creator: ProcessIdentity::current().unwrap(),
    }
}

/// Image metadata with ENTRYPOINT `/bin/app` and CMD `serve`.
pub fn image() -> ImageMetadata {
    ImageMetadata {
        created_at_utc: 0,
        image: ImageName {
            org: "org".into(),
            image: "app".into(),
            version: "1".into(),
        },
        labels: BTreeMap::new(),
        kind: ImageType::Rootfs,
        build_config: BuildConfig::default(),
        entrypoint_info: EntrypointInfo {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["serve".into()],
            env: BTreeMap::from([("FROM_IMAGE".to_owned(), "1".to_owned())]),
            shell: vec![],
            user: String::new(),
            workdir: "/".into(),
        },
        parent: None,
        ports: vec![],
        tag: "org/app:1".into(),
        volumes: vec![],
        stop_signal: None,
        healthcheck: None,
        onbuild: vec![],
        base_image_digest: None,
        rootfs_size: 0,
        rootfs_digest: None,
    }
}

/// A network namespace holding [`TAP`], made for one test, removed after.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Netns {
        Self::with_tap(Some(TAP))
    }

    pub fn with_tap(tap: Option<&str>) -> Netns {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fbvf-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        if let Some(tap) = tap {
            ip(&["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        }
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// What the CNI layer would hand the runtime.
    pub fn attachment(&self) -> NetworkAttachment {
        NetworkAttachment {
            netns: self.path(),
            tap: TAP.into(),
            guest_mac: MAC.into(),
            ip: "10.213.0.2".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.213.0.1".parse().unwrap()),
            nameservers: vec!["10.213.0.1".parse().unwrap()],
            mtu: Some(1400),
            network_name: "fbtest".into(),
            release_data: Value::Null,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2) runs");
    assert!(st.success(), "ip {args:?} failed");
}

/// Alive and not a zombie.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s[s.rfind(')').unwrap() + 2..].chars().next(),
                Some('Z' | 'X')
            )
        })
        .unwrap_or(false)
}

/// Waits (at most 30 s) until `pid` is gone.
pub fn wait_gone(pid: u32) -> bool {
    for _ in 0..1500 {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
