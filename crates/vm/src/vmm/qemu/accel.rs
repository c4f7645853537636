//! Choosing between KVM and TCG.
//!
//! `/dev/kvm` being present and answering is not enough: on nested hosts
//! (our development machines) KVM runs only special guest kernels and a
//! normal one hangs or dies with an internal KVM error. So under
//! [`AccelPolicy::Auto`] the kernel is *probe-booted* under KVM once: booted
//! with a blank disk as root, it must reach the "unable to mount root fs"
//! panic (which shows the kernel ran and found its virtio disk) within a
//! few seconds. The verdict is cached per kernel file, QEMU binary and
//! machine in `<run-cache>/.kvm-probe.json`, so only the first run pays.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cmdline::{Accel, Confinement, Invocation, Machine, Memory};
use super::confine::{self, IdPool};
use crate::host_ids::HeldId;
use crate::names::random_id;

/// How the QEMU backend picks its accelerator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelPolicy {
    /// KVM when `/dev/kvm` works and the kernel probe-boots under it, else TCG.
    #[default]
    Auto,
    /// Always KVM (the profile says KVM works here).
    Kvm,
    /// Always TCG.
    Tcg,
}

impl std::str::FromStr for AccelPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelPolicy::Auto),
            "kvm" => Ok(AccelPolicy::Kvm),
            "tcg" => Ok(AccelPolicy::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}; expected auto, kvm or tcg"
            )),
        }
    }
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_API_VERSION: libc::c_int = 12;

/// Checks that `/dev/kvm` opens read-write and speaks the stable KVM API.
pub fn kvm_device_usable() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let version = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "/dev/kvm reports API version {version}, expected {KVM_API_VERSION}"
        ));
    }
    Ok(())
}

/// Boots `kernel` with a blank root disk under `accel`/`machine` and tells
/// whether it got as far as trying to mount that disk. A QEMU that never
/// ran the guest (it exited or hung without the firmware or kernel
/// printing anything, and without KVM complaining) gives no verdict: an
/// error, which is not cached. Nothing is left behind: the probe's files
/// live in a scratch directory under `work`.
pub async fn probe_boot(
    binary: &Path,
    kernel: &Path,
    accel: Accel,
    machine: Machine,
    work: &Path,
    timeout: Duration,
    ids: &IdPool,
) -> Result<bool, String> {
    // Confined like every QEMU: it boots a kernel under KVM.
    let id = ids.claim(work)?;
    let scratch = work.join(format!(".probe-{}", random_id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let result = probe_in(binary, kernel, accel, machine, &scratch, timeout, id).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn probe_in(
    binary: &Path,
    kernel: &Path,
    accel: Accel,
    machine: Machine,
    scratch: &Path,
    timeout: Duration,
    id: HeldId,
) -> Result<bool, String> {
    let disk = scratch.join("blank.img");
    let log = scratch.join("console.log");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let root = scratch.join("vmm-root");
    confine::make_empty_root(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let invocation = Invocation {
        name: "firebuild-kvm-probe",
        accel,
        machine,
        cpus: 1,
        mem_mib: 128,
        memory: Memory::Anonymous,
        incoming: false,
        kernel,
        append: "console=ttyS0 panic=-1 root=/dev/vda ro",
        rootfs: &disk,
        rootfs_read_only: true,
        config_drive: &disk,
        disks: &[],
        console_log: &log,
        qmp_socket: None,
        pid_file: None,
        network: None,
        agent_sockets: &[],
        fd_sets: &[],
        hotplug_slots: 0,
        confinement: Confinement {
            uid: id.uid,
            gid: id.gid,
            chroot: &root,
        },
        start_paused: false,
    };
    let stderr_log = scratch.join("stderr.log");
    let stderr =
        std::fs::File::create(&stderr_log).map_err(|e| format!("{}: {e}", stderr_log.display()))?;
    let mut command = tokio::process::Command::new(binary);
    command
        .args(invocation.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    let id_lock = id.lock.as_raw_fd();
    // SAFETY: one fcntl(2) between fork and exec on an fd kept open.
    unsafe { command.pre_exec(move || confine::inherit(id_lock)) };
    let mut child = command
        .spawn()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    // QEMU holds the id's claim now.
    drop(id);
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    if waited.is_err() {
        let _ = child.kill().await;
    }
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let printed = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    // KVM's own failures (an internal error, QEMU's abort in kvm.c on a
    // nested host) are a verdict too, whatever the case.
    let guest_ran = !console.trim().is_empty() || printed.to_ascii_lowercase().contains("kvm");
    match waited {
        Ok(status) => {
            let status = status.map_err(|e| e.to_string())?;
            if !guest_ran {
                return Err(format!(
                    "{} exited with {status} before the guest ran: {}",
                    binary.display(),
                    tail(&printed)
                ));
            }
            Ok(status.success() && reached_root_mount(&console))
        }
        Err(_) if guest_ran => {
            tracing::info!(accel = accel.as_str(), "probe boot timed out");
            Ok(false)
        }
        Err(_) => Err(format!(
            "{} printed nothing within {} s",
            binary.display(),
            timeout.as_secs()
        )),
    }
}

/// The last lines of what a process printed, on one line.
fn tail(printed: &str) -> String {
    let lines: Vec<&str> = printed.lines().filter(|l| !l.trim().is_empty()).collect();
    match &lines[lines.len().saturating_sub(5)..] {
        [] => "it printed nothing".to_owned(),
        last => last.join(" / "),
    }
}

/// The kernel found the disk and tried to mount it.
fn reached_root_mount(console: &str) -> bool {
    console.contains("VFS: Unable to mount root fs on unknown-block(")
        && !console.contains("unknown-block(0,0)")
}

/// Cached probe verdicts: `<run-cache>/.kvm-probe.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeCache {
    verdicts: BTreeMap<String, bool>,
}

fn cache_key(binary: &Path, kernel: &Path, machine: Machine) -> Option<String> {
    let canonical = std::fs::canonicalize(kernel).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    Some(format!(
        "{}|{}|{}.{}|{}|{}",
        canonical.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        binary.display(),
        machine.as_str()
    ))
}

fn cache_path(run_cache: &Path) -> PathBuf {
    run_cache.join(".kvm-probe.json")
}

fn load_cache(run_cache: &Path) -> ProbeCache {
    std::fs::read(cache_path(run_cache))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn store_verdict(run_cache: &Path, key: String, ok: bool) {
    let mut cache = load_cache(run_cache);
    cache.verdicts.insert(key, ok);
    let path = cache_path(run_cache);
    let tmp = run_cache.join(format!(".kvm-probe.{}.tmp", random_id()));
    let written = serde_json::to_vec_pretty(&cache)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("caching the KVM probe result in {}: {e}", path.display());
    }
}

/// Resolves the policy to an accelerator for `kernel`.
pub async fn resolve(
    policy: AccelPolicy,
    binary: &Path,
    kernel: &Path,
    machine: Machine,
    run_cache: &Path,
    probe_timeout: Duration,
    ids: &IdPool,
) -> Accel {
    match policy {
        AccelPolicy::Kvm => return Accel::Kvm,
        AccelPolicy::Tcg => return Accel::Tcg,
        AccelPolicy::Auto => {}
    }
    if let Err(reason) = kvm_device_usable() {
        tracing::debug!("KVM not usable, using TCG: {reason}");
        return Accel::Tcg;
    }
    let key = cache_key(binary, kernel, machine);
    if let Some(ok) = key
        .as_ref()
        .and_then(|k| load_cache(run_cache).verdicts.get(k).copied())
    {
        return if ok { Accel::Kvm } else { Accel::Tcg };
    }
    tracing::info!(
        "probing whether {} boots under KVM (once per kernel)",
        kernel.display()
    );
    let ok = match probe_boot(
        binary,
        kernel,
        Accel::Kvm,
        machine,
        run_cache,
        probe_timeout,
        ids,
    )
    .await
    {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!("the KVM probe gave no verdict (not remembered), using TCG: {e}");
            return Accel::Tcg;
        }
    };
    if let Some(key) = key {
        store_verdict(run_cache, key, ok);
    }
    if ok {
        Accel::Kvm
    } else {
        tracing::info!("the kernel does not boot under KVM here; using TCG");
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_mount_detection() {
        assert!(reached_root_mount(
            "[ 1.0] VFS: Unable to mount root fs on unknown-block(254,0)\nKernel panic"
        ));
        assert!(!reached_root_mount(
            "VFS: Cannot open root device \"vda\" or unknown-block(0,0)\nVFS: Unable to mount root fs on unknown-block(0,0)"
        ));
        assert!(!reached_root_mount("KVM internal error"));
    }

    #[test]
    fn policy_parses() {
        assert_eq!("tcg".parse::<AccelPolicy>().unwrap(), AccelPolicy::Tcg);
        assert!("xen".parse::<AccelPolicy>().is_err());
    }

    #[test]
    fn verdicts_are_cached_per_kernel_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k1").unwrap();
        let bin = Path::new("qemu-system-x86_64");
        let key = cache_key(bin, &kernel, Machine::Q35).unwrap();
        store_verdict(dir.path(), key.clone(), true);
        assert_eq!(load_cache(dir.path()).verdicts.get(&key), Some(&true));
        // A different machine or a changed kernel is a different key.
        assert_ne!(cache_key(bin, &kernel, Machine::Microvm).unwrap(), key);
        std::fs::write(&kernel, b"kernel two").unwrap();
        assert_ne!(cache_key(bin, &kernel, Machine::Q35).unwrap(), key);
        assert!(cache_key(bin, &dir.path().join("missing"), Machine::Q35).is_none());
    }

    #[tokio::test]
    async fn explicit_policies_do_not_probe() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Path::new("/nonexistent/qemu");
        let k = Path::new("/nonexistent/vmlinux");
        let t = Duration::from_secs(1);
        let ids = IdPool::default();
        assert_eq!(
            resolve(
                AccelPolicy::Tcg,
                missing,
                k,
                Machine::Q35,
                dir.path(),
                t,
                &ids
            )
            .await,
            Accel::Tcg
        );
        assert_eq!(
            resolve(
                AccelPolicy::Kvm,
                missing,
                k,
                Machine::Q35,
                dir.path(),
                t,
                &ids
            )
            .await,
            Accel::Kvm
        );
    }

    #[tokio::test]
    async fn probe_of_a_bogus_kernel_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("not-a-kernel");
        std::fs::write(&kernel, b"garbage").unwrap();
        // QEMU refuses the file before any guest runs: no verdict.
        let err = probe_boot(
            Path::new("qemu-system-x86_64"),
            &kernel,
            Accel::Tcg,
            Machine::Q35,
            dir.path(),
            Duration::from_secs(20),
            &IdPool::default(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("before the guest ran"), "{err}");
        // The scratch directory is gone (the kernel and the id claims stay).
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, [".qemu-ids", "not-a-kernel"]);
    }

    /// A VMM that exits at once or hangs without running a guest says
    /// nothing about KVM: TCG for now, and no verdict is remembered.
    #[tokio::test]
    async fn a_vmm_that_never_runs_the_guest_leaves_no_verdict() {
        if kvm_device_usable().is_err() {
            eprintln!("no usable /dev/kvm: resolve does not probe here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let hangs = dir.path().join("hangs");
        std::fs::write(&hangs, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&hangs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for binary in [Path::new("/bin/false"), hangs.as_path()] {
            let accel = resolve(
                AccelPolicy::Auto,
                binary,
                &kernel,
                Machine::Q35,
                dir.path(),
                Duration::from_secs(2),
                &IdPool::default(),
            )
            .await;
            assert_eq!(accel, Accel::Tcg, "{}", binary.display());
            assert!(
                load_cache(dir.path()).verdicts.is_empty(),
                "{} left a verdict",
                binary.display()
            );
        }
        // QEMU aborting in KVM (as on nested hosts) is remembered: no KVM.
        let aborts = dir.path().join("aborts");
        std::fs::write(
            &aborts,
            "#!/bin/sh\necho \"kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\" >&2\nexit 134\n",
        )
        .unwrap();
        std::fs::set_permissions(&aborts, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let accel = resolve(
            AccelPolicy::Auto,
            &aborts,
            &kernel,
            Machine::Q35,
            dir.path(),
            Duration::from_secs(2),
            &IdPool::default(),
        )
        .await;
        assert_eq!(accel, Accel::Tcg);
        assert_eq!(
            load_cache(dir.path()).verdicts.values().collect::<Vec<_>>(),
            [&false]
        );
        let sleeping = std::process::Command::new("pgrep")
            .args(["-f", "sleep 1000"])
            .output()
            .unwrap();
        assert!(sleeping.stdout.is_empty(), "the hung probe still runs");
    }
}
