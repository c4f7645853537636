//! Builds an uncompressed ELF `vmlinux` from kernel source with the project's
//! microVM config (plus an optional user fragment), in a temporary directory.
//!
//! Steps: check build tools → unpack the tarball (if the source is one) →
//! `allnoconfig` with the merged fragment as `KCONFIG_ALLCONFIG`, then
//! `olddefconfig` → check every fragment option kept its value → `make
//! vmlinux` → check the output is an x86_64 ELF. Source trees are built out
//! of tree (`make O=...`), so they are left untouched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{self, Fragment};
use crate::error::{Error, Result};
use crate::identify;
use crate::process::StepLog;
use crate::source::{self, KernelSource, SourceKind};
use crate::tools;
use crate::workdir::WorkDir;

/// One step of a build, named in progress lines and failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStep {
    /// Look for compilers, tools and headers.
    CheckTools,
    /// Unpack the source tarball.
    Extract,
    /// Generate `.config` from the merged fragment.
    Configure,
    /// Check every fragment option kept its value.
    VerifyConfig,
    /// `make vmlinux`.
    Compile,
    /// Check the result is an x86_64 ELF vmlinux.
    CheckOutput,
}

impl BuildStep {
    /// Every step, in order.
    pub const ALL: [BuildStep; 6] = [
        BuildStep::CheckTools,
        BuildStep::Extract,
        BuildStep::Configure,
        BuildStep::VerifyConfig,
        BuildStep::Compile,
        BuildStep::CheckOutput,
    ];

    fn number(self) -> usize {
        BuildStep::ALL.iter().position(|s| *s == self).unwrap_or(0) + 1
    }
}

impl fmt::Display for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildStep::CheckTools => "check build tools",
            BuildStep::Extract => "extract source",
            BuildStep::Configure => "configure",
            BuildStep::VerifyConfig => "verify config",
            BuildStep::Compile => "compile",
            BuildStep::CheckOutput => "check output",
        })
    }
}

/// A progress report: one when each step starts, and during the compile
/// step about once a second with the count of objects compiled so far.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The step starting.
    pub step: BuildStep,
    /// What it is working on.
    pub detail: String,
    /// During the compile step: objects compiled so far (`None` in the
    /// report that starts a step).
    pub compiled: Option<usize>,
}

impl fmt::Display for Progress {
    /// `[3/6] configure: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}/{}] {}: {}",
            self.step.number(),
            BuildStep::ALL.len(),
            self.step,
            self.detail
        )
    }
}

/// What to build and where.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Source tarball or unpacked tree.
    pub source: PathBuf,
    /// A user config fragment merged over the project's.
    pub config: Option<PathBuf>,
    /// Parallel jobs; `None` means the number of cores.
    pub jobs: Option<usize>,
    /// Where the temporary build directory goes (needs ~2 GB while building).
    pub work_dir: PathBuf,
    /// The build log; kept after the build (its path is in every failure).
    pub log: PathBuf,
    /// Run the build under `nice -n <niceness>`.
    pub niceness: Option<i32>,
}

impl BuildOptions {
    /// Defaults: no user fragment, one job per core, the system temp dir.
    pub fn new(source: impl Into<PathBuf>, log: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            source: source.into(),
            config: None,
            jobs: None,
            work_dir: std::env::temp_dir(),
            log: log.into(),
            niceness: None,
        }
    }
}

/// The number of cores, the default for `--jobs`.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A built kernel, still in its temporary build directory (removed when
/// this is dropped): publish it with [`crate::KernelStore::publish_built`].
#[derive(Debug)]
pub struct BuiltKernel {
    /// The vmlinux in the build directory.
    pub vmlinux: PathBuf,
    /// The final `.config` in the build directory.
    pub config: PathBuf,
    /// Kernel release (`6.1.192`).
    pub release: String,
    /// Digest of the merged config fragment ([`Fragment::digest`]).
    pub config_digest: String,
    /// The source it was built from.
    pub source: PathBuf,
    /// Wall time of the whole build.
    pub elapsed: Duration,
    /// The build log.
    pub log: PathBuf,
    _work: WorkDir,
}

/// Tells the caller (and the debug log) a step starts.
fn report(progress: &mut dyn FnMut(&Progress), step: BuildStep, detail: String) {
    let p = Progress {
        step,
        detail,
        compiled: None,
    };
    // Debug level: the caller prints progress its own way.
    tracing::debug!("{p}");
    progress(&p);
}

/// Builds a vmlinux. `progress` is called as each step starts.
pub fn build_kernel(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<BuiltKernel> {
    let started = Instant::now();
    let fragment = config::merged(opts.config.as_deref())?;
    let source = KernelSource::detect(&opts.source)?;
    let jobs = opts.jobs.unwrap_or_else(default_jobs).max(1);
    let mut log = StepLog::create(&opts.log, opts.niceness)?;
    report(
        progress,
        BuildStep::CheckTools,
        "compiler, make, flex, bison, bc, libelf and OpenSSL headers".into(),
    );
    tools::check(source.needs())?;

    let work = WorkDir::create(&opts.work_dir)?;
    let work_path = absolute(work.path())?;
    let out = work_path.join("build");
    std::fs::create_dir(&out).map_err(|e| Error::io("create", &out, e))?;
    log.note(&format!(
        "source: {}\nbuild directory: {}",
        opts.source.display(),
        out.display()
    ));

    let tree = match source.kind {
        SourceKind::Tarball { .. } => {
            report(
                progress,
                BuildStep::Extract,
                format!("unpacking {}", opts.source.display()),
            );
            let dest = work_path.join("src");
            std::fs::create_dir(&dest).map_err(|e| Error::io("create", &dest, e))?;
            let mut tar = log.command("tar");
            tar.arg("-xf")
                .arg(absolute(&opts.source)?)
                .arg("-C")
                .arg(&dest);
            log.run(BuildStep::Extract, &mut tar)?;
            source::unpacked_root(&dest)
                .map_err(|e| log.failed(BuildStep::Extract, e.to_string()))?
        }
        SourceKind::Tree => {
            report(
                progress,
                BuildStep::Extract,
                "source is a tree: building out of tree, nothing to unpack".into(),
            );
            absolute(&opts.source)?
        }
    };
    let version = KernelSource::detect(&tree)
        .and_then(|s| s.version())
        .map_err(|e| log.failed(BuildStep::Extract, e.to_string()))?;

    report(
        progress,
        BuildStep::Configure,
        format!(
            "Linux {version}: allnoconfig + {} fragment options (config digest {})",
            fragment.len(),
            &fragment.digest()[..12]
        ),
    );
    let fragment_path = work_path.join("firebuild-fragment.config");
    std::fs::write(&fragment_path, fragment.render())
        .map_err(|e| Error::io("write", &fragment_path, e))?;
    for target in ["allnoconfig", "olddefconfig"] {
        let mut make = make(&log, &tree, &out);
        make.arg(format!("KCONFIG_ALLCONFIG={}", fragment_path.display()))
            .arg(target);
        log.run(BuildStep::Configure, &mut make)?;
    }

    report(
        progress,
        BuildStep::VerifyConfig,
        format!("checking {} options", fragment.len()),
    );
    verify_config(&fragment, &out.join(".config"), &mut log)?;

    report(
        progress,
        BuildStep::Compile,
        format!("make -j{jobs} vmlinux (this takes a while)"),
    );
    let mut make = make(&log, &tree, &out);
    make.arg(format!("-j{jobs}")).arg("vmlinux");
    log.run_counting(BuildStep::Compile, &mut make, &mut |n| {
        progress(&Progress {
            step: BuildStep::Compile,
            detail: format!("{n} objects compiled"),
            compiled: Some(n),
        })
    })?;

    report(
        progress,
        BuildStep::CheckOutput,
        "checking vmlinux is an x86_64 ELF".into(),
    );
    let vmlinux = out.join("vmlinux");
    identify::require_vmlinux(&vmlinux)
        .map_err(|e| log.failed(BuildStep::CheckOutput, e.to_string()))?;
    let release = std::fs::read_to_string(out.join("include/config/kernel.release"))
        .map(|r| r.trim().to_string())
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or(version);
    let elapsed = started.elapsed();
    log.note(&format!("==> built Linux {release} in {:.0?}", elapsed));

    Ok(BuiltKernel {
        vmlinux,
        config: out.join(".config"),
        release,
        config_digest: fragment.digest(),
        source: opts.source.clone(),
        elapsed,
        log: log.path().to_path_buf(),
        _work: work,
    })
}

/// `make -C <tree> O=<out> ARCH=x86_64` with a fixed build user and host, so
/// the banner does not leak the builder's names.
fn make(log: &StepLog, tree: &Path, out: &Path) -> std::process::Command {
    let mut make = log.command("make");
    make.arg("-C")
        .arg(tree)
        .arg(format!("O={}", out.display()))
        .arg("ARCH=x86_64")
        .env("KBUILD_BUILD_USER", "firebuild")
        .env("KBUILD_BUILD_HOST", "firebuild");
    make
}

/// Fails when an option of the fragment did not keep its value; the final
/// `.config` is copied beside the log so it survives the build directory.
fn verify_config(fragment: &Fragment, dot_config: &Path, log: &mut StepLog) -> Result<()> {
    let text = std::fs::read_to_string(dot_config).map_err(|e| {
        log.failed(
            BuildStep::VerifyConfig,
            format!("cannot read {}: {e}", dot_config.display()),
        )
    })?;
    let mismatches = fragment.verify(&text);
    if mismatches.is_empty() {
        return Ok(());
    }
    let kept = log.path().with_extension("config");
    let config = match std::fs::copy(dot_config, &kept) {
        Ok(_) => kept,
        Err(_) => dot_config.to_path_buf(),
    };
    for m in &mismatches {
        log.note(&format!("config mismatch: {m}"));
    }
    Err(Error::ConfigNotApplied { mismatches, config })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::tests::{fake_tree, MAKEFILE};

    /// A fake kernel tree whose Makefile imitates kbuild's targets: the
    /// config targets copy the fragment (minus lines matching `drop`), and
    /// `vmlinux` copies a prepared file.
    pub(crate) fn fake_kernel_tree(dir: &Path, drop: &str, vmlinux: &[u8], compile_fails: bool) {
        let compile = if compile_fails {
            "\t@echo 'arch/x86/kernel/setup.c:1: error: boom' >&2; exit 2\n".to_string()
        } else {
            "\t@echo '  CC      init/main.o'; echo '  CC      kernel/fork.o'; sleep 0.7; echo '  LD      vmlinux.o'; echo '  CC      mm/slab.o'; sleep 0.7\n\tcp $(CURDIR)/fake-vmlinux $(O)/vmlinux\n\tmkdir -p $(O)/include/config\n\techo 6.1.192-fake > $(O)/include/config/kernel.release\n".to_string()
        };
        let makefile = format!(
            "{MAKEFILE}\nallnoconfig:\n\tgrep -v '{drop}' $(KCONFIG_ALLCONFIG) > $(O)/.config\nolddefconfig:\n\t@true\nvmlinux:\n{compile}"
        );
        fake_tree(dir, &makefile);
        std::fs::write(dir.join("fake-vmlinux"), vmlinux).unwrap();
    }

    fn options(tree: &Path, dir: &Path) -> BuildOptions {
        let mut o = BuildOptions::new(tree, dir.join("logs/build.log"));
        o.work_dir = dir.join("work");
        o.jobs = Some(2);
        o
    }

    fn leftover_build_dirs(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("work"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    #[test]
    fn builds_from_a_tree_reporting_each_step() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        fake_kernel_tree(
            &tree,
            "NO-SUCH-LINE",
            &crate::identify::tests::fake_vmlinux("6.1.192"),
            false,
        );
        let mut steps = Vec::new();
        let mut compiled = Vec::new();
        let built = build_kernel(&options(&tree, dir.path()), &mut |p| match p.compiled {
            Some(n) => compiled.push(n),
            None => steps.push(p.to_string()),
        })
        .unwrap();
        // kbuild's CC lines, counted while make runs (LD lines are not).
        assert_eq!(compiled.last(), Some(&3), "{compiled:?}");
        assert!(compiled.windows(2).all(|w| w[0] < w[1]), "{compiled:?}");
        assert_eq!(built.release, "6.1.192-fake");
        assert_eq!(built.config_digest, Fragment::project().unwrap().digest());
        assert!(built.vmlinux.is_file());
        assert_eq!(steps.len(), 6, "{steps:?}");
        assert!(steps[0].starts_with("[1/6] check build tools"), "{steps:?}");
        assert!(
            steps[4].starts_with("[5/6] compile: make -j2 vmlinux"),
            "{steps:?}"
        );
        // The tree is left as it was: built out of tree.
        assert!(!tree.join(".config").exists());
        drop(built);
        assert_eq!(leftover_build_dirs(dir.path()), 0);
    }

    #[test]
    fn a_compile_failure_names_the_step_and_keeps_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        fake_kernel_tree(&tree, "NO-SUCH-LINE", b"", true);
        let opts = options(&tree, dir.path());
        let err = build_kernel(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("failed at step \"compile\""), "{err}");
        assert!(err.contains("error: boom"), "{err}");
        assert!(err.contains(&opts.log.display().to_string()), "{err}");
        assert!(std::fs::read_to_string(&opts.log)
            .unwrap()
            .contains("error: boom"));
        assert_eq!(leftover_build_dirs(dir.path()), 0);
    }

    #[test]
    fn a_dropped_option_fails_verification_and_keeps_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        fake_kernel_tree(&tree, "CONFIG_PVH=", b"", false);
        let opts = options(&tree, dir.path());
        let err = build_kernel(&opts, &mut |_| {}).unwrap_err();
        match &err {
            Error::ConfigNotApplied { mismatches, config } => {
                assert_eq!(mismatches.len(), 1);
                assert_eq!(mismatches[0].name, "CONFIG_PVH");
                assert!(config.is_file(), "{}", config.display());
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(
            err.to_string()
                .contains("CONFIG_PVH: wanted y, but it is absent"),
            "{err}"
        );
    }

    #[test]
    fn a_user_fragment_is_merged_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        fake_kernel_tree(
            &tree,
            "NO-SUCH-LINE",
            &crate::identify::tests::fake_vmlinux("6.1.192"),
            false,
        );
        let user = dir.path().join("user.config");
        std::fs::write(&user, "CONFIG_FUSE_FS=y\n").unwrap();
        let mut opts = options(&tree, dir.path());
        opts.config = Some(user.clone());
        let built = build_kernel(&opts, &mut |_| {}).unwrap();
        assert_ne!(built.config_digest, Fragment::project().unwrap().digest());
        assert!(std::fs::read_to_string(&built.config)
            .unwrap()
            .contains("CONFIG_FUSE_FS=y"));

        std::fs::write(&user, "FUSE_FS=y\n").unwrap();
        let err = build_kernel(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("user.config:1"), "{err}");
    }

    #[test]
    fn output_that_is_not_a_vmlinux_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        fake_kernel_tree(&tree, "NO-SUCH-LINE", b"\x1f\x8b\x08\x00gzip", false);
        let err = build_kernel(&options(&tree, dir.path()), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed at step \"check output\"") && err.contains("gzip"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_tarball_fails_at_extract() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("linux.tar.xz");
        std::fs::write(&tarball, b"\xfd7zXZ\x00 this is not really xz").unwrap();
        let err = build_kernel(&options(&tarball, dir.path()), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed at step \"extract source\""), "{err}");
        assert_eq!(leftover_build_dirs(dir.path()), 0);
    }
}
