//! The OCI runtime spec (`config.json` of the bundle, and the process of a
//! `task exec`) as what the VM and the guest agent take.

use std::path::Path;

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
    })
}

/// The spec's mounts the guest makes itself (`/proc`, `/dev`, `/sys`, ...)
/// are left to it; a bind mount of a host path cannot reach the VM yet
/// and is refused, naming it, rather than silently left out.
pub fn check_mounts(spec: &Spec) -> anyhow::Result<()> {
    for m in spec.mounts().iter().flatten() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind {
            anyhow::bail!(
                "bind mount {} -> {}: host directories and files cannot be mounted into a firebuild VM yet (drop the mount, or bake the files into the image)",
                m.source().as_ref().map_or_else(String::new, |s| s.display().to_string()),
                m.destination().display()
            );
        }
    }
    Ok(())
}

/// The agent request that runs `process`. Refuses what the agent cannot
/// honour rather than run it differently.
pub fn exec_request(process: &Process, stdin: bool) -> anyhow::Result<ExecRequest> {
    let argv = process.args().clone().unwrap_or_default();
    anyhow::ensure!(!argv.is_empty(), "the process spec has no args");
    let user = process.user();
    if let Some(groups) = user.additional_gids() {
        if groups.iter().any(|g| *g != user.gid()) {
            tracing::warn!("additional gids {groups:?} are not applied in the VM yet");
        }
    }
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
    fn resources_size_the_vm_and_annotations_win() {
        let s = spec(serde_json::json!({
            "hostname": "web",
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000},
                                    "memory": {"limit": 300 * 1024 * 1024}}},
        }));
        let shape = vm_shape(&s).unwrap();
        assert_eq!((shape.cpus, shape.mem_mib), (Some(2), Some(300)));
        assert_eq!(shape.hostname.as_deref(), Some("web"));
        let s = spec(serde_json::json!({
            "annotations": {"io.firebuild.cpus": "3", "io.firebuild.vmm": "qemu"},
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000}}},
        }));
        let shape = vm_shape(&s).unwrap();
        assert_eq!((shape.cpus, shape.vmm), (Some(3), Some(VmmChoice::Qemu)));
    }

    #[test]
    fn bind_mounts_are_refused_by_name() {
        let ok = spec(serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid"]},
        ]}));
        check_mounts(&ok).unwrap();
        let bind = spec(serde_json::json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
        ]}));
        let err = format!("{:#}", check_mounts(&bind).unwrap_err());
        assert!(err.contains("/srv/data -> /data"), "{err}");
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
                 "user":{"uid":1000,"gid":100},"consoleSize":{"height":40,"width":120}}"#,
        )
        .unwrap();
        let r = exec_request(&p, true).unwrap();
        assert_eq!(r.argv, ["ls", "-l"]);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.user.as_deref(), Some("1000:100"));
        assert_eq!(r.workdir.as_deref(), Some("/tmp"));
        assert!(r.tty && r.stdin);
        assert_eq!(r.size.map(|s| (s.rows, s.cols)), Some((40, 120)));
        let empty = parse_process(br#"{"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        assert!(exec_request(&empty, false).is_err());
    }
}
