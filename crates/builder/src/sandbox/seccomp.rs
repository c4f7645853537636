//! Docker's default seccomp profile, compiled for the RUN sandbox.
//!
//! `seccomp/docker-default.json` is moby's own profile file, unchanged. It
//! is evaluated the way Docker evaluates it for a container: rules are kept
//! or dropped by the container's capability set, the native architecture
//! and the running kernel's version (`includes`/`excludes`), then libseccomp
//! compiles them into one classic-BPF program for the native architecture
//! and its sub-architectures. The program is compiled once per process; the
//! sandbox child only hands the finished instructions to the kernel.

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::sync::OnceLock;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

/// Docker's profile, as shipped by moby.
const DOCKER_DEFAULT: &str = include_str!("../../seccomp/docker-default.json");

/// Go's name for the architecture this binary runs on (the profile's
/// `arches` use Go names).
const GO_ARCH: &str = if cfg!(target_arch = "x86_64") {
    "amd64"
} else if cfg!(target_arch = "aarch64") {
    "arm64"
} else {
    "unsupported"
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<i32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    errno_ret: Option<i32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Option<Selector>,
    #[serde(default)]
    excludes: Option<Selector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What decides which rules of a profile apply.
#[derive(Debug, Clone)]
pub struct Target {
    /// The capabilities of the sandboxed process (`CAP_CHOWN`, ...).
    pub caps: BTreeSet<String>,
    /// Go architecture name (`amd64`).
    pub arch: String,
    /// Running kernel version (major, minor).
    pub kernel: (u32, u32),
}

impl Selector {
    /// Docker's rule: every listed capability present, the architecture
    /// listed, the kernel at least `minKernel`.
    fn matches(&self, t: &Target) -> bool {
        let caps = self
            .caps
            .as_ref()
            .is_none_or(|c| c.iter().all(|c| t.caps.contains(c)));
        let arches = self.arches.as_ref().is_none_or(|a| a.contains(&t.arch));
        let kernel = self
            .min_kernel
            .as_deref()
            .and_then(parse_kernel)
            .is_none_or(|min| t.kernel >= min);
        caps && arches && kernel
    }

    /// Docker's rule for excludes: any listed capability present, or the
    /// architecture listed, or the kernel at least `minKernel`.
    fn excludes(&self, t: &Target) -> bool {
        let caps = self
            .caps
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| t.caps.contains(c)));
        let arches = self.arches.as_ref().is_some_and(|a| a.contains(&t.arch));
        let kernel = self
            .min_kernel
            .as_deref()
            .and_then(parse_kernel)
            .is_some_and(|min| t.kernel >= min);
        caps || arches || kernel
    }
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The running kernel's (major, minor) version.
pub fn running_kernel() -> (u32, u32) {
    parse_kernel(rustix::system::uname().release().to_str().unwrap_or("0.0")).unwrap_or((0, 0))
}

fn action(
    name: &str,
    errno: Option<i32>,
    default_errno: Option<i32>,
) -> Result<ScmpAction, String> {
    let errno = errno.or(default_errno).or(Some(libc::EPERM));
    ScmpAction::from_str(name, errno).map_err(|e| format!("action {name}: {e}"))
}

fn compare(arg: &Arg) -> Result<ScmpArgCompare, String> {
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(arg.value),
        other => return Err(format!("unknown comparison {other}")),
    };
    let datum = if arg.op == "SCMP_CMP_MASKED_EQ" {
        arg.value_two
    } else {
        arg.value
    };
    Ok(ScmpArgCompare::new(arg.index, op, datum))
}

/// Compiles `profile` (JSON in Docker's format) for `target` into classic
/// BPF instructions ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
pub fn compile(profile: &str, target: &Target) -> Result<Vec<libc::sock_filter>, String> {
    let p: Profile =
        serde_json::from_str(profile).map_err(|e| format!("reading the profile: {e}"))?;
    let err = |what: &str, e: libseccomp::error::SeccompError| format!("{what}: {e}");
    let default = action(&p.default_action, None, p.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("creating the filter", e))?;
    // The sandbox sets no_new_privs itself, right before loading.
    ctx.set_ctl_nnp(false)
        .map_err(|e| err("filter attributes", e))?;
    let native = ScmpArch::native();
    let native_name = format!("{native:?}");
    for m in &p.arch_map {
        let Ok(arch) = m.architecture.parse::<ScmpArch>() else {
            continue;
        };
        if arch != native {
            continue;
        }
        for sub in m.sub_architectures.iter().flatten() {
            if let Ok(sub) = sub.parse::<ScmpArch>() {
                ctx.add_arch(sub).map_err(|e| err(sub_name(sub), e))?;
            }
        }
    }
    for rule in &p.syscalls {
        if rule.includes.as_ref().is_some_and(|s| !s.matches(target))
            || rule.excludes.as_ref().is_some_and(|s| s.excludes(target))
        {
            continue;
        }
        let act = action(&rule.action, rule.errno_ret, p.default_errno_ret)?;
        if act == default {
            continue; // libseccomp refuses rules that repeat the default
        }
        let args = rule.args.as_deref().unwrap_or(&[]);
        let conds = args.iter().map(compare).collect::<Result<Vec<_>, _>>()?;
        for name in &rule.names {
            // Names this libseccomp does not know do not exist here either.
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let distinct: BTreeSet<u32> = args.iter().map(|a| a.index).collect();
            if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else if distinct.len() == conds.len() {
                ctx.add_rule_conditional(act, sc, &conds)
            } else {
                // Several conditions on one argument: one rule each (OR),
                // as Docker does.
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sc, &[*c]).map(|_| ()))
                    .map(|_| &mut ctx)
            }
            .map_err(|e| err(&format!("rule for {name} on {native_name}"), e))?;
        }
    }
    export(&ctx)
}

fn sub_name(a: ScmpArch) -> &'static str {
    match a {
        ScmpArch::X86 => "sub-architecture x86",
        ScmpArch::X32 => "sub-architecture x32",
        _ => "sub-architecture",
    }
}

/// The filter's BPF instructions (through a memfd: libseccomp 2.5 exports
/// only to a file descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, String> {
    let fd = rustix::fs::memfd_create("firebuild-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("memfd: {e}"))?;
    ctx.export_bpf(&fd)
        .map_err(|e| format!("exporting the filter: {e}"))?;
    let mut file = std::fs::File::from(fd);
    file.rewind().map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 || bytes.len() / size > u16::MAX as usize {
        return Err(format!(
            "libseccomp exported {} bytes of filter",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Docker's default profile for a process with `caps` on this host,
/// compiled once per process.
pub fn docker_default(caps: &[&str]) -> Result<&'static [libc::sock_filter], String> {
    static COMPILED: OnceLock<Result<Vec<libc::sock_filter>, String>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            compile(
                DOCKER_DEFAULT,
                &Target {
                    caps: caps.iter().map(|c| c.to_string()).collect(),
                    arch: GO_ARCH.to_owned(),
                    kernel: running_kernel(),
                },
            )
        })
        .as_deref()
        .map_err(|e| format!("Docker's default seccomp profile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(caps: &[&str]) -> Target {
        Target {
            caps: caps.iter().map(|c| c.to_string()).collect(),
            arch: "amd64".into(),
            kernel: (6, 1),
        }
    }

    #[test]
    fn selectors_follow_dockers_rules() {
        let t = target(&["CAP_CHOWN"]);
        let sel = |caps: &[&str], arches: &[&str], min: Option<&str>| Selector {
            caps: (!caps.is_empty()).then(|| caps.iter().map(|c| c.to_string()).collect()),
            arches: (!arches.is_empty()).then(|| arches.iter().map(|c| c.to_string()).collect()),
            min_kernel: min.map(str::to_owned),
        };
        assert!(sel(&["CAP_CHOWN"], &[], None).matches(&t));
        assert!(!sel(&["CAP_CHOWN", "CAP_SYS_ADMIN"], &[], None).matches(&t));
        assert!(sel(&[], &["amd64", "x32"], None).matches(&t));
        assert!(!sel(&[], &["s390x"], None).matches(&t));
        assert!(sel(&[], &[], Some("4.8")).matches(&t));
        assert!(!sel(&[], &[], Some("6.2")).matches(&t));
        assert!(sel(&["CAP_CHOWN"], &[], None).excludes(&t));
        assert!(!sel(&["CAP_SYS_ADMIN"], &["s390"], None).excludes(&t));
        assert_eq!(parse_kernel("6.18.44-fc-v1045"), Some((6, 18)));
    }

    #[test]
    fn the_docker_profile_compiles_and_depends_on_capabilities() {
        let plain = compile(DOCKER_DEFAULT, &target(&["CAP_CHOWN"])).unwrap();
        let admin = compile(DOCKER_DEFAULT, &target(&["CAP_SYS_ADMIN"])).unwrap();
        assert!(plain.len() > 100, "{} instructions", plain.len());
        // CAP_SYS_ADMIN allows mount, unshare with any flags, ...: another program.
        assert_ne!(plain.len(), admin.len());
    }

    #[test]
    fn a_broken_profile_is_an_error() {
        let e = compile(
            "{\"defaultAction\": \"SCMP_ACT_NOPE\", \"syscalls\": []}",
            &target(&[]),
        )
        .unwrap_err();
        assert!(e.contains("SCMP_ACT_NOPE"), "{e}");
        assert!(compile("not json", &target(&[])).is_err());
    }
}
