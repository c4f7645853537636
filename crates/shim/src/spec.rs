//! The OCI runtime spec (`config.json` of the bundle, and the process of a
//! `task exec`) as what the VM and the guest agent take.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use firebuild_agent_proto::ExecRequest;
use firebuild_vm::VmmChoice;
use oci_spec::runtime::{Process, Spec};

/// Per-container overrides, as annotations (Kubernetes pod annotations
/// reach the spec the same way).
pub const ANNOTATION_VMM: &str = "io.firebuild.vmm";
pub const ANNOTATION_KERNEL: &str = "io.firebuild.kernel";
pub const ANNOTATION_CPUS: &str = "io.firebuild.cpus";
pub const ANNOTATION_MEM_MIB: &str = "io.firebuild.mem-mib";

/// What containerd's CRI says of a container's place in a pod.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container's place in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// Not in a pod: a VM of its own.
    Alone,
    /// A pod's sandbox: its VM is the pod's.
    Sandbox,
    /// A further container of the pod whose sandbox has this id: runs in
    /// that VM, on a root of its own.
    Member { sandbox: String },
}

/// The container's role, from the CRI's annotations.
pub fn pod_role(spec: &Spec) -> anyhow::Result<PodRole> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let sandbox = annotations
        .get(ANNOTATION_SANDBOX_ID)
        .filter(|s| !s.is_empty());
    match (annotations.get(ANNOTATION_CONTAINER_TYPE).map(String::as_str), sandbox) {
        (None, _) => Ok(PodRole::Alone),
        (Some("sandbox"), _) => Ok(PodRole::Sandbox),
        (Some("container"), Some(sandbox)) => Ok(PodRole::Member {
            sandbox: sandbox.clone(),
        }),
        (Some("container"), None) => anyhow::bail!(
            "annotation {ANNOTATION_CONTAINER_TYPE}=container needs {ANNOTATION_SANDBOX_ID} naming its pod's sandbox"
        ),
        (Some(other), _) => anyhow::bail!(
            "annotation {ANNOTATION_CONTAINER_TYPE}={other:?}: expected sandbox or container"
        ),
    }
}

/// The shim a container belongs to: its pod's sandbox (one shim, one VM
/// per pod), else its own id.
pub fn grouping(spec: &Spec, id: &str) -> String {
    match pod_role(spec) {
        Ok(PodRole::Member { sandbox }) => sandbox,
        _ => id.to_owned(),
    }
}

const MIB: i64 = 1024 * 1024;
/// The least memory a VM boots with.
pub const MIN_MEM_MIB: u32 = 64;

/// What the VM of a container is made of, from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmShape {
    pub cpus: Option<u32>,
    pub mem_mib: Option<u32>,
    pub vmm: Option<VmmChoice>,
    pub kernel: Option<String>,
    pub hostname: Option<String>,
    /// A network namespace to join (the spec names one by path).
    pub netns: Option<PathBuf>,
    /// Hot-plug slots for a pod's further containers (a sandbox's VM).
    pub pod_slots: u32,
}

pub fn read_bundle(bundle: &Path) -> anyhow::Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).with_context(|| format!("reading the OCI spec {}", path.display()))
}

/// The VM's size: the annotations, else `linux.resources` (the CPU quota
/// rounded up to whole vCPUs, the memory limit in MiB), else the
/// configuration's defaults.
pub fn vm_shape(spec: &Spec) -> anyhow::Result<VmShape> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let number = |key: &str, min: u32| -> anyhow::Result<Option<u32>> {
        annotations
            .get(key)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n >= min)
                    .with_context(|| {
                        format!("annotation {key}={v:?}: expected a whole number of at least {min}")
                    })
            })
            .transpose()
    };
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let quota_cpus = resources
        .as_ref()
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as u32),
            _ => None,
        });
    let limit_mib = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| (((l + MIB - 1) / MIB) as u32).max(MIN_MEM_MIB));
    let vmm = annotations
        .get(ANNOTATION_VMM)
        .map(|v| {
            v.parse::<VmmChoice>()
                .map_err(|e| anyhow::anyhow!("annotation {ANNOTATION_VMM}: {e}"))
        })
        .transpose()?;
    let kernel = annotations.get(ANNOTATION_KERNEL).cloned();
    if let Some(k) = &kernel {
        anyhow::ensure!(
            !k.is_empty() && !k.contains('/'),
            "annotation {ANNOTATION_KERNEL}={k:?}: expected a kernel id"
        );
    }
    Ok(VmShape {
        cpus: number(ANNOTATION_CPUS, 1)?.or(quota_cpus),
        mem_mib: number(ANNOTATION_MEM_MIB, MIN_MEM_MIB)?.or(limit_mib),
        vmm,
        kernel,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        netns: joined_network(spec),
        pod_slots: 0,
    })
}

/// The network namespace the spec joins: a `network` namespace with a
/// path. Without one the container gets a new, empty namespace: its VM has
/// no network.
fn joined_network(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .iter()
        .flatten()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

/// The most a bind mount copied into the VM may hold: what kubelet hands a
/// container (hosts, resolv.conf, configmaps, secrets, tokens) is far below.
pub const BIND_COPY_LIMIT: u64 = 64 * MIB as u64;

/// A bind mount of the spec, reaching the VM as a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

/// Destinations the guest fills itself, whatever the host binds there: the
/// CRI binds the pod's shared `/dev/shm` into each of its containers (in a
/// VM each root has a tmpfs of its own there).
const GUEST_PROVIDED: &[&str] = &["/dev/shm"];

/// The spec's bind mounts. The mounts the guest makes itself (`/proc`,
/// `/dev`, `/sys`, tmpfs, [`GUEST_PROVIDED`] ...) are left to it. A bind mount reaches the
/// VM as a copy made before the process starts: files and read-only
/// directories up to [`BIND_COPY_LIMIT`]; a read-write directory (whose
/// writes the host would expect to see) and a missing source are refused
/// by name.
pub fn bind_mounts(spec: &Spec) -> anyhow::Result<Vec<BindMount>> {
    let mut binds = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind
            || GUEST_PROVIDED
                .iter()
                .any(|d| m.destination() == Path::new(d))
        {
            continue;
        }
        let source = m.source().clone().unwrap_or_default();
        let destination = m.destination().clone();
        let name = format!(
            "bind mount {} -> {}",
            source.display(),
            destination.display()
        );
        anyhow::ensure!(
            source.is_absolute() && destination.is_absolute() && destination != Path::new("/"),
            "{name}: source and destination must be absolute paths below /"
        );
        let meta = std::fs::metadata(&source).with_context(|| format!("{name}: the source"))?;
        let read_only = options.iter().any(|o| o == "ro");
        if meta.is_dir() {
            anyhow::ensure!(
                read_only,
                "{name}: a read-write directory cannot be shared with a firebuild VM yet (mount it read-only, or use a volume)"
            );
            let size = tree_size(&source, BIND_COPY_LIMIT)
                .with_context(|| format!("{name}: reading the source"))?;
            anyhow::ensure!(
                size <= BIND_COPY_LIMIT,
                "{name}: holds more than {} MiB, the most copied into a VM",
                BIND_COPY_LIMIT / MIB as u64
            );
        } else {
            anyhow::ensure!(
                meta.is_file(),
                "{name}: the source is neither a file nor a directory"
            );
            anyhow::ensure!(
                meta.len() <= BIND_COPY_LIMIT,
                "{name}: larger than {} MiB, the most copied into a VM",
                BIND_COPY_LIMIT / MIB as u64
            );
        }
        binds.push(BindMount {
            source,
            destination,
            read_only,
        });
    }
    Ok(binds)
}

/// Bytes of the regular files under `dir` (symlinks not followed),
/// stopping once past `limit`.
fn tree_size(dir: &Path, limit: u64) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
            if total > limit {
                return Ok(total);
            }
        }
    }
    Ok(total)
}

/// The agent request that runs `process`. Refuses what the agent cannot
/// honour rather than run it differently.
pub fn exec_request(process: &Process, stdin: bool) -> anyhow::Result<ExecRequest> {
    let argv = process.args().clone().unwrap_or_default();
    anyhow::ensure!(!argv.is_empty(), "the process spec has no args");
    let user = process.user();
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| firebuild_agent_proto::Rlimit {
            // Its serde name is the OCI one (`RLIMIT_NOFILE`).
            resource: serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    let size = process
        .console_size()
        .as_ref()
        .map(|b| firebuild_agent_proto::Resize {
            rows: b.height().min(u16::MAX as u64) as u16,
            cols: b.width().min(u16::MAX as u64) as u16,
        });
    Ok(ExecRequest {
        argv,
        env: process.env().clone().unwrap_or_default(),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        workdir: Some(process.cwd().display().to_string()).filter(|c| !c.is_empty()),
        tty: process.terminal().unwrap_or(false),
        stdin,
        size,
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        rlimits,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        container: None,
    })
}

/// The process of a `task exec` (the JSON of an OCI `Process`).
pub fn parse_process(json: &[u8]) -> anyhow::Result<Process> {
    serde_json::from_slice(json).context("the exec request's process spec is not valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        });
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn cri_annotations_place_a_container_in_its_pod() {
        let with =
            |annotations: serde_json::Value| spec(serde_json::json!({"annotations": annotations}));
        let alone = with(serde_json::json!({}));
        assert_eq!(pod_role(&alone).unwrap(), PodRole::Alone);
        assert_eq!(grouping(&alone, "c1"), "c1");
        let sandbox = with(serde_json::json!({
            ANNOTATION_CONTAINER_TYPE: "sandbox", ANNOTATION_SANDBOX_ID: "pod1"}));
        assert_eq!(pod_role(&sandbox).unwrap(), PodRole::Sandbox);
        assert_eq!(grouping(&sandbox, "pod1"), "pod1");
        let member = with(serde_json::json!({
            ANNOTATION_CONTAINER_TYPE: "container", ANNOTATION_SANDBOX_ID: "pod1"}));
        assert_eq!(
            pod_role(&member).unwrap(),
            PodRole::Member {
                sandbox: "pod1".into()
            }
        );
        assert_eq!(grouping(&member, "c2"), "pod1");
        let orphan = with(serde_json::json!({ANNOTATION_CONTAINER_TYPE: "container"}));
        assert!(pod_role(&orphan)
            .unwrap_err()
            .to_string()
            .contains(ANNOTATION_SANDBOX_ID));
        let odd = with(serde_json::json!({ANNOTATION_CONTAINER_TYPE: "vm"}));
        assert!(pod_role(&odd).unwrap_err().to_string().contains("\"vm\""));
    }

    #[test]
    fn resources_size_the_vm_and_annotations_win() {
        let s = spec(serde_json::json!({
            "hostname": "web",
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000},
                                    "memory": {"limit": 300 * 1024 * 1024}}},
        }));
        let shape = vm_shape(&s).unwrap();
        assert_eq!((shape.cpus, shape.mem_mib), (Some(2), Some(300)));
        assert_eq!(shape.netns, None);
        let pod = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"},
        ]}}));
        assert_eq!(
            vm_shape(&pod).unwrap().netns,
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        assert_eq!(shape.hostname.as_deref(), Some("web"));
        let s = spec(serde_json::json!({
            "annotations": {"io.firebuild.cpus": "3", "io.firebuild.vmm": "qemu"},
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000}}},
        }));
        let shape = vm_shape(&s).unwrap();
        assert_eq!((shape.cpus, shape.vmm), (Some(3), Some(VmmChoice::Qemu)));
    }

    #[test]
    fn bind_mounts_are_checked_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("a"), b"x").unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
        let mount = |src: &Path, dst: &str, options: &[&str]| serde_json::json!({"destination": dst, "type": "bind", "source": src, "options": options});
        let ok = spec(serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            mount(&conf, "/etc/app", &["rbind", "ro"]),
            mount(&hosts, "/etc/hosts", &["rbind", "rw"]),
            // The CRI's pod-wide /dev/shm: a read-write directory the
            // guest provides itself.
            mount(&conf, "/dev/shm", &["rbind", "rw"]),
        ]}));
        let binds = bind_mounts(&ok).unwrap();
        assert_eq!(binds.len(), 2);
        assert_eq!(binds[0].destination, Path::new("/etc/app"));
        assert!(binds[0].read_only && !binds[1].read_only);
        for (m, expected) in [
            (
                mount(&conf, "/data", &["rbind", "rw"]),
                "read-write directory",
            ),
            (
                mount(&dir.path().join("missing"), "/data", &["rbind", "ro"]),
                "missing",
            ),
            (mount(&hosts, "relative", &["rbind"]), "absolute"),
        ] {
            let bad = spec(serde_json::json!({"mounts": [m]}));
            let err = format!("{:#}", bind_mounts(&bad).unwrap_err());
            assert!(
                err.contains("bind mount") && err.contains(expected),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_annotations_are_named() {
        for (key, value) in [
            ("io.firebuild.cpus", "0"),
            ("io.firebuild.mem-mib", "lots"),
            ("io.firebuild.vmm", "xen"),
            ("io.firebuild.kernel", "../k"),
        ] {
            let s = spec(serde_json::json!({"annotations": {key: value}}));
            let err = format!("{:#}", vm_shape(&s).unwrap_err());
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn processes_become_agent_requests() {
        let p = parse_process(
            br#"{"args":["ls","-l"],"env":["A=1"],"cwd":"/tmp","terminal":true,
                 "user":{"uid":1000,"gid":100,"additionalGids":[10,20]},
                 "consoleSize":{"height":40,"width":120},"noNewPrivileges":true,
                 "rlimits":[{"type":"RLIMIT_NOFILE","soft":512,"hard":1024}]}"#,
        )
        .unwrap();
        let r = exec_request(&p, true).unwrap();
        assert_eq!(r.argv, ["ls", "-l"]);
        assert_eq!(r.rlimits[0].resource, "RLIMIT_NOFILE");
        assert_eq!((r.rlimits[0].soft, r.rlimits[0].hard), (512, 1024));
        assert_eq!(r.additional_gids, [10, 20]);
        assert!(r.no_new_privileges);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.user.as_deref(), Some("1000:100"));
        assert_eq!(r.workdir.as_deref(), Some("/tmp"));
        assert!(r.tty && r.stdin);
        assert_eq!(r.size.map(|s| (s.rows, s.cols)), Some((40, 120)));
        let empty = parse_process(br#"{"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        assert!(exec_request(&empty, false).is_err());
    }
}
