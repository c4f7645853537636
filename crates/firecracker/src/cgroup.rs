//! The host's cgroup layout, as the jailer sees it: which hierarchy to ask
//! for (`--cgroup-version`) and which directories it leaves to clean up.
//!
//! Hosts come as pure v2 (`cgroup2` on /sys/fs/cgroup), pure v1, or hybrid
//! (v1 controllers plus a `cgroup2` mount, often with no controllers, at
//! /sys/fs/cgroup/unified). The jailer creates `<mount>/<parent>/<id>` in
//! every hierarchy holding a controller named by a `--cgroup` setting.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The `--cgroup-version` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The jailer's spelling.
    pub fn as_arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// One mounted hierarchy and the controllers it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

/// The cgroup mounts of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// `cgroup` (v1) mounts, one per controller group.
    pub v1: Vec<Hierarchy>,
    /// The `cgroup2` mount, with the controllers in its `cgroup.controllers`.
    pub v2: Option<Hierarchy>,
}

/// A `--cgroup <controller>.<file>=<value>` setting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// Parses `cpu.shares=512`.
    pub fn parse(setting: &str) -> Result<Self> {
        let bad = || Error::InvalidCgroupSetting {
            setting: setting.to_string(),
        };
        let (file, value) = setting.split_once('=').ok_or_else(bad)?;
        let controller_ok = file
            .split_once('.')
            .is_some_and(|(c, f)| !c.is_empty() && !f.is_empty());
        if !controller_ok || value.is_empty() || value.contains('=') || file.contains('/') {
            return Err(bad());
        }
        Ok(CgroupSetting {
            file: file.to_string(),
            value: value.to_string(),
        })
    }

    /// The controller the file belongs to (`cpu` for `cpu.shares`).
    pub fn controller(&self) -> &str {
        self.file.split_once('.').map_or(&self.file[..], |(c, _)| c)
    }
}

impl fmt::Display for CgroupSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.file, self.value)
    }
}

impl CgroupLayout {
    /// Reads this host's layout from /proc/self/mounts.
    pub fn detect() -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|e| Error::io("cannot read", "/proc/self/mounts", e))?;
        Ok(Self::from_mounts(&mounts, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).ok()
        }))
    }

    /// Builds the layout from a mounts table; `v2_controllers` reads a v2
    /// hierarchy's `cgroup.controllers`.
    pub fn from_mounts(mounts: &str, v2_controllers: impl Fn(&Path) -> Option<String>) -> Self {
        let mut layout = CgroupLayout::default();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount_point, fstype, options, ..] = fields[..] else {
                continue;
            };
            let path = PathBuf::from(unescape_mount_field(mount_point));
            match fstype {
                "cgroup" => {
                    let controllers = options
                        .split(',')
                        .filter(|o| !KNOWN_MOUNT_OPTIONS.contains(o) && !o.contains('='))
                        .map(str::to_string)
                        .collect::<Vec<_>>();
                    layout.v1.push(Hierarchy { path, controllers });
                }
                "cgroup2" => {
                    let controllers = v2_controllers(&path)
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    layout.v2 = Some(Hierarchy { path, controllers });
                }
                _ => {}
            }
        }
        layout
    }

    /// The version to pass to the jailer for these settings: v2 when its
    /// hierarchy offers every controller needed, else v1 when the v1 mounts
    /// do. With no settings the jailer creates no cgroups; we still pick the
    /// host's main hierarchy (v2 only on pure-v2 hosts).
    pub fn choose_version(&self, settings: &[CgroupSetting]) -> Result<CgroupVersion> {
        if settings.is_empty() {
            return Ok(if self.v1.is_empty() && self.v2.is_some() {
                CgroupVersion::V2
            } else {
                CgroupVersion::V1
            });
        }
        let in_v2 = |c: &str| {
            self.v2
                .as_ref()
                .is_some_and(|h| h.controllers.iter().any(|x| x == c))
        };
        let in_v1 = |c: &str| self.v1.iter().any(|h| h.controllers.iter().any(|x| x == c));
        if settings.iter().all(|s| in_v2(s.controller())) {
            return Ok(CgroupVersion::V2);
        }
        if settings.iter().all(|s| in_v1(s.controller())) {
            return Ok(CgroupVersion::V1);
        }
        // Name the first setting that fits neither hierarchy.
        let missing = settings
            .iter()
            .find(|s| !in_v1(s.controller()) && !in_v2(s.controller()))
            .unwrap_or(&settings[0]);
        Err(Error::CgroupControllerUnavailable {
            setting: missing.to_string(),
            controller: missing.controller().to_string(),
            v1: self.describe_v1(),
            v2: self.describe_v2(),
        })
    }

    /// Every directory the jailer may have created for `<parent>/<id>`, in
    /// any hierarchy, whether or not it exists.
    pub fn vm_dirs(&self, parent: &str, vm_id: &str) -> Vec<PathBuf> {
        self.v1
            .iter()
            .chain(self.v2.iter())
            .map(|h| h.path.join(parent).join(vm_id))
            .collect()
    }

    /// Removes the VM's cgroup directories (`rmdir`: cgroup directories hold
    /// only kernel files). Missing ones are fine; a busy one is an error.
    pub fn remove_vm_dirs(&self, parent: &str, vm_id: &str) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for dir in self.vm_dirs(parent, vm_id) {
            // A killed VMM's leader may be gone while its vCPU threads are
            // still leaving KVM: the cgroup is busy until they are out.
            let start = std::time::Instant::now();
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => removed.push(dir),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                            && start.elapsed() < BUSY_GRACE =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    Err(source) => return Err(Error::CgroupRemove { path: dir, source }),
                }
                break;
            }
        }
        Ok(removed)
    }

    fn describe_v1(&self) -> String {
        if self.v1.is_empty() {
            return "none".into();
        }
        self.v1
            .iter()
            .map(|h| h.controllers.join("+"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn describe_v2(&self) -> String {
        match &self.v2 {
            None => "not mounted".into(),
            Some(h) if h.controllers.is_empty() => {
                format!("{} with no controllers", h.path.display())
            }
            Some(h) => format!("{}: {}", h.path.display(), h.controllers.join(" ")),
        }
    }
}

/// How long a VM's cgroup may stay busy after its process is gone.
const BUSY_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Generic mount options that are not controller names.
const KNOWN_MOUNT_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "relatime",
    "noatime",
    "nodiratime",
    "strictatime",
    "clone_children",
    "xattr",
    "noprefix",
    "nsdelegate",
    "memory_recursiveprot",
];

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,nodev,noexec,relatime,net_cls,net_prio 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const UNIFIED: &str = "\
/dev/vda / ext4 rw,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
";

    fn setting(s: &str) -> CgroupSetting {
        CgroupSetting::parse(s).unwrap()
    }

    #[test]
    fn hybrid_host_with_empty_v2_uses_v1() {
        let layout = CgroupLayout::from_mounts(HYBRID, |_| Some(String::new()));
        assert_eq!(layout.v1.len(), 5);
        assert_eq!(layout.v1[4].controllers, vec!["net_cls", "net_prio"]);
        assert_eq!(layout.v1[3].controllers, Vec::<String>::new());
        assert_eq!(layout.choose_version(&[]).unwrap(), CgroupVersion::V1);
        assert_eq!(
            layout
                .choose_version(&[
                    setting("cpuset.cpus=0"),
                    setting("memory.limit_in_bytes=1G")
                ])
                .unwrap(),
            CgroupVersion::V1
        );
        let err = layout
            .choose_version(&[setting("io.weight=100")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"io\" controller"), "{err}");
        assert!(
            err.contains("/sys/fs/cgroup/unified with no controllers"),
            "{err}"
        );
    }

    #[test]
    fn hybrid_prefers_v2_when_it_has_the_controller() {
        let layout = CgroupLayout::from_mounts(HYBRID, |p| {
            (p == Path::new("/sys/fs/cgroup/unified")).then(|| "hugetlb\n".to_string())
        });
        assert_eq!(
            layout
                .choose_version(&[setting("hugetlb.2MB.max=0")])
                .unwrap(),
            CgroupVersion::V2
        );
        // Mixed needs fall back to the hierarchy that has them all.
        assert_eq!(
            layout.choose_version(&[setting("cpu.shares=10")]).unwrap(),
            CgroupVersion::V1
        );
    }

    #[test]
    fn unified_host_uses_v2() {
        let layout =
            CgroupLayout::from_mounts(UNIFIED, |_| Some("cpuset cpu io memory pids\n".into()));
        assert!(layout.v1.is_empty());
        assert_eq!(layout.choose_version(&[]).unwrap(), CgroupVersion::V2);
        assert_eq!(
            layout
                .choose_version(&[setting("cpu.max=50000 100000")])
                .unwrap(),
            CgroupVersion::V2
        );
        assert!(layout
            .choose_version(&[setting("cpuacct.usage=0")])
            .is_err());
        assert_eq!(
            layout.vm_dirs("firecracker", "vm1"),
            vec![PathBuf::from("/sys/fs/cgroup/firecracker/vm1")]
        );
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(setting("cpu.shares=512").controller(), "cpu");
        assert_eq!(setting("cpu.max=50000 100000").value, "50000 100000");
        // The jailer splits on every "=" and wants exactly two parts.
        for bad in [
            "cpu.shares",
            "shares=1",
            "cpu.shares=",
            ".x=1",
            "cpu.=1",
            "a.b=c=d",
            "../x.y=1",
        ] {
            assert!(CgroupSetting::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mount_paths_are_unescaped() {
        let layout = CgroupLayout::from_mounts("cgroup /a\\040b cgroup rw,cpu 0 0\n", |_| None);
        assert_eq!(layout.v1[0].path, PathBuf::from("/a b"));
    }

    #[test]
    fn this_host_layout_is_readable() {
        // Whatever the host, detection must not fail and must pick a version.
        let layout = CgroupLayout::detect().unwrap();
        layout.choose_version(&[]).unwrap();
    }
}
