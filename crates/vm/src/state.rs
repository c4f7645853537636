//! The run metadata: `run.json` in each run directory, what `ls` and
//! `inspect` show.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::disks::RootfsMode;
use crate::error::VmError;
use crate::liveness::ProcessIdentity;
use crate::spec::NetworkAttachment;
use crate::vmm::VmmKind;
use crate::volumes::VolumeMount;

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    /// The run directory is being prepared; the VMM has not started.
    Created,
    Running,
    /// Its vCPUs are stopped (`pause`, or a snapshot being taken).
    Paused,
    Exited,
}

impl VmStatus {
    /// Whether its VMM process should be running (running or paused).
    pub fn is_live(self) -> bool {
        matches!(self, VmStatus::Running | VmStatus::Paused)
    }
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmStatus::Created => "created",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Exited => "exited",
        })
    }
}

/// The state of one VM, as stored in its run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetadata {
    pub id: String,
    pub name: String,
    /// The image tag, `org/name:version`.
    pub image: String,
    pub hostname: String,
    /// The guest's address, when it has a network.
    pub ip: Option<String>,
    /// The VMM's pid (the jailer's child under Firecracker).
    pub pid: Option<i32>,
    /// The VMM's start time (see [`ProcessIdentity`]), to detect pid reuse.
    pub pid_start_time: Option<u64>,
    pub status: VmStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub started: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub exited: Option<OffsetDateTime>,
    /// The entrypoint's exit code, once known (from the console marker).
    pub exit_code: Option<i32>,
    /// Which backend runs the VM.
    pub vmm: VmmKind,
    /// Backend-specific details (accelerator, machine, sockets, jail ...).
    #[serde(default)]
    pub vmm_details: serde_json::Value,
    pub network: Option<NetworkAttachment>,
    pub kernel: PathBuf,
    #[serde(default)]
    pub kernel_id: String,
    pub kernel_args: String,
    pub cpus: u32,
    pub mem_mib: u32,
    /// The resolved command the guest starts.
    pub command: Vec<String>,
    pub run_dir: PathBuf,
    pub daemonized: bool,
    pub remove_on_exit: bool,
    pub shutdown_timeout_secs: u64,
    /// The firebuild process that created the VM: a `created` VM whose
    /// creator is gone was abandoned half-way and may be purged.
    pub creator: ProcessIdentity,
    /// The guest agent runs a health check (`ls` asks it for the state).
    #[serde(default)]
    pub has_healthcheck: bool,
    /// How the VM got its root filesystem (VMs from before shared images
    /// had a copy).
    #[serde(default = "copy_mode")]
    pub rootfs_mode: RootfsMode,
    /// The file the VMM opens as the root drive: the run directory's link to
    /// the stored image, its private copy, or (another filesystem) the
    /// stored image itself.
    #[serde(default)]
    pub root_disk: Option<PathBuf>,
    /// Its volumes, in attach order. A VM that has not exited holds them
    /// (the single-writer rule); one not yet purged keeps them in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// The snapshot tag it was resumed from, if it did not boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
}

fn copy_mode() -> RootfsMode {
    RootfsMode::Copy
}

impl RunMetadata {
    /// The VMM process, if it was started.
    pub fn process(&self) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid: self.pid?,
            start_time: self.pid_start_time?,
        })
    }

    /// Bytes its writable disks take on the host.
    pub fn disk_usage(&self) -> u64 {
        crate::disks::allocated_bytes(&self.run_dir, self.rootfs_mode)
    }

    /// Whether the VM boots the image file `image` (same inode).
    pub fn uses_image(&self, image: &Path) -> bool {
        let root = self
            .root_disk
            .clone()
            .unwrap_or_else(|| self.run_dir.join("rootfs.ext4"));
        let theirs = crate::disks::file_identity(&root);
        theirs.is_some() && theirs == crate::disks::file_identity(image)
    }

    /// Its mount of the volume file `path`, if it has one.
    pub fn volume_mount(&self, path: &Path) -> Option<&VolumeMount> {
        self.volumes.iter().find(|m| m.is_file(path))
    }

    /// Reads `run.json` from `path`.
    pub fn load(path: &Path) -> Result<Self, VmError> {
        let bytes =
            std::fs::read(path).map_err(|e| VmError::io("reading run metadata", path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| VmError::RunMetadata {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes `run.json` atomically (a temp file of this writer's own,
    /// fsync, rename), so a reader never sees half a document and two
    /// writers never share a temp file.
    pub fn store(&self, path: &Path) -> Result<(), VmError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.tmp-{}-{seq}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut f, self)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            VmError::io("writing run metadata", path, e)
        })
    }

    /// The row `ls` prints: the original's fields.
    pub fn summary(&self) -> VmSummary {
        VmSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            ip: self.ip.clone().unwrap_or_default(),
            pid: self.pid,
            status: self.status,
            started: self
                .started
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default(),
            vmm: self.vmm,
            exit_code: self.exit_code,
            health: None,
            disk_bytes: self.disk_usage(),
        }
    }
}

/// One line of `ls` (a table row, or a JSON line with `--log-as-json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub ip: String,
    pub pid: Option<i32>,
    pub status: VmStatus,
    pub started: String,
    pub vmm: VmmKind,
    pub exit_code: Option<i32>,
    /// The health check's state (`starting`, `healthy`, `unhealthy`) of a
    /// running VM that has one, as its agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Bytes its writable disks take on the host (scratch disk or copy).
    #[serde(default)]
    pub disk_bytes: u64,
}

/// Renders summaries as the aligned table `firebuild ls` prints, sizes
/// written by `size`.
pub fn render_table(rows: &[VmSummary], size: impl Fn(u64) -> String) -> String {
    let header = [
        "ID", "NAME", "IMAGE", "IP", "PID", "STATUS", "STARTED", "VMM", "DISK",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let status = match (r.status, r.exit_code, &r.health) {
                (VmStatus::Exited, Some(code), _) => format!("exited ({code})"),
                (s, _, Some(h)) => format!("{s} ({h})"),
                (s, _, None) => s.to_string(),
            };
            [
                r.id.clone(),
                r.name.clone(),
                r.image.clone(),
                r.ip.clone(),
                r.pid.map(|p| p.to_string()).unwrap_or_default(),
                status,
                r.started.clone(),
                r.vmm.to_string(),
                size(r.disk_bytes),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[String]| {
        let text: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &cells {
        line(row);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(dir: &Path) -> RunMetadata {
        RunMetadata {
            id: "vm1".into(),
            name: "quiet-otter".into(),
            image: "org/app:1".into(),
            hostname: "quiet-otter".into(),
            ip: Some("10.0.0.2".into()),
            pid: Some(42),
            pid_start_time: Some(7),
            status: VmStatus::Running,
            created: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            started: Some(OffsetDateTime::from_unix_timestamp(1_700_000_001).unwrap()),
            exited: None,
            exit_code: None,
            vmm: VmmKind::Qemu,
            vmm_details: serde_json::json!({"accel": "tcg"}),
            network: None,
            kernel: "/k/vmlinux".into(),
            kernel_id: "k1".into(),
            kernel_args: "console=ttyS0".into(),
            cpus: 1,
            mem_mib: 128,
            command: vec!["/bin/sh".into()],
            run_dir: dir.to_owned(),
            daemonized: true,
            remove_on_exit: false,
            shutdown_timeout_secs: 15,
            creator: ProcessIdentity {
                pid: 1,
                start_time: 1,
            },
            has_healthcheck: false,
            rootfs_mode: RootfsMode::Overlay,
            root_disk: Some(dir.join("rootfs.ext4")),
            volumes: Vec::new(),
            from_snapshot: None,
        }
    }

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let md = sample(dir.path());
        md.store(&path).unwrap();
        assert_eq!(RunMetadata::load(&path).unwrap(), md);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["status"], "running");
        assert_eq!(v["vmm"], "qemu");
        assert_eq!(v["started"], "2023-11-14T22:13:21Z");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["run.json"], "no temp file left");
    }

    #[test]
    fn concurrent_writers_never_tear_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let writers: Vec<_> = (0..8u32)
            .map(|i| {
                let path = path.clone();
                let mut md = sample(dir.path());
                md.cpus = i + 1;
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        md.store(&path).unwrap();
                        RunMetadata::load(&path).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert!((1..=8).contains(&RunMetadata::load(&path).unwrap().cpus));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn load_reports_bad_json_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = RunMetadata::load(&path).unwrap_err();
        assert!(err.to_string().contains("run.json"), "{err}");
    }

    #[test]
    fn table_has_original_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = sample(dir.path());
        let running = md.summary();
        md.status = VmStatus::Exited;
        md.exit_code = Some(3);
        md.id = "a-much-longer-id".into();
        let table = render_table(&[running, md.summary()], |b| format!("{b}B"));
        let lines: Vec<_> = table.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("STATUS"));
        assert!(lines[1].contains("running") && lines[1].contains("10.0.0.2"));
        assert!(lines[2].contains("exited (3)"));
        assert!(lines[0].ends_with("DISK") && lines[1].ends_with("0B"));
        // Columns are aligned.
        assert_eq!(lines[0].find("NAME"), lines[1].find("quiet-otter"));
    }
}
