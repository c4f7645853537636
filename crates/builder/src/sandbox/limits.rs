//! Resource limits of a build's RUN steps (`--memory`, `--cpus`,
//! `--pids-limit`, as `docker build` has them), through the host's cgroup
//! hierarchy: cgroup v2 where it offers the controllers, else the v1
//! hierarchies (hybrid hosts such as ours mount v2 with no controllers).
//!
//! Each step gets a cgroup of its own — v1: `<hierarchy>/<builder's
//! cgroup>/firebuild-<step>`; v2: `<root>/firebuild/build-<step>` (a leaf
//! under a process-free parent, as v2 requires) — removed when the step
//! ends. After the step, the kernel's counters say whether a limit was hit,
//! so a failure names it.

use std::path::{Path, PathBuf};

use crate::error::{BuildError, Result};

/// Limits of one build; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (no swap on top).
    pub memory: Option<u64>,
    /// CPU time per 100 ms period, in microseconds (`--cpus 1.5` = 150000).
    pub cpu_quota_us: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// The cgroup period the CPU quota is given for.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The controllers these limits need.
    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.memory.is_some() {
            c.push("memory");
        }
        if self.cpu_quota_us.is_some() {
            c.push("cpu");
        }
        if self.pids.is_some() {
            c.push("pids");
        }
        c
    }
}

/// A size as Docker reads one: bytes with an optional `b`, `k`, `m`, `g` or
/// `t` suffix (`512m`, `1g`, `1073741824`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some(b'm') => (&t[..t.len() - 1], 1 << 20),
        Some(b'g') => (&t[..t.len() - 1], 1 << 30),
        Some(b't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size: use a number of bytes with an optional b, k, m, g or t suffix (512m)"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{s:?} is not a size: it must not be negative"));
    }
    Ok((n * mult as f64) as u64)
}

/// `--memory`: a [`parse_size`] of at least Docker's minimum.
pub fn parse_memory(s: &str) -> std::result::Result<u64, String> {
    let bytes = parse_size(s)?;
    // Docker's minimum: less cannot start a shell.
    if bytes < 6 << 20 {
        return Err(format!("{s:?} is too little memory: the minimum is 6m"));
    }
    Ok(bytes)
}

/// `--cpus`: a number of CPUs (`0.5`, `2`), as a quota per period.
pub fn parse_cpus(s: &str) -> std::result::Result<u64, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of CPUs (such as 0.5 or 2)"))?;
    if !(n > 0.0 && n <= 1024.0) {
        return Err(format!("{s:?}: give a number of CPUs above 0"));
    }
    Ok(((n * CPU_PERIOD_US as f64) as u64).max(1000))
}

/// `--pids-limit`: at least a handful (the step's shell needs some).
pub fn parse_pids(s: &str) -> std::result::Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of processes"))?;
    if n < 4 {
        return Err(format!("{s:?}: a step needs at least 4 processes"));
    }
    Ok(n)
}

/// Shows a byte count the way it was probably given.
fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}g", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}m", bytes >> 20)
    } else {
        format!("{bytes}")
    }
}

/// The cgroup mounts of this host (from `/proc/self/mounts`) and where the
/// builder sits in each (`/proc/self/cgroup`).
#[derive(Debug, Clone, Default)]
pub struct Hierarchies {
    /// v1: (controllers, mount point, the builder's cgroup path).
    v1: Vec<(Vec<String>, PathBuf, String)>,
    /// v2: (mount point, controllers offered at its root).
    v2: Option<(PathBuf, Vec<String>)>,
}

impl Hierarchies {
    pub fn detect() -> Hierarchies {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::parse(&mounts, &own, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).ok()
        })
    }

    fn parse(
        mounts: &str,
        own: &str,
        controllers_of: impl Fn(&Path) -> Option<String>,
    ) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [_, point, fstype, opts, ..] = f[..] else {
                continue;
            };
            match fstype {
                "cgroup" => {
                    let ctrls: Vec<String> = opts.split(',').map(str::to_owned).collect();
                    let path = own
                        .lines()
                        .filter_map(|l| {
                            let mut f = l.splitn(3, ':');
                            f.next();
                            Some((f.next()?, f.next()?))
                        })
                        .find(|(names, _)| names.split(',').any(|n| ctrls.iter().any(|c| c == n)))
                        .map(|(_, p)| p.to_owned())
                        .unwrap_or_else(|| "/".into());
                    h.v1.push((ctrls, PathBuf::from(point), path));
                }
                "cgroup2" if h.v2.is_none() => {
                    let ctrls = controllers_of(Path::new(point))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    h.v2 = Some((PathBuf::from(point), ctrls));
                }
                _ => {}
            }
        }
        h
    }

    /// The directories a step named `name` gets for `limits`, or why the
    /// host cannot give them.
    fn plan(&self, limits: &Limits, name: &str) -> std::result::Result<Layout, String> {
        let need = limits.controllers();
        if let Some((root, offered)) = &self.v2 {
            if need.iter().all(|c| offered.iter().any(|o| o == c)) {
                return Ok(Layout::V2 {
                    root: root.clone(),
                    dir: root.join("firebuild").join(format!("build-{name}")),
                    controllers: need.iter().map(|c| c.to_string()).collect(),
                });
            }
        }
        let mut dirs = Vec::new();
        for c in &need {
            let Some((_, point, own)) = self
                .v1
                .iter()
                .find(|(ctrls, _, _)| ctrls.iter().any(|x| x == c))
            else {
                return Err(format!(
                    "this host offers no {c} cgroup controller (v1: {}; v2: {})",
                    self.describe_v1(),
                    self.v2
                        .as_ref()
                        .map_or("not mounted".into(), |(p, c)| format!(
                            "{} with [{}]",
                            p.display(),
                            c.join(" ")
                        ))
                ));
            };
            let dir = point
                .join(own.trim_start_matches('/'))
                .join(format!("firebuild-{name}"));
            if !dirs.iter().any(|(_, d)| *d == dir) {
                dirs.push((c.to_string(), dir));
            }
        }
        Ok(Layout::V1 { dirs })
    }

    fn describe_v1(&self) -> String {
        let names: Vec<String> = self
            .v1
            .iter()
            .map(|(c, _, _)| {
                c.iter()
                    .filter(|o| {
                        !o.contains('=')
                            && !matches!(
                                o.as_str(),
                                "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime"
                            )
                    })
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Checks up front that `limits` can be applied here.
    pub fn check(&self, limits: &Limits) -> Result<()> {
        if limits.is_empty() {
            return Ok(());
        }
        self.plan(limits, "check")
            .map(|_| ())
            .map_err(|why| BuildError::Sandbox(format!("build limits: {why}")))
    }
}

#[derive(Debug, Clone)]
enum Layout {
    V1 {
        dirs: Vec<(String, PathBuf)>,
    },
    V2 {
        root: PathBuf,
        dir: PathBuf,
        controllers: Vec<String>,
    },
}

/// The cgroup of one step; removed on drop.
#[derive(Debug)]
pub struct StepCgroup {
    layout: Layout,
    limits: Limits,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| {
        BuildError::Sandbox(format!(
            "build limits: writing {value:?} to {}: {e}",
            path.display()
        ))
    })
}

impl StepCgroup {
    /// Creates the step's cgroup with `limits` set; `None` when there are
    /// no limits.
    pub fn create(h: &Hierarchies, limits: &Limits, name: &str) -> Result<Option<StepCgroup>> {
        if limits.is_empty() {
            return Ok(None);
        }
        let layout = h
            .plan(limits, name)
            .map_err(|why| BuildError::Sandbox(format!("build limits: {why}")))?;
        let mkdir = |d: &Path| {
            std::fs::create_dir_all(d).map_err(|e| {
                BuildError::Sandbox(format!("build limits: creating {}: {e}", d.display()))
            })
        };
        let cg = StepCgroup {
            layout: layout.clone(),
            limits: *limits,
        };
        for d in cg.dirs() {
            remove_stale_siblings(d);
        }
        match &layout {
            Layout::V2 {
                root,
                dir,
                controllers,
            } => {
                let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
                write(&root.join("cgroup.subtree_control"), enable.trim())?;
                mkdir(dir.parent().unwrap_or(root))?;
                write(
                    &dir.parent().unwrap_or(root).join("cgroup.subtree_control"),
                    enable.trim(),
                )?;
                mkdir(dir)?;
                if let Some(m) = limits.memory {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(q) = limits.cpu_quota_us {
                    write(&dir.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
                }
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
            }
            Layout::V1 { dirs } => {
                for (c, dir) in dirs {
                    mkdir(dir)?;
                    match c.as_str() {
                        "memory" => {
                            let m = limits.memory.unwrap_or(u64::MAX).to_string();
                            write(&dir.join("memory.limit_in_bytes"), &m)?;
                            // Without swap accounting the file is absent: then
                            // the limit is on RAM alone.
                            let sw = dir.join("memory.memsw.limit_in_bytes");
                            if sw.exists() {
                                write(&sw, &m)?;
                            }
                        }
                        "cpu" => {
                            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                            write(
                                &dir.join("cpu.cfs_quota_us"),
                                &limits.cpu_quota_us.unwrap_or(0).to_string(),
                            )?;
                        }
                        "pids" => {
                            write(&dir.join("pids.max"), &limits.pids.unwrap_or(0).to_string())?
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Some(cg))
    }

    fn dirs(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V1 { dirs } => dirs.iter().map(|(_, d)| d.as_path()).collect(),
            Layout::V2 { dir, .. } => vec![dir.as_path()],
        }
    }

    /// Moves `pid` into the step's cgroup (every hierarchy).
    pub fn add(&self, pid: libc::pid_t) -> Result<()> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn counter(&self, controller: &str, file: &str, key: &str) -> u64 {
        let dir = match &self.layout {
            Layout::V1 { dirs } => dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path()),
            Layout::V2 { dir, .. } => Some(dir.as_path()),
        };
        let Some(text) = dir.and_then(|d| std::fs::read_to_string(d.join(file)).ok()) else {
            return 0;
        };
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Which limit the step ran into, said the way the user gave it.
    pub fn exceeded(&self) -> Option<String> {
        let v2 = matches!(self.layout, Layout::V2 { .. });
        if let Some(m) = self.limits.memory {
            let (file, key) = if v2 {
                ("memory.events", "oom_kill")
            } else {
                ("memory.oom_control", "oom_kill")
            };
            if self.counter("memory", file, key) > 0 {
                return Some(format!("it ran out of memory: the build's --memory {} was exceeded and the kernel's OOM killer stopped a process", human(m)));
            }
        }
        if let Some(p) = self.limits.pids {
            if self.counter("pids", "pids.events", "max") > 0 {
                return Some(format!(
                    "it hit the build's --pids-limit {p}: creating more processes failed"
                ));
            }
        }
        None
    }
}

/// Removes the empty step cgroups next to `dir` whose builder process is
/// gone (a builder killed with SIGKILL cannot remove its own). Step cgroups
/// are named `<prefix>-<builder pid>-<n>`.
fn remove_stale_siblings(dir: &Path) {
    let Some(parent) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("firebuild-")
            .or_else(|| name.strip_prefix("build-"))
        else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        for d in self.dirs() {
            // The step's processes are gone; the kernel may still be
            // emptying the cgroup.
            for _ in 0..100 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
        cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
        cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
    const OWN: &str = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn sizes_and_cpus_parse_as_docker_reads_them() {
        assert_eq!(parse_memory("64m"), Ok(64 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory("104857600"), Ok(100 << 20));
        assert_eq!(parse_memory("512mb"), Ok(512 << 20));
        assert!(parse_memory("1m").unwrap_err().contains("minimum"));
        assert!(parse_memory("lots").unwrap_err().contains("not a size"));
        assert_eq!(parse_cpus("0.5"), Ok(50_000));
        assert!(parse_cpus("0").is_err());
        assert_eq!(parse_pids("100"), Ok(100));
        assert!(parse_pids("2").is_err());
        assert_eq!(human(64 << 20), "64m");
    }

    #[test]
    fn hybrid_hosts_use_v1_under_the_builders_cgroup() {
        let h = Hierarchies::parse(HYBRID, OWN, |_| Some(String::new()));
        let l = Limits {
            memory: Some(64 << 20),
            cpu_quota_us: None,
            pids: Some(50),
        };
        let Layout::V1 { dirs } = h.plan(&l, "s1").unwrap() else {
            panic!("v1 expected")
        };
        assert_eq!(
            dirs,
            vec![
                (
                    "memory".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/firebuild-s1")
                ),
                (
                    "pids".to_string(),
                    PathBuf::from("/sys/fs/cgroup/pids/firebuild-s1")
                ),
            ]
        );
    }

    #[test]
    fn v2_is_used_when_it_offers_the_controllers_and_missing_ones_are_named() {
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        let h = Hierarchies::parse(v2, "0::/user.slice\n", |_| {
            Some("cpu memory pids io".into())
        });
        let l = Limits {
            memory: Some(64 << 20),
            ..Default::default()
        };
        let Layout::V2 {
            dir, controllers, ..
        } = h.plan(&l, "s1").unwrap()
        else {
            panic!("v2 expected")
        };
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/firebuild/build-s1"));
        assert_eq!(controllers, vec!["memory"]);
        let h = Hierarchies::parse(v2, "0::/\n", |_| Some("cpu".into()));
        let e = h
            .check(&Limits {
                pids: Some(10),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no pids cgroup controller") && e.contains("[cpu]"),
            "{e}"
        );
    }
}
